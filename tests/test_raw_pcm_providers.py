"""ElevenLabs, Cartesia, Deepgram, Fish and Azure — providers that stream raw PCM bytes — against
respx mocks of their documented requests: what is specific to each (the contract every provider
keeps is ``tests/test_provider_contract.py``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from gateway.config import ConfigError, parse_config
from providers.base import ProviderConfig, SynthesisJob
from providers.cartesia import CartesiaProvider
from providers.deepgram import DeepgramProvider
from providers.elevenlabs import ElevenLabsProvider
from tests.support import job_maker, synthesize

pytestmark = pytest.mark.respx(using="httpx")

KEY = "key-0123456789"


async def collect(provider_type: str, job: SynthesisJob, **settings: Any) -> bytes:
    return await synthesize(provider_type, job, api_key=KEY, **settings)


job = job_maker(text="Hello there.", voice="v-1", sample_rate=16000)


def pcm(data: bytes = b"\x01\x00" * 100) -> httpx.Response:
    return httpx.Response(200, content=data, headers={"Content-Type": "audio/pcm"})


# ------------------------------------------------------------------ ElevenLabs

EL = "https://api.elevenlabs.io/v1/text-to-speech/v-1/stream"


async def test_elevenlabs_request(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(EL).mock(return_value=pcm())
    settings = {"stability": 0.4, "similarity_boost": 0.8}
    audio = await collect("elevenlabs", job(options={"voice_settings": settings}))
    assert audio == b"\x01\x00" * 100
    sent = route.calls.last.request
    assert sent.headers["xi-api-key"] == KEY
    assert sent.url.params["output_format"] == "pcm_16000"
    assert json.loads(sent.content) == {
        "model_id": "eleven_flash_v2_5",
        "text": "Hello there.",
        "voice_settings": settings,
    }


@pytest.mark.parametrize(("wanted", "native"), [(8000, 8000), (24000, 24000), (48000, 48000)])
def test_elevenlabs_asks_for_the_callers_rate(wanted: int, native: int) -> None:
    provider = ElevenLabsProvider(ProviderConfig(name="e", type="elevenlabs", settings={}))
    assert provider.native_format(job(sample_rate=wanted)).sample_rate == native


@pytest.mark.parametrize(
    ("model", "emotion", "text"),
    [
        ("eleven_v3", "happy", "[happy] Hello there."),
        ("eleven_v3", "sad", "[sad] Hello there."),
        ("eleven_v3", None, "Hello there."),
        ("eleven_flash_v2_5", "happy", "Hello there."),  # no tags outside v3
    ],
)
async def test_elevenlabs_v3_emotion_tags(
    respx_mock: respx.MockRouter, model: str, emotion: str | None, text: str
) -> None:
    route = respx_mock.post(EL).mock(return_value=pcm())
    await collect("elevenlabs", job(emotion=emotion, options={"model_id": model}))
    assert json.loads(route.calls.last.request.content)["text"] == text


# ------------------------------------------------------------------ Cartesia

CA = "https://api.cartesia.ai/tts/bytes"


@pytest.mark.parametrize("emotion", ["happy", "sad", "neutral", None])
async def test_cartesia_request(respx_mock: respx.MockRouter, emotion: str | None) -> None:
    route = respx_mock.post(CA).mock(return_value=pcm())
    await collect("cartesia", job(sample_rate=48000, emotion=emotion, options={"language": "en"}))
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["cartesia-version"] == "2025-04-16"
    body = json.loads(sent.content)
    expected: dict[str, Any] = {
        "model_id": "sonic-3",
        "language": "en",
        "transcript": "Hello there.",
        "voice": {"mode": "id", "id": "v-1"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 48000},
    }
    if emotion:
        expected["generation_config"] = {"emotion": emotion}
    assert body == expected


async def test_cartesia_keeps_a_configured_emotion_and_version(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post(CA).mock(return_value=pcm())
    options = {"generation_config": {"speed": 1.1, "emotion": "excited"}}
    await collect("cartesia", job(emotion="happy", options=options), version="2026-01-01")
    sent = route.calls.last.request
    assert sent.headers["cartesia-version"] == "2026-01-01"
    assert json.loads(sent.content)["generation_config"] == {"speed": 1.1, "emotion": "excited"}


def test_cartesia_streams_at_the_callers_rate() -> None:
    provider = CartesiaProvider(ProviderConfig(name="c", type="cartesia", settings={}))
    assert provider.native_format(job(sample_rate=8000)).sample_rate == 8000


# ------------------------------------------------------------------ Deepgram

DG = "https://api.deepgram.com/v1/speak"


async def test_deepgram_request(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(DG).mock(return_value=pcm())
    await collect("deepgram", job(voice="aura-2-thalia-en", sample_rate=48000, emotion="happy"))
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Token {KEY}"
    assert dict(sent.url.params) == {
        "model": "aura-2-thalia-en",
        "encoding": "linear16",
        "sample_rate": "48000",
        "container": "none",  # the default WAV container would put a header into the stream
    }
    assert json.loads(sent.content) == {"text": "Hello there."}  # no emotion control


def test_deepgram_rates() -> None:
    provider = DeepgramProvider(ProviderConfig(name="d", type="deepgram", settings={}))
    assert provider.native_format(job(sample_rate=24000)).sample_rate == 24000
    assert provider.native_format(job(sample_rate=16000)).sample_rate == 16000


# ------------------------------------------------------------------ Fish Audio

FISH = "https://api.fish.audio/v1/tts"


@pytest.mark.parametrize(
    ("model", "emotion", "text", "header"),
    [
        # No model configured: the SDK's default is sent, never left to the server's choice.
        (None, "happy", "[happy] Hello there.", "s2-pro"),
        ("s1", "sad", "(sad) Hello there.", "s1"),  # the s1 models take parentheses
        ("s1", None, "Hello there.", "s1"),
    ],
)
async def test_fish_request(
    respx_mock: respx.MockRouter, model: str | None, emotion: str | None, text: str, header: str
) -> None:
    route = respx_mock.post(FISH).mock(return_value=pcm())
    options: dict[str, Any] = {"latency": "balanced", "prosody": {"speed": 1.1}}
    if model:
        options["model"] = model
    await collect("fish", job(sample_rate=48000, emotion=emotion, options=options))
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["model"] == header
    assert json.loads(sent.content) == {
        "latency": "balanced",
        "prosody": {"speed": 1.1},
        "text": text,
        "reference_id": "v-1",
        "format": "pcm",
        "sample_rate": 44100,  # the closest Fish rate to 48 kHz
    }


# ------------------------------------------------------------------ Azure

AZ = "https://westeurope.tts.speech.microsoft.com/cognitiveservices/v1"


async def test_azure_request_escapes_the_text_and_maps_emotion(
    respx_mock: respx.MockRouter,
) -> None:
    import xml.etree.ElementTree as ET

    route = respx_mock.post(AZ).mock(return_value=pcm())
    text = 'Tom & Jerry say "<hi>" & it\'s 5 > 3.'
    options = {"language": "en-GB", "rate": "+10%", "styledegree": 1.5}
    await collect(
        "azure",
        job(
            text=text,
            voice="en-GB-SoniaNeural",
            sample_rate=48000,
            emotion="happy",
            options=options,
        ),
        region="westeurope",
    )
    sent = route.calls.last.request
    assert sent.headers["ocp-apim-subscription-key"] == KEY
    assert sent.headers["content-type"] == "application/ssml+xml"
    assert sent.headers["x-microsoft-outputformat"] == "raw-48khz-16bit-mono-pcm"
    assert sent.headers["user-agent"]
    root = ET.fromstring(sent.content)  # well-formed XML whatever the text
    ns = {"s": "http://www.w3.org/2001/10/synthesis", "m": "https://www.w3.org/2001/mstts"}
    assert root.get("{http://www.w3.org/XML/1998/namespace}lang") == "en-GB"
    voice = root.find("s:voice", ns)
    assert voice is not None and voice.get("name") == "en-GB-SoniaNeural"
    style = voice.find("m:express-as", ns)
    assert style is not None
    assert (style.get("style"), style.get("styledegree")) == ("cheerful", "1.5")
    prosody = style.find("s:prosody", ns)
    assert prosody is not None and prosody.get("rate") == "+10%"
    assert prosody.text == text


@pytest.mark.parametrize(
    ("wanted", "fmt"), [(8000, "raw-8khz-16bit-mono-pcm"), (24000, "raw-24khz-16bit-mono-pcm")]
)
async def test_azure_output_format_and_endpoint(
    respx_mock: respx.MockRouter, wanted: int, fmt: str
) -> None:
    route = respx_mock.post("https://my.proxy/tts").mock(return_value=pcm())
    await collect(
        "azure", job(sample_rate=wanted, emotion="neutral"), endpoint="https://my.proxy/tts"
    )
    sent = route.calls.last.request
    assert sent.headers["x-microsoft-outputformat"] == fmt
    assert b"express-as" not in sent.content  # neutral: no style


def test_azure_needs_a_region_or_endpoint() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "providers: {az: {type: azure, api_key: k}}\nvoices: {v: {provider: az}}\n"
            "server: {default_voice: v}\n"
        )
    assert "providers.az.region" in str(caught.value)
