"""Writes held for the end of the event loop's turn, every holder's sent back to back.

What the gateway writes to its sockets while the loop handles one batch of ready sockets and
callbacks is held, and sent when the batch is done, in one callback (Netty's flush
consolidation, Node's cork): to callers by the HTTP layer (``gateway.http1.io``), to upstreams
by the connection pool (``providers._pool``); the metrics' counts, written to files shared
between worker processes, are held the same way (``gateway.metrics``). A send to a process
that sleeps waiting for it wakes that process, and on a busy host the wake-up is most of the
send's cost; sent back to back, the sends find it awake, and one wake-up serves many of them.
A holder given several writes in one turn (an answer's last audio and its end) also makes one
system call for them. At the turn's end the sockets' writes go first and the metrics' counts
after them: what a caller or an upstream waits for does not wait for the counts.

A turn is short while the gateway keeps up (a millisecond or so), but one that parses and routes
a burst of requests runs long. An answer's first bytes in a quiet turn (no other socket's
writes held) leave at once (:meth:`TurnWrites.send`), since the task that wrote them may go on
with work of its own (converting the rest of a long first piece); in a busy turn
(:attr:`TurnWrites.busy`) they are held with the rest. They, and a request to an
upstream, after which its task only waits, are sent with every socket's writes once the first
of them has waited :data:`HOLD_SECONDS`, as soon as the turn comes to the next write or
request (:meth:`TurnWrites.urge`). Sent early or not, the counts wait for the turn's end.

A relay's compiled step (``providers/_relay.c``) holds its chunks in a batch of its own
(:attr:`TurnWrites.batch`), sent by one callback of its own at the turn's end.

Work that the turn's writes must not wait for is called after them (:meth:`TurnWrites.after`):
what a request's answer will need once its upstream answers, made while the upstream works
rather than before its request leaves or after its answer arrives.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Final, Protocol

try:  # the compiled relay step's own holding (providers/_relay.c), where the package has it
    from ._relay import Batch
except ImportError:  # pragma: no cover - a build without a C compiler
    Batch = None  # type: ignore[assignment, misc]

__all__ = ["HOLD_SECONDS", "Holder", "TurnWrites"]

#: What is held waits at most this long (seconds) when a request to an upstream is written
#: later in the same turn.
HOLD_SECONDS: Final = 0.002


class Holder(Protocol):
    """Holds bytes to write, and sends them when told."""

    def send_held(self) -> None:
        """Write what is held now (nothing if the connection has ended)."""


class TurnWrites:
    """The holders of one event loop with writes held, sent at the end of its turn."""

    __slots__ = (
        "_after",
        "_counts",
        "_held",
        "_loop",
        "_scheduled",
        "_since",
        "_urgent",
        "batch",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # A weak reference: the loop is this object's key in _TURNS, which a strong one would
        # keep alive for good (a process that runs loops one after another, tests say).
        self._loop = weakref.ref(loop)
        # Holders of writes to sockets, and the others (the metrics' counts), sent after them.
        self._held: list[Holder] = []
        self._counts: list[Holder] = []
        # Work called once the turn's writes have gone (after()).
        self._after: list[Callable[[], None]] = []
        # When the first of the sockets' writes held began to wait.
        self._since = 0.0
        # Whether something a caller waits for is held (see urge()).
        self._urgent = False
        # Whether the turn's end is already due to send (it still is after an early send:
        # what is held after that leaves with it, rather than with a callback of its own).
        self._scheduled = False
        #: The chunks that relays' compiled steps hold (``providers._relay.Tap``), sent at the
        #: turn's end by a callback of their own, in C; None without the compiled step.
        self.batch = Batch() if Batch is not None else None

    @staticmethod
    def of(loop: asyncio.AbstractEventLoop) -> TurnWrites:
        """The loop's (made at its first use)."""
        turn = _TURNS.get(loop)
        if turn is None:
            turn = _TURNS[loop] = TurnWrites(loop)
        return turn

    def hold(self, holder: Holder, socket: bool = True) -> None:
        """``holder`` has begun to hold bytes (``socket``: to write to a socket; otherwise
        counts, written after every socket's writes): it is told to send them at the turn's
        end."""
        if not self._scheduled:
            self._schedule()
        if not socket:
            self._counts.append(holder)
            return
        held = self._held
        if not held:
            self._since = time.perf_counter()
        held.append(holder)
        if self._urgent:
            self.urge()

    def after(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` at the turn's end, once the sockets' writes and the counts held
        in it have gone: work those writes must not wait for (a request's, made while its
        upstream works on the request just written). ``callback`` must not raise."""
        if not self._scheduled:
            self._schedule()
        self._after.append(callback)

    def _schedule(self) -> None:
        loop = self._loop()
        assert loop is not None  # a holder is made on a loop that is alive
        loop.call_soon(self._turn_ended)
        self._scheduled = True

    @property
    def busy(self) -> bool:
        """Whether writes to sockets are held: the turn is handling other work that writes."""
        return bool(self._held)

    def urge(self) -> None:
        """Something a caller waits for is held: once the first of the sockets' writes held
        has waited :data:`HOLD_SECONDS`, they are all sent. Checked now, and again each time
        another holder begins to hold in this turn (a turn of many callbacks that write, none
        of them urgent, does not hold it back much longer)."""
        if not self._held:
            return
        if time.perf_counter() - self._since > HOLD_SECONDS:
            self.send()
        else:
            self._urgent = True

    def _turn_ended(self) -> None:
        self._scheduled = False
        self.send()
        counts, self._counts = self._counts, []
        for holder in counts:
            holder.send_held()
        if self._after:
            after, self._after = self._after, []
            for callback in after:
                callback()

    def send(self) -> None:
        """Send every socket's writes held now (the counts wait for the turn's end)."""
        held, self._held = self._held, []
        self._urgent = False
        for holder in held:
            holder.send_held()


_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TurnWrites] = (
    weakref.WeakKeyDictionary()
)
