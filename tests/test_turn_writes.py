"""A client connection's writes held for the event loop's turn (``gateway.http1.io``, over
``providers._turn``), on real loopback sockets: what the connections are given in one turn
leaves at its end, one send a connection, in order; writing still pauses at the high-water mark
in the step that crosses it; an answer's first bytes leave at once in a quiet turn, and in a
busy one with the rest, waiting no longer than ``HOLD_SECONDS``; a request to an upstream waits
for a long turn no longer than ``HOLD_SECONDS``; a connection that closes sends what it holds
first; work asked for after the turn's writes comes after them and the counts."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from gateway.http1.io import WRITE_HIGH_WATER, WRITE_LOW_WATER, ConnectionIO
from providers._pool import _Connection
from providers._turn import HOLD_SECONDS, TurnWrites

pytestmark = pytest.mark.asyncio

PATIENCE = 10.0


def run_past_the_bound() -> None:
    """Keep this step of the loop's turn busy until what is held has waited past
    ``HOLD_SECONDS`` (the turn runs long)."""
    until = time.perf_counter() + HOLD_SECONDS * 2
    while time.perf_counter() < until:
        pass


class Counting:
    """A transport that counts its sends and passes everything on to the real one."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.real = transport
        self.sends: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sends.append(bytes(data))
        self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Plain(ConnectionIO):
    """The byte side alone, on a real server socket."""

    made: asyncio.Queue[Plain]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER
        )
        self.counting = Counting(cast(asyncio.Transport, transport))
        self.transport = self.counting  # type: ignore[assignment]
        self.made.put_nowait(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    @property
    def sends(self) -> list[bytes]:
        return self.counting.sends


class Pair:
    """Server-side connections and the client sockets that opened them."""

    def __init__(self) -> None:
        self.made: asyncio.Queue[Plain] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> Plain:
            conn = Plain(loop)
            conn.made = self.made
            return conn

        self.server = await loop.create_server(factory, "127.0.0.1", 0)

    async def connect(self, rcvbuf: int | None = None) -> tuple[Plain, asyncio.StreamReader]:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        self.clients.append((reader, writer))
        conn = await asyncio.wait_for(self.made.get(), PATIENCE)
        return conn, reader

    async def close(self) -> None:
        for _, writer in self.clients:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = Pair()
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def test_the_writes_of_one_turn_leave_at_its_end_one_send_a_connection(pair: Pair) -> None:
    a, reader_a = await pair.connect()
    b, reader_b = await pair.connect()
    # One step of this task is one callback of the loop's turn.
    a.write(b"HTTP/1.1 200 OK\r\n\r\n")
    b.write(b"one,")
    a.write(b"audio,")
    b.write(b"two")
    a.write(b"end")
    assert a.sends == [] and b.sends == []  # held for the turn's end
    got_a = await asyncio.wait_for(reader_a.readexactly(28), PATIENCE)
    got_b = await asyncio.wait_for(reader_b.readexactly(7), PATIENCE)
    assert got_a == b"HTTP/1.1 200 OK\r\n\r\naudio,end"
    assert got_b == b"one,two"
    assert a.sends == [got_a] and b.sends == [got_b]


async def test_writing_pauses_in_the_step_that_crosses_the_high_water_mark(pair: Pair) -> None:
    # A caller that reads nothing, with small socket buffers: what is not taken stays with the
    # gateway, and a writer that heeds write_paused must see it turn in the same step.
    conn, _ = await pair.connect(rcvbuf=4096)
    raw = conn.counting.real.get_extra_info("socket")
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    piece = b"x" * 4096
    written = 0
    for _ in range(4096):  # 16 MiB, far past anything the socket buffers take
        if conn.write_paused:
            break
        conn.write(piece)
        written += len(piece)
    assert conn.write_paused, "writing never paused within the step"
    # What was accepted before pausing: the kernel's buffers plus the high-water mark, not the
    # writer's whole output.
    assert written <= 4 * 1024 * 1024
    assert conn.sends, "the write that crossed the mark was held"
    await asyncio.sleep(0)  # the turn ends: nothing more goes out than was written
    assert sum(map(len, conn.sends)) == written


async def test_an_answers_first_bytes_in_a_quiet_turn_leave_at_once(pair: Pair) -> None:
    # The task that writes them may go on converting the rest of a long first piece: what the
    # caller waits for does not wait for that. Counts held for the metrics do not make the
    # turn a busy one, and are written at the turn's end, not before the first bytes.
    class Counts:
        sent = 0

        def send_held(self) -> None:
            self.sent += 1

    first, reader_first = await pair.connect()
    counts = Counts()
    TurnWrites.of(asyncio.get_running_loop()).hold(counts, socket=False)
    first.write_first(b"HTTP/1.1 200 OK\r\n\r\naudio")
    assert first.sends == [b"HTTP/1.1 200 OK\r\n\r\naudio"]
    assert counts.sent == 0
    got = await asyncio.wait_for(reader_first.readexactly(24), PATIENCE)
    assert got == b"HTTP/1.1 200 OK\r\n\r\naudio"
    assert counts.sent == 1  # at the turn's end
    # What is written after them in the turn is held again.
    first.write(b"more")
    assert first.sends == [b"HTTP/1.1 200 OK\r\n\r\naudio"]
    await asyncio.sleep(0)
    assert first.sends[1:] == [b"more"]


async def test_the_counts_held_in_a_turn_are_written_after_every_sockets_writes(
    pair: Pair,
) -> None:
    # Counts held first in the turn (a request's metrics, before its upstream request or its
    # answer's bytes are written) still wait for the sockets' writes.
    conn, reader = await pair.connect()
    seen: list[list[bytes]] = []

    class Counts:
        def send_held(self) -> None:
            seen.append(list(conn.sends))

    TurnWrites.of(asyncio.get_running_loop()).hold(Counts(), socket=False)
    conn.write(b"audio")
    assert conn.sends == [] and seen == []
    await asyncio.sleep(0)
    assert seen == [[b"audio"]]
    assert await asyncio.wait_for(reader.readexactly(5), PATIENCE) == b"audio"


async def test_work_after_the_turns_writes_is_called_once_they_and_the_counts_have_gone(
    pair: Pair,
) -> None:
    # Work asked for before anything is held in the turn (an attempt about to send its
    # upstream request) still waits for the sockets' writes and the counts made after it.
    conn, reader = await pair.connect()
    turn = TurnWrites.of(asyncio.get_running_loop())
    order: list[str] = []

    class Counts:
        def send_held(self) -> None:
            order.append(f"counts after {len(conn.sends)} send(s)")

    turn.after(lambda: order.append(f"work after {len(conn.sends)} send(s)"))
    turn.hold(Counts(), socket=False)
    conn.write(b"request")
    assert order == [] and conn.sends == []
    await asyncio.sleep(0)
    assert order == ["counts after 1 send(s)", "work after 1 send(s)"]
    assert await asyncio.wait_for(reader.readexactly(7), PATIENCE) == b"request"
    # Each turn's own: work asked for again is called at the next turn's end, once.
    turn.after(lambda: order.append("next turn"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order[2:] == ["next turn"]


async def test_an_answers_first_bytes_in_a_busy_turn_leave_with_the_rest(pair: Pair) -> None:
    # Other connections' writes held: the turn is serving many callers (a burst), and one send
    # at its end wakes each of them once.
    earlier, reader_earlier = await pair.connect()
    first, reader_first = await pair.connect()
    earlier.write(b"earlier")
    first.write_first(b"HTTP/1.1 200 OK\r\n\r\naudio")
    first.write(b",more")
    assert earlier.sends == [] and first.sends == []
    got = await asyncio.wait_for(reader_first.readexactly(29), PATIENCE)
    assert got == b"HTTP/1.1 200 OK\r\n\r\naudio,more"
    assert first.sends == [got]
    assert await asyncio.wait_for(reader_earlier.readexactly(7), PATIENCE) == b"earlier"
    assert earlier.sends == [b"earlier"]


async def test_an_answers_first_bytes_wait_for_a_long_turn_no_longer_than_the_bound(
    pair: Pair,
) -> None:
    earlier, _ = await pair.connect()
    first, reader_first = await pair.connect()
    earlier.write(b"earlier")
    run_past_the_bound()
    first.write_first(b"HTTP/1.1 200 OK\r\n\r\naudio")
    assert earlier.sends == [b"earlier"]
    assert first.sends == [b"HTTP/1.1 200 OK\r\n\r\naudio"]
    got = await asyncio.wait_for(reader_first.readexactly(24), PATIENCE)
    assert got == b"HTTP/1.1 200 OK\r\n\r\naudio"


async def test_held_first_bytes_leave_with_the_next_write_once_the_bound_has_passed(
    pair: Pair,
) -> None:
    # A long turn of callbacks that write (the relay of other streams' chunks) and urge nothing
    # themselves: the first bytes held in it do not wait for its end.
    earlier, _ = await pair.connect()
    first, reader_first = await pair.connect()
    later, _ = await pair.connect()
    earlier.write(b"earlier")
    first.write_first(b"HTTP/1.1 200 OK\r\n\r\naudio")
    assert first.sends == []  # a busy turn: held
    run_past_the_bound()
    later.write(b"chunk")
    assert earlier.sends == [b"earlier"]
    assert first.sends == [b"HTTP/1.1 200 OK\r\n\r\naudio"]
    assert later.sends == [b"chunk"]  # the write that found the bound passed left with them
    got = await asyncio.wait_for(reader_first.readexactly(24), PATIENCE)
    assert got == b"HTTP/1.1 200 OK\r\n\r\naudio"
    later.write(b",more")  # after the send, held again for the turn's end
    assert later.sends == [b"chunk"]
    await asyncio.sleep(0)
    assert later.sends == [b"chunk", b",more"]


async def test_a_connection_that_closes_sends_what_it_holds_first(pair: Pair) -> None:
    conn, reader = await pair.connect()
    conn.write(b"the last audio")
    conn.write(b" and the end")
    conn._close()
    assert await asyncio.wait_for(reader.read(), PATIENCE) == b"the last audio and the end"
    assert conn.sends == [b"the last audio and the end"]


async def test_an_aborted_connection_drops_what_it_holds(pair: Pair) -> None:
    conn, reader = await pair.connect()
    conn.write(b"never sent")
    conn._abort()
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), PATIENCE)
    await asyncio.sleep(0)  # the turn's end finds nothing to send
    assert conn.sends == []


class Upstream:
    """A loopback server that records what each connection sent, to its end."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.received.put_nowait(await reader.read())
        writer.close()

    async def connection(self) -> tuple[_Connection, Counting]:
        if self.server is None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        transport, conn = await loop.create_connection(
            lambda: _Connection(("http", "127.0.0.1", port)), "127.0.0.1", port
        )
        counting = Counting(transport)
        conn.transport = counting  # type: ignore[assignment]
        return conn, counting


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    try:
        yield up
    finally:
        if up.server is not None:
            up.server.close()
            await up.server.wait_closed()


async def test_requests_to_upstreams_leave_at_the_turns_end_or_with_a_late_first_byte(
    upstream: Upstream, pair: Pair
) -> None:
    (one, to_one), (two, to_two), (three, to_three) = [
        await upstream.connection() for _ in range(3)
    ]
    caller, reader = await pair.connect()
    one.send_request(b"GET /one HTTP/1.1\r\n\r\n")
    two.send_request(b"GET /two HTTP/1.1\r\n\r\n")
    assert to_one.sends == [] and to_two.sends == []
    await asyncio.sleep(0)  # the turn's end
    assert to_one.sends == [b"GET /one HTTP/1.1\r\n\r\n"] and to_two.sends == [
        b"GET /two HTTP/1.1\r\n\r\n"
    ]
    # A turn that runs long: the request made late in it (a caller waits for its answer)
    # takes what was held since its start with it, the caller's audio included.
    caller.write(b"audio")
    run_past_the_bound()
    three.send_request(b"GET /three HTTP/1.1\r\n\r\n")
    assert to_three.sends == [b"GET /three HTTP/1.1\r\n\r\n"] and caller.sends == [b"audio"]
    assert await asyncio.wait_for(reader.readexactly(5), PATIENCE) == b"audio"
    for conn in (one, two, three):
        conn.close()
    got = sorted([await asyncio.wait_for(upstream.received.get(), PATIENCE) for _ in range(3)])
    assert got == [
        b"GET /one HTTP/1.1\r\n\r\n",
        b"GET /three HTTP/1.1\r\n\r\n",
        b"GET /two HTTP/1.1\r\n\r\n",
    ]


async def test_a_request_given_up_within_its_turn_is_never_sent(upstream: Upstream) -> None:
    conn, counting = await upstream.connection()
    conn.send_request(b"POST /synthesize HTTP/1.1\r\n\r\n")
    conn.close()  # cancelled (a caller hung up) before the turn ended
    assert await asyncio.wait_for(upstream.received.get(), PATIENCE) == b""
    assert counting.sends == []


async def test_a_loop_that_is_done_with_is_not_kept_for_its_turns() -> None:
    # Every loop's turns are kept in a table keyed by the loop: that table must not keep the
    # loops (a process that runs one loop after another, as tests do).
    loop = asyncio.new_event_loop()
    TurnWrites.of(loop)
    gone = weakref.ref(loop)
    loop.close()
    del loop
    gc.collect()
    assert gone() is None
