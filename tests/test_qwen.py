"""``type: qwen`` against respx mocks of DashScope's streamed Qwen-TTS: SSE events with base64
PCM (some with a RIFF header of their own), a finish event, and errors."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from providers.base import ProviderHTTPError, ProviderProtocolError, SynthesisJob
from providers.wav import wav_header
from tests.support import peak_frequency, synthesize, tone

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


def job(**fields: Any) -> SynthesisJob:
    values: dict[str, Any] = {"text": "Hello there.", "voice": "Cherry", "sample_rate": 24000}
    values.update(fields)
    return SynthesisJob(**values)


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


async def test_http_and_in_stream_errors(respx_mock: respx.MockRouter) -> None:
    body = {"code": "InvalidApiKey", "message": "Invalid API-key provided.", "request_id": "r"}
    respx_mock.post(URL).mock(return_value=httpx.Response(401, json=body))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(job())
    assert not caught.value.retryable and "Invalid API-key" in str(caught.value)

    throttled = {
        "code": "Throttling.RateQuota",
        "message": "Requests rate limit exceeded",
        "request_id": "r",
    }
    respx_mock.post(URL).mock(return_value=sse(event(b"\x00\x00"), throttled))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(job())
    assert caught.value.retryable and "Throttling.RateQuota" in str(caught.value)


def test_qwen_through_the_gateway(respx_mock: respx.MockRouter) -> None:
    respx_mock.route(host="testserver").pass_through()
    pcm = tone(1000, 1.0, 24000)
    respx_mock.post(URL).mock(
        return_value=sse(event(pcm[:24000]), event(pcm[24000:]), event(None, "stop"))
    )
    routing = f"""
server: {{default_voice: Cherry}}
providers: {{qw: {{type: qwen, api_key: "{KEY}"}}}}
voices: {{Cherry: {{provider: qw}}}}
"""
    with TestClient(create_app(parse_config(routing))) as client:
        response = client.post("/stream-audio", json={"Text": "Hi.", "SampleRate": 16000})
    assert response.status_code == 200
    out = response.content
    assert abs(len(out) // 2 - 16000) <= 1
    assert abs(peak_frequency(out, 16000) - 1000) <= 2


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


def test_the_caller_is_shown_the_error_code_of_an_event(respx_mock: respx.MockRouter) -> None:
    respx_mock.route(host="testserver").pass_through()
    throttled = {"code": "Throttling.RateQuota", "message": "rate limit", "request_id": "r"}
    respx_mock.post(URL).mock(return_value=sse(throttled))
    routing = f"""
server: {{default_voice: Cherry}}
providers: {{qw: {{type: qwen, api_key: "{KEY}", retry: {{attempts: 1}}}}}}
voices: {{Cherry: {{provider: qw}}}}
"""
    with TestClient(create_app(parse_config(routing))) as client:
        response = client.post("/stream-audio", json={"Text": "Hi.", "SampleRate": 24000})
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "(qw): error Throttling.RateQuota" in message and "HTTP 200" not in message


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("not json", "not JSON"),
        ("5", "JSON int where an object was due"),
        ("[]", "JSON list where an object was due"),
        ('{"output": {"audio": {"data": "abc"}}}', "undecodable audio"),
        ('{"output": {"audio": {"data": 7}}}', "undecodable audio"),
    ],
)
async def test_malformed_events_are_provider_errors(
    respx_mock: respx.MockRouter, data: str, reason: str
) -> None:
    body = f"event:result\ndata:{data}\n\n".encode()
    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            200, content=body, headers={"Content-Type": "text/event-stream"}
        )
    )
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(job())
    assert reason in str(caught.value)


async def test_an_html_page_at_200_is_an_error(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            200, content=b"<html>Service Unavailable</html>", headers={"Content-Type": "text/html"}
        )
    )
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(job())
    assert "text/html" in str(caught.value)
