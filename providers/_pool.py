"""A lean HTTP/1.1 connection pool for streaming audio, under httpx's own transport.

httpx stays the client (requests, responses, exceptions, respx in tests); only the pool beneath
it changes. httpcore's pool walks every connection, and polls each socket, on every request and
every release, and hands the body over one HTTP chunk at a time through several layers. With
hundreds of concurrent streams of 20 ms chunks that was most of the gateway's CPU. This pool:

- keeps idle connections per origin in a list and checks them without system calls (a closed
  connection has told us so through ``connection_lost``);
- parses responses with httptools (C) in an ``asyncio.Protocol``;
- hands over *everything that has arrived* at each read, so chunks that are already here are
  coalesced instead of travelling the stack one by one;
- pauses reading when the consumer falls behind (back-pressure), and never buffers a whole body.

It speaks httpcore's interface (``handle_async_request`` taking an ``httpcore.Request`` and
raising httpcore's exceptions), so :class:`StreamingTransport` is httpx's ``AsyncHTTPTransport``
with this pool in place of httpcore's: exceptions are mapped by httpx as usual, and respx's
``using="httpx"`` mocker still intercepts requests in tests. Proxies configured through the
environment are mounted by httpx on its own transports, untouched; HTTP/2 is not offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import httpcore
import httptools
import httpx

Origin = tuple[bytes, bytes, int]

#: Body bytes held for a slow consumer before reading from the socket pauses (~0.7 s of
#: 24 kHz audio): beyond it the kernel buffers, not this process, so memory per stream stays small.
_HIGH_WATER = 32 * 1024


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one response at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._new_response()

    def _new_response(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = True
        self.body: list[bytes] = []
        self.buffered = 0
        self.error: Exception | None = None
        self.paused = False

    # ------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.error is None:
            self.error = httpcore.ReadError("the connection was closed mid-response")
        self._wake()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - never asked for
            self.error = httpcore.RemoteProtocolError("unexpected protocol upgrade")
        except httptools.HttpParserError as exc:
            self.error = httpcore.RemoteProtocolError(f"malformed response: {exc}")
            if self.transport is not None:
                self.transport.close()
        if self.buffered > _HIGH_WATER and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        return None

    # ------------------------------------------------------------ httptools callbacks

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        self.complete = True

    # ------------------------------------------------------------ waiting

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, seconds: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        # One timer handle, not an asyncio.timeout() context: this runs for every chunk.
        handle = loop.call_later(seconds, waiter.cancel) if seconds is not None else None
        try:
            await waiter
        except asyncio.CancelledError:
            if handle is not None and waiter.cancelled() and not _task_cancelling():
                raise httpcore.ReadTimeout(f"no data within {seconds:g} s") from None
            raise
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    async def read_head(self, seconds: float | None) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait(seconds)
        # An error after a complete head surfaces when the body is read.

    async def read_body(self, seconds: float | None) -> bytes:
        """All body bytes that have arrived (waiting for some if none has); b"" at the end."""
        while not self.body:
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait(seconds)
        data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _task_cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())


class _Body:
    """The response body as httpcore hands it to httpx: an async iterable with ``aclose``."""

    def __init__(self, pool: FastPool, connection: _Connection, timeout: float | None) -> None:
        self._pool = pool
        self._connection = connection
        self._timeout = timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            data = await connection.read_body(self._timeout)
            if not data:
                break
            yield data

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._connection)


class FastPool:
    """Connections per origin, at most ``max_connections`` in use at once."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        max_connections: int,
        max_keepalive_connections: int,
        keepalive_expiry: float,
    ) -> None:
        self._ssl_context = ssl_context
        self._max_keepalive = max_keepalive_connections
        self._expiry = keepalive_expiry
        self._idle: dict[Origin, list[_Connection]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._in_use: set[_Connection] = set()

    @property
    def connections(self) -> int:
        """Open connections, idle or in use (for tests and metrics)."""
        return len(self._in_use) + sum(len(idle) for idle in self._idle.values())

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        url = request.url
        origin: Origin = (url.scheme, url.host, url.port or (443 if url.scheme == b"https" else 80))
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpcore.PoolTimeout("no connection free in the pool") from None
        connection: _Connection | None = None
        try:
            body = b"".join([part async for part in cast(Any, request.stream)])
            connection = await self._connection_for(origin, timeouts.get("connect"))
            self._in_use.add(connection)
            head = [b"%s %s HTTP/1.1\r\n" % (request.method, url.target)]
            head += [b"%s: %s\r\n" % (name, value) for name, value in request.headers]
            assert connection.transport is not None
            connection.transport.write(b"".join(head) + b"\r\n" + body)
            await connection.read_head(timeouts.get("read"))
        except BaseException:
            if connection is not None:
                self._in_use.discard(connection)
                connection.close()
            self._slots.release()
            raise
        return httpcore.Response(
            status=connection.status,
            headers=connection.headers,
            content=_Body(self, connection, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason},
        )

    async def _connection_for(self, origin: Origin, seconds: float | None) -> _Connection:
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
        use_tls = scheme == b"https"
        try:
            async with asyncio.timeout(seconds):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(origin),
                    host.decode("ascii"),
                    port,
                    ssl=self._ssl_context if use_tls else None,
                    server_hostname=host.decode("ascii") if use_tls else None,
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection within {seconds:g} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return protocol

    def release(self, connection: _Connection) -> None:
        """A response is done with (read to the end, or abandoned)."""
        if connection not in self._in_use:
            return
        self._in_use.discard(connection)
        self._slots.release()
        idle = self._idle.setdefault(connection.origin, [])
        if connection.reusable and len(idle) < self._max_keepalive:
            connection.idle_since = time.monotonic()
            idle.append(connection)
        else:
            # Mid-body (the caller hung up): the rest of this response is not wanted.
            connection.close()

    async def __aenter__(self) -> FastPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        for connection in list(self._in_use):
            connection.close()
        self._in_use.clear()


class StreamingTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with :class:`FastPool` beneath it."""

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        super().__init__(limits=limits, verify=verify)
        ssl_context: ssl.SSLContext | None = None
        with contextlib.suppress(AttributeError):
            ssl_context = self._pool._ssl_context  # httpx built it from `verify`
        self._pool = FastPool(  # type: ignore[assignment]
            ssl_context=ssl_context,
            max_connections=limits.max_connections or 1000,
            max_keepalive_connections=limits.max_keepalive_connections or 0,
            keepalive_expiry=limits.keepalive_expiry or 5.0,
        )
