"""The gateway's HTTP/1.1 connections, driven over real loopback sockets: deadlines on heads,
bodies and idle keep-alives, the connection cap, bounded heads, answers that end the exchange,
HTTP/1.0 framing, pipelining, Upgrade and Expect."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from starlette.types import Receive, Scope, Send

from gateway.app import create_app
from gateway.config import parse_config
from gateway.http1 import EXCHANGE_SCOPE_KEY, ConnectionLimits, TLSFiles
from gateway.http1.accept import SHEDDING
from gateway.http1.connection import HTTPProtocol
from tests.support import (
    Plan,
    ScriptedProvider,
    live_server,
    provider_block,
    scripted_config,
    tone,
)

CHUNK = tone(440, 0.02, 24000)
SYNTH = json.dumps({"Text": "Hello.", "SampleRate": 24000, "VoiceId": "a"}).encode()
#: Long enough never to fire in a test that is not about it, short enough to wait for when it is.
SHORT = 0.3
#: How long a test waits for the event that proves its point before failing.
PATIENCE = 10.0


@pytest.fixture
def plan() -> Plan:
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans["pa"] = Plan([[CHUNK, CHUNK]])
    return ScriptedProvider.plans["pa"]


def gateway_app() -> Any:
    return create_app(
        parse_config(scripted_config({"a": {"provider": "pa"}}, {"pa": provider_block()}))
    )


@pytest.fixture
async def gateway(plan: Plan) -> AsyncIterator[tuple[str, int]]:
    limits = ConnectionLimits(header=SHORT, body=SHORT, keep_alive=SHORT, max_connections=50)
    async with live_server(gateway_app(), limits) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


async def connect(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*address)


async def until_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (or fail after PATIENCE)."""
    return await asyncio.wait_for(reader.read(), PATIENCE)


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: head, then a Content-Length or chunked body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    status, headers, _ = split_response(head)
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while size := int((await reader.readline()).strip(), 16):
            parts.append(await reader.readexactly(size))
            await reader.readline()
        await reader.readline()
        body = b"".join(parts)
    else:
        body = b""
    return status, headers, body


