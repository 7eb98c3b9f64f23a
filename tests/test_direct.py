"""A stream relayed from the upstream connection's callbacks once its first audio is out
(``gateway.direct``): the same audio, budgets and endings as the pump's loop gives, over real
sockets (the gateway's own HTTP protocol in front, its pooled transport behind)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import httpx
import numpy as np
import pytest

from gateway.app import create_app
from gateway.audio import FIRST_OUT, Converter
from gateway.budgets import StallWatch
from gateway.config import parse_config
from gateway.direct import DirectRelay
from gateway.http1 import HTTPProtocol
from gateway.http1.exchange import Exchange
from gateway.http1.io import WRITE_HIGH_WATER, ConnectionIO
from gateway.stream import AudioStream
from providers._pool import _Connection
from providers.base import AudioFormat
from tests.deploy_support import in_ci
from tests.scripted_upstream import ScriptedUpstream
from tests.support import (
    LoopbackServer,
    eventually,
    live_server,
    log_line,
    read_request,
    tone,
)

try:
    from providers._relay import Tap as CompiledTap
except ImportError:  # pragma: no cover - a build without a C compiler
    CompiledTap = None  # type: ignore[assignment, misc]

pytestmark = pytest.mark.asyncio

RATE = 24000
#: A 440 Hz tone cut into pieces of uneven, odd and even byte counts: every way an upstream
#: may cut its audio (a sample split across two chunks included).
AUDIO = tone(440, 0.6, RATE)
CUTS = [961, 1, 480, 3333, 2, 960, 7001, 5, 4800]


def pieces(audio: bytes = AUDIO, cuts: list[int] = CUTS) -> list[bytes]:
    out, at = [], 0
    for size in cuts:
        out.append(audio[at : at + size])
        at += size
    out.append(audio[at:])
    return [p for p in out if p]


@dataclass
class Script:
    """What the upstream does for one request: its chunks, ``pause`` seconds apart, then the
    end of the body, or (``cut_after`` chunks) a connection dropped mid-answer."""

    chunks: list[bytes]
    pause: float = 0.005
    cut_after: int | None = None
    first_pause: float | None = None
    """A pause after the first chunk instead of ``pause``."""


@dataclass
class KeepAliveUpstream(LoopbackServer):
    """The custom TTS interface over keep-alive connections, answering request *i* with
    ``scripts[i]`` (the last repeats); it counts connections and records how each answer ended
    (``complete``, ``cut``, ``hung_up``: the gateway closed the connection before the end)."""

    scripts: list[Script] = field(default_factory=list)
    connections: int = 0
    ends: list[str] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        await super()._handle(reader, writer)

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        await read_request(reader)
        script = self.scripts[min(len(self.ends), len(self.scripts) - 1)]
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for index, chunk in enumerate(script.chunks):
                if script.cut_after is not None and index == script.cut_after:
                    writer.transport.abort()
                    self._end("cut")
                    return False
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                pause = script.first_pause if index == 0 and script.first_pause else script.pause
                if pause:
                    await asyncio.sleep(pause)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            self._end("hung_up")
            return False
        self._end("complete")
        return True

    def _end(self, how: str) -> None:
        self.ends.append(how)
        self.ended.set()


def routing(
    upstream: LoopbackServer,
    timeout: dict[str, float] | None = None,
    voices: dict[str, dict[str, Any]] | None = None,
    **limits: int,
) -> Any:
    """One custom provider ``up`` on ``upstream`` and its voice ``v`` (with ``voices``
    beside it)."""
    block: dict[str, Any] = {
        "type": "custom",
        "url": upstream.url,
        "sample_rates": [RATE],
        "retry": {"attempts": 1},
        "timeout": {"connect": 5, "first_byte": 10, "total": 60, "stall": 30, **(timeout or {})},
        **limits,
    }
    document = {
        "server": {"default_voice": "v", "log_level": "info"},
        "providers": {"up": block},
        "voices": {"v": {"provider": "up"}, **(voices or {})},
    }
    return create_app(parse_config(json.dumps(document)))


def body(rate: int) -> dict[str, Any]:
    return {"Text": "Hello there.", "VoiceId": "v", "SampleRate": rate}


@dataclass
class Relayed:
    """What the direct relays of a test have handled, as they handle it: the pieces handed to
    :meth:`DirectRelay.body` (their sizes: what had arrived when the relay began, and every
    piece where there is no compiled step) and the relays themselves, whose compiled steps
    count the pieces the parser hands them."""

    sizes: list[int] = field(default_factory=list)
    relays: list[DirectRelay] = field(default_factory=list)

    @property
    def pieces(self) -> int:
        """Pieces relayed: through the compiled step where there is one, else the Python one."""
        steps = [r._step for r in self.relays if r._step is not None]
        return len(self.sizes) if not steps else sum(step.pieces for step in steps)


@pytest.fixture
def relayed(monkeypatch: pytest.MonkeyPatch) -> Relayed:
    """The pieces the direct relays have handled, as they handle them."""
    seen = Relayed()
    original_body, original_init = DirectRelay.body, DirectRelay.__init__

    def counting(self: DirectRelay, data: bytes) -> None:
        seen.sizes.append(len(data))
        original_body(self, data)

    def noting(self: DirectRelay, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        seen.relays.append(self)

    monkeypatch.setattr(DirectRelay, "body", counting)
    monkeypatch.setattr(DirectRelay, "__init__", noting)
    return seen


@contextlib.asynccontextmanager
async def gateway(upstream: KeepAliveUpstream, **timeout: float) -> AsyncIterator[str]:
    async with live_server(routing(upstream, timeout)) as url:
        yield url


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
async def test_a_relayed_stream_is_the_audio_the_loop_gives_byte_for_byte(
    rate: int, relayed: Relayed
) -> None:
    async with KeepAliveUpstream([Script(pieces())]) as upstream:
        # The pump's loop: in process, through ASGI (no connection to write to directly).
        app = routing(upstream)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
        ):
            looped = await c.post("/stream-audio", json=body(rate))
        assert looped.status_code == 200
        assert relayed.pieces == 0
        # Relayed: the gateway's own HTTP protocol in front.
        async with gateway(upstream) as url, httpx.AsyncClient(timeout=30) as client:
            direct = await client.post(f"{url}/stream-audio", json=body(rate))
    assert direct.status_code == 200
    assert relayed.pieces, "the stream was not relayed directly"
    assert direct.content == looped.content
    # And it is the tone, whole: as many samples as the upstream's at the caller's rate.
    assert abs(len(direct.content) // 2 - len(AUDIO) // 2 * rate // RATE) <= 2
    spectrum = np.abs(np.fft.rfft(np.frombuffer(direct.content, "<i2").astype(float)))
    assert abs(np.argmax(spectrum) * rate / (len(direct.content) // 2) - 440) < 5


def compiled_step() -> None:
    """Skip where the package was built without its compiled chunk step (fails in CI)."""
    if CompiledTap is None:
        message = "providers._relay is not built (no C compiler at install)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


#: Pieces of whole samples only: the compiled step relays every one of them.
EVEN_CUTS = [960, 480, 3334, 2, 960, 7000, 4, 4800, 960]
#: Whole samples, then a piece of an odd byte count: the Python step takes over from there.
ODD_LATER = [960, 960, 960, 481, 960, 3, 960, 960]


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
@pytest.mark.parametrize("cuts", [EVEN_CUTS, ODD_LATER], ids=["even", "odd-later"])
async def test_the_compiled_step_relays_what_the_python_step_does_byte_for_byte(
    rate: int, cuts: list[int], relayed: Relayed
) -> None:
    """The compiled step (``providers/_relay.c``) against the Python one, over real sockets:
    the same bytes to the caller, pass-through (24 kHz) and through the kernel, and the same
    counts for the stream's outcome; a piece of an odd byte count hands the rest of the
    stream to the Python step."""
    compiled_step()
    audio = pieces(AUDIO, cuts)
    answers: dict[bool, bytes] = {}
    logged: dict[bool, tuple[int, int]] = {}
    for compiled in (False, True):
        relayed.relays.clear()
        with pytest.MonkeyPatch.context() as patch:
            if not compiled:
                patch.setattr(DirectRelay, "compiled_step", lambda self: None)
            async with (
                KeepAliveUpstream([Script(audio)]) as upstream,
                gateway(upstream) as url,
                httpx.AsyncClient(timeout=30) as client,
            ):
                answer = await client.post(f"{url}/stream-audio", json=body(rate))
        assert answer.status_code == 200
        answers[compiled] = answer.content
        (relay,) = relayed.relays
        assert (relay._step is not None) is compiled
        if compiled:
            assert relay._step is not None
            assert relay._step.pieces >= 2
            assert relay._step.on_slow is (cuts is ODD_LATER)
            assert relay.compiled is (cuts is EVEN_CUTS)
        logged[compiled] = relay._stream.converter.frames_in, relay._stream.bytes_out
    assert answers[True] == answers[False]
    assert logged[True] == logged[False]
    assert logged[True][0] == len(AUDIO) // 2  # every sample counted in, once
    assert abs(len(answers[True]) // 2 - len(AUDIO) // 2 * rate // RATE) <= 2


async def test_the_upstream_connection_of_a_relayed_stream_is_kept_for_the_next(
    relayed: Relayed,
) -> None:
    async with (
        KeepAliveUpstream([Script(pieces())]) as upstream,
        gateway(upstream) as url,
        httpx.AsyncClient(timeout=30) as client,
    ):
        answers = [await client.post(f"{url}/stream-audio", json=body(RATE)) for _ in range(3)]
    assert [a.content for a in answers] == [AUDIO] * 3
    assert upstream.ends == ["complete"] * 3
    assert upstream.connections == 1  # each answer read to its end, the connection reused
    assert relayed.pieces


async def test_an_upstream_cut_mid_answer_ends_the_stream_after_the_audio_it_sent(
    relayed: Relayed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    chunks = pieces()
    async with (
        KeepAliveUpstream([Script(chunks, pause=0.02, cut_after=5)]) as upstream,
        gateway(upstream) as url,
        httpx.AsyncClient(timeout=30) as client,
    ):
        answer = await client.post(f"{url}/stream-audio", json=body(RATE))
        assert await eventually(lambda: any("end=" in r.getMessage() for r in caplog.records))
    assert answer.status_code == 200
    sent = b"".join(chunks[:5])
    assert answer.content == sent[: len(sent) // 2 * 2]  # every whole sample sent, nothing else
    assert relayed.pieces
    line = next(r.getMessage() for r in caplog.records if "end=" in r.getMessage())
    assert "end=provider_error" in line


async def test_a_caller_hanging_up_mid_answer_closes_the_upstream(relayed: Relayed) -> None:
    # 10 s of audio in 20 ms chunks paced in real time: the caller leaves after the first few.
    chunks = pieces(tone(440, 10, RATE), [960] * 499)
    async with (
        KeepAliveUpstream([Script(chunks, pause=0.02)]) as upstream,
        gateway(upstream) as url,
    ):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        payload = json.dumps(body(RATE)).encode()
        writer.write(
            b"POST /stream-audio HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        got = b""
        while len(got) < 20000:
            got += await reader.read(65536)
        assert await eventually(lambda: relayed.pieces >= 3, 10)
        writer.transport.abort()
        await asyncio.wait_for(upstream.ended.wait(), 10)
    assert upstream.ends == ["hung_up"]


async def test_a_caller_that_does_not_read_pauses_the_upstream_and_loses_nothing(
    relayed: Relayed,
) -> None:
    # A first chunk, then 40 s of audio at once (a local burst is like it): far more than any
    # buffer between.
    audio = tone(440, 40, RATE)
    chunks = pieces(audio, [960] + [9600] * (len(audio) // 9600))
    paused: list[bool] = []
    original = DirectRelay.caller_paused

    def noting(self: DirectRelay) -> None:
        paused.append(True)
        original(self)

    original_made = HTTPProtocol.connection_made
    callers: list[HTTPProtocol] = []

    def small_send_buffer(self: HTTPProtocol, transport: asyncio.BaseTransport) -> None:
        # A send buffer like a long-distance connection's, instead of loopback's megabytes.
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        callers.append(self)
        original_made(self, transport)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DirectRelay, "caller_paused", noting)
        patch.setattr(HTTPProtocol, "connection_made", small_send_buffer)
        async with (
            KeepAliveUpstream([Script(chunks, pause=0, first_pause=0.2)]) as upstream,
            gateway(upstream) as url,
        ):
            host, port = url.removeprefix("http://").split(":")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
            reader, writer = await asyncio.open_connection(sock=sock, limit=2**24)
            payload = json.dumps(body(RATE)).encode()
            writer.write(
                b"POST /stream-audio HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(payload), payload)
            )
            # The caller reads nothing until the relay has paused the upstream for it…
            assert await eventually(lambda: bool(paused), 10)
            # …and what the gateway holds for it stays bounded: the write buffer's high-water
            # mark and one read from the upstream (at most 256 KiB), not the 1.9 MB sent.
            transport = callers[0].transport
            assert transport is not None
            assert transport.get_write_buffer_size() <= WRITE_HIGH_WATER + 256 * 1024 + 64
            raw = await asyncio.wait_for(reader.read(), 60)
            writer.close()
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert dechunk(chunked) == audio  # every byte, once, in order, through pauses and resumes
    assert upstream.ends == ["complete"]


async def test_a_relayed_stream_ends_at_its_total_budget(
    relayed: Relayed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    chunks = pieces(tone(440, 10, RATE), [960] * 499)
    async with (
        KeepAliveUpstream([Script(chunks, pause=0.02)]) as upstream,
        gateway(upstream, first_byte=0.5, total=0.5) as url,
        httpx.AsyncClient(timeout=30) as client,
    ):
        answer = await client.post(f"{url}/stream-audio", json=body(RATE))
        await asyncio.wait_for(upstream.ended.wait(), 10)
    assert answer.status_code == 200
    assert 0 < len(answer.content) < len(b"".join(chunks)) // 2
    assert upstream.ends == ["hung_up"]
    assert relayed.pieces
    line = next(r.getMessage() for r in caplog.records if "end=" in r.getMessage())
    assert "end=timeout" in line


def dechunk(data: bytes) -> bytes:
    out, at = bytearray(), 0
    while True:
        eol = data.index(b"\r\n", at)
        size = int(data[at:eol], 16)
        if size == 0:
            return bytes(out)
        out += data[eol + 2 : eol + 2 + size]
        at = eol + 2 + size + 2


async def test_the_resamplers_tail_and_the_end_of_the_body_leave_in_one_write() -> None:
    writes: list[bytes] = []
    original = HTTPProtocol.write

    def recording(self: HTTPProtocol, data: bytes) -> None:
        writes.append(data)
        original(self, data)

    chunk = AUDIO[:960]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HTTPProtocol, "write", recording)
        async with (
            KeepAliveUpstream([Script([chunk])]) as upstream,
            gateway(upstream) as url,
            httpx.AsyncClient(timeout=30) as client,
        ):
            answer = await client.post(f"{url}/stream-audio", json=body(48000))
    assert answer.status_code == 200
    assert len(answer.content) == 2 * 960  # 20 ms at 48 kHz: the first audio and the tail
    # The head with the first audio, then the tail with the end of the body: two writes.
    assert len(writes) == 2
    assert writes[0].startswith(b"HTTP/1.1 200")
    assert writes[1].endswith(b"\r\n0\r\n\r\n") and len(writes[1]) > len(b"0\r\n\r\n")


async def test_a_long_first_piece_sends_its_first_audio_before_converting_the_rest(
    relayed: Relayed,
) -> None:
    """An upstream that sends a second of audio at once: the first write carries the head and
    at most FIRST_OUT of audio; the rest follows, and the whole is what converting the second
    in one go gives; the stream is relayed from the upstream's callbacks after."""
    writes: list[bytes] = []
    original = HTTPProtocol.write

    def recording(self: HTTPProtocol, data: bytes) -> None:
        writes.append(data)
        original(self, data)

    second = tone(440, 1.0, RATE)
    converter = Converter(AudioFormat(RATE), 48000)
    expected = converter.feed(second) + converter.feed(AUDIO) + converter.flush()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HTTPProtocol, "write", recording)
        async with (
            KeepAliveUpstream([Script([second, AUDIO], first_pause=0.2)]) as upstream,
            gateway(upstream) as url,
            httpx.AsyncClient(timeout=30) as client,
        ):
            answer = await client.post(f"{url}/stream-audio", json=body(48000))
    assert answer.status_code == 200
    assert answer.content == expected
    head, _, first_body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    first_audio = dechunk(first_body + b"0\r\n\r\n")
    assert 0 < len(first_audio) <= 2 * FIRST_OUT * 48000
    assert relayed.pieces == 1  # the piece after the first was relayed from the callbacks


