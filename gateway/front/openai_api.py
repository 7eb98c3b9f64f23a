"""``POST /v1/audio/speech`` and ``GET /v1/models``: OpenAI's speech API as a front door of the
synthesis core (``server.openai_api``, on by default), so that any OpenAI client speaks through
the gateway's routing, tokens, phrase cache, breakers and metrics.

The request is OpenAI's JSON body::

    model            ignored, unless ``voice`` names no routed voice and ``model`` does
    voice            the VoiceId (a string, or OpenAI's custom-voice object ``{"id": ...}``)
    input            the text (checked as the custom door's ``Text``)
    response_format  mp3 (default), opus, aac, flac, wav, pcm (see :mod:`gateway.encode`)
    speed            0.25-4.0 (default 1): tempo changed, pitch kept
    instructions     how to speak, for providers that take a prompt
    stream_format    only ``audio`` (OpenAI's server-sent events are not spoken here)

Other fields are ignored. The token is the ``Authorization: Bearer`` header's. The audio is
synthesized at 24 kHz and encoded while it streams: each chunk of PCM goes through the
encoder as it comes, and whatever the muxer has produced leaves at once. Errors come in
OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, ``param`` naming the
request's field.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope, Send

from ..budgets import CallerPace
from ..encode import DEFAULT_FORMAT, FORMATS, MAX_SPEED, MIN_SPEED, ResponseFormat, StreamEncoder
from ..errors import BadRequest, GatewayError, PayloadTooLarge, Unauthorized
from ..http1 import WRITE_DRAIN_BYTES
from ..request import MAX_VOICE_ID_CHARS, TTSRequest, validate
from ..runtime import Gateway, LoadedRouting
from ..synthesis import Outcome, Synthesis
from .body import bearer
from .door import SynthesisDoor, answer_headers, request_id

__all__ = [
    "MAX_INSTRUCTIONS_CHARS",
    "MODELS_PATH",
    "SAMPLE_RATE",
    "SPEECH_PATH",
    "OpenAISpeechDoor",
    "SpeechCall",
    "models_route",
    "openai_error_response",
]

SPEECH_PATH: Final = "/v1/audio/speech"
MODELS_PATH: Final = "/v1/models"

#: The rate the door synthesizes at (OpenAI's ``pcm`` is 24 kHz S16LE).
SAMPLE_RATE: Final = 24000

#: The longest ``instructions`` taken (OpenAI's own limit on ``input``).
MAX_INSTRUCTIONS_CHARS: Final = 4096

#: The request's fields under the names the shared checks (:func:`gateway.request.validate`)
#: and the synthesis core give them; ``None``: no field of the body (the token is a header).
_PARAMS: Final[Mapping[str, str | None]] = {
    "Text": "input",
    "VoiceId": "voice",
    "Token": None,
    "Authorization": None,
}

#: OpenAI's error ``type`` by status.
_TYPES: Final[Mapping[int, str]] = {429: "rate_limit_error"}


@dataclass(frozen=True, slots=True)
class SpeechCall:
    """A checked speech request: what the core synthesizes, and how the door encodes it."""

    request: TTSRequest
    response_format: ResponseFormat
    speed: float = 1.0


class OpenAISpeechDoor(SynthesisDoor[SpeechCall]):
    """``POST /v1/audio/speech`` (an ASGI app for one route)."""

    door = "openai"

    async def parse(
        self, routing: LoadedRouting, scope: Scope, body: bytes, outcome: Outcome
    ) -> SpeechCall:
        tenant = routing.tenant(bearer(scope))
        if tenant is None:
            raise _unauthorized()
        outcome.tenant = tenant
        call = parse_speech(_json_object(body), routing)
        outcome.characters = len(call.request.text)
        outcome.describe(call.request)
        return call

    async def synthesize(
        self,
        routing: LoadedRouting,
        call: SpeechCall,
        outcome: Outcome,
        scope: Scope,
        send: Send,
    ) -> None:
        # The encoder (a few ms of CPU to open) is built off the event loop while the voice
        # chain works on its first audio.
        building = asyncio.ensure_future(
            asyncio.to_thread(StreamEncoder, call.response_format.name, SAMPLE_RATE, call.speed)
        )
        try:
            async with self.gateway.core.open(routing, call.request, outcome) as synthesis:
                encoder = await asyncio.shield(building)
                await self._answer(synthesis, encoder, scope, send)
        finally:
            building.add_done_callback(_close_encoder)

    def error_response(self, error: GatewayError, request_id: str) -> Response:
        return openai_error_response(error, request_id)

    async def _answer(
        self, synthesis: Synthesis, encoder: StreamEncoder, scope: Scope, send: Send
    ) -> None:
        outcome = synthesis.outcome
        headers = answer_headers(synthesis, encoder.content_type)
        headers.insert(1, (b"x-sample-rate", str(SAMPLE_RATE).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        outcome.answered(200)

        async def write(pcm: bytes) -> None:
            # One slice of encoding per step: a large chunk lets the loop run between slices.
            for i, piece in enumerate(encoder.encode_slices(pcm)):
                if i:
                    await asyncio.sleep(0)
                if piece:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})

        tail = await synthesis.pump(write, _pace(encoder.format))
        await self.end_body(send, encoder.encode(tail) + encoder.finish(), outcome, scope)


def parse_speech(data: Mapping[str, Any], routing: LoadedRouting) -> SpeechCall:
    """Check OpenAI's speech fields (see the module docstring); ``BadRequest`` naming the
    field (``string_above_max_length`` for an ``input`` over ``server.max_text_chars``)."""
    response_format = data.get("response_format")
    if response_format is None:
        response_format = DEFAULT_FORMAT
    if not isinstance(response_format, str) or response_format not in FORMATS:
        raise _invalid("response_format", f"response_format must be one of {', '.join(FORMATS)}")
    stream_format = data.get("stream_format")
    if stream_format is not None and stream_format != "audio":
        raise _invalid("stream_format", "stream_format must be 'audio' (no server-sent events)")
    speed = data.get("speed")
    if speed is None:
        speed = 1.0
    if isinstance(speed, bool) or not isinstance(speed, int | float):
        raise _invalid("speed", "speed must be a number")
    if not MIN_SPEED <= speed <= MAX_SPEED:  # NaN fails too
        raise _invalid("speed", f"speed must be between {MIN_SPEED} and {MAX_SPEED}")
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _invalid("instructions", "instructions must be a string")
    if instructions is not None and len(instructions) > MAX_INSTRUCTIONS_CHARS:
        raise _invalid(
            "instructions",
            f"instructions has {len(instructions)} characters; the limit is "
            f"{MAX_INSTRUCTIONS_CHARS}",
            code="string_above_max_length",
        )
    voice = _voice(data.get("voice"), data.get("model"), routing)
    fields = {"Text": data.get("input"), "SampleRate": SAMPLE_RATE, "VoiceId": voice}
    try:
        request = validate(fields, max_text_chars=routing.config.server.max_text_chars)
    except PayloadTooLarge as error:
        if error.field != "Text":
            raise
        # OpenAI answers an input over its limit with a 400: so does this door, and its log
        # line and metrics say so too.
        raise BadRequest(error.message, field="Text", code="string_above_max_length") from None
    request = dataclasses.replace(request, instructions=(instructions or "").strip() or None)
    return SpeechCall(request, FORMATS[response_format], float(speed))


def _voice(voice: Any, model: Any, routing: LoadedRouting) -> str:
    """The VoiceId: ``voice`` (OpenAI's custom-voice object gives its ``id``), or ``model``
    when only that names a routed voice."""
    if isinstance(voice, Mapping):
        voice = voice.get("id")
    if voice is not None and not isinstance(voice, str):
        raise _invalid("voice", "voice must be a string or an object with a string 'id'")
    if model is not None and not isinstance(model, str):
        raise _invalid("model", "model must be a string")
    voice = (voice or "").strip()
    router = routing.router
    if model and not (_could_be_voice(voice) and router.names(voice)):
        model = model.strip()
        if _could_be_voice(model) and router.names(model):
            return str(model)
    return str(voice)


def _could_be_voice(name: str) -> bool:
    """Whether ``name`` is short and printable enough to look up (the full check of a
    VoiceId is :func:`gateway.request.validate`'s)."""
    return bool(name) and len(name) <= MAX_VOICE_ID_CHARS and name.isprintable()


def _json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (whatever Content-Type says: OpenAI's API takes only JSON)."""
    if not body.strip():
        raise BadRequest("body is empty; send a JSON object with input and voice")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # also bad UTF-8, huge ints, deep nesting
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def _invalid(param: str, message: str, code: str = "invalid_field") -> BadRequest:
    return BadRequest(message, field=param, code=code)


def _unauthorized() -> Unauthorized:
    return Unauthorized(
        "send a configured token as 'Authorization: Bearer <token>'",
        field="Authorization",
        code="invalid_api_key",
    )


def _pace(response_format: ResponseFormat) -> CallerPace:
    """The caller's pace, judged in seconds of audio: a wait for the caller ends when it has
    taken a write buffer's span of *encoded* bytes, worth more seconds than as much PCM."""
    ratio = 2 * SAMPLE_RATE / response_format.bytes_per_second(SAMPLE_RATE)
    return CallerPace(SAMPLE_RATE, round(WRITE_DRAIN_BYTES * ratio))


def _close_encoder(building: asyncio.Future[StreamEncoder]) -> None:
    """Release the encoder once it is built, however the answer ended."""
    if not building.cancelled() and building.exception() is None:
        building.result().close()


def openai_error_response(error: GatewayError, request_id: str | None = None) -> Response:
    """``error`` in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``, with
    its headers (``Retry-After``) and the request id."""
    status, code, message, field = error.status, error.code, error.message, error.field
    param = _PARAMS.get(field, field) if field is not None else None
    if field is not None and param is not None and message.startswith(f"{field} "):
        message = param + message[len(field) :]  # "Text is empty" → "input is empty"
    kind = _TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    headers = dict(error.headers)
    if request_id:
        headers["X-Request-Id"] = request_id
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


#: When each loaded routing was first listed: a model's ``created``.
_LISTED: weakref.WeakKeyDictionary[LoadedRouting, int] = weakref.WeakKeyDictionary()


def models_route(gateway: Gateway) -> Route:
    """``GET /v1/models``: one model per exact (non-pattern) voice of the routing, in file
    order, ``owned_by`` its provider; token-guarded like ``/voices``."""

    async def models(request: Request) -> Response:
        routing = gateway.routing
        rid = request_id(request.scope)
        if routing.tenant(bearer(request.scope)) is None:
            return openai_error_response(_unauthorized(), rid)
        created = _LISTED.setdefault(routing, int(time.time()))
        data = [
            {"id": key, "object": "model", "created": created, "owned_by": voice.provider}
            for key, voice in routing.config.voices.items()
            if not voice.is_pattern
        ]
        return JSONResponse({"object": "list", "data": data}, headers={"X-Request-Id": rid})

    return Route(MODELS_PATH, models, methods=["GET"])
