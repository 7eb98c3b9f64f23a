"""A lean HTTP/1.1 transport for streaming audio, on httpx's public transport interface.

httpx stays the client (requests, responses, exceptions, respx in tests); this module is what a
client sends through: an :class:`httpx.AsyncBaseTransport` with a pool of its own. httpcore's
pool walks every connection, and polls each socket, on every request and every release, and
hands the body over one HTTP chunk at a time through several layers. With hundreds of
concurrent streams of 20 ms chunks that was most of the gateway's CPU. This transport:

- keeps idle connections per origin in a list and checks them without system calls (a closed
  connection has told us so through ``connection_lost``);
- parses responses with httptools (C) in an ``asyncio.Protocol``;
- hands over *everything that has arrived* at each read, so chunks that are already here are
  coalesced instead of travelling the stack one by one;
- pauses reading when the consumer falls behind (back-pressure), and never buffers a whole body;
- bounds what an upstream can make it hold: the response head (size and number of headers) and
  the body read ahead of the consumer.
- sends each request at the end of the event loop's turn, with the other writes made in it
  (``providers._turn``): the upstream's wake-up then serves many requests in a burst; one
  given up within its turn (its caller gone) is never sent.

Failures are httpx's own exceptions (``ConnectTimeout``, ``ReadTimeout``, ``PoolTimeout``,
``ConnectError``, ``ReadError``, ``RemoteProtocolError``, ``LocalProtocolError``), raised with the
request attached. TLS uses the context :func:`httpx.create_ssl_context` builds. Proxies configured
through the environment are mounted by httpx on its own transports, untouched; HTTP/2 is not
offered.
"""

from __future__ import annotations

import asyncio
import copy
import math
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Protocol, cast

import httptools
import httpx

from ._turn import TurnWrites

Origin = tuple[str, str, int]

#: Body bytes held for a slow consumer before reading from the socket pauses (~0.7 s of
#: 24 kHz audio): beyond it the kernel buffers, not this process, so memory per stream stays small.
_HIGH_WATER = 32 * 1024
#: The most a response's status line and headers may take, and the most headers it may have:
#: far above what any TTS API sends, far below what would hurt.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
#: The deadline of a wait without a read timeout.
_NEVER: Final = math.inf
#: The response extension that holds its body stream as this transport made it (httpx's client
#: wraps the response's stream in one of its own, a layer more for every chunk).
BODY_EXTENSION: Final = "gateway.body"
#: What a header of ours must never carry: it would end the header, or the head, early.
_UNSAFE_IN_HEADER = re.compile(rb"[\x00\r\n]")
#: The request extension with what its builder made of the request ahead (a
#: :class:`PreparedHead`: ``providers._http.JSONPosts``): the transport sends that head rather
#: than make it again, while the request is still as it was built.
PREPARED_EXTENSION: Final = "gateway.prepared"


class PreparedHead:
    """A request's origin and its head as this transport writes it (:func:`_request_head`),
    made and checked by the request's builder, for the request as it was built: its URL,
    method and headers. Anything that changes them after (an authentication flow, an event
    hook adding a header) leaves the head to be made afresh from the request."""

    __slots__ = ("_headers", "_snapshot", "_url", "head", "origin")

    def __init__(self, origin: Origin, head: bytes, request: httpx.Request) -> None:
        self.origin = origin
        self.head = head
        self._url = request.url
        self._headers = request.headers
        self._snapshot = list(request.headers._list)

    def fits(self, request: httpx.Request) -> bool:
        """Whether ``request`` is still as it was built (the head is its head)."""
        headers = request.headers
        return (
            request.url is self._url
            and request.method == "POST"
            and headers is self._headers
            and headers._list == self._snapshot
        )


def prepared_prefix(
    url: httpx.URL, fixed: list[tuple[bytes, bytes]]
) -> tuple[Origin, bytes] | None:
    """The origin of ``url`` and the start of a POST's head to it, up to the headers each
    request adds (:data:`PREPARED_EXTENSION`), made as :func:`_request_head` makes a head;
    None when the transport is to make the head itself, and refuse it (a scheme it does not
    speak, a header that would break the head)."""
    origin = _origin(url)
    if origin is None or any(
        _UNSAFE_IN_HEADER.search(name) or _UNSAFE_IN_HEADER.search(value) for name, value in fixed
    ):
        return None
    return origin, b"".join(_head_lines(b"POST", url.raw_path, fixed))


