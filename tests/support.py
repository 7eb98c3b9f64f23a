"""Test fixtures that are real parts: a uvicorn server on loopback, a scripted provider, a
loopback upstream speaking the custom TTS interface, a loopback CosyVoice WebSocket server, the
transport that keeps provider clients off the network, and tone generators."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import httpx
import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from websockets.asyncio.server import ServerConnection, serve

from gateway.http1 import ConnectionLimits, protocol_factory
from gateway.logs import LOG_FORMAT, QUIET_LOGGERS, SERVER_LOGGERS, configure_logging
from providers.base import (
    AudioFormat,
    Container,
    Encoding,
    Provider,
    ProviderConfig,
    SynthesisJob,
    build_provider,
    register,
)


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> bytes:
    """A sine as S16LE mono."""
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * math.pi * freq * t) * amplitude * 32767).astype("<i2").tobytes()


def samples(pcm: bytes) -> np.ndarray:
    """S16LE bytes as float samples in [-1, 1]."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0


def peak_frequency(pcm: bytes, rate: int) -> float:
    """The frequency of the strongest FFT bin."""
    x = samples(pcm)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


# ---------------------------------------------------------------- scripted provider

Step = bytes | BaseException | asyncio.Event | float


@dataclass
class Plan:
    """What a scripted provider does on each attempt: attempt *i* runs ``attempts[i]`` (the
    last one repeats). Steps: bytes are yielded, exceptions raised, events awaited, floats
    slept. Everything the provider saw is recorded."""

    attempts: list[list[Step]]
    rate: int = 24000
    encoding: Encoding = "s16le"
    container: Container = "raw"
    jobs: list[SynthesisJob] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    started: list[float] = field(default_factory=list)
    shut_down: int = 0
    close_delay: float = 0.0  # seconds the stream's cleanup takes (like closing a response)


class ScriptedProvider(Provider):
    """``type: scripted`` — does what its :class:`Plan` says (tests only)."""

    type_name = "scripted"
    plans: ClassVar[dict[str, Plan]] = {}

    @property
    def plan(self) -> Plan:
        return self.plans[self.name]

    async def aclose(self) -> None:
        if self.name in self.plans:
            self.plan.shut_down += 1

    def native_format(self, job: SynthesisJob) -> AudioFormat:
        plan = self.plan
        return AudioFormat(plan.rate, encoding=plan.encoding, container=plan.container)

    async def stream(self, job: SynthesisJob) -> AsyncGenerator[bytes, None]:
        plan = self.plan
        steps = plan.attempts[min(len(plan.jobs), len(plan.attempts) - 1)]
        plan.jobs.append(job)
        plan.started.append(time.perf_counter())
        try:
            for step in steps:
                if isinstance(step, bytes):
                    yield step
                elif isinstance(step, BaseException):
                    raise step
                elif isinstance(step, asyncio.Event):
                    await step.wait()
                else:
                    await asyncio.sleep(step)
            plan.finished.append(time.perf_counter())
        finally:
            if plan.close_delay:
                await asyncio.sleep(plan.close_delay)
            plan.closed.append(time.perf_counter())


register("scripted", ScriptedProvider)


class FakeProvider(Provider):
    """``type: fake``: a plugin with settings of its own (one required, one checked), for
    routing-file tests; it is never asked for audio."""

    type_name = "fake"
    settings_keys = frozenset({"api_key", "base_url"})
    required_settings = frozenset({"api_key"})

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        url = settings.get("base_url")
        if url is not None and not str(url).startswith("http"):
            return [("base_url", "must be an http(s) URL")]
        return []

    def native_format(self, job: SynthesisJob) -> AudioFormat:
        return AudioFormat(sample_rate=24000)

    async def stream(self, job: SynthesisJob) -> AsyncGenerator[bytes, None]:
        yield b"\x00\x00"


register("fake", FakeProvider)


