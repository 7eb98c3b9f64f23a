"""The contract every cloud provider keeps, each case run for all of them.

A :class:`Profile` describes one provider as its documentation does: where it posts, the
settings it needs (and the secrets among them), how its success answer carries audio, where the
text and the voice go in its request, its error body, and how it reports an error inside a
success answer; and, where it has them, its own error codes and the answers its API never
sends. The cases are then the same for every provider: the request, long text cut within the
provider's limit, error statuses and ``Retry-After``, connection failures, the provider's own
errors, secrets, the caller's hang-up, audio in odd byte counts, no audio, answers that are not
audio, compressed or malformed, endless frames, and the whole path through the gateway and its
log.

The HTTP providers answer through respx mocks of those documented shapes. CosyVoice speaks a
WebSocket task protocol instead; it runs the cases that apply to a WebSocket (audio carried,
hang-up, no audio, through the gateway, the log) against a loopback server that follows it
(``tests.support.TaskServer``). What is specific to one provider is tested in its own file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import gzip
import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import respx

from gateway.app import create_app
from gateway.audio import Converter
from gateway.config import parse_config
from providers._http import HTTPProvider
from providers.base import (
    Provider,
    ProviderConfig,
    ProviderConnectionError,
    ProviderError,
    ProviderHTTPError,
    ProviderProtocolError,
    ProviderTimeout,
    SynthesisJob,
    build_provider,
)
from providers.wav import wav_header
from tests.support import (
    TaskServer,
    drain,
    eventually,
    leaked,
    live_server,
    logging_at_debug,
    peak_frequency,
    running_task_server,
    tone,
)

pytestmark = pytest.mark.respx(using="httpx")

KEY = "sk-LEAKCHECK-0123456789abcdef"
TOKEN = "tok-LEAKCHECK-fedcba9876543210"
HEADER_TOKEN = "hdr-LEAKCHECK-5566778899"
AWS_KEY_ID = "AKIALEAKCHECK0123456"
AWS_SECRET = "LeakCheck/Secret+Access/Key0123456789abcd"
AWS_SESSION = "FwoGZXIvYXdzLEAKCHECK//session+token=="

#: The statuses a provider's error answer may come with, and those worth another attempt.
STATUSES = (400, 401, 402, 403, 404, 408, 415, 422, 429, 500, 502, 503)
RETRYABLE = frozenset({408, 429, 500, 502, 503})


# ------------------------------------------------------------------ what an upstream answers


@dataclass(frozen=True)
class Audio:
    """A success answer carrying ``pieces`` of audio, in order, each in a frame of its own
    (a network chunk, an event, an object). ``hold``: the answer stays open after them, as a
    stream still being spoken does."""

    pieces: tuple[bytes, ...] = ()
    hold: bool = False


@dataclass(frozen=True)
class Refusal:
    """An error answer saying ``message``: with ``status``, or, at 200, inside a success."""

    message: str
    status: int = 401


class UpstreamBody(httpx.AsyncByteStream):
    """The body of a mocked answer: its frames, then an endless wait if held; records whether
    the client closed it (what releases the upstream connection)."""

    def __init__(self, frames: Sequence[bytes], hold: bool = False) -> None:
        self.frames = frames
        self.hold = hold
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for frame in self.frames:
            yield frame
        if self.hold:
            await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class Served:
    """An upstream set up for one test: the settings that reach it, how often it was asked,
    whether every answer it gave has been closed by the client, and the sample rate its last
    request asked for (None where the API takes none: it has one rate)."""

    settings: dict[str, Any]
    calls: Callable[[], int]
    closed: Callable[[], bool]
    asked_rate: Callable[[], int | None]


# ------------------------------------------------------------------ the providers' shapes


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


def json_error(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def raw_frames(pieces: list[bytes], rate: int) -> list[bytes]:
    """The answer is the audio itself, as it comes."""
    return pieces


def document_error_at_200(message: str) -> httpx.Response:
    """A JSON error document where the audio itself was due."""
    return json_error(200, {"error": message})


SSML = {"s": "http://www.w3.org/2001/10/synthesis"}


def azure_rate(request: httpx.Request) -> int:
    """The rate of an ``X-Microsoft-OutputFormat`` such as ``raw-16khz-16bit-mono-pcm``."""
    found = re.match(r"raw-(\d+)(k?)hz-16bit-mono-pcm", request.headers["x-microsoft-outputformat"])
    assert found is not None
    return int(found[1]) * (1000 if found[2] else 1)


def ssml_voice(request: httpx.Request) -> ET.Element:
    voice = ET.fromstring(request.content).find("s:voice", SSML)
    assert voice is not None
    return voice


def sse(*events: Any, name: str = "") -> bytes:
    kind = f"event:{name}\n" if name else ""
    return b"".join(f"{kind}data: {json.dumps(e)}\n\n".encode() for e in events)


def openai_error(status: int, message: str) -> httpx.Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    headers = {"x-ratelimit-remaining-requests": "0"} if status == 429 else None
    error = {"message": message, "type": kind, "param": None, "code": None}
    return json_error(status, {"error": error}, headers)


def google_frames(pieces: list[bytes], rate: int) -> list[bytes]:
    pcm = b"".join(pieces)  # one reply, its LINEAR16 audio behind a WAV header
    audio = base64.b64encode(wav_header(rate, data_bytes=len(pcm)) + pcm).decode()
    return [json.dumps({"audioContent": audio}).encode()]


GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED"}


def google_error(status: int, message: str, at: int | None = None) -> httpx.Response:
    reason = GOOGLE_STATUS.get(status, "UNAVAILABLE" if status >= 500 else "FAILED_PRECONDITION")
    body = {"error": {"code": status, "message": message, "status": reason}}
    return json_error(status if at is None else at, body)


def polly_error(status: int, message: str, kind: str = "") -> httpx.Response:
    if not kind:
        throttled = status in (408, 429)
        kind = "ServiceFailureException" if status >= 500 else "InvalidSsmlException"
        kind = "ThrottlingException" if throttled else kind
    headers = {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazonaws.polly/"}
    return json_error(status, {"message": message}, headers)


#: Polly's error types, which decide a retry whatever the status: (status, type, retryable).
POLLY_ERRORS = [
    (400, "ThrottlingException", True),  # throttling comes back as a 400
    (400, "InvalidSampleRateException", False),
    (403, "UnrecognizedClientException", False),
    (500, "ServiceFailureException", True),
]


def elevenlabs_error(status: int, message: str) -> httpx.Response:
    if status == 422:  # validation errors come as FastAPI's list
        return json_error(422, {"detail": [{"loc": ["body", "text"], "msg": message}]})
    return json_error(status, {"detail": {"status": "invalid_request", "message": message}})


MINIMAX_OK = {"status_code": 0, "status_msg": "success"}


def minimax_frames(pieces: list[bytes], rate: int) -> list[bytes]:
    events = [{"data": {"audio": p.hex(), "status": 1}, "base_resp": MINIMAX_OK} for p in pieces]
    # The final event repeats the whole audio unless asked not to: it must never be played.
    whole = b"".join(pieces).hex()
    final = {"data": {"audio": whole, "status": 2}, "extra_info": {}, "base_resp": MINIMAX_OK}
    return [sse(event) for event in [*events, final]]


def minimax_error(code: int, message: str, status: int = 200) -> httpx.Response:
    return json_error(status, {"base_resp": {"status_code": code, "status_msg": message}})


#: MiniMax's codes inside an HTTP 200: (code, message, retryable).
MINIMAX_ERRORS = [
    (1004, "authentication failed", False),
    (1008, "insufficient balance", False),
    (2013, "invalid params", False),
    (1002, "rate limit", True),
]


def qwen_event(pcm: bytes | None, finish: str | None = None) -> dict[str, Any]:
    audio = {"id": "a-1"} | ({"data": base64.b64encode(pcm).decode()} if pcm else {})
    return {"output": {"audio": audio, "finish_reason": finish}, "request_id": "r-1"}


def qwen_frames(pieces: list[bytes], rate: int) -> list[bytes]:
    events = [qwen_event(p) for p in pieces] + [qwen_event(None, "stop")]
    return [f"id:{i}\n".encode() + sse(e, name="result") for i, e in enumerate(events)]


def qwen_throttled(message: str) -> dict[str, Any]:
    return {"code": "Throttling.RateQuota", "message": message, "request_id": "r-1"}


def qwen_stream(*events: Any, last: str = "error") -> httpx.Response:
    """Events of a stream, the last one an error: an ``error`` event, or an error object in a
    ``result`` event (the provider knows both)."""
    body = sse(*events[:-1], name="result") + sse(events[-1], name=last)
    return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})


def volcengine_frames(pieces: list[bytes], rate: int) -> list[bytes]:
    chunks = [{"code": 0, "message": "", "data": base64.b64encode(p).decode()} for p in pieces]
    end = {"code": 20000000, "message": "ok", "data": None}
    return [json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in [*chunks, end]]


#: An answer carrying the provider's own error, whether it is worth another attempt, and the
#: words of it that must reach the log.
OwnError = tuple[httpx.Response, bool, tuple[str, ...]]


@dataclass(frozen=True)
class Profile:
    """One HTTP provider, as its documentation describes it. The defaults are those of a
    provider whose answer is the audio itself, keyed by ``api_key``."""

    type: str
    #: Where it posts (a prefix: some put the voice or a query after it).
    url: str
    voice: str
    #: Where the text and the voice go in its request.
    text_of: Callable[[httpx.Request], str]
    voice_of: Callable[[httpx.Request], str]
    #: Its error answer for a status, saying a message.
    error: Callable[[int, str], httpx.Response]
    #: The sample rate its request asks for (None: the API has one rate and takes none).
    rate_of: Callable[[httpx.Request], int] | None
    settings: dict[str, Any] = field(default_factory=lambda: {"api_key": KEY})
    secrets: tuple[str, ...] = (KEY,)
    #: A rate it sends natively, so that nothing is resampled.
    rate: int = 16000
    #: The declared type of its success answer.
    answer_type: str = "audio/pcm"
    #: The frames of a success answer carrying these pieces of audio at this rate.
    frames: Callable[[list[bytes], int], list[bytes]] = raw_frames
    #: An error reported at HTTP 200, and the error code the caller is then shown (None: the
    #: answer is a document where audio was due).
    error_at_200: Callable[[str], httpx.Response] = document_error_at_200
    code_at_200: str | None = None
    #: The limit on one request's text, and how it is counted.
    text_limit: int | None = None
    measure: Callable[[str], int] = len
    #: The answer is one document, read whole before any audio.
    document: bool = False
    #: One frame of JSON text, as the provider frames its answer.
    framed: Callable[[str], bytes] | None = None
    #: The start of a frame whose audio never ends, and what the reader says of it.
    unended: tuple[bytes, str] | None = None
    #: Success answers its API never sends, and what the provider error says of each.
    malformed: tuple[tuple[bytes, str], ...] = ()
    #: Its own error codes, classed as it documents them.
    own_errors: tuple[OwnError, ...] = ()

    def __str__(self) -> str:
        return self.type

    @property
    def raw(self) -> bool:
        """Whether the success answer is the audio itself."""
        return self.frames is raw_frames

    def answer(
        self, answer: Audio | Refusal, rate: int, bodies: list[UpstreamBody]
    ) -> httpx.Response:
        if isinstance(answer, Refusal):
            if answer.status == 200:
                return self.error_at_200(answer.message)
            return self.error(answer.status, answer.message)
        body = UpstreamBody(self.frames(list(answer.pieces), rate), answer.hold)
        bodies.append(body)
        return httpx.Response(200, stream=body, headers={"Content-Type": self.answer_type})

    @contextlib.asynccontextmanager
    async def answering(
        self, respx_mock: respx.MockRouter, *answers: Audio | Refusal, rate: int | None = None
    ) -> AsyncIterator[Served]:
        """Each request gets the next of ``answers`` (the last one repeats)."""
        bodies: list[UpstreamBody] = []
        queue = list(answers)

        def respond(request: httpx.Request) -> httpx.Response:
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
            return self.answer(answer, rate or self.rate, bodies)

        route = respx_mock.post(url__startswith=self.url).mock(side_effect=respond)
        yield Served(
            self.settings,
            lambda: route.call_count,
            lambda: bool(bodies) and all(body.closed for body in bodies),
            lambda: self.rate_of(route.calls.last.request) if self.rate_of else None,
        )


@dataclass(frozen=True)
class WebSocketProfile:
    """CosyVoice: the cases that apply to a WebSocket run against a loopback task server."""

    type: str = "cosyvoice"
    secrets: tuple[str, ...] = (KEY,)
    voice: str = "longxiaochun_v2"
    rate: int = 24000

    def __str__(self) -> str:
        return self.type

    @contextlib.asynccontextmanager
    async def answering(
        self, respx_mock: respx.MockRouter, *answers: Audio | Refusal, rate: int | None = None
    ) -> AsyncIterator[Served]:
        (answer,) = answers
        if isinstance(answer, Refusal):
            server = TaskServer([], fail=("InvalidApiKey", answer.message))
        elif answer.hold:  # the audio, then silence until the client goes
            server = TaskServer([], frames=list(answer.pieces))
        else:
            server = TaskServer(list(answer.pieces))
        async with running_task_server(server) as url:

            def runs() -> list[dict[str, Any]]:
                return [m for m in server.messages if m["header"]["action"] == "run-task"]

            yield Served(
                {"api_key": KEY, "url": url},
                lambda: len(runs()),
                server.closed.is_set,
                lambda: int(runs()[-1]["payload"]["parameters"]["sample_rate"]),
            )


# ------------------------------------------------------------------ the profiles

PROFILES = [
    Profile(
        "openai",
        "https://api.openai.com/v1/audio/speech",
        voice="alloy",
        text_of=lambda r: body_of(r)["input"],
        voice_of=lambda r: body_of(r)["voice"],
        error=openai_error,
        rate_of=None,
        rate=24000,
        text_limit=4096,
    ),
    Profile(
        "azure",
        "https://westeurope.tts.speech.microsoft.com/cognitiveservices/v1",
        voice="en-US-AvaNeural",
        text_of=lambda r: "".join(ssml_voice(r).itertext()),
        voice_of=lambda r: str(ssml_voice(r).get("name")),
        error=lambda status, message: json_error(
            status, {"error": {"code": str(status), "message": message}}
        ),
        rate_of=azure_rate,
        settings={"api_key": KEY, "region": "westeurope"},
        text_limit=5000,
    ),
    Profile(
        "google",
        "https://texttospeech.googleapis.com/v1/text:synthesize",
        voice="en-US-Neural2-F",
        text_of=lambda r: body_of(r)["input"]["text"],
        voice_of=lambda r: body_of(r)["voice"]["name"],
        error=google_error,
        rate_of=lambda r: body_of(r)["audioConfig"]["sampleRateHertz"],
        answer_type="application/json; charset=UTF-8",
        frames=google_frames,
        error_at_200=lambda message: google_error(400, message, at=200),
        code_at_200="INVALID_ARGUMENT",
        text_limit=5000,
        measure=lambda text: len(text.encode("utf-8")),  # Google counts bytes
        document=True,
        framed=lambda text: text.encode(),
        malformed=(
            (b'{"audioContent": 5}', "no audioContent"),
            (b'{"audioContent": "abc"}', "undecodable audioContent"),
        ),
        own_errors=((google_error(400, "voice not found", at=200), False, ("voice not found",)),),
    ),
    Profile(
        "polly",
        "https://polly.eu-west-1.amazonaws.com/v1/speech",
        voice="Joanna",
        text_of=lambda r: body_of(r)["Text"],
        voice_of=lambda r: body_of(r)["VoiceId"],
        error=polly_error,
        rate_of=lambda r: int(body_of(r)["SampleRate"]),
        settings={
            "region": "eu-west-1",
            "access_key_id": AWS_KEY_ID,
            "secret_access_key": AWS_SECRET,
            "session_token": AWS_SESSION,
        },
        secrets=(AWS_KEY_ID, AWS_SECRET, AWS_SESSION),
        text_limit=3000,
        own_errors=tuple(
            (polly_error(status, f"{kind} says no", kind), retryable, (f"{kind} says no",))
            for status, kind, retryable in POLLY_ERRORS
        ),
    ),
    Profile(
        "elevenlabs",
        "https://api.elevenlabs.io/v1/text-to-speech/",
        voice="v-1",
        text_of=lambda r: body_of(r)["text"],
        voice_of=lambda r: unquote(r.url.path.split("/")[-2]),
        error=elevenlabs_error,
        rate_of=lambda r: int(r.url.params["output_format"].removeprefix("pcm_")),
        answer_type="audio/mpeg",  # how it labels its PCM
        text_limit=5000,
    ),
    Profile(
        "cartesia",
        "https://api.cartesia.ai/tts/bytes",
        voice="v-1",
        text_of=lambda r: body_of(r)["transcript"],
        voice_of=lambda r: body_of(r)["voice"]["id"],
        error=lambda status, message: json_error(
            status,
            {"error_code": "invalid", "title": "Invalid", "message": message, "request_id": "r"},
        ),
        rate_of=lambda r: body_of(r)["output_format"]["sample_rate"],
    ),
    Profile(
        "deepgram",
        "https://api.deepgram.com/v1/speak",
        voice="aura-2-thalia-en",
        text_of=lambda r: body_of(r)["text"],
        voice_of=lambda r: r.url.params["model"],
        error=lambda status, message: json_error(
            status, {"err_code": "INVALID", "err_msg": message, "request_id": "r"}
        ),
        rate_of=lambda r: int(r.url.params["sample_rate"]),
        answer_type="audio/l16",
        text_limit=2000,
    ),
    Profile(
        "fish",
        "https://api.fish.audio/v1/tts",
        voice="ref-1",
        text_of=lambda r: body_of(r)["text"],
        voice_of=lambda r: body_of(r)["reference_id"],
        error=lambda status, message: json_error(status, {"status": status, "message": message}),
        rate_of=lambda r: body_of(r)["sample_rate"],
    ),
    Profile(
        "minimax",
        "https://api.minimax.io/v1/t2a_v2",
        voice="female-1",
        text_of=lambda r: body_of(r)["text"],
        voice_of=lambda r: body_of(r)["voice_setting"]["voice_id"],
        error=lambda status, message: minimax_error(1000, message, status),
        rate_of=lambda r: body_of(r)["audio_setting"]["sample_rate"],
        answer_type="text/event-stream",
        frames=minimax_frames,
        error_at_200=lambda message: minimax_error(1008, message),
        code_at_200="1008",
        text_limit=5000,
        framed=lambda text: f"data: {text}\n\n".encode(),
        unended=(b'data: {"data": {"audio": "', "an event over 2 MiB"),
        malformed=(
            (b'data: {"data": {"audio": "zz", "status": 1}}\n\n', "not hex"),
            (b'data: {"data": {"audio": 12, "status": 1}}\n\n', "not hex"),
        ),
        own_errors=tuple(
            (minimax_error(code, message), retryable, (message, str(code)))
            for code, message, retryable in MINIMAX_ERRORS
        ),
    ),
    Profile(
        "qwen",
        "https://dashscope-intl.aliyuncs.com/api/v1/services/aigc/multimodal-generation/generation",
        voice="Cherry",
        text_of=lambda r: body_of(r)["input"]["text"],
        voice_of=lambda r: body_of(r)["input"]["voice"],
        error=lambda status, message: json_error(
            status, {"code": "InvalidParameter", "message": message, "request_id": "r"}
        ),
        rate_of=None,
        rate=24000,
        answer_type="text/event-stream",
        frames=qwen_frames,
        error_at_200=lambda message: qwen_stream(
            {"code": "Throttling.RateQuota", "message": message}
        ),
        code_at_200="Throttling.RateQuota",
        text_limit=600,
        framed=lambda text: f"event:result\ndata:{text}\n\n".encode(),
        unended=(b'event:result\ndata:{"output": {"audio": {"data": "', "an event over 2 MiB"),
        malformed=(
            (b'event:result\ndata:{"output": {"audio": {"data": "abc"}}}\n\n', "undecodable audio"),
            (b'event:result\ndata:{"output": {"audio": {"data": 7}}}\n\n', "undecodable audio"),
        ),
        own_errors=(
            (
                qwen_stream(
                    qwen_event(b"\x00\x00"), qwen_throttled("rate limit exceeded"), last="result"
                ),
                True,
                ("Throttling.RateQuota",),
            ),
        ),
    ),
    Profile(
        "volcengine",
        "https://openspeech.bytedance.com/api/v3/tts/unidirectional",
        voice="zh_female_1",
        text_of=lambda r: body_of(r)["req_params"]["text"],
        voice_of=lambda r: body_of(r)["req_params"]["speaker"],
        error=lambda status, message: json_error(status, {"code": 45000292, "message": message}),
        rate_of=lambda r: body_of(r)["req_params"]["audio_params"]["sample_rate"],
        settings={"app_id": "app-1", "access_key": TOKEN},
        secrets=(TOKEN,),
        answer_type="application/json",
        frames=volcengine_frames,
        error_at_200=lambda message: json_error(200, {"code": 45000000, "message": message}),
        code_at_200="45000000",
        text_limit=1000,
        unended=(b'{"code": 0, "data": "', "an object over 2 MiB"),
        malformed=(
            (b'{"code": 0, "data": ', "ended inside an object"),
            (b"<html>502 Bad Gateway</html>", "not JSON objects"),
            (b'{"code": 0, "data": 5}', "undecodable audio"),
            (b'{"code": 0 "data": "AAA="}', "not JSON"),
        ),
        own_errors=(
            (
                json_error(200, {"code": 45000000, "message": "资源未授权 resource not granted"}),
                False,
                ("45000000", "resource not granted"),
            ),
        ),
    ),
    Profile(
        "custom",
        "https://tts.upstream.test/stream-audio",
        voice="v-1",
        text_of=lambda r: body_of(r)["Text"],
        voice_of=lambda r: body_of(r)["VoiceId"],
        error=lambda status, message: json_error(
            status, {"error": {"code": "nope", "message": message}}
        ),
        rate_of=lambda r: body_of(r)["SampleRate"],
        settings={
            "url": "https://tts.upstream.test/stream-audio",
            "token": TOKEN,
            "headers": {"Authorization": f"Bearer {HEADER_TOKEN}", "X-Tenant": "t-1"},
        },
        secrets=(TOKEN, HEADER_TOKEN),
        answer_type="audio/mpeg",  # how the vendor's sample server labels its PCM
    ),
]
COSYVOICE = WebSocketProfile()
EVERY_UPSTREAM: list[Profile | WebSocketProfile] = [*PROFILES, COSYVOICE]

#: Every upstream that streams its answer (a document is read whole, and closed, first).
STREAMED = [u for u in EVERY_UPSTREAM if not (isinstance(u, Profile) and u.document)]
RAW = [p for p in PROFILES if p.raw]
LIMITED = [p for p in PROFILES if p.text_limit]
STREAMED_FRAMES = [p for p in PROFILES if p.unended]
#: Frames of JSON that is no object, and what the provider error says of each.
NOT_OBJECTS = [
    ("not json", "not JSON"),
    ("5", "JSON int where an object was due"),
    ("[]", "JSON list where an object was due"),
]
MALFORMED = [
    pytest.param(profile, body, reason, id=f"{profile}-{reason}-{index}")
    for profile in PROFILES
    for index, (body, reason) in enumerate(
        [(profile.framed(data), reason) for data, reason in NOT_OBJECTS if profile.framed]
        + list(profile.malformed)
    )
]
OWN_ERRORS = [
    pytest.param(profile, *case, id=f"{profile}-{index}")
    for profile in PROFILES
    for index, case in enumerate(profile.own_errors)
]


def provider_of(upstream: Profile | WebSocketProfile, settings: dict[str, Any]) -> Provider:
    return build_provider(ProviderConfig(name=upstream.type, type=upstream.type, settings=settings))


def job_for(upstream: Profile | WebSocketProfile, text: str = "Hello there.") -> SynthesisJob:
    return SynthesisJob(text=text, voice=upstream.voice, sample_rate=upstream.rate)


async def failure_of(profile: Profile, respx_mock: respx.MockRouter, answer: Any) -> Any:
    """The error a provider raises for ``answer`` (a response, or an exception to raise)."""
    respx_mock.post(url__startswith=profile.url).mock(side_effect=[answer])
    with pytest.raises(Exception) as caught:
        await drain(provider_of(profile, profile.settings), job_for(profile))
    return caught.value


async def through_the_gateway(
    upstream: Profile | WebSocketProfile,
    respx_mock: respx.MockRouter,
    served: Served,
    sample_rate: int,
    attempts: int = 1,
    **server: Any,
) -> httpx.Response:
    """A caller's request for ``sample_rate`` through a gateway whose one voice is the
    provider's, with a real server on loopback."""
    respx_mock.route(host="127.0.0.1").pass_through()  # the test's own client, to the gateway
    retry = {"attempts": attempts, "backoff": 0.01}
    block = {"type": upstream.type, **served.settings, "retry": retry}
    routing = json.dumps(
        {
            "server": {"default_voice": "v", **server},
            "providers": {"p": block},
            "voices": {"v": {"provider": "p", "voice": upstream.voice}},
        }
    )
    async with live_server(create_app(parse_config(routing))) as base, httpx.AsyncClient() as c:
        return await c.post(
            base + "/stream-audio", json={"Text": "Hello.", "SampleRate": sample_rate}
        )


