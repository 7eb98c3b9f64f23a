"""ElevenLabs, Cartesia, Deepgram and Fish — providers that stream raw PCM bytes — against respx
mocks of their documented requests, answers and errors, and through the gateway; and, for every
provider whose answer is the audio itself, the check that an answer of another type is an error."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import ConfigError, parse_config
from providers.base import ProviderConfig, ProviderHTTPError, ProviderProtocolError, SynthesisJob
from providers.cartesia import CartesiaProvider
from providers.deepgram import DeepgramProvider
from providers.elevenlabs import ElevenLabsProvider
from tests.support import peak_frequency, synthesize, tone

pytestmark = pytest.mark.respx(using="httpx")

KEY = "key-0123456789"


async def collect(provider_type: str, job: SynthesisJob, **settings: Any) -> bytes:
    return await synthesize(provider_type, job, api_key=KEY, **settings)


def job(**fields: Any) -> SynthesisJob:
    values: dict[str, Any] = {"text": "Hello there.", "voice": "v-1", "sample_rate": 16000}
    values.update(fields)
    return SynthesisJob(**values)


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


@pytest.mark.parametrize(
    ("status", "body", "retryable", "words"),
    [
        (
            401,
            {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}},
            False,
            "Invalid API key",
        ),
        (
            422,
            {
                "detail": [
                    {
                        "loc": ["body", "text"],
                        "msg": "field required",
                        "type": "value_error.missing",
                    }
                ]
            },
            False,
            "field required",
        ),
        (
            429,
            {
                "detail": {
                    "status": "too_many_concurrent_requests",
                    "message": "Too many concurrent requests",
                }
            },
            True,
            "concurrent",
        ),
        (429, {"detail": {"status": "system_busy", "message": "System busy"}}, True, "busy"),
    ],
)
async def test_elevenlabs_errors(
    respx_mock: respx.MockRouter, status: int, body: Any, retryable: bool, words: str
) -> None:
    respx_mock.post(EL).mock(return_value=httpx.Response(status, json=body))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect("elevenlabs", job())
    assert (caught.value.status, caught.value.retryable) == (status, retryable)
    assert words in str(caught.value)


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


async def test_cartesia_error_shape(respx_mock: respx.MockRouter) -> None:
    body = {
        "error_code": "invalid_voice",
        "title": "Invalid voice",
        "message": "Voice v-1 was not found",
        "request_id": "r-1",
    }
    respx_mock.post(CA).mock(return_value=httpx.Response(400, json=body))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect("cartesia", job())
    assert not caught.value.retryable
    assert "Voice v-1 was not found" in str(caught.value)


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


async def test_deepgram_text_limit_and_errors(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(DG).mock(return_value=pcm())
    long = " ".join(["A sentence of a few words here."] * 100)  # ~3200 characters
    await collect("deepgram", job(text=long))
    texts = [json.loads(call.request.content)["text"] for call in route.calls]
    assert len(texts) == 2 and all(len(t) <= 2000 for t in texts)
    body = {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.", "request_id": "r"}
    respx_mock.post(DG).mock(return_value=httpx.Response(401, json=body))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect("deepgram", job())
    assert not caught.value.retryable and "Invalid credentials." in str(caught.value)
    respx_mock.post(DG).mock(return_value=httpx.Response(429, json={"err_msg": "Too many"}))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect("deepgram", job())
    assert caught.value.retryable


# ------------------------------------------------------------------ through the gateway


@pytest.mark.parametrize(
    ("provider_type", "url", "native_rate"),
    [
        ("elevenlabs", EL, 24000),
        ("cartesia", CA, 16000),
        ("deepgram", DG, 16000),
        ("fish", "https://api.fish.audio/v1/tts", 16000),
        ("azure", "https://westeurope.tts.speech.microsoft.com/cognitiveservices/v1", 16000),
    ],
)
def test_tone_survives_the_gateway(
    respx_mock: respx.MockRouter, provider_type: str, url: str, native_rate: int
) -> None:
    respx_mock.route(host="testserver").pass_through()
    respx_mock.post(url).mock(return_value=pcm(tone(1000, 1.0, native_rate)))
    region = ", region: westeurope" if provider_type == "azure" else ""
    routing = f"""
