"""The upstream connection pool under httpx (``providers._pool``), against a real loopback
server: keep-alive reuse, coalescing, back-pressure, hang-ups, timeouts, broken responses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from providers._pool import StreamingTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback HTTP/1.1 server whose answers the test writes by hand."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.connections = 0
        self.requests = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                self.requests += 1
                await self.answer(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(answer: Handler) -> AsyncIterator[Server]:
    server = Server(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()


def client(read: float = 2.0, connections: int = 4) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        transport=StreamingTransport(limits=limits),
        timeout=httpx.Timeout(connect=2.0, read=read, write=2.0, pool=2.0),
    )


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_sized_and_chunked_bodies_and_keep_alive_reuse() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
        HEAD + chunked(b"wor", b"ld"),
    ]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answers[(server.requests - 1) % 2])
        await writer.drain()

    async with serving(answer) as server, client() as c:
        url = f"http://127.0.0.1:{server.port}/x"
        first = await c.post(url, json={"a": 1})
        second = await c.post(url, content=b"body")
        third = await c.get(url)
    assert (first.status_code, first.content, first.headers["x-a"]) == (200, b"hello", "1")
    assert second.content == b"world"
    assert third.content == b"hello"
    assert server.requests == 3
    assert server.connections == 1  # one keep-alive connection served all three


async def test_chunks_that_have_arrived_are_handed_over_together() -> None:
    release = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + b"".join(b"%x\r\n%s\r\n" % (2, b"ab") for _ in range(50)))
        await writer.drain()
        await release.wait()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with (
        serving(answer) as server,
        client() as c,
        c.stream("POST", f"http://127.0.0.1:{server.port}/x") as response,
    ):
        await asyncio.sleep(0.05)  # all 50 chunks are in the socket by now
        stream = response.aiter_raw()
        first = await anext(stream)
        release.set()
        rest = b"".join([part async for part in stream])
    assert first == b"ab" * 50  # one piece, not fifty
    assert rest == b""


async def test_a_slow_reader_gets_the_whole_body_intact() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: well over the pool's read-ahead

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    async with serving(answer) as server, client() as c:
        received = bytearray()
        async with c.stream("GET", f"http://127.0.0.1:{server.port}/x") as response:
            async for part in response.aiter_raw():
                received += part
                await asyncio.sleep(0.001)
    assert bytes(received) == body


async def test_closing_mid_body_closes_the_connection_and_frees_the_slot() -> None:
    closed = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + b"5\r\nfirst\r\n")
        await writer.drain()
        if server.requests == 1:
            await reader.read()  # b"" once the client has closed the connection
            closed.set()
        else:
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with serving(answer) as server, client(connections=1) as c:
        url = f"http://127.0.0.1:{server.port}/x"
        async with c.stream("GET", url) as response:
            assert await anext(response.aiter_raw()) == b"first"
        await asyncio.wait_for(closed.wait(), 1.0)
        # The only slot is free again: a second request goes through on a new connection.
        again = await asyncio.wait_for(c.get(url), 2.0)
    assert again.content == b"first"
    assert server.connections == 2


async def test_read_timeout_and_connect_errors_are_httpx_errors() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with serving(stall) as server, client(read=0.2) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.get(f"http://127.0.0.1:{server.port}/x")
    async with client() as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(f"http://127.0.0.1:{server.port}/x")  # nobody listens any more


async def test_a_server_that_hangs_up_mid_body_is_a_read_error() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + b"5\r\nfirst\r\n")
        await writer.drain()
        writer.close()

    async with serving(answer) as server, client() as c:
        with pytest.raises(httpx.ReadError):
            await c.get(f"http://127.0.0.1:{server.port}/x")


async def test_a_malformed_response_is_a_protocol_error() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        await writer.drain()

    async with serving(answer) as server, client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get(f"http://127.0.0.1:{server.port}/x")


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # closes after answering, without saying so

    async with serving(answer) as server, client() as c:
        url = f"http://127.0.0.1:{server.port}/x"
        assert (await c.get(url)).content == b"ok"
        await asyncio.sleep(0.05)
        assert (await c.get(url)).content == b"ok"
    assert server.connections == 2