def _origin(url: httpx.URL) -> Origin | None:
    """The pool's key for the server of ``url``; None for a scheme it does not speak."""
    scheme = url.scheme
    if scheme not in ("http", "https"):
        return None
    return (scheme, url.raw_host.decode("ascii"), url.port or (443 if scheme == "https" else 80))


def _head_lines(method: bytes, path: bytes, fields: list[tuple[bytes, bytes]]) -> list[bytes]:
    """A request's line and its header lines, as written (the head's end not among them)."""
    return [b"%s %s HTTP/1.1\r\n" % (method, path), *header_lines(fields)]


def header_lines(fields: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Header lines as a head has them, one ``name: value`` line each."""
    return [b"%s: %s\r\n" % field for field in fields]


class RawHeaders(httpx.Headers):
    """``httpx.Headers`` made from ``(name, value)`` byte pairs, as a parser or a request
    builder has them: each name lowered once, and nothing else done. ``httpx.Headers`` makes
    the same from a list, checking each name and value for ``str`` and encoding it (two calls
    and three type checks a header); a response's headers are made for every upstream answer,
    a request's for every upstream request. Their text encoding is worked out as httpx's own
    does, on the first lookup."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._list = [(name, name.lower(), value) for name, value in raw]
        self._encoding = None

    @property
    def encoding(self) -> str:
        """As ``httpx.Headers.encoding`` works it out (ASCII, else UTF-8, else Latin-1), with
        one test a header for the usual case, every byte ASCII."""
        if self._encoding is None:
            if all(name.isascii() and value.isascii() for name, _, value in self._list):
                self._encoding = "ascii"
            else:
                return str(httpx.Headers.encoding.fget(self))  # type: ignore[attr-defined]
        return self._encoding

    @encoding.setter
    def encoding(self, value: str) -> None:
        self._encoding = value

    def get(self, key: str, default: Any = None) -> Any:
        """As ``httpx.Headers.get`` reads (repeated headers joined by ", "), without the
        ``KeyError`` its lookup raises for a header that is absent, and without a list."""
        encoding = self.encoding
        wanted = key.lower().encode(encoding)
        found: bytes | None = None
        for _, name, value in self._list:
            if name == wanted:
                found = value if found is None else found + b", " + value
        return default if found is None else found.decode(encoding)


class BodySink(Protocol):
    """Who takes a tapped response body (see :meth:`_Connection.tap`)."""

    def body(self, data: bytes) -> None:
        """Body bytes, as they arrive (never empty)."""

    def ended(self, error: httpx.TransportError | None) -> None:
        """The body is complete (``None``) or broke off with ``error``; said once."""


class PythonBody:
    """A response parser's body callback: it keeps the body's pieces for the reader that asks
    for them (:attr:`chunks`, :attr:`buffered` their bytes), and refuses a piece once the
    response is :attr:`complete`. The compiled one (``providers._relay.Body``) does the same
    and can hand the pieces to a relay's compiled step instead (:attr:`tap`); this one,
    where the package was built without it, never has a tap."""

    __slots__ = ("buffered", "chunks", "complete", "tap")

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.buffered = 0
        self.complete = False
        self.tap: object | None = None

    def __call__(self, piece: bytes) -> None:
        if self.complete:
            raise ValueError("data after the end of the response")
        self.chunks.append(piece)
        self.buffered += len(piece)


#: The body callback's type: the compiled one (``providers/_relay.c``) where the package was
#: built with it (the same attributes; its tap a ``providers._relay.Tap``).
Body: Callable[[list[bytes]], PythonBody] = PythonBody
try:
    from ._relay import Body as _CompiledBody

    Body = cast(Callable[[list[bytes]], PythonBody], _CompiledBody)
except ImportError:  # pragma: no cover - a build without a C compiler
    pass


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one response at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        # Made by the running loop's create_connection. Kept: on Python 3.11, every
        # asyncio.get_running_loop() is a getpid() system call, and _wait runs for every chunk.
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        # The read timeout: when the wait under way is due (loop time), the one timer that
        # checks it, and whether that timer ended the wait.
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out = False
        # A tapped body goes to its sink from data_received, without a reader's wake-up.
        self._sink: BodySink | None = None
        # The request, held for the end of the loop's turn (providers._turn).
        self._request = b""
        self._turn = TurnWrites.of(self._loop)
        self._new_response()

    def _new_response(self) -> None:
        self.body: list[bytes] = []
        # The parser's body callback, read once by the parser as it is made: it keeps the
        # pieces in self.body (and counts them, in self.pieces.buffered), or hands them to a
        # relay's compiled step (tap()).
        self.pieces = self.on_body = Body(self.body)
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.head_done = False
        self.until_eof = False  # a body without length or chunking ends when the server closes
        self.informational = False
        self.complete = False
        self.keep_alive = True
        self.error: httpx.TransportError | None = None
        self.paused = False

    # ------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and self.until_eof and exc is None:
            self.complete = self.pieces.complete = True
        if not self.complete and self.error is None:
            where = "mid-response" if self.head_bytes else "before any response"
            how = f" ({type(exc).__name__})" if exc is not None else ""
            self.error = httpx.ReadError(f"the connection was closed {where}{how}")
        if self._sink is not None:
            self._feed_sink()
        self._wake()
        # The transport and the parser refer back to this connection: let go of them, so that
        # a closed connection is freed by reference counting, not the cycle collector's pass.
        self.transport = None
        del self.parser

    def data_received(self, data: bytes) -> None:
        if self.complete:  # nothing was asked: a server that talks out of turn is not reused
            self.close()
            return
        if not self.head_done:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._fail(httpx.RemoteProtocolError(str(exc.__context__ or exc)))
        except httptools.HttpParserUpgrade:  # pragma: no cover - never asked for
            self._fail(httpx.RemoteProtocolError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))
        else:
            if not self.head_done and self.head_bytes > MAX_HEAD_BYTES:
                self._fail(httpx.RemoteProtocolError(f"response head over {MAX_HEAD_BYTES} bytes"))
        if self._sink is not None:
            # A compiled step (tap()) has had the pieces already: the sink hears of the end.
            if self.body or self.complete or self.error is not None:
                self._feed_sink()
            return
        if self.pieces.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        return None

    def _fail(self, error: httpx.TransportError) -> None:
        if self.complete:  # the response was whole; only what came after it was bad
            self.close()
            return
        if self.error is None:
            self.error = error
        self.close()

    # ------------------------------------------------------------ httptools callbacks

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            raise ValueError("data after the end of the response")
        self.headers.append((name, value))
        if len(self.headers) > MAX_HEADERS:
            raise ValueError(f"more than {MAX_HEADERS} response headers")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (103 Early Hints): the real one follows
            self.informational = True
            self.reason = b""
            self.headers = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.until_eof = status not in (204, 304) and not any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers
        )
        self.head_done = True

    # on_body is the connection's Body (see _new_response).

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.complete = self.pieces.complete = True

    # ------------------------------------------------------------ waiting

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, seconds: float | None) -> None:
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        if seconds is None:
            self._due = _NEVER
        else:
            # This runs for every chunk: it moves the deadline, and one timer per connection
            # looks at it when it fires (re-armed for the deadline then in force), rather
            # than a timer made and cancelled per chunk.
            due = self._due = loop.time() + seconds
            if self._timer is None or self._timer.when() > due:  # none, or one for later
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(due, self._check_due)
        try:
            await waiter
        except asyncio.CancelledError:
            if self._timed_out and not _task_cancelling():
                raise httpx.ReadTimeout(f"no data within {seconds:g} s") from None
            raise
        finally:
            self._waiter = None
            self._timed_out = False

    def _check_due(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next wait arms the timer again
        loop = self._loop
        if loop.time() >= self._due:
            self._timed_out = True
            waiter.cancel()
        elif self._due != _NEVER:
            self._timer = loop.call_at(self._due, self._check_due)

    @staticmethod
    def _failure(error: httpx.TransportError) -> httpx.TransportError:
        """The connection's error, to raise: a copy, so that the one kept here takes no
        traceback, which would hold the raising frame, and it this connection (a cycle per
        failed connection, left to the cycle collector with all it holds)."""
        return copy.copy(error)

    async def read_head(self, seconds: float | None) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self._failure(self.error)
            await self._wait(seconds)
        # An error after a complete head surfaces when the body is read.

    async def read_body(self, seconds: float | None) -> bytes:
        """All body bytes that have arrived (waiting for some if none has); b"" at the end."""
        while not self.body:
            if self.complete:
                return b""
            if self.error is not None:
                raise self._failure(self.error)
            await self._wait(seconds)
        return self.take_body()

    def take_body(self) -> bytes:
        """The body bytes that have arrived, without waiting (b"" if none has): what
        :meth:`read_body` returns once some has."""
        if not self.body:
            return b""
        data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.pieces.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    # ------------------------------------------------------------ tapping

    def tap(self, sink: BodySink, step: object | None = None) -> None:
        """Hand the rest of the body to ``sink`` as it arrives, from :meth:`data_received`
        itself, instead of buffering it for :meth:`read_body`: a streamed body's chunks then
        cost no task wake-up and no layer of async iteration each. What has arrived already
        goes to the sink at once. The read timeout no longer applies (the tapper watches for
        silence); back-pressure is the tapper's, through :meth:`pause` and :meth:`resume`.

        ``step``: the tapper's compiled step for a piece (``providers._relay.Tap``), which
        the parser's body callback then calls itself, piece by piece, instead of the pieces
        being joined for ``sink.body`` once the parser is done with a read. The sink still
        hears of the body's end."""
        self._sink = sink
        self.resume()
        self._feed_sink()
        if step is not None and self._sink is sink:
            self.pieces.tap = step

    def untap(self) -> None:
        """Back to buffering for :meth:`read_body` (reading resumed if the tapper paused it)."""
        self._sink = None
        self.pieces.tap = None
        self.resume()

    def pause(self) -> None:
        """Take nothing more from the socket for now (a tapper whose own reader fell behind)."""
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            if not self.closed:
                self.transport.resume_reading()

    def _feed_sink(self) -> None:
        sink = self._sink
        assert sink is not None
        if self.body:
            data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            self.body.clear()
            self.pieces.buffered = 0
            sink.body(data)
        if self._sink is sink and (self.complete or self.error is not None):
            self._sink = None
            sink.ended(None if self.complete else self.error)

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def send_request(self, data: bytes) -> None:
        """Send a request: held for the end of the loop's turn, with the other writes made in
        it, or sooner when the turn runs long (the caller's first byte waits for it)."""
        self._request = data
        self._turn.hold(self)
        self._turn.urge()

    def send_held(self) -> None:
        data, self._request = self._request, b""
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        self._request = b""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()


def _task_cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())


