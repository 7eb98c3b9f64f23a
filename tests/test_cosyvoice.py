"""``type: cosyvoice`` against a loopback WebSocket server that follows DashScope's documented
task protocol (run-task → task-started → continue-task/finish-task → binary audio →
task-finished, or task-failed): what is specific to it (the cases of the provider contract that
apply to a WebSocket are in ``tests/test_provider_contract.py``)."""

from __future__ import annotations

import asyncio
import json

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
from tests.support import TaskServer, job_maker, running_task_server, synthesize, tone

KEY = "sk-cosy-0123"


async def collect(url: str, job: SynthesisJob) -> bytes:
    return await synthesize("cosyvoice", job, api_key=KEY, url=url)


job = job_maker(text="Hello there.", voice="longxiaochun_v2", sample_rate=24000)


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


async def test_nobody_listening_is_a_connection_error() -> None:
    with pytest.raises(ProviderConnectionError):
        await collect("ws://127.0.0.1:9/api-ws/v1/inference", job())


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
