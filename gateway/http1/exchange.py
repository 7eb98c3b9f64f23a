"""One request and its response on a connection: the ASGI ``receive`` and ``send`` the app is
given, the response head checked and framed (chunked, sized, or close-delimited for HTTP/1.0)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from starlette.types import Message, Scope

from .limits import reason_phrase

if TYPE_CHECKING:
    from providers._turn import TurnWrites

    from .connection import HTTPProtocol
    from .io import ConnectionIO, WriteFlow

#: Request body bytes buffered for the app before reading from the socket pauses.
BODY_HIGH_WATER: Final = 64 * 1024

_HEADER_NAME: Final = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_HEADER_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY_STATUS: Final = frozenset({204, 304})


class Exchange:
    """One request and its response on a connection: the ASGI ``receive`` and ``send``."""

    def __init__(
        self, conn: HTTPProtocol, scope: Scope, *, keep_alive: bool, expect_continue: bool
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.http10 = scope["http_version"] == "1.0"
        self.head_only = scope["method"] == "HEAD"
        # Request side.
        self.body = bytearray()
        self.more_body = True
        self.body_done = False  # the final http.request message has been handed to the app
        # Response side.
        self.response_started = False
        self.response_complete = False
        self.disconnected = False
        self.chunked = False
        self.remaining: int | None = None  # bytes still owed under a Content-Length
        self.head = b""
        # A body in chunks and nothing else to check (no Content-Length, not HEAD): once the
        # head is out, write_now frames and writes a chunk itself.
        self._chunks_only = False
        self._waiter: asyncio.Future[None] | None = None
        self._gone: Callable[[], None] | None = None

    # ----------------------------------------------------------------- wake-ups

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        gone = self._gone
        if gone is not None and self.disconnected:
            self._gone = None
            self.conn.loop.call_soon(gone)

    def when_gone(self, callback: Callable[[], None] | None) -> None:
        """Have ``callback`` called from the event loop once the caller has hung up before the
        answer was complete, heard without a task waiting in :meth:`receive` (``None``: no
        longer). Unlike ``http.disconnect``, the answer's own end is not told: an app that
        waits for the caller to take its last bytes (:meth:`drained`) is not cut short by
        having written them. For an app that has read the request's body: the socket is read
        meanwhile, so that a hang-up is heard."""
        if callback is None:
            self._gone = None
        elif self.disconnected:
            self.conn.loop.call_soon(callback)
        else:
            self._gone = callback
            if not self.response_complete:
                self.conn.want_body(self)

    def body_arrived(self, data: bytes) -> None:
        if self.response_complete:
            return
        self.body += data
        if len(self.body) > BODY_HIGH_WATER:
            self.conn.pause_reading()
        self.wake()

    def body_complete(self) -> None:
        self.more_body = False
        self.wake()

    # ----------------------------------------------------------------- ASGI

    async def receive(self) -> Message:
        conn = self.conn
        if self.expect_continue and not self.response_started and not self.disconnected:
            self.expect_continue = False
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not (self.disconnected or self.response_complete):
            if self.body or (not self.more_body and not self.body_done):
                message: Message = {
                    "type": "http.request",
                    "body": bytes(self.body),
                    "more_body": self.more_body,
                }
                self.body.clear()
                self.body_done = not self.more_body
                conn.want_body(self)
                return message
            conn.want_body(self)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {kind!r}")
            self._start(message["status"], message.get("headers", ()))
            return
        if self.response_complete:
            raise RuntimeError(f"{kind!r} sent after the response was complete")
        if kind != "http.response.body":
            raise RuntimeError(f"expected http.response.body, got {kind!r}")
        self._emit(message.get("body", b""), bool(message.get("more_body", False)))
        if self.conn.write_paused and not self.response_complete:
            await self.conn.drained()

    # ----------------------------------------------------------------- direct writes

    def start_now(self, status: int, headers: Any) -> None:
        """What :meth:`send` does with ``http.response.start``, for a writer that is not a
        coroutine (:meth:`write_now` then takes the body): nothing once the caller is gone;
        the head leaves with the first body bytes. ``headers``: ``(name, value)`` pairs, or
        :func:`check_headers` made of them ahead."""
        if self.disconnected:
            return
        if self.response_started:
            raise RuntimeError("http.response.start sent twice")
        if not isinstance(headers, CheckedHeaders):
            headers = check_headers(headers)
        self._start_checked(status, headers)

    def after_writes(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the writes of the event loop's turn have gone
        (:meth:`providers._turn.TurnWrites.after`); ``callback`` must not raise."""
        self.conn.turn.after(callback)

    def write_now(self, body: bytes) -> None:
        """Body bytes of a streamed answer (more to come), written without waiting: for a
        writer that hears of the caller's pace itself (:meth:`listen`) rather than waiting in
        ``send``. Nothing is written before the head was sent, after the body ended, or once
        the caller is gone."""
        if self.response_complete or self.disconnected:
            return
        if self._chunks_only and body and not self.head:
            self.conn.write(b"%x\r\n%b\r\n" % (len(body), body))  # _emit's common case
        elif self.response_started:
            self._emit(body, True)

    def chunks_target(self) -> tuple[ConnectionIO, list[bytes], TurnWrites] | None:
        """For a writer of the body's chunks that frames and holds them itself, as
        :meth:`write_now`'s common case does (a relay's compiled step,
        ``providers._relay.Tap``, which checks :attr:`response_complete` and
        :attr:`disconnected` before each): the connection, its held writes and its loop's
        :class:`~providers._turn.TurnWrites`, when this answer is a chunked body whose head
        is out, on a plaintext connection; None otherwise."""
        if not self._chunks_only or self.head or self.response_complete or self.disconnected:
            return None
        held = self.conn.held_writes()
        if held is None:
            return None
        return self.conn, *held

    async def drained(self) -> None:
        """Wait until the caller has taken the write buffer down to its low-water mark (at
        once if it is not above its high-water mark, or the caller is gone)."""
        await self.conn.drained()

    def listen(self, flow: WriteFlow | None) -> None:
        """Tell ``flow`` of the write buffer filling and draining (None: stop telling)."""
        self.conn.write_flow = flow

    @property
    def write_paused(self) -> bool:
        """Whether the caller's write buffer is above its high-water mark."""
        return self.conn.write_paused

    def _emit(self, body: bytes, more: bool) -> None:
        if self.head_only:
            body = b""
        elif self.remaining is not None:
            if len(body) > self.remaining:
                raise RuntimeError("response body longer than its Content-Length")
            self.remaining -= len(body)
            if not more and self.remaining:
                raise RuntimeError("response body shorter than its Content-Length")
        data = b"%x\r\n%b\r\n" % (len(body), body) if self.chunked and body else body
        if not more and self.chunked:
            data += b"0\r\n\r\n"
        head = self.head
        if head:
            self.head = b""
            self.conn.write_first(head + data)
        else:
            self.conn.write(data)
        if not more:
            self.response_complete = True
            self.wake()
            self.conn.response_complete(self)

    def _start(self, status: int, headers: Any) -> None:
        """Check and build the head; it leaves with the first body bytes (one write, not two).
        A header the app got wrong raises before anything counts as started, so the caller
        still gets a clean 500."""
        self._start_checked(status, check_headers(headers))

    def _start_checked(self, status: int, checked: CheckedHeaders) -> None:
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status)), checked.lines]
        remaining = checked.content_length
        chunked = checked.chunked
        framed = remaining is not None or chunked
        bodyless = self.head_only or status in _NO_BODY_STATUS or status < 200
        keep_alive = self.keep_alive and not checked.close and not self.conn.closes_after_this
        if self.more_body:
            # Answered before the request body was all read: the rest is not read (413, 408,
            # an early error), so this connection cannot carry another request.
            keep_alive = False
        if not framed and not bodyless:
            if self.http10:
                # HTTP/1.0 has no chunked coding: the body ends where the connection does.
                keep_alive = False
            else:
                chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        elif self.http10:
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self.head = b"".join(lines)
        self.remaining, self.chunked, self.keep_alive = remaining, chunked, keep_alive
        self._chunks_only = chunked and remaining is None and not self.head_only
        self.response_started = True
        self.expect_continue = False


