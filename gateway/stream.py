"""An open provider stream whose first audio is in hand: what the relay hands the core."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from providers._http import OnePiece
from providers.base import Provider, ProviderError

from .admission import Lease
from .audio import Converter
from .breaker import Ticket
from .routing import ChainStep

if TYPE_CHECKING:
    from providers._pool import _Connection

    from .health import ProviderHealth


@dataclass(slots=True)
class VoiceTry:
    """One voice of a request's chain and what came of it: ``ok``; skipped without asking
    (``open``, ``busy``, ``saturated``); failed (``failed``, ``timeout``, ``no_audio``); or
    ended by the gateway (``hedge_lost``, ``cancelled``). ``detail`` is what the caller may
    be told of a failure."""

    voice: str
    provider: str
    outcome: str
    detail: str = ""
    retry_after: float | None = None

    def __str__(self) -> str:
        return f"{self.voice}:{self.outcome}"


@dataclass(slots=True)
class AudioStream:
    """An open provider stream whose first PCM chunk is already in hand.

    Iterate :meth:`chunks` for S16LE mono PCM at the requested rate; always :meth:`aclose`
    (closing is what releases the upstream connection and the provider slot)."""

    step: ChainStep
    provider: Provider
    first: bytes
    converter: Converter
    source: AsyncGenerator[bytes, None] | None
    lease: Lease
    health: ProviderHealth | None = None
    tried: list[VoiceTry] = field(default_factory=list)
    bytes_out: int = 0
    cache: str | None = None
    """Where the audio comes from when the voice uses the phrase cache: ``hit`` (stored),
    ``shared`` (an identical request's synthesis in flight), ``miss`` (this request's own)."""
    characters: int = 0
    """Characters the provider bills for this stream (0 when the audio came from the cache)."""
    on_failed: Callable[[ProviderError], None] | None = None
    """Who is told of a failure mid-answer instead of :attr:`health` (a shared synthesis)."""
    native_head: list[bytes] = field(default_factory=list)
    """The provider's native chunks read to get :attr:`first` (kept only when asked for)."""
    rest: bytes | memoryview = b""
    """The provider's bytes read with the first audio and not yet converted (a long first
    piece is converted in two steps, :meth:`Converter.feed_first`)."""
    received_all: bool = False
    """Whether the provider's whole answer has been received (its stream ended)."""
    sent_at: float | None = None
    """When :attr:`first` went to the caller (``time.perf_counter``), if a :class:`FirstOut`
    wrote it as soon as it existed; None otherwise (:meth:`chunks` gives it first)."""
    _closed: bool = False

    def __post_init__(self) -> None:
        if self.source is None:  # the answer ended with its first audio
            self.received_all = True

    def chunks(self) -> Chunks:
        """The first chunk (unless a :class:`FirstOut` wrote it: :attr:`sent_at`), then the
        rest as it arrives, then the resampler's tail.

        A provider error after the first chunk propagates; the caller ends the stream."""
        return Chunks(self)

    def tap_point(self) -> _Connection | None:
        """The upstream connection whose body is the rest of this stream as it is (see
        :mod:`gateway.direct`), when it is: one HTTP answer's body, not stored by the phrase
        cache, its first audio sent and nothing of it buffered here (nor :attr:`rest`)."""
        source = self.source
        if self.rest:
            return None
        if isinstance(source, OnePiece) and self.cache is None and self.on_failed is None:
            return source.tap_point()
        return None

    def flush(self) -> bytes:
        """Drain the resampler (also after a provider error, so no buffered audio is lost)."""
        if self.converter.finished:
            return b""
        tail = self.converter.flush()
        self.bytes_out += len(tail)
        return tail

    def failed(self, error: ProviderError) -> None:
        """The provider failed mid-answer (an error, a stall): a failure for its breaker."""
        if self.on_failed is not None:
            self.on_failed(error)
        elif self.health is not None:
            self.health.noted(error)
            if error.retryable:
                self.health.breaker.failed(Ticket.NORMAL)

    @property
    def audio_generated(self) -> float:
        """Seconds of the provider's audio converted so far (sent or not)."""
        fmt = self.converter.input_format
        return self.converter.frames_in / fmt.sample_rate if fmt is not None else 0.0

    async def aclose(self) -> None:
        """Close the provider stream (and so its upstream response) and free its slot."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.source is not None:
                await self.source.aclose()
        finally:
            self.source = None
            self.lease.release()


class FirstOut(Protocol):
    """Writes a stream's first audio to the caller the moment it exists: called by the attempt
    that made it (:class:`gateway.attempts.VoiceOpener`), before the stream is made and handed
    up through the relay and the synthesis core, which then have nothing left to decide that
    could change the answer. It writes the answer's head and the audio (nothing once the
    caller has gone, as a write to a caller gone is not an error) and returns when it did
    (``time.perf_counter``), the stream's :attr:`AudioStream.sent_at`. It is given only to an
    attempt whose first audio is the answer's as soon as it exists: one voice's, not a hedge
    race's, not through the phrase cache."""

    def ahead(self, step: ChainStep, converter: Converter) -> None:
        """An attempt at ``step`` is about to send its request, and will convert its audio
        with ``converter``: what the first write will need may be made while the upstream
        works (:meth:`Converter.prepare`, the answer's head)."""

    def __call__(self, step: ChainStep, pcm: bytes) -> float:
        """Write the answer's head for ``step``'s voice and ``pcm``; returns when."""


class Chunks:
    """:meth:`AudioStream.chunks`: an async iterator written out as a class rather than an
    async generator (one is made for every request; an async generator costs the event
    loop's bookkeeping of it, made and closed). It ends for good once it has ended, raised
    or been closed; closing it leaves the provider's stream open (:meth:`AudioStream.aclose`
    closes that)."""

    __slots__ = ("_stage", "_stream")

    # Its stages: the first chunk, the rest of the first piece, the provider's stream, the
    # resampler's tail, ended.
    _FIRST, _REST, _SOURCE, _TAIL, _ENDED = range(5)

    def __init__(self, stream: AudioStream) -> None:
        self._stream = stream
        self._stage = self._FIRST

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        stream = self._stream
        try:
            if self._stage == self._FIRST:
                self._stage = self._REST
                if stream.sent_at is None:  # not written already (FirstOut)
                    stream.bytes_out += len(stream.first)
                    return stream.first
            if self._stage == self._REST:
                self._stage = self._SOURCE
                if stream.rest:
                    rest, stream.rest = stream.rest, b""
                    pcm = stream.converter.feed(rest)
                    if pcm:
                        stream.bytes_out += len(pcm)
                        return pcm
            if self._stage == self._SOURCE:
                source = stream.source
                if source is not None:
                    feed = stream.converter.feed
                    while True:
                        try:
                            native = await source.__anext__()
                        except StopAsyncIteration:
                            break
                        pcm = feed(native)
                        if pcm:
                            stream.bytes_out += len(pcm)
                            return pcm
                    stream.source = None
                    stream.received_all = True
                self._stage = self._TAIL
            if self._stage == self._TAIL:
                self._stage = self._ENDED
                tail = stream.flush()
                if tail:
                    return tail
        except BaseException:
            self._stage = self._ENDED
            raise
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._stage = self._ENDED
