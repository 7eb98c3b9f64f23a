"""First audio of the local Piper voice, in process: from the text to the first piece of audio
out of :meth:`PiperProvider.stream`, for one or more ``threads`` settings taken in turn (with
``--spinning``, each beside a twin whose ONNX Runtime threads busy-wait between parallel loops,
as they did before the provider turned that off; with ``--whole``, beside a twin that runs the
voice's graph whole, one run per sentence, as before the decoder was run in windows).

Each request is one sentence; a request waits until the previous one is finished and a short
pause (a caller's turn) has passed, so that every one starts on an idle voice, as in scenario
(5) of ``bench.run``. Prints one JSON object: per setting, the first audio's p50 and p99 (wall
clock), the process CPU time it took (p50), the CPU time of the whole request (p50) and the
least audio a caller playing from the first piece on had left when a later piece arrived (the
margin against an underrun, worst of all requests), with the load average before and after;
for a voice run in windows, the CPU time of the front on the first clause (the text encoder and
durations, and the flow when it runs with them) and of the first window (its decode, and the flow
on its frames when the flow is cut off the front), p50.

    python -m bench.piper_first --threads 1,2 --requests 30
    python -m bench.piper_first --threads 2 --spinning --requests 40
    python -m bench.piper_first --threads 1 --whole --requests 40
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
from providers.piper import PiperProvider, _SplitGraph
from providers.piper_graph import NoDecoderSplit

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


class WholePiper(PiperProvider):
    """The provider running the voice's graph whole, one ONNX run per sentence."""

    def _split(self, hop_length: int | None) -> _SplitGraph:
        raise NoDecoderSplit("measured whole")


class Parts:
    """The CPU time of a split provider's front and of its first window, per request, in the
    worker thread that runs them (with more than one ONNX thread, their pool's share is not in
    it)."""

    def __init__(self, graph: _SplitGraph) -> None:
        self.front: list[float] = []
        self.first_window: list[float] = []
        self._fresh = False
        latent_of, decode = graph.latent_of, graph.decode

        def timed_front(inputs: Any) -> Any:
            cpu = time.thread_time()
            latent = latent_of(inputs)
            if self._fresh:
                self.front.append((time.thread_time() - cpu) * 1000)
            return latent

        def timed_decode(latent: Any, start: int, stop: int) -> Any:
            cpu = time.thread_time()
            audio = decode(latent, start, stop)
            if self._fresh:
                self.first_window.append((time.thread_time() - cpu) * 1000)
                self._fresh = False
            return audio

        graph.latent_of = timed_front  # type: ignore[method-assign]
        graph.decode = timed_decode  # type: ignore[method-assign]

    def next_request(self) -> None:
        self._fresh = True


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def first_audio(provider: PiperProvider) -> tuple[float, float, float, float]:
    """One request: milliseconds to the first piece (wall, process CPU), the process CPU of
    the whole request (the rest drained as fast as it comes), and the least audio a caller
    playing from the first piece on had left to play when a later piece arrived (ms)."""
    job = SynthesisJob(text=SENTENCE, voice="joe", sample_rate=24000)
    fmt = provider.native_format(job)
    wall, cpu = time.perf_counter(), time.process_time()
    stream = provider.stream(job)
    piece = await anext(stream)
    started = time.perf_counter()
    first = (started - wall) * 1000, (time.process_time() - cpu) * 1000
    queued = len(piece) / fmt.frame_bytes / fmt.sample_rate
    ahead = float("inf")
    async for piece in stream:
        ahead = min(ahead, queued - (time.perf_counter() - started))
        queued += len(piece) / fmt.frame_bytes / fmt.sample_rate
    return (*first, (time.process_time() - cpu) * 1000, ahead * 1000)


async def measure(
    threads: list[int], requests: int, spinning: bool, whole: bool = False
) -> dict[str, Any]:
    providers: dict[str, PiperProvider] = {}
    for count in threads:
        kinds: list[tuple[str, type[PiperProvider]]] = [("", PiperProvider)]
        if spinning:
            kinds.append((" spinning", SpinningPiper))
        if whole:
            kinds.append((" whole", WholePiper))
        for suffix, kind in kinds:
            config = ProviderConfig(
                name="local", type="piper", settings={"threads": count}, max_concurrency=1
            )
            providers[f"threads={count}{suffix}"] = kind(config)
    names = list(providers)
    runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in names}
    parts: dict[str, Parts] = {}
    load_before = os.getloadavg()
    try:
        for name, provider in providers.items():
            await provider.start()
            if isinstance(provider._graph, _SplitGraph):
                parts[name] = Parts(provider._graph)
        for index in range(requests):
            order = names if index % 2 == 0 else names[::-1]  # alternate who goes first
            for name in order:
                await asyncio.sleep(PAUSE_S)
                if name in parts:
                    parts[name].next_request()
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
        wall = [w for w, _, _, _ in samples]
        result[name] = {
            "first_audio_p50_ms": round(statistics.median(wall), 1),
            "first_audio_p99_ms": round(percentile(wall, 0.99), 1),
            "cpu_p50_ms": round(statistics.median(c for _, c, _, _ in samples), 1),
            "request_cpu_p50_ms": round(statistics.median(t for _, _, t, _ in samples), 1),
            "audio_ahead_min_ms": round(min(a for _, _, _, a in samples), 1),
        }
        if name in parts:
            result[name]["front_cpu_p50_ms"] = round(statistics.median(parts[name].front), 1)
            window = statistics.median(parts[name].first_window)
            result[name]["first_window_cpu_p50_ms"] = round(window, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated threads settings")
    parser.add_argument("--requests", type=int, default=30, help="per setting")
    parser.add_argument("--spinning", action="store_true", help="each beside a spinning twin")
    parser.add_argument("--whole", action="store_true", help="each beside a whole-graph twin")
    args = parser.parse_args()
    threads = [int(x) for x in args.threads.split(",")]
    print(json.dumps(asyncio.run(measure(threads, args.requests, args.spinning, args.whole))))


if __name__ == "__main__":
    main()
