"""The byte side of a client connection: TLS, writes under flow control and gathered for the event
loop's turn, reading paused and resumed, the one timer that holds the connection's current
deadline, a cut-off for a caller that takes nothing, and the ways a connection ends (close,
abort, linger).

Writes are held for the end of the event loop's turn (``providers._turn``): what a connection is
given while the loop handles one batch of ready sockets and callbacks leaves at the batch's end,
in one send, every connection's back to back. An answer's first bytes leave at once (the
metrics' counts held in the turn wait for its end), unless other connections' writes are held
too (a busy turn, serving a burst: then they wait with the rest, at most ``HOLD_SECONDS``).
Flow control is unchanged: what is held counts with the transport's buffer, and a write that
would take the two above the high-water mark is sent at once, so that writing pauses exactly
when it did. Closing, half-closing and TLS records send what is held first, in order."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Final, Protocol

from providers._turn import TurnWrites

from .tls import TLSSession

log = logging.getLogger("gateway.http")

#: The write buffer's marks: writing pauses above the high one and resumes at the low one, so
#: a wait for the caller ends when it has taken at least their difference.
WRITE_HIGH_WATER: Final = 64 * 1024
WRITE_LOW_WATER: Final = 16 * 1024
WRITE_DRAIN_BYTES: Final = WRITE_HIGH_WATER - WRITE_LOW_WATER
#: A caller that takes none of what is written for this long is cut off (a real-time player
#: drains the write buffer's 64 KiB in well under a second).
_WRITE_STALL_SECONDS: Final = 10.0
#: After an answer that left the request unread: how long, and how many bytes, are read and
#: thrown away before the connection is closed (so that the answer is not lost to a reset).
_LINGER_SECONDS: Final = 2.0
_LINGER_BYTES: Final = 1024 * 1024


class WriteFlow(Protocol):
    """Who hears of the caller's write buffer filling and draining as it happens (a body
    written without waiting: :meth:`~gateway.http1.exchange.Exchange.write_now`)."""

    def caller_paused(self) -> None:
        """Writing paused: the write buffer is above its high-water mark."""

    def caller_resumed(self) -> None:
        """Writing resumed: the caller took the buffer down to its low-water mark."""


class ConnectionIO(asyncio.Protocol):
    """Base of :class:`~gateway.http1.connection.HTTPProtocol`: everything that is about bytes
    and time rather than requests. Subclasses hear of the transport becoming writable again
    through :meth:`_writable_again` and stop taking requests in :meth:`_stop_taking_requests`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.write_paused = False
        self.write_flow: WriteFlow | None = None
        self._tls: TLSSession | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        # The connection's deadline (head, body, keep-alive, linger: see _arm) and its timer.
        self._due = 0.0
        self._on_due: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._stall: asyncio.TimerHandle | None = None  # a write that makes no progress
        self._closed = False
        self._lingering = False
        self._linger_bytes = 0
        # Bytes written this turn of the loop, sent at its end (see the module docstring).
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._turn = TurnWrites.of(loop)

    # ------------------------------------------------------------------ hooks

    def _writable_again(self) -> None:
        """The caller has taken what was written (writing resumed)."""

    def _stop_taking_requests(self) -> None:
        """The connection is ending: no further request is read."""

    # ------------------------------------------------------------------ transport events

    def _lost(self) -> None:
        """What every ending shares: deadlines dropped, held writes dropped, waiting writers
        released."""
        self._closed = True
        self._held.clear()
        self._held_bytes = 0
        self._drop_deadline()
        if self._stall is not None:
            self._stall.cancel()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._stall is None:
            # A caller that stops reading altogether is let go after a while.
            self._stall = self.loop.call_later(_WRITE_STALL_SECONDS, self._abort)
        if self.write_flow is not None:
            self.write_flow.caller_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if self.write_flow is not None:
            self.write_flow.caller_resumed()
        self._writable_again()

    def _plaintext(self, data: bytes) -> bytes | None:
        """What the connection's bytes say (decrypted over TLS, the handshake answered);
        None when there is nothing to read on, the connection lingering or ending."""
        tls = self._tls
        if tls is not None:
            try:
                data, reply = tls.receive(data)
            except ssl.SSLError as exc:
                log.debug("TLS with %s failed: %s", self.client, exc)
                self._abort()
                return None
            if reply and self.transport is not None and not self.transport.is_closing():
                self._send(reply)
            if tls.closed_by_peer:
                self._close()
            if not data:
                return None
        if self._lingering:
            self._linger_bytes += len(data)
            if self._linger_bytes > _LINGER_BYTES:
                self._close()
            return None
        return data

    # ------------------------------------------------------------------ writing

    def write(self, data: bytes) -> None:
        """Write ``data`` (sent at the end of the turn)."""
        transport = self.transport
        if transport is None or self._lingering or transport.is_closing():
            return
        if self._tls is not None:
            if not self._tls.established:
                return  # nothing can be said before the handshake
            data = self._tls.send(data)
        self._send(data)

    @property
    def turn(self) -> TurnWrites:
        """The event loop's writes held for its turn, this connection's among them."""
        return self._turn

    def write_first(self, data: bytes) -> None:
        """:meth:`write` an answer's first bytes, which the caller is waiting for. In a quiet
        turn (no other socket's writes held) they leave now (what the task goes on to do,
        converting the rest of a long first piece say, is not waited for); in a busy one they
        are held with the rest, until the turn's end or, in a long turn, the first write after
        :data:`~providers._turn.HOLD_SECONDS` (:meth:`~providers._turn.TurnWrites.urge`)."""
        turn = self._turn
        busy = turn.busy
        self.write(data)
        if busy:
            turn.urge()
        else:
            turn.send()

    def _send(self, data: bytes) -> None:
        """Hold ``data`` for the end of the turn; send it and what is held now when they
        would take the transport's buffer above its high-water mark (writing then pauses, as
        it would have)."""
        held = self._held
        first = not held
        held.append(data)
        self._held_bytes += len(data)
        if first:
            # After the bytes are in: holding may send what the turn holds at once (urge).
            self._turn.hold(self)
        transport = self.transport
        assert transport is not None
        if self._held_bytes + transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            self.send_held()

    def held_writes(self) -> tuple[list[bytes], TurnWrites] | None:
        """For a writer that holds its bytes itself, as :meth:`_send` does (a relay's compiled
        step, ``providers._relay.Tap``): the list of what is held and the loop's
        :class:`~providers._turn.TurnWrites`; None over TLS, whose records :meth:`write`
        makes."""
        if self._tls is not None:
            return None
        return self._held, self._turn

    def send_held(self) -> None:
        """Send the bytes held (at the turn's end, or before the connection ends)."""
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self._held_bytes = 0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def drained(self) -> None:
        """Wait until the transport's write buffer has room again (or the connection is gone)."""
        if not self.write_paused or self._closed:
            return
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self.loop.create_future()
        await waiter

    # ------------------------------------------------------------------ reading

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self._closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self._closed:
            self._reading_paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------------ deadlines

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        """``callback`` in ``seconds`` unless the deadline is moved (:meth:`_arm`) or dropped
        (:meth:`_disarm`) first. A request moves it three times (its head, its body, the
        keep-alive pause after it), each later than the one before: the timer is made only
        when none is set for the deadline or before it, and one set for earlier finds the
        deadline moved when it fires and is set again for it, so that a request makes and
        cancels no timer of its own."""
        due = self.loop.time() + seconds
        self._due = due
        self._on_due = callback
        timer = self._timer
        if timer is None or self._timer_due > due:
            if timer is not None:
                timer.cancel()
            self._timer_due = due
            self._timer = self.loop.call_at(due, self._deadline)

    def _disarm(self) -> None:
        """No deadline now (the timer, if set, finds none when it fires)."""
        self._on_due = None

    def _drop_deadline(self) -> None:
        """No deadline, and no timer: the connection is ending (a timer left set would hold
        it until it fires)."""
        self._on_due = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadline(self) -> None:
        self._timer = None
        callback = self._on_due
        if callback is None:
            return
        if self._due <= self._timer_due:  # the deadline this timer was set for, or earlier
            self._on_due = None
            callback()
        else:  # moved later since
            self._timer_due = self._due
            self._timer = self.loop.call_at(self._due, self._deadline)

    # ------------------------------------------------------------------ endings

    def _close(self) -> None:
        """Close once what is written has gone out; a caller that will not take it is cut off
        after a while (see :meth:`pause_writing`)."""
        self._drop_deadline()
        self.send_held()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size() and self._stall is None:
                self._stall = self.loop.call_later(_WRITE_STALL_SECONDS, self._abort)

    def _abort(self) -> None:
        """Drop the connection now, with whatever is still unsent."""
        self._drop_deadline()
        if self.transport is not None:
            self.transport.abort()

    def _linger(self) -> None:
        """Stop taking requests, and throw away what still arrives for a moment before closing:
        closing a socket with unread input sends a reset, which can destroy the answer before
        the caller has read it. (Over TCP the write side is half-closed at once; TLS has no
        half-close, so there the caller's own close ends it, or the moment's end.)"""
        transport = self.transport
        if transport is None or self._closed or self._lingering:
            return
        self._lingering = True
        self._stop_taking_requests()
        self.send_held()
        if self._tls is None and transport.can_write_eof():
            transport.write_eof()
        self.resume_reading()
        self._arm(_LINGER_SECONDS, self._close)
