"""Admission: how much work the gateway takes on at once.

Two limits, each in one place:

- :class:`StreamLimit` — the gateway-wide number of streams in progress
  (``server.max_concurrent_streams``); a request beyond it is answered 429 with ``Retry-After``.
- :class:`ProviderGate` — per provider, the upstream syntheses in flight at once (the
  provider's ``max_concurrency``, or less when the provider signals less); a request finding
  its provider full waits in line at most the provider's ``queue`` seconds, then its chain
  moves on to the next voice (see :mod:`gateway.attempts`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable

from prometheus_client import Gauge

from .deadlines import deadline
from .errors import TooManyStreams


class StreamLimit:
    """Streams in progress across the gateway (every routing file it has loaded), with the
    ``tts_streams_active`` gauge kept beside the count."""

    def __init__(self, gauge: Gauge) -> None:
        self.active = 0
        self._gauge = gauge

    def take(self, limit: int) -> None:
        """Hold one stream (give it back with :meth:`give_back`); ``TooManyStreams`` (429) if
        ``limit`` are in progress."""
        if self.active >= limit:
            raise TooManyStreams(f"{limit} streams are in progress", headers={"Retry-After": "1"})
        self.active += 1
        self._gauge.inc()

    def give_back(self) -> None:
        self.active -= 1
        self._gauge.dec()


class ProviderGate:
    """The slots of one provider: at most :attr:`capacity` syntheses in flight, and a line of
    requests waiting for one, each for at most its ``queue`` seconds.

    A freed slot goes straight to the longest waiter, so a request arriving later cannot take
    it first. A waiter that gives up (its wait is over, its caller hung up) leaves the line, and
    a slot handed to it in that instant is passed on, never lost."""

    def __init__(self, limit: int, signalled: Callable[[], int | None] = lambda: None) -> None:
        self.limit = limit
        self.in_flight = 0
        self._signalled = signalled
        self._line: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def capacity(self) -> int:
        """``max_concurrency``, or less when the provider said it takes less."""
        signalled = self._signalled()
        return min(self.limit, signalled) if signalled else self.limit

    @property
    def waiting(self) -> int:
        """Requests in line for a slot (a waiter leaves the line as it stops waiting)."""
        return len(self._line)

    def try_take(self) -> bool:
        """Take a free slot if there is one and nobody is in line for it. Slots freed since the
        last release (the capacity was raised) go to those in line first."""
        self._hand_over()
        if self.in_flight < self.capacity and not self.waiting:
            self.in_flight += 1
            return True
        return False

    async def take(self, wait: float) -> bool:
        """A slot, waiting at most ``wait`` seconds for one; whether one was had."""
        if self.try_take():
            return True
        if wait <= 0:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._line.append(waiter)
        try:
            async with deadline(wait):
                await waiter
            return True
        except TimeoutError:
            # Handed over just as the wait ran out: keep it.
            return waiter.done() and not waiter.cancelled()
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over as the caller left: pass it on
            raise
        finally:
            waiter.cancel()
            with contextlib.suppress(ValueError):
                self._line.remove(waiter)

    def release(self) -> None:
        """Give a slot back: to the longest waiter, if the capacity allows."""
        self.in_flight -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        """Free slots to the longest waiters, as many as the capacity allows."""
        while self._line and self.in_flight < self.capacity:
            waiter = self._line.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)


class Lease:
    """One slot of a :class:`ProviderGate`, given back once however often it is released."""

    __slots__ = ("_gate",)

    def __init__(self, gate: ProviderGate | None) -> None:
        self._gate: ProviderGate | None = gate  # None: no slot (audio the cache replays)

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.release()
