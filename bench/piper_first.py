"""First audio of the local Piper voice, in process: from the text to the first piece of audio
out of :meth:`PiperProvider.stream`, for one or more ``threads`` settings taken in turn (with
``--spinning``, each beside a twin whose ONNX Runtime threads busy-wait between parallel loops,
as they did before the provider turned that off).

Each request is one sentence; a request waits until the previous one is finished and a short
pause (a caller's turn) has passed, so that every one starts on an idle voice, as in scenario
(5) of ``bench.run``. Prints one JSON object: per setting, the first audio's p50 and p99 (wall
clock) and the process CPU time it took (p50), with the load average before and after.

    python -m bench.piper_first --threads 1,2 --requests 30
    python -m bench.piper_first --threads 2 --spinning --requests 40
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


class SpinningPiper(PiperProvider):
    """The provider with ONNX Runtime's default of spinning intra-op threads."""

    def _session_options(self) -> Any:
        options = super()._session_options()
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        return options


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


async def measure(threads: list[int], requests: int, spinning: bool) -> dict[str, Any]:
    providers: dict[str, PiperProvider] = {}
    for count in threads:
        kinds = (("", PiperProvider), (" spinning", SpinningPiper))[: 2 if spinning else 1]
        for suffix, kind in kinds:
            config = ProviderConfig(
                name="local", type="piper", settings={"threads": count}, max_concurrency=1
            )
            providers[f"threads={count}{suffix}"] = kind(config)
    names = list(providers)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    load_before = os.getloadavg()
    try:
        for provider in providers.values():
            await provider.start()
        for index in range(requests):
            order = names if index % 2 == 0 else names[::-1]  # alternate who goes first
            for name in order:
                await asyncio.sleep(PAUSE_S)
                runs[name].append(await first_audio(providers[name]))
    finally:
        for provider in providers.values():
            await provider.aclose()
    result: dict[str, Any] = {
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "requests": requests,
    }
    for name, samples in runs.items():
        wall = [w for w, _ in samples]
        result[name] = {
            "first_audio_p50_ms": round(statistics.median(wall), 1),
            "first_audio_p99_ms": round(percentile(wall, 0.99), 1),
            "cpu_p50_ms": round(statistics.median(c for _, c in samples), 1),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated threads settings")
    parser.add_argument("--requests", type=int, default=30, help="per setting")
    parser.add_argument("--spinning", action="store_true", help="each beside a spinning twin")
    args = parser.parse_args()
    threads = [int(x) for x in args.threads.split(",")]
    print(json.dumps(asyncio.run(measure(threads, args.requests, args.spinning))))


if __name__ == "__main__":
    main()
