"""The synthesis core: what every front door calls once it has a validated request.

::

    front door ──► SynthesisCore.open(routing, request, outcome)
                     route the VoiceId (404) ─► admit the stream (429) ─► relay: first audio
                     of the voice chain (502/503/504), under the drain deadline (503)
                   ──► Synthesis.pump(write)
                     every PCM chunk to ``write`` within the stream's budgets (total, drain,
                     upstream stall, the caller's pace); returns the resampler's tail
                   ──► the front door ends its answer; Outcome.finish() writes the log line

A front door owns its wire format (headers, framing, encoding) and its connection (the
caller hanging up); the core owns routing, admission, budgets and the :class:`Outcome`, the
one record of a request from which its metrics and its log line are written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from providers.base import ProviderError, ProviderTimeout

from .admission import StreamLimit
from .budgets import CallerPace, DrainClock, StallWatch
from .deadlines import deadline
from .direct import CallerBody, DirectRelay
from .errors import BadRequest, NotReady
from .logs import writes_json
from .metrics import Metrics
from .request import LOGGED_EXTEND_FIELDS, TTSRequest
from .spend import SpendMeter
from .stream import AudioStream, FirstOut, VoiceTry

if TYPE_CHECKING:
    from .runtime import LoadedRouting

log = logging.getLogger("gateway")

#: Longest value written into a request's log line (what a caller sends is cut to this).
_LOG_VALUE_CHARS = 256
#: Names a field of :meth:`Outcome.fields` goes by in the text line, where it differs.
_TEXT_NAMES = {"VoiceId": "voice"}
#: Fields the text line leaves out (it has the audio in milliseconds).
_JSON_ONLY_FIELDS = frozenset({"bytes"})


def _log_value(value: Any) -> str:
    """A value for a ``key=value`` log line: at most ``_LOG_VALUE_CHARS`` characters (the rest
    is counted, not written), quoted when it could break the line's format."""
    text = str(value)
    if len(text) > _LOG_VALUE_CHARS:
        text = f"{text[:_LOG_VALUE_CHARS]}...(+{len(text) - _LOG_VALUE_CHARS} chars)"
    if text and text.isprintable() and " " not in text and "=" not in text:
        return text
    return repr(text)