def job_maker(**defaults: Any) -> Callable[..., SynthesisJob]:
    """A factory of jobs for one provider's tests: ``defaults``, with the fields a test gives
    put over them."""
    base = SynthesisJob(**defaults)

    def job(**fields: Any) -> SynthesisJob:
        return dataclasses.replace(base, **fields)

    return job


async def drain(provider: Provider, job: SynthesisJob) -> bytes:
    """Everything a provider streams for one job; the provider is closed after."""
    try:
        return b"".join([chunk async for chunk in provider.stream(job)])
    finally:
        await provider.aclose()


async def synthesize(provider_type: str, job: SynthesisJob, **settings: Any) -> bytes:
    """:func:`drain` a provider of ``provider_type`` (named after it) built from ``settings``."""
    config = ProviderConfig(name=provider_type, type=provider_type, settings=settings)
    return await drain(build_provider(config), job)


async def eventually(condition: Callable[[], object], seconds: float = 2.0) -> bool:
    """Poll ``condition`` every 5 ms until it holds or ``seconds`` pass; whether it held."""
    for _ in range(int(seconds / 0.005)):
        if condition():
            return True
        await asyncio.sleep(0.005)
    return bool(condition())


async def log_line(caplog: pytest.LogCaptureFixture, request_id: str) -> str:
    """The request's own log line (written once its answer has ended)."""

    def find() -> str | None:
        prefix = f"request_id={request_id} "
        lines = [r.getMessage() for r in caplog.records if r.name == "gateway"]
        return next((line for line in lines if line.startswith(prefix)), None)

    assert await eventually(lambda: find() is not None), f"no log line for {request_id}"
    line = find()
    assert line is not None
    return line


