"""A loopback HTTP upstream whose every answer is scripted, for the resilience tests: it speaks
the custom TTS interface (and, given an API's documented status, body and headers, stands in
for a cloud API such as ElevenLabs), counts every request it is sent, and can hold an answer
back (nothing sent, or the stream left open) until the test lets it go, so that the test sees
exactly what reached the upstream and when the gateway hung up."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.config import parse_config
from tests.support import LoopbackServer, live_server, read_request, tone

#: 20 ms of a 440 Hz tone at 24 kHz: what a healthy upstream answers.
CHUNK = tone(440, 0.02, 24000)
#: 20 ms of a 660 Hz tone: the fallback's answer, told apart from the primary's by content.
OTHER = tone(660, 0.02, 24000)


@dataclass
class Answer:
    """One answer. ``status`` 200 sends ``chunks`` as a chunked audio stream; any other status
    sends ``body`` (JSON). ``headers`` go with either. ``before``: nothing at all is sent until
    it is set (an upstream still thinking); ``after``: the stream stays open after the chunks
    until it is set. Either wait ends at once when the gateway closes the connection."""

    status: int = 200
    chunks: tuple[bytes, ...] = (CHUNK,)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b'{"error": {"code": "unavailable", "message": "upstream says no"}}'
    before: asyncio.Event | None = None
    after: asyncio.Event | None = None


@dataclass
class Received:
    """A request as the upstream received it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def text(self) -> str:
        return str(self.body.get("Text", self.body.get("text", "")))


class AnsweringUpstream(LoopbackServer):
    """Answers each request with the next :class:`Answer` of :attr:`script`, or with
    :attr:`default` once the script is used up. Records every request (:attr:`requests`), the
    requests being answered at once (:attr:`active`, :attr:`peak`) and the answers the gateway
    hung up on before they were complete (:attr:`hung_up`)."""

    def __init__(self, default: Answer | None = None) -> None:
        self.default = default or Answer()
        self.script: collections.deque[Answer] = collections.deque()
        self.requests: list[Received] = []
        self.active = 0
        self.peak = 0
        self.hung_up = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The synthesis URL of the custom TTS interface."""
        return f"{self.base_url}/stream-audio"

    @property
    def count(self) -> int:
        """Requests received so far."""
        return len(self.requests)

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; whether the connection stays open for another."""
        target, headers, raw = await read_request(reader)
        answer = self.script.popleft() if self.script else self.default
        self.requests.append(Received(target, headers, json.loads(raw or b"{}")))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if answer.before is not None and not await _until(answer.before, reader):
                self.hung_up += 1
                return False
            extra = "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
            if answer.status != 200:
                writer.write(
                    f"HTTP/1.1 {answer.status} Error\r\nContent-Type: application/json\r\n"
                    f"{extra}Content-Length: {len(answer.body)}\r\n\r\n".encode()
                    + answer.body
                )
                await writer.drain()
                return True  # kept alive, as an API's error answers are
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{extra}"
                "Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            )
            for chunk in answer.chunks:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            if answer.after is not None and not await _until(answer.after, reader):
                self.hung_up += 1
                return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return False
        finally:
            self.active -= 1


