"""Where one stream's first byte waits: the gateway's steps from a request's arrival to its
first audio, timed inside the gateway, one request at a time.

The gateway runs in a process of its own (``--workers 1``), started through this module
(``--serve``), which marks the steps below as they begin (and some as they end) with the
process's clocks: wall time (``perf_counter``) and the thread's CPU time (``thread_time``).
The load generator sends one request at a time (scenario (1)'s: 1 s of the mock upstream's
24 kHz audio, asked for at 48 kHz, so that the gateway resamples it); each request's marks
give the time between consecutive steps, and the report shows their medians over the
requests, in µs, beside the load generator's time to first byte through the gateway and
straight from the upstream.

    python -m bench.first_byte                   # 300 requests, the upstream at full speed
    python -m bench.first_byte --pace realtime   # a provider that trickles 20 ms chunks
    python -m bench.first_byte --requests 100 --pause 0.3 --fresh   # sentences 0.3 s apart,
                                                 # each on a new connection

The steps (a mark's name, then what starts there):

- ``request``: the request's bytes handed to the connection (``HTTPProtocol.data_received``);
- ``app``: the request's task runs the app (``HTTPProtocol._run``);
- ``parse``, ``parsed``: the door reads the body and checks it (``CustomTTSDoor.parse``);
- ``attempt``: an attempt at a voice opens its stream (``VoiceOpener._open_once``);
- ``upstream``: the provider's request handed to the upstream pool
  (``StreamingTransport.handle_async_request``), ``sent``: its head and body handed to the
  connection (``_Connection.send_request``), written at the end of the loop's turn;
- ``answered``: the upstream's first bytes arrive (``_Connection.data_received``);
- ``response``: the upstream's head parsed, the response handed back;
- ``first piece``, ``converted``: the first audio converted (``Converter.feed_first``);
- ``written``: the first audio written to the caller's socket (``Exchange._emit``).

Between ``sent`` and ``answered`` the gateway waits for the upstream: the wall time there is
mostly the upstream's (and the system's), the CPU time the gateway's own (the write's system
call among it). The marks cost ~1 µs each, counted in the steps they sit in.

``--timeline`` sends the measured requests from a plain socket in this process instead of the
load generator, and notes when each was sent and when its first body byte came back on the
clock the gateway's marks use (``perf_counter``, the system's monotonic clock, one for every
process), so that the caller's side lines up with the gateway's steps: from the caller's send
to the gateway's read of the request (the gateway's wake-up among it), the gateway's steps to
the upstream request and from the upstream's answer to the first audio written, and from that
write to the caller's read of it. The same client times the upstream straight.

    python -m bench.first_byte --timeline --requests 1000
"""

from __future__ import annotations

import argparse
import functools
import inspect
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: (module, owner, attribute, mark at its start, mark at its end or None).
POINTS: tuple[tuple[str, str | None, str, str, str | None], ...] = (
    ("gateway.http1.connection", "HTTPProtocol", "data_received", "request", None),
    ("gateway.http1.connection", "HTTPProtocol", "_run", "app", None),
    ("gateway.front.custom_tts", "CustomTTSDoor", "parse", "parse", "parsed"),
    ("gateway.attempts", "VoiceOpener", "_open_once", "attempt", None),
    ("providers._pool", "StreamingTransport", "handle_async_request", "upstream", "response"),
    ("providers._pool", "_Connection", "send_request", "sent", None),
    ("providers._pool", "_Connection", "data_received", "answered", None),
    ("gateway.audio", "Converter", "feed_first", "first piece", "converted"),
    ("gateway.http1.exchange", "Exchange", "_emit", "written", None),
)
#: The steps in the order a request takes them.
ORDER = (
    "request",
    "app",
    "parse",
    "parsed",
    "attempt",
    "upstream",
    "sent",
    "answered",
    "response",
    "first piece",
    "converted",
    "written",
)
#: Marks kept at most (a request takes ~15).
MAX_MARKS = 200_000

Mark = tuple[str, int, int]


def instrument(marks: list[Mark]) -> None:
    """Wrap every point of :data:`POINTS` so that it appends its marks to ``marks``."""
    import importlib

    wall, cpu = time.perf_counter_ns, time.thread_time_ns

    def note(label: str) -> None:
        if len(marks) < MAX_MARKS:
            marks.append((label, wall(), cpu()))

    for module_name, owner_name, attribute, begin, end in POINTS:
        module = importlib.import_module(module_name)
        owner: Any = module if owner_name is None else getattr(module, owner_name)
        original: Callable[..., Any] = getattr(owner, attribute)
        setattr(owner, attribute, _wrapped(original, note, begin, end))


def _wrapped(
    original: Callable[..., Any], note: Callable[[str], None], begin: str, end: str | None
) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def waited(*args: Any, **kwargs: Any) -> Any:
            note(begin)
            try:
                return await original(*args, **kwargs)
            finally:
                if end is not None:
                    note(end)

        return waited

    @functools.wraps(original)
    def called(*args: Any, **kwargs: Any) -> Any:
        note(begin)
        try:
            return original(*args, **kwargs)
        finally:
            if end is not None:
                note(end)

    return called


