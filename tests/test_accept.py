"""Accepting a shared listening socket a few connections at a time (``gateway.http1.accept``):
each turn of the loop takes at most ``ACCEPTS_PER_TURN`` of the connections waiting, each
served by the protocol it is given; what is not taken stays queued for another worker, also
once this one has stopped accepting; a process out of descriptors pauses accepting and then
takes up the queue again; a connection that failed before it was taken is passed over, and a
listening socket that fails stops this worker's accepting at once (not an error every turn).
With a load board, the workers fill in order: a new connection is taken at once by the worker
whose turn it is, and by another only once it has waited the overflow wait there.
The supervisor's workers serve through it (``tests/test_workers.py``,
``tests/test_reload_workers.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from gateway.http1 import accept
from gateway.http1.accept import (
    ACCEPT_CPU_SECONDS,
    ACCEPTS_PER_TURN,
    FILL_CPU,
    FILL_OCCUPANCY,
    LOAD_SECONDS,
    LOAD_SLOT,
    SHED_AFTER,
    SHED_LOAD,
    SHED_MARGIN,
    SHED_PER_PERIOD,
    SHEDDING,
    STALE_SECONDS,
    LoadBoard,
    LoadPublisher,
    PacedAccept,
)
from tests.served import until


class Echo(asyncio.Protocol):
    """Echoes each connection's bytes back; the connections it was made for are counted."""

    made: list[Echo]

    def __init__(self, made: list[Echo]) -> None:
        self.made = made
        made.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock
    finally:
        sock.close()


def accepting_on(sock: socket.socket) -> tuple[PacedAccept, list[Echo]]:
    """Accepting ``sock`` on the running loop, and the protocols it makes (one a connection)."""
    made: list[Echo] = []
    return PacedAccept(asyncio.get_running_loop(), sock, lambda: Echo(made)), made


@contextlib.contextmanager
def closed_after(*things: PacedAccept | socket.socket) -> Iterator[None]:
    """Close every one of ``things`` after the block (accepting first, then the sockets)."""
    try:
        yield
    finally:
        for thing in things:
            thing.close()