def cut(pcm: bytes, *sizes: int) -> tuple[bytes, ...]:
    """``pcm`` in pieces of ``sizes`` (the last repeating)."""
    pieces: list[bytes] = []
    start = 0
    while start < len(pcm):
        size = sizes[min(len(pieces), len(sizes) - 1)]
        pieces.append(pcm[start : start + size])
        start += size
    return tuple(pieces)


# ------------------------------------------------------------------ the request


@pytest.mark.parametrize("profile", PROFILES, ids=str)
async def test_text_and_voice_go_where_the_api_takes_them(
    respx_mock: respx.MockRouter, profile: Profile
) -> None:
    pcm = tone(440, 0.1, profile.rate)
    async with profile.answering(respx_mock, Audio(cut(pcm, 1000))) as served:
        provider = provider_of(profile, served.settings)
        audio = await drain(provider, job_for(profile, "Hello there, how are you?"))
    assert audio == pcm
    sent = respx_mock.calls.last.request
    assert profile.text_of(sent) == "Hello there, how are you?"
    assert profile.voice_of(sent) == profile.voice
    # Audio does not shrink, and a compressed answer could expand a thousandfold in one read.
    assert sent.headers["accept-encoding"] == "identity"


@pytest.mark.parametrize("profile", LIMITED, ids=str)
async def test_long_text_goes_out_in_pieces_within_the_limit(
    respx_mock: respx.MockRouter, profile: Profile
) -> None:
    assert profile.text_limit is not None
    sentence = "Ünïcödé sentences like this one make the text long. "
    text = (sentence * (profile.text_limit * 5 // 2 // len(sentence))).strip()
    pcm = tone(440, 0.05, profile.rate)
    async with profile.answering(respx_mock, Audio((pcm,))):
        audio = await drain(provider_of(profile, profile.settings), job_for(profile, text))
    pieces = [profile.text_of(call.request) for call in respx_mock.calls]
    provider = provider_of(profile, profile.settings)
    if isinstance(provider, HTTPProvider) and provider.answers_whole_clips:
        # The first sentence alone, then pieces that double, up to the limit.
        assert pieces[0] == sentence.strip()
        assert [len(p) for p in pieces[:4]] == [len(sentence) * n - 1 for n in (1, 2, 4, 8)]
    else:
        assert len(pieces) == 3
    assert all(profile.measure(piece) <= profile.text_limit for piece in pieces)
    assert " ".join(pieces) == text
    assert audio == pcm * len(pieces)  # every piece's audio, in order, nothing of its framing


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("profile", PROFILES, ids=str)
async def test_error_statuses_are_retryable_or_not(
    respx_mock: respx.MockRouter, profile: Profile, status: int
) -> None:
    error = await failure_of(profile, respx_mock, profile.error(status, f"upstream said {status}"))
    assert isinstance(error, ProviderHTTPError)
    assert error.status == status
    assert error.retryable is (status in RETRYABLE)
    assert f"upstream said {status}" in str(error)  # the provider's own message, for the log
    assert profile.type in str(error)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2", 2.0), ("0", 0.0), ("inf", None), ("nan", None), ("-inf", None), ("1e400", None)],
)
@pytest.mark.parametrize("profile", PROFILES, ids=str)
async def test_retry_after_is_taken_when_it_is_a_number_of_seconds(
    respx_mock: respx.MockRouter, profile: Profile, value: str, seconds: float | None
) -> None:
    answer = profile.error(503, "busy")
    answer.headers["Retry-After"] = value
    error = await failure_of(profile, respx_mock, answer)
    assert isinstance(error, ProviderHTTPError) and error.retry_after == seconds


@pytest.mark.parametrize("profile", PROFILES, ids=str)
async def test_retry_after_as_a_date(respx_mock: respx.MockRouter, profile: Profile) -> None:
    answer = profile.error(429, "slow down")
    answer.headers["Retry-After"] = email.utils.formatdate(time.time() + 60, usegmt=True)
    error = await failure_of(profile, respx_mock, answer)
    assert isinstance(error, ProviderHTTPError)
    assert error.retry_after is not None and 30 < error.retry_after <= 61


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (httpx.ConnectError("refused"), ProviderConnectionError),
        (httpx.ReadTimeout("slow"), ProviderTimeout),
    ],
)
@pytest.mark.parametrize("profile", PROFILES, ids=str)
async def test_connection_failures_and_timeouts_are_retryable(
    respx_mock: respx.MockRouter, profile: Profile, failure: Exception, kind: type[Exception]
) -> None:
    error = await failure_of(profile, respx_mock, failure)
    assert isinstance(error, kind) and isinstance(error, ProviderError) and error.retryable


