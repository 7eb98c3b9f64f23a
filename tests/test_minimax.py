"""``type: minimax`` against respx mocks of MiniMax's documented stream: SSE events with hex
audio, errors inside HTTP 200 bodies, and the final event that repeats the whole audio; what is
specific to it (the contract every provider keeps is ``tests/test_provider_contract.py``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from providers.base import (
    ProviderConfig,
    ProviderHTTPError,
    ProviderProtocolError,
    SynthesisJob,
    build_provider,
)
from tests.support import job_maker, synthesize, tone

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


job = job_maker(text="Hello there.", voice="female-1", sample_rate=16000)


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


async def test_a_reply_that_is_not_a_stream_is_read_to_a_bound(
    respx_mock: respx.MockRouter,
) -> None:
    endless = {"data": {"audio": "00" * 500_000, "status": 1}, "base_resp": OK}  # ~1 MB
    respx_mock.post(URL).mock(return_value=httpx.Response(200, json=endless))
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(job())
    assert "over 64 KiB" in str(caught.value)
