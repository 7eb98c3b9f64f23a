"""A mock TTS upstream speaking the custom TTS interface, cheap enough not to be the bottleneck.

``POST /stream-audio`` answers a 440 Hz tone as 24 kHz S16LE mono, in 20 ms chunks (one HTTP
chunk each), either as fast as the socket takes it or paced in real time. What each request gets
is read from its ``ExtendData`` (which a gateway passes on untouched), so the load generator
can drive the same upstream directly, through nginx and through the gateway::

    {"BenchSeconds": 3, "BenchPace": "realtime"}   # or "fast"
    {"BenchSeconds": 1, "BenchPace": "realtime", "BenchSpeed": 4}   # 20 ms chunks 5 ms apart
    {"BenchSeconds": 2, "BenchDelay": 0.15}   # answers after 150 ms, as a provider thinks first

Plain asyncio protocol code on uvloop: no framework, responses built from precomputed bytes.
:class:`UpstreamProtocol` is also the base of the fault-injecting upstream (``bench.faults``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import struct
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

RATE = 24000
CHUNK_MS = 20
CHUNK_SAMPLES = RATE * CHUNK_MS // 1000
_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


def _tone_chunks() -> list[bytes]:
    """Five 20 ms chunks of a 440 Hz tone: 100 ms hold exactly 44 periods, so cycling the five
    chunks keeps the tone continuous however long the answer."""
    samples = [
        round(0.4 * 32767 * math.sin(2 * math.pi * 440 * n / RATE))
        for n in range(5 * CHUNK_SAMPLES)
    ]
    pcm = struct.pack(f"<{len(samples)}h", *samples)
    size = CHUNK_SAMPLES * 2
    return [b"%x\r\n" % size + pcm[i * size : (i + 1) * size] + b"\r\n" for i in range(5)]


CHUNKS = _tone_chunks()
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nTransfer-Encoding: chunked\r\n"
    b"X-Sample-Rate: 24000\r\n\r\n"
)
END = b"0\r\n\r\n"


def parameters(body: bytes) -> tuple[float, float | None]:
    """(seconds of audio, speed) from the request's ExtendData; speed is how many times real
    time the chunks are paced (``BenchPace: realtime``, sped up by ``BenchSpeed``), or None
    for as fast as the socket takes them. Defaults: 1 s, fast."""
    seconds, speed = 1.0, None
    extend = _extend_data(body)
    try:
        seconds = float(extend.get("BenchSeconds", seconds))
        if extend.get("BenchPace") == "realtime":
            speed = max(0.01, float(extend.get("BenchSpeed", 1.0)))
    except (ValueError, TypeError):
        pass
    return seconds, speed


def delay(body: bytes) -> float:
    """Seconds to wait before answering (``BenchDelay``, at most 10): a provider's time to its
    first byte. Default 0."""
    try:
        return min(10.0, max(0.0, float(_extend_data(body).get("BenchDelay", 0.0))))
    except (ValueError, TypeError):
        return 0.0


def _extend_data(body: bytes) -> dict[str, Any]:
    """The request's ExtendData as a mapping ({} when there is none or it is malformed)."""
    try:
        extend = json.loads(body).get("ExtendData") or {}
        if isinstance(extend, str):
            extend = json.loads(extend) if extend.strip() else {}
    except (ValueError, AttributeError):
        return {}
    return extend if isinstance(extend, dict) else {}


class _Paced:
    """One answer being paced: its chunks, written on a fixed schedule (chunk ``n`` at
    ``start + n * interval``), each once its connection takes more."""

    __slots__ = ("chunks", "done", "index", "interval", "pacer", "protocol", "start")

    def __init__(
        self,
        pacer: _Pacer,
        protocol: UpstreamProtocol,
        chunks: Sequence[bytes],
        interval: float,
        start: float,
        done: asyncio.Future[bool],
    ) -> None:
        self.pacer = pacer
        self.protocol = protocol
        self.chunks = chunks
        self.interval = interval
        self.start = start
        self.index = 0
        self.done = done

    def step(self, now: float) -> None:
        """Write every chunk that is due (a late chunk does not delay the next ones), then
        book the next one with the pacer; a connection that takes no more is waited for."""
        protocol, chunks = self.protocol, self.chunks
        while True:
            transport = protocol.transport
            if transport is None:
                self.finish(False)
                return
            if protocol.paused:
                protocol.waiting = self
                return
            transport.write(chunks[self.index])
            self.index += 1
            if self.index == len(chunks):
                self.finish(True)
                return
            due = self.start + self.index * self.interval
            if due > now:
                self.pacer.book(self, due)
                return

    def finish(self, open_: bool) -> None:
        if not self.done.done():
            self.done.set_result(open_)


