"""``type: minimax`` against respx mocks of MiniMax's documented stream: SSE events with hex
audio, errors inside HTTP 200 bodies, and the final event that repeats the whole audio."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from providers.base import (
    ProviderConfig,
    ProviderHTTPError,
    ProviderProtocolError,
    SynthesisJob,
    build_provider,
)
from tests.support import peak_frequency, synthesize, tone

pytestmark = pytest.mark.respx(using="httpx")

URL = "https://api.minimax.io/v1/t2a_v2"
KEY = "mm-key-0123456789"
OK = {"status_code": 0, "status_msg": "success"}


def sse(*events: dict[str, Any]) -> httpx.Response:
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode()
    return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})


def stream_of(pcm: bytes, pieces: int = 3) -> httpx.Response:
    size = -(-len(pcm) // pieces)
    parts = [pcm[i : i + size] for i in range(0, len(pcm), size)]
    events = [{"data": {"audio": p.hex(), "status": 1}, "base_resp": OK} for p in parts]
    # The final event: the whole audio again (sent when aggregation is not excluded) + extra_info.
    events.append(
        {
            "data": {"audio": pcm.hex(), "status": 2},
            "extra_info": {"audio_length": 1},
            "base_resp": OK,
        }
    )
    return sse(*events)


async def collect(job: SynthesisJob, **settings: Any) -> bytes:
    return await synthesize("minimax", job, api_key=KEY, **settings)


def job(**fields: Any) -> SynthesisJob:
    values: dict[str, Any] = {"text": "Hello there.", "voice": "female-1", "sample_rate": 16000}
    values.update(fields)
    return SynthesisJob(**values)


async def test_request_and_hex_audio_without_the_aggregate_repeat(
    respx_mock: respx.MockRouter,
) -> None:
    pcm = tone(440, 0.3, 16000)
    route = respx_mock.post(URL).mock(return_value=stream_of(pcm))
    audio = await collect(
        job(emotion="happy", options={"voice_setting": {"speed": 1.1}}), group_id="g-1"
    )
    assert audio == pcm  # once, not twice
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.url.params["GroupId"] == "g-1"
    assert json.loads(sent.content) == {
        "model": "speech-02-turbo",
        "text": "Hello there.",
        "stream": True,
        "stream_options": {"exclude_aggregated_audio": True},
        "voice_setting": {"voice_id": "female-1", "speed": 1.1, "emotion": "happy"},
        "audio_setting": {"sample_rate": 16000, "format": "pcm", "channel": 1},
    }


@pytest.mark.parametrize(
    ("code", "message", "retryable"),
    [
        (1004, "authentication failed", False),
        (1008, "insufficient balance", False),
        (2013, "invalid params", False),
        (1002, "rate limit", True),
    ],
)
async def test_errors_inside_http_200(
    respx_mock: respx.MockRouter, code: int, message: str, retryable: bool
) -> None:
    body = {"base_resp": {"status_code": code, "status_msg": message}}
    respx_mock.post(URL).mock(return_value=httpx.Response(200, json=body))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(job())
    assert caught.value.retryable is retryable
    assert message in str(caught.value) and str(code) in str(caught.value)


async def test_an_error_event_in_the_stream(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).mock(
        return_value=sse(
            {"data": {"audio": "0100", "status": 1}, "base_resp": OK},
            {"base_resp": {"status_code": 1039, "status_msg": "token limit"}},
        )
    )
    received: list[bytes] = []
    provider = build_provider(ProviderConfig(name="m", type="minimax", settings={"api_key": KEY}))
    with pytest.raises(ProviderHTTPError) as caught:
        async for chunk in provider.stream(job()):
            received.append(chunk)
    await provider.aclose()
    assert received == [b"\x01\x00"]
    assert caught.value.retryable


def test_minimax_through_the_gateway(respx_mock: respx.MockRouter) -> None:
    respx_mock.route(host="testserver").pass_through()
    respx_mock.post(URL).mock(return_value=stream_of(tone(1000, 1.0, 44100), pieces=7))
    routing = f"""
