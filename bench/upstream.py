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
from collections.abc import Callable, Coroutine, Iterable
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


class UpstreamProtocol(asyncio.Protocol):
    """One connection; HTTP/1.1 keep-alive; one request at a time."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.writable.set()
        if self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

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
            chunks = (CHUNKS[index % len(CHUNKS)] for index in range(count))
            if not await self.send_paced(chunks, CHUNK_MS / 1000 / speed):
                return
            transport.write(END)
        self.finished()

    async def send_paced(self, chunks: Iterable[bytes], interval: float) -> bool:
        """Write ``chunks`` ``interval`` seconds apart, on a fixed schedule (a late chunk does
        not delay the next ones), each once the socket takes more; whether the connection
        stayed open."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, chunk in enumerate(chunks):
            delay = start + index * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.transport is None:
                return False
            await self.writable.wait()
            if self.transport is None:
                return False
            self.transport.write(chunk)
        return self.transport is not None


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