@contextlib.contextmanager
def logging_at_debug(
    capsys: pytest.CaptureFixture[str], fmt: str = "text"
) -> Iterator[Callable[[], str]]:
    """The gateway's log configured at debug in ``fmt``, as ``serve`` does; yields a reader of
    all it has written to stderr so far. Everything it changed is put back after."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    saved_quiet = {
        name: logging.getLogger(name).level for name in (*QUIET_LOGGERS, *SERVER_LOGGERS)
    }
    configure_logging("debug", fmt)
    written: list[str] = []

    def read() -> str:
        written.append(capsys.readouterr().err)
        return "".join(written)

    try:
        yield read
    finally:
        configure_logging("debug", "text")  # what JSON routed through the log goes back
        for handler in root.handlers:
            if handler not in saved_handlers:
                root.removeHandler(handler)
        root.setLevel(saved_level)
        for name, level in saved_quiet.items():
            logging.getLogger(name).setLevel(level)


def leaked(secrets: Sequence[str], written: str, records: Sequence[logging.LogRecord]) -> list[str]:
    """The ``secrets`` in what the log wrote, or in any of its ``records`` as emitted (formatted
    without the masking the gateway's handler adds)."""
    raw = logging.Formatter(LOG_FORMAT)
    emitted = [raw.format(record) for record in records]
    return [s for s in secrets if s in written or any(s in line for line in emitted)]


# ---------------------------------------------------------------- live server


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def _uvicorn_logs_to_root() -> Iterator[None]:
    """uvicorn's loggers without the handlers its default log set-up left on them (writing to
    an earlier test's stderr), as in a process that never had it: their lines go to the root
    logger's handlers. Put back after."""
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    saved = [(logger.handlers[:], logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers.clear()
        logger.propagate = True
    try:
        yield
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers[:] = handlers
            logger.propagate = propagate


@contextlib.asynccontextmanager
async def live_server(
    app: Starlette | Callable[..., Any],
    limits: ConnectionLimits | None = None,
    server_log: str | None = None,
) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn and the gateway's own HTTP protocol (as ``tts-gateway serve``
    does) on a loopback port inside the running loop; yields the base URL. Real sockets, so
    chunking, timing and disconnects are what a caller would see. uvicorn logs at warning
    through a log of its own; with ``server_log`` (a level), at that level through the
    process's log, as under ``serve``."""
    sock = free_socket()
    port = sock.getsockname()[1]
    logging_options: dict[str, Any] = {"log_level": "warning"}
    own_log: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if server_log is not None:
        logging_options = {"log_level": server_log, "log_config": None}
        own_log = _uvicorn_logs_to_root()
    config = uvicorn.Config(
        app,
        lifespan="on",
        access_log=False,
        http=protocol_factory(limits or ConnectionLimits()),
        ws="none",
        **logging_options,
    )
    server = uvicorn.Server(config)
    with own_log:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("server stopped during start-up")
                await asyncio.sleep(0.01)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task
            sock.close()


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def read_chunk(self) -> bytes | None:
        """The next chunk of a chunked body (None at the end)."""
        size_line = await self.reader.readline()
        size = int(size_line.strip(), 16)
        if size == 0:
            await self.reader.readline()
            return None
        data = await self.reader.readexactly(size)
        await self.reader.readline()
        return data

    async def read_all(self) -> bytes:
        parts = []
        while (chunk := await self.read_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        self.writer.close()


async def raw_post(base_url: str, path: str, body: dict[str, Any]) -> RawResponse:
    """POST with a bare socket, returning as soon as the headers are in: the test decides when
    to read and when to hang up, which an HTTP client library would hide."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    payload = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode().partition(":")
        headers[key.strip().lower()] = value.strip()
    return RawResponse(status, headers, reader, writer)


# ---------------------------------------------------------------- loopback upstream


class LoopbackServer:
    """A server on 127.0.0.1, on a port of the system's choosing, for the span of an
    ``async with``; a subclass answers each request of a keep-alive connection in
    :meth:`_one_request` (or a whole connection in :meth:`_handle`)."""

    port: int = 0
    _server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream-audio"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; whether the connection stays open for another."""
        raise NotImplementedError


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """One HTTP/1.1 request off ``reader``: its target, its headers (names in lower case) and
    its body (as long as its Content-Length says)."""
    head = await reader.readuntil(b"\r\n\r\n")
    request_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    parts = request_line.split()
    return (parts[1] if len(parts) > 1 else ""), headers, body


@dataclass
class Upstream(LoopbackServer):
    """A loopback server speaking the custom TTS interface with a bare asyncio socket, so that
    the moment the gateway closes the connection is seen exactly (EOF on read).

    Each request gets ``chunks`` (with ``gap`` seconds between them) or, if ``status`` is not
    200, that status with ``error_body``. ``hold`` keeps the stream open after the chunks until
    the connection closes."""

    chunks: list[bytes] = field(default_factory=list)
    gap: float = 0.0
    status: int = 200
    error_body: bytes = b'{"error": {"code": "x", "message": "upstream says no"}}'
    extra_headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    request_headers: list[dict[str, str]] = field(default_factory=list)
    closed_at: list[float] = field(default_factory=list)
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        _, headers, body = await read_request(reader)
        self.requests.append(json.loads(body))
        self.request_headers.append(headers)
        if self.status != 200:
            extra = "".join(f"{k}: {v}\r\n" for k, v in self.extra_headers.items())
            writer.write(
                f"HTTP/1.1 {self.status} Error\r\nContent-Type: application/json\r\n{extra}"
                f"Content-Length: {len(self.error_body)}\r\n\r\n".encode()
                + self.error_body
            )
            await writer.drain()
            return True
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        eof = asyncio.create_task(reader.read(1))  # b"" when the gateway closes the connection
        try:
            for chunk in self.chunks:
                if eof.done():
                    break
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                if self.gap:
                    await asyncio.wait((eof,), timeout=self.gap)
            if self.hold and not eof.done():
                await eof
            if eof.done():
                self.closed_at.append(time.perf_counter())
                return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return False  # one request per connection keeps the EOF watch simple
        finally:
            eof.cancel()


def scripted_config(
    voices: dict[str, dict[str, Any]],
    providers: dict[str, dict[str, Any]],
    **server: Any,
) -> str:
    """A routing file (YAML is a superset of JSON) from plain dicts."""
    first = next(iter(voices))
    server.setdefault("default_voice", first)
    return json.dumps({"server": server, "providers": providers, "voices": voices})


def provider_block(**overrides: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "scripted",
        "retry": {"attempts": 3, "backoff": 0.01, "max_backoff": 0.05},
        "timeout": {"connect": 1, "first_byte": 2, "total": 30},
    }
    block.update(overrides)
    return block


# ---------------------------------------------------------------- no network


class LoopbackOnly(httpx.AsyncBaseTransport):
    """The transport under provider clients in tests (``tests/conftest.py`` puts it into
    ``providers._http.transport_factory``): loopback hosts go through the real transport, any
    other host is refused and recorded, so that no test reaches the network by mistake. (respx's
    mocks answer above the transport, so mocked requests never get here.)"""

    HOSTS: ClassVar[frozenset[str]] = frozenset({"127.0.0.1", "::1", "localhost"})
    refused: ClassVar[list[str]] = []

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host not in self.HOSTS:
            self.refused.append(f"{request.method} {request.url.copy_with(query=None)}")
            raise httpx.ConnectError("tests stay on loopback", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


# ---------------------------------------------------------------- loopback CosyVoice


class TaskServer:
    """A loopback CosyVoice (DashScope WebSocket task protocol) server: records what the client
    sent; answers as the service does, fails as told, or sends ``frames`` of the test's own."""

    def __init__(
        self,
        audio: list[bytes],
        fail: tuple[str, str] | None = None,
        frames: list[str | bytes] | None = None,
    ) -> None:
        self.audio = audio
        self.fail = fail
        self.frames = frames  # sent after finish-task instead of the audio and task-finished
        self.messages: list[dict[str, Any]] = []
        self.headers: dict[str, str] = {}
        self.closed = asyncio.Event()

    async def handle(self, socket: ServerConnection) -> None:
        assert socket.request is not None
        self.headers = {k.lower(): v for k, v in socket.request.headers.raw_items()}
        try:
            async for raw in socket:
                message = json.loads(raw)
                self.messages.append(message)
                header = message["header"]
                task = header["task_id"]
                if header["action"] == "run-task":
                    if self.fail:
                        code, text = self.fail
                        await socket.send(
                            json.dumps(
                                {
                                    "header": {
                                        "task_id": task,
                                        "event": "task-failed",
                                        "error_code": code,
                                        "error_message": text,
                                    },
                                    "payload": {},
                                }
                            )
                        )
                        continue
                    await socket.send(
                        json.dumps(
                            {"header": {"task_id": task, "event": "task-started"}, "payload": {}}
                        )
                    )
                elif header["action"] == "finish-task" and self.frames is not None:
                    for frame in self.frames:
                        await socket.send(frame)
                    await socket.wait_closed()  # then silence, until the client goes
                elif header["action"] == "finish-task":
                    for chunk in self.audio:
                        await socket.send(chunk)
                        await socket.send(
                            json.dumps(
                                {
                                    "header": {"task_id": task, "event": "result-generated"},
                                    "payload": {},
                                }
                            )
                        )
                    await socket.send(
                        json.dumps(
                            {"header": {"task_id": task, "event": "task-finished"}, "payload": {}}
                        )
                    )
        finally:
            self.closed.set()


@contextlib.asynccontextmanager
async def running_task_server(server: TaskServer) -> AsyncIterator[str]:
    """Serve ``server`` on a loopback port; yields the WebSocket URL."""
    async with serve(server.handle, "127.0.0.1", 0) as ws:
        port = next(iter(ws.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/api-ws/v1/inference"
