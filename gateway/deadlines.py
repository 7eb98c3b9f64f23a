"""Deadlines for the request path: :func:`asyncio.timeout`'s contract, without a timer of
their own in the usual case.

``async with deadline(seconds):`` cancels the task when the deadline passes, and the block
raises ``TimeoutError``, exactly as ``asyncio.timeout`` does: :meth:`Deadline.when`,
:meth:`Deadline.reschedule` and :meth:`Deadline.expired` are the same, a cancellation from
elsewhere (the caller hung up) passes through as ``CancelledError``, and the task's count of
cancellations is left as it was.

What differs is the timer. ``asyncio.timeout`` makes one for each block and cancels it on the
way out: on uvloop ~4 µs of the ~9 µs a block costs, and a request enters two such blocks (the
provider's first-byte budget, the stream's total). Almost none of them ever fire: requests end
long before their budgets. Here the deadlines of one length (``seconds``) on one loop form a
:class:`_Lane`: since the loop's clock only goes forward, each is due after those entered
before it, so the lane is a queue in the order they are due, with one timer, set for the first.
A deadline entered joins the end of its lane. A block that ends drops the ended deadlines at the
front of its lane (blocks of one length mostly end in the order they began); one that ends
behind a block still in force is dropped when it comes to the front. When the timer fires it
expires what is due, drops what has ended, and is set for the first deadline still in force: one
timer a lane at a time, made once while the lane is never empty. Entries left behind are
bounded: once a lane has grown to twice its size after the last sweep (and :data:`SWEEP_FLOOR`
entries more), it is rebuilt from the deadlines still in force.

A deadline given as a time (:func:`deadline_at`), moved (:meth:`Deadline.reschedule`, as the
drain and the stall watch do), entered after one of its length due later (made, then entered
only after another was), or of a length beyond the :data:`MAX_LANES` a loop keeps, has a timer
of its own, as ``asyncio.timeout``'s.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from types import TracebackType
from typing import Final

__all__ = ["MAX_LANES", "SWEEP_FLOOR", "Deadline", "deadline", "deadline_at"]

#: A lane is swept when it holds this many entries more than after its last sweep (and twice
#: as many): entries of deadlines already left wait for a sweep or for their time, whichever
#: comes first.
SWEEP_FLOOR: Final = 4096
#: Lengths a loop keeps a lane for; a deadline of another length has a timer of its own.
MAX_LANES: Final = 64

# A deadline's states, as asyncio.Timeout's.
_CREATED: Final = 0
_ENTERED: Final = 1
_EXPIRING: Final = 2
_EXPIRED: Final = 3
_EXITED: Final = 4


class Deadline:
    """One deadline block (see the module docstring); made by :func:`deadline` or
    :func:`deadline_at`."""

    __slots__ = ("_cancelling", "_delay", "_handle", "_lane", "_moved", "_state", "_task", "_when")

    def __init__(self, when: float | None, delay: float | None = None) -> None:
        self._when = when
        self._delay = delay  # the length, when the deadline is one from now (a lane's)
        self._state = _CREATED
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._handle: asyncio.Handle | None = None  # its own timer, if it has one
        self._lane: _Lane | None = None  # the lane it waits in, if it does
        self._moved = False  # rescheduled: no longer its lane's to expire

    def when(self) -> float | None:
        """The loop time the deadline is due at (None: never)."""
        return self._when

    def expired(self) -> bool:
        """Whether the deadline passed (and cancelled the block)."""
        return self._state == _EXPIRING or self._state == _EXPIRED

    def reschedule(self, when: float | None) -> None:
        """Move the deadline (``None``: never), while the block runs; a time already past
        expires it at the loop's next turn."""
        if self._state != _ENTERED:
            raise RuntimeError(
                "the deadline has not been entered"
                if self._state == _CREATED
                else "the deadline's block is over"
            )
        self._when = when
        self._moved = True  # its lane drops it
        self._own_timer(asyncio.get_running_loop(), when)

    def _own_timer(self, loop: asyncio.AbstractEventLoop, when: float | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if when is None:
            return
        if when <= loop.time():
            self._handle = loop.call_soon(self._due)
        else:
            self._handle = loop.call_at(when, self._due)

    def _due(self) -> None:
        self._handle = None
        if self._state == _ENTERED:
            self._expire()

    async def __aenter__(self) -> Deadline:
        if self._state != _CREATED:
            raise RuntimeError("the deadline has already been entered")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline is for use inside a task")
        self._state = _ENTERED
        self._task = task
        self._cancelling = task.cancelling()
        when = self._when
        if when is not None:
            lane = _lane_for(task.get_loop(), self._delay)
            if lane is not None and lane.add(self):
                self._lane = lane
            else:
                self._own_timer(task.get_loop(), when)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state, task, lane = self._state, self._task, self._lane
        self._task = self._lane = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._state = _EXPIRED if state == _EXPIRING else _EXITED
        if lane is not None:
            lane.left()
        if state == _EXPIRING:
            assert task is not None
            if task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def _expire(self) -> None:
        """The deadline has passed: cancel the block's task."""
        task = self._task
        assert task is not None
        self._state = _EXPIRING
        task.cancel()

    def __repr__(self) -> str:
        state = ("created", "active", "expiring", "expired", "finished")[self._state]
        return f"<Deadline [{state}] when={self._when}>"


def deadline(delay: float | None) -> Deadline:
    """A block cancelled ``delay`` seconds from now (``None``: never), as ``asyncio.timeout``."""
    if delay is None:
        return Deadline(None)
    return Deadline(asyncio.get_running_loop().time() + delay, delay)


def deadline_at(when: float | None) -> Deadline:
    """A block cancelled at loop time ``when`` (``None``: never), as ``asyncio.timeout_at``;
    it has a timer of its own."""
    return Deadline(when)


class _Lane:
    """One loop's deadlines of one length, in the order they are due, with one timer set for
    the first (see the module docstring)."""

    __slots__ = ("_entries", "_loop", "_swept", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # A weak reference: the loop keys the lanes, which a strong one would keep alive for
        # good (a process that runs loops one after another: tests).
        self._loop = weakref.ref(loop)
        self._entries: deque[Deadline] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._swept = 0  # the lane's size after its last sweep

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, deadline: Deadline) -> bool:
        """Whether ``deadline`` joined the lane: not if one in force in it is due later (one
        moved is over for the lane, and may be due at any time, or never)."""
        entries = self._entries
        if entries:
            last = entries[-1]
            if not _over(last) and last._when > deadline._when:  # type: ignore[operator]
                return False
        entries.append(deadline)
        if len(entries) > 2 * self._swept + SWEEP_FLOOR:
            self._sweep()
        if self._timer is None:
            self._arm(self._entries[0]._when)  # the swept lane's, if it was just swept
        return True

    def left(self) -> None:
        """A deadline of the lane's was left (or expired): drop those at the front that are
        over. Blocks of one length mostly end in the order they began, so the lane holds
        about what is in force."""
        entries = self._entries
        while entries and _over(entries[0]):
            entries.popleft()

    def _arm(self, when: float | None) -> None:
        loop = self._loop()
        assert loop is not None and when is not None  # a lane's deadlines have a time
        self._timer = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop()
        if loop is None:
            return
        entries, now = self._entries, loop.time()
        while entries:
            deadline = entries[0]
            if _over(deadline):
                entries.popleft()
            elif deadline._when <= now:  # type: ignore[operator]  # a lane's have a time
                entries.popleft()
                deadline._expire()
            else:
                self._arm(deadline._when)
                return

    def _sweep(self) -> None:
        """Keep only the deadlines still in force, in their order."""
        self._entries = deque(d for d in self._entries if not _over(d))
        self._swept = len(self._entries)


def _over(deadline: Deadline) -> bool:
    """Whether a lane's deadline is no longer its to expire: left, expired, or moved (then it
    has a timer of its own)."""
    return deadline._state != _ENTERED or deadline._moved


#: Each loop's lanes, by length.
_LANES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Lane]] = (
    weakref.WeakKeyDictionary()
)


def _lane_for(loop: asyncio.AbstractEventLoop, delay: float | None) -> _Lane | None:
    """``loop``'s lane for deadlines ``delay`` seconds long (made at its first use), or None
    for a deadline given as a time, or of a length past the lanes a loop keeps."""
    if delay is None:
        return None
    lanes = _LANES.get(loop)
    if lanes is None:
        lanes = _LANES[loop] = {}
    lane = lanes.get(delay)
    if lane is None:
        if len(lanes) >= MAX_LANES:
            return None
        lane = lanes[delay] = _Lane(loop)
    return lane