async def test_a_caller_that_stops_reading_at_the_end_is_waited_for_within_the_last_send_deadline(
    relayed: Relayed, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Relayed from the upstream's callbacks, the whole answer can be written before the caller
    takes it. The end of the body then waits for the caller on the gateway's own connection,
    within ``LAST_SEND_SECONDS`` and no longer, and the request is logged as complete but not
    read. The provider was released before that wait, and the connection keeps every byte
    for a caller that reads later."""
    import gateway.budgets

    monkeypatch.setattr(gateway.budgets, "LAST_SEND_SECONDS", 1.0)
    original = HTTPProtocol.connection_made

    def small_buffers(self: HTTPProtocol, transport: asyncio.BaseTransport) -> None:
        # A small send window and write buffer: a second of audio fills them.
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        original(self, transport)
        transport.set_write_buffer_limits(high=4096, low=1024)  # type: ignore[attr-defined]

    monkeypatch.setattr(HTTPProtocol, "connection_made", small_buffers)
    caplog.set_level(logging.INFO, logger="gateway")
    first, rest = tone(440, 0.02, RATE), tone(660, 1.0, RATE)
    out = asyncio.Event()
    # The rest of the answer, and its end, in one write once the first audio is out.
    async with ScriptedUpstream([first, out, rest], [first]) as upstream:
        app = routing(upstream, max_concurrency=1, queue=0)
        async with live_server(app) as url:
            host, port = url.removeprefix("http://").split(":")
            loop = asyncio.get_running_loop()
            # A bare socket, read only when the test reads it (a stream reader would read
            # ahead into a buffer of its own).
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, int(port)))
            payload = json.dumps(body(RATE)).encode()
            await loop.sock_sendall(
                sock,
                b"POST /stream-audio HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"X-Request-Id: unread\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload),
            )
            raw = b""
            while not raw.endswith(b"\r\n" + first + b"\r\n"):  # the head and the first audio
                piece = await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
                assert piece
                raw += piece
            out.set()  # the caller takes no more for now
            assert await upstream.all_ended() == ["complete"]
            # The provider is released while the door still waits for the caller.
            registry = app.state.gateway.metrics.registry
            labels = {"provider": "up"}
            assert await eventually(
                lambda: registry.get_sample_value("tts_provider_in_flight", labels) == 0, 10
            )
            assert not any(r.getMessage().startswith("request_id=unread ") for r in caplog.records)
            line = await log_line(caplog, "unread")
            # The one slot serves the next caller while this one still holds its answer.
            async with httpx.AsyncClient(timeout=30) as client:
                second = await client.post(f"{url}/stream-audio", json=body(RATE))
            # The caller reads at last: the answer was kept whole and ended.
            while piece := await asyncio.wait_for(loop.sock_recv(sock, 65536), 30):
                raw += piece
            sock.close()
    assert relayed.pieces, "the stream was not relayed directly"
    assert "end=complete,caller_not_reading" in line
    duration = float(line.partition(" duration_ms=")[2].split()[0])
    assert 1000 <= duration < 10_000  # it waited for the caller, within its deadline
    assert second.status_code == 200 and second.content == first
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert dechunk(chunked) == first + rest


class _WriteSide:
    """A caller's transport, as the gateway's connection writes to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


class _ReadSide:
    """An upstream's transport, as the pool's connection pauses and resumes its reading."""

    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class _CallerConnection(ConnectionIO):
    """The gateway's connection I/O with what an :class:`Exchange` asks of its connection."""

    closes_after_this = False

    def response_complete(self, exchange: Exchange) -> None:
        pass


async def test_a_caller_already_paused_when_the_relay_begins_leaves_the_upstream_unread() -> None:
    """Tapping resumes the upstream's reading; a caller whose write buffer is already full when
    the relay begins must pause it again. The moment (a caller paused at the instant of the
    tap) is set up on the gateway's own connection objects over transports that record, since
    over sockets it cannot be arranged for certain."""
    loop = asyncio.get_running_loop()
    caller = _CallerConnection(loop)
    caller.transport = cast(asyncio.Transport, _WriteSide())
    scope: Any = {"http_version": "1.1", "method": "POST"}
    answer = Exchange(cast(Any, caller), scope, keep_alive=True, expect_continue=False)
    answer.more_body = False
    answer._start(200, [(b"content-type", b"audio/pcm")])
    converter = Converter(AudioFormat(RATE), RATE)
    answer.write_now(converter.feed(AUDIO[:960]))  # the head and the first audio are out
    stream = SimpleNamespace(converter=converter, provider=SimpleNamespace(name="up"), bytes_out=0)
    upstream = _Connection(("http", "127.0.0.1", 9))
    reading = _ReadSide()
    upstream.transport = cast(asyncio.Transport, reading)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    stall = StallWatch(30.0)
    stall._loop = loop
    relay = DirectRelay(cast(AudioStream, stream), upstream, answer, stall, None, loop)
    caller.write_paused = True  # the caller's write buffer is above its high-water mark
    running = asyncio.create_task(relay.run())
    assert await eventually(lambda: upstream._sink is not None)
    assert not reading.reading  # tapped, and not read while the caller takes nothing
    assert not stall.waiting  # nor is the wait the upstream's silence
    caller.write_paused = False
    relay.caller_resumed()
    assert reading.reading
    assert stall.waiting
    upstream.data_received(b"3c0\r\n%b\r\n0\r\n\r\n" % AUDIO[960:1920])
    assert await running == "complete"
    assert stream.bytes_out == 960


async def test_the_compiled_step_keeps_the_order_of_a_connection_s_writes() -> None:
    """The compiled step holds its chunks for the turn's end in the loop's batch: behind any
    write the connection still holds from Python (made in the turn the relay began), a
    turn's chunks in one write, and what it holds sent before what is written after the
    relay. Set up on the gateway's own connection objects over a transport that records."""
    compiled_step()
    loop = asyncio.get_running_loop()
    caller = _CallerConnection(loop)
    transport = _WriteSide()
    caller.transport = cast(asyncio.Transport, transport)
    scope: Any = {"http_version": "1.1", "method": "POST"}
    answer = Exchange(cast(Any, caller), scope, keep_alive=True, expect_continue=False)
    answer.more_body = False
    answer._start(200, [(b"content-type", b"audio/pcm")])
    audio = [AUDIO[at : at + 960] for at in range(0, 960 * 6, 960)]
    expected = Converter(AudioFormat(RATE), 48000)
    out = [expected.feed(piece) for piece in audio]
    # The relay's converter has had the first two pieces: the relay converts the rest.
    converter = Converter(AudioFormat(RATE), 48000)
    answer.write_now(converter.feed(audio[0]))  # the head and the first audio: sent at once
    answer.write_now(converter.feed(audio[1]))  # held by the connection for the turn's end
    assert caller._held
    stream = SimpleNamespace(converter=converter, provider=SimpleNamespace(name="up"), bytes_out=0)
    upstream = _Connection(("http", "127.0.0.1", 9))
    upstream.transport = cast(asyncio.Transport, _ReadSide())
    upstream.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    stall = StallWatch(30.0)
    stall._loop = loop
    relay = DirectRelay(cast(AudioStream, stream), upstream, answer, stall, None, loop)
    assert relay._step is not None
    step = relay._step
    upstream.tap(relay, step)

    def piece(data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data)

    # In the turn the relay began, behind the connection's own held write, with it.
    before = len(transport.written)
    upstream.data_received(piece(audio[2]))
    assert step.pending == 0 and caller._held  # held by the connection, after its own
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert transport.written[before:] == [piece(out[1]) + piece(out[2])]
    # A turn's chunks: held in the batch, one write at the turn's end.
    before = len(transport.written)
    upstream.data_received(piece(audio[3]) + piece(audio[4]))
    assert step.pending > 0 and not caller._held
    assert transport.written[before:] == []
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert transport.written[before:] == [piece(out[3]) + piece(out[4])]
    # What it holds when the relay ends leaves before anything written after it.
    upstream.data_received(piece(audio[5]))
    step.send()
    answer.write_now(b"\x01\x00")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert transport.written[-2:] == [piece(out[5]), piece(b"\x01\x00")]
    relayed = out[2:]
    assert step.counts() == (4 * 480, sum(map(len, relayed)) // 2, sum(map(len, relayed)))
    step.close()


async def test_a_build_without_the_compiled_step_relays_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, relayed: Relayed
) -> None:
    """Where the package was built without a C compiler, the parser's body callback is
    :class:`providers._pool.PythonBody` and the relay's step the Python one: the same audio
    as through the pump's loop, relayed from the connection's callbacks."""
    import providers._pool as pool

    monkeypatch.setattr(pool, "Body", pool.PythonBody)
    monkeypatch.setattr(DirectRelay, "compiled_step", lambda self: None)
    audio = pieces(AUDIO, EVEN_CUTS)
    async with KeepAliveUpstream([Script(audio)]) as upstream:
        app = routing(upstream)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
        ):
            looped = await c.post("/stream-audio", json=body(48000))
        async with gateway(upstream) as url, httpx.AsyncClient(timeout=30) as client:
            direct = await client.post(f"{url}/stream-audio", json=body(48000))
    assert looped.status_code == direct.status_code == 200
    assert direct.content == looped.content
    (relay,) = relayed.relays
    assert relay._step is None and relayed.sizes  # the Python step relayed it
    assert isinstance(relay._upstream.pieces, pool.PythonBody)


