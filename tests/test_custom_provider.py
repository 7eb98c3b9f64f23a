"""``type: custom``: an upstream speaking the custom TTS interface, mocked with respx (request
shape, rates, settings, secrets) and as a real loopback server (streaming through the gateway,
falling back): what is specific to it (the contract every provider keeps is
``tests/test_provider_contract.py``)."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import respx

from gateway.app import create_app
from gateway.config import parse_config
from providers.base import (
    ProviderConfig,
    ProviderConnectionError,
    ProviderProtocolError,
    RetryPolicy,
    SynthesisJob,
    Timeouts,
    closest_rate,
)
from providers.custom import CustomProvider
from tests.support import (
    LoopbackOnly,
    Upstream,
    drain,
    job_maker,
    live_server,
    peak_frequency,
    scripted_config,
    tone,
)

URL = "https://tts.upstream.test/stream-audio"

# respx's httpx mocker answers at the client, above whatever transport the client has.
pytestmark = pytest.mark.respx(using="httpx")


def provider(**settings: object) -> CustomProvider:
    return CustomProvider(
        ProviderConfig(
            name="up",
            type="custom",
            settings={"url": URL, **settings},
            timeout=Timeouts(connect=1, first_byte=1, total=10),
            retry=RetryPolicy(attempts=1),
        )
    )


job = job_maker(
    text="Hello.",
    voice="v1",
    sample_rate=16000,
    extend_data={"InstanceId": "i-1", "SentenceId": 3},
    request_id="req-1",
)


async def collect(p: CustomProvider, j: SynthesisJob) -> bytes:
    await p.start()
    return await drain(p, j)


def test_closest_rate_prefers_the_higher_on_a_tie() -> None:
    assert closest_rate(16000, (8000, 24000)) == 24000
    assert closest_rate(16000, (48000,)) == 48000
    assert closest_rate(8000, (8000, 16000, 24000, 48000)) == 8000


async def test_request_follows_the_interface(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(return_value=httpx.Response(200, content=b"\x01\x00" * 100))
    p = provider(token="up-token", headers={"X-Tenant": "t1"})
    audio = await collect(p, job(emotion="happy", options={"Speed": 1.2}))
    assert audio == b"\x01\x00" * 100
    sent = route.calls.last.request
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-tenant"] == "t1"
    assert sent.headers["x-request-id"] == "req-1"
    body = json.loads(sent.content)
    assert body["Text"] == "Hello."
    assert body["VoiceId"] == "v1"
    assert body["SampleRate"] == 16000
    assert body["Token"] == "up-token"
    assert body["Speed"] == 1.2
    extend = json.loads(body["ExtendData"])  # a string holding JSON, as the interface says
    assert extend == {"InstanceId": "i-1", "SentenceId": 3, "Emotion": "happy"}


async def test_upstream_with_fewer_rates_is_asked_for_the_closest(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post(URL).mock(return_value=httpx.Response(200, content=b"\x00\x00" * 10))
    p = provider(sample_rates=[48000])
    assert p.native_format(job()).sample_rate == 48000
    await collect(p, job())
    assert json.loads(route.calls.last.request.content)["SampleRate"] == 48000


def test_settings_are_validated() -> None:
    problems = dict(
        CustomProvider.validate_settings({"url": "ftp://x", "sample_rates": [44100], "headers": 1})
    )
    assert set(problems) == {"url", "sample_rates", "headers"}
    assert CustomProvider.validate_settings({"url": URL, "sample_rates": [8000, 48000]}) == []


async def test_chained_gateway_resamples_the_upstream_audio() -> None:
    """A real loopback upstream serving 48 kHz only; the caller asks for 16 kHz."""
    signal = tone(1000, 1.0, 48000)
    chunks = [signal[i : i + 1923] for i in range(0, len(signal), 1923)]  # odd sizes
    async with Upstream(chunks=chunks, gap=0.001) as upstream:
        yaml = scripted_config(
            voices={"up": {"provider": "chain", "voice": "their-voice"}},
            providers={"chain": {"type": "custom", "url": upstream.url, "sample_rates": [48000]}},
        )
        async with live_server(create_app(parse_config(yaml))) as url, httpx.AsyncClient() as c:
            response = await c.post(
                url + "/stream-audio",
                json={"Text": "Hi.", "SampleRate": 16000, "VoiceId": "up", "ExtendData": ""},
            )
    assert response.status_code == 200
    assert upstream.requests[0]["SampleRate"] == 48000
    assert upstream.requests[0]["VoiceId"] == "their-voice"
    pcm = response.content
    assert abs(len(pcm) // 2 - 16000) <= 1
    assert abs(peak_frequency(pcm, 16000) - 1000) <= 2


async def test_upstream_error_status_falls_back() -> None:
    async with (
        Upstream(status=503, extra_headers={"Retry-After": "0"}) as broken,
        Upstream(chunks=[tone(440, 0.1, 24000)]) as working,
    ):
        yaml = scripted_config(
            voices={
                "a": {"provider": "broken", "fallback": ["b"]},
                "b": {"provider": "working"},
            },
            providers={
                "broken": {"type": "custom", "url": broken.url, "retry": {"attempts": 2}},
                "working": {"type": "custom", "url": working.url},
            },
        )
        async with live_server(create_app(parse_config(yaml))) as url, httpx.AsyncClient() as c:
            response = await c.post(
                url + "/stream-audio", json={"Text": "Hi.", "SampleRate": 24000, "VoiceId": "a"}
            )
    assert response.status_code == 200
    assert response.headers["x-voice"] == "b"
    assert len(broken.requests) == 2  # retried once (503 is retryable), then fell back
    assert len(response.content) == len(tone(440, 0.1, 24000))


# Starlette's test client goes through httpx2 when it is installed (as the openai client
# brings it), and then never through the testserver pass-through.
@pytest.mark.respx(using="httpx", assert_all_called=False)
def test_a_json_error_at_200_falls_back_and_is_logged(
    respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    from starlette.testclient import TestClient

    respx_mock.route(host="testserver").pass_through()
    respx_mock.post(URL).mock(return_value=httpx.Response(200, json={"error": "quota exceeded"}))
    respx_mock.post("https://backup.upstream.test/stream-audio").mock(
        return_value=httpx.Response(200, content=b"\x05\x00" * 240)
    )
    yaml = scripted_config(
        voices={"a": {"provider": "main", "fallback": ["b"]}, "b": {"provider": "backup"}},
        providers={
            "main": {"type": "custom", "url": URL},
            "backup": {"type": "custom", "url": "https://backup.upstream.test/stream-audio"},
        },
    )
    with (
        caplog.at_level(logging.INFO, logger="gateway"),
        TestClient(create_app(parse_config(yaml))) as client,
    ):
        response = client.post("/stream-audio", json={"Text": "Hi.", "SampleRate": 24000})
    assert response.status_code == 200 and response.headers["x-voice"] == "b"
    assert response.content == b"\x05\x00" * 240  # the backup's audio, not 26 bytes of JSON
    failed = [r.getMessage() for r in caplog.records if "failed before audio" in r.getMessage()]
    assert len(failed) == 1 and "quota exceeded" in failed[0]


def test_only_credential_headers_are_secrets() -> None:
    p = provider(headers={"Authorization": "Bearer tok-9f8e7d6c", "X-Tenant": "tenant-1"})
    assert "tok-9f8e7d6c" in p.secrets  # the credential, masked wherever it is echoed
    assert "tenant-1" not in p.secrets  # a header that is no credential stays readable


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"X-Tenant": "a\r\nX-Injected: 1"}, "line break"),
        ({"X-Tenant": "a\nb"}, "line break"),
        ({"Bad Name": "x"}, "not a header name"),
        ({"X:Colon": "x"}, "not a header name"),
    ],
)
def test_headers_that_could_break_the_request_are_refused(
    headers: dict[str, str], problem: str
) -> None:
    problems = dict(CustomProvider.validate_settings({"url": URL, "headers": headers}))
    assert problem in problems["headers"]


async def test_no_test_reaches_the_network_by_mistake() -> None:
    # No respx here: the request would leave the machine; the tests' transport refuses it.
    with pytest.raises(ProviderConnectionError):
        await collect(provider(), job())
    assert LoopbackOnly.refused == [f"POST {URL}"]
    LoopbackOnly.refused.clear()  # refused on purpose


def test_credentials_in_the_url_are_secrets() -> None:
    p = provider()
    assert p.secrets == ()
    p = CustomProvider(
        ProviderConfig(
            name="up",
            type="custom",
            settings={"url": "https://user:pa55-word@tts.upstream.test/x?api_key=k-123456&v=1"},
        )
    )
    assert p.redact("echo pa55-word k-123456 v=1") == "echo *** *** v=1"


@pytest.mark.parametrize(("declared", "refused"), [("24000", True), ("8000", False)])
async def test_an_answer_at_another_rate_than_asked_is_refused(
    respx_mock: respx.MockRouter, declared: str, refused: bool
) -> None:
    # An upstream that ignores SampleRate and says so: played as asked, it would be slowed
    # down threefold and pitched down. One that names the rate asked for is audio.
    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            200, content=b"\x01\x00" * 480, headers={"X-Sample-Rate": declared}
        )
    )
    if not refused:
        assert await collect(provider(), job(sample_rate=8000)) == b"\x01\x00" * 480
        return
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(provider(), job(sample_rate=8000))
    assert "24000" in caught.value.reason and "8000" in caught.value.reason
