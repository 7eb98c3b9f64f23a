"""``type: openai`` against respx mocks of OpenAI's documented request and response shapes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from providers.base import (
    ProviderConfig,
    ProviderConnectionError,
    ProviderHTTPError,
    SynthesisJob,
)
from providers.openai import OpenAIProvider
from tests.support import drain, peak_frequency, tone

pytestmark = pytest.mark.respx(using="httpx")

URL = "https://api.openai.com/v1/audio/speech"
KEY = "sk-test-0123456789"


def provider(**settings: Any) -> OpenAIProvider:
    return OpenAIProvider(
        ProviderConfig(name="openai", type="openai", settings={"api_key": KEY, **settings})
    )


async def collect(p: OpenAIProvider, job: SynthesisJob) -> bytes:
    return await drain(p, job)


def job(text: str = "Hello there.", **fields: Any) -> SynthesisJob:
    return SynthesisJob(text=text, voice="alloy", sample_rate=24000, **fields)


def pcm_response(pcm: bytes) -> httpx.Response:
    return httpx.Response(200, content=pcm, headers={"Content-Type": "audio/pcm"})


async def test_request_shape(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(return_value=pcm_response(b"\x01\x00" * 240))
    audio = await collect(provider(), job(options={"speed": 1.2}))
    assert audio == b"\x01\x00" * 240
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(sent.content) == {
        "model": "gpt-4o-mini-tts",
        "input": "Hello there.",
        "voice": "alloy",
        "response_format": "pcm",
        "speed": 1.2,
    }
    assert provider().native_format(job()).sample_rate == 24000  # pcm is 24 kHz only


async def test_base_url_and_model_options(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post("https://proxy.example/v1/audio/speech").mock(
        return_value=pcm_response(b"\x00\x00")
    )
    await collect(
        provider(base_url="https://proxy.example/v1/"), job(options={"model": "tts-1-hd"})
    )
    assert json.loads(route.calls.last.request.content)["model"] == "tts-1-hd"


@pytest.mark.parametrize(
    ("emotion", "options", "expected"),
    [
        ("happy", {}, "Speak in a cheerful, happy tone."),
        ("sad", {}, "Speak in a sad tone."),
        ("neutral", {}, None),
        (None, {}, None),
        ("happy", {"model": "tts-1"}, None),  # tts-1 ignores instructions: none sent
        ("happy", {"instructions": "Whisper."}, "Whisper."),  # explicit option wins
    ],
)
async def test_emotion_becomes_instructions(
    respx_mock: respx.MockRouter, emotion: str | None, options: dict[str, Any], expected: str | None
) -> None:
    route = respx_mock.post(URL).mock(return_value=pcm_response(b"\x00\x00"))
    await collect(provider(), job(emotion=emotion, options=options))
    assert json.loads(route.calls.last.request.content).get("instructions") == expected


async def test_long_text_goes_out_in_pieces_within_the_limit(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(return_value=pcm_response(b"\x02\x00" * 10))
    sentence = "This sentence is here to make the text long enough. "
    text = (sentence * 180).strip()  # ~9400 characters
    audio = await collect(provider(), job(text))
    inputs = [json.loads(call.request.content)["input"] for call in route.calls]
    assert len(inputs) == 3
    assert all(len(piece) <= 4096 for piece in inputs)
    assert " ".join(inputs) == text
    assert audio == b"\x02\x00" * 10 * 3


@pytest.mark.parametrize(
    ("status", "body", "retryable", "words"),
    [
        (
            401,
            {
                "error": {
                    "message": "Incorrect API key provided: sk-test***6789.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
            False,
            "Incorrect API key",
        ),
        (
            400,
            {
                "error": {
                    "message": "[{'type': 'string_too_long'}]",
                    "type": "invalid_request_error",
                    "param": "input",
                    "code": None,
                }
            },
            False,
            "string_too_long",
        ),
        (
            429,
            {
                "error": {
                    "message": "Rate limit reached for requests",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
            True,
            "Rate limit reached",
        ),
        (
            500,
            {
                "error": {
                    "message": "The server had an error",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
            True,
            "server had an error",
        ),
        (
            503,
            {
                "error": {
                    "message": "Slow down",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
            True,
            "Slow down",
        ),
    ],
)
async def test_errors_map_to_the_gateway_hierarchy(
    respx_mock: respx.MockRouter, status: int, body: dict[str, Any], retryable: bool, words: str
) -> None:
    headers = {"x-ratelimit-remaining-requests": "0"} if status == 429 else {}
    respx_mock.post(URL).mock(return_value=httpx.Response(status, json=body, headers=headers))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(provider(), job())
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    assert words in str(caught.value)
    assert "openai" in str(caught.value)


async def test_connection_failure_is_retryable(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(ProviderConnectionError):
        await collect(provider(), job())


ROUTING = f"""
server: {{default_voice: alloy}}
providers:
  openai: {{type: openai, api_key: "{KEY}", retry: {{attempts: 2, backoff: 0.01}}}}
voices:
  alloy:
    provider: openai
    emotions: {{happy: {{instructions: "Sound delighted."}}}}
"""


def test_gateway_resamples_openai_pcm_and_counts_characters(respx_mock: respx.MockRouter) -> None:
    respx_mock.route(host="testserver").pass_through()  # the test client's own requests
    route = respx_mock.post(URL).mock(return_value=pcm_response(tone(440, 1.0, 24000)))
    with TestClient(create_app(parse_config(ROUTING))) as client:
        response = client.post(
            "/stream-audio",
            json={
                "Text": "Hi there.",
                "SampleRate": 48000,
                "VoiceId": "alloy",
                "ExtendData": '{"Emotion": "happy"}',
            },
        )
        metrics = client.get("/metrics").text
    assert response.status_code == 200
    pcm = response.content
    assert abs(len(pcm) // 2 - 48000) <= 1
    assert abs(peak_frequency(pcm, 48000) - 440) <= 2
    body = json.loads(route.calls.last.request.content)
    assert body["instructions"] == "Sound delighted."  # the voice's override, not the default
    assert 'tts_provider_characters_total{provider="openai"} 9.0' in metrics


def test_gateway_retries_a_429_then_answers(respx_mock: respx.MockRouter) -> None:
    respx_mock.route(host="testserver").pass_through()
    route = respx_mock.post(URL).mock(
        side_effect=[
            httpx.Response(
                429,
                json={
                    "error": {
                        "message": "Rate limit",
                        "type": "requests",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                },
            ),
            pcm_response(tone(440, 0.2, 24000)),
        ]
    )
    with TestClient(create_app(parse_config(ROUTING))) as client:
        response = client.post("/stream-audio", json={"Text": "Hi.", "SampleRate": 24000})
    assert response.status_code == 200
    assert len(response.content) == len(tone(440, 0.2, 24000))
    assert route.call_count == 2
