"""``type: custom``: an upstream speaking the custom TTS interface, mocked with respx (request
shape, error mapping) and as a real loopback server (streaming through the gateway)."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from gateway.app import create_app
from gateway.config import parse_config
from providers.base import (
    ProviderConfig,
    ProviderConnectionError,
    ProviderHTTPError,
    ProviderTimeout,
    RetryPolicy,
    SynthesisJob,
    Timeouts,
    closest_rate,
)
from providers.custom import CustomProvider
from tests.support import Upstream, drain, live_server, peak_frequency, scripted_config, tone

URL = "https://tts.upstream.test/stream-audio"

# The providers' pool sits under httpx's transport: respx intercepts at that transport.
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


def job(**fields: object) -> SynthesisJob:
    base: dict[str, object] = {
        "text": "Hello.",
        "voice": "v1",
        "sample_rate": 16000,
        "extend_data": {"InstanceId": "i-1", "SentenceId": 3},
        "request_id": "req-1",
    }
    base.update(fields)
    return SynthesisJob(**base)  # type: ignore[arg-type]


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


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (401, False), (404, False), (408, True), (429, True), (500, True), (503, True)],
)
async def test_error_statuses_map_to_provider_errors(
    status: int, retryable: bool, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            status,
            json={"error": {"code": "nope", "message": f"upstream said {status}"}},
            headers={"Retry-After": "2"},
        )
    )
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(provider(), job())
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    assert f"upstream said {status}" in str(caught.value)
    assert caught.value.retry_after == 2.0


async def test_connection_errors_and_timeouts_are_retryable(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(ProviderConnectionError) as refused:
        await collect(provider(), job())
    assert refused.value.retryable
    respx_mock.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(ProviderTimeout) as slow:
        await collect(provider(), job())
    assert slow.value.retryable


async def test_token_is_never_in_an_error_message(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).mock(return_value=httpx.Response(401, text="bad credentials"))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(provider(token="sup3r-secret"), job())
    assert "sup3r-secret" not in str(caught.value)


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