class _ResponseStream(httpx.AsyncByteStream):
    """A response body as it arrives; closing it hands the connection back to the pool."""

    @property
    def connection(self) -> _Connection | None:
        """The connection the body comes on, while it may still be tapped (see
        :meth:`_Connection.tap`)."""
        return None if self._released else self._connection

    def __init__(
        self, transport: StreamingTransport, connection: _Connection, timeout: float | None
    ) -> None:
        self._transport = transport
        self._connection = connection
        self._timeout = timeout
        self._released = False

    def __aiter__(self) -> _BodyReader:
        return _BodyReader(self._connection, self._timeout)

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._transport.release(self._connection)


class _BodyReader:
    """A response body's chunks as they arrive (an async iterator written out as a class, not
    an async generator: one is made for every upstream response). Closing it stops it; the
    response's own closing hands the connection back."""

    __slots__ = ("_connection", "_ended", "_timeout")

    def __init__(self, connection: _Connection, timeout: float | None) -> None:
        self._connection = connection
        self._timeout = timeout
        self._ended = False

    def __aiter__(self) -> _BodyReader:
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        try:
            data = await self._connection.read_body(self._timeout)
        except BaseException:
            self._ended = True
            raise
        if not data:
            self._ended = True
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        self._ended = True


class StreamingTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 connections per origin, at most ``limits.max_connections`` in use at once;
    ``verify`` as httpx takes it (``True``: the certifi bundle; an ``SSLContext``; ``False``)."""

    def __init__(
        self, *, limits: httpx.Limits | None = None, verify: ssl.SSLContext | bool = True
    ) -> None:
        limits = limits or httpx.Limits()
        self._ssl_context = httpx.create_ssl_context(verify=verify)
        self._max_keepalive = limits.max_keepalive_connections or 0
        self._expiry = limits.keepalive_expiry or 5.0
        self._idle: dict[Origin, list[_Connection]] = {}
        self._slots = asyncio.Semaphore(limits.max_connections or 1000)
        self._in_use: set[_Connection] = set()

    @property
    def connections(self) -> int:
        """Open connections, idle or in use (for tests and metrics)."""
        idle = sum(not c.closed for connections in self._idle.values() for c in connections)
        return len(self._in_use) + idle

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet handed to a reader, over every response under way."""
        return sum(c.pieces.buffered for c in self._in_use)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        extensions = request.extensions
        timeouts: dict[str, float | None] = extensions.get("timeout", {})
        prepared: PreparedHead | None = extensions.get(PREPARED_EXTENSION)
        if prepared is not None and prepared.fits(request):
            # Made and checked by the request's builder: its body at hand, never chunked.
            origin, head = prepared.origin, prepared.head
            body = request.content
        else:
            found = _origin(request.url)
            if found is None:
                scheme = request.url.scheme
                raise httpx.UnsupportedProtocol(f"cannot send {scheme!r} URLs", request=request)
            origin = found
            head = _request_head(request)
            try:
                body = request.content  # a request built with its body has it at hand
            except httpx.RequestNotRead:
                parts = cast(AsyncIterator[bytes], request.stream)
                body = b"".join([part async for part in parts])
            if _chunked(request):
                body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        if self._slots.locked():
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no connection free in the pool", request=request) from None
        else:
            await self._slots.acquire()  # free: returns at once
        connection: _Connection | None = None
        try:
            connection = await self._connection_for(origin, timeouts.get("connect"), request)
            self._in_use.add(connection)
            assert connection.transport is not None
            connection.send_request(head + body)
            await connection.read_head(timeouts.get("read"))
        except BaseException as exc:
            if connection is not None:
                self._in_use.discard(connection)
                connection.close()
            self._slots.release()
            if isinstance(exc, httpx.RequestError):
                exc.request = request
            raise
        stream = _ResponseStream(self, connection, timeouts.get("read"))
        return _PoolResponse(
            connection.status,
            RawHeaders(connection.headers),
            stream,
            {
                "http_version": b"HTTP/1.1",
                "reason_phrase": connection.reason,
                BODY_EXTENSION: stream,
            },
        )

    async def _connection_for(
        self, origin: Origin, seconds: float | None, request: httpx.Request
    ) -> _Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self._expiry:
                connection._new_response()
                return connection
            connection.close()
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        use_tls = scheme == "https"
        try:
            async with asyncio.timeout(seconds):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(origin),
                    host,
                    port,
                    ssl=self._ssl_context if use_tls else None,
                    server_hostname=host if use_tls else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection within {seconds:g} s", request=request
            ) from None
        except OSError as exc:  # refused, unreachable, DNS, and TLS (ssl.SSLError)
            message = str(exc) or type(exc).__name__
            raise httpx.ConnectError(message, request=request) from exc
        return protocol

    def release(self, connection: _Connection) -> None:
        """A response is done with (read to the end, or abandoned)."""
        if connection not in self._in_use:
            return
        connection.untap()
        self._in_use.discard(connection)
        self._slots.release()
        idle = self._idle.setdefault(connection.origin, [])
        if connection.reusable and len(idle) < self._max_keepalive:
            connection.idle_since = time.monotonic()
            idle.append(connection)
        else:
            # Mid-body (the caller hung up): the rest of this response is not wanted.
            connection.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        for connection in list(self._in_use):
            connection.close()
        self._in_use.clear()


