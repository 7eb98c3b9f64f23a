"""``POST <server.path>``: the custom TTS interface, as a front door of the synthesis core.

Read the body → parse and check it (token, fields) → :meth:`SynthesisCore.open` → write the
PCM as a chunked (or, for HTTP/1.0, close-delimited) body; on the gateway's own connections the
head and the first audio are written by the attempt that made the audio (:class:`FirstAudio`).
The exchange around it (the caller hanging up, the errors, the outcome) is
:class:`gateway.front.door.SynthesisDoor`'s.
"""

from __future__ import annotations

import time

from starlette.types import Scope, Send

from ..audio import Converter
from ..budgets import CallerPace
from ..errors import Unauthorized
from ..http1 import EXCHANGE_SCOPE_KEY, WRITE_DRAIN_BYTES, Exchange
from ..http1.exchange import CheckedHeaders, check_headers
from ..request import TTSRequest, parse_body, request_token, validate
from ..routing import ChainStep
from ..runtime import LoadedRouting
from ..synthesis import Outcome, Synthesis
from .body import bearer, header, multipart_fields
from .door import SynthesisDoor, audio_headers


class CustomTTSDoor(SynthesisDoor[TTSRequest]):
    """The custom-interface front door (an ASGI app for one route)."""

    door = "custom"

    async def parse(
        self, routing: LoadedRouting, scope: Scope, body: bytes, outcome: Outcome
    ) -> TTSRequest:
        content_type = header(scope, b"content-type")
        if content_type and content_type.lower().startswith("multipart/form-data"):
            data = await multipart_fields(scope, body)
        else:
            data = parse_body(body, content_type)
        tenant = routing.tenant(request_token(data, bearer(scope)))
        if tenant is None:
            raise Unauthorized("Token is missing or not accepted", field="Token")
        outcome.tenant = tenant
        request = validate(data, max_text_chars=routing.config.server.max_text_chars)
        outcome.characters = len(request.text)
        outcome.describe(request)
        return request

    async def synthesize(
        self, routing: LoadedRouting, call: TTSRequest, outcome: Outcome, scope: Scope, send: Send
    ) -> None:
        exchange: Exchange | None = scope.get(EXCHANGE_SCOPE_KEY)
        content_type = routing.config.server.content_type
        first_out = None if exchange is None else FirstAudio(exchange, call, outcome, content_type)
        async with self.gateway.core.open(routing, call, outcome, first_out) as synthesis:
            await self._answer(synthesis, content_type, scope, send, first_out)

    async def _answer(
        self,
        synthesis: Synthesis,
        content_type: str,
        scope: Scope,
        send: Send,
        first_out: FirstAudio | None,
    ) -> None:
        request, outcome = synthesis.request, synthesis.outcome
        if first_out is None or not first_out.started:
            stream = synthesis.stream
            headers = answer_head(content_type, request, outcome, stream.step, stream.cache)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        outcome.answered(200)

        async def write(pcm: bytes) -> None:
            await send({"type": "http.response.body", "body": pcm, "more_body": True})

        tail = await synthesis.pump(
            write,
            CallerPace(request.sample_rate, WRITE_DRAIN_BYTES),
            direct=scope.get(EXCHANGE_SCOPE_KEY),
        )
        await self.end_body(send, tail, outcome, scope)


def answer_head(
    content_type: str, request: TTSRequest, outcome: Outcome, step: ChainStep, cache: str | None
) -> list[tuple[bytes, bytes]]:
    """The head of this door's answer: :func:`audio_headers`, with the rate and channels."""
    voice = step.answering_voice(request.voice_id)
    headers = audio_headers(content_type, outcome.request_id, voice, cache)
    headers[1:1] = [(b"x-sample-rate", str(request.sample_rate).encode()), (b"x-channels", b"1")]
    return headers


class FirstAudio:
    """The answer's head and first audio written the moment an attempt has the audio
    (:class:`~gateway.stream.FirstOut`), on the gateway's own connections: the relay, the
    synthesis core and this door's own steps up to its first write then come after it, not
    before the caller hears anything. The head is the one :meth:`CustomTTSDoor._answer`
    would send; the door sends none of its own when this one has (:attr:`started`).

    While the upstream works on an attempt's request, once the request has gone
    (:meth:`ahead`), the attempt's resampler is made and its head's lines are made and
    checked, for that voice; the first write uses them when its stream is that voice's."""

    __slots__ = (
        "_ahead",
        "_content_type",
        "_exchange",
        "_outcome",
        "_ready",
        "_request",
    )

    def __init__(
        self, exchange: Exchange, request: TTSRequest, outcome: Outcome, content_type: str
    ) -> None:
        self._exchange = exchange
        self._request = request
        self._outcome = outcome
        self._content_type = content_type
        # The attempt waiting to have its things made, and the head's lines made for a voice.
        self._ahead: tuple[ChainStep, Converter] | None = None
        self._ready: tuple[ChainStep, CheckedHeaders] | None = None

    @property
    def started(self) -> bool:
        """Whether the answer's head is written (or on its way): this writer's doing, as
        nothing else starts the answer before the door does."""
        return self._exchange.response_started

    def ahead(self, step: ChainStep, converter: Converter) -> None:
        if self._ahead is None:
            self._exchange.after_writes(self._prepare)
        self._ahead = (step, converter)

    def _prepare(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        step, converter = ahead
        converter.prepare()
        headers = answer_head(self._content_type, self._request, self._outcome, step, None)
        try:
            self._ready = (step, check_headers(headers))
        except ValueError:  # left for the first write to raise where it is handled
            self._ready = None

    def __call__(self, step: ChainStep, pcm: bytes) -> float:
        exchange, ready = self._exchange, self._ready
        if ready is not None and ready[0] is step:
            head: CheckedHeaders | list[tuple[bytes, bytes]] = ready[1]
        else:
            head = answer_head(self._content_type, self._request, self._outcome, step, None)
        exchange.start_now(200, head)
        sent = time.perf_counter()
        exchange.write_now(pcm)
        return sent