async def test_the_python_body_callback_keeps_pieces_as_the_compiled_one_does() -> None:
    """:class:`providers._pool.PythonBody` and ``providers._relay.Body``: the pieces kept in
    order and counted, and a piece after the response's end refused."""
    compiled_step()
    from providers._pool import PythonBody
    from providers._relay import Body as CompiledBody

    for kind in (PythonBody, CompiledBody):
        chunks: list[bytes] = []
        callback = kind(chunks)
        callback(b"ab")
        callback(b"cde")
        assert chunks == [b"ab", b"cde"] and callback.buffered == 5
        assert callback.tap is None and not callback.complete
        callback.complete = True
        with pytest.raises(ValueError, match="after the end of the response"):
            callback(b"f")
        assert chunks == [b"ab", b"cde"]


#: Beside ``v``, asked alone: ``hedged`` in a hedge race (that never starts its hedge:
#: ``hedge_after`` is far beyond a loopback answer), ``cached`` through the phrase cache.
FIRST_AUDIO_VOICES = {
    "hedged": {"provider": "up", "hedge_after": 30, "fallback": ["v"]},
    "cached": {"provider": "up", "cache": True},
}


@pytest.mark.parametrize(("voice", "early"), [("v", True), ("hedged", False), ("cached", False)])
async def test_the_first_audio_is_written_by_the_attempt_that_made_it_when_nothing_else_can_answer(
    voice: str, early: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A voice asked alone has its answer's head and first audio written by the attempt that
    made the audio (``FirstAudio``), before the relay has handed the stream up, with the
    resampler made while the upstream worked on the request; a hedge race
    (whose other voice could still win) and the phrase cache (which may answer from what it
    stored) hand the stream up first, and the door writes it. Either way the caller gets the
    same head and the audio once, whole, in order, as the pump's loop through ASGI gives it."""
    from gateway.relay import Relay

    writes: list[bytes] = []
    at_relay_return: list[int] = []
    events: list[str] = []
    original_write, original_open = HTTPProtocol.write, Relay.open
    original_prepare, original_received = Converter.prepare, _Connection.data_received

    def recording(self: HTTPProtocol, data: bytes) -> None:
        writes.append(data)
        original_write(self, data)

    def preparing(self: Converter) -> None:
        original_prepare(self)
        events.append("resampler made" if self._resampler is not None else "prepared")

    def receiving(self: _Connection, data: bytes) -> None:
        if not events or events[-1] != "answered":
            events.append("answered")
        original_received(self, data)

    async def opening(self: Relay, *args: Any, **kwargs: Any) -> AudioStream:
        stream = await original_open(self, *args, **kwargs)
        at_relay_return.append(len(writes))
        return stream

    request = {**body(48000), "VoiceId": voice}
    caplog.set_level(logging.INFO, logger="gateway")
    async with KeepAliveUpstream([Script(pieces())]) as upstream:
        app = routing(upstream, voices=FIRST_AUDIO_VOICES)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
        ):
            looped = await c.post("/stream-audio", json=request, headers={"x-request-id": "r1"})
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(HTTPProtocol, "write", recording)
            patch.setattr(Relay, "open", opening)
            patch.setattr(Converter, "prepare", preparing)
            patch.setattr(_Connection, "data_received", receiving)
            async with (
                live_server(routing(upstream, voices=FIRST_AUDIO_VOICES)) as url,
                httpx.AsyncClient(timeout=30) as client,
            ):
                answer = await client.post(
                    f"{url}/stream-audio", json=request, headers={"x-request-id": "r2"}
                )
                line = await log_line(caplog, "r2")
    assert looped.status_code == answer.status_code == 200
    assert answer.content == looped.content
    assert abs(len(answer.content) // 2 - len(AUDIO) // 2 * 2) <= 2
    names = ("content-type", "x-sample-rate", "x-channels", "x-voice", "cache-control")
    assert [answer.headers.get(n) for n in names] == [looped.headers.get(n) for n in names]
    assert answer.headers["x-request-id"] == "r2" and answer.headers["x-voice"] == voice
    # Whether the head and the first audio were on their way when the relay returned, and
    # the resampler (24 -> 48 kHz: the polyphase filter whatever the first piece) made while
    # the upstream worked, before its answer arrived.
    assert at_relay_return == [1 if early else 0]
    assert events[:2] == (["resampler made", "answered"] if early else ["answered"])
    head, _, first_body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and dechunk(first_body + b"0\r\n\r\n")
    assert "ttfb_ms=" in line and "status=200" in line