@pytest.mark.parametrize("profile", PROFILES, ids=str)
async def test_secrets_are_never_in_an_error_and_masked_where_echoed(
    respx_mock: respx.MockRouter, profile: Profile
) -> None:
    provider = provider_of(profile, profile.settings)
    assert set(profile.secrets) <= set(provider.secrets)
    respx_mock.post(url__startswith=profile.url).mock(
        side_effect=[
            profile.error(401, "bad credentials"),
            profile.error(401, f"rejected {' and '.join(profile.secrets)}"),
        ]
    )
    errors = []
    for _ in range(2):
        with pytest.raises(ProviderHTTPError) as caught:
            await drain(provider, job_for(profile))
        errors.append(caught.value)
    plain, echoed = errors
    assert not any(secret in str(plain) for secret in profile.secrets)
    logged = provider.redact(str(echoed))
    assert "rejected ***" in logged
    for secret in profile.secrets:
        assert secret in str(echoed)  # as the upstream said it...
        assert secret not in logged  # ...and as it is logged
        assert secret not in echoed.summary  # what the caller is told


# ------------------------------------------------------------------ the audio


@pytest.mark.parametrize("upstream", STREAMED, ids=str)
async def test_the_callers_hang_up_closes_the_upstream_answer(
    respx_mock: respx.MockRouter, upstream: Profile | WebSocketProfile
) -> None:
    pcm = b"\x01\x00" * 100
    # The answer stays open after its first audio, as a stream still being spoken does.
    async with upstream.answering(respx_mock, Audio((pcm, pcm), hold=True)) as served:
        provider = provider_of(upstream, served.settings)
        stream = provider.stream(job_for(upstream))
        assert await anext(stream) == pcm
        assert not served.closed()
        await stream.aclose()  # the caller hung up
        assert await eventually(served.closed)
        await provider.aclose()


