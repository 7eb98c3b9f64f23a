"""The upstream transport under httpx (``providers._pool``), against a real loopback server:
keep-alive reuse, coalescing, back-pressure, hang-ups, timeouts, broken and hostile responses,
and TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import trustme

from providers import _pool
from providers._http import JSONPosts
from providers._pool import MAX_HEAD_BYTES, MAX_HEADERS, StreamingTransport
from tests.support import eventually

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback HTTP/1.1 server whose answers the test writes by hand."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.connections = 0
        self.requests = 0
        self.port = 0
        self.open: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open.add(writer)
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
            self.open.discard(writer)
            writer.close()


@asynccontextmanager
async def serving(answer: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()
        for writer in list(server.open):  # handlers still reading end at EOF, not cancelled
            writer.transport.abort()
        await eventually(lambda: not server.open)


def client(
    read: float = 2.0,
    connections: int = 4,
    pool: float = 2.0,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        transport=StreamingTransport(limits=limits, verify=verify),
        timeout=httpx.Timeout(connect=2.0, read=read, write=2.0, pool=pool),
    )


def transport_of(c: httpx.AsyncClient) -> StreamingTransport:
    transport = c._transport
    assert isinstance(transport, StreamingTransport)
    return transport


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
        # All 50 chunks have arrived (and wait, unread, in the transport) before the first read.
        assert await eventually(lambda: transport_of(c).buffered == 100, seconds=10)
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
        await reader.read()  # never answers; returns when the connection is gone

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
        with pytest.raises(httpx.ReadError, match="closed mid-response"):
            await c.get(f"http://127.0.0.1:{server.port}/x")


async def test_a_server_that_hangs_up_before_answering_says_so() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()  # the request was read: hang up without a word

    async with serving(answer) as server, client() as c:
        with pytest.raises(httpx.ReadError, match="closed before any response"):
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
        # The server's close has reached the pool: the idle connection is known to be gone.
        assert await eventually(lambda: transport_of(c).connections == 0, seconds=10)
        assert (await c.get(url)).content == b"ok"
    assert server.connections == 2


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


async def test_https_through_the_transport(ca: trustme.CA) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + chunked(b"secure ", b"audio"))
        await writer.drain()

    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    async with serving(answer, tls=tls_server_context(ca)) as server, client(verify=trusted) as c:
        url = f"https://127.0.0.1:{server.port}/x"
        first = await c.post(url, json={"a": 1})
        second = await c.post(url, json={"a": 2})
    assert (first.content, second.content) == (b"secure audio", b"secure audio")
    assert server.connections == 1  # the TLS connection was kept alive and reused


async def test_an_untrusted_certificate_is_a_connect_error(ca: trustme.CA) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
        await writer.drain()

    async with serving(answer, tls=tls_server_context(ca)) as server, client() as c:
        with pytest.raises(httpx.ConnectError) as caught:
            await c.get(f"https://127.0.0.1:{server.port}/x")  # the certifi bundle, not our CA
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert server.requests == 0


def test_the_transport_is_httpx_public_interface_with_httpx_tls_context() -> None:
    transport = StreamingTransport(verify=False)
    assert isinstance(transport, httpx.AsyncBaseTransport)
    assert not isinstance(transport, httpx.AsyncHTTPTransport)  # no httpcore pool beneath
    context = transport._ssl_context
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname


# ------------------------------------------------------------------ hostile upstreams


async def test_an_endless_response_head_is_refused() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
        for _ in range(MAX_HEAD_BYTES // 1024 + 8):  # one header value that never ends
            writer.write(b"a" * 1024)
            await writer.drain()
        await reader.read()

    async with serving(answer) as server, client() as c:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await c.get(f"http://127.0.0.1:{server.port}/x")
    assert f"over {MAX_HEAD_BYTES} bytes" in str(caught.value)


async def test_too_many_response_headers_are_refused() -> None:
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 0\r\n\r\n")
        await writer.drain()

    async with serving(answer) as server, client() as c:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await c.get(f"http://127.0.0.1:{server.port}/x")
    assert f"more than {MAX_HEADERS}" in str(caught.value)


async def test_a_body_the_consumer_does_not_read_is_held_back_at_the_server() -> None:
    body = b"\x01" * (32 * 1024 * 1024)  # more than any kernel buffers between the two
    held_back = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        if writer.transport.get_write_buffer_size() > 0:
            held_back.set()
        await writer.drain()

    async with (
        serving(answer) as server,
        client() as c,
        c.stream("GET", f"http://127.0.0.1:{server.port}/x") as response,
    ):
        transport = transport_of(c)
        # Reading pauses in the very callback that crosses the high-water mark, so once the
        # transport holds more than that, it cannot grow any further until the consumer reads.
        assert await eventually(lambda: transport.buffered > _pool._HIGH_WATER, seconds=10)
        assert transport.buffered <= _pool._HIGH_WATER + 512 * 1024
        await asyncio.wait_for(held_back.wait(), 10)  # most of the body still at the server
        received = b"".join([part async for part in response.aiter_raw()])
    assert received == body


async def test_a_header_with_a_line_break_is_never_sent() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with serving(answer) as server, client() as c:
        url = f"http://127.0.0.1:{server.port}/x"
        for value in ("a\r\nX-Injected: 1", "a\nb", "a\x00b"):
            with pytest.raises(httpx.LocalProtocolError):
                await c.get(url, headers={"X-Tenant": value})
        assert (await c.get(url)).status_code == 200  # the slot was given back each time
    assert server.requests == 1


async def test_a_body_delimited_by_the_close_is_read_to_the_end() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of ")
        await writer.drain()
        writer.write(b"it")
        writer.close()

    async with serving(answer) as server, client() as c:
        response = await c.get(f"http://127.0.0.1:{server.port}/x")
        assert response.content == b"all of it"
        assert transport_of(c).connections == 0  # such a connection is never reused


async def test_an_interim_response_is_skipped() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: 1\r\n\r\nfinal"
        )
        await writer.drain()

    async with serving(answer) as server, client() as c:
        response = await c.get(f"http://127.0.0.1:{server.port}/x")
    assert (response.status_code, response.content) == (200, b"final")
    assert "link" not in response.headers and response.headers["x-final"] == "1"


async def test_data_after_the_response_is_not_taken_for_the_next_one() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"
        )
        await writer.drain()

    async with serving(answer) as server, client() as c:
        url = f"http://127.0.0.1:{server.port}/x"
        assert (await c.get(url)).content == b"ok"
        assert (await c.get(url)).content == b"ok"  # not "stale"
    assert server.connections == 2


async def test_a_full_pool_is_a_pool_timeout_with_the_request_attached() -> None:
    release = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + b"2\r\nok\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with serving(answer) as server, client(connections=1, pool=0.1) as c:
        url = f"http://127.0.0.1:{server.port}/x"
        async with c.stream("GET", url):
            with pytest.raises(httpx.PoolTimeout) as caught:
                await c.get(url + "?second")
        release.set()
    assert caught.value.request.url.query == b"second"


async def test_the_read_timeout_counts_from_the_last_data_not_the_first() -> None:
    # A body trickling well within the read timeout is read whole however long it takes;
    # once it goes silent for longer, the read times out.
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD)
        for _ in range(15):  # 1.5 s in all, at most 0.1 s apart
            writer.write(b"5\r\nchunk\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
        await reader.read()  # then nothing more

    async with serving(trickle) as server, client(read=1.0) as c:
        received = b""
        async with c.stream("GET", f"http://127.0.0.1:{server.port}/x") as response:
            with pytest.raises(httpx.ReadTimeout):
                async for data in response.aiter_raw():
                    received += data
        assert received == b"chunk" * 15


async def test_a_shorter_read_timeout_on_a_reused_connection_is_kept() -> None:
    # The first answer leaves its connection with a read timeout of 30 s in force; the next
    # request on that connection asks 0.3 s, and its silent upstream is given up after that.
    async def first_then_silence(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if server.requests == 1:
            writer.write(HEAD + b"5\r\nfirst\r\n0\r\n\r\n")
            await writer.drain()
        # the second request is never answered (the server waits for the next one)

    async with serving(first_then_silence) as server, client(read=30.0, connections=1) as c:
        url = f"http://127.0.0.1:{server.port}/x"
        assert (await c.get(url)).content == b"first"
        short = httpx.Timeout(connect=2.0, read=0.3, write=2.0, pool=2.0)
        with pytest.raises(httpx.ReadTimeout):
            # Far under the 30 s of the first request, far over the 0.3 s asked.
            await asyncio.wait_for(c.get(url, timeout=short), 10.0)
        assert server.connections == 1  # the same connection, reused


async def test_requests_go_out_as_written_sized_or_chunked() -> None:
    """What the upstream receives: the head as the request's headers say, then the body, sized
    when the request has it whole, chunked when it is a stream."""
    received: list[bytes] = []

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            body = await reader.readuntil(b"0\r\n\r\n")
        else:
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        received.append(head + body)
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def pieces() -> AsyncIterator[bytes]:
        yield b"spoken "
        yield b"text"

    listener = await asyncio.start_server(keep, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with client() as c:
            url = f"http://127.0.0.1:{port}/say?x=1"
            sized = await c.post(url, content=b'{"Text":"hi"}', headers={"X-Tenant": "t1"})
            streamed = await c.post(url, content=pieces())
    finally:
        listener.close()
        await listener.wait_closed()
    assert sized.status_code == streamed.status_code == 204
    assert received[0] == (
        b"POST /say?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: */*\r\n"
        b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
        b"User-Agent: python-httpx/%s\r\nX-Tenant: t1\r\nContent-Length: 13\r\n\r\n"
        b'{"Text":"hi"}' % (port, httpx.__version__.encode())
    )
    assert received[1].endswith(b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"spoken text"))


async def test_a_prepared_head_goes_out_only_for_the_request_as_it_was_built() -> None:
    """A request whose builder made its head ahead (``JSONPosts``) goes out with that head;
    one changed after (a header added, as an authentication flow or an event hook adds one,
    or a header's value replaced) goes out as its headers then say."""
    received: list[bytes] = []
    closed: list[bool] = []

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        received.append(head + await reader.readexactly(length))
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.append(True)

    listener = await asyncio.start_server(keep, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    url = httpx.URL(f"http://127.0.0.1:{port}/say")
    try:
        async with client() as c:
            posts = JSONPosts(c, url, {"X-Tenant": "t1"})
            as_built = posts.build({"Text": "hi"}, "req-1")
            assert isinstance(as_built.extensions[_pool.PREPARED_EXTENSION], _pool.PreparedHead)
            added = posts.build({"Text": "hi"}, "req-2")
            added.headers["Authorization"] = "Bearer s3cret"
            replaced = posts.build({"Text": "hi"}, "req-3")
            replaced.headers["X-Tenant"] = "t2"
            for request in (as_built, added, replaced):
                response = await c.send(request)
                assert response.status_code == 204
        await eventually(lambda: len(closed) == 3)
    finally:
        listener.close()
        await listener.wait_closed()
    heads = [r.split(b"\r\n\r\n")[0] for r in received]
    assert heads[0] == _pool._request_head(as_built).rstrip(b"\r\n")
    assert b"\r\nX-Request-Id: req-1\r\n" in heads[0] and b"Authorization" not in heads[0]
    assert b"\r\nAuthorization: Bearer s3cret" in heads[1]
    assert b"\r\nX-Tenant: t2\r\n" in heads[2] and b"X-Tenant: t1" not in heads[2]
    assert all(r.endswith(b'{"Text":"hi"}') for r in received)


def test_raw_headers_read_as_httpx_headers_made_from_the_same_pairs() -> None:
    # A response's and a request's headers are made from byte pairs without httpx's checks:
    # every lookup must read as httpx's own Headers of the same pairs, a non-ASCII value too.
    pairs = [
        (b"Content-Type", b"audio/pcm; rate=24000"),
        (b"X-Sample-Rate", b"24000"),
        (b"set-cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"X-Voice", "Zoë".encode()),
    ]
    raw, made = _pool.RawHeaders(pairs), httpx.Headers(pairs)
    assert raw == made
    assert raw.raw == made.raw == pairs
    assert raw.multi_items() == made.multi_items()
    assert raw["content-type"] == made["CONTENT-TYPE"] == "audio/pcm; rate=24000"
    assert raw.get_list("set-cookie") == made.get_list("set-cookie") == ["a=1", "b=2"]
    assert raw["x-voice"] == made["x-voice"] == "Zoë"
    assert raw.encoding == made.encoding == "utf-8"
    assert raw.get("content-encoding") is None
    response = httpx.Response(200, headers=raw)
    assert response.headers.raw == pairs and response.headers["x-sample-rate"] == "24000"
    latin = _pool.RawHeaders([(b"X-Name", "café".encode("latin-1"))])
    assert latin["x-name"] == httpx.Headers([(b"X-Name", "café".encode("latin-1"))])["x-name"]


@pytest.mark.parametrize(
    "pairs",
    [
        [
            (b"Content-Type", b"audio/pcm"),
            (b"X-A", b"1"),
            (b"x-a", b"2"),
            (b"X-Sample-Rate", b"8000"),
        ],
        [(b"Content-Type", b"audio/pcm"), (b"X-Voice", "Zoë".encode())],
        [(b"X-Name", "café".encode("latin-1")), (b"x-name", b"plain")],
        [],
    ],
)
def test_raw_headers_look_up_as_httpx_headers_do(pairs: list[tuple[bytes, bytes]]) -> None:
    # Their own lookup (no KeyError for an absent header) and their own work-out of the text
    # encoding read what httpx's own do, header by header.
    made = httpx.Headers(pairs)
    for name in ("content-type", "Content-Type", "x-a", "X-A", "x-voice", "x-name", "absent"):
        raw = _pool.RawHeaders(pairs)  # a fresh one each time: the encoding worked out anew
        assert raw.get(name) == made.get(name)
        assert raw.get(name, "fallback") == made.get(name, "fallback")
        assert (name in raw) == (name in made)
        assert raw.encoding == made.encoding


async def test_a_response_of_the_pool_reads_as_an_httpx_response() -> None:
    pairs = [(b"Content-Type", b"audio/pcm"), (b"X-Sample-Rate", b"24000")]
    stream = httpx.ByteStream(b"\x01\x00" * 4)
    lean = _pool._PoolResponse(200, _pool.RawHeaders(pairs), stream, {"http_version": b"HTTP/1.1"})  # type: ignore[arg-type]
    made = httpx.Response(
        200,
        headers=pairs,
        stream=httpx.ByteStream(b"\x01\x00" * 4),
        extensions={"http_version": b"HTTP/1.1"},
    )
    for response in (lean, made):
        response.request = httpx.Request("POST", "http://upstream.test/tts")
    assert (lean.status_code, lean.reason_phrase, lean.http_version, lean.is_success) == (
        made.status_code,
        made.reason_phrase,
        made.http_version,
        made.is_success,
    )
    assert lean.headers.raw == made.headers.raw and lean.headers["x-sample-rate"] == "24000"
    assert (lean.is_closed, lean.is_stream_consumed, lean.history, lean.next_request) == (
        made.is_closed,
        made.is_stream_consumed,
        made.history,
        made.next_request,
    )
    assert await lean.aread() == await made.aread() == b"\x01\x00" * 4
    assert lean.num_bytes_downloaded == made.num_bytes_downloaded == 8
    await lean.aclose()
    assert lean.is_closed
