"""The gateway's HTTP/1.1 connections: an ``asyncio.Protocol`` that speaks ASGI to the app.

uvicorn runs the process (sockets, workers, signals, lifespan) and is handed this protocol in
place of its own (``uvicorn.Config(http=protocol_factory(limits))``), because a server that
faces the public internet needs what uvicorn's HTTP layer does not give:

- **deadlines on every wait** — a connection's first request head (and, over TLS, the
  handshake before it) must arrive within ``header`` seconds of the connection opening, a later
  one within ``header`` of its first byte, the body within ``body`` seconds of the head; an idle
  keep-alive connection is closed after ``keep_alive`` seconds, and a caller that takes none of
  an answer for a while is cut off. A head or body that misses its deadline is answered ``408``
  where an answer is still possible;
- **a cap on open connections** — beyond ``max_connections`` a new connection is answered ``503``
  (over TLS, closed) at once, logged at most every few seconds; TLS is terminated here, through
  memory buffers, so that a handshake counts against the cap and the header deadline;
- **bounds on every buffer** — the request head (URL and headers, counted as sent too, so that
  a header line that never ends is caught) and the request as sent are capped, a request body
  is buffered only up to a high-water mark before reading pauses, pipelined requests are
  capped, and no further request is read while the caller has not taken the last answer;
- **an answer that ends the exchange** — a response that leaves the request body unread (413,
  408, an early error) closes the connection instead of reading on: the connection stops taking
  requests, says ``Connection: close``, half-closes, and discards what is still in flight for a
  moment so that the answer is not lost to a TCP reset;
- **HTTP/1.0 framing** — an HTTP/1.0 caller cannot parse chunked bodies; a streamed answer to it
  is delimited by closing the connection.

Requests are parsed by httptools (llhttp, in C). Requests on one connection are answered in
order; a pipelined request waits for the previous answer to finish. Trailers of a chunked body
are counted and dropped, never merged into the headers; an Upgrade is ignored (the request is
answered over HTTP/1.1, its body read, the connection closed after it).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, Protocol, cast
from urllib.parse import unquote

import httptools
from starlette.types import ASGIApp, Message, Scope

log = logging.getLogger("gateway.http")

#: Request body bytes buffered for the app before reading from the socket pauses.
_BODY_HIGH_WATER: Final = 64 * 1024
#: Requests queued behind the one being answered before the connection is dropped.
_MAX_PIPELINED: Final = 8
#: After an answer that left the request body unread: how long, and how many bytes, are read
#: and thrown away before the connection is closed (so that the answer is not lost to a reset).
_LINGER_SECONDS: Final = 2.0
_LINGER_BYTES: Final = 1024 * 1024
#: The write buffer's marks: writing pauses above the high one and resumes at the low one, so
#: a wait for the caller ends when it has taken at least their difference.
_WRITE_HIGH_WATER: Final = 64 * 1024
_WRITE_LOW_WATER: Final = 16 * 1024
WRITE_DRAIN_BYTES: Final = _WRITE_HIGH_WATER - _WRITE_LOW_WATER
#: A caller that takes none of what is written for this long is cut off (a real-time player
#: drains the write buffer's 64 KiB in well under a second).
_WRITE_STALL_SECONDS: Final = 10.0
#: Plaintext taken out of the TLS layer at a time.
_TLS_READ_BYTES: Final = 64 * 1024
#: The connection-cap warning is logged at most this often.
_CAP_LOG_INTERVAL: Final = 10.0

_HEADER_NAME: Final = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_HEADER_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY_STATUS: Final = frozenset({204, 304})


class ConnectionEvents(Protocol):
    """Where connection counts go (the gateway's metrics): found in the lifespan state under
    :data:`EVENTS_STATE_KEY`, so that the server layer needs no reference to the app."""

    def opened(self) -> None: ...

    def closed(self) -> None: ...

    def refused(self, reason: str) -> None:
        """A connection ended by the server layer itself: ``max_connections``,
        ``header_timeout``, ``body_timeout``, ``head_too_large``, ``malformed_request``."""


#: The lifespan-state key under which the app offers its :class:`ConnectionEvents`.
EVENTS_STATE_KEY: Final = "gateway.connection_events"
#: The scope key under which the connection layer leaves the status it answered a request with
#: itself (a body that timed out or was malformed), for the app's log line.
ANSWERED_SCOPE_KEY: Final = "gateway.answered"


class _NoEvents:
    def opened(self) -> None:
        pass

    def closed(self) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """A certificate chain and its key (PEM files) for serving HTTPS."""

    certfile: str
    keyfile: str


@functools.lru_cache(maxsize=4)
def tls_context(files: TLSFiles) -> ssl.SSLContext:
    """The server-side TLS context for ``files``: built once per process (workers included)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.certfile, files.keyfile)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _TLSSession:
    """TLS on one connection, through memory buffers: bytes from the socket go in, plaintext
    and the bytes to send back come out. Done here rather than by the server so that the
    handshake is a connection's first step under the gateway's own deadline and cap, and so
    that no byte can be taken for plain HTTP before it (a server-side TLS layer started after
    the connection is accepted can miss the first bytes)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.established = False
        self.closed_by_peer = False

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """(plaintext, bytes to send back) for ``data`` from the socket; ``ssl.SSLError`` on a
        failed handshake or a corrupt record."""
        self._incoming.write(data)
        if not self.established:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                return b"", self._outgoing.read()
            self.established = True
        plain: list[bytes] = []
        while True:
            try:
                piece = self._tls.read(_TLS_READ_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed_by_peer = True
                break
            if not piece:
                break
            plain.append(piece)
        return b"".join(plain), self._outgoing.read()

    def send(self, data: bytes) -> bytes:
        """``data`` as TLS records to write to the socket."""
        self._tls.write(data)
        return self._outgoing.read()


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Deadlines (seconds) and bounds for client connections: ``server.timeouts`` and
    ``server.max_connections`` of the routing file; ``tls`` to serve HTTPS (the handshake is
    held to the ``header`` deadline). ``max_request_bytes`` bounds a request as sent (head,
    body with its chunk framing, trailers); the app bounds the body itself more tightly."""

    header: float = 5.0
    body: float = 10.0
    keep_alive: float = 5.0
    max_connections: int = 4096
    max_head_bytes: int = 32 * 1024
    max_request_bytes: int = 32 * 1024 + 4 * 65536 + 65536
    tls: TLSFiles | None = None