@pytest.mark.parametrize("upstream", EVERY_UPSTREAM, ids=str)
async def test_audio_in_odd_byte_counts_is_carried_whole(
    respx_mock: respx.MockRouter, upstream: Profile | WebSocketProfile
) -> None:
    pcm = tone(440, 0.2, upstream.rate)
    pieces = cut(pcm, 1, 3, 1001, 2, 333, 4001)
    async with upstream.answering(respx_mock, Audio(pieces)) as served:
        provider = provider_of(upstream, served.settings)
        job = job_for(upstream)
        converter = Converter(provider.native_format(job), job.sample_rate)
        try:
            chunks = [chunk async for chunk in provider.stream(job)]
        finally:
            await provider.aclose()
    assert b"".join(chunks) == pcm
    assert b"".join(converter.feed(chunk) for chunk in chunks) + converter.flush() == pcm


@pytest.mark.parametrize("upstream", EVERY_UPSTREAM, ids=str)
async def test_an_answer_without_audio_is_a_failure_worth_retrying(
    respx_mock: respx.MockRouter, upstream: Profile | WebSocketProfile
) -> None:
    async with upstream.answering(respx_mock, Audio()) as served:
        response = await through_the_gateway(upstream, respx_mock, served, 16000, attempts=2)
    assert response.status_code == 502
    assert "(p): no audio" in response.json()["error"]["message"]
    assert served.calls() == 2


