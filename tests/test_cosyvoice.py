"""``type: cosyvoice`` against a loopback WebSocket server that follows DashScope's documented
task protocol (run-task → task-started → continue-task/finish-task → binary audio →
task-finished, or task-failed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from providers.base import (
    ProviderConfig,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
    SynthesisJob,
    Timeouts,
    build_provider,
)
from providers.cosyvoice import MAX_FRAME_BYTES
from tests.support import TaskServer, running_task_server, synthesize, tone

KEY = "sk-cosy-0123"


async def collect(url: str, job: SynthesisJob) -> bytes:
    return await synthesize("cosyvoice", job, api_key=KEY, url=url)


def job(**fields: Any) -> SynthesisJob:
    values: dict[str, Any] = {
        "text": "Hello there.",
        "voice": "longxiaochun_v2",
        "sample_rate": 24000,
    }
    values.update(fields)
    return SynthesisJob(**values)


async def test_task_protocol_and_binary_audio() -> None:
    pcm = tone(440, 0.3, 24000)
    server = TaskServer([pcm[:5000], pcm[5000:]])
    async with running_task_server(server) as url:
        audio = await collect(url, job(options={"volume": 60}))
    assert audio == pcm
    assert server.headers["authorization"] == f"bearer {KEY}"
    run, cont, finish = server.messages
    assert run["header"]["action"] == "run-task"
    assert run["header"]["streaming"] == "duplex"
    assert run["payload"] == {
        "task_group": "audio",
        "task": "tts",
        "function": "SpeechSynthesizer",
        "model": "cosyvoice-v2",
        "parameters": {
            "text_type": "PlainText",
            "voice": "longxiaochun_v2",
            "volume": 60,
            "format": "pcm",
            "sample_rate": 24000,
        },
        "input": {},
    }
    assert cont["header"]["action"] == "continue-task"
    assert cont["payload"] == {"input": {"text": "Hello there."}}
    assert finish["header"]["action"] == "finish-task"
    assert len({m["header"]["task_id"] for m in server.messages}) == 1


@pytest.mark.parametrize(
    ("code", "retryable"), [("InvalidParameter", False), ("Throttling.RateQuota", True)]
)
async def test_task_failed(code: str, retryable: bool) -> None:
    async with running_task_server(TaskServer([], fail=(code, "it went wrong"))) as url:
        with pytest.raises(ProviderError) as caught:
            await collect(url, job())
    assert caught.value.retryable is retryable
    assert code in str(caught.value) and "it went wrong" in str(caught.value)


async def test_closing_the_stream_closes_the_socket() -> None:
    server = TaskServer([b"\x01\x00" * 100, b"\x02\x00" * 100])
    async with running_task_server(server) as url:
        provider = build_provider(
            ProviderConfig(name="cosy", type="cosyvoice", settings={"api_key": KEY, "url": url})
        )
        stream = provider.stream(job())
        assert await anext(stream) == b"\x01\x00" * 100
        await stream.aclose()  # the caller hung up
        await asyncio.wait_for(server.closed.wait(), 1.0)


async def test_nobody_listening_is_a_connection_error() -> None:
    with pytest.raises(ProviderConnectionError):
        await collect("ws://127.0.0.1:9/api-ws/v1/inference", job())


async def test_cosyvoice_through_the_gateway() -> None:
    import httpx

    from gateway.app import create_app
    from gateway.config import parse_config
    from tests.support import live_server, peak_frequency

    pcm = tone(1000, 1.0, 24000)
    server = TaskServer([pcm[i : i + 4801] for i in range(0, len(pcm), 4801)])  # odd cuts
    async with running_task_server(server) as url:
        routing = f"""
server: {{default_voice: longxiaochun_v2}}
providers: {{cosy: {{type: cosyvoice, api_key: "{KEY}", url: "{url}"}}}}
voices: {{longxiaochun_v2: {{provider: cosy}}}}
"""
        async with live_server(create_app(parse_config(routing))) as base, httpx.AsyncClient() as c:
            response = await c.post(
                base + "/stream-audio", json={"Text": "Hi.", "SampleRate": 24000}
            )
    assert response.status_code == 200
    # CosyVoice speaks every rate the interface allows: asked for as is, nothing resampled.
    assert server.messages[0]["payload"]["parameters"]["sample_rate"] == 24000
    assert response.content == pcm
    assert abs(peak_frequency(response.content, 24000) - 1000) <= 2


def event_frame(event: str) -> str:
    return json.dumps({"header": {"task_id": "t", "event": event}, "payload": {}})


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "not JSON"),
        ("5", "JSON int where an object was due"),
        ("[]", "JSON list where an object was due"),
        ('"task-finished"', "JSON str where an object was due"),
    ],
)
async def test_malformed_text_frames_are_provider_errors(frame: str, reason: str) -> None:
    server = TaskServer([], frames=[b"\x01\x00" * 10, frame])
    async with running_task_server(server) as url:
        with pytest.raises(ProviderProtocolError) as caught:
            await asyncio.wait_for(collect(url, job()), 10)
    assert reason in str(caught.value)


async def test_an_event_of_another_shape_is_skipped_not_a_crash() -> None:
    odd = json.dumps({"header": 5, "payload": []})
    server = TaskServer([], frames=[odd, b"\x01\x00" * 10, event_frame("task-finished")])
    async with running_task_server(server) as url:
        assert await asyncio.wait_for(collect(url, job()), 10) == b"\x01\x00" * 10


async def test_the_caller_is_shown_the_task_failed_code() -> None:
    async with running_task_server(
        TaskServer([], fail=("Throttling.RateQuota", "slow down"))
    ) as url:
        with pytest.raises(ProviderError) as caught:
            await collect(url, job())
    assert caught.value.summary == "error Throttling.RateQuota"


async def test_an_oversized_frame_is_a_provider_error() -> None:
    server = TaskServer([], frames=[b"\x00" * (MAX_FRAME_BYTES + 2)])
    async with running_task_server(server) as url:
        with pytest.raises(ProviderProtocolError) as caught:
            await asyncio.wait_for(collect(url, job()), 10)
    assert "a frame over 2 MiB" in str(caught.value)


async def test_a_silent_server_is_a_timeout_not_a_wait_forever() -> None:
    server = TaskServer([], frames=[b"\x01\x00" * 10])  # some audio, then nothing
    async with running_task_server(server) as url:
        provider = build_provider(
            ProviderConfig(
                name="cosy",
                type="cosyvoice",
                settings={"api_key": KEY, "url": url},
                timeout=Timeouts(connect=2, first_byte=0.3, total=10),
            )
        )
        received: list[bytes] = []
        with pytest.raises(ProviderTimeout):
            async with asyncio.timeout(10):
                async for chunk in provider.stream(job()):
                    received.append(chunk)
    assert received == [b"\x01\x00" * 10]
