"""Where the gateway's CPU goes: real-time streams per 20 ms chunk, and a burst per request.

One gateway process (``--workers 1``, so that one process is measured and profiled; with
``--workers N``, N of them, their CPU summed and py-spy recording each) in front of the mock
upstream (``bench.upstream``), driven by the load generator (``bench.loadgen``):

- ``realtime``: ``--streams`` callers, each stream paced in real time in 20 ms chunks, 24 kHz
  from the upstream resampled to the 48 kHz the callers ask for. Once every stream runs, the
  gateway's CPU time is read over ``--window`` seconds: its CPU per chunk is that time over the
  chunks the streams carried meanwhile (50 a second each). Each caller asks for one stream of
  ``--length`` seconds (10 by default) after another, so a shorter length puts more of the
  requests' own CPU (the path to the first byte, the end) into each chunk's share: scenario (3)
  of ``bench.run`` has streams of 3 s.
- ``burst``: ``--callers`` requests at one instant, each for one 20 ms chunk (so the answer costs
  next to nothing beside the request), ``--rounds`` times: the gateway's CPU per request, and
  the callers' time to first byte.

``--code DIR`` (repeatable) runs the gateway from another copy of the code (``git archive`` of a
commit, say): each copy gets its own gateway, all behind one upstream, and the measurements
alternate between them ``--repeat`` times (every other time in the other order), so that what
loads the machine meanwhile loads each alike. ``--pyspy FILE`` records the (first) gateway with
``py-spy record --format raw`` during the measurement and prints where its samples went, layer
by layer (:func:`layers`); the recording slows the gateway, so its CPU figures are not the ones
to compare.

    python -m bench.hotpath realtime --streams 150 --window 20 --pyspy rt.txt
    python -m bench.hotpath realtime --workers 2 --streams 200 --length 3 --window 12
    python -m bench.hotpath burst --callers 200 --rounds 10
    python -m bench.hotpath realtime --code ../before --code . --repeat 5
    python -m bench.hotpath burst --workers 2 --code ../before --code . --repeat 6 --rounds 6
    python -m bench.hotpath burst --workers 2 --code ../before --code . --interleave --repeat 30

``--interleave`` (burst) has the copies take turns burst by burst (``--repeat`` times
``--rounds`` turns) and prints, beside each copy's medians, each copy's figures against the
first copy's in the same turn: a ratio a turn, their median and quartiles.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.harness import (
    PY,
    ROOT,
    Server,
    cpu_ns,
    cpu_seconds,
    cpu_split,
    free_port,
    pct,
    start,
)

CHUNK_SECONDS = 0.02
#: What the callers ask for (``--rate``): 48 kHz has the upstream's 24 kHz resampled.
RATE = 48000
#: py-spy beside the interpreter (a virtual environment's), else on the PATH.
PYSPY = str(Path(PY).with_name("py-spy")) if Path(PY).with_name("py-spy").exists() else "py-spy"


def routing(workdir: Path, upstream: int, cache: bool) -> Path:
    """The gateway's routing: the bench voice on the mock upstream (``cache: true`` with
    ``cache``, every request then a miss of its own: a flight with one reader)."""
    path = workdir / "hotpath.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        server:
          max_concurrent_streams: 5000
          default_voice: bench
          log_level: warning
          {"cache: {memory_mb: 64}" if cache else ""}
        providers:
          upstream:
            type: custom
            url: http://127.0.0.1:{upstream}/stream-audio
            sample_rates: [24000]
            max_concurrency: 2000
            timeout: {{connect: 5, first_byte: 30, total: 120}}
            retry: {{attempts: 1}}
        voices:
          bench: {{provider: upstream, cache: {"true" if cache else "false"}}}
        """)
    )
    return path


