"""Accepting a shared listening socket a few connections at a time (``gateway.http1.accept``):
each turn of the loop takes at most ``ACCEPTS_PER_TURN`` of the connections waiting, each
served by the protocol it is given; what is not taken stays queued for another worker, also
once this one has stopped accepting; a process out of descriptors pauses accepting and then
takes up the queue again; a connection that failed before it was taken is passed over, and a
listening socket that fails stops this worker's accepting at once (not an error every turn).
The supervisor's workers serve through it (``tests/test_workers.py``,
``tests/test_reload_workers.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Iterator

import pytest

from gateway.http1 import accept
from gateway.http1.accept import ACCEPTS_PER_TURN, PacedAccept
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
