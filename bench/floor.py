"""The floor under the gateway's real-time CPU: what the least a Python relay can do costs.

Scenario (3) compares the gateway with nginx, a proxy in C. The gap between them holds two
things: what the gateway does that a bare relay does not (routing, admission, budgets, the
stall watch, metrics, its own connection layer's deadlines and bounds) and what any relay in
Python on this event loop pays per chunk (the interpreter between the upstream's read and the
caller's write, and the resampler's numpy calls). This bench measures the second alone, with
a relay that does nothing else: :class:`FloorRelay` reads a request (httptools), forwards its
body as it is to the mock upstream over a kept-alive connection, and writes each body chunk of
the answer to the caller as it arrives (chunked), resampled 24 → 48 kHz by the gateway's own
polyphase filter with ``--resample``. No routing, no limits, no deadlines, no flow control:
not a server to run, a floor to measure against.

The same 200 real-time streams as scenario (3) (3 s each, callers spread over one stream's
length, three streams each) go through nginx, the floor relay as is and resampling, and the
gateway as is and resampling, in turn, ``--repeat`` rounds; the figures are medians of the
rounds' CPU per stream-second (one second of one stream), from ``/proc``.

    python -m bench.floor                      # 200 streams, 3 rounds, about 4 minutes
    python -m bench.floor --json floor.json
    python -m bench.floor --gateway-workers 1  # the gateway in one process, as the relay is

``--latency`` measures the floor under the two latency targets instead: scenario (1)'s one
stream at a time (1 s of audio at full speed, time to first byte) and the synchronized burst
of scenario (3) (200 real-time streams starting at one instant), through the upstream itself
(direct), nginx, the floor relay and the gateway, both resampling 24 → 48 kHz, in turn; the
added figures are each one's less direct's. The relay runs in as many processes as the
gateway has workers (``--floor-processes``, sharing one listening socket, as the gateway's
workers do), so that a burst meets the same cores. Each round also measures each server's CPU
per request over bursts of 200 new connections asking for 20 ms of audio each: the request's
own path, with next to no audio to relay.

    python -m bench.floor --latency             # 3 rounds, about 2 minutes
    python -m bench.floor --latency --gateway-workers 1 --floor-processes 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httptools

from bench import run as bench_run
from bench.harness import PY, Server, cpu_seconds, free_port, load, start
from bench.run import (
    REALTIME_STREAMS,
    UPSTREAM_RATE,
    Bench,
    ensure_nginx,
    latency,
    median_of,
    nginx_conf,
    start_gateway,
)
from gateway.audio import FIRST_OUT
from gateway.polyphase import PolyphaseResampler
from gateway.supervisor import workers_wanted

#: What the callers ask for when the relay resamples (the upstream speaks 24 kHz).
RESAMPLED_RATE = 48000

#: The part of a first read converted and sent before the rest (whole samples).
FIRST_BYTES = int(FIRST_OUT * UPSTREAM_RATE) * 2


class _UpstreamSide(asyncio.Protocol):
    """A kept-alive connection to the mock upstream; hands each body chunk to its caller."""

    def __init__(self, relay: FloorRelay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.caller: _CallerSide | None = None
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        if self.caller is not None:
            self.caller.audio(body)

    def on_message_complete(self) -> None:
        caller, self.caller = self.caller, None
        if caller is not None:
            caller.end()
        if self.parser.should_keep_alive() and self.transport is not None:
            self.relay.idle.append(self)
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self in self.relay.idle:
            self.relay.idle.remove(self)


class _CallerSide(asyncio.Protocol):
    """A caller's connection: one request at a time, its answer relayed chunk by chunk."""

    def __init__(self, relay: FloorRelay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.body = bytearray()
        self.resampler: PolyphaseResampler | None = None
        self.carry = b""
        self.started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.relay.callers.add(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        body, self.body = bytes(self.body), bytearray()
        self.started = False
        self.carry = b""
        self.resampler = self.relay.resampler()
        task = asyncio.get_running_loop().create_task(self.relay.forward(self, body))
        self.relay.tasks.add(task)
        task.add_done_callback(self.relay.tasks.discard)

    def audio(self, data: bytes) -> None:
        if self.transport is None:
            return
        if not self.started and self.resampler is not None and len(data) > 2 * FIRST_BYTES:
            # A fast upstream's first read can hold a second of audio: its first 40 ms are
            # converted and sent first, as the gateway does (``Converter.feed_first``).
            self.audio(data[:FIRST_BYTES])
            data = data[FIRST_BYTES:]
        if self.resampler is not None:
            data = self.carry + data
            whole = len(data) & ~1
            self.carry = data[whole:]
            data = self.resampler.process_s16(data[:whole])
        head = b""
        if not self.started:
            self.started = True
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: audio/pcm\r\ntransfer-encoding: chunked\r\n\r\n"
            )
        if data:
            self.transport.write(b"%s%x\r\n%s\r\n" % (head, len(data), data))
        elif head:
            self.transport.write(head)

    def end(self) -> None:
        if self.transport is None:
            return
        tail = self.resampler.flush_s16() if self.resampler is not None else b""
        if not self.started:
            self.audio(b"")
        framed = b"%x\r\n%s\r\n" % (len(tail), tail) if tail else b""
        self.transport.write(framed + b"0\r\n\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.relay.callers.discard(self)


class FloorRelay:
    """The bare relay (see the module docstring)."""

    def __init__(self, upstream_port: int, resample: bool) -> None:
        self.upstream_port = upstream_port
        self.idle: list[_UpstreamSide] = []
        self.callers: set[_CallerSide] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._resample = resample
        self._head = (
            f"POST /stream-audio HTTP/1.1\r\nhost: 127.0.0.1:{upstream_port}\r\n"
            "content-type: application/json\r\n"
        ).encode()

    def close(self) -> None:
        """Close every connection, to the upstream and from callers."""
        sides: list[_UpstreamSide | _CallerSide] = [*self.idle, *self.callers]
        for side in sides:
            if side.transport is not None:
                side.transport.close()

    def caller(self) -> asyncio.Protocol:
        """A protocol for a caller's connection (what the listening server makes)."""
        return _CallerSide(self)

    def resampler(self) -> PolyphaseResampler | None:
        if not self._resample:
            return None
        return PolyphaseResampler(RESAMPLED_RATE // UPSTREAM_RATE, 1, 32768.0)

    async def forward(self, caller: _CallerSide, body: bytes) -> None:
        upstream = self.idle.pop() if self.idle else None
        if upstream is None or upstream.transport is None:
            loop = asyncio.get_running_loop()
            _, protocol = await loop.create_connection(
                functools.partial(_UpstreamSide, self), "127.0.0.1", self.upstream_port
            )
            upstream = protocol
        assert upstream.transport is not None
        upstream.caller = caller
        upstream.transport.write(self._head + b"content-length: %d\r\n\r\n" % len(body) + body)


async def _serve(sock: socket.socket, upstream_port: int, resample: bool) -> None:
    relay = FloorRelay(upstream_port, resample)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(relay.caller, sock=sock, backlog=4096)
    async with server:
        await server.serve_forever()


def serve(port: int, upstream_port: int, resample: bool, processes: int) -> None:
    """Run the relay in ``processes`` processes on one listening socket (the first process
    and ``processes - 1`` children of it, which it stops when it is stopped)."""
    import uvloop

    sock = socket.create_server(("127.0.0.1", port), backlog=4096)
    sock.setblocking(False)
    children: list[int] = []
    for _ in range(processes - 1):
        pid = os.fork()
        if pid == 0:
            children = []
            break
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    uvloop.run(_serve(sock, upstream_port, resample))


def _floor_server(workdir: Path, upstream_port: int, resample: bool, processes: int = 1) -> Server:
    port = free_port()
    args = [PY, "-m", "bench.floor", "serve", "--port", str(port)]
    args += ["--upstream", str(upstream_port), "--processes", str(processes)]
    args += ["--resample"] if resample else []
    return start(f"floor{'-resample' if resample else ''}", args, port, workdir)


@contextlib.contextmanager
def _lineup(
    floors: dict[str, tuple[bool, int]],
) -> Iterator[tuple[Bench, Server, dict[str, Server], Server]]:
    """The mock upstream (``bench.upstream``), nginx, the floor relays (by name: whether each
    resamples, its processes) and the gateway, on loopback, stopped at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bench = Bench(workdir, quick=False)
        started: list[Server] = []
        try:
            up_port, ng_port = free_port(), free_port()
            bench.upstream = start(
                "upstream", [PY, "-m", "bench.upstream", "--port", str(up_port)], up_port, workdir
            )
            started.append(bench.upstream)
            nginx = ensure_nginx()
            conf = nginx_conf(workdir, ng_port, up_port)
            ng = start("nginx", [nginx, "-p", str(workdir), "-c", str(conf)], ng_port, workdir)
            started.append(ng)
            relays: dict[str, Server] = {}
            for name, (resample, processes) in floors.items():
                relays[name] = _floor_server(workdir, up_port, resample, processes)
                started.append(relays[name])
            gateway = start_gateway(workdir, up_port, "gateway")
            started.append(gateway)
            yield bench, ng, relays, gateway
        finally:
            for server in reversed(started):
                server.stop()


#: A measurement's targets: (name, server, the rate its callers ask for).
Targets = list[tuple[str, Server, int]]


def _alternated(
    targets: Targets,
    repeat: int,
    measure: Callable[[Server, int], dict[str, float]],
    describe: Callable[[dict[str, float]], str],
) -> dict[str, dict[str, Any]]:
    """``measure`` of each target, ``repeat`` rounds of them in turn (each described on
    stderr as it is done); per target, each figure's median over the rounds
    (:func:`bench.run.median_of`) and the rounds themselves (``per_round``)."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in targets}
    for _ in range(repeat):
        for name, server, rate in targets:
            found = measure(server, rate)
            runs[name].append(found)
            print(f"{name}: {describe(found)}", file=sys.stderr, flush=True)
    return {name: {**median_of(rounds), "per_round": rounds} for name, rounds in runs.items()}


def measure(streams: int, repeat: int) -> dict[str, Any]:
    """Scenario (3)'s load through nginx, the floor relay and the gateway, in turn."""
    floors = {"as is": (False, 1), "resampling": (True, 1)}
    with _lineup(floors) as (bench, ng, relays, gateway):
        targets: Targets = [
            ("nginx", ng, UPSTREAM_RATE),
            ("floor relay", relays["as is"], UPSTREAM_RATE),
            ("gateway", gateway, UPSTREAM_RATE),
            ("floor relay, 24 -> 48 kHz", relays["resampling"], RESAMPLED_RATE),
            ("gateway, 24 -> 48 kHz", gateway, RESAMPLED_RATE),
        ]
        figures = _alternated(
            targets,
            repeat,
            lambda server, rate: bench.realtime_run(server, rate, streams, spread=True),
            lambda found: (
                f"{found['server_cpu_ms_per_stream_s']:.3f} ms per stream-second, "
                f"TTFB p99 {found['ttfb_p99']:.1f} ms, errors {found['errors']}"
            ),
        )
    return {"streams": streams, "rounds": repeat, "targets": figures}


#: The latency figures, each reported beside what it adds to direct's.
LATENCY_KEYS = ("one_ttfb_p50", "one_ttfb_p99", "burst_ttfb_p50", "burst_ttfb_p99")

#: Bursts of short answers a round's CPU per request is measured over.
CPU_BURSTS = 5


def request_cpu(bench: Bench, server: Server, rate: int) -> tuple[float, int]:
    """The server's CPU per request (ms, from ``/proc``) over :data:`CPU_BURSTS` bursts of 200
    callers at one instant, each on a new connection asking for 20 ms of audio at full speed:
    the request's own path, with next to no audio to relay; and the errors among them."""
    streams = REALTIME_STREAMS[0]
    before = cpu_seconds(server.pid)
    errors = 0
    for _ in range(CPU_BURSTS):
        data = load(
            bench.url(server),
            bench.workdir,
            requests=streams,
            concurrency=streams,
            rate=rate,
            seconds=0.02,
            pace="fast",
        )
        errors += int(latency(data)["errors"])
    return (cpu_seconds(server.pid) - before) * 1000 / (CPU_BURSTS * streams), errors


def measure_latency(repeat: int, processes: int) -> dict[str, Any]:
    """Scenario (1)'s one stream at a time and scenario (3)'s burst through the upstream
    itself, nginx, the floor relay and the gateway (both resampling), in turn."""
    with _lineup({"resampling": (True, processes)}) as (bench, ng, relays, gateway):
        assert bench.upstream is not None
        targets: Targets = [
            ("direct", bench.upstream, UPSTREAM_RATE),
            ("nginx", ng, UPSTREAM_RATE),
            ("floor relay, 24 -> 48 kHz", relays["resampling"], RESAMPLED_RATE),
            ("gateway, 24 -> 48 kHz", gateway, RESAMPLED_RATE),
        ]

        def one_round(server: Server, rate: int) -> dict[str, float]:
            one = latency(
                load(
                    bench.url(server),
                    bench.workdir,
                    requests=300,
                    rate=rate,
                    seconds=1,
                    pace="fast",
                )
            )
            burst = bench.realtime_run(server, rate, REALTIME_STREAMS[0], spread=False)
            cpu, errors = request_cpu(bench, server, rate)
            return {
                "one_ttfb_p50": one["ttfb_p50"],
                "one_ttfb_p99": one["ttfb_p99"],
                "burst_ttfb_p50": burst["ttfb_p50"],
                "burst_ttfb_p99": burst["ttfb_p99"],
                "request_cpu_ms": cpu,
                "errors": one["errors"] + burst["errors"] + errors,
            }

        figures = _alternated(
            targets,
            repeat,
            one_round,
            lambda found: (
                f"one stream TTFB p50 {found['one_ttfb_p50']:.2f} ms, "
                f"burst TTFB p99 {found['burst_ttfb_p99']:.1f} ms, "
                f"{found['request_cpu_ms']:.3f} ms of CPU a request"
            ),
        )
    return {
        "rounds": repeat,
        "floor_processes": processes,
        "gateway_workers": bench_run.GATEWAY_WORKERS,
        "burst_streams": REALTIME_STREAMS[0],
        "targets": figures,
    }


def latency_report(result: dict[str, Any]) -> str:
    """The latency figures as a Markdown table, each beside what it adds to direct's."""
    targets = result["targets"]
    direct = targets["direct"]
    workers = result["gateway_workers"] or "its default"
    lines = [
        f"One stream at a time (300 requests, 1 s of audio at full speed) and "
        f"{result['burst_streams']} real-time streams starting at one instant; medians of "
        f"{result['rounds']} rounds (ms; added: less direct's, the load generator straight to "
        f"the mock upstream); the relay in {result['floor_processes']} "
        f"process(es), the gateway with {workers} worker(s); CPU a request: the server's "
        f"(direct: the mock upstream's) over bursts of {result['burst_streams']} new "
        "connections, each asking for 20 ms of audio",
        "",
        "| | 1 stream TTFB p50 (added) | 1 stream TTFB p99 (added) "
        "| burst TTFB p50 (added) | burst TTFB p99 (added) | CPU a request (ms) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in targets.items():
        cells = [
            f"{f[key]:.2f} ({f[key] - direct[key]:+.2f})" if name != "direct" else f"{f[key]:.2f}"
            for key in LATENCY_KEYS
        ]
        cells.append(f"{f['request_cpu_ms']:.3f}")
        lines.append(f"| {name} | {' | '.join(cells)} | {f['errors']} |")
    return "\n".join(lines)


def report(result: dict[str, Any]) -> str:
    """The figures as a Markdown table, with each one's ratio to nginx's."""
    targets = result["targets"]
    base = targets["nginx"]["server_cpu_ms_per_stream_s"]
    lines = [
        f"{result['streams']} real-time streams, medians of {result['rounds']} rounds",
        "",
        "| | CPU per stream-second (ms) | x nginx | share of a core | TTFB p99 (ms) | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in targets.items():
        cpu = f["server_cpu_ms_per_stream_s"]
        lines.append(
            f"| {name} | {cpu:.3f} | {cpu / base:.2f} | {f['server_cpu_share']:.3f} | "
            f"{f['ttfb_p99']:.1f} | {f['errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    serving = sub.add_parser("serve", help="run the floor relay (what the measurement starts)")
    serving.add_argument("--port", type=int, required=True)
    serving.add_argument("--upstream", type=int, required=True)
    serving.add_argument("--resample", action="store_true")
    serving.add_argument("--processes", type=int, default=1)
    parser.add_argument(
        "--streams", type=int, default=REALTIME_STREAMS[0], help="real-time streams at once"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds (figures: their medians)")
    parser.add_argument(
        "--gateway-workers",
        type=int,
        help="the gateway's worker processes (its default if not given)",
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="the floor under the one-stream and burst latency targets instead",
    )
    parser.add_argument(
        "--floor-processes",
        type=int,
        help="the relay's processes with --latency (default: the gateway's workers)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port, args.upstream, args.resample, args.processes)
        return
    if args.gateway_workers:
        bench_run.GATEWAY_WORKERS = args.gateway_workers
    if args.latency:
        processes = args.floor_processes or workers_wanted(0, args.gateway_workers)
        result = measure_latency(args.repeat, processes)
        print(latency_report(result))
    else:
        result = measure(args.streams, args.repeat)
        print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
