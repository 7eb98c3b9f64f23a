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

Where the package was built with it, a chunk's step is compiled (``providers/_relay.c``): the
upstream's response parser hands each piece of the body to the relay's
:class:`providers._relay.Tap`, which marks the stall watch, converts the piece with the
compiled polyphase kernel (or passes it through), counts it and frames it, as
:meth:`DirectRelay.body` and the calls below it do in Python, without a Python frame; and it
holds the chunk for the end of the loop's turn in the loop's :class:`providers._relay.Batch`,
which sends every relay's chunks held in one callback (``ConnectionIO``'s hold and
``TurnWrites``' end of turn, for relayed chunks), after any write the connection still holds
from before the relay. It does so for the common case (a chunked answer whose head is out, on a
plaintext connection; mono S16LE through the compiled kernel or at the caller's rate; nothing
carried by the converter); for any other stream, and from the first piece of an odd byte count
on, the Python step does it. What it holds is sent before anything written after the relay.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final, Protocol, cast

import httpx

from providers._errors import translate_errors
from providers.base import ProviderError

from .budgets import CallerPace, StallWatch
from .http1.io import WRITE_HIGH_WATER

try:  # the compiled chunk step, where the package was built with it
    from providers._relay import Tap
except ImportError:  # pragma: no cover - a build without a C compiler
    Tap = None  # type: ignore[assignment, misc]

#: Which step relays a stream's chunks where it can (the ``ready`` log line says it):
#: ``compiled`` (``providers/_relay.c``) or, in a build without a C compiler, ``python``.
RELAY_STEP: Final = "compiled" if Tap is not None else "python"

if TYPE_CHECKING:
    from providers._pool import _Connection
    from providers._turn import TurnWrites

    from .http1.io import ConnectionIO
    from .stream import AudioStream


class CallerBody(Protocol):
    """A caller's answer that takes body bytes without waiting (``gateway.http1.Exchange``)."""

    def write_now(self, body: bytes) -> None: ...

    def listen(self, flow: DirectRelay | None) -> None: ...

    @property
    def write_paused(self) -> bool: ...


class ChunksTarget(Protocol):
    """A caller's answer that a compiled step may write chunks to itself
    (``gateway.http1.Exchange``; see :meth:`DirectRelay.compiled_step`)."""

    def chunks_target(self) -> tuple[ConnectionIO, list[bytes], TurnWrites] | None: ...


class DirectRelay:
    """Relays a tapped upstream body to a caller (see the module docstring). :attr:`done`
    resolves with the end reason (``complete``, ``caller_too_slow``) or the provider error."""

    __slots__ = (
        "_call_soon",
        "_caller",
        "_feed",
        "_pace",
        "_paused_at",
        "_provider",
        "_stall",
        "_step",
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
        self._call_soon = loop.call_soon
        self._step = self.compiled_step()

    def compiled_step(self) -> Tap | None:
        """The compiled step for this stream's chunks (see the module docstring), or None:
        no compiled step, a caller that is not written to that way, or a conversion it does
        not do."""
        if Tap is None:
            return None
        target = getattr(self._caller, "chunks_target", None)
        where = cast("ChunksTarget", self._caller).chunks_target() if target else None
        if where is None:
            return None
        plain, process = self._stream.converter.compiled_step()
        if not plain:
            return None
        conn, held, turn = where
        if turn.batch is None:
            return None
        return Tap(
            process,
            conn,
            self._caller,
            self._stall,
            self._time,
            held,
            self._slow_body,
            self._failed,
            turn.batch,
            self._call_soon,
            WRITE_HIGH_WATER,
        )

    @property
    def compiled(self) -> bool:
        """Whether chunks are relayed by the compiled step (not by the Python one, if only
        from some piece on)."""
        return self._step is not None and not self._step.on_slow

    async def run(self) -> str:
        """Relay until the body ends, the caller is too slow, or the provider fails (raised as
        a :class:`ProviderError`); cancelled, it leaves the upstream untapped."""
        caller, upstream = self._caller, self._upstream
        caller.listen(self)
        try:
            # Tapping resumes reading (the buffering reader may have paused it): a caller that
            # is already paused pauses it again after, not before.
            upstream.tap(self, self._step)
            if caller.write_paused:
                self.caller_paused()
            return await self.done
        finally:
            upstream.untap()
            caller.listen(None)
            step = self._step
            if step is not None:
                step.send()  # what it holds goes before what is written after the relay
                step.close()  # it refers back to this relay
                frames_in, frames_out, bytes_out = step.counts()
                self._stream.converter.counted(frames_in, frames_out)
                self._stream.bytes_out += bytes_out

    # ------------------------------------------------------------ the upstream's side

    def body(self, data: bytes) -> None:
        step = self._step
        if step is not None:
            step(data)  # which hands what it does not do itself to _slow_body
        else:
            self._slow_body(data)

    def _slow_body(self, data: bytes) -> None:
        if self.done.done():
            return
        if self._paused_at is None:  # the caller's slowness is not the upstream's silence
            stall = self._stall
            stall.since = self._time()  # StallWatch.resume(), a call less a chunk
            stall.waiting = True
        try:
            pcm = self._feed(data)
        except Exception as error:  # undecodable audio: ended as the pump's loop ends it
            self._failed(error)
            return
        if pcm:
            self._stream.bytes_out += len(pcm)
            self._caller.write_now(pcm)

    def _failed(self, error: BaseException) -> None:
        """The relay ends with ``error`` (the converter's, or the provider's)."""
        if not self.done.done():
            self._stop()
            self.done.set_exception(error)

    def _stop(self) -> None:
        """The relay has ended: a piece that still arrives is dropped."""
        if self._step is not None:
            self._step.active = False

    def ended(self, error: httpx.TransportError | None) -> None:
        if self.done.done():
            return
        if error is None:
            self._stream.received_all = True
            self._stop()
            self.done.set_result("complete")
            return
        try:
            with translate_errors(self._provider):
                raise error
        except ProviderError as translated:
            self._failed(translated)

    # ------------------------------------------------------------ the caller's side

    def caller_paused(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.perf_counter()
            if self._step is not None:
                self._step.paused = True
            self._stall.waiting = False  # the caller's slowness is not the upstream's silence
            self._upstream.pause()

    def caller_resumed(self) -> None:
        paused_at = self._paused_at
        if paused_at is None:
            return
        self._paused_at = None
        if self._step is not None:
            self._step.paused = False
        self._stall.resume()
        if self._pace is not None and self._pace.waited(time.perf_counter() - paused_at):
            if not self.done.done():
                self._stop()
                self.done.set_result("caller_too_slow")
            return
        self._upstream.resume()
