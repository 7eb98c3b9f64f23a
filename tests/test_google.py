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
from gateway.config import parse_config
from providers.base import (
    ProviderConfig,
    ProviderHTTPError,
    ProviderProtocolError,
    SynthesisJob,
    build_provider,
)
from providers.wav import wav_header
from tests.support import drain, peak_frequency, synthesize, tone

pytestmark = pytest.mark.respx(using="httpx")

URL = "https://texttospeech.googleapis.com/v1/text:synthesize"
KEY = "AIza-test-key"


def reply(pcm: bytes, rate: int) -> httpx.Response:
    audio = wav_header(rate, data_bytes=len(pcm)) + pcm
    return httpx.Response(200, json={"audioContent": base64.b64encode(audio).decode()})


async def collect(job: SynthesisJob) -> bytes:
    return await synthesize("google", job, api_key=KEY)


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
    assert sent.headers["x-goog-api-key"] == KEY
    assert KEY not in str(sent.url)  # never in the URL, which HTTP libraries log
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
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(job())
    assert "no audioContent" in str(caught.value) and caught.value.summary == "unexpected answer"


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


def service_account_file(tmp_path: Any) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path / "sa.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "demo",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "tts@demo.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return str(path)


async def test_service_account_token_is_fetched_once_and_sent_as_bearer(
    respx_mock: respx.MockRouter, tmp_path: Any
) -> None:
    token = respx_mock.post("https://oauth2.googleapis.com/token").mock(
        return_value=httpx.Response(
            200,
            json={"access_token": "ya29.test-token", "expires_in": 3600, "token_type": "Bearer"},
        )
    )
    synth = respx_mock.post(URL).mock(return_value=reply(b"\x01\x00", 16000))
    provider = build_provider(
        ProviderConfig(
            name="g", type="google", settings={"credentials_file": service_account_file(tmp_path)}
        )
    )
    try:
        for _ in range(2):
            assert b"".join([c async for c in provider.stream(job())]) == b"\x01\x00"
    finally:
        await provider.aclose()
    assert token.call_count == 1  # cached until it expires
    grant = token.calls.last.request.content.decode()
    assert "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" in grant
    sent = synth.calls.last.request
    assert sent.headers["authorization"] == "Bearer ya29.test-token"
    assert "key" not in sent.url.params


async def test_a_refused_service_account_is_not_retried(
    respx_mock: respx.MockRouter, tmp_path: Any
) -> None:
    respx_mock.post("https://oauth2.googleapis.com/token").mock(
        return_value=httpx.Response(
            400, json={"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        )
    )
    provider = build_provider(
        ProviderConfig(
            name="g", type="google", settings={"credentials_file": service_account_file(tmp_path)}
        )
    )
    with pytest.raises(ProviderHTTPError) as caught:
        await drain(provider, job())
    assert not caught.value.retryable and "invalid_grant" in str(caught.value)


def test_google_needs_a_key_or_a_credentials_file(tmp_path: Any) -> None:
    from gateway.config import ConfigError

    base = "voices: {v: {provider: g}}\nserver: {default_voice: v}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config("providers: {g: {type: google}}\n" + base)
    assert "providers.g.api_key" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_config(
            f"providers: {{g: {{type: google, credentials_file: {tmp_path}/no.json}}}}\n" + base
        )
    assert "providers.g.credentials_file" in str(caught.value)


@pytest.mark.parametrize(
    ("voice", "options", "language"),
    [
        ("en-US-Neural2-F", {}, "en-US"),
        ("cmn-CN-Wavenet-A", {}, "cmn-CN"),
        ("es-419-Standard-A", {}, "es-419"),
        ("Kore", {"model_name": "gemini-2.5-flash-tts"}, "en-US"),  # no locale: the default
        ("Puck", {"model_name": "gemini-2.5-flash-tts", "languageCode": "de-DE"}, "de-DE"),
        ("en-US-Neural2-F", {"languageCode": "en-GB"}, "en-GB"),  # the option wins
    ],
)
async def test_language_code_comes_from_a_locale_or_the_option(
    respx_mock: respx.MockRouter, voice: str, options: dict[str, Any], language: str
) -> None:
    route = respx_mock.post(URL).mock(return_value=reply(b"\x00\x00", 16000))
    await collect(job(voice=voice, options=options))
    sent = json.loads(route.calls.last.request.content)["voice"]
    assert sent["languageCode"] == language and sent["name"] == voice


def test_the_caller_is_shown_googles_error_status_from_a_200_body(
    respx_mock: respx.MockRouter,
) -> None:
    respx_mock.route(host="testserver").pass_through()
    body = {"error": {"code": 400, "message": "voice not found", "status": "INVALID_ARGUMENT"}}
    respx_mock.post(URL).mock(return_value=httpx.Response(200, json=body))
    routing = f"""
server: {{default_voice: en-US-Neural2-F}}
providers: {{g: {{type: google, api_key: "{KEY}"}}}}
voices: {{en-US-Neural2-F: {{provider: g}}}}
"""
    with TestClient(create_app(parse_config(routing))) as client:
        response = client.post("/stream-audio", json={"Text": "Hi.", "SampleRate": 16000})
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "(g): error INVALID_ARGUMENT" in message and "HTTP 200" not in message


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[]", "JSON list where an object was due"),
        (b'{"audioContent": 5}', "no audioContent"),
        (b'{"audioContent": "abc"}', "undecodable audioContent"),
    ],
)
async def test_malformed_replies_are_provider_errors(
    respx_mock: respx.MockRouter, content: bytes, reason: str
) -> None:
    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            200, content=content, headers={"Content-Type": "application/json; charset=UTF-8"}
        )
    )
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(job())
    assert reason in str(caught.value)


async def test_an_html_page_at_200_is_an_error(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            200, content=b"<html>captive portal</html>", headers={"Content-Type": "text/html"}
        )
    )
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(job())
    assert "text/html" in str(caught.value) and "captive portal" in str(caught.value)


async def test_a_reply_bigger_than_the_text_could_need_is_refused(
    respx_mock: respx.MockRouter,
) -> None:
    # "Hi." at 8 kHz may take ~30 s of audio (~700 KB in base64); this reply is 8 MB.
    respx_mock.post(URL).mock(return_value=reply(b"\x00\x00" * 3_000_000, 8000))
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(job(text="Hi.", sample_rate=8000))
    assert "the answer is over" in str(caught.value)
    # A reply of the size the text needs is fine.
    respx_mock.post(URL).mock(return_value=reply(b"\x00\x00" * 8000, 8000))
    assert len(await collect(job(text="Hi.", sample_rate=8000))) == 16000


async def test_a_long_clip_is_decoded_piece_by_piece(respx_mock: respx.MockRouter) -> None:
    # 60 s at 48 kHz is 7.7 MB of base64: decoded whole, it would hold the event loop for tens
    # of milliseconds; in pieces the other streams get the loop between them.
    pcm = tone(440, 60.0, 48000)
    respx_mock.post(URL).mock(return_value=reply(pcm, 48000))
    provider = build_provider(
        ProviderConfig(name="google", type="google", settings={"api_key": KEY})
    )
    pieces = [
        piece
        async for piece in provider.stream(job(sample_rate=48000, text="A long answer. " * 40))
    ]
    await provider.aclose()
    assert len(pieces) > 10
    assert max(len(p) for p in pieces) <= 200 * 1024
    assert b"".join(pieces) == pcm  # the WAV header dropped, nothing else lost
