"""Accepting a listening socket that several worker processes share, a few connections at a time.

An event loop's server accepts every connection waiting on its socket each time the socket is
ready (uvloop's, like asyncio's). With one socket shared by several processes, the first worker
to wake takes what has queued, and the others, woken too, find nothing: in bursts of 200
callers at one instant, one of two workers was measured holding 112 to 164 of them
(``bench/changes.md``), and the burst's last callers waited for that one process.

:class:`PacedServer` is uvicorn's server with that one step replaced: each worker takes at most
:data:`ACCEPTS_PER_TURN` connections each time its loop goes round, and then serves what it
has; the rest stay in the kernel's queue for whichever worker comes round next. A busy worker
comes round less often and so takes fewer, an idle one more: the burst is spread by how fast
each worker works. The socket stays one socket: a worker that stops or dies leaves what waits
in the queue to the others (separate ``SO_REUSEPORT`` sockets would spread evenly too, but
reset the connections queued on a worker's socket when it closes).

Everything else is uvicorn's: the connections it tracks (each accepted connection is built by
the same protocol factory and registers itself), its shutdown, which now first stops the
accepting. Used by the supervisor's workers; one process serves through uvicorn's own server.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Final

import uvicorn

log = logging.getLogger("gateway")

#: Connections a worker accepts each time its loop comes round to the listening socket.
ACCEPTS_PER_TURN: Final = 4
#: How long accepting pauses when the process (or the system) has no descriptor or memory left
#: for another connection: the connection waits in the queue meanwhile, for this worker or
#: another.
_RESOURCE_PAUSE_SECONDS: Final = 0.1
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: What Linux's ``accept`` reports of a connection that failed before it was taken (accept(2):
#: pending network errors are passed on, and are to be treated as "try again"; a firewall
#: refusal; a reset): that connection is gone, the next one is taken.
_PASSED_ON: Final = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "ECONNRESET",
        "EHOSTDOWN",
        "EHOSTUNREACH",
        "ENETDOWN",
        "ENETUNREACH",
        "ENONET",
        "ENOPROTOOPT",
        "EOPNOTSUPP",
        "EPERM",
        "EPROTO",
        "ETIMEDOUT",
    )
    if hasattr(errno, name)
)


class PacedAccept:
    """Accepts ``sock`` on ``loop``, at most :data:`ACCEPTS_PER_TURN` connections a turn, each
    handed to ``factory``'s protocol."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._tasks: set[asyncio.Task[object]] = set()
        self._resume: asyncio.TimerHandle | None = None
        self.closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left: the next turn
            except OSError as exc:
                if exc.errno in _PASSED_ON:
                    continue
                if exc.errno in _OUT_OF_RESOURCES:
                    log.error("accepting paused for %g s: %s", _RESOURCE_PAUSE_SECONDS, exc)
                    self._pause()
                    return
                # The listening socket itself is unusable (closed under it, say): this worker
                # takes no more connections; the others, and the supervisor's log, go on.
                log.error("accepting stopped: %s", exc)
                self.close()
                return
            # Made non-blocking by the loop's connect_accepted_socket (uvloop's and asyncio's).
            task = self._loop.create_task(self._connect(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError:  # gone before its transport was made: nothing to serve
            conn.close()

    def _pause(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._resume = self._loop.call_later(_RESOURCE_PAUSE_SECONDS, self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        if not self.closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Accept nothing more (the socket itself is its owner's to close)."""
        if self.closed:
            return
        self.closed = True
        if self._resume is not None:
            self._resume.cancel()
        else:
            self._loop.remove_reader(self._sock.fileno())


class PacedServer(uvicorn.Server):
    """uvicorn's server, accepting the sockets it is given with :class:`PacedAccept` (see the
    module docstring)."""

    _accepting: list[PacedAccept]

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._accepting = []
        await super().startup(sockets=[])  # exits the process if the app's start-up failed
        config = self.config
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=loop,
            )

        self._accepting = [PacedAccept(loop, sock, factory) for sock in sockets or []]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for accepting in self._accepting:
            accepting.close()
        await super().shutdown(sockets=sockets)
