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

Which worker takes a new connection first is not left to which one wakes first either. The
workers fill in order (:class:`LoadBoard`): the first of them (by index) that is lighter than
:data:`FILL_CPU` of a core and fuller than :data:`FILL_OCCUPANCY` of none of its limits takes
each new connection at once; when every worker is past those marks, the lightest of them does.
Each worker publishes its load every :data:`LOAD_SECONDS` in memory the supervisor gave every
worker, and counts each connection it takes at once (:data:`ACCEPT_CPU_SECONDS`), so that a
burst of new callers is spread between the workers as it comes. A worker whose turn it is not
stops watching the socket for :data:`OVERFLOW_SECONDS` and then takes what is still waiting
(and goes on taking while it finds connections waiting), so that a connection never waits
long for a busy worker. A few workers carrying the streams save the CPU that spreading them thin
costs: each worker that wakes for a handful of chunks pays a whole turn of its loop for them
(200 real-time streams on one worker of two cost ~20 % less CPU a stream-second than split
evenly between them, ``bench/changes.md``). What one worker cannot carry overflows to the next.

Connections outlive the moment they were placed: a caller's keep-alive connections, opened
while the gateway was idle, all reach the first worker, and their requests stay with it however
busy it gets. A worker close to the end of its core or of a limit (:data:`SHED_LOAD`), and
:data:`SHED_MARGIN` more loaded than the one whose turn it is, for :data:`SHED_AFTER`
publications in a row, sheds a few of them (:data:`SHED_PER_PERIOD` every :data:`LOAD_SECONDS`,
:data:`SHEDDING`): an answer it starts says ``Connection: close`` and the connection closes after
it, so that the caller's next request comes on a new connection, which goes to the lighter
worker. An answer is never cut for it, nor a pipelined request left unanswered (a connection
with one waiting is not shed). Shedding is kept for a worker that cannot keep up: a caller
whose connection is shed pays for a new one, and its request waits for a worker to accept it.
At a 0.2 margin past half a core, two workers both within their cores handed callers back and
forth (``bench/changes.md``). A worker whose core (not a limit) is what is full sheds only
when it serves more than one caller (the connections that started answers in the period, or
its streams in flight, whichever are more) and one caller's share of its CPU, moved, would
leave it the busier: one caller whose requests keep a core busy would only take that load to
the other worker, and pay a new connection and that worker's cold caches for it (its next
requests' first bytes read 2-5 ms against 0.5).

Everything else is uvicorn's: the connections it tracks (each accepted connection is built by
the same protocol factory and registers itself), its shutdown, which now first stops the
accepting. Used by the supervisor's workers; one process serves through uvicorn's own server.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable, MutableSequence
from typing import Final, Protocol

import uvicorn

log = logging.getLogger("gateway")

#: Connections a worker accepts each time its loop comes round to the listening socket.
ACCEPTS_PER_TURN: Final = 4
#: A worker is filled with new connections until its CPU over the last :data:`LOAD_SECONDS`
#: (all its threads, as a share of one core) reaches this...
FILL_CPU: Final = 0.5
#: ... or any of its limits (streams in flight against its share of ``max_concurrent_streams``,
#: a provider's in flight against its share of ``max_concurrency``) is this full.
FILL_OCCUPANCY: Final = 0.5
#: How often each worker publishes its load.
LOAD_SECONDS: Final = 0.05
#: What a new connection counts as on its worker's CPU share from the moment it is taken until
#: the next publication: its first request's own CPU, about a millisecond (``bench.hotpath``),
#: so that a burst of new callers moves the next ones on within the period, not after it.
ACCEPT_CPU_SECONDS: Final = 0.001
#: A load published longer ago than this is a worker not serving (gone, stuck, or stopping).
STALE_SECONDS: Final = 0.5
#: How long a new connection waits for the worker whose turn it is before another takes it.
OVERFLOW_SECONDS: Final = 0.001
#: A worker sheds connections only when it is this loaded (CPU share or occupancy, whichever is
#: higher: close to all of its core or of a limit)...
SHED_LOAD: Final = 0.8
#: ... and this much more loaded than the one whose turn it is...
SHED_MARGIN: Final = 0.4
#: ... and has been, at each of this many publications in a row (a moment's load is no reason
#: to move callers: a shed connection's caller pays a new connection)...
SHED_AFTER: Final = 3
#: ... at most this many every :data:`LOAD_SECONDS`.
SHED_PER_PERIOD: Final = 4
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


#: A worker's slot on the board: its CPU share, its occupancy, when it published them.
LOAD_SLOT: Final = 3