async def _until(event: asyncio.Event, reader: asyncio.StreamReader) -> bool:
    """Wait for ``event``; False if the gateway closed the connection first. (The client sends
    nothing more on this connection until it has the answer, so a read ends only at EOF.)"""
    waiting = asyncio.ensure_future(event.wait())
    eof = asyncio.ensure_future(reader.read(1))
    try:
        await asyncio.wait((waiting, eof), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        eof.cancel()
    return event.is_set() and not eof.done()


@contextlib.asynccontextmanager
async def upstreams(count: int) -> AsyncIterator[list[AnsweringUpstream]]:
    """``count`` scripted upstreams, each healthy by default."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(AnsweringUpstream()) for _ in range(count)]


# ---------------------------------------------------------------- the gateway in front


def custom_block(url: str, **overrides: Any) -> dict[str, Any]:
    """A ``type: custom`` provider block over ``url`` with quick retries, and ``overrides``."""
    block: dict[str, Any] = {
        "type": "custom",
        "url": url,
        "retry": {"attempts": 1, "backoff": 0.01, "max_backoff": 0.02},
        "timeout": {"connect": 2, "first_byte": 10, "total": 30, "stall": 30},
    }
    block.update(overrides)
    return block


@contextlib.asynccontextmanager
async def serving(yaml: str) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """The gateway for the routing file ``yaml`` on a loopback port, and a client for it."""
    app = create_app(parse_config(yaml))
    async with live_server(app) as url, httpx.AsyncClient(timeout=30) as client:
        yield url, client


@contextlib.asynccontextmanager
async def caller(url: str, body: Mapping[str, Any]) -> AsyncIterator[None]:
    """A caller that sends ``body`` to the synthesis route and hangs up when the block ends,
    without reading a byte of the answer."""
    host, port = url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /stream-audio HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    await writer.drain()
    try:
        yield
    finally:
        writer.close()


# ---------------------------------------------------------------- reading the gateway


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with ``labels`` in a Prometheus text page (None if
    absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def scrape(client: httpx.AsyncClient, url: str) -> str:
    """The gateway's ``/metrics`` page."""
    response = await client.get(url + "/metrics")
    assert response.status_code == 200
    return response.text


async def provider_states(
    client: httpx.AsyncClient, url: str, token: str | None = None
) -> dict[str, dict[str, Any]]:
    """``GET /providers``, by provider name."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get(url + "/providers", headers=headers)
    assert response.status_code == 200, response.text
    return {entry["name"]: entry for entry in response.json()["providers"]}


async def line_of(client: httpx.AsyncClient, url: str, provider: str) -> int:
    """How many requests wait in line for a slot of ``provider`` (``GET /providers``)."""
    return int((await provider_states(client, url))[provider]["queue"])


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> bool:
    """Poll the async ``check`` every 10 ms until it holds or ``seconds`` pass; whether it
    held."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.01)
    return await check()


# ---------------------------------------------------------------- a whole-clip upstream


def clip_of(text: str) -> bytes:
    """The clip a :class:`WholeClipUpstream` answers ``text`` with: 10 ms of 24 kHz audio per
    character, made of the text's own bytes, so that each piece's audio is told apart."""
    raw = text.encode() or b"\x00"
    size = 480 * max(1, len(text))
    return (raw * (size // len(raw) + 1))[:size]


class WholeClipUpstream(LoopbackServer):
    """Speaks the custom TTS interface like a service that sends a file: each answer leaves
    whole (with its ``Content-Length``) once its synthesis is over, ``seconds_per_char`` per
    character of the text; the answer to request *i* (from 0) also waits for ``holds[i]`` if
    set. Logs ``received i``, ``answered i`` and ``hung up i`` (the gateway closed the
    connection before the answer) in :attr:`log`, which a test may write its own events into
    (:meth:`note`) to order them against the upstream's."""

    def __init__(self, seconds_per_char: float = 0.0) -> None:
        self.seconds_per_char = seconds_per_char
        self.holds: dict[int, asyncio.Event] = {}
        self.texts: list[str] = []
        self.log: list[str] = []
        self._noted = asyncio.Event()

    def note(self, entry: str) -> None:
        self.log.append(entry)
        self._noted.set()

    async def logged(self, entry: str, seconds: float = 10.0) -> None:
        """Once ``entry`` is in the log (an assertion error after ``seconds``)."""
        async with asyncio.timeout(seconds):
            while entry not in self.log:
                self._noted.clear()
                await self._noted.wait()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        _target, _headers, raw = await read_request(reader)
        text = str(json.loads(raw or b"{}").get("Text", ""))
        index = len(self.texts)
        self.texts.append(text)
        self.note(f"received {index}")
        hold = self.holds.get(index)

        async def synthesis() -> None:
            await asyncio.sleep(self.seconds_per_char * len(text))
            if hold is not None:
                await hold.wait()

        if not await _until_done(synthesis(), reader):
            self.note(f"hung up {index}")
            return False
        clip = clip_of(text)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(clip), clip)
        )
        await writer.drain()
        self.note(f"answered {index}")
        return True


async def _until_done(work: Awaitable[None], reader: asyncio.StreamReader) -> bool:
    """Wait for ``work``; False if the gateway closed the connection first."""
    working = asyncio.ensure_future(work)
    eof = asyncio.ensure_future(reader.read(1))
    try:
        await asyncio.wait((working, eof), return_when=asyncio.FIRST_COMPLETED)
    finally:
        working.cancel()
        eof.cancel()
        # The reader is free for the next request only once the read is over.
        await asyncio.gather(working, eof, return_exceptions=True)
    return not working.cancelled() and not (eof.done() and not eof.cancelled())
