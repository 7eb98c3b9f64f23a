"""The rest of a stream, once its first audio has gone out, relayed from the upstream
connection's own callbacks: each body chunk is converted and written to the caller where it
arrives (the upstream's ``data_received``), with no task woken and no layer of async iteration
per chunk.

The first chunk needs the relay's machinery (routing, admission, retries, fallbacks, hedging,
the cache); the rest, in the common case, is one upstream body relayed as it is. A stream is
relayed this way only when that is all it is: one request's answer whose audio is the response
body as it is (``providers._http.OnePiece.tap_point``), not stored by the phrase cache, to a
caller whose connection takes direct writes (``gateway.http1.Exchange``); every other stream
goes through :meth:`~gateway.synthesis.Synthesis.pump`'s loop. What the loop enforces holds
here too, from the same pump: the total budget and the drain deadline (the pump waits for the
relay inside them and is cancelled by them), the upstream's silence (:class:`StallWatch`, told
of every chunk), the caller's pace (:class:`CallerPace`, told of every pause of the caller's
write buffer, during which the upstream is not read), the caller hanging up (the pump is
cancelled), a failure mid-answer (the relay ends with it).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

import httpx

from providers._errors import translate_errors
from providers.base import ProviderError

from .budgets import CallerPace, StallWatch

if TYPE_CHECKING:
    from providers._pool import _Connection

    from .stream import AudioStream


class CallerBody(Protocol):
    """A caller's answer that takes body bytes without waiting (``gateway.http1.Exchange``)."""

    def write_now(self, body: bytes) -> None: ...

    def listen(self, flow: DirectRelay | None) -> None: ...

    @property
    def write_paused(self) -> bool: ...


class DirectRelay:
    """Relays a tapped upstream body to a caller (see the module docstring). :attr:`done`
    resolves with the end reason (``complete``, ``caller_too_slow``) or the provider error."""

    __slots__ = (
        "_caller",
        "_feed",
        "_pace",
        "_paused_at",
        "_provider",
        "_stall",
        "_stream",
        "_time",
        "_upstream",
        "done",
    )

    def __init__(
        self,
        stream: AudioStream,
        upstream: _Connection,
        caller: CallerBody,
        stall: StallWatch,
        pace: CallerPace | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.done: asyncio.Future[str] = loop.create_future()
        self._stream = stream
        self._feed = stream.converter.feed
        self._provider = stream.provider.name
        self._upstream = upstream
        self._caller = caller
        self._stall = stall
        self._pace = pace
        self._paused_at: float | None = None
        self._time = loop.time

    async def run(self) -> str:
        """Relay until the body ends, the caller is too slow, or the provider fails (raised as
        a :class:`ProviderError`); cancelled, it leaves the upstream untapped."""
        caller, upstream = self._caller, self._upstream
        caller.listen(self)
        try:
            # Tapping resumes reading (the buffering reader may have paused it): a caller that
            # is already paused pauses it again after, not before.
            upstream.tap(self)
            if caller.write_paused:
                self.caller_paused()
            return await self.done
        finally:
            upstream.untap()
            caller.listen(None)

    # ------------------------------------------------------------ the upstream's side

    def body(self, data: bytes) -> None:
        if self.done.done():
            return
        if self._paused_at is None:  # the caller's slowness is not the upstream's silence
            stall = self._stall
            stall.since = self._time()  # StallWatch.resume(), a call less a chunk
            stall.waiting = True
        try:
            pcm = self._feed(data)
        except Exception as error:  # undecodable audio: ended as the pump's loop ends it
            self.done.set_exception(error)
            return
        if pcm:
            self._stream.bytes_out += len(pcm)
            self._caller.write_now(pcm)

    def ended(self, error: httpx.TransportError | None) -> None:
        if self.done.done():
            return
        if error is None:
            self._stream.received_all = True
            self.done.set_result("complete")
            return
        try:
            with translate_errors(self._provider):
                raise error
        except ProviderError as translated:
            self.done.set_exception(translated)

    # ------------------------------------------------------------ the caller's side

    def caller_paused(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.perf_counter()
            self._stall.waiting = False  # the caller's slowness is not the upstream's silence
            self._upstream.pause()

    def caller_resumed(self) -> None:
        paused_at = self._paused_at
        if paused_at is None:
            return
        self._paused_at = None
        self._stall.resume()
        if self._pace is not None and self._pace.waited(time.perf_counter() - paused_at):
            if not self.done.done():
                self.done.set_result("caller_too_slow")
            return
        self._upstream.resume()
