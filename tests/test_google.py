"""``type: google`` against respx mocks of Cloud Text-to-Speech's ``text:synthesize``: one JSON
reply with base64 LINEAR16 that carries a WAV header, errors in Google's JSON shape."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.audio import wav_header
from gateway.config import parse_config
from providers.base import ProviderConfig, ProviderHTTPError, SynthesisJob, build_provider
from tests.support import peak_frequency, tone

pytestmark = pytest.mark.respx(using="httpx")

URL = "https://texttospeech.googleapis.com/v1/text:synthesize"
KEY = "AIza-test-key"


def reply(pcm: bytes, rate: int) -> httpx.Response:
    audio = wav_header(rate, data_bytes=len(pcm)) + pcm
    return httpx.Response(200, json={"audioContent": base64.b64encode(audio).decode()})


async def collect(job: SynthesisJob) -> bytes:
    provider = build_provider(ProviderConfig(name="g", type="google", settings={"api_key": KEY}))
    try:
        return b"".join([c async for c in provider.stream(job)])
    finally:
        await provider.aclose()


def job(**fields: Any) -> SynthesisJob:
    values: dict[str, Any] = {
        "text": "Hello there.",
        "voice": "en-US-Neural2-F",
        "sample_rate": 16000,
    }
    values.update(fields)
    return SynthesisJob(**values)


async def test_request_and_wav_header_dropped(respx_mock: respx.MockRouter) -> None:
    pcm = tone(440, 0.2, 16000)
    route = respx_mock.post(URL).mock(return_value=reply(pcm, 16000))
    assert await collect(job(options={"speakingRate": 1.2})) == pcm
    sent = route.calls.last.request
    assert sent.url.params["key"] == KEY
    assert json.loads(sent.content) == {
        "input": {"text": "Hello there."},
        "voice": {"languageCode": "en-US", "name": "en-US-Neural2-F"},
        "audioConfig": {"audioEncoding": "LINEAR16", "sampleRateHertz": 16000, "speakingRate": 1.2},
    }


async def test_long_text_in_byte_limited_pieces(respx_mock: respx.MockRouter) -> None:
    pcm = tone(440, 0.05, 16000)
    route = respx_mock.post(URL).mock(return_value=reply(pcm, 16000))
    text = " ".join(["Ünïcödé sentence with accents."] * 250)  # ~8500 bytes in UTF-8
    audio = await collect(job(text=text))
    pieces = [json.loads(c.request.content)["input"]["text"] for c in route.calls]
    assert len(pieces) == 2 and all(len(p.encode()) <= 5000 for p in pieces)
    assert audio == pcm * 2  # each piece's WAV header dropped, not played


async def test_gemini_voice_gets_the_emotion_as_prompt(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(return_value=reply(b"\x00\x00", 16000))
    await collect(job(emotion="sad", options={"model_name": "gemini-2.5-flash-tts"}))
    body = json.loads(route.calls.last.request.content)
    assert body["input"]["prompt"] == "Speak in a sad tone."
    assert body["voice"]["model_name"] == "gemini-2.5-flash-tts"


@pytest.mark.parametrize(
    ("status", "reason", "retryable"),
    [
        (400, "INVALID_ARGUMENT", False),
        (403, "PERMISSION_DENIED", False),
        (429, "RESOURCE_EXHAUSTED", True),
        (503, "UNAVAILABLE", True),
    ],
)
async def test_errors(
    respx_mock: respx.MockRouter, status: int, reason: str, retryable: bool
) -> None:
    body = {"error": {"code": status, "message": f"{reason} happened", "status": reason}}
    respx_mock.post(URL).mock(return_value=httpx.Response(status, json=body))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(job())
    assert caught.value.retryable is retryable and f"{reason} happened" in str(caught.value)


async def test_a_reply_without_audio_is_an_error(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).mock(return_value=httpx.Response(200, json={"unexpected": True}))
    with pytest.raises(ProviderHTTPError):
        await collect(job())


def test_google_through_the_gateway(respx_mock: respx.MockRouter) -> None:
    respx_mock.route(host="testserver").pass_through()
    respx_mock.post(URL).mock(return_value=reply(tone(1000, 1.0, 48000), 48000))
    routing = f"""
server: {{default_voice: en-US-Neural2-F}}
providers: {{g: {{type: google, api_key: "{KEY}"}}}}
voices: {{en-US-Neural2-F: {{provider: g}}}}
"""
    with TestClient(create_app(parse_config(routing))) as client:
        response = client.post("/stream-audio", json={"Text": "Hi.", "SampleRate": 48000})
    assert response.status_code == 200
    assert len(response.content) == 48000 * 2  # the header never reaches the caller
    assert abs(peak_frequency(response.content, 48000) - 1000) <= 2
