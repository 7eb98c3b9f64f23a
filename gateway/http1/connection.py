"""A client connection's requests: each request read (see ``reader``) becomes an exchange
answered by the app in its own task, one at a time and in order; the deadlines of heads,
bodies and keep-alive pauses; the connection cap; the answers the connection layer gives
itself. The bytes beneath (TLS, flow control, endings) are ``io``'s. See the package
docstring."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from typing import Any, Final, cast
from urllib.parse import unquote

from starlette.types import ASGIApp, Scope

from .accept import SHEDDING
from .exchange import Exchange
from .io import WRITE_DRAIN_BYTES, WRITE_HIGH_WATER, WRITE_LOW_WATER, ConnectionIO
from .limits import (
    ANSWERED_SCOPE_KEY,
    EVENTS_STATE_KEY,
    EXCHANGE_SCOPE_KEY,
    CapLog,
    ConnectionEvents,
    ConnectionLimits,
    NoEvents,
    error_response,
)
from .reader import ReadStop, RequestHead, RequestReader
from .tls import TLSSession, tls_context

log = logging.getLogger("gateway.http")

#: Requests queued behind the one being answered before the connection is dropped.
_MAX_PIPELINED: Final = 8

__all__ = ["WRITE_DRAIN_BYTES", "HTTPProtocol", "protocol_factory"]


def protocol_factory(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """What ``uvicorn.Config(http=...)`` takes: it builds an :class:`HTTPProtocol` per connection.
    A ``functools.partial`` of module-level names, so that it survives pickling into worker
    processes; uvicorn only ever calls it, so it is typed as the class it stands for."""
    return cast("type[asyncio.Protocol]", functools.partial(HTTPProtocol, limits=limits))


class HTTPProtocol(ConnectionIO):
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
        super().__init__(_loop or asyncio.get_event_loop())
        self.app: ASGIApp = config.loaded_app
        self.root_path: str = config.root_path
        self.limits = limits
        self.app_state = app_state
        self.events: ConnectionEvents = app_state.get(EVENTS_STATE_KEY) or NoEvents()
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.reader = RequestReader(self, limits)
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        self.shutting_down = False
        self._refused = False
        self._continue_after_drain = False
        self._answered = 0  # answers completed on this connection
        self.shed_period = -1  # the load period it last started an answer in (SHEDDING)
        # The exchange being answered, and those waiting their turn (pipelined).
        self._active: Exchange | None = None
        self._queue: deque[Exchange] = deque()

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        self.events.opened()
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER
        )
        if len(self.connections) > self.limits.max_connections:
            self._refused = True
            self.events.refused("max_connections")
            CapLog.refuse(len(self.connections), self.limits.max_connections)
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
            self._tls = TLSSession(tls_context(self.limits.tls))
            self.scheme = "https"
        # The first request's head (and, over TLS, the handshake before it) is due within the
        # header deadline of the connection opening.
        self._arm(self.limits.header, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._lost()
        self.connections.discard(self)
        self.events.closed()
        for exchange in (self._active, *self._queue):
            if exchange is not None and not exchange.response_complete:
                exchange.disconnected = True
                exchange.wake()
        self._queue.clear()
        # The connection's parts refer to each other (the reader and its parser, the transport
        # and this protocol): let go of them, so that a closed connection is freed by
        # reference counting rather than at the cycle collector's next pass.
        self.reader.release()
        self.transport = None

    def eof_received(self) -> bool | None:
        # A caller that closes its side has gone (barge-in): close, so the app hears of it.
        return None

    def data_received(self, data: bytes) -> None:
        if self._refused or self._closed:
            return
        plain = self._plaintext(data)
        if plain is None:
            return
        try:
            self.reader.feed(plain)
        except ReadStop as stop:
            if stop.reason == "head_too_large":
                self._head_too_large()
            elif stop.reason == "request_too_large":
                self._request_too_large()
            elif stop.reason == "pipelined":
                self._pipeline_overflow()
            else:
                self._bad_request(stop.detail)

    def _writable_again(self) -> None:
        if self._continue_after_drain:
            self._continue_after_drain = False
            self._next()

    def _stop_taking_requests(self) -> None:
        self.reader.stopped = True
        self._queue.clear()

    @property
    def closes_after_this(self) -> bool:
        """Whether the answer being started is the connection's last: no pipelined request
        waits, and it is shutting down or its worker sheds it to a lighter one
        (:data:`gateway.http1.accept.SHEDDING`)."""
        return not self._queue and (self.shutting_down or SHEDDING.take(self))

    # ------------------------------------------------------------------ from the reader

    def request_begun(self) -> None:
        if self._active is None and self._answered:
            # After a keep-alive pause, the head is due within the header deadline of its
            # first byte (the first request's deadline runs from the connection opening).
            self._arm(self.limits.header, self._head_timed_out)

    def request_head(self, head: RequestHead) -> Exchange:
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": head.http_version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": head.method,
            "root_path": self.root_path,
            "path": self.root_path + unquote(head.raw_path.decode("latin-1")),
            "raw_path": head.raw_path,
            "query_string": head.query,
            "headers": head.headers,
            "state": self.app_state.copy(),
        }
        exchange = Exchange(
            self, scope, keep_alive=head.keep_alive, expect_continue=head.expect_continue
        )
        scope[EXCHANGE_SCOPE_KEY] = exchange
        if self._active is None and not self._continue_after_drain:
            # The body is due within the body deadline of the head (disarmed once it is in).
            self._arm(self.limits.body, self._body_timed_out)
            self._start(exchange)
        elif len(self._queue) < _MAX_PIPELINED:
            self._queue.append(exchange)
            self.pause_reading()
        else:
            raise ReadStop("pipelined")
        return exchange

    def request_read(self, exchange: Exchange) -> None:
        if exchange is self._active:
            self._disarm()

    # ------------------------------------------------------------------ exchanges

    def _start(self, exchange: Exchange) -> None:
        self._active = exchange
        task = self.loop.create_task(self._run(exchange))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, exchange: Exchange) -> None:
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
        finally:
            # The scope and the exchange refer to each other: a cycle per request, left to the
            # cycle collector with everything the exchange holds, unless broken here; and so do
            # a closed connection and the exchange it was answering.
            exchange.scope.pop(EXCHANGE_SCOPE_KEY, None)
            if self._closed and exchange is self._active:
                self._active = None

    def _fail(self, exchange: Exchange) -> None:
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

    def response_complete(self, exchange: Exchange) -> None:
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
        elif self.reader.in_head:
            self._arm(self.limits.header, self._head_timed_out)
            self.resume_reading()
        else:
            self._arm(self.limits.keep_alive, self._close)
            self.resume_reading()

    def _end_connection(self) -> None:
        """Close after an answer; see :meth:`_linger` for a request left unread."""
        if self.reader.unread:
            self._linger()
        else:
            self._close()

    # ------------------------------------------------------------------ deadlines and errors

    def _head_timed_out(self) -> None:
        if self.reader.in_head and self._active is None:
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
        if exchange is None or exchange is not self.reader.reading:
            self._close()
            return
        self._give_up_reading(
            exchange,
            413,
            "too_large",
            f"the request is over {self.limits.max_request_bytes} bytes as sent",
        )

    def _give_up_reading(self, exchange: Exchange, status: int, code: str, message: str) -> None:
        """The request being answered cannot be read to its end: answer it now if nothing has
        gone out yet (the app hears that its caller has gone), else drop the connection."""
        self.reader.stopped = True
        if exchange.response_started:
            self._abort()
            return
        self._answered_for(exchange, status)
        self._answer_and_close(status, code, message)

    @staticmethod
    def _answered_for(exchange: Exchange, status: int) -> None:
        """The connection layer answers ``exchange`` itself: the app hears that its caller has
        gone, and finds the status it was given under ``gateway.answered`` in the scope."""
        exchange.scope[ANSWERED_SCOPE_KEY] = status
        exchange.disconnected = True
        exchange.wake()

    def _bad_request(self, error: str) -> None:
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

    def want_body(self, exchange: Exchange) -> None:
        """The app is ready for more of ``exchange``'s body (or, once it has it all, to hear of
        a hang-up): read on, unless a pipelined request is waiting its turn."""
        if exchange is self.reader.reading and not self._queue:
            self.resume_reading()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close an idle connection now; a busy one answers what
        it has taken (the app answers 503 while draining) and closes after the last."""
        self.shutting_down = True
        if self._active is None and not self._queue:
            self._close()
