"""Time budgets: how long each part of a request may take, in one place.

==========================  ======================================================  ===========
budget                      bounds                                                  enforced by
==========================  ======================================================  ===========
``timeout.first_byte``      one voice, before its first audio: slot wait, connect,  relay
                            every retry and backoff
``queue``                   one voice's wait for a provider slot, before its        admission
                            first-byte budget starts
``timeout.total``           one stream, from its first audio to its end             synthesis
``timeout.stall``           an upstream's silence mid-answer (end reason ``stall``) StallWatch
drain (``drain_seconds``)   every request under way once SIGTERM arrives; brings     DrainClock
                            the two above forward
caller pace                 a caller taking the audio far slower than real time     CallerPace
last send                   the end of an answer to a caller that stopped reading   front doors
``server.timeouts``         request head, body, keep-alive; a caller taking nothing  http1
==========================  ======================================================  ===========
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from .deadlines import Deadline

log = logging.getLogger("gateway")

#: How long the last bytes of an answer may take to go out to a caller that stopped reading
#: (kept under the server's drain backstop, so that a drain never has to cancel a request).
LAST_SEND_SECONDS: Final = 5.0
#: A send that waits longer than this waited for the caller, not for the event loop.
SEND_WAIT_NOTICED: Final = 0.002
#: How far behind real time a caller may fall, taking the audio, before its stream is ended.
SLOW_CALLER_GRACE_SECONDS: Final = 5.0


class DrainClock:
    """The drain deadline: when it starts, every deadline in force (and every one set later)
    is brought forward to it, so that the requests under way end by it."""

    def __init__(self) -> None:
        self._deadlines: set[Deadline] = set()
        self._at: float | None = None

    @property
    def running(self) -> bool:
        return self._at is not None

    def start(self, seconds: float) -> None:
        """Start the clock: ``seconds`` from now."""
        if self._at is not None:
            return
        self._at = asyncio.get_running_loop().time() + seconds
        for deadline in self._deadlines:
            self._bring_forward(deadline)

    @property
    def expired(self) -> bool:
        """Whether the drain deadline has passed."""
        return self._at is not None and asyncio.get_running_loop().time() >= self._at

    def watch(self, deadline: Deadline) -> _Watched:
        """Bring ``deadline`` forward to the drain deadline if a drain starts (or has started)
        while it is in force (a ``with`` block, which gives ``deadline``)."""
        return _Watched(self, deadline)

    def _watch(self, deadline: Deadline) -> None:
        self._deadlines.add(deadline)
        if self._at is not None:
            self._bring_forward(deadline)

    def _unwatch(self, deadline: Deadline) -> None:
        self._deadlines.discard(deadline)

    def cut(self, deadline: Deadline) -> bool:
        """Whether ``deadline`` expired because the drain brought it forward."""
        return self._at is not None and deadline.when() == self._at

    def _bring_forward(self, deadline: Deadline) -> None:
        assert self._at is not None
        when = deadline.when()
        if when is None or when > self._at:
            deadline.reschedule(self._at)


class _Watched:
    """The block of :meth:`DrainClock.watch` and :meth:`StallWatch.armed`: ``watcher`` watches
    ``deadline`` while it lasts (a class rather than ``contextlib``'s generator: it is entered
    three times a request)."""

    __slots__ = ("_deadline", "_watcher")

    def __init__(self, watcher: DrainClock | StallWatch, deadline: Deadline) -> None:
        self._watcher = watcher
        self._deadline = deadline

    def __enter__(self) -> Deadline:
        self._watcher._watch(self._deadline)
        return self._deadline

    def __exit__(self, *exc_info: object) -> None:
        self._watcher._unwatch(self._deadline)


class CallerPace:
    """Whether a caller keeps up with the audio it is sent.

    A real-time player takes audio at least as fast as it plays. Every send that had to wait
    for the caller counts: the seconds waited, against the seconds of audio the caller took
    meanwhile (a wait ends when it has taken ``drained_bytes``, the connection's write-buffer
    span). A caller that falls ``grace`` seconds behind (default
    :data:`SLOW_CALLER_GRACE_SECONDS`) is too slow: its stream would hold the
    provider's slot for as long as it dawdles."""

    def __init__(self, sample_rate: int, drained_bytes: int, grace: float | None = None) -> None:
        self._taken_per_wait = drained_bytes / (2 * sample_rate)
        self._grace = SLOW_CALLER_GRACE_SECONDS if grace is None else grace
        self._blocked = 0.0
        self._taken = 0.0

    def waited(self, seconds: float) -> bool:
        """Note a send that waited ``seconds``; whether the caller is now too slow."""
        if seconds <= SEND_WAIT_NOTICED:
            return False
        self._blocked += seconds
        self._taken += self._taken_per_wait
        return self._blocked > self._taken + self._grace


class StallWatch:
    """Ends a stream whose upstream goes silent mid-answer for ``seconds``.

    The pump marks each wait on the upstream (:meth:`resume`, after a chunk went out) and its
    end (``waiting = False``, when the next chunk is in hand); time spent sending to the
    caller is not the upstream's silence. One timer per stream checks the mark every
    ``seconds``, not one per chunk: a chunk costs two attribute writes and a clock read (the
    direct relay, ``gateway.direct``, makes them itself: :attr:`since` and :attr:`waiting`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.waiting = True
        self.fired = False
        self.since = 0.0  # the loop's time the current wait on the upstream began
        self._deadline: Deadline | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def resume(self) -> None:
        """The pump waits on the upstream again, from now."""
        assert self._loop is not None
        self.since = self._loop.time()
        self.waiting = True

    def armed(self, deadline: Deadline) -> _Watched:
        """Watch for the block (a ``with`` block, which gives ``deadline``): a stall expires
        ``deadline`` at once (then :attr:`fired` is set)."""
        return _Watched(self, deadline)

    def _watch(self, deadline: Deadline) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._deadline = deadline
        self.since = loop.time()
        self._timer = loop.call_at(self.since + self.seconds, self._check)

    def _unwatch(self, deadline: Deadline) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = None

    def _check(self) -> None:
        loop, deadline = self._loop, self._deadline
        if loop is None or deadline is None:
            return
        now = loop.time()
        due = self.since + self.seconds
        if not self.waiting:
            due = now + self.seconds  # sending to the caller: not the upstream's silence
        elif now >= due:
            self.fired = True
            deadline.reschedule(now)
            return
        self._timer = loop.call_at(due, self._check)