class LoadBoard:
    """Each worker's load, in memory the workers share (``slots``: :data:`LOAD_SLOT` floats a
    worker, made by the supervisor with ``RawArray("d", LOAD_SLOT * workers)``), and whose
    turn it is to take a new connection at once. ``index`` is this worker's own place (its
    rank: the lower fill first)."""

    def __init__(self, slots: MutableSequence[float], index: int) -> None:
        if len(slots) % LOAD_SLOT or not 0 <= index < len(slots) // LOAD_SLOT:
            raise ValueError(f"no slot {index} on a board of {len(slots)} values")
        self._slots = slots
        self.index = index
        self.workers = len(slots) // LOAD_SLOT
        self._left = False

    def publish(self, cpu: float, occupancy: float, now: float) -> None:
        """This worker's CPU share and occupancy, as of ``now`` (``time.monotonic()``: one clock
        for every process of the machine); nothing once this worker has left."""
        if self._left:
            return
        at = self.index * LOAD_SLOT
        # The time last (x86 stores are seen in order): a reader that sees it new reads figures
        # of that moment. A mixed read only places one connection less well.
        self._slots[at] = cpu
        self._slots[at + 1] = occupancy
        self._slots[at + 2] = now

    def took(self) -> None:
        """This worker took a new connection: its CPU share counts it at once
        (:data:`ACCEPT_CPU_SECONDS`), until it publishes the share it measured."""
        self._slots[self.index * LOAD_SLOT] += ACCEPT_CPU_SECONDS / LOAD_SECONDS

    def leave(self) -> None:
        """This worker takes no more connections: the others no longer wait for it."""
        self._left = True
        self._slots[self.index * LOAD_SLOT + 2] = 0.0

    def first(self, now: float) -> int | None:
        """The worker whose turn it is: the lowest-ranked one under both fill marks, else the
        least loaded (its CPU share or its occupancy, whichever is higher); None if no worker
        has published within :data:`STALE_SECONDS`."""
        slots = self._slots
        lightest, least = None, 0.0
        for index in range(self.workers):
            at = index * LOAD_SLOT
            if now - slots[at + 2] > STALE_SECONDS:
                continue
            if self._filling(index):
                return index
            load = self._load(index)
            if lightest is None or load < least:
                lightest, least = index, load
        return lightest

    def sheds(self, now: float, callers: int) -> bool:
        """Whether this worker, serving ``callers`` callers (connections), is to shed some (see
        the module docstring): never once it has left the board (it publishes no more: what it
        would read of itself is its load of that moment, however long ago)."""
        if self._left:
            return False
        load = self._load(self.index)
        if load < SHED_LOAD:
            return False
        first = self.first(now)
        if first is None or first == self.index:
            return False
        lighter = self._load(first)
        if lighter + SHED_MARGIN > load:
            return False
        at = self.index * LOAD_SLOT
        if self._slots[at + 1] >= SHED_LOAD:
            return True  # a limit nearly full: what it would refuse, the other can serve
        # Its core nearly full: a caller moved takes its share of the CPU with it, which must
        # leave this worker the busier of the two (one caller's load would only change places).
        cpu = self._slots[at]
        return callers > 1 and lighter + cpu / callers < cpu

    def _filling(self, index: int) -> bool:
        """Whether worker ``index`` is under both fill marks."""
        at = index * LOAD_SLOT
        return self._slots[at] < FILL_CPU and self._slots[at + 1] < FILL_OCCUPANCY

    def _load(self, index: int) -> float:
        """Worker ``index``'s load: its CPU share or its occupancy, whichever is higher."""
        at = index * LOAD_SLOT
        return max(self._slots[at], self._slots[at + 1])

    def mine(self) -> bool:
        """Whether a new connection is this worker's to take at once."""
        return self.first(time.monotonic()) in (self.index, None)


class Answering(Protocol):
    """A connection as :class:`Shedding` counts it: the period it last started an answer in."""

    shed_period: int


class Shedding:
    """How many more keep-alive connections this process closes after the answer it starts
    next, set by its :class:`LoadPublisher` (none in a process of its own); and how many
    connections started an answer since the publisher's last look (:meth:`callers`)."""

    __slots__ = ("_answering", "_period", "allowance")

    def __init__(self) -> None:
        self.allowance = 0
        self._period = 0
        self._answering = 0

    def take(self, connection: Answering) -> bool:
        """Whether the answer ``connection`` starts is to close it (one less to shed)."""
        if connection.shed_period != self._period:
            connection.shed_period = self._period
            self._answering += 1
        if self.allowance <= 0:
            return False
        self.allowance -= 1
        return True

    def callers(self) -> int:
        """The connections that started an answer since the last call (each counted once)."""
        answering, self._answering = self._answering, 0
        self._period += 1
        return answering


#: This process's :class:`Shedding`, read by its connections (``gateway.http1.connection``).
SHEDDING: Final = Shedding()