def post(body: bytes, version: str = "1.1", extra: str = "") -> bytes:
    return (
        f"POST /stream-audio HTTP/{version}\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


# ---------------------------------------------------------------- deadlines


async def test_an_idle_new_connection_is_closed_after_the_header_deadline(
    gateway: tuple[str, int],
) -> None:
    reader, writer = await connect(gateway)
    assert await until_eof(reader) == b""  # nothing was asked, so nothing is answered
    writer.close()


async def test_a_head_that_does_not_arrive_in_time_is_answered_408_and_closed(
    gateway: tuple[str, int],
) -> None:
    reader, writer = await connect(gateway)
    writer.write(b"POST /stream-audio HTTP/1.1\r\nHost: t\r\n")  # and never the rest
    status, headers, body = split_response(await until_eof(reader))
    assert status == 408
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"
    writer.close()


async def test_a_body_that_does_not_arrive_in_time_is_answered_408_and_logged(
    gateway: tuple[str, int], plan: Plan, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    reader, writer = await connect(gateway)
    writer.write(post(SYNTH)[:-10])  # ten bytes short, forever
    status, _, body = split_response(await until_eof(reader))
    assert status == 408
    assert "body" in json.loads(body)["error"]["message"]
    assert plan.jobs == []
    for _ in range(int(PATIENCE / 0.01)):  # the app's log line comes once its task ends
        if any("status=408" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.01)
    assert any("status=408" in r.getMessage() for r in caplog.records)
    writer.close()


async def test_a_never_ending_chunked_body_is_cut_off(gateway: tuple[str, int]) -> None:
    reader, writer = await connect(gateway)
    writer.write(
        b"POST /stream-audio HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"
    )

    async def drip() -> None:
        while True:  # a byte every 50 ms: never idle, never done
            writer.write(b"1\r\n \r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    try:
        raw = await until_eof(reader)
    finally:
        dripping.cancel()
        writer.close()
    assert split_response(raw)[0] == 408


async def test_an_idle_keep_alive_connection_is_closed(gateway: tuple[str, int]) -> None:
    reader, writer = await connect(gateway)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 200
    assert "connection" not in headers  # kept alive ...
    assert await until_eof(reader) == b""  # ... until idle for keep_alive seconds
    writer.close()


async def test_a_keep_alive_connection_serves_several_requests(gateway: tuple[str, int]) -> None:
    reader, writer = await connect(gateway)
    for _ in range(3):
        writer.write(post(SYNTH))
        status, _headers, body = await read_response(reader)
        assert status == 200
        assert body == CHUNK * 2
    writer.close()


async def test_a_shed_connection_closes_after_its_answer_and_the_caller_is_served_again(
    gateway: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker that sheds (gateway.http1.accept) closes the connection of the answer it starts
    # next: that answer is whole, says so, and the caller's next request, on a new connection,
    # is served. A connection with a request pipelined behind the answer is not shed.
    monkeypatch.setattr(SHEDDING, "allowance", 1)
    reader, writer = await connect(gateway)
    writer.write(post(SYNTH))
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"], body) == (200, "close", CHUNK * 2)
    assert await until_eof(reader) == b""
    writer.close()
    assert SHEDDING.allowance == 0
    reader, writer = await connect(gateway)
    writer.write(post(SYNTH))
    status, headers, body = await read_response(reader)
    assert (status, "connection" in headers, body) == (200, False, CHUNK * 2)
    SHEDDING.allowance = 1
    writer.write(post(SYNTH) + post(SYNTH))
    answers = [await read_response(reader) for _ in range(2)]
    assert [(a[0], a[2]) for a in answers] == [(200, CHUNK * 2)] * 2
    assert "connection" not in answers[0][1] and answers[1][1]["connection"] == "close"
    assert await until_eof(reader) == b""
    writer.close()


async def test_requests_move_the_deadlines_without_a_timer_each(plan: Plan) -> None:
    # Each request moves the connection's deadline three times (its head, its body, the
    # keep-alive pause after it); a timer is made only when none is set for the deadline or
    # before it. The pause still ends keep_alive seconds after the last answer, not when the
    # timer set for an earlier deadline fires.
    keep_alive = 3 * SHORT
    limits = ConnectionLimits(header=SHORT, body=SHORT, keep_alive=keep_alive, max_connections=5)
    loop = asyncio.get_running_loop()
    made: list[object] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if isinstance(getattr(callback, "__self__", None), HTTPProtocol):
            made.append(callback)
        return call_at(when, callback, *args, **kwargs)

    loop.call_at = counting  # type: ignore[method-assign,assignment]
    try:
        async with live_server(gateway_app(), limits) as url:
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await connect((host, int(port)))
            requests = 10
            for _ in range(requests):
                writer.write(post(SYNTH))
                status, _headers, body = await read_response(reader)
                assert (status, body) == (200, CHUNK * 2)
            answered = loop.time()
            timers = len(made)
            assert await until_eof(reader) == b""
            idle = loop.time() - answered
            writer.close()
    finally:
        del loop.call_at
    assert timers < requests  # three deadlines a request, and fewer timers than requests
    assert keep_alive - 0.05 <= idle < PATIENCE


# ---------------------------------------------------------------- the connection cap


async def test_connections_beyond_the_cap_get_503_and_are_closed(
    plan: Plan, caplog: pytest.LogCaptureFixture
) -> None:
    limits = ConnectionLimits(header=PATIENCE, max_connections=3)
    async with live_server(gateway_app(), limits) as url:
        host, port = url.removeprefix("http://").split(":")
        address = (host, int(port))
        held = [await connect(address) for _ in range(3)]
        # Prove the three are accepted (served), not merely queued in the kernel.
        for reader, writer in held:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(reader))[0] == 200
        reader, writer = await connect(address)
        status, headers, body = split_response(await until_eof(reader))
        assert status == 503
        assert headers["retry-after"] == "1"
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        writer.close()
        assert any("connection limit reached" in r.getMessage() for r in caplog.records)
        # One leaves; the next caller is served again.
        held[0][1].close()
        await held[0][1].wait_closed()
        for _ in range(int(PATIENCE / 0.01)):
            reader, writer = await connect(address)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            status = (await read_response(reader))[0]
            writer.close()
            if status == 200:
                break
            await asyncio.sleep(0.01)  # the server has not yet seen the first one go
        assert status == 200
        for _, held_writer in held[1:]:
            held_writer.close()


# ---------------------------------------------------------------- bounded heads, bad requests


async def test_an_oversized_head_is_answered_431(gateway: tuple[str, int], plan: Plan) -> None:
    reader, writer = await connect(gateway)
    writer.write(b"POST /stream-audio HTTP/1.1\r\nHost: t\r\n")
    for i in range(1000):
        writer.write(b"X-Filler-%d: %s\r\n" % (i, b"a" * 100))
    status, _, body = split_response(await until_eof(reader))
    assert status == 431
    assert json.loads(body)["error"]["code"] == "headers_too_large"
    assert plan.jobs == []
    writer.close()


async def test_a_malformed_request_is_answered_400(gateway: tuple[str, int]) -> None:
    reader, writer = await connect(gateway)
    writer.write(b"POST /stream-audio HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: x\r\n\r\n")
    status, _headers, body = split_response(await until_eof(reader))
    assert status == 400
    assert json.loads(body)["error"]["code"] == "malformed_request"
    writer.close()


async def test_a_413_closes_the_connection_without_reading_on(
    gateway: tuple[str, int], plan: Plan
) -> None:
    reader, writer = await connect(gateway)
    size = 50 * 1024 * 1024
    writer.write(
        f"POST /stream-audio HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode()
        + b"x" * 65536
    )
    await writer.drain()
    status, headers, body = await read_response(reader)
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "too_large"
    # A caller that goes on sending is cut off long before its 50 MB have gone out.
    sent = 65536
    with pytest.raises(ConnectionError):
        async with asyncio.timeout(PATIENCE):
            while sent < size:
                writer.write(b"x" * 65536)
                await writer.drain()
                sent += 65536
    assert sent < size // 4
    writer.close()
    assert plan.jobs == []


# ---------------------------------------------------------------- framing


async def test_an_http10_caller_gets_a_close_delimited_stream(
    gateway: tuple[str, int], plan: Plan
) -> None:
    reader, writer = await connect(gateway)
    writer.write(post(SYNTH, version="1.0"))
    status, headers, body = split_response(await until_eof(reader))
    assert status == 200
    assert "transfer-encoding" not in headers
    assert headers["connection"] == "close"
    assert body == CHUNK * 2  # raw PCM up to the close, no chunk framing
    writer.close()


async def test_an_http10_keep_alive_caller_keeps_its_connection_for_sized_answers(
    gateway: tuple[str, int],
) -> None:
    reader, writer = await connect(gateway)
    for _ in range(2):
        writer.write(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 200
        assert headers["connection"] == "keep-alive"
        assert json.loads(body) == {"status": "ok"}
    writer.close()


async def test_pipelined_requests_are_answered_in_order(gateway: tuple[str, int]) -> None:
    reader, writer = await connect(gateway)
    writer.write(post(SYNTH) + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + post(SYNTH))
    first, second, third = [await read_response(reader) for _ in range(3)]
    assert (first[0], first[2]) == (200, CHUNK * 2)
    assert (second[0], json.loads(second[2])) == (200, {"status": "ok"})
    assert (third[0], third[2]) == (200, CHUNK * 2)
    writer.close()


async def test_an_upgrade_request_is_answered_over_http11_with_its_body(
    gateway: tuple[str, int], plan: Plan
) -> None:
    reader, writer = await connect(gateway)
    writer.write(post(SYNTH, extra="Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"))
    status, _headers, body = await read_response(reader)
    assert status == 200
    assert body == CHUNK * 2
    assert plan.jobs[0].text == "Hello."
    writer.close()


async def test_expect_100_continue_is_honoured(gateway: tuple[str, int], plan: Plan) -> None:
    reader, writer = await connect(gateway)
    head, body = post(SYNTH, extra="Expect: 100-continue\r\n").split(b"\r\n\r\n", 1)
    writer.write(head + b"\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(body)
    status, _, audio = await read_response(reader)
    assert (status, audio) == (200, CHUNK * 2)
    writer.close()


async def test_head_requests_get_no_body(gateway: tuple[str, int]) -> None:
    reader, writer = await connect(gateway)
    writer.write(
        b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    assert split_response(head)[0] == 200
    # The next bytes are the second answer, not a body of the first.
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    writer.close()


async def direct_writer(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with a head from ``send`` and its body written straight to the exchange
    (``write_now``, as a relayed stream's chunks are), framed as the path asks: chunked (no
    length), under a Content-Length, or for a HEAD request; then a write after the end."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    exchange = scope[EXCHANGE_SCOPE_KEY]
    headers = [(b"content-length", b"7")] if scope["path"] == "/sized" else []
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    exchange.write_now(b"abc")
    exchange.write_now(b"")  # nothing to write: no chunk, and not the end of the body
    exchange.write_now(b"defg")
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    exchange.write_now(b"late")  # after the end: never written


async def test_direct_writes_are_framed_as_the_answer_is() -> None:
    async with live_server(direct_writer) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await connect((host, int(port)))
        writer.write(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert (status, headers["transfer-encoding"], body) == (200, "chunked", b"abcdefg")
        writer.write(b"GET /sized HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert (status, headers["content-length"], body) == (200, "7", b"abcdefg")
        # A HEAD answer's head only: the next bytes are the answer to the request after it.
        writer.write(
            b"HEAD /chunked HTTP/1.1\r\nHost: t\r\n\r\nGET /sized HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
        assert split_response(head)[0] == 200
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"abcdefg")
        writer.close()


# ---------------------------------------------------------------- app failures


async def failing_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        message = await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        del message
        return
    bad = {
        "/bad-header": [(b"x-a", b"1\r\nx: 2")],
        # Good headers first: each one is checked, not only the first.
        "/bad-name": [(b"x-ok", b"1"), (b"x b", b"2")],
        "/empty-name": [(b"x-ok", b"1"), (b"", b"2")],
        "/bad-late-value": [(b"x-ok", b"1\tand a tab"), (b"x-b", b"v\x00")],
    }.get(scope["path"])
    if bad is not None:
        # Refused as it is given (ValueError): a head that would go out is never written.
        await send({"type": "http.response.start", "status": 200, "headers": bad})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    raise RuntimeError("boom")


async def test_an_app_error_before_any_byte_is_a_json_500() -> None:
    async with live_server(failing_app) as url:
        host, port = url.removeprefix("http://").split(":")
        for path in ("/boom", "/bad-header", "/bad-name", "/empty-name", "/bad-late-value"):
            reader, writer = await connect((host, int(port)))
            writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            status, headers, body = split_response(await until_eof(reader))
            assert status == 500
            assert "\r\nx: 2" not in headers.get("x-a", "")
            assert json.loads(body)["error"]["code"] == "internal_error"
            writer.close()


# ---------------------------------------------------------------- the cap and the open-file limit


def test_the_cap_is_fitted_to_the_open_file_limit(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.cli import connection_limits
    from gateway.config import ServerConfig

    server = ServerConfig(max_connections=4096)
    assert connection_limits(server, 1 << 20).max_connections == 4096
    fitted = connection_limits(server, 1024)
    # Each connection may need a second descriptor for its upstream; some are kept back.
    assert fitted.max_connections == (1024 - 256) // 2
    assert any("open-file limit (1024)" in r.getMessage() for r in caplog.records)


async def test_a_hang_up_after_a_large_body_still_cancels_the_provider() -> None:
    # A body past the read-ahead mark pauses reading; once the app has it, reading must resume
    # or the caller's hang-up would go unseen until the provider answers.
    ScriptedProvider.plans.clear()
    never = asyncio.Event()
    plan = ScriptedProvider.plans["pa"] = Plan([[never]])
    yaml = scripted_config(
        {"a": {"provider": "pa"}},
        {"pa": provider_block(timeout={"connect": 1, "first_byte": 30, "total": 60})},
        max_body_bytes=1 << 20,
    )
    async with live_server(create_app(parse_config(yaml))) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await connect((host, int(port)))
        big = json.dumps(
            {"Text": "Hello.", "SampleRate": 24000, "ExtendData": {"Pad": "x" * 300_000}}
        ).encode()
        writer.write(post(big))
        for _ in range(int(PATIENCE / 0.01)):
            if plan.jobs:
                break
            await asyncio.sleep(0.01)
        assert plan.jobs
        writer.close()
        for _ in range(int(PATIENCE / 0.01)):
            if plan.closed:
                break
            await asyncio.sleep(0.01)
        assert plan.closed  # the provider's stream was closed because the caller left
        del reader


async def test_connections_ended_by_the_server_layer_are_counted(
    gateway: tuple[str, int],
) -> None:
    reader, writer = await connect(gateway)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # a head that never completes
    assert split_response(await until_eof(reader))[0] == 408
    writer.close()
    reader, writer = await connect(gateway)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, body = await read_response(reader)
    writer.close()
    text = body.decode()
    assert status == 200
    assert 'tts_connections_refused_total{reason="header_timeout"} 1.0' in text
    assert "tts_connections_open 1.0" in text  # the one asking


# ---------------------------------------------------------------- TLS


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[TLSFiles, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return TLSFiles(str(certfile), str(keyfile)), client


async def test_tls_handshakes_are_held_to_the_header_deadline_and_the_cap(
    plan: Plan, tls_files: tuple[TLSFiles, ssl.SSLContext]
) -> None:
    files, client = tls_files
    limits = ConnectionLimits(header=SHORT, max_connections=2, tls=files)
    async with live_server(gateway_app(), limits) as url:
        host, port = url.removeprefix("http://").split(":")
        address = (host, int(port))
        # A TCP connection that never says hello is closed at the header deadline...
        reader, writer = await connect(address)
        assert await until_eof(reader) == b""
        writer.close()
        # ... and counts against the cap while it waits.
        silent = [await connect(address) for _ in range(2)]
        extra_reader, extra_writer = await connect(address)
        assert await until_eof(extra_reader) == b""  # closed at once, not at the deadline
        extra_writer.close()
        for _, silent_writer in silent:
            silent_writer.close()
        # A real client is served over TLS once there is room.
        for _ in range(int(PATIENCE / 0.05)):
            try:
                reader, writer = await asyncio.open_connection(*address, ssl=client)
                break
            except (ConnectionError, ssl.SSLError):
                await asyncio.sleep(0.05)
        writer.write(post(SYNTH))
        status, _, body = await read_response(reader)
        assert (status, body) == (200, CHUNK * 2)
        writer.close()


async def test_plain_http_to_a_tls_port_is_never_answered_as_http(
    plan: Plan, tls_files: tuple[TLSFiles, ssl.SSLContext]
) -> None:
    files, _ = tls_files
    async with live_server(gateway_app(), ConnectionLimits(tls=files)) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await connect((host, int(port)))
        writer.write(post(SYNTH))
        assert b"HTTP/1.1" not in await until_eof(reader)
        writer.close()
    assert plan.jobs == []


# ---------------------------------------------------------------- review regressions


async def test_a_header_line_that_never_ends_is_bounded(gateway: tuple[str, int]) -> None:
    reader, writer = await connect(gateway)
    # No line end ever comes: the parser holds the value, its callbacks see nothing.
    writer.write(b"GET /healthz HTTP/1.1\r\nX-Fill: " + b"a" * 40000)
    status, _, body = split_response(await until_eof(reader))
    assert status == 431
    assert json.loads(body)["error"]["code"] == "headers_too_large"
    writer.close()


async def test_an_oversized_head_is_refused_even_when_another_request_follows(
    gateway: tuple[str, int], plan: Plan
) -> None:
    reader, writer = await connect(gateway)
    big = (
        b"POST /stream-audio HTTP/1.1\r\nX-Big: " + b"b" * 40000 + b"\r\nContent-Length: 0\r\n\r\n"
    )
    writer.write(big + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, _body = split_response(await until_eof(reader))
    assert status == 431  # not the next request's 200
    assert plan.jobs == []
    writer.close()


async def test_trailers_never_join_the_request_headers(plan: Plan) -> None:
    yaml = scripted_config({"a": {"provider": "pa"}}, {"pa": provider_block()}, tokens=["s3cret"])
    async with live_server(create_app(parse_config(yaml))) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await connect((host, int(port)))
        writer.write(
            b"POST /stream-audio HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(SYNTH), SYNTH)
            + b"0\r\nAuthorization: Bearer s3cret\r\n\r\n"
        )
        status, _, _body = await read_response(reader)
        writer.close()
    assert status == 401
    assert plan.jobs == []


async def test_an_upgrade_request_with_its_body_sent_later_is_served(
    gateway: tuple[str, int], plan: Plan
) -> None:
    reader, writer = await connect(gateway)
    head, body = post(SYNTH, extra="Connection: Upgrade\r\nUpgrade: h2c\r\n").split(b"\r\n\r\n", 1)
    writer.write(head + b"\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)  # the body comes in a read of its own
    writer.write(body)
    status, _, audio = await read_response(reader)
    assert (status, audio) == (200, CHUNK * 2)
    writer.close()


async def test_too_many_pipelined_requests_answer_those_taken_then_close(
    gateway: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    reader, writer = await connect(gateway)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * 40)
    answered = 0
    raw = await until_eof(reader)
    answered = raw.count(b"HTTP/1.1 200")
    assert answered == 9  # the one answered at once and the eight that could wait
    assert raw.endswith(b'{"status":"ok"}')
    assert sum("pipelined" in r.getMessage() for r in caplog.records) == 1
    writer.close()


async def test_a_caller_that_never_reads_cannot_make_the_gateway_buffer_answers(
    gateway: tuple[str, int],
) -> None:
    reader, writer = await connect(gateway)
    # Each request is small; each answer (a 404 naming the path) is 30 KB. A caller that never
    # reads must find the gateway stops taking its requests, not buffer answers without end.
    request = b"GET /" + b"p" * 30000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    sent = 0
    with pytest.raises(TimeoutError):
        for _ in range(20000):  # 600 MB of requests, 600 MB of answers
            writer.write(request)
            await asyncio.wait_for(writer.drain(), 2.0)
            sent += len(request)
    assert sent < 100 * 1024 * 1024
    writer.transport.abort()
    del reader


async def test_a_malformed_body_is_logged_with_the_status_the_caller_got(
    gateway: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    reader, writer = await connect(gateway)
    writer.write(
        b"POST /stream-audio HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"Tex\r\nZZ\r\n'
    )
    status, _, _ = split_response(await until_eof(reader))
    assert status == 400
    writer.close()
    for _ in range(int(PATIENCE / 0.01)):
        if any("status=" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.01)
    line = next(r.getMessage() for r in caplog.records if "status=" in r.getMessage())
    assert "status=400" in line


async def test_a_caller_that_stops_reading_is_let_go(
    plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.http1.io

    monkeypatch.setattr(gateway.http1.io, "_WRITE_STALL_SECONDS", 0.5)
    ScriptedProvider.plans["pa"] = Plan([[CHUNK] * 10000])  # 200 s: more than any buffer
    async with live_server(gateway_app()) as url:
        host, port = url.removeprefix("http://").split(":")
        address = (host, int(port))
        reader, writer = await connect(address)
        writer.write(post(json.dumps(dict(json.loads(SYNTH), SampleRate=48000)).encode()))

        async def open_connections() -> str:
            metrics_reader, metrics_writer = await connect(address)
            metrics_writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            _, _, body = await read_response(metrics_reader)
            metrics_writer.close()
            return next(
                line
                for line in body.decode().splitlines()
                if line.startswith("tts_connections_open ")
            )

        for _ in range(int(PATIENCE / 0.05)):
            if await open_connections() == "tts_connections_open 1.0":  # only the one asking
                break
            await asyncio.sleep(0.05)
        assert await open_connections() == "tts_connections_open 1.0"
        assert ScriptedProvider.plans["pa"].closed  # the provider was released too
        writer.transport.abort()
        del reader
