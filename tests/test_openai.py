"""``type: openai`` against respx mocks of OpenAI's documented request shape: what is specific to
it (the contract every provider keeps is ``tests/test_provider_contract.py``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from providers.base import ProviderConfig, SynthesisJob
from providers.openai import OpenAIProvider
from tests.support import drain, tone

pytestmark = pytest.mark.respx(using="httpx")

URL = "https://api.openai.com/v1/audio/speech"
KEY = "sk-test-0123456789"


def provider(**settings: Any) -> OpenAIProvider:
    return OpenAIProvider(
        ProviderConfig(name="openai", type="openai", settings={"api_key": KEY, **settings})
    )


def job(text: str = "Hello there.", **fields: Any) -> SynthesisJob:
    return SynthesisJob(text=text, voice="alloy", sample_rate=24000, **fields)


def pcm_response(pcm: bytes) -> httpx.Response:
    return httpx.Response(200, content=pcm, headers={"Content-Type": "audio/pcm"})


async def test_request_shape(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(return_value=pcm_response(b"\x01\x00" * 240))
    audio = await drain(provider(), job(options={"speed": 1.2}))
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
    await drain(provider(base_url="https://proxy.example/v1/"), job(options={"model": "tts-1-hd"}))
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
    await drain(provider(), job(emotion=emotion, options=options))
    assert json.loads(route.calls.last.request.content).get("instructions") == expected


ROUTING = f"""
server: {{default_voice: alloy}}
providers:
  openai: {{type: openai, api_key: "{KEY}", retry: {{attempts: 2, backoff: 0.01}}}}
voices:
  alloy:
    provider: openai
    emotions: {{happy: {{instructions: "Sound delighted."}}}}
"""


@pytest.mark.respx(using="httpx", assert_all_called=False)  # see test_custom_provider
def test_the_voices_emotion_override_is_sent_and_characters_counted(
    respx_mock: respx.MockRouter,
) -> None:
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
    body = json.loads(route.calls.last.request.content)
    assert body["instructions"] == "Sound delighted."  # the voice's override, not the default
    assert 'tts_provider_characters_total{provider="openai"} 9.0' in metrics