class PacedAccept:
    """Accepts ``sock`` on ``loop``, at most :data:`ACCEPTS_PER_TURN` connections a turn, each
    handed to ``factory``'s protocol. With a ``board``, a new connection is taken at once only
    when it is this worker's turn (:meth:`LoadBoard.mine`); otherwise after
    :data:`OVERFLOW_SECONDS`, if no other worker has taken it by then."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        board: LoadBoard | None = None,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._board = board
        self._tasks: set[asyncio.Task[object]] = set()
        # A pause (out of resources, or waiting for its turn), after which accepting resumes.
        self._resume: asyncio.TimerHandle | None = None
        # Takes what waits without asking whose turn it is: always without a board; with one,
        # from a look after the overflow wait until the queue is found empty.
        self._taking = board is None
        self.closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._ready)

    def _ready(self) -> None:
        board = self._board
        if self._taking or board is None or board.mine():
            self._accept()
            return
        # Another worker's turn: it has this long to take what came before this one does.
        self._loop.remove_reader(self._sock.fileno())
        self._resume = self._loop.call_later(OVERFLOW_SECONDS, self._overflow)

    def _overflow(self) -> None:
        self._resume = None
        if self.closed:
            return
        self._loop.add_reader(self._sock.fileno(), self._ready)
        self._taking = True
        self._accept()

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                # None left: the next connection is taken in its worker's turn again.
                self._taking = self._board is None
                return
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
            if self._board is not None:
                self._board.took()
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
            self._loop.add_reader(self._sock.fileno(), self._ready)

    def close(self) -> None:
        """Accept nothing more (the socket itself is its owner's to close)."""
        if self.closed:
            return
        self.closed = True
        if self._board is not None:
            self._board.leave()
        if self._resume is not None:
            self._resume.cancel()
        else:
            self._loop.remove_reader(self._sock.fileno())


class LoadPublisher:
    """Publishes this worker's load on ``board`` every :data:`LOAD_SECONDS`: the CPU its
    process used since the last time (``cpu()``, every thread's: a local voice's inference
    counts) as a share of one core, and ``occupancy()``; and sets :data:`SHEDDING`, by how
    many callers it serves (``streams()``: its streams in flight)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        board: LoadBoard,
        occupancy: Callable[[], float],
        cpu: Callable[[], float] = time.process_time,
        streams: Callable[[], int] = lambda: 0,
    ) -> None:
        self._loop = loop
        self._board = board
        self._occupancy = occupancy
        self._streams = streams
        self._clock = cpu
        self._at = time.monotonic()
        self._cpu = cpu()
        self._shedding = 0  # publications in a row at which this worker was to shed
        board.publish(0.0, occupancy(), self._at)
        self._timer: asyncio.TimerHandle | None = loop.call_later(LOAD_SECONDS, self._publish)

    def _publish(self) -> None:
        now, cpu = time.monotonic(), self._clock()
        share = (cpu - self._cpu) / (now - self._at) if now > self._at else 0.0
        self._at, self._cpu = now, cpu
        self._board.publish(share, self._occupancy(), now)
        # Its callers: the connections it answered in the period, or its streams in flight
        # (long answers started before it), whichever are more.
        callers = max(SHEDDING.callers(), self._streams())
        self._shedding = self._shedding + 1 if self._board.sheds(now, callers) else 0
        SHEDDING.allowance = SHED_PER_PERIOD if self._shedding >= SHED_AFTER else 0
        self._timer = self._loop.call_later(LOAD_SECONDS, self._publish)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        SHEDDING.allowance = 0
        self._board.leave()


class PacedServer(uvicorn.Server):
    """uvicorn's server, accepting the sockets it is given with :class:`PacedAccept` (see the
    module docstring); with a ``board``, this worker's load published on it (``occupancy``:
    how full its fullest limit is, 0 to 1; ``streams``: its streams in flight)."""

    _accepting: list[PacedAccept]
    _publisher: LoadPublisher | None

    def __init__(
        self,
        config: uvicorn.Config,
        board: LoadBoard | None = None,
        occupancy: Callable[[], float] = lambda: 0.0,
        streams: Callable[[], int] = lambda: 0,
    ) -> None:
        super().__init__(config)
        self._board = board
        self._occupancy = occupancy
        self._streams = streams

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._accepting = []
        self._publisher = None
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

        if self._board is not None:
            self._publisher = LoadPublisher(
                loop, self._board, self._occupancy, streams=self._streams
            )
        self._accepting = [PacedAccept(loop, sock, factory, self._board) for sock in sockets or []]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._publisher is not None:
            self._publisher.close()
        for accepting in self._accepting:
            accepting.close()
        await super().shutdown(sockets=sockets)