NOT_AUDIO = [
    ("text/html", b"<html><body><h1>503 Service Unavailable</h1></body></html>", "503 Service"),
    ("application/xml", b"<Error><Message>quota exceeded</Message></Error>", "quota exceeded"),
]
#: What is not audio either where the answer is the audio itself.
NOT_RAW_AUDIO = [
    ("application/json", b'{"error": {"message": "quota exceeded"}}', "quota exceeded"),
    ("text/plain; charset=utf-8", b"upstream overloaded", "upstream overloaded"),
    ("application/problem+json", b'{"title": "quota exceeded"}', "quota exceeded"),
]


@pytest.mark.parametrize(
    ("profile", "content_type", "body", "words"),
    [
        pytest.param(p, *case, id=f"{p}-{case[0]}")
        for p in PROFILES
        for case in NOT_AUDIO + (NOT_RAW_AUDIO if p.raw else [])
    ],
)
async def test_an_answer_that_is_not_audio_is_a_provider_error(
    respx_mock: respx.MockRouter, profile: Profile, content_type: str, body: bytes, words: str
) -> None:
    answer = httpx.Response(200, content=body, headers={"Content-Type": content_type})
    error = await failure_of(profile, respx_mock, answer)
    assert isinstance(error, ProviderProtocolError) and not error.retryable
    assert error.reason.startswith(f"answered {content_type.partition(';')[0]} where")
    assert words in error.reason  # the page's own words, for the log


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "audio/pcm"},
        {"Content-Type": "audio/mpeg"},
        {"Content-Type": "audio/pcm;rate=16000"},
        {"Content-Type": "application/octet-stream"},
        {},  # no type at all
    ],
)
@pytest.mark.parametrize("profile", RAW, ids=str)
async def test_audio_and_unlabelled_answers_are_audio(
    respx_mock: respx.MockRouter, profile: Profile, headers: dict[str, str]
) -> None:
    respx_mock.post(url__startswith=profile.url).mock(
        return_value=httpx.Response(200, content=b"\x01\x00" * 16, headers=headers)
    )
    assert await drain(provider_of(profile, profile.settings), job_for(profile)) == b"\x01\x00" * 16


