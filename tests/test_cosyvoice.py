"""``type: cosyvoice`` against a loopback WebSocket server that follows DashScope's documented
task protocol (run-task → task-started → continue-task/finish-task → binary audio →
task-finished, or task-failed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from providers.base import (
    ProviderConfig,
    ProviderConnectionError,
    ProviderError,
    SynthesisJob,
    build_provider,
)
from tests.support import synthesize, tone

KEY = "sk-cosy-0123"


class TaskServer:
    """Records what the client sent; answers as the service does (or fails as told)."""

    def __init__(self, audio: list[bytes], fail: tuple[str, str] | None = None) -> None:
        self.audio = audio
        self.fail = fail
        self.messages: list[dict[str, Any]] = []
        self.headers: dict[str, str] = {}
        self.closed = asyncio.Event()

    async def handle(self, socket: ServerConnection) -> None:
        assert socket.request is not None
        self.headers = {k.lower(): v for k, v in socket.request.headers.raw_items()}
        try:
            async for raw in socket:
                message = json.loads(raw)
                self.messages.append(message)
                header = message["header"]
                task = header["task_id"]
                if header["action"] == "run-task":
                    if self.fail:
                        code, text = self.fail
                        await socket.send(
                            json.dumps(
                                {
                                    "header": {
                                        "task_id": task,
                                        "event": "task-failed",
                                        "error_code": code,
                                        "error_message": text,
                                    },
                                    "payload": {},
                                }
                            )
                        )
                        continue
                    await socket.send(
                        json.dumps(
                            {"header": {"task_id": task, "event": "task-started"}, "payload": {}}
                        )
                    )
                elif header["action"] == "finish-task":
                    for chunk in self.audio:
                        await socket.send(chunk)
                        await socket.send(
                            json.dumps(
                                {
                                    "header": {"task_id": task, "event": "result-generated"},
                                    "payload": {},
                                }
                            )
                        )
                    await socket.send(
                        json.dumps(
                            {"header": {"task_id": task, "event": "task-finished"}, "payload": {}}
                        )
                    )
        finally:
            self.closed.set()


@asynccontextmanager
async def running(server: TaskServer) -> AsyncIterator[str]:
    async with serve(server.handle, "127.0.0.1", 0) as ws:
        port = next(iter(ws.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/api-ws/v1/inference"


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
    async with running(server) as url:
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
    async with running(TaskServer([], fail=(code, "it went wrong"))) as url:
        with pytest.raises(ProviderError) as caught:
            await collect(url, job())
    assert caught.value.retryable is retryable
    assert code in str(caught.value) and "it went wrong" in str(caught.value)


async def test_closing_the_stream_closes_the_socket() -> None:
    server = TaskServer([b"\x01\x00" * 100, b"\x02\x00" * 100])
    async with running(server) as url:
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
    async with running(server) as url:
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