server: {{default_voice: v-1}}
providers: {{p: {{type: {provider_type}, api_key: "{KEY}"{region}}}}}
voices: {{v-1: {{provider: p}}}}
"""
    wanted = 24000 if provider_type == "elevenlabs" else 16000
    with TestClient(create_app(parse_config(routing))) as client:
        response = client.post("/stream-audio", json={"Text": "Hi.", "SampleRate": wanted})
    assert response.status_code == 200
    out = response.content
    assert abs(len(out) // 2 - wanted) <= 1
    assert abs(peak_frequency(out, wanted) - 1000) <= 2


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


async def test_fish_error_shape(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(FISH).mock(
        return_value=httpx.Response(402, json={"status": 402, "message": "Insufficient balance"})
    )
    with pytest.raises(ProviderHTTPError) as caught:
        await collect("fish", job())
    assert not caught.value.retryable and "Insufficient balance" in str(caught.value)


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


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (401, False), (415, False), (429, True), (502, True), (503, True)],
)
async def test_azure_statuses(respx_mock: respx.MockRouter, status: int, retryable: bool) -> None:
    respx_mock.post(AZ).mock(return_value=httpx.Response(status, headers={"Retry-After": "1"}))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect("azure", job(), region="westeurope")
    assert caught.value.retryable is retryable


def test_azure_needs_a_region_or_endpoint() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "providers: {az: {type: azure, api_key: k}}\nvoices: {v: {provider: az}}\n"
            "server: {default_voice: v}\n"
        )
    assert "providers.az.region" in str(caught.value)


# ------------------------------------------------------------------ every raw-audio provider

#: Each provider whose success answer is the audio itself: where it posts, what it needs.
RAW_AUDIO: dict[str, tuple[str, dict[str, Any]]] = {
    "openai": ("https://api.openai.com/v1/audio/speech", {"api_key": KEY}),
    "azure": (
        "https://westeurope.tts.speech.microsoft.com/cognitiveservices/v1",
        {"api_key": KEY, "region": "westeurope"},
    ),
    "elevenlabs": (EL, {"api_key": KEY}),
    "cartesia": ("https://api.cartesia.ai/tts/bytes", {"api_key": KEY}),
    "deepgram": ("https://api.deepgram.com/v1/speak", {"api_key": KEY}),
    "fish": (FISH, {"api_key": KEY}),
    "polly": (
        "https://polly.eu-west-1.amazonaws.com/v1/speech",
        {"region": "eu-west-1", "access_key_id": "AKIDEXAMPLE", "secret_access_key": "s3cr3t-key"},
    ),
    "custom": (
        "https://tts.upstream.test/stream-audio",
        {"url": "https://tts.upstream.test/stream-audio"},
    ),
}

NOT_AUDIO = [
    ("text/html", b"<html><body><h1>503 Service Unavailable</h1></body></html>"),
    ("application/json", b'{"error": {"message": "quota exceeded"}}'),
    ("text/plain; charset=utf-8", b"quota exceeded"),
    ("application/xml", b"<Error><Message>quota exceeded</Message></Error>"),
]


@pytest.mark.parametrize("kind", RAW_AUDIO)
@pytest.mark.parametrize(("content_type", "body"), NOT_AUDIO)
async def test_an_answer_that_is_not_audio_is_an_error(
    respx_mock: respx.MockRouter, kind: str, content_type: str, body: bytes
) -> None:
    url, settings = RAW_AUDIO[kind]
    respx_mock.post(url__startswith=url).mock(
        return_value=httpx.Response(200, content=body, headers={"Content-Type": content_type})
    )
    with pytest.raises(ProviderProtocolError) as caught:
        await synthesize(kind, job(voice="v-1"), **settings)
    assert caught.value.reason.startswith(f"answered {content_type.partition(';')[0]}")
    assert "503 Service Unavailable" in caught.value.reason or "quota" in caught.value.reason


@pytest.mark.parametrize("kind", RAW_AUDIO)
@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "audio/pcm"},
        {"Content-Type": "audio/mpeg"},
        {"Content-Type": "application/octet-stream"},
        {},
    ],
)
async def test_audio_and_unlabelled_answers_are_audio(
    respx_mock: respx.MockRouter, kind: str, headers: dict[str, str]
) -> None:
    url, settings = RAW_AUDIO[kind]
    respx_mock.post(url__startswith=url).mock(
        return_value=httpx.Response(200, content=b"\x01\x00" * 16, headers=headers)
    )
    assert await synthesize(kind, job(voice="v-1"), **settings) == b"\x01\x00" * 16


async def test_a_compressed_answer_is_refused_before_it_is_expanded(
    respx_mock: respx.MockRouter,
) -> None:
    bomb = gzip.compress(b"\x00" * 4_000_000)  # 4 KB that would become 4 MB in one read
    route = respx_mock.post(EL).mock(
        return_value=httpx.Response(
            200, content=bomb, headers={"Content-Type": "audio/pcm", "Content-Encoding": "gzip"}
        )
    )
    with pytest.raises(ProviderProtocolError) as caught:
        await collect("elevenlabs", job())
    assert "compressed" in caught.value.reason
    assert route.calls.last.request.headers["accept-encoding"] == "identity"