def gateway(code: Path, conf: Path, workdir: Path, name: str, workers: int = 1) -> Server:
    """A gateway (``workers`` worker processes) run from the copy of the code at ``code``."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(code)}
    args = [PY, "-m", "gateway.cli", "serve", "--config", str(conf), "--host", "127.0.0.1"]
    args += ["--port", str(port), "--workers", str(workers)]
    return start(name, args, port, workdir, env, cwd=code)


def settled(server: Server, workdir: Path, callers: int, seconds: float = 60.0) -> None:
    """Wait until the gateway has started (its processes' CPU time still over a moment: the
    port answers before every worker is up), then send one burst of ``callers`` that is not
    measured: every worker then has its upstream connections and its code paths warm, and no
    worker's start-up is counted in, or recorded with, the first measured run."""
    deadline = time.monotonic() + seconds
    before = cpu_seconds(server.pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = cpu_seconds(server.pid)
        if now == before:
            break
        before = now
    url = f"http://127.0.0.1:{server.port}/stream-audio"
    # Texts of their own: with a cache voice, the runs after find none of them stored.
    warm = loadgen(
        url, workdir / "warm.json", requests=callers, concurrency=callers, rate=RATE, ids="warm"
    )
    warm.wait()


def loadgen(url: str, out: Path, **options: Any) -> subprocess.Popen[bytes]:
    args = [PY, "-m", "bench.loadgen", "--url", url, "--json", str(out)]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextmanager
def recording(pid: int, path: str | None, seconds: float) -> Iterator[None]:
    """``py-spy record`` of ``pid`` and its child processes while the block runs (nothing
    without ``path``); with ``HOTPATH_NATIVE=1`` in the environment, C frames too (the
    process is paused for each sample then, so sample at a quarter of the rate)."""
    if path is None:
        yield
        return
    native = os.environ.get("HOTPATH_NATIVE") == "1"
    how = ["--native", "--rate", "250"] if native else ["--nonblocking", "--rate", "1000"]
    duration = ["--duration", str(round(seconds)), "--output", path]
    spy = subprocess.Popen(
        [PYSPY, "record", "--pid", str(pid), "--subprocesses", "--format", "raw", *how, *duration],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.wait(timeout=seconds + 30)


def realtime(
    server: Server,
    workdir: Path,
    streams: int,
    window: float,
    spy: str | None,
    ids: bool,
    rate: int = RATE,
    length: float = 10.0,
) -> dict[str, float]:
    """The gateway's CPU per chunk over ``window`` seconds of ``streams`` real-time streams,
    each ``length`` seconds long."""
    # Each caller starts at its own offset within one stream's length, then asks for streams
    # back to back: all ``streams`` run from ``length`` on, for as long as the window needs.
    per_caller = int((length + window + 4) // length) + 2
    out = workdir / "realtime.json"
    options: dict[str, Any] = {"ids": "rt"} if ids else {}
    process = loadgen(
        f"http://127.0.0.1:{server.port}/stream-audio",
        out,
        requests=streams * per_caller,
        concurrency=streams,
        rate=rate,
        seconds=length,
        pace="realtime",
        ramp=length,
        **options,
    )
    try:
        time.sleep(length + 1)
        user, system = cpu_split(server.pid)
        started = time.monotonic()
        with recording(server.pid, spy, window):
            time.sleep(window)
        user_after, system_after = cpu_split(server.pid)
        cpu = user_after - user + system_after - system
        wall = time.monotonic() - started
    finally:
        process.terminate()
        process.wait()
    chunks = streams * wall / CHUNK_SECONDS
    return {
        "cpu_share": cpu / wall,
        "system_share": (system_after - system) / cpu,
        "us_per_chunk": cpu / chunks * 1e6,
    }


def burst(
    server: Server, workdir: Path, callers: int, rounds: int, spy: str | None
) -> dict[str, float]:
    """The gateway's CPU per request, ``callers`` at one instant, ``rounds`` times."""
    out = workdir / "burst.json"
    url = f"http://127.0.0.1:{server.port}/stream-audio"
    ttfb: list[float] = []
    cpu = 0.0
    errors = 0
    with recording(server.pid, spy, rounds * 2.0):
        for _ in range(rounds):
            time.sleep(0.5)  # the previous round's connections closed
            process = loadgen(
                url, out, requests=callers, concurrency=callers, rate=RATE, seconds=0.02
            )
            # Started once the load generator is up: its own start-up is not the gateway's.
            before = cpu_ns(server.pid)
            process.wait()
            cpu += (cpu_ns(server.pid) - before) / 1e9
            results = json.loads(out.read_text())["results"]
            errors += sum(1 for r in results if r["error"] or r["status"] != 200)
            ttfb += [r["ttfb"] for r in results if r["status"] == 200]
    return {
        "ms_per_request": cpu / (callers * rounds) * 1000,
        "ttfb_p50": pct(ttfb, 0.5),
        "ttfb_p99": pct(ttfb, 0.99),
        "errors": errors,
    }


# ------------------------------------------------------------------ the profile, by layer

#: Layers of the path, each a pattern over py-spy's frame (``function (file:line)``). A sample
#: goes to the deepest frame of the stack that matches one: its own work, and whatever it
#: called that belongs to no layer (numpy under the converter, the socket write under http1).
LAYERS: list[tuple[str, str]] = [
    ("upstream read (providers/_pool.py)", r"\(providers/_pool\.py"),
    ("httpx (request building, response iteration)", r"\(httpx/"),
    (
        "provider generators (_streams, custom.audio, _http.audio, _piece)",
        r"\(providers/(_streams|custom)\.py|(audio|_piece) \(providers/_http",
    ),
    ("pieces wrapper (_pieces.pipelined)", r"\(providers/_pieces\.py"),
    ("HTTPProvider.stream", r"^HTTPProvider\.stream \("),
    ("other provider code (_http: build, open_stream; sentences)", r"\(providers/"),
    ("converter (gateway/audio.py, soxr, numpy)", r"\(gateway/audio\.py"),
    ("phrase cache, flight", r"\(gateway/cache/"),
    ("AudioStream.chunks", r"\(gateway/stream\.py"),
    ("Synthesis.pump, budgets", r"^Synthesis\.pump|\(gateway/budgets\.py"),
    ("direct relay (gateway/direct.py)", r"\(gateway/direct\.py"),
    ("ASGI send (the door's write)", r"write \(gateway/front/custom_tts"),
    ("http1 exchange send", r"^Exchange\.(send|write_now|_emit) \("),
    ("http1 socket write (transport.write: the send syscall)", r"^ConnectionIO\.write \("),
    ("http1 connection, request reading", r"\(gateway/http1/"),
    ("front door: body, parse, validate", r"\(gateway/(front|request|extend_data|shaping)"),
    (
        "relay, attempts, admission, breaker",
        r"\(gateway/(relay|attempts|admission|breaker|sticky|health|window|spend)",
    ),
    ("metrics, logs (prometheus_client)", r"\(gateway/(metrics|logs)|\(prometheus_client/"),
    ("synthesis core (open, Outcome)", r"\(gateway/synthesis\.py"),
    ("routing", r"\(gateway/(routing|runtime)"),
    ("tenacity", r"\(tenacity/"),
    (
        "json, re, uuid, other stdlib",
        r"\((json|re|uuid|urllib|email|enum|typing)/|\(contextlib|\(dataclasses|\(functools",
    ),
    ("asyncio (tasks, timeouts, wait)", r"\(asyncio/(?!runners)"),
    (
        "event loop in C (uvloop: epoll, socket reads, timers, task steps)",
        r"^Runner\.run \(asyncio/runners",
    ),
]


def layers(raw: str) -> list[tuple[str, int]]:
    """Samples per layer from a py-spy ``--format raw`` file (``frame;frame;... count`` per
    line, root first)."""
    compiled = [(name, re.compile(pattern)) for name, pattern in LAYERS]
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        owner = "other (event loop, interpreter)"
        for frame in reversed(stack.split(";")):
            found = next((name for name, pattern in compiled if pattern.search(frame)), None)
            if found is not None:
                owner = found
                break
        counts[owner] += int(count)
    return counts.most_common()


def show_layers(path: str, per_unit: float | None, unit: str) -> None:
    """Print the layers of a recording; with ``per_unit``, what each share is of it."""
    found = layers(Path(path).read_text())
    total = sum(count for _, count in found) or 1
    print(f"{path}: {total} samples")
    for name, count in found:
        share = count / total
        cost = f"  {share * per_unit:8.2f} {unit}" if per_unit is not None else ""
        print(f"  {share * 100:5.1f} %{cost}  {name}")


def interleaved(
    pairs: list[tuple[Path, Server]],
    workdir: Path,
    callers: int,
    turns: int,
    figures: dict[str, list[dict[str, float]]],
) -> None:
    """``--interleave``: one burst of each copy a turn (every other turn in the other order),
    ``turns`` turns, each burst's figures added to its copy's in ``figures`` (compared turn by
    turn by :func:`show_ratios`). These machines' speed moves within seconds, and a turn's
    bursts, a second or so apart, meet it alike. One burst's CPU a request still moves by itself
    (~±17 % between two copies of the same code, ``bench/changes.md``), so a difference of a
    few per cent takes many turns."""
    for turn in range(turns):
        for code, server in pairs if turn % 2 == 0 else pairs[::-1]:
            figures[str(code)].append(burst(server, workdir, callers, 1, None))


def show_ratios(codes: list[Path], figures: dict[str, list[dict[str, float]]]) -> None:
    """Each copy's figures against the first copy's in the same turn of :func:`interleaved`,
    a ratio a turn: their median and quartiles."""
    base = figures[str(codes[0])]
    for code in codes[1:]:
        for key in ("ms_per_request", "ttfb_p99"):
            ratios = sorted(r[key] / b[key] for r, b in zip(figures[str(code)], base, strict=True))
            q1, q2, q3 = statistics.quantiles(ratios, n=4)
            print(
                f"{code} / {codes[0]}, {key}, turn by turn: median {q2:.3f} "
                f"(quartiles {q1:.3f}-{q3:.3f}) of {len(ratios)}"
            )


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=("realtime", "burst"))
    parser.add_argument("--code", action="append", type=Path, help="a copy of the code (repeat)")
    parser.add_argument("--repeat", type=int, default=1, help="alternations of the copies")
    parser.add_argument("--streams", type=int, default=150)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--length", type=float, default=10.0, help="seconds a stream (realtime)")
    parser.add_argument("--callers", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=RATE, help="what the callers ask for")
    parser.add_argument("--cache", action="store_true", help="a cache: true voice (misses)")
    parser.add_argument("--pyspy", help="record the first gateway with py-spy into this file")
    parser.add_argument(
        "--workers", type=int, default=1, help="the gateway's worker processes (default 1)"
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="burst: the copies take turns burst by burst, compared pair by pair",
    )
    args = parser.parse_args()
    codes = [c.resolve() for c in args.code or [ROOT]]
    if len(set(codes)) != len(codes):
        parser.error("each --code once (for two runs of the same code, copy it)")
    if args.interleave and args.scenario != "burst":
        parser.error("--interleave is for the burst")
    figures: dict[str, list[dict[str, float]]] = {str(c): [] for c in codes}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        up_port = free_port()
        upstream = start(
            "upstream", [PY, "-m", "bench.upstream", "--port", str(up_port)], up_port, workdir
        )
        stack.callback(upstream.stop)
        conf = routing(workdir, up_port, args.cache)
        servers = []
        for index, code in enumerate(codes):
            server = gateway(code, conf, workdir, f"gateway{index}", args.workers)
            stack.callback(server.stop)
            servers.append(server)
        for server in servers:
            settled(server, workdir, args.callers)
        pairs = list(zip(codes, servers, strict=True))
        if args.interleave:
            interleaved(pairs, workdir, args.callers, args.repeat * args.rounds, figures)
        for turn in range(0 if args.interleave else args.repeat):
            # Every other turn in the other order: a copy's place in the turn is worth a few
            # per cent (measured: whichever ran second read 4-8 % less CPU a request in
            # bursts), which an even number of turns cancels out.
            for index, (code, server) in enumerate(pairs if turn % 2 == 0 else pairs[::-1]):
                spy = args.pyspy if turn == 0 and index == 0 else None
                if args.scenario == "realtime":
                    got = realtime(
                        server,
                        workdir,
                        args.streams,
                        args.window,
                        spy,
                        args.cache,
                        args.rate,
                        args.length,
                    )
                else:
                    got = burst(server, workdir, args.callers, args.rounds, spy)
                upstream_note = f"upstream cpu {cpu_seconds(upstream.pid):.1f} s"
                print(f"{code}: {json.dumps(got)} ({upstream_note})", flush=True)
                if spy is not None:
                    if "us_per_chunk" in got:
                        show_layers(spy, got["us_per_chunk"], "us/chunk (CPU of the recorded run)")
                    else:
                        show_layers(spy, got["ms_per_request"] * 1000, "us/request")
                else:
                    figures[str(code)].append(got)
    for code, runs in figures.items():
        if runs:
            medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            print(f"median {code}: {json.dumps(medians)} of {len(runs)}")
    if args.interleave and len(codes) > 1:
        show_ratios(codes, figures)


if __name__ == "__main__":
    main()