class _PoolResponse(httpx.Response):
    """A response of this transport: what ``httpx.Response(status, headers=headers,
    stream=stream, extensions=extensions)`` makes, without the copies it makes of the headers
    and the extensions given (both are made for it, and kept by nothing else): the headers
    stay :class:`RawHeaders`, and their lookups its own."""

    def __init__(
        self,
        status_code: int,
        headers: RawHeaders,
        stream: _ResponseStream,
        extensions: dict[str, Any],
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self._request = None
        self.next_request = None
        self.extensions = extensions
        self.history = []
        self.is_closed = False
        self.is_stream_consumed = False
        self.default_encoding = "utf-8"
        self.stream = stream
        self._num_bytes_downloaded = 0


def _request_head(request: httpx.Request) -> bytes:
    """The request line and headers; a line break or NUL in any of them is refused, since it
    would let a value end the head early and smuggle a header or request of its own."""
    raw = request.headers.raw
    lines = _head_lines(request.method.encode("ascii"), request.url.raw_path, raw)
    lines.append(b"\r\n")
    head = b"".join(lines)
    # The head as a whole first (three passes in C): its line ends are its own, and no NUL.
    ends = len(raw) + 2
    if head.count(b"\n") == ends and head.count(b"\r") == ends and b"\0" not in head:
        return head
    for name, value in raw:
        if _UNSAFE_IN_HEADER.search(name) or _UNSAFE_IN_HEADER.search(value):
            raise httpx.LocalProtocolError(
                f"header {name[:40]!r} holds a line break or NUL", request=request
            )
    return head  # the request line's own (its path is percent-encoded: not from a header)


def _chunked(request: httpx.Request) -> bool:
    """Whether the request says its body is chunked (``Transfer-Encoding: chunked``), read
    from the raw headers (a lookup in ``request.headers`` first works out their encoding)."""
    coding = b", ".join(v for n, v in request.headers.raw if n.lower() == b"transfer-encoding")
    return coding.lower() == b"chunked"