@dataclass(slots=True)
class Outcome:
    """What one request came to. Every metric of a request is written through it as the fact
    is known (so that a scrape mid-stream sees the status already answered), and its log line
    is written from it once, by :meth:`finish`."""

    metrics: Metrics
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    voice_id: str | None = None
    sample_rate: int | None = None
    call: dict[str, Any] = field(default_factory=dict)  # ExtendData's fields for the log
    described: TTSRequest | None = None
    """The request :meth:`describe` was told of: its ExtendData's fields for the log are read
    from it when a log line is written (not for every request when the level hides it)."""
    provider: str | None = None
    answered_by: str | None = None
    tried: list[VoiceTry] = field(default_factory=list)
    status: int | None = None
    ttfb: float | None = None
    error: str | None = None
    end: str | None = None
    audio_seconds: float | None = None
    bytes_sent: int | None = None
    duration: float | None = None
    door: str = "custom"
    """The front door the request came through (``custom``, ``openai``)."""
    tenant: str | None = None
    """The name of the token the request came with (see ``server.tokens``)."""
    characters: int = 0
    """Characters of the caller's text (counted for its tenant once answered with audio)."""
    cache: str | None = None
    """``hit``, ``shared`` or ``miss`` when the answering voice uses the phrase cache."""

    def describe(self, request: TTSRequest) -> None:
        """The request, as far as the log line tells of it."""
        self.voice_id = request.voice_id
        self.sample_rate = request.sample_rate
        self.described = request

    def answered(self, status: int, error: str | None = None) -> None:
        """The caller was answered ``status`` (``error``: the code of a failure)."""
        self.status = status
        if error is not None:
            self.error = error
        self.metrics.requests.labels(str(status)).inc()

    def first_audio(self, at: float) -> None:
        """The first audio went out at ``at`` (``time.perf_counter``)."""
        self.ttfb = at - self.started
        self.metrics.ttfb.labels(self.provider or "").observe(self.ttfb)

    def sent(self, pcm_bytes: int, sample_rate: int) -> None:
        """``pcm_bytes`` of audio at ``sample_rate`` went to the caller, all told (counted
        once, when the stream stops: whether it ended or the caller hung up)."""
        self.bytes_sent = pcm_bytes
        self.audio_seconds = pcm_bytes / 2 / sample_rate
        self.metrics.audio_seconds.labels(self.provider or "").inc(self.audio_seconds)

    def ended(self, end: str) -> None:
        """The stream ended (``complete``, ``timeout``, ``drain``, ``provider_error``,
        ``stall``, ``caller_too_slow``, ``client_disconnect``)."""
        self.end = end
        self.metrics.streams_ended.labels(end).inc()

    def fields(self) -> dict[str, Any]:
        """The request as its log line tells it: every field, ``None`` where it is not known
        (a request refused before its voice was read has no ``VoiceId``; one answered with an
        error no ``ttfb_ms``). Never the text or the token. Values are typed: ``tried`` is a
        list of ``{voice, provider, outcome, detail}``, one per voice of the chain asked or
        passed over; ``ttfb_ms`` and ``duration_ms`` are milliseconds, ``audio_ms`` the
        milliseconds of audio sent, ``bytes`` its PCM bytes, ``end`` the end reason."""
        if self.described is not None:
            self.call, self.described = self.described.log_fields(), None
        return {
            "request_id": self.request_id,
            "door": None if self.door == "custom" else self.door,
            "tenant": None if self.tenant == "anonymous" else self.tenant,
            "VoiceId": self.voice_id,
            "sample_rate": self.sample_rate,
            **{key: self.call.get(key) for key in LOGGED_EXTEND_FIELDS},
            "provider": self.provider,
            "answered_by": self.answered_by,
            "cache": self.cache,
            "tried": [
                {"voice": t.voice, "provider": t.provider, "outcome": t.outcome, "detail": t.detail}
                for t in self.tried
            ],
            "status": self.status,
            "ttfb_ms": None if self.ttfb is None else round(self.ttfb * 1000, 1),
            "error": self.error,
            "end": self.end,
            "audio_ms": None if self.audio_seconds is None else round(self.audio_seconds * 1000),
            "duration_ms": None if self.duration is None else round(self.duration * 1000, 1),
            "bytes": self.bytes_sent,
        }

    def log_line(self) -> str:
        """The request's line in the text log: :meth:`fields` as ``key=value``, those not known
        left out, ``tried`` only when a voice other than the first was needed
        (``tried=alloy:open,bella:busy,joe:ok``)."""
        return self._text_line(self.fields())

    def _text_line(self, fields: dict[str, Any]) -> str:
        tried = self.tried
        worth_telling = len(tried) > 1 or (len(tried) == 1 and tried[0].outcome != "ok")
        parts = []
        for key, value in fields.items():
            if value is None or key in _JSON_ONLY_FIELDS:
                continue
            if key == "tried":
                if not worth_telling:
                    continue
                value = ",".join(str(t) for t in tried)
            parts.append(f"{_TEXT_NAMES.get(key, key)}={_log_value(value)}")
        return " ".join(parts)

    def finish(self) -> None:
        """The request is over: its log line (built only if it is written). In JSON the
        fields are the line, at its top level (:class:`gateway.logs.JsonFormatter`)."""
        self.duration = time.perf_counter() - self.started
        if self.tenant is not None:
            status = str(self.status or 0)
            self.metrics.tenant_requests.labels(self.tenant, status).inc()
            if self.status == 200 and self.characters:
                self.metrics.tenant_characters.labels(self.tenant).inc(self.characters)
        if log.isEnabledFor(logging.INFO):
            fields = self.fields()
            message = "request" if writes_json() else self._text_line(fields)
            log.info(message, extra={"event": "request", **fields})