def queued(sock: socket.socket, count: int) -> list[socket.socket]:
    """``count`` client connections to ``sock``, complete and waiting in its queue."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(sock.getsockname(), timeout=5)
        clients.append(client)
    return clients


async def echoed(client: socket.socket, payload: bytes) -> bytes:
    """``payload`` sent on ``client`` and what comes back (read off the loop)."""

    def exchange() -> bytes:
        client.sendall(payload)
        return client.recv(len(payload))

    return await asyncio.to_thread(exchange)


async def test_each_turn_takes_at_most_its_share_and_serves_what_it_took(
    listening: socket.socket,
) -> None:
    clients = queued(listening, 2 * ACCEPTS_PER_TURN + 1)
    accepting, made = accepting_on(listening)
    with closed_after(accepting, *clients):
        # One turn is one call of the socket's reader: the loop's, made here by hand.
        asyncio.get_running_loop().remove_reader(listening.fileno())
        takes = []
        for _ in range(4):
            before = len(made)
            accepting._accept()
            assert await until(lambda: not accepting._tasks)  # each connection's transport made
            takes.append(len(made) - before)
        assert takes == [ACCEPTS_PER_TURN, ACCEPTS_PER_TURN, 1, 0]
        assert await until(lambda: all(hasattr(echo, "transport") for echo in made))
        for index, client in enumerate(clients):
            payload = b"hello %d" % index
            assert await echoed(client, payload) == payload


async def test_the_loop_takes_up_a_queue_longer_than_a_turn(listening: socket.socket) -> None:
    accepting, made = accepting_on(listening)
    clients = queued(listening, 5 * ACCEPTS_PER_TURN)
    with closed_after(accepting, *clients):
        assert await until(lambda: len(made) == len(clients))
        assert await echoed(clients[-1], b"last") == b"last"


async def test_what_a_stopped_worker_left_queued_is_taken_by_another(
    listening: socket.socket,
) -> None:
    stopped, first = accepting_on(listening)
    stopped.close()
    stopped.close()  # twice is once
    clients = queued(listening, 3)
    accepting, other = accepting_on(listening)
    with closed_after(accepting, *clients):
        assert await until(lambda: len(other) == 3)
        assert first == []
        assert await echoed(clients[0], b"served") == b"served"


class Failing(socket.socket):
    """A listening socket whose first ``failures`` accepts fail with ``error`` (by default as a
    process out of file descriptors fails: EMFILE)."""

    failures = 1
    error = errno.EMFILE

    def accept(self) -> tuple[socket.socket, object]:
        if self.failures:
            self.failures -= 1
            raise OSError(self.error, os.strerror(self.error))
        return super().accept()


def failing(error: int, failures: int = 1) -> Failing:
    sock = Failing(socket.AF_INET, socket.SOCK_STREAM)
    sock.error, sock.failures = error, failures
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


async def test_out_of_descriptors_accepting_pauses_then_takes_up_the_queue(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(accept, "_RESOURCE_PAUSE_SECONDS", 0.05)
    sock = failing(errno.EMFILE)
    clients = queued(sock, 2)
    accepting, made = accepting_on(sock)
    with closed_after(accepting, sock, *clients):
        assert await until(lambda: len(made) == 2)
        assert sock.failures == 0
        assert "accepting paused for 0.05 s" in caplog.text
        assert await echoed(clients[1], b"after") == b"after"


async def test_closed_while_paused_it_does_not_start_again(listening: socket.socket) -> None:
    accepting, made = accepting_on(listening)
    accepting._pause()
    resume = accepting._resume
    assert resume is not None
    accepting.close()
    assert resume.cancelled()
    # Had the pause's timer fired all the same, it would not take the socket back from the
    # worker reading it now (a second reader on one descriptor replaces the first).
    taker, other = accepting_on(listening)
    accepting._resumed()
    clients = queued(listening, 2)
    with closed_after(taker, *clients):
        assert await until(lambda: len(other) == 2)
        assert made == []


async def test_a_connection_failed_before_it_was_taken_is_passed_over_in_the_same_turn() -> None:
    # Linux's accept() passes on a pending connection's network error (EPROTO here): the next
    # connection waiting is taken in the same turn, and accepting goes on.
    sock = failing(errno.EPROTO)
    clients = queued(sock, 1)
    accepting, made = accepting_on(sock)
    with closed_after(accepting, sock, *clients):
        asyncio.get_running_loop().remove_reader(sock.fileno())
        accepting._accept()
        assert sock.failures == 0 and len(accepting._tasks) == 1
        assert await until(lambda: len(made) == 1 and hasattr(made[0], "transport"))
        assert await echoed(clients[0], b"next") == b"next"
        assert not accepting.closed


async def test_a_listening_socket_that_fails_stops_this_workers_accepting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sock = failing(errno.EINVAL, failures=100)
    accepting, made = accepting_on(sock)
    clients = queued(sock, 1)
    with closed_after(sock, *clients):
        assert await until(lambda: accepting.closed)
        assert "accepting stopped" in caplog.text
        assert sock.failures == 99  # tried once, not every turn after
        assert made == []


def boards(workers: int) -> list[LoadBoard]:
    """One board a worker, over one set of slots (as the supervisor's workers share it)."""
    slots = [0.0] * (LOAD_SLOT * workers)
    return [LoadBoard(slots, index) for index in range(workers)]


@pytest.mark.parametrize(
    ("loads", "first"),
    [
        ([(0.1, 0.0), (0.0, 0.0), (0.0, 0.0)], 0),  # the first fills first
        ([(FILL_CPU, 0.0), (0.2, 0.0), (0.0, 0.0)], 1),  # its CPU at the mark: the next
        ([(0.1, FILL_OCCUPANCY), (0.2, 0.1), (0.0, 0.0)], 1),  # a limit half full: the next
        ([(0.9, 0.0), (0.7, 0.2), (0.1, 0.0)], 2),
        ([(0.9, 0.0), (0.6, 0.2), (0.8, 0.5)], 1),  # every one past a mark: the lightest
        ([(0.6, 0.9), (0.8, 0.1), (0.7, 0.0)], 2),  # a full limit counts as load
    ],
)
def test_the_workers_fill_in_order_then_the_lightest_takes(
    loads: list[tuple[float, float]], first: int
) -> None:
    now = time.monotonic()
    board = boards(len(loads))
    for worker, (cpu, occupancy) in zip(board, loads, strict=True):
        worker.publish(cpu, occupancy, now)
    assert {worker.first(now) for worker in board} == {first}
    assert [worker.mine() for worker in board] == [i == first for i in range(len(loads))]


@pytest.mark.parametrize(
    ("loads", "callers", "shedding"),
    [
        ([(0.9, 0.0), (0.1, 0.0)], 4, [True, False]),  # the first full, the second whose turn
        ([(0.2, SHED_LOAD), (0.1, 0.0)], 4, [True, False]),  # a limit of the first's as full
        ([(0.4, 0.0), (0.1, 0.0)], 4, [False, False]),  # the first's turn: nobody sheds
        # Past the fill marks but with room on its core and its limits: it keeps them.
        ([(SHED_LOAD - 0.05, 0.6), (0.0, 0.0)], 4, [False, False]),
        ([(0.95, 0.0), (0.95 - SHED_MARGIN / 2, 0.0)], 4, [False, False]),  # within the margin
        ([(0.9, 0.0), (0.3, 0.0), (0.95, 0.0)], 4, [True, False, True]),
        # Its core full with one caller: moved, that caller's load would only change places.
        ([(0.95, 0.0), (0.0, 0.0)], 1, [False, False]),
        # Two: one of them moved leaves it the busier, so it goes...
        ([(0.9, 0.0), (0.1, 0.0)], 2, [True, False]),
        # ... unless the other worker would then be the busier (0.5 + 0.45 > 0.9 - 0.45).
        ([(0.9, 0.0), (0.5, 0.0)], 2, [False, False]),
        # A limit nearly full: its one caller is refused here and served there.
        ([(0.2, SHED_LOAD), (0.1, 0.0)], 1, [True, False]),
    ],
)
def test_a_worker_well_past_the_one_whose_turn_it_is_sheds(
    loads: list[tuple[float, float]], callers: int, shedding: list[bool]
) -> None:
    now = time.monotonic()
    board = boards(len(loads))
    for worker, (cpu, occupancy) in zip(board, loads, strict=True):
        worker.publish(cpu, occupancy, now)
    assert [worker.sheds(now, callers) for worker in board] == shedding


class _Connection:
    shed_period = -1


def test_shedding_counts_the_connections_that_started_answers_once_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(SHEDDING, "allowance", 1)
    first, second = _Connection(), _Connection()
    SHEDDING.callers()  # a period of its own
    assert SHEDDING.take(first)  # the one connection it was to shed
    assert not SHEDDING.take(first) and not SHEDDING.take(second)
    assert not SHEDDING.take(second)
    assert SHEDDING.callers() == 2
    assert not SHEDDING.take(second)
    assert SHEDDING.callers() == 1  # a new period: each counted afresh
    assert SHEDDING.callers() == 0


async def test_the_publisher_sheds_a_lasting_load_and_clears_it_when_it_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(SHEDDING, "allowance", 0)
    first, second = boards(2)
    loads: Iterator[float] = iter([1.0])  # its fullest limit at each publication (then the last)
    occupancy = [0.0]
    cpu: Callable[[], float] = lambda: 0.0  # noqa: E731
    allowed: list[int] = []  # the allowance when each publication began

    def publication() -> float:
        second.publish(0.0, 0.0, time.monotonic())  # the other worker light, and serving
        allowed.append(SHEDDING.allowance)
        occupancy[0] = next(loads, occupancy[0])
        return occupancy[0]

    streams = [0]  # its streams in flight
    publisher = LoadPublisher(
        asyncio.get_running_loop(),
        first,
        publication,
        cpu=lambda: cpu(),
        streams=lambda: streams[0],
    )
    try:
        # Its streams' limit full and the other worker light: it sheds, a few a period, from
        # the SHED_AFTER-th publication in a row on (the first is the publisher's start).
        assert await until(lambda: SHEDDING.allowance == SHED_PER_PERIOD)
        assert allowed[: SHED_AFTER + 1] == [0] * (SHED_AFTER + 1), allowed
        assert first.first(time.monotonic()) == 1
        # Full at every other publication only: never SHED_AFTER in a row, nothing shed (from
        # the first publication of these on, which finds what the last one before allowed).
        loads = itertools.cycle([0.0, 1.0])
        begun = len(allowed)
        assert await until(lambda: len(allowed) > begun + 10)
        assert allowed[begun + 1 : begun + 11] == [0] * 10, allowed
        # Its limits empty, but its CPU most of a core, for one caller (a stream in flight):
        # nothing to shed (moved, the caller would take that load with it).
        loads = iter([0.0])
        start = time.monotonic()
        cpu = lambda: 0.9 * (time.monotonic() - start)  # noqa: E731
        streams[0] = 1
        assert await until(lambda: first.first(time.monotonic()) == 1)
        begun = len(allowed)
        assert await until(lambda: len(allowed) > begun + SHED_AFTER + 5)
        assert allowed[begun + 1 :] == [0] * (len(allowed) - begun - 1), allowed
        # Two callers: one of them goes.
        streams[0] = 2
        assert await until(lambda: SHEDDING.allowance == SHED_PER_PERIOD)
        now = time.monotonic()
        assert first.sheds(now, 2) and not first.sheds(now, 1) and not second.sheds(now, 2)
        # Light again: its turn, nothing to shed.
        cpu = lambda: 0.0  # noqa: E731
        assert await until(lambda: first.first(time.monotonic()) == 0)
        assert await until(lambda: SHEDDING.allowance == 0)
        SHEDDING.allowance = 99
    finally:
        publisher.close()
    assert SHEDDING.allowance == 0 and first.first(time.monotonic()) == 1


def test_connections_taken_count_as_load_until_the_next_publication() -> None:
    now = time.monotonic()
    first, second = boards(2)
    first.publish(0.0, 0.0, now)
    second.publish(0.0, 0.0, now)
    taken = 0
    while first.first(now) == 0 and taken < 1000:
        first.took()
        taken += 1
    # Half a core's worth of new connections' first requests taken within the period.
    per_connection = ACCEPT_CPU_SECONDS / LOAD_SECONDS
    assert taken * per_connection == pytest.approx(FILL_CPU, abs=per_connection)
    assert second.first(now) == 1
    first.publish(0.1, 0.0, now)  # what it measured: its turn again
    assert second.first(now) == 0


def test_a_worker_gone_quiet_or_stopped_is_passed_over() -> None:
    now = time.monotonic()
    first, second, third = boards(3)
    first.publish(0.0, 0.0, now - STALE_SECONDS - 0.1)  # stuck, dead or not started yet
    second.publish(0.3, 0.0, now)
    third.publish(0.0, 0.0, now)
    assert third.first(now) == 1
    second.publish(0.9, 0.0, now)
    assert second.sheds(now, 2)  # busier than the third by more than the margin
    second.leave()  # stopping
    second.publish(0.1, 0.0, now)  # a late publication does not bring it back
    assert first.first(now) == 2
    assert not second.sheds(now, 2)  # nor does it shed any longer
    third.leave()
    assert first.first(now) is None  # nobody: whoever is woken takes it
    assert first.mine() and second.mine()


def test_a_board_needs_a_slot_for_its_worker() -> None:
    with pytest.raises(ValueError, match="no slot 2"):
        LoadBoard([0.0] * (2 * LOAD_SLOT), 2)
    with pytest.raises(ValueError):
        LoadBoard([0.0] * (2 * LOAD_SLOT + 1), 0)


@contextlib.contextmanager
def two_workers(
    sock: socket.socket,
) -> Iterator[tuple[list[LoadBoard], list[list[Echo]], list[PacedAccept]]]:
    """Two workers' accepting on one listening socket, each on a descriptor of its own (as two
    processes are), sharing one board, both published light: the boards, what each made, and
    the accepting."""
    loop = asyncio.get_running_loop()
    board = boards(2)
    for worker in board:
        worker.publish(0.0, 0.0, time.monotonic())
    dup = socket.socket(fileno=os.dup(sock.fileno()))
    made: list[list[Echo]] = [[], []]
    # The second registered first: woken together, its reader runs first, so that the first
    # worker takes a connection only because it is its turn.
    second = PacedAccept(loop, dup, lambda: Echo(made[1]), board[1])
    accepting = [PacedAccept(loop, sock, lambda: Echo(made[0]), board[0]), second]
    try:
        yield board, made, accepting
    finally:
        for each in accepting:
            each.close()
        dup.close()


@contextlib.contextmanager
def worker_threads(sock: socket.socket) -> Iterator[list[list[Echo]]]:
    """Two workers' accepting on one listening socket, each on its own event loop in its own
    thread and its own descriptor (woken together, as two processes are, and racing for each
    connection as they do), sharing one board, both published light: what each made."""
    board = boards(2)
    made: list[list[Echo]] = [[], []]
    loops, threads, accepting = [], [], []
    for index, worker in enumerate(board):
        worker.publish(0.0, 0.0, time.monotonic())
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        listened = socket.socket(fileno=os.dup(sock.fileno()))

        def begin(loop=loop, listened=listened, mine=made[index], worker=worker) -> PacedAccept:  # type: ignore[no-untyped-def]
            return PacedAccept(loop, listened, lambda: Echo(mine), worker)

        accepting.append((asyncio.run_coroutine_threadsafe(_call(begin), loop).result(5), listened))
        loops.append(loop)
        threads.append(thread)
    try:
        yield made
    finally:
        for loop, thread, (each, listened), mine in zip(
            loops, threads, accepting, made, strict=True
        ):
            asyncio.run_coroutine_threadsafe(_closed(each, mine), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
            listened.close()


async def _call(make: Callable[[], PacedAccept]) -> PacedAccept:
    return make()


async def _closed(accepting: PacedAccept, made: list[Echo]) -> None:
    """``accepting`` closed, and the connections it made, on their own loop."""
    accepting.close()
    await asyncio.gather(*accepting._tasks, return_exceptions=True)
    for echo in made:
        echo.transport.close()
    await asyncio.sleep(0.01)  # the transports' closing callbacks


async def test_new_connections_fill_the_first_worker_while_it_is_light(
    listening: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first worker given time enough to come round on a busy machine (threads of one
    # process also wait for its interpreter lock): which worker takes each connection is then
    # whose turn it is, not a race.
    monkeypatch.setattr(accept, "OVERFLOW_SECONDS", 0.1)
    with worker_threads(listening) as made:
        clients = []
        try:
            for count in range(1, 13):
                clients.append(socket.create_connection(listening.getsockname(), timeout=5))
                assert await until(lambda count=count: len(made[0]) + len(made[1]) == count)  # type: ignore[misc]
            assert (len(made[0]), len(made[1])) == (12, 0)
            assert await echoed(clients[-1], b"first") == b"first"
        finally:
            for client in clients:
                client.close()


async def test_once_the_first_is_loaded_the_next_worker_takes_at_once(
    listening: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An overflow wait far longer than the test: a connection the second worker takes within
    # it was taken at once, in its own turn.
    monkeypatch.setattr(accept, "OVERFLOW_SECONDS", 60.0)
    with two_workers(listening) as (board, made, accepting):
        board[0].publish(FILL_CPU + 0.1, 0.0, time.monotonic())
        clients = queued(listening, 3)
        with closed_after(*clients):
            assert await until(lambda: len(made[1]) == 3)
            assert made[0] == [] and accepting[0]._resume is not None  # waiting its turn
            assert await echoed(clients[0], b"second") == b"second"


async def test_what_the_worker_whose_turn_it_is_leaves_waiting_another_takes_after_the_wait(
    listening: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first worker's turn, but it does not come round (a long turn of its loop, here its
    # accepting stopped without leaving the board): the second takes the connection once it has
    # waited there the overflow wait, then the whole queue while it finds connections waiting.
    monkeypatch.setattr(accept, "OVERFLOW_SECONDS", 0.2)
    with two_workers(listening) as (_, made, accepting):
        asyncio.get_running_loop().remove_reader(listening.fileno())  # the first's accepting
        started = time.monotonic()
        clients = queued(listening, 2 * ACCEPTS_PER_TURN + 1)
        try:
            assert await until(lambda: len(made[1]) == len(clients))
            assert time.monotonic() - started >= 0.2
            assert made[0] == []
            assert await echoed(clients[-1], b"overflow") == b"overflow"
            # The queue emptied, the next connection waits for the first worker's turn again.
            assert await until(lambda: not accepting[1]._taking)
            clients.append(socket.create_connection(listening.getsockname(), timeout=5))
            assert await until(lambda: accepting[1]._resume is not None)
            assert len(made[1]) == len(clients) - 1
            assert await until(lambda: len(made[1]) == len(clients))
        finally:
            for client in clients:
                client.close()


async def test_a_burst_of_new_callers_is_shared_as_it_comes(listening: socket.socket) -> None:
    # Every connection waiting at once: the first worker takes them (a few a turn) until those
    # it took count for half a core, then the second worker's turn has come.
    with two_workers(listening) as (_, made, _):
        clients = queued(listening, 48)
        with closed_after(*clients):
            assert await until(lambda: len(made[0]) + len(made[1]) == len(clients))
            filled = FILL_CPU * LOAD_SECONDS / ACCEPT_CPU_SECONDS
            assert filled - 1 <= len(made[0]) and len(made[1]) > 0, [len(m) for m in made]
            assert await echoed(clients[-1], b"burst") == b"burst"
