"""The gateway's log (``gateway.logs``): no configured secret of any provider in any line at any
level, with a request through the gateway to each provider type, answered with success and with
an error that echoes the secret back; and the masking formatter on its own."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from gateway.app import create_app
from gateway.config import parse_config
from gateway.logs import LOG_FORMAT, QUIET_LOGGERS, configure_logging
from providers.base import ProviderConfig, build_provider
from providers.wav import wav_header
from tests.support import TaskServer, live_server, running_task_server, tone

pytestmark = pytest.mark.respx(using="httpx")

PCM = tone(440, 0.1, 24000)
KEY = "sk-LEAKCHECK-0123456789abcdef"
TOKEN = "tok-LEAKCHECK-fedcba9876543210"
ACCESS_TOKEN = "ya29.LEAKCHECK-access-token-0123"
HEADER_TOKEN = "hdr-LEAKCHECK-5566778899"
AWS_KEY_ID = "AKIALEAKCHECK0123456"
AWS_SECRET = "LeakCheck/Secret+Access/Key0123456789abcd"
AWS_SESSION = "FwoGZXIvYXdzLEAKCHECK//session+token=="


@dataclass
class Case:
    """One provider type: its routing-file block, its secrets, and how its upstream answers."""

    block: dict[str, Any]
    secrets: list[str]
    url: str = ""
    success: Callable[[], httpx.Response] | None = None
    failure: Callable[[], httpx.Response] | None = None
    extra_routes: dict[str, httpx.Response] = field(default_factory=dict)


def audio(content_type: str = "audio/pcm") -> httpx.Response:
    return httpx.Response(200, content=PCM, headers={"Content-Type": content_type})


def sse(lines: list[str]) -> httpx.Response:
    body = "".join(f"data: {line}\n\n" for line in lines).encode()
    return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})


def google_reply() -> httpx.Response:
    content = base64.b64encode(wav_header(24000, data_bytes=len(PCM)) + PCM).decode()
    return httpx.Response(200, json={"audioContent": content})


def google_error(message: str, status: int = 400) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": status, "message": message, "status": "INVALID_ARGUMENT"}}
    )


def service_account(path: Path) -> tuple[str, str]:
    """A service-account key file; returns its path and a line of its private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
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
    return str(path), pem.splitlines()[5]


