"""``type: qwen`` against respx mocks of DashScope's streamed Qwen-TTS: SSE events with base64
PCM (some with a RIFF header of their own), a finish event, and errors; what is specific to it
(the contract every provider keeps is ``tests/test_provider_contract.py``)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
import respx

from providers.base import ProviderHTTPError, ProviderProtocolError, SynthesisJob
from providers.wav import wav_header
from tests.support import job_maker, synthesize, tone

pytestmark = pytest.mark.respx(using="httpx")

URL = "https://dashscope-intl.aliyuncs.com/api/v1/services/aigc/multimodal-generation/generation"
KEY = "sk-dashscope-0123"


def event(pcm: bytes | None, finish: str | None = None) -> dict[str, Any]:
    audio = {"id": "a-1"} | ({"data": base64.b64encode(pcm).decode()} if pcm else {})
    return {
        "output": {"audio": audio, "finish_reason": finish},
        "request_id": "r-1",
        "usage": {"characters": 12},
    }


def sse(*events: dict[str, Any]) -> httpx.Response:
    body = "".join(f"id:{i}\nevent:result\ndata:{json.dumps(e)}\n\n" for i, e in enumerate(events))
    return httpx.Response(200, content=body.encode(), headers={"Content-Type": "text/event-stream"})


async def collect(job: SynthesisJob) -> bytes:
    return await synthesize("qwen", job, api_key=KEY)


job = job_maker(text="Hello there.", voice="Cherry", sample_rate=24000)


async def test_request_and_base64_audio(respx_mock: respx.MockRouter) -> None:
    pcm = tone(440, 0.2, 24000)
    route = respx_mock.post(URL).mock(
        return_value=sse(event(pcm[:4000]), event(pcm[4000:]), event(None, "stop"))
    )
    assert await collect(job(options={"language_type": "English"})) == pcm
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["x-dashscope-sse"] == "enable"
    assert json.loads(sent.content) == {
        "model": "qwen3-tts-flash",
        "input": {"text": "Hello there.", "voice": "Cherry", "language_type": "English"},
    }


async def test_riff_headers_inside_chunks_are_stripped(respx_mock: respx.MockRouter) -> None:
    pcm = tone(440, 0.1, 24000)
    respx_mock.post(URL).mock(
        return_value=sse(
            event(wav_header(24000, data_bytes=len(pcm[:1000])) + pcm[:1000]),
            event(wav_header(24000, data_bytes=len(pcm[1000:])) + pcm[1000:]),
            event(None, "stop"),
        )
    )
    assert await collect(job()) == pcm


@pytest.mark.parametrize(
    ("model", "emotion", "instructions"),
    [
        ("qwen3-tts-instruct-flash", "happy", "Speak in a cheerful, happy tone."),
        ("qwen3-tts-flash", "happy", None),  # not an instruct model
        ("qwen3-tts-instruct-flash", None, None),
    ],
)
async def test_emotion_as_instructions(
    respx_mock: respx.MockRouter, model: str, emotion: str | None, instructions: str | None
) -> None:
    route = respx_mock.post(URL).mock(return_value=sse(event(b"\x00\x00"), event(None, "stop")))
    await collect(job(emotion=emotion, options={"model": model}))
    body = json.loads(route.calls.last.request.content)
    # Where DashScope's SDK puts it: under parameters, not input.
    assert "instructions" not in body["input"]
    assert body.get("parameters", {}).get("instructions") == instructions


async def test_options_go_where_the_sdk_puts_them(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(return_value=sse(event(b"\x00\x00"), event(None, "stop")))
    options = {
        "model": "qwen3-tts-instruct-flash",
        "language_type": "English",
        "instructions": "Warm and calm.",
        "optimize_instructions": True,
    }
    await collect(job(emotion="happy", options=options))
    assert json.loads(route.calls.last.request.content) == {
        "model": "qwen3-tts-instruct-flash",
        "input": {"text": "Hello there.", "voice": "Cherry", "language_type": "English"},
        "parameters": {"instructions": "Warm and calm.", "optimize_instructions": True},
    }


async def test_a_plain_json_reply_is_read_as_one_event(respx_mock: respx.MockRouter) -> None:
    pcm = tone(440, 0.1, 24000)
    respx_mock.post(URL).mock(return_value=httpx.Response(200, json=event(pcm, "stop")))
    assert await collect(job()) == pcm

    error = {"code": "InvalidParameter", "message": "voice not found", "request_id": "r"}
    respx_mock.post(URL).mock(return_value=httpx.Response(200, json=error))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(job())
    assert caught.value.summary == "error InvalidParameter" and not caught.value.retryable

    linked = {"output": {"audio": {"url": "https://oss.example/a.wav"}, "finish_reason": "stop"}}
    respx_mock.post(URL).mock(return_value=httpx.Response(200, json=linked))
    with pytest.raises(ProviderProtocolError) as refused:
        await collect(job())
    assert "audio URL" in str(refused.value)