class Synthesis:
    """An open stream whose first audio is in hand: :meth:`pump` sends it."""

    def __init__(
        self,
        stream: AudioStream,
        request: TTSRequest,
        outcome: Outcome,
        drain: DrainClock,
        spend: SpendMeter,
    ) -> None:
        self.stream = stream
        self.request = request
        self.outcome = outcome
        self._drain = drain
        self._spend = spend
        self._settled = False

    @property
    def answering_voice(self) -> str:
        """The routing file's name for the voice that answered (the VoiceId itself when a
        pattern matched it)."""
        return self.stream.step.answering_voice(self.request.voice_id)

    async def pump(
        self,
        write: Callable[[bytes], Awaitable[None]],
        pace: CallerPace | None = None,
        direct: CallerBody | None = None,
    ) -> bytes:
        """Every PCM chunk to ``write`` (the first one already in hand), within the provider's
        ``total`` budget and the drain deadline, while the caller keeps ``pace``. After audio
        has gone out nothing is retried and nothing but audio is sent: a failure ends the
        stream early. The provider is released before this returns; what is returned is the
        resampler's tail, for the front door to send before ending its answer.

        ``direct``: the caller's answer, when it takes body bytes without waiting; then a
        stream that is one upstream body as it is has the rest of it relayed from the
        upstream connection's callbacks (:mod:`gateway.direct`), under the same budgets."""
        stream, outcome = self.stream, self.outcome
        end = "complete"
        loop = asyncio.get_running_loop()
        timeouts = stream.provider.config.timeout
        first = True
        # Whether the rest may still go to ``direct`` (decided once the first piece is out).
        tap = direct is not None
        relayed = False
        chunks = stream.chunks()
        stall = StallWatch(timeouts.stall)
        if stream.sent_at is not None:  # the first audio went out as soon as it existed
            first = False
            outcome.first_audio(stream.sent_at)
        try:
            # One deadline: the total budget, brought forward by the drain, or to the moment
            # by the stall watch when the upstream has been silent too long.
            async with deadline(timeouts.total) as budget:
                with self._drain.watch(budget), stall.armed(budget):
                    while True:
                        # Once the first audio is out and nothing of the first piece is left
                        # to convert, the rest may be relayed from the upstream's callbacks.
                        if tap and not first and not stream.rest:
                            tap = False
                            upstream = stream.tap_point()
                            if upstream is not None:
                                assert direct is not None
                                relayed = True
                                relay = DirectRelay(stream, upstream, direct, stall, pace, loop)
                                end = await relay.run()
                                break
                        try:
                            pcm = await chunks.__anext__()
                        except StopAsyncIteration:
                            break
                        stall.waiting = False
                        sending = time.perf_counter()
                        await write(pcm)
                        stall.resume()
                        if first:
                            first = False
                            outcome.first_audio(sending)
                        elif pace is not None and pace.waited(time.perf_counter() - sending):
                            end = "caller_too_slow"
                            break
        except asyncio.CancelledError:
            # The caller hung up (the front door ends the stream): what went out counts.
            outcome.sent(stream.bytes_out, self.request.sample_rate)
            self.settle("client_disconnect")
            raise
        except TimeoutError:
            if stall.fired:
                end = "stall"
                outcome.error = f"no audio for {timeouts.stall:g} s mid-answer"
                stream.failed(ProviderTimeout(stream.provider.name, outcome.error))
            else:
                end = "drain" if self._drain.cut(budget) else "timeout"
        except Exception as error:
            end = "provider_error"
            if isinstance(error, ProviderError):
                outcome.error = stream.provider.redact(error.reason)
                stream.failed(error)
                if isinstance(error, ProviderTimeout):
                    end = "stall"  # the upstream's own read timeout: silence mid-answer
                log.warning(
                    "request_id=%s stream ended early: %s",
                    outcome.request_id,
                    outcome.error,
                    extra={"request_id": outcome.request_id, "provider": stream.provider.name},
                )
            else:
                outcome.error = type(error).__name__
                log.exception(
                    "request_id=%s provider %s failed mid-stream",
                    outcome.request_id,
                    stream.provider.name,
                    extra={"request_id": outcome.request_id, "provider": stream.provider.name},
                )
        await chunks.aclose()
        # Release the provider (slot, upstream connection) before the last sends, which a
        # caller that stopped reading could hold up.
        tail = stream.flush() if end != "complete" or relayed else b""
        await stream.aclose()
        outcome.sent(stream.bytes_out, self.request.sample_rate)
        outcome.ended(end)
        self.settle(end)
        return tail

    def settle(self, end: str) -> None:
        """Count the stream's spend (once; ``end``: ``complete`` or why it was cut), from the
        audio the caller was sent (:class:`~gateway.spend.SpendMeter`)."""
        if self._settled:
            return
        self._settled = True
        self._spend.settle(self.stream, self.outcome.audio_seconds or 0.0, end)