server: {{default_voice: v}}
providers: {{mm: {{type: minimax, api_key: "{KEY}"}}}}
voices: {{v: {{provider: mm, voice: female-1}}}}
"""
    with TestClient(create_app(parse_config(routing))) as client:
        response = client.post("/stream-audio", json={"Text": "Hi.", "SampleRate": 48000})
    assert response.status_code == 200
    out = response.content
    assert abs(len(out) // 2 - 48000) <= 1  # 44.1 kHz from MiniMax, resampled
    assert abs(peak_frequency(out, 48000) - 1000) <= 2


async def test_events_split_across_network_chunks(respx_mock: respx.MockRouter) -> None:
    pcm = tone(440, 0.1, 16000)
    events = [
        {"data": {"audio": p.hex(), "status": 1}, "base_resp": OK} for p in (pcm[:1000], pcm[1000:])
    ]
    body = b"".join(f"data: {json.dumps(e)}\r\n\r\n".encode() for e in events)

    async def pieces() -> Any:
        for i in range(0, len(body), 7):  # cuts inside field names, hex and CRLFs alike
            yield body[i : i + 7]

    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            200, content=pieces(), headers={"Content-Type": "text/event-stream"}
        )
    )
    assert await collect(job()) == pcm


def gateway_post(respx_mock: respx.MockRouter, answer: httpx.Response) -> httpx.Response:
    respx_mock.route(host="testserver").pass_through()
    respx_mock.post(URL).mock(return_value=answer)
    routing = f"""
server: {{default_voice: v}}
providers: {{mm: {{type: minimax, api_key: "{KEY}"}}}}
voices: {{v: {{provider: mm, voice: female-1}}}}
"""
    with TestClient(create_app(parse_config(routing))) as client:
        response: httpx.Response = client.post(
            "/stream-audio", json={"Text": "Hi.", "SampleRate": 16000}
        )
    return response


def test_the_caller_is_shown_minimaxs_error_code_not_http_200(
    respx_mock: respx.MockRouter,
) -> None:
    body = {"base_resp": {"status_code": 1008, "status_msg": "insufficient balance"}}
    response = gateway_post(respx_mock, httpx.Response(200, json=body))
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "(mm): error 1008" in message
    assert "HTTP 200" not in message and "insufficient balance" not in message


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        (b"data: not json\n\n", "not JSON"),
        (b"data: 5\n\n", "JSON int where an object was due"),
        (b"data: []\n\n", "JSON list where an object was due"),
        (b'data: {"data": {"audio": "zz", "status": 1}}\n\n', "not hex"),
        (b'data: {"data": {"audio": 12, "status": 1}}\n\n', "not hex"),
    ],
)
async def test_malformed_events_are_provider_errors(
    respx_mock: respx.MockRouter, events: bytes, reason: str
) -> None:
    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            200, content=events, headers={"Content-Type": "text/event-stream"}
        )
    )
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(job())
    assert reason in str(caught.value)


async def test_an_html_page_at_200_is_not_taken_for_a_reply(respx_mock: respx.MockRouter) -> None:
    page = b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"
    respx_mock.post(URL).mock(
        return_value=httpx.Response(200, content=page, headers={"Content-Type": "text/html"})
    )
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(job())
    assert "text/html" in str(caught.value) and "502 Bad Gateway" in str(caught.value)


async def test_a_reply_that_is_not_a_stream_is_read_to_a_bound(
    respx_mock: respx.MockRouter,
) -> None:
    endless = {"data": {"audio": "00" * 500_000, "status": 1}, "base_resp": OK}  # ~1 MB
    respx_mock.post(URL).mock(return_value=httpx.Response(200, json=endless))
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(job())
    assert "over 64 KiB" in str(caught.value)


async def test_a_long_event_in_small_pieces_is_read_in_linear_time(
    respx_mock: respx.MockRouter,
) -> None:
    pcm = b"\x01\x02" * 400_000  # one event of 1.6 MB of hex, sent without a break
    body = f"data: {json.dumps({'data': {'audio': pcm.hex(), 'status': 1}})}\n\n".encode()

    async def pieces() -> Any:
        for i in range(0, len(body), 512):  # 3000 pieces, each a new search for the event end
            yield body[i : i + 512]

    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            200, content=pieces(), headers={"Content-Type": "text/event-stream"}
        )
    )
    started = time.perf_counter()
    assert await collect(job()) == pcm
    assert time.perf_counter() - started < 1.5  # searching from the start each time took seconds


async def test_an_event_without_end_is_refused_at_its_bound(respx_mock: respx.MockRouter) -> None:
    async def endless() -> Any:
        yield b'data: {"data": {"audio": "'
        for _ in range(48):  # 3 MiB, then nothing more: a reader without a bound waits on
            yield b"00" * 32768
        await asyncio.Event().wait()

    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            200, content=endless(), headers={"Content-Type": "text/event-stream"}
        )
    )
    with pytest.raises(ProviderProtocolError) as caught:
        await asyncio.wait_for(collect(job()), 10)
    assert "an event over 2 MiB" in str(caught.value)