def serve(out: str, argv: list[str]) -> int:
    """Run the gateway (``argv``: its CLI's arguments) with the points marked; SIGUSR1 writes
    the marks to ``out`` (as JSON) and starts them afresh."""
    from gateway import cli

    marks: list[Mark] = []
    instrument(marks)

    def dump(_signum: int, _frame: object) -> None:
        Path(out + ".part").write_text(json.dumps(marks))
        os.replace(out + ".part", out)
        marks.clear()

    signal.signal(signal.SIGUSR1, dump)
    return cli.main(argv)


def requests_of(marks: list[Mark]) -> list[dict[str, tuple[int, int]]]:
    """Each request's first mark of each step, from ``request`` to ``written`` (requests one
    at a time: a ``request`` mark after a ``written`` one begins the next)."""
    found: list[dict[str, tuple[int, int]]] = []
    current: dict[str, tuple[int, int]] | None = None
    for label, wall, cpu in marks:
        if label == "request" and (current is None or "written" in current):
            current = {}
            found.append(current)
        if current is not None and label not in current:
            current[label] = (wall, cpu)
    return [r for r in found if "written" in r]


def steps(requests: list[dict[str, tuple[int, int]]]) -> list[dict[str, Any]]:
    """Median wall and CPU time (µs) from each step to the next one every request took, and
    from the first to the last."""
    taken = [label for label in ORDER if all(label in r for r in requests)]
    rows: list[dict[str, Any]] = []
    for a, b in [*itertools.pairwise(taken), (taken[0], taken[-1])]:
        wall = [(r[b][0] - r[a][0]) / 1000 for r in requests]
        cpu = [(r[b][1] - r[a][1]) / 1000 for r in requests]
        rows.append(
            {
                "from": a,
                "to": b,
                "wall_us_p50": round(statistics.median(wall), 1),
                "cpu_us_p50": round(statistics.median(cpu), 1),
            }
        )
    return rows


#: The timeline's rows: (label, from, to); ``sent by the caller`` and ``first byte at the
#: caller`` are the socket client's own times, the rest the gateway's marks.
TIMELINE = (
    ("the caller's send -> request read", "caller", "request"),
    ("request -> upstream request handed over", "request", "sent"),
    ("upstream request -> its answer read", "sent", "answered"),
    ("answer read -> first audio written", "answered", "written"),
    ("first audio written -> read by the caller", "written", "first byte"),
    ("the caller's send -> its first byte (TTFB)", "caller", "first byte"),
)


def timed_requests(
    url: str, count: int, rate: int, pace: str, pause: float = 0.0, fresh: bool = False
) -> list[tuple[int, int]]:
    """``count`` requests one at a time (``pause`` seconds apart, each on a new connection if
    ``fresh``), scenario (1)'s (1 s of audio), from a plain socket: for each, the
    ``perf_counter_ns`` of its send and of its first body byte's arrival. An answer that is
    not a 200 raises."""
    import socket
    from urllib.parse import urlsplit

    import httptools

    from bench.loadgen import build_request

    parts = urlsplit(url)
    request = build_request(url, rate, 1.0, pace, "bench")
    times: list[tuple[int, int]] = []
    sock: socket.socket | None = None
    try:
        for index in range(count):
            if index and pause:
                time.sleep(pause)
            if sock is None or fresh:
                if sock is not None:
                    sock.close()
                sock = socket.create_connection((parts.hostname or "", parts.port or 80), 10)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            answer = _Answer()
            parser = httptools.HttpResponseParser(answer)
            sent = time.perf_counter_ns()
            sock.sendall(request)
            while not answer.done:
                data = sock.recv(262144)
                if not data:
                    raise RuntimeError("the connection closed mid-answer")
                parser.feed_data(data)
            if parser.get_status_code() != 200 or answer.first is None:
                raise RuntimeError(f"answered {parser.get_status_code()} without audio")
            times.append((sent, answer.first))
    finally:
        if sock is not None:
            sock.close()
    return times


class _Answer:
    """The parser's callbacks for one answer: when its first body byte arrived, and its end."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.done = False

    def on_body(self, body: bytes) -> None:
        if self.first is None:
            self.first = time.perf_counter_ns()

    def on_message_complete(self) -> None:
        self.done = True


def timeline(
    requests: list[dict[str, tuple[int, int]]], times: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """Each :data:`TIMELINE` row's median (µs) over the requests, the gateway's marks of each
    lined up with the client's times of the same request (both in the order sent)."""
    if len(requests) != len(times):
        raise RuntimeError(f"{len(requests)} requests marked, {len(times)} timed")
    rows = []
    for label, start, end in TIMELINE:
        spans = []
        for marks, (sent, first) in zip(requests, times, strict=True):
            at = {**{k: v[0] for k, v in marks.items()}, "caller": sent, "first byte": first}
            spans.append((at[end] - at[start]) / 1000)
        rows.append({"step": label, "wall_us_p50": round(statistics.median(spans), 1)})
    return rows