class SynthesisCore:
    """Routes, admits and opens a validated request (see the module docstring)."""

    def __init__(self, streams: StreamLimit, drain: DrainClock, spend: SpendMeter) -> None:
        self.streams = streams
        self.drain = drain
        self.spend = spend

    def open(
        self,
        routing: LoadedRouting,
        request: TTSRequest,
        outcome: Outcome,
        first_out: FirstOut | None = None,
    ) -> Opening:
        """The request's stream with its first audio in hand, held open (and counted against
        the stream limit) for the block (``async with``, which gives the :class:`Synthesis`).
        Raises a :class:`GatewayError` before any audio: ``VoiceNotFound``, ``TooManyStreams``,
        ``ProvidersBusy``, ``ProvidersFailed``, ``ProvidersTimedOut``, ``NotReady`` (the drain
        deadline passed first). ``first_out``: the front door's writer of the answer's head
        and first audio, which the relay calls as soon as the audio exists where it can
        (:class:`~gateway.stream.FirstOut`); :meth:`Synthesis.pump` then goes on from there."""
        return Opening(self, routing, request, outcome, first_out)


class Opening:
    """The block of :meth:`SynthesisCore.open` (a class rather than ``contextlib``'s async
    generator: it is entered for every request)."""

    __slots__ = ("_core", "_first_out", "_outcome", "_request", "_routing", "_synthesis")

    def __init__(
        self,
        core: SynthesisCore,
        routing: LoadedRouting,
        request: TTSRequest,
        outcome: Outcome,
        first_out: FirstOut | None = None,
    ) -> None:
        self._core = core
        self._routing = routing
        self._request = request
        self._outcome = outcome
        self._first_out = first_out
        self._synthesis: Synthesis | None = None

    async def __aenter__(self) -> Synthesis:
        core, routing, request, outcome = self._core, self._routing, self._request, self._outcome
        chain = routing.chain_for(request.voice_id)
        # Shaped once here, handed to the relay: the requested voice's shaping may leave
        # nothing to speak, which is the caller's mistake, not a provider's.
        shaped = chain[0].shape(request.text)
        if not shaped:
            raise BadRequest(
                "Text has nothing to speak once the voice's text shaping is applied "
                "(only markup, code or emoji)",
                field="Text",
                code="empty_text",
            )
        streams = core.streams
        streams.take(routing.config.server.max_concurrent_streams)
        try:
            try:
                async with deadline(None) as opening:
                    with core.drain.watch(opening):
                        stream = await routing.relay.open(
                            chain,
                            request,
                            outcome.request_id,
                            outcome.tried,
                            shaped,
                            self._first_out,
                        )
            except TimeoutError:
                if not opening.expired():
                    raise
                # The drain deadline passed before any audio existed: nothing has gone out.
                raise NotReady(
                    "the gateway is shutting down", headers={"Retry-After": "1"}
                ) from None
            try:
                outcome.provider = stream.provider.name
                outcome.answered_by = stream.step.voice.key
                outcome.cache = stream.cache
                self._synthesis = Synthesis(stream, request, outcome, core.drain, core.spend)
            except BaseException:
                await stream.aclose()
                raise
        except BaseException:
            streams.give_back()
            raise
        return self._synthesis

    async def __aexit__(self, *exc_info: object) -> None:
        synthesis = self._synthesis
        assert synthesis is not None
        self._synthesis = None  # the block's stream is let go of with the block
        try:
            # A stream that never got to its pump (the caller hung up first) is cut.
            synthesis.settle("client_disconnect")
        finally:
            try:
                await synthesis.stream.aclose()
            finally:
                self._core.streams.give_back()


__all__ = ["Opening", "Outcome", "Synthesis", "SynthesisCore"]
