"""Single flight: identical requests in flight at the same time share one upstream synthesis.

A miss starts a :class:`Flight`: a task of its own that opens the voice (breaker, admission,
retries: :class:`~gateway.attempts.VoiceOpener`) and reads the provider's native chunks into a
buffer. Every request for the same key while it runs, the one that started it included, is a
*reader* of that buffer from its start, through a converter of its own (each at its own sample
rate). So no reader depends on another: the request that started the flight may hang up and
the others still get the whole answer; the flight is cancelled (its upstream closed, its slot
freed) only when its last reader has left.

A flight that reads its upstream to the end without an error is complete, and only then is its
answer stored. The buffer is bounded: past :data:`~gateway.cache.store.MAX_ENTRY_BYTES` the
answer will not be stored, no new reader may join, the chunks every reader has passed are let
go, and the upstream is read no faster than the slowest reader.

Failures are counted once per flight, not once per reader: a reader whose stream fails (an
upstream error, a stall its pump saw) reports to the flight, which tells the provider's breaker
the first time only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

from providers.base import ProviderError

from ..stream import AudioStream
from .store import MAX_ENTRY_BYTES

log = logging.getLogger("gateway.cache")


class _Reader:
    __slots__ = ("position",)

    def __init__(self) -> None:
        self.position = 0


class Flight:
    """One upstream synthesis and its readers."""

    def __init__(self, key: str, *, cap: int = MAX_ENTRY_BYTES) -> None:
        self.key = key
        self.cap = cap
        self.chunks: list[bytes | None] = []
        self.size = 0
        self.held = 0  # bytes still in the buffer (not let go)
        self.storing = True
        self.complete = False
        self.error: BaseException | None = None
        self.stream: AudioStream | None = None
        self.task: asyncio.Task[None] | None = None
        self._readers: set[_Reader] = set()
        self.abandoned = False
        self._changed = asyncio.get_running_loop().create_future()
        self._counted = False
        self._on_end: Callable[[Flight], None] | None = None

    @property
    def ended(self) -> bool:
        return self.complete or self.error is not None

    @property
    def joinable(self) -> bool:
        """Whether a new reader can still get the whole answer from the buffer (not once its
        last reader has left: it is being cancelled)."""
        return self.storing and not self.ended and not self.abandoned

    def start(
        self,
        run: Callable[[], Awaitable[AudioStream]],
        on_end: Callable[[Flight], None] | None = None,
    ) -> None:
        """Run the upstream: ``run`` opens it (the first audio in hand, the native chunks read
        so far in :attr:`AudioStream.native_head`). ``on_end`` is called once, as soon as the
        flight has ended (complete, failed or cancelled), before its upstream is closed: so a
        complete answer is stored before any new request could miss it."""
        self._on_end = on_end
        self.task = asyncio.get_running_loop().create_task(self._run(run))
        self.task.add_done_callback(lambda _task: self._ended())

    def _ended(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(self)

    # -- the upstream side ----------------------------------------------------------------

    async def _run(self, run: Callable[[], Awaitable[AudioStream]]) -> None:
        stream: AudioStream | None = None
        try:
            stream = self.stream = await run()
            for native in stream.native_head:
                await self._push(native)
            stream.native_head = []
            source = stream.source
            if source is not None:
                async for native in source:
                    await self._push(native)
            self.complete = True
        except asyncio.CancelledError:
            self.error = self.error or ProviderError("cache", "the flight was cancelled")
            raise
        except BaseException as error:
            self.error = error
            if isinstance(error, ProviderError) and stream is not None:
                self.failed(error)
        finally:
            self._wake()
            self._ended()
            if stream is not None:
                await stream.aclose()

    async def _push(self, native: bytes) -> None:
        if not native:
            return
        self.chunks.append(native)
        self.size += len(native)
        self.held += len(native)
        if self.storing and self.size > self.cap:
            self.storing = False
        self._wake()
        if not self.storing:
            self._let_go()
            while self.held > self.cap and self._readers:
                await self._next_change()
                self._let_go()

    def _let_go(self) -> None:
        """Free the chunks every reader has passed (only once the answer will not be stored)."""
        if not self._readers:
            return
        upto = min(reader.position for reader in self._readers)
        for i in range(upto):
            chunk = self.chunks[i]
            if chunk is not None:
                self.held -= len(chunk)
                self.chunks[i] = None

    def _wake(self) -> None:
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

    async def _next_change(self) -> None:
        await asyncio.shield(self._changed)

    # -- the readers' side ------------------------------------------------------------------

    async def read(self) -> AsyncGenerator[bytes, None]:
        """The native chunks from the start, as they arrive; the flight's error at the end if
        it failed. Closing it leaves the flight (the last to leave cancels it)."""
        reader = _Reader()
        self._readers.add(reader)
        try:
            while True:
                if reader.position < len(self.chunks):
                    chunk = self.chunks[reader.position]
                    reader.position += 1
                    if chunk is None:  # cannot happen for a reader that joined in time
                        raise ProviderError("cache", "the shared answer ran ahead of a reader")
                    if not self.storing:
                        self._wake()  # the upstream may be waiting for the slowest reader
                    yield chunk
                    continue
                if self.complete:
                    return
                if self.error is not None:
                    raise _copied(self.error)
                await self._next_change()
        finally:
            self._readers.discard(reader)
            if not self._readers and not self.ended and self.task is not None:
                self.abandoned = True  # no one may join it from now on
                self.task.cancel()
            elif not self.storing:
                self._wake()

    def failed(self, error: ProviderError) -> None:
        """A reader saw the upstream fail (or stall): tell its breaker, once per flight."""
        if self._counted or self.stream is None:
            return
        self._counted = True
        self.stream.failed(error)


def _copied(error: BaseException) -> BaseException:
    """A copy of ``error`` for one reader to raise (each its own traceback and context). Not
    :func:`copy.copy`, which calls the class with ``args`` alone: the gateway's errors take
    more than their message, and would raise a ``TypeError`` instead of themselves."""
    clone = type(error).__new__(type(error))
    clone.args = error.args
    clone.__dict__.update(error.__dict__)
    return clone