class CheckedHeaders(NamedTuple):
    """An answer's headers checked (:func:`check_headers`): their lines as the head has them
    (``Connection`` left out: the exchange writes its own) and what they say of the body."""

    lines: bytes
    content_length: int | None
    chunked: bool
    close: bool


def check_headers(headers: Any) -> CheckedHeaders:
    """Check an answer's ``(name, value)`` headers and make their lines; raises
    ``ValueError`` naming the first bad one. Made by :meth:`Exchange.start_now` and ``send``
    for the headers they are given, or ahead of the answer, for :meth:`Exchange.start_now` to
    take as they are."""
    remaining: int | None = None
    chunked = False
    close = False
    headers = list(headers)
    # Every name and value checked in one pass each (the names joined by a character a
    # name may hold, the values by one a value may hold); header by header only when one
    # is bad, to name the first.
    names = [name for name, _ in headers]
    if (
        not all(names)
        or _HEADER_NAME.search(b"-".join(names))
        or _HEADER_VALUE.search(b" ".join([value for _, value in headers]))
    ):
        for name, value in headers:
            if not name or _HEADER_NAME.search(name):
                raise ValueError(f"invalid response header name {name!r}")
            if _HEADER_VALUE.search(value):
                raise ValueError(f"invalid value for response header {name!r}")
    lines = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            remaining = int(value)
        elif lowered == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif lowered == b"connection":
            close = close or b"close" in value.lower()
            continue  # written by the exchange, once
        lines.append(b"%s: %s\r\n" % (name, value))
    return CheckedHeaders(b"".join(lines), remaining, chunked, close)