@pytest.mark.parametrize("profile", PROFILES, ids=str)
async def test_a_compressed_answer_is_refused_before_it_is_expanded(
    respx_mock: respx.MockRouter, profile: Profile
) -> None:
    bomb = gzip.compress(b"\x00" * 4_000_000)  # 4 KB that would become 4 MB in one read
    headers = {"Content-Type": profile.answer_type, "Content-Encoding": "gzip"}
    error = await failure_of(
        profile, respx_mock, httpx.Response(200, content=bomb, headers=headers)
    )
    assert isinstance(error, ProviderProtocolError) and "compressed" in error.reason


# ------------------------------------------------------------------ frames of JSON


@pytest.mark.parametrize(("profile", "body", "reason"), MALFORMED)
async def test_an_answer_its_api_never_sends_is_a_provider_error(
    respx_mock: respx.MockRouter, profile: Profile, body: bytes, reason: str
) -> None:
    answer = httpx.Response(200, content=body, headers={"Content-Type": profile.answer_type})
    error = await failure_of(profile, respx_mock, answer)
    assert isinstance(error, ProviderProtocolError) and reason in error.reason


@pytest.mark.parametrize(("profile", "answer", "retryable", "words"), OWN_ERRORS)
async def test_the_providers_own_errors_are_retried_as_it_documents(
    respx_mock: respx.MockRouter,
    profile: Profile,
    answer: httpx.Response,
    retryable: bool,
    words: tuple[str, ...],
) -> None:
    error = await failure_of(profile, respx_mock, answer)
    assert isinstance(error, ProviderHTTPError) and error.retryable is retryable
    assert all(word in str(error) for word in words)


