"""A relayed chunk's own CPU, without the sockets: the compiled relay step of ``--streams``
streams in one process, fed 20 ms chunks in turn.

Each stream is set up as the gateway sets up a relayed answer, on its own objects: a caller's
connection (``gateway.http1``) whose answer's head is out, an upstream connection of the pool
(``providers._pool``) whose response head has been read, and the :class:`DirectRelay` between
them with its compiled step (``providers/_relay.c``). What stands in for the sockets: the
upstream's chunks are handed to the connection's ``data_received`` as uvloop hands them, and
the caller's transport counts what it is given. Each round hands every stream one chunk of the
chunked coding (24 kHz, 20 ms), then lets the event loop go round once, which sends what the
step held (one write a stream). The figure is the process's CPU time per chunk, median of
``--runs``.

What this leaves out is what the real path pays beside it: the system calls (the upstream's
``recv``, the caller's ``send``, ``epoll``), uvloop's reading and dispatch, and the caches the
kernel and the other processes take between two chunks of one stream. Set beside the CPU per
chunk that ``bench.hotpath realtime`` measures of a whole gateway, it says how much of that is
the step itself::

    python -m bench.relay_step                       # 200 streams, 24 -> 48 kHz
    python -m bench.relay_step --rate 24000          # the caller's rate: no conversion
    cd ../before && python -m bench.relay_step     # another copy of the code, for an A/B
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from types import SimpleNamespace
from typing import Any, cast

import numpy as np

#: The upstream's rate; a chunk is 20 ms of it.
UPSTREAM_RATE = 24000
CHUNK_FRAMES = UPSTREAM_RATE // 50


class _CallerSide:
    """The caller's transport: counts the writes and the bytes it is given."""

    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


class _UpstreamSide:
    """The upstream's transport: reading is never paused here."""

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def measure(streams: int, rounds: int, runs: int, rate: int) -> dict[str, Any]:
    from gateway.audio import Converter
    from gateway.budgets import StallWatch
    from gateway.direct import DirectRelay
    from gateway.http1.exchange import Exchange
    from gateway.http1.io import ConnectionIO
    from providers._pool import _Connection
    from providers.base import AudioFormat

    class Caller(ConnectionIO):
        closes_after_this = False

        def response_complete(self, exchange: Exchange) -> None:
            pass

    loop = asyncio.get_running_loop()
    t = np.arange(CHUNK_FRAMES) / UPSTREAM_RATE
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()
    framed = b"%x\r\n%b\r\n" % (len(pcm), pcm)
    sides: list[_CallerSide] = []
    feeds = []
    relays: list[DirectRelay] = []
    tasks = []
    for _ in range(streams):
        caller = Caller(loop)
        side = _CallerSide()
        caller.transport = cast(Any, side)
        scope: Any = {"http_version": "1.1", "method": "POST"}
        answer = Exchange(cast(Any, caller), scope, keep_alive=True, expect_continue=False)
        answer.more_body = False
        answer._start(200, [(b"content-type", b"audio/pcm")])
        converter = Converter(AudioFormat(UPSTREAM_RATE), rate)
        answer.write_now(converter.feed(pcm))  # the head and the first audio, as the pump does
        stream = SimpleNamespace(
            converter=converter, provider=SimpleNamespace(name="up"), bytes_out=0
        )
        upstream = _Connection(("http", "127.0.0.1", 9))
        upstream.transport = cast(Any, _UpstreamSide())
        upstream.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        stall = StallWatch(30.0)
        stall._loop = loop
        relay = DirectRelay(cast(Any, stream), upstream, answer, stall, None, loop)
        tasks.append(asyncio.create_task(relay.run()))
        relays.append(relay)
        sides.append(side)
        feeds.append(upstream.data_received)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    written_before = [side.writes for side in sides]
    figures = []
    for _ in range(runs):
        started = time.process_time()
        for _ in range(rounds):
            for feed in feeds:
                feed(framed)
            await asyncio.sleep(0)  # the turn's end: the batch sends what the steps hold
        figures.append((time.process_time() - started) / (rounds * streams) * 1e6)
    await asyncio.sleep(0)
    writes = sum(side.writes for side in sides) - sum(written_before)
    compiled = sum(1 for relay in relays if relay.compiled)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "us_per_chunk": round(statistics.median(figures), 3),
        "runs": [round(f, 3) for f in figures],
        "streams": streams,
        "compiled_steps": compiled,
        "chunks": rounds * streams * runs,
        "caller_writes": writes,
        "caller_bytes": sum(side.bytes for side in sides),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=200, help="chunks per stream in a run")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--rate", type=int, default=48000, help="what the callers ask for")
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(measure(args.streams, args.rounds, args.runs, args.rate))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
