"""First audio of the local Piper voice, in process: from the text to the first piece of audio
out of :meth:`PiperProvider.stream`, for one or more ``threads`` settings taken in turn.

Each request is one sentence; a request waits until the previous one is finished and a short
pause (a caller's turn) has passed, so that every one starts on an idle voice, as in scenario
(5) of ``bench.run``. Prints one JSON object: per setting, the first audio's p50 and p99 (wall
clock) and the process CPU time it took (p50), with the load average before and after.

    python -m bench.piper_first --threads 1,2 --requests 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

from providers.base import ProviderConfig, SynthesisJob
from providers.piper import PiperProvider

#: The sentence of scenario (5): its first clause is the first piece.
SENTENCE = "Thanks for calling the clinic, how can I help you today?"
#: Between requests: long enough for any busy-waiting worker thread to have gone to sleep.
PAUSE_S = 0.05


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def first_audio(provider: PiperProvider) -> tuple[float, float]:
    """One request: milliseconds to the first piece (wall, process CPU); the rest is drained."""
    job = SynthesisJob(text=SENTENCE, voice="joe", sample_rate=24000)
    wall, cpu = time.perf_counter(), time.process_time()
    stream = provider.stream(job)
    await anext(stream)
    elapsed = (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000
    async for _ in stream:
        pass
    return elapsed


async def measure(threads: list[int], requests: int) -> dict[str, Any]:
    providers = {}
    for count in threads:
        config = ProviderConfig(
            name=f"local{count}", type="piper", settings={"threads": count}, max_concurrency=1
        )
        providers[count] = PiperProvider(config)
        await providers[count].start()
    runs: dict[int, list[tuple[float, float]]] = {count: [] for count in threads}
    load_before = os.getloadavg()
    try:
        for index in range(requests):
            order = threads if index % 2 == 0 else threads[::-1]  # alternate who goes first
            for count in order:
                await asyncio.sleep(PAUSE_S)
                runs[count].append(await first_audio(providers[count]))
    finally:
        for provider in providers.values():
            await provider.aclose()
    result: dict[str, Any] = {
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "requests": requests,
    }
    for count, samples in runs.items():
        wall = [w for w, _ in samples]
        result[f"threads={count}"] = {
            "first_audio_p50_ms": round(statistics.median(wall), 1),
            "first_audio_p99_ms": round(percentile(wall, 0.99), 1),
            "cpu_p50_ms": round(statistics.median(c for _, c in samples), 1),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated threads settings")
    parser.add_argument("--requests", type=int, default=30, help="per setting")
    args = parser.parse_args()
    threads = [int(x) for x in args.threads.split(",")]
    print(json.dumps(asyncio.run(measure(threads, args.requests))))


if __name__ == "__main__":
    main()