@pytest.mark.parametrize("profile", STREAMED_FRAMES, ids=str)
async def test_a_frame_without_end_is_refused_at_its_bound(
    respx_mock: respx.MockRouter, profile: Profile
) -> None:
    assert profile.unended is not None
    start, reason = profile.unended
    # 3 MiB of one frame, then nothing more: a reader without a bound would wait on.
    endless = UpstreamBody([start, *[b"0" * 65536] * 48], hold=True)
    answer = httpx.Response(200, stream=endless, headers={"Content-Type": profile.answer_type})
    respx_mock.post(url__startswith=profile.url).mock(return_value=answer)
    with pytest.raises(ProviderProtocolError) as caught:
        async with asyncio.timeout(10):
            await drain(provider_of(profile, profile.settings), job_for(profile))
    assert reason in caught.value.reason
    assert endless.closed


@pytest.mark.parametrize("profile", STREAMED_FRAMES, ids=str)
async def test_a_long_frame_in_small_pieces_is_read_in_linear_time(
    respx_mock: respx.MockRouter, profile: Profile
) -> None:
    # One frame of about 1.6 MB once encoded (hex or base64), sent without a break.
    encoded = max(map(len, profile.frames([b"\x01\x02" * 5000], profile.rate))) / 10000
    pcm = b"\x01\x02" * int(800_000 / encoded)
    body = b"".join(profile.frames([pcm], profile.rate))
    pieces = [body[i : i + 128] for i in range(0, len(body), 128)]  # each a new search
    answer = httpx.Response(
        200, stream=UpstreamBody(pieces), headers={"Content-Type": profile.answer_type}
    )
    respx_mock.post(url__startswith=profile.url).mock(return_value=answer)
    started = time.perf_counter()
    assert await drain(provider_of(profile, profile.settings), job_for(profile)) == pcm
    assert time.perf_counter() - started < 1.5  # searching from the start each time took seconds


