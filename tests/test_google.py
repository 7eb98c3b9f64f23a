"""``type: google`` against respx mocks of Cloud Text-to-Speech's ``text:synthesize``: one JSON
reply with base64 LINEAR16 that carries a WAV header, service-account tokens, Google's error
shape; what is specific to it (the contract every provider keeps is
``tests/test_provider_contract.py``)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

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
from tests.support import drain, job_maker, leaked, live_server, logging_at_debug, synthesize, tone

pytestmark = pytest.mark.respx(using="httpx")

URL = "https://texttospeech.googleapis.com/v1/text:synthesize"
KEY = "AIza-test-key"


def reply(pcm: bytes, rate: int) -> httpx.Response:
    audio = wav_header(rate, data_bytes=len(pcm)) + pcm
    return httpx.Response(200, json={"audioContent": base64.b64encode(audio).decode()})


async def collect(job: SynthesisJob) -> bytes:
    return await synthesize("google", job, api_key=KEY)


job = job_maker(text="Hello there.", voice="en-US-Neural2-F", sample_rate=16000)


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


async def test_gemini_voice_gets_the_emotion_as_prompt(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(return_value=reply(b"\x00\x00", 16000))
    await collect(job(emotion="sad", options={"model_name": "gemini-2.5-flash-tts"}))
    body = json.loads(route.calls.last.request.content)
    assert body["input"]["prompt"] == "Speak in a sad tone."
    assert body["voice"]["model_name"] == "gemini-2.5-flash-tts"


async def test_a_reply_without_audio_is_an_error(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).mock(return_value=httpx.Response(200, json={"unexpected": True}))
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(job())
    assert "no audioContent" in str(caught.value) and caught.value.summary == "unexpected answer"


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


def private_key_line(credentials: str) -> str:
    """A line from the middle of the key file's private key: a secret no log may show."""
    key: str = json.loads(Path(credentials).read_text())["private_key"]
    return key.splitlines()[5]


@pytest.fixture
def debug_log(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    with logging_at_debug(capsys) as read:
        yield read


@pytest.mark.parametrize("outcome", ["success", "error"])
async def test_the_service_accounts_key_and_token_are_never_logged(
    respx_mock: respx.MockRouter,
    caplog: pytest.LogCaptureFixture,
    debug_log: Callable[[], str],
    tmp_path: Path,
    outcome: str,
) -> None:
    credentials = service_account_file(tmp_path)
    key_line = private_key_line(credentials)
    access_token = "ya29.LEAKCHECK-access-token-0123"
    respx_mock.route(host="127.0.0.1").pass_through()  # the test's own client, to the gateway
    respx_mock.post("https://oauth2.googleapis.com/token").mock(
        return_value=httpx.Response(
            200, json={"access_token": access_token, "expires_in": 3600, "token_type": "Bearer"}
        )
    )
    echo = {"code": 401, "message": f"Invalid credentials: Bearer {access_token}"}
    respx_mock.post(URL).mock(
        return_value=reply(tone(440, 0.1, 24000), 24000)
        if outcome == "success"
        else httpx.Response(401, json={"error": {**echo, "status": "UNAUTHENTICATED"}})
    )
    routing = json.dumps(
        {
            "server": {"default_voice": "v", "log_level": "debug"},
            "providers": {"g": {"type": "google", "credentials_file": credentials}},
            "voices": {"v": {"provider": "g", "voice": "en-US-Neural2-F"}},
        }
    )
    async with live_server(create_app(parse_config(routing))) as base, httpx.AsyncClient() as c:
        response = await c.post(base + "/stream-audio", json={"Text": "Hi.", "SampleRate": 24000})
    assert response.status_code == (200 if outcome == "success" else 502)
    written = debug_log()
    assert "failed before audio" in written or outcome == "success"
    assert leaked([access_token, key_line], written, caplog.records) == []
    assert access_token not in response.text


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
        # One sentence: one request (a text of several is cut into pieces: test_pieces.py).
        async for piece in provider.stream(job(sample_rate=48000, text="a long answer " * 40))
    ]
    await provider.aclose()
    assert len(pieces) > 10
    assert max(len(p) for p in pieces) <= 200 * 1024
    assert b"".join(pieces) == pcm  # the WAV header dropped, nothing else lost


async def test_the_first_sentence_goes_alone_and_the_rest_follows_in_order(
    respx_mock: respx.MockRouter,
) -> None:
    """Google answers whole clips: the first sentence is asked for alone, so that its audio
    can leave after one sentence's synthesis; the next pieces are asked for while it plays."""
    text = (
        "Thanks for calling the clinic. Our office opens at nine in the morning. It closes at "
        "five in the afternoon. On weekends you can leave us a message. We call back soon."
    )
    clips: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        said = json.loads(request.content)["input"]["text"]
        clips.append(tone(200 + 100 * len(clips), 0.01 * len(said), 16000))
        return reply(clips[-1], 16000)

    route = respx_mock.post(URL).mock(side_effect=answer)
    audio = await collect(job(text=text))
    sent = [json.loads(call.request.content)["input"]["text"] for call in route.calls]
    assert sent[0] == "Thanks for calling the clinic."
    assert len(sent) > 2 and " ".join(sent) == text
    assert audio == b"".join(clips)  # each piece's audio, its WAV header dropped, in order