def cases(tmp_path: Path) -> dict[str, Case]:
    echo = f"Incorrect API key provided: {KEY}."
    credentials, key_line = service_account(tmp_path / "sa.json")
    return {
        "openai": Case(
            {"type": "openai", "api_key": KEY},
            [KEY],
            "https://api.openai.com/v1/audio/speech",
            audio,
            lambda: httpx.Response(
                401,
                json={
                    "error": {
                        "message": echo,
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
            ),
        ),
        "azure": Case(
            {"type": "azure", "api_key": KEY, "region": "westeurope"},
            [KEY],
            "https://westeurope.tts.speech.microsoft.com/cognitiveservices/v1",
            audio,
            lambda: httpx.Response(401, json={"error": {"code": "401", "message": echo}}),
        ),
        "google (api key)": Case(
            {"type": "google", "api_key": KEY},
            [KEY],
            "https://texttospeech.googleapis.com/v1/text:synthesize",
            google_reply,
            lambda: google_error(f"API key not valid: {KEY}"),
        ),
        "google (service account)": Case(
            {"type": "google", "credentials_file": credentials},
            [ACCESS_TOKEN, key_line],
            "https://texttospeech.googleapis.com/v1/text:synthesize",
            google_reply,
            lambda: google_error(f"Invalid credentials: Bearer {ACCESS_TOKEN}", 401),
            {
                "https://oauth2.googleapis.com/token": httpx.Response(
                    200,
                    json={"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"},
                )
            },
        ),
        "polly": Case(
            {
                "type": "polly",
                "region": "eu-west-1",
                "access_key_id": AWS_KEY_ID,
                "secret_access_key": AWS_SECRET,
                "session_token": AWS_SESSION,
            },
            [AWS_KEY_ID, AWS_SECRET, AWS_SESSION],
            "https://polly.eu-west-1.amazonaws.com/v1/speech",
            audio,
            lambda: httpx.Response(
                403,
                json={"message": f"The security token {AWS_SESSION} of {AWS_KEY_ID} is invalid."},
                headers={"x-amzn-ErrorType": "UnrecognizedClientException:"},
            ),
        ),
        "elevenlabs": Case(
            {"type": "elevenlabs", "api_key": KEY},
            [KEY],
            "https://api.elevenlabs.io/v1/text-to-speech/",
            lambda: audio("audio/mpeg"),
            lambda: httpx.Response(
                401, json={"detail": {"status": "invalid_api_key", "message": echo}}
            ),
        ),
        "cartesia": Case(
            {"type": "cartesia", "api_key": KEY},
            [KEY],
            "https://api.cartesia.ai/tts/bytes",
            audio,
            lambda: httpx.Response(
                401,
                json={
                    "error_code": "invalid_api_key",
                    "title": "Unauthorized",
                    "message": echo,
                    "request_id": "r-1",
                },
            ),
        ),
        "deepgram": Case(
            {"type": "deepgram", "api_key": KEY},
            [KEY],
            "https://api.deepgram.com/v1/speak",
            lambda: audio("audio/l16"),
            lambda: httpx.Response(
                401, json={"err_code": "INVALID_AUTH", "err_msg": echo, "request_id": "r-1"}
            ),
        ),
        "minimax": Case(
            {"type": "minimax", "api_key": KEY},
            [KEY],
            "https://api.minimax.io/v1/t2a_v2",
            lambda: sse(
                [
                    json.dumps(
                        {
                            "data": {"audio": PCM.hex(), "status": 1},
                            "base_resp": {"status_code": 0, "status_msg": "success"},
                        }
                    )
                ]
            ),
            lambda: httpx.Response(
                200, json={"base_resp": {"status_code": 1004, "status_msg": echo}}
            ),
        ),
        "qwen": Case(
            {"type": "qwen", "api_key": KEY},
            [KEY],
            "https://dashscope-intl.aliyuncs.com/api/v1/services/aigc/multimodal-generation/generation",
            lambda: sse(
                [
                    json.dumps(
                        {
                            "output": {
                                "audio": {"data": base64.b64encode(PCM).decode()},
                                "finish_reason": "stop",
                            }
                        }
                    )
                ]
            ),
            lambda: httpx.Response(
                401, json={"code": "InvalidApiKey", "message": echo, "request_id": "r-1"}
            ),
        ),
        "cosyvoice": Case({"type": "cosyvoice", "api_key": KEY}, [KEY]),
        "volcengine": Case(
            {"type": "volcengine", "app_id": "app-1", "access_key": TOKEN},
            [TOKEN],
            "https://openspeech.bytedance.com/api/v3/tts/unidirectional",
            lambda: httpx.Response(
                200,
                content=json.dumps({"code": 0, "data": base64.b64encode(PCM).decode()}).encode()
                + b'\n{"code": 20000000, "message": "ok", "data": null}',
                headers={"Content-Type": "application/json"},
            ),
            lambda: httpx.Response(
                200, json={"code": 45000010, "message": f"invalid access key {TOKEN}"}
            ),
        ),
        "fish": Case(
            {"type": "fish", "api_key": KEY},
            [KEY],
            "https://api.fish.audio/v1/tts",
            audio,
            lambda: httpx.Response(401, json={"status": 401, "message": echo}),
        ),
        "custom (token)": Case(
            {"type": "custom", "url": "https://tts.upstream.test/stream-audio", "token": TOKEN},
            [TOKEN],
            "https://tts.upstream.test/stream-audio",
            lambda: audio("audio/mpeg"),
            lambda: httpx.Response(200, json={"error": f"quota exceeded for Token {TOKEN}"}),
        ),
        "custom (auth header)": Case(
            {
                "type": "custom",
                "url": "https://tts.upstream.test/stream-audio",
                "headers": {"Authorization": f"Bearer {HEADER_TOKEN}", "X-Tenant": "t-1"},
            },
            [HEADER_TOKEN],
            "https://tts.upstream.test/stream-audio",
            audio,
            lambda: httpx.Response(401, text=f"rejected Authorization: Bearer {HEADER_TOKEN}"),
        ),
    }


CASES = [
    "openai",
    "azure",
    "google (api key)",
    "google (service account)",
    "polly",
    "elevenlabs",
    "cartesia",
    "deepgram",
    "minimax",
    "qwen",
    "cosyvoice",
    "volcengine",
    "fish",
    "custom (token)",
    "custom (auth header)",
]


@pytest.fixture
def debug_log(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """The gateway's log configured at debug, as ``serve`` does; yields a reader of what it
    wrote. Everything it changed is put back after."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    saved_quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    configure_logging("debug")
    written: list[str] = []

    def read() -> str:
        written.append(capsys.readouterr().err)
        return "".join(written)

    try:
        yield read
    finally:
        for handler in root.handlers:
            if handler not in saved_handlers:
                root.removeHandler(handler)
        root.setLevel(saved_level)
        for name, level in saved_quiet.items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("outcome", ["success", "error"])
@pytest.mark.parametrize("name", CASES)
async def test_no_secret_in_any_log_line_at_debug(
    name: str,
    outcome: str,
    respx_mock: respx.MockRouter,
    caplog: pytest.LogCaptureFixture,
    debug_log: Callable[[], str],
    tmp_path: Path,
) -> None:
    case = cases(tmp_path)[name]
    respx_mock.route(host="127.0.0.1").pass_through()  # the test's own client, to the gateway
    for url, extra in case.extra_routes.items():
        respx_mock.post(url).mock(return_value=extra)
    cosyvoice = TaskServer(
        [PCM] if outcome == "success" else [],
        fail=None if outcome == "success" else ("InvalidApiKey", f"bad key {KEY}"),
    )
    async with running_task_server(cosyvoice) as ws_url:
        block = dict(case.block, retry={"attempts": 1})
        if block["type"] == "cosyvoice":
            block["url"] = ws_url
        else:
            answer = case.success if outcome == "success" else case.failure
            assert answer is not None
            respx_mock.post(url__startswith=case.url).mock(side_effect=lambda request: answer())
        routing = json.dumps(
            {
                "server": {"default_voice": "v", "log_level": "debug"},
                "providers": {"p": block},
                "voices": {"v": {"provider": "p", "voice": "v-1"}},
            }
        )
        app = create_app(parse_config(routing))
        async with live_server(app) as base, httpx.AsyncClient() as client:
            response = await client.post(
                base + "/stream-audio", json={"Text": "Hello.", "SampleRate": 24000}
            )
    if outcome == "success":
        assert response.status_code == 200 and len(response.content) > 1000
    else:
        assert response.status_code == 502
        assert "failed before audio" in caplog.text  # the error was logged, its echo masked
    written = debug_log()
    assert "DEBUG" in written or "INFO" in written  # the log did run at a verbose level
    raw = logging.Formatter(LOG_FORMAT)
    for secret in case.secrets:
        assert secret not in written, f"{name}: a secret in the gateway's log"
        for record in caplog.records:  # as emitted, before any masking
            assert secret not in raw.format(record), f"{name}: {record.name} logged a secret"
        assert secret not in response.text


def test_the_formatter_masks_every_providers_secrets_in_messages_and_tracebacks(
    debug_log: Callable[[], str],
) -> None:
    provider = build_provider(
        ProviderConfig(
            name="up",
            type="custom",
            settings={
                "url": "https://tts.upstream.test/stream-audio",
                "token": TOKEN,
                "headers": {"X-Api-Key": HEADER_TOKEN},
            },
        )
    )
    log = logging.getLogger("gateway.test")
    log.warning("echoed %s and %s", TOKEN, HEADER_TOKEN)
    try:
        raise RuntimeError(f"upstream said {TOKEN}")
    except RuntimeError:
        log.exception("failed")
    written = debug_log()
    assert "upstream said ***" in written and "echoed *** and ***" in written
    assert TOKEN not in written and HEADER_TOKEN not in written
    assert provider.secrets  # alive until here: its secrets are the ones masked


def test_libraries_that_log_what_they_send_are_held_at_warning(
    debug_log: Callable[[], str],
) -> None:
    assert logging.getLogger().level == logging.DEBUG
    for name in ("httpx", "httpcore", "websockets", "botocore"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING
    configure_logging("error")  # never lowered below the gateway's own level
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.ERROR
    configure_logging("debug")
    handlers = [h for h in logging.getLogger().handlers if type(h).__name__ == "_StderrHandler"]
    assert len(handlers) == 1  # configured twice, one handler


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("chatty")