def protocol_factory(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """What ``uvicorn.Config(http=...)`` takes: it builds an :class:`HTTPProtocol` per connection.
    A ``functools.partial`` of module-level names, so that it survives pickling into worker
    processes; uvicorn only ever calls it, so it is typed as the class it stands for."""
    return cast("type[asyncio.Protocol]", functools.partial(HTTPProtocol, limits=limits))


def error_response(status: int, code: str, message: str, *extra: bytes) -> bytes:
    """A complete JSON error answer that closes the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, _reason(status)),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
        *extra,
        b"\r\n",
    ]
    return b"".join(head) + body


class _CapLog:
    """Counts connections refused at the cap; logs a warning at most every few seconds."""

    refused = 0
    _last = -_CAP_LOG_INTERVAL
    _since = 0

    @classmethod
    def refuse(cls, open_connections: int, cap: int) -> None:
        cls.refused += 1
        cls._since += 1
        now = time.monotonic()
        if now - cls._last >= _CAP_LOG_INTERVAL:
            log.warning(
                "connection limit reached: %d open, server.max_connections is %d; "
                "%d new connection(s) answered 503 since the last warning",
                open_connections - 1,
                cap,
                cls._since,
            )
            cls._last = now
            cls._since = 0


class _Exchange:
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
        self.manual_body: int | None = None  # bytes still to read past an ignored Upgrade
        # Response side.
        self.response_started = False
        self.response_complete = False
        self.disconnected = False
        self.chunked = False
        self.remaining: int | None = None  # bytes still owed under a Content-Length
        self.head = b""
        self._waiter: asyncio.Future[None] | None = None

    # ----------------------------------------------------------------- wake-ups

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def body_arrived(self, data: bytes) -> None:
        if self.response_complete:
            return
        self.body += data
        if len(self.body) > _BODY_HIGH_WATER:
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
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if self.head_only:
            body = b""
        elif self.remaining is not None:
            if len(body) > self.remaining:
                raise RuntimeError("response body longer than its Content-Length")
            self.remaining -= len(body)
            if not more and self.remaining:
                raise RuntimeError("response body shorter than its Content-Length")
        if self.chunked and body:
            out = [self.head, b"%x\r\n" % len(body), body, b"\r\n"]
        else:
            out = [self.head, body]
        if not more and self.chunked:
            out.append(b"0\r\n\r\n")
        self.head = b""
        self.conn.write(b"".join(out))
        if not more:
            self.response_complete = True
            self.wake()
            self.conn.response_complete(self)
        elif self.conn.write_paused:
            await self.conn.drained()

    def _start(self, status: int, headers: Any) -> None:
        """Check and build the head; it leaves with the first body bytes (one write, not two).
        A header the app got wrong raises before anything counts as started, so the caller
        still gets a clean 500."""
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
        remaining: int | None = None
        chunked = False
        close = False
        for name, value in headers:
            if not name or _HEADER_NAME.search(name):
                raise ValueError(f"invalid response header name {name!r}")
            if _HEADER_VALUE.search(value):
                raise ValueError(f"invalid value for response header {name!r}")
            lowered = name.lower()
            if lowered == b"content-length":
                remaining = int(value)
            elif lowered == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lowered == b"connection":
                close = close or b"close" in value.lower()
                continue  # written below, once
            lines.append(b"%s: %s\r\n" % (name, value))
        framed = remaining is not None or chunked
        bodyless = self.head_only or status in _NO_BODY_STATUS or status < 200
        keep_alive = self.keep_alive and not close and not self.conn.closes_after_this
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
        self.response_started = True
        self.expect_continue = False


_REASONS: Final = {int(status): status.phrase.encode() for status in HTTPStatus}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


class _StopParsing(Exception):
    """Raised from a parser callback to stop reading a connection's input at once."""


class HTTPProtocol(asyncio.Protocol):
    """One client connection (see the module docstring). Built by uvicorn per connection with
    its ``config`` (for the app), its ``server_state`` (the sets of open connections and running
    tasks it waits for on shutdown) and the lifespan's ``app_state``."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app: ASGIApp = config.loaded_app
        self.root_path: str = config.root_path
        self.loop = _loop or asyncio.get_event_loop()
        self.limits = limits
        self.app_state = app_state
        self.events: ConnectionEvents = app_state.get(EVENTS_STATE_KEY) or _NoEvents()
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        self.shutting_down = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._timer: asyncio.TimerHandle | None = None  # head, body, keep-alive, linger
        self._stall: asyncio.TimerHandle | None = None  # a write that makes no progress
        self._tls: _TLSSession | None = None
        self._closed = False
        self._refused = False
        self._lingering = False
        self._linger_bytes = 0
        self._ignore_input = False  # after an ignored Upgrade, a parse error, an overflow
        self._stop_reason = ""
        self._continue_after_drain = False
        self._answered = 0  # answers completed on this connection
        # The request being parsed, and the exchanges waiting to be (or being) answered.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # URL and header fields, as the parser hands them over
        self._head_raw = 0  # bytes received while the head is incomplete
        self._request_raw = 0  # bytes received for the request being read
        self._in_head = False
        self._reading: _Exchange | None = None
        self._active: _Exchange | None = None
        self._queue: deque[_Exchange] = deque()

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        self.events.opened()
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=_WRITE_HIGH_WATER, low=_WRITE_LOW_WATER
        )
        if len(self.connections) > self.limits.max_connections:
            self._refused = True
            self.events.refused("max_connections")
            _CapLog.refuse(len(self.connections), self.limits.max_connections)
            if self.limits.tls is None:
                self.transport.write(  # type: ignore[union-attr]
                    error_response(
                        503,
                        "too_many_connections",
                        "the gateway has too many open connections; try again shortly",
                        b"retry-after: 1\r\n",
                    )
                )
                self._close()
            else:  # no answer is possible before a handshake that would cost what is short
                transport.abort()  # type: ignore[attr-defined]
            return
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            self.server = (str(local[0]), int(local[1]))
        if self.limits.tls is not None:
            self._tls = _TLSSession(tls_context(self.limits.tls))
            self.scheme = "https"
        # The first request's head (and, over TLS, the handshake before it) is due within the
        # header deadline of the connection opening.
        self._arm(self.limits.header, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self.connections.discard(self)
        self.events.closed()
        self._disarm()
        if self._stall is not None:
            self._stall.cancel()
        for exchange in (self._active, *self._queue):
            if exchange is not None and not exchange.response_complete:
                exchange.disconnected = True
                exchange.wake()
        self._queue.clear()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def eof_received(self) -> bool | None:
        # A caller that closes its side has gone (barge-in): close, so the app hears of it.
        return None

    def data_received(self, data: bytes) -> None:
        if self._refused or self._closed:
            return
        tls = self._tls
        if tls is not None:
            try:
                data, reply = tls.receive(data)
            except ssl.SSLError as exc:
                log.debug("TLS with %s failed: %s", self.client, exc)
                self._abort()
                return
            if reply and self.transport is not None and not self.transport.is_closing():
                self.transport.write(reply)
            if tls.closed_by_peer:
                self._close()
            if not data:
                return
        if self._lingering:
            self._linger_bytes += len(data)
            if self._linger_bytes > _LINGER_BYTES:
                self._close()
            return
        if self._ignore_input:
            # Past an ignored Upgrade only the request's own body is read.
            reading = self._reading
            if reading is not None and reading.manual_body is not None:
                self._take_manual_body(reading, data)
            return
        was_in_head = self._in_head
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # An Upgrade (h2c, websocket) is not offered: the request is answered over HTTP/1.1
            # (RFC 9110 lets a server ignore Upgrade); its body is what follows the head, and
            # nothing after that body is read.
            self._ignore_input = True
            reading = self._reading
            if reading is not None and reading.manual_body is not None:
                self._take_manual_body(reading, data[upgrade.args[0] :])
            return
        except httptools.HttpParserError as error:
            self._ignore_input = True
            reason, self._stop_reason = self._stop_reason, ""
            if reason == "head_too_large":
                self._head_too_large()
            elif reason == "request_too_large":
                self._request_too_large()
            elif reason == "pipelined":
                self._pipeline_overflow()
            else:
                self._bad_request(error)
            return
        # What the parser holds of an unfinished head (a header line that never ends) is not
        # seen by its callbacks: bound the raw bytes too.
        if self._in_head:
            self._head_raw = self._head_raw + len(data) if was_in_head else len(data)
            if self._head_raw > self.limits.max_head_bytes:
                self._ignore_input = True
                self._head_too_large()
                return
        reading = self._reading
        if reading is not None and reading.more_body and not self._in_head:
            self._request_raw += len(data)
            if self._request_raw > self.limits.max_request_bytes:
                self._ignore_input = True
                self._request_too_large()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._stall is None:
            # A caller that stops reading altogether is let go after a while.
            self._stall = self.loop.call_later(_WRITE_STALL_SECONDS, self._abort)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if self._continue_after_drain:
            self._continue_after_drain = False
            self._next()

    # ------------------------------------------------------------------ parser callbacks

    @property
    def closes_after_this(self) -> bool:
        """Whether the answer being started is the connection's last (it is shutting down and
        no pipelined request waits)."""
        return self.shutting_down and not self._queue

    def _stop(self, reason: str) -> None:
        self._stop_reason = reason
        raise _StopParsing(reason)

    def on_message_begin(self) -> None:
        self._reading = None
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._head_raw = 0
        self._request_raw = 0
        self._in_head = True
        if self._active is None and self._answered:
            # After a keep-alive pause, the head is due within the header deadline of its
            # first byte (the first request's deadline runs from the connection opening).
            self._arm(self.limits.header, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_head_bytes:
            self._stop("head_too_large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.limits.max_head_bytes:
            self._stop("head_too_large")
        if self._in_head:
            self._headers.append((name.lower(), value))
        # Otherwise a trailer of a chunked body: counted, never merged into the headers the
        # app has already been given (RFC 9110 section 6.5.1).

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        version = parser.get_http_version()
        parsed = httptools.parse_url(self._url)
        raw_path: bytes = parsed.path or b"/"
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": parser.get_method().decode("ascii"),
            "root_path": self.root_path,
            "path": self.root_path + unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": parsed.query or b"",
            "headers": self._headers,
            "state": self.app_state.copy(),
        }
        expect = version == "1.1" and any(
            n == b"expect" and v.lower() == b"100-continue" for n, v in self._headers
        )
        exchange = _Exchange(
            self, scope, keep_alive=parser.should_keep_alive(), expect_continue=expect
        )
        if parser.should_upgrade():
            exchange.keep_alive = False
            exchange.manual_body = self._content_length()
        if self._active is None and not self._continue_after_drain:
            self._reading = exchange
            # The body is due within the body deadline of the head (disarmed once it is in).
            self._arm(self.limits.body, self._body_timed_out)
            self._start(exchange)
        elif len(self._queue) < _MAX_PIPELINED:
            self._reading = exchange
            self._queue.append(exchange)
            self.pause_reading()
        else:
            self._stop("pipelined")

    def on_body(self, body: bytes) -> None:
        if self._reading is not None:
            self._reading.body_arrived(body)

    def on_message_complete(self) -> None:
        exchange = self._reading
        if exchange is None or exchange.manual_body is not None:
            return
        exchange.body_complete()
        if exchange is self._active:
            self._disarm()

    # ------------------------------------------------------------------ exchanges

    def _start(self, exchange: _Exchange) -> None:
        self._active = exchange
        task = self.loop.create_task(self._run(exchange))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, exchange: _Exchange) -> None:
        try:
            await self.app(exchange.scope, exchange.receive, exchange.send)
        except asyncio.CancelledError:
            self._abort()
            raise
        except Exception:
            log.exception(
                "the app failed on %s %.100r", exchange.scope["method"], exchange.scope["path"]
            )
            self._fail(exchange)
        else:
            if exchange.disconnected or exchange.response_complete:
                return
            if exchange.response_started and not exchange.head:
                # The app gave up on an answer already under way (its caller stopped reading,
                # say): drop the connection, so that the cut answer cannot look complete.
                log.debug("an answer to %s was left unfinished", self.client)
                self._abort()
            else:
                log.error("the app returned without a response")
                self._fail(exchange)

    def _fail(self, exchange: _Exchange) -> None:
        """A 500 if nothing has gone out yet (the head waits for the first body bytes), else
        the connection is dropped: a half-sent answer must not look complete."""
        if exchange.disconnected or exchange.response_complete:
            return
        if exchange.response_started and not exchange.head:
            self._abort()
            return
        exchange.head = b""
        exchange.response_started = exchange.response_complete = True
        self._answer_and_close(500, "internal_error", "internal error")

    def response_complete(self, exchange: _Exchange) -> None:
        """The app sent the last byte of ``exchange``'s answer."""
        if exchange is not self._active:
            return
        self._active = None
        self._answered += 1
        if not exchange.keep_alive:
            self._end_connection()
        elif self.write_paused:
            # The caller has not read this answer yet: take nothing more from it until it has.
            self._continue_after_drain = True
            self.pause_reading()
        else:
            self._next()

    def _next(self) -> None:
        """After an answer: the next pipelined request, else (keep-alive) wait for one."""
        if self._closed:
            return
        if self._queue:
            following = self._queue.popleft()
            if not self._queue:
                self.resume_reading()
            self._arm(self.limits.body, self._body_timed_out)
            if not following.more_body:
                self._disarm()
            self._start(following)
        elif self.shutting_down:
            self._close()
        elif self._in_head:
            self._arm(self.limits.header, self._head_timed_out)
            self.resume_reading()
        else:
            self._arm(self.limits.keep_alive, self._close)
            self.resume_reading()

    def _end_connection(self) -> None:
        """Close after an answer; see :meth:`_linger` for a request left unread."""
        reading = self._reading
        if self._ignore_input or (
            reading is not None and (reading.more_body or reading.manual_body is not None)
        ):
            self._linger()
        else:
            self._close()

    def _linger(self) -> None:
        """Stop taking requests, and throw away what still arrives for a moment before closing:
        closing a socket with unread input sends a reset, which can destroy the answer before
        the caller has read it. (Over TCP the write side is half-closed at once; TLS has no
        half-close, so there the caller's own close ends it, or the moment's end.)"""
        transport = self.transport
        if transport is None or self._closed or self._lingering:
            return
        self._lingering = True
        self._reading = None
        self._queue.clear()
        if self._tls is None and transport.can_write_eof():
            transport.write_eof()
        self.resume_reading()
        self._arm(_LINGER_SECONDS, self._close)

    # ------------------------------------------------------------------ deadlines and errors

    def _head_timed_out(self) -> None:
        if self._in_head and self._active is None:
            self.events.refused("header_timeout")
            self._answer_and_close(
                408,
                "request_timeout",
                f"the request head did not arrive within {self.limits.header:g} s",
            )
        else:
            self._close()  # nothing was asked on this connection: no answer is owed

    def _body_timed_out(self) -> None:
        exchange = self._active
        if exchange is None or not exchange.more_body:
            return
        self.events.refused("body_timeout")
        self._give_up_reading(
            exchange,
            408,
            "request_timeout",
            f"the request body did not arrive within {self.limits.body:g} s",
        )

    def _request_too_large(self) -> None:
        self.events.refused("request_too_large")
        exchange = self._active
        if exchange is None or exchange is not self._reading:
            self._close()
            return
        self._give_up_reading(
            exchange,
            413,
            "too_large",
            f"the request is over {self.limits.max_request_bytes} bytes as sent",
        )

    def _give_up_reading(self, exchange: _Exchange, status: int, code: str, message: str) -> None:
        """The request being answered cannot be read to its end: answer it now if nothing has
        gone out yet (the app hears that its caller has gone), else drop the connection."""
        self._ignore_input = True
        if exchange.response_started:
            self._abort()
            return
        self._answered_for(exchange, status)
        self._answer_and_close(status, code, message)

    @staticmethod
    def _answered_for(exchange: _Exchange, status: int) -> None:
        """The connection layer answers ``exchange`` itself: the app hears that its caller has
        gone, and finds the status it was given under ``gateway.answered`` in the scope."""
        exchange.scope[ANSWERED_SCOPE_KEY] = status
        exchange.disconnected = True
        exchange.wake()

    def _bad_request(self, error: Exception) -> None:
        self.events.refused("malformed_request")
        active = self._active
        if active is not None and active.response_started:
            self._abort()
            return
        if active is not None:
            self._answered_for(active, 400)
        self._answer_and_close(400, "malformed_request", f"malformed HTTP request: {error}")

    def _head_too_large(self) -> None:
        self.events.refused("head_too_large")
        active = self._active
        if active is not None:
            # A trailer or a pipelined head over the bound while an answer is under way.
            if active.response_started:
                self._abort()
                return
            self._answered_for(active, 431)
        self._answer_and_close(
            431,
            "headers_too_large",
            f"the request head is over {self.limits.max_head_bytes} bytes",
        )

    def _pipeline_overflow(self) -> None:
        """More requests queued than answered: answer those already taken, read no more."""
        log.info("connection from %s: too many pipelined requests; closing after", self.client)
        last = self._queue[-1] if self._queue else self._active
        if last is not None:
            last.keep_alive = False
        else:
            self._close()

    def _answer_and_close(self, status: int, code: str, message: str) -> None:
        """An error answer on a connection that takes no further requests."""
        self.write(error_response(status, code, message))
        self._linger()

    # ------------------------------------------------------------------ plumbing

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self._lingering and not transport.is_closing():
            if self._tls is not None:
                if not self._tls.established:
                    return  # nothing can be said before the handshake
                data = self._tls.send(data)
            transport.write(data)

    async def drained(self) -> None:
        """Wait until the transport's write buffer has room again (or the connection is gone)."""
        if not self.write_paused or self._closed:
            return
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self.loop.create_future()
        await waiter

    def want_body(self, exchange: _Exchange) -> None:
        """The app is ready for more of ``exchange``'s body (or, once it has it all, to hear of
        a hang-up): read on, unless a pipelined request is waiting its turn."""
        if exchange is self._reading and not self._queue:
            self.resume_reading()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self._closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self._closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def _take_manual_body(self, exchange: _Exchange, data: bytes) -> None:
        """Body bytes of a request whose Upgrade was ignored (the parser stops at its head)."""
        assert exchange.manual_body is not None
        if exchange.manual_body < 0:  # chunked under an Upgrade: not worth supporting
            exchange.manual_body = None
            if exchange is self._active:
                self._give_up_reading(
                    exchange, 400, "malformed_request", "a chunked body with Upgrade"
                )
            return
        take = data[: exchange.manual_body]
        exchange.manual_body -= len(take)
        if take:
            exchange.body_arrived(take)
        if exchange.manual_body == 0:
            exchange.manual_body = None
            exchange.body_complete()
            if exchange is self._active:
                self._disarm()

    def _content_length(self) -> int:
        for name, value in self._headers:
            if name == b"content-length":
                return int(value) if value.strip().isdigit() else -1
            if name == b"transfer-encoding":
                return -1
        return 0

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self) -> None:
        """Close once what is written has gone out; a caller that will not take it is cut off
        after a while (see :meth:`pause_writing`)."""
        self._disarm()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size() and self._stall is None:
                self._stall = self.loop.call_later(_WRITE_STALL_SECONDS, self._abort)

    def _abort(self) -> None:
        """Drop the connection now, with whatever is still unsent."""
        self._disarm()
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close an idle connection now; a busy one answers what
        it has taken (the app answers 503 while draining) and closes after the last."""
        self.shutting_down = True
        if self._active is None and not self._queue:
            self._close()
