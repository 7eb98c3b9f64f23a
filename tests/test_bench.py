"""The benchmark's own parts measure what they claim: the mock upstream sends the tone it
announces, the load generator counts bytes, first bytes, gaps and hang-ups correctly."""

from __future__ import annotations

import argparse
import asyncio
import math

import numpy as np

from bench.loadgen import run
from bench.upstream import CHUNK_SAMPLES, RATE, serve
from tests.support import free_socket, peak_frequency


async def start_upstream() -> tuple[asyncio.Task[None], int]:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    ready = asyncio.Event()
    task = asyncio.create_task(serve("127.0.0.1", port, ready))
    await ready.wait()
    return task, port


def arguments(port: int, **overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "url": f"http://127.0.0.1:{port}/stream-audio",
        "concurrency": 2,
        "requests": 6,
        "rate": RATE,
        "seconds": 0.2,
        "pace": "fast",
        "voice": "bench",
        "text": "Benchmark.",
        "drop": 0.0,
        "timeout": 10.0,
        "seed": 1,
        "ramp": 0.0,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


async def test_fast_requests_deliver_the_announced_tone() -> None:
    task, port = await start_upstream()
    try:
        data = await run(arguments(port))
    finally:
        task.cancel()
    results = data["results"]
    assert len(results) == 6
    expected = round(0.2 * 1000 / 20) * CHUNK_SAMPLES * 2
    assert all(r["status"] == 200 and r["bytes"] == expected for r in results)
    assert all(0 < r["ttfb"] <= r["total"] for r in results)


async def test_realtime_pacing_shows_in_the_gaps_and_the_total() -> None:
    task, port = await start_upstream()
    try:
        data = await run(arguments(port, requests=2, seconds=0.3, pace="realtime"))
    finally:
        task.cancel()
    for result in data["results"]:
        assert result["total"] >= 0.3 * 1000 - 25  # 15 chunks, 20 ms apart
        assert abs(float(np.median(result["gaps"])) - 20.0) < 5.0


async def test_dropped_requests_hang_up_midway() -> None:
    task, port = await start_upstream()
    try:
        data = await run(
            arguments(port, requests=20, drop=0.5, seconds=0.5, pace="realtime", concurrency=10)
        )
    finally:
        task.cancel()
    dropped = [r for r in data["results"] if r["dropped"]]
    complete = [r for r in data["results"] if not r["dropped"]]
    full = 0.5 * RATE * 2
    assert dropped and complete
    assert all(r["bytes"] < full for r in dropped)
    assert all(r["bytes"] == full for r in complete)
    assert not any(r["error"] for r in data["results"])


def test_the_tone_chunks_join_into_a_continuous_440_hz_sine() -> None:
    from bench.upstream import CHUNKS

    pcm = b"".join(chunk.split(b"\r\n")[1] for chunk in CHUNKS * 4)
    assert abs(peak_frequency(pcm, RATE) - 440) <= RATE / (len(pcm) // 2)
    x = np.frombuffer(pcm, dtype="<i2").astype(float)
    # No jump between the last sample of one cycle of chunks and the first of the next.
    assert np.abs(np.diff(x)).max() <= 2 * math.pi * 440 / RATE * 0.4 * 32767 + 2