def run(
    requests: int,
    pace: str,
    workdir: Path,
    pause: float = 0.0,
    fresh: bool = False,
    timed: bool = False,
) -> dict[str, Any]:
    """The measured requests, ``pause`` seconds apart (each on a new connection if
    ``fresh``), straight from the upstream and then through the gateway (``timed``: from
    :func:`timed_requests`, lined up with the gateway's steps in the report's
    ``timeline``)."""
    from bench.harness import PY, free_port, load, start
    from bench.run import UPSTREAM_RATE, gateway_conf, latency

    up_port = free_port()
    upstream = start(
        "upstream", [PY, "-m", "bench.upstream", "--port", str(up_port)], up_port, workdir
    )
    port = free_port()
    out = workdir / "marks.json"
    args = [PY, "-m", "bench.first_byte", "--serve", str(out), "--", "serve"]
    args += ["--config", str(gateway_conf(workdir, up_port)), "--host", "127.0.0.1"]
    args += ["--port", str(port), "--workers", "1"]
    gateway = start("gateway", args, port, workdir)
    try:
        options: dict[str, Any] = {"requests": requests, "seconds": 1, "pace": pace}
        direct_url = f"http://127.0.0.1:{up_port}/stream-audio"
        url = f"http://127.0.0.1:{port}/stream-audio"
        load(direct_url, workdir, **{**options, "requests": 50, "rate": UPSTREAM_RATE})
        load(url, workdir, **{**options, "requests": 50, "rate": 48000})
        gateway.process.send_signal(signal.SIGUSR1)  # the warm-up's marks dropped
        _wait_for(out)
        out.unlink()
        spaced: dict[str, Any] = {"pause": pause, "fresh": fresh}
        times: list[tuple[int, int]] = []
        if timed:
            straight = timed_requests(direct_url, requests, UPSTREAM_RATE, pace, pause, fresh)
            times = timed_requests(url, requests, 48000, pace, pause, fresh)
            ttfb = {
                "direct": statistics.median(b - a for a, b in straight) / 1e6,
                "gateway": statistics.median(b - a for a, b in times) / 1e6,
            }
            errors = 0.0
        else:
            direct = latency(
                load(direct_url, workdir, **{**options, **spaced, "rate": UPSTREAM_RATE})
            )
            through = latency(load(url, workdir, **{**options, **spaced, "rate": 48000}))
            ttfb = {"direct": direct["ttfb_p50"], "gateway": through["ttfb_p50"]}
            errors = direct["errors"] + through["errors"]
        gateway.process.send_signal(signal.SIGUSR1)
        _wait_for(out)
        marks: list[Mark] = [(m[0], m[1], m[2]) for m in json.loads(out.read_text())]
    finally:
        gateway.stop()
        upstream.stop()
    marked = requests_of(marks)
    report: dict[str, Any] = {
        "pace": pace,
        "pause": pause,
        "fresh": fresh,
        "requests": len(marked),
        "ttfb_ms_p50": ttfb,
        "errors": errors,
        "steps": steps(marked),
    }
    if timed:
        report["timeline"] = timeline(marked, times)
    return report


def _wait_for(path: Path, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway wrote no marks to {path}")
        time.sleep(0.05)


def show(report: dict[str, Any]) -> str:
    ttfb = report["ttfb_ms_p50"]
    lines = [
        f"{report['requests']} requests one at a time"
        + (f", {report['pause']:g} s apart" if report.get("pause") else "")
        + (", each on a new connection" if report.get("fresh") else "")
        + f", the upstream's pace: {report['pace']}; "
        f"TTFB p50 {ttfb['gateway']:.2f} ms through the gateway, {ttfb['direct']:.2f} ms "
        f"straight from the upstream",
        "",
        "| step (from -> to) | wall µs p50 | CPU µs p50 |",
        "|---|---|---|",
    ]
    for row in report["steps"]:
        lines.append(
            f"| {row['from']} -> {row['to']} | {row['wall_us_p50']} | {row['cpu_us_p50']} |"
        )
    if report.get("timeline"):
        lines += ["", "| the caller's side lined up (from -> to) | wall µs p50 |", "|---|---|"]
        lines += [f"| {row['step']} | {row['wall_us_p50']} |" for row in report["timeline"]]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        out, rest = sys.argv[2], sys.argv[3:]
        sys.exit(serve(out, rest[1:] if rest[:1] == ["--"] else rest))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--pace", choices=("fast", "realtime"), default="fast")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between requests")
    parser.add_argument("--fresh", action="store_true", help="a new connection per request")
    parser.add_argument("--json", help="write the report here too")
    parser.add_argument(
        "--timeline", action="store_true", help="time the requests from a socket, lined up"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        report = run(args.requests, args.pace, Path(workdir), args.pause, args.fresh, args.timeline)
    print(show(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