# ------------------------------------------------------------------ through the gateway

#: The rate each caller asks for: the provider's own (nothing to resample) or not.
CALLER_RATES = {
    "openai": 48000,
    "azure": 16000,
    "google": 48000,
    "polly": 48000,
    "elevenlabs": 24000,
    "cartesia": 16000,
    "deepgram": 16000,
    "fish": 16000,
    "minimax": 48000,
    "qwen": 16000,
    "volcengine": 24000,
    "custom": 24000,
    "cosyvoice": 24000,
}


@pytest.mark.parametrize("upstream", EVERY_UPSTREAM, ids=str)
async def test_a_tone_survives_the_gateway(
    respx_mock: respx.MockRouter, upstream: Profile | WebSocketProfile
) -> None:
    asked = CALLER_RATES[upstream.type]
    settings = upstream.settings if isinstance(upstream, Profile) else {"api_key": KEY}
    job = SynthesisJob(text="Hello.", voice=upstream.voice, sample_rate=asked)
    native = provider_of(upstream, settings).native_format(job).sample_rate
    signal = tone(1000, 1.0, native)
    async with upstream.answering(respx_mock, Audio(cut(signal, 4801)), rate=native) as served:
        response = await through_the_gateway(upstream, respx_mock, served, asked)
    assert response.status_code == 200
    assert served.asked_rate() in (native, None)  # the rate its audio is then converted from
    out = response.content
    assert abs(len(out) // 2 - asked) <= 1
    assert abs(peak_frequency(out, asked) - 1000) <= 2
    if native == asked:
        assert out == signal  # nothing to resample: untouched


@pytest.mark.parametrize("profile", PROFILES, ids=str)
async def test_a_retryable_status_is_retried_then_the_audio_answers(
    respx_mock: respx.MockRouter, profile: Profile
) -> None:
    pcm = tone(440, 0.2, profile.rate)
    answers = (Refusal("rate limit", 429), Audio((pcm,)))
    async with profile.answering(respx_mock, *answers) as served:
        response = await through_the_gateway(profile, respx_mock, served, profile.rate, attempts=2)
    assert response.status_code == 200 and response.content == pcm
    assert served.calls() == 2


@pytest.mark.parametrize("profile", PROFILES, ids=str)
async def test_the_caller_is_shown_what_failed_never_http_200(
    respx_mock: respx.MockRouter, profile: Profile
) -> None:
    async with profile.answering(respx_mock, Refusal("insufficient balance", 200)) as served:
        response = await through_the_gateway(profile, respx_mock, served, profile.rate)
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    shown = f"error {profile.code_at_200}" if profile.code_at_200 else "unexpected answer"
    assert f"(p): {shown}" in message
    assert "HTTP 200" not in message and "insufficient balance" not in message


# ------------------------------------------------------------------ the log


@pytest.fixture
def debug_log(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    with logging_at_debug(capsys) as read:
        yield read


OUTCOMES = [
    pytest.param(upstream, outcome, id=f"{upstream}-{outcome}")
    for upstream in EVERY_UPSTREAM
    for outcome in ("success", "error", "error at 200")
    if outcome != "error at 200" or isinstance(upstream, Profile)  # a WebSocket has no status
]


@pytest.mark.parametrize(("upstream", "outcome"), OUTCOMES)
async def test_no_secret_in_any_log_line_at_debug(
    respx_mock: respx.MockRouter,
    caplog: pytest.LogCaptureFixture,
    debug_log: Callable[[], str],
    upstream: Profile | WebSocketProfile,
    outcome: str,
) -> None:
    echo = f"Incorrect credentials: {' '.join(upstream.secrets)}."
    answers: dict[str, Audio | Refusal] = {
        "success": Audio((tone(440, 0.1, 24000),)),
        "error": Refusal(echo),
        "error at 200": Refusal(echo, 200),
    }
    answer = answers[outcome]
    async with upstream.answering(respx_mock, answer, rate=24000) as served:
        response = await through_the_gateway(upstream, respx_mock, served, 24000, log_level="debug")
    if outcome == "success":
        assert response.status_code == 200 and len(response.content) > 1000
    else:
        assert response.status_code == 502
        assert "failed before audio" in caplog.text  # the error was logged, its echo masked
    written = debug_log()
    assert "DEBUG" in written or "INFO" in written  # the log did run at a verbose level
    assert leaked(upstream.secrets, written, caplog.records) == []
    assert not any(secret in response.text for secret in upstream.secrets)
