"""The custom door's own CPU per request: the door called as an ASGI app in this process (no
connection layer, no load generator beside it), in front of the mock upstream in a process of
its own, each request one 20 ms chunk asked for at 48 kHz (resampled from the upstream's 24).

- ``--concurrency N``: N requests at a time, ``--requests`` in all, ``--runs`` times: CPU per
  request (the process's), and the cycle collector's share of it (``gc.callbacks``, thread
  CPU time), under the collector's settings of a serving process (``gateway.cli.tune_gc``)
  unless ``--default-gc``;
- ``--concurrency 1``: one request at a time, also the CPU spent before its first audio byte
  went to the door's ``send`` and after.

``--code DIR`` (repeatable) measures another copy of the code (``git archive`` of a commit,
say) in a process of its own, the copies alternating ``--repeat`` times; medians at the end.

    python -m bench.door --concurrency 200 --code ../before --code . --repeat 3
    python -m bench.door --concurrency 1 --code ../before --code . --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.hotpath import routing

#: What each request asks for: 20 ms of audio, at once, resampled 24 -> 48 kHz.
EXTEND = json.dumps({"InstanceId": "bench", "BenchSeconds": 0.02, "BenchPace": "fast"})
BODY = json.dumps(
    {"Text": "Benchmark.", "VoiceId": "bench", "SampleRate": 48000, "ExtendData": EXTEND}
).encode()


class CollectorClock:
    """The cycle collector's CPU time (this thread's), from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._started


async def one(door: Any, marks: list[float] | None = None) -> None:
    """One request through ``door``; ``marks``: the CPU time of its first audio byte."""
    done = asyncio.Event()
    delivered = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            return
        if marks is not None and message.get("body") and len(marks) == 0:
            marks.append(time.process_time())
        if not message.get("more_body", False):
            done.set()

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/stream-audio",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))],
    }
    await door(scope, receive, send)
    if status != 200:
        raise RuntimeError(f"the door answered {status}")


async def measure(conf: Path, concurrency: int, requests: int, runs: int) -> dict[str, float]:
    """In this process (the code on ``sys.path``): the figures of ``runs`` runs, medians."""
    from gateway.front.custom_tts import CustomTTSDoor
    from gateway.logs import configure_logging
    from gateway.runtime import Gateway

    configure_logging("warning", "text")
    from gateway.config import load_config

    gateway = Gateway(load_config(str(conf)))
    await gateway.start()
    door = CustomTTSDoor(gateway)
    clock = CollectorClock()
    gc.callbacks.append(clock)
    rounds = max(1, requests // concurrency)
    per_request, collector, first, after = [], [], [], []
    try:
        for _ in range(3):  # warm up: connections pooled, code paths taken once
            await asyncio.gather(*(one(door) for _ in range(concurrency)))
        for _ in range(runs):
            gc.collect()
            clock.seconds = 0.0
            started = time.process_time()
            for _ in range(rounds):
                if concurrency == 1:
                    marks: list[float] = []
                    before = time.process_time()
                    await one(door, marks)
                    ended = time.process_time()
                    first.append(marks[0] - before)
                    after.append(ended - marks[0])
                else:
                    await asyncio.gather(*(one(door) for _ in range(concurrency)))
            cpu = time.process_time() - started
            per_request.append(cpu / (rounds * concurrency))
            collector.append(clock.seconds / (rounds * concurrency))
    finally:
        gc.callbacks.remove(clock)
        await gateway.stop()
    figures = {
        "us_per_request": statistics.median(per_request) * 1e6,
        "us_collector": statistics.median(collector) * 1e6,
    }
    if first:
        figures["us_to_first_byte"] = statistics.median(first) * 1e6
        figures["us_after_first_byte"] = statistics.median(after) * 1e6
    return figures


def worker(args: argparse.Namespace) -> None:
    """``--worker``: measure the code this process runs, print the figures as JSON."""
    if not args.default_gc:
        try:
            from gateway.cli import tune_gc
        except ImportError:  # code from before it: Python's settings, as that code ran with
            pass
        else:
            tune_gc()
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        run = asyncio.run
    figures = run(measure(Path(args.conf), args.concurrency, args.requests, args.runs))
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", action="append", type=Path, help="a copy of the code (repeat)")
    parser.add_argument("--repeat", type=int, default=1, help="alternations of the copies")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000, help="per run")
    parser.add_argument("--runs", type=int, default=5, help="per alternation (median)")
    parser.add_argument("--default-gc", action="store_true", help="Python's collector settings")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--conf", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from bench.harness import PY, ROOT, free_port, start

    codes = [c.resolve() for c in args.code or [ROOT]]
    figures: dict[str, list[dict[str, float]]] = {str(c): [] for c in codes}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port = free_port()
        upstream = start(
            "upstream", [PY, "-m", "bench.upstream", "--port", str(port)], port, workdir
        )
        try:
            conf = routing(workdir, port, cache=False)
            for turn in range(args.repeat):
                # Every other alternation in the other order (a place in it is worth a few
                # per cent; see bench.hotpath).
                for code in codes if turn % 2 == 0 else codes[::-1]:
                    # This file run as a script: the copy's gateway, whether or not the
                    # copy has this module.
                    command = [PY, __file__, "--worker", "--conf", str(conf)]
                    command += ["--concurrency", str(args.concurrency)]
                    command += ["--requests", str(args.requests), "--runs", str(args.runs)]
                    command += ["--default-gc"] if args.default_gc else []
                    env = {**os.environ, "PYTHONPATH": str(code)}
                    done = subprocess.run(
                        command, cwd=ROOT, env=env, capture_output=True, text=True, check=True
                    )
                    got = json.loads(done.stdout.strip().splitlines()[-1])
                    figures[str(code)].append(got)
                    shown = {key: round(value, 1) for key, value in got.items()}
                    print(f"{code}: {json.dumps(shown)}", flush=True)
        finally:
            upstream.stop()
    for code, runs in figures.items():
        medians = {key: round(statistics.median(r[key] for r in runs), 1) for key in runs[0]}
        print(f"median {code}: {json.dumps(medians)} of {len(runs)}")


if __name__ == "__main__":
    main()