class _Pacer:
    """Paces every answer of the process from one timer per millisecond in use (the event
    loop's timers have millisecond resolution on uvloop anyway): an answer's next chunk is
    booked in the slot of the millisecond it is due, and one timer writes every chunk due in
    that slot. No task wakes up, no future is made, no timer set per chunk."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, list[_Paced]] = {}

    def book(self, paced: _Paced, due: float) -> None:
        slot = math.ceil(due * 1000 - 1e-6)
        booked = self.slots.get(slot)
        if booked is None:
            self.slots[slot] = [paced]
            self.loop.call_at(slot / 1000, self.fire, slot)
        else:
            booked.append(paced)

    def fire(self, slot: int) -> None:
        now = self.loop.time()
        for paced in self.slots.pop(slot):
            paced.step(now)


_PACERS: dict[asyncio.AbstractEventLoop, _Pacer] = {}


def _pacer() -> _Pacer:
    """The running loop's pacer."""
    loop = asyncio.get_running_loop()
    pacer = _PACERS.get(loop)
    if pacer is None:
        for stale in [other for other in _PACERS if other.is_closed()]:
            del _PACERS[stale]
        pacer = _PACERS[loop] = _Pacer(loop)
    return pacer


class UpstreamProtocol(asyncio.Protocol):
    """One connection; HTTP/1.1 keep-alive; one request at a time."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.paused = False  # the transport's buffer is full
        self.waiting: _Paced | None = None  # an answer waiting for it to drain

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.resume_writing()
        if self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.step(waiting.pacer.loop.time())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.maybe_start()

    def maybe_start(self) -> None:
        if self.task is not None and not self.task.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        match = _CONTENT_LENGTH.search(head)
        length = int(match.group(1)) if match else 0
        if len(self.buffer) < end + 4 + length:
            return
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        self.task = asyncio.get_running_loop().create_task(self.respond(head, body))

    def finished(self) -> None:
        """The answer is out: serve the next request of the connection, if it is in."""
        self.task = None
        self.maybe_start()

    async def respond(self, head: bytes, body: bytes) -> None:
        """Answer one request (``head``: its request line and headers)."""
        seconds, speed = parameters(body)
        count = max(1, round(seconds * 1000 / CHUNK_MS))
        wait = delay(body)
        if wait:
            await asyncio.sleep(wait)
        transport = self.transport
        if transport is None:
            return
        transport.write(HEAD)
        if speed is None:
            # Whole response at once, still as 20 ms HTTP chunks.
            full, rest = divmod(count, len(CHUNKS))
            transport.write(b"".join(CHUNKS) * full + b"".join(CHUNKS[:rest]) + END)
        else:
            chunks = [CHUNKS[index % len(CHUNKS)] for index in range(count)]
            if not await self.send_paced(chunks, CHUNK_MS / 1000 / speed):
                return
            transport.write(END)
        self.finished()

    async def send_paced(self, chunks: Sequence[bytes], interval: float) -> bool:
        """Write ``chunks`` ``interval`` seconds apart, on a fixed schedule (a late chunk does
        not delay the next ones), each once the socket takes more; whether the connection
        stayed open. The first is written at once; the process's one pacer writes the rest."""
        if not chunks:
            return self.transport is not None
        pacer = _pacer()
        done: asyncio.Future[bool] = pacer.loop.create_future()
        start = pacer.loop.time()
        _Paced(pacer, self, chunks, interval, start, done).step(start)
        return await done


async def serve(
    host: str,
    port: int,
    ready: asyncio.Event | None = None,
    protocol: Callable[[], asyncio.Protocol] = UpstreamProtocol,
) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, host, port, backlog=4096)
    if ready is not None:
        ready.set()
    print(f"upstream listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run_fast(serve(args.host, args.port))


def run_fast(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is there (it comes with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    main()
