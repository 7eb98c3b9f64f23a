"""The benchmark suite: what the gateway costs on top of the provider, side by side with two
baselines measured in the same run — the client straight to the mock upstream (the floor) and
nginx as a plain streaming reverse proxy (what a proxy written in C costs).

    python -m bench.run               # everything, about 11 minutes on 2 cores
    python -m bench.run --quick       # fewer requests and repeats, for a smoke test
    python -m bench.run --only cache  # one,cpu,realtime,memory,local,soak,pieces,openai,cache
    python -m bench.run --render      # only rewrite benchmarks.md from benchmarks.json
    python -m bench.run --only realtime --streams 20,60 --quick --out trial  # a trial run

Writes ``docs/benchmarks.md`` (the table printed at the end) and ``docs/benchmarks.json`` (every
figure). A run of some scenarios (``--only``) replaces their figures in the JSON and keeps the
others', and rewrites the report when every scenario has figures. The fault soak (``soak``,
``bench.soak``) and the phrase cache (``cache``, ``bench.cache``) run their own gateways and
upstreams. All traffic stays on 127.0.0.1. Each process's CPU time (the servers', the mock
upstream's, the load generator's) comes from ``/proc/PID/stat``, memory from
``/proc/PID/status``. Shared, noisy machines: the runs of direct, nginx and the gateway
alternate, figures are medians of repeated runs, and the targets are judged on those medians
and on ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import cache, cache_report, openai_door, pieces, soak, soak_report
from bench.harness import (
    PY,
    ROOT,
    Server,
    Target,
    busiest_share,
    connections_to,
    cpu_by_process,
    cpu_seconds,
    free_port,
    load,
    pct,
    rss_kib,
    settle,
    split_of,
    start,
    waited_ns,
)
from gateway.polyphase import INTEGER_KERNEL, KERNEL

UPSTREAM_RATE = 24000
ONE_SENTENCE = "Thanks for calling the clinic, how can I help you today?"
THREE_SENTENCES = (
    "Thanks for calling the clinic, how can I help you today? Our office opens at nine in the "
    "morning and closes at five. Is there anything else I can help you with?"
)


# ------------------------------------------------------------------ processes


def ensure_nginx() -> str:
    """nginx from Debian, installed if missing (the bench needs root for that)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if found:
        return found
    print("installing nginx (apt-get) ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True, env=env)
    # Debian starts the packaged service on port 80; the bench runs its own instance.
    subprocess.run(["nginx", "-s", "stop"], check=False, capture_output=True)
    return shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_conf(workdir: Path, listen: int, upstream: int) -> Path:
    conf = workdir / "nginx.conf"
    conf.write_text(
        textwrap.dedent(f"""\
        worker_processes 1;
        daemon off;
        pid {workdir}/nginx.pid;
        error_log {workdir}/nginx-error.log warn;
        events {{ worker_connections 16384; }}
        http {{
            access_log off;
            client_body_temp_path {workdir}/nginx-body;
            proxy_temp_path {workdir}/nginx-proxy;
            upstream tts {{ server 127.0.0.1:{upstream}; keepalive 512; }}
            server {{
                listen 127.0.0.1:{listen} backlog=4096;
                location / {{
                    proxy_pass http://tts;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_buffering off;
                    proxy_read_timeout 120s;
                }}
            }}
        }}
    """)
    )
    return conf


#: ``--workers``: the gateway's worker processes, when not its default.
GATEWAY_WORKERS: int | None = None


def gateway_conf(workdir: Path, upstream: int) -> Path:
    conf = workdir / "gateway.yaml"
    conf.write_text(
        textwrap.dedent(f"""\
        server:
          max_concurrent_streams: 5000
          default_voice: bench
          log_level: warning
        providers:
          upstream:
            type: custom
            url: http://127.0.0.1:{upstream}/stream-audio
            sample_rates: [24000]
            max_concurrency: 2000
            timeout: {{connect: 5, first_byte: 30, total: 120}}
            retry: {{attempts: 1}}
          local:
            type: piper
            max_concurrency: 1
        voices:
          bench: {{provider: upstream}}
          joe: {{provider: local}}
    """)
    )
    return conf


# ------------------------------------------------------------------ load


def latency(data: dict[str, Any]) -> dict[str, float]:
    ok = [r for r in data["results"] if r["status"] == 200 and not r["error"] and not r["dropped"]]
    ttfb = [r["ttfb"] for r in ok]
    gaps = [g for r in ok for g in r["gaps"]]
    return {
        "requests": len(data["results"]),
        "ok": len(ok),
        "errors": sum(
            1 for r in data["results"] if not r["dropped"] and (r["error"] or r["status"] != 200)
        ),
        "ttfb_p50": pct(ttfb, 0.5),
        "ttfb_p99": pct(ttfb, 0.99),
        "gap_p50": pct(gaps, 0.5),
        "gap_p99": pct(gaps, 0.99),
        "bytes": sum(r["bytes"] for r in data["results"]),
        "wall": data["wall"],
        # The load generator's CPU from its first request to its last answer (its start, the
        # imports, not counted); "cpu", its whole process's, from a load generator without it.
        "client_cpu": data.get("run_cpu", data["cpu"]),
    }


#: Figures added up over repeated runs instead of taking their median: one error in any run
#: counts.
SUMMED = ("errors",)


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over ``runs`` (those in :data:`SUMMED`: their sum)."""
    return {
        key: sum(run[key] for run in runs)
        if key in SUMMED
        else statistics.median(run[key] for run in runs)
        for key in runs[0]
    }


#: Scenario (3): the real-time streams run at once, the first for the CPU and latency figures,
#: the second for how many streams the gateway holds (``--streams``).
REALTIME_STREAMS = (200, 600)
#: Seconds of audio per real-time stream.
REALTIME_SECONDS = 3
#: Short requests a fresh gateway answers before its idle memory is read (4): the first
#: requests' one-off costs (imports, the upstream pool, a resampler's filter design) are no
#: stream's.
WARM_UP = 20


@dataclass
class Bench:
    workdir: Path
    quick: bool
    upstream: Server | None = None
    nginx: Server | None = None
    gateway: Server | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    realtime_streams_at: tuple[int, int] = REALTIME_STREAMS

    def url(self, server: Server) -> str:
        return f"http://127.0.0.1:{server.port}/stream-audio"

    def targets(self) -> list[tuple[str, Server, int]]:
        assert self.upstream and self.nginx and self.gateway
        return [
            ("direct", self.upstream, UPSTREAM_RATE),
            ("nginx", self.nginx, UPSTREAM_RATE),
            ("gateway", self.gateway, 48000),
        ]

    def repeats(self) -> int:
        return 1 if self.quick else 3

    def alternated(
        self, measure: Callable[[Server, int], dict[str, float]]
    ) -> dict[str, dict[str, float]]:
        """``measure`` of each target, ``repeats()`` rounds of direct, nginx and the gateway
        in turn (what else loads the machine meanwhile loads the three alike); per target,
        each figure's median over the rounds."""
        runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in self.targets()}
        for _ in range(self.repeats()):
            for name, server, rate in self.targets():
                runs[name].append(measure(server, rate))
        return {name: median_of(found) for name, found in runs.items()}

    # -------------------------------------------------------------- scenarios

    def one_stream(self) -> None:
        """(1) One stream at a time: time to first byte."""
        requests = 60 if self.quick else 300
        self.figures["one_stream"] = self.alternated(
            lambda server, rate: latency(
                load(
                    self.url(server),
                    self.workdir,
                    requests=requests,
                    rate=rate,
                    seconds=1,
                    pace="fast",
                )
            )
        )

    def cpu_full_speed(self) -> None:
        """(2) Full speed, 10 concurrent: server CPU per second of audio delivered."""
        # Enough audio for the CPU clock's 10 ms ticks to be a small error even for nginx.
        requests = 100 if self.quick else 1000

        def measure(server: Server, rate: int) -> dict[str, float]:
            assert self.upstream
            before = cpu_seconds(server.pid)
            up_before = cpu_seconds(self.upstream.pid)
            data = load(
                self.url(server),
                self.workdir,
                requests=requests,
                concurrency=10,
                rate=rate,
                seconds=5,
                pace="fast",
            )
            cpu = cpu_seconds(server.pid) - before
            up_cpu = cpu_seconds(self.upstream.pid) - up_before
            figures = latency(data)
            audio = figures["bytes"] / 2 / rate
            return {
                "server_cpu_ms_per_audio_s": cpu * 1000 / audio,
                "upstream_cpu_ms_per_audio_s": up_cpu * 1000 / audio,
                "client_cpu_ms_per_audio_s": figures["client_cpu"] * 1000 / audio,
                "audio_s_per_wall_s": audio / figures["wall"],
            }

        self.figures["cpu_full_speed"] = self.alternated(measure)

    def realtime_run(
        self, server: Server, rate: int, streams: int, spread: bool
    ) -> dict[str, float]:
        """One run of ``streams`` real-time streams against ``server``: latencies, and the CPU
        of the server, the mock upstream and the load generator, as a share of one core and
        per stream-second (one second of one stream)."""
        assert self.upstream
        before, up_before = cpu_by_process(server.pid), cpu_seconds(self.upstream.pid)
        waits_before = waited_ns(server.pid), waited_ns(self.upstream.pid)
        data = load(
            self.url(server),
            self.workdir,
            requests=streams * 3 if spread else streams,
            concurrency=streams,
            rate=rate,
            seconds=REALTIME_SECONDS,
            pace="realtime",
            ramp=REALTIME_SECONDS if spread else 0,
        )
        # The server's CPU in its own code and in the kernel's (its system calls).
        after = cpu_by_process(server.pid)
        user, system = (a - b for a, b in zip(split_of(after), split_of(before), strict=True))
        server_waited, upstream_waited = (
            (a - b) / 1e9
            for a, b in zip(
                (waited_ns(server.pid), waited_ns(self.upstream.pid)), waits_before, strict=True
            )
        )
        cpu = {"server": user + system, "upstream": cpu_seconds(self.upstream.pid) - up_before}
        # How the server's CPU fell between its processes (the gateway's workers and its
        # supervisor, nginx's master and workers): one worker carrying every stream costs less
        # a stream-second than two woken for half the chunks each.
        busiest = busiest_share(before, after)
        figures = latency(data)
        cpu["client"] = figures["client_cpu"]
        stream_seconds = max(figures["bytes"] / 2 / rate, 1e-9)
        for who, seconds in cpu.items():
            figures[f"{who}_cpu_share"] = seconds / figures["wall"]
            figures[f"{who}_cpu_ms_per_stream_s"] = seconds * 1000 / stream_seconds
        figures["server_user_ms_per_stream_s"] = user * 1000 / stream_seconds
        figures["server_system_ms_per_stream_s"] = system * 1000 / stream_seconds
        figures["server_busiest_share"] = busiest
        # Time each side was ready to run but waited for a core (the machine's other
        # processes on its two cores), as a share of the run: 1 is one process waiting
        # throughout (the gateway's is its workers' together).
        waited = {"server": server_waited, "upstream": upstream_waited}
        if "run_waited" in data:
            waited["client"] = data["run_waited"]
        for who, seconds in waited.items():
            figures[f"{who}_wait_share"] = seconds / figures["wall"]
        return figures

    def realtime_streams(self) -> None:
        """(3) Concurrent streams paced in real time: added TTFB and inter-chunk gaps, and the
        CPU of every process on the machine.

        Callers are independent, so their requests are spread out: each of ``streams``
        workers starts at its own offset within one stream's length, then asks for three
        streams back to back, which keeps that many streams running at once. Run at 200
        streams (the CPU figures) and at 600 (how many streams the gateway holds). The same
        200 starting at one instant (a synchronized burst, the worst case) are measured
        too."""
        few, many = self.realtime_streams_at
        for key, streams in (("realtime_streams", few), ("realtime_many", many)):
            load_before = os.getloadavg()[0]
            found: dict[str, Any] = self.alternated(
                functools.partial(self.realtime_run, streams=streams, spread=True)
            )
            found["streams"] = streams
            found["load_before"], found["load_after"] = load_before, os.getloadavg()[0]
            self.figures[key] = found
        burst: dict[str, Any] = self.alternated(
            lambda server, rate: self.realtime_run(server, rate, few, spread=False)
        )
        burst["streams"] = few
        self.figures["realtime_burst"] = burst

    def slow_streams(self, gw: Server, streams: int, rate: int) -> dict[str, float]:
        """Hold ``streams`` real-time streams open at once; the gateway's RSS per stream."""
        time.sleep(2.0)  # let the previous phase's buffers go
        idle = rss_kib(gw.pid)
        out = self.workdir / "slow.json"
        args = [
            PY,
            "-m",
            "bench.loadgen",
            "--url",
            self.url(gw),
            "--json",
            str(out),
            "--requests",
            str(streams),
            "--concurrency",
            str(streams),
            "--rate",
            str(rate),
            "--seconds",
            "15",
            "--pace",
            "realtime",
        ]
        process = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        peak, active = idle, 0
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            time.sleep(0.2)
            # RSS at the moment the most streams are open, counted as the load generator's
            # connections to the gateway (one per stream, from its request to its last byte):
            # read from /proc, so a gateway too busy to answer /metrics is still measured
            # (the gateway's gauge, asked over HTTP, missed the peak on a saturated machine).
            now_active = connections_to(process.pid, gw.port)
            if now_active >= active:
                active, peak = now_active, max(peak, rss_kib(gw.pid))
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        done = latency(json.loads(out.read_text()))
        return {
            "idle_rss_kib": idle,
            "peak_rss_kib": peak,
            "active_streams": active,
            "completed": done["ok"],
            "kib_per_stream": (peak - idle) / max(active, 1),
        }

    def fresh_slow_streams(self, streams: int, rate: int, name: str) -> dict[str, float]:
        """:meth:`slow_streams` on a gateway of its own, started for it: its memory is
        counted from an idle process that has served no big run before (one that has reuses
        the memory that run freed, and reads next to nothing per stream). The gateway first
        answers :data:`WARM_UP` short requests at ``rate``, so that the first requests'
        one-off costs count as its idle memory, not as the streams'."""
        assert self.upstream
        gw = start_gateway(self.workdir, self.upstream.port, name)
        try:
            load(
                self.url(gw),
                self.workdir,
                requests=WARM_UP,
                concurrency=WARM_UP // 2,
                rate=rate,
                seconds=0.2,
                pace="fast",
            )
            return self.slow_streams(gw, streams, rate)
        finally:
            gw.stop()

    def memory(self) -> None:
        """(4) Requests with hang-ups, in the suite's gateway; then RSS per active stream (1000
        slow streams, with and without resampling, each count in a fresh gateway)."""
        assert self.gateway and self.upstream
        gw = self.gateway
        requests = 2000 if self.quick else 10000
        # The same load, a twentieth of it, first: the RSS and the idle pool before the run
        # are then those of this load, whatever the gateway served before (nothing, with
        # --only memory), and the run's growth is what it keeps.
        hang_ups = functools.partial(
            load,
            self.url(gw),
            self.workdir,
            concurrency=50,
            rate=48000,
            seconds=1,
            pace="fast",
            drop=0.2,
        )
        hang_ups(requests=requests // 20)
        time.sleep(1.0)
        before = rss_kib(gw.pid)
        pool_before = connections_to(gw.pid, self.upstream.port)
        data = hang_ups(requests=requests)
        time.sleep(1.0)
        after = rss_kib(gw.pid)
        pool_after = connections_to(gw.pid, self.upstream.port)
        dropped = sum(1 for r in data["results"] if r["dropped"])
        streams = 300 if self.quick else 1000
        slow: dict[str, dict[str, Any]] = {}
        # 1000 resampled real-time streams would need ~2.4 cores for the gateway alone
        # (0.48 per 200, see (3)): on a 2-core machine they would measure the backlog of an
        # overloaded process, not the cost of a stream. A third of them fits.
        for label, rate, count in (
            ("same_rate", UPSTREAM_RATE, streams),
            ("resampled", 48000, streams // 3),
        ):
            runs = [
                self.fresh_slow_streams(count, rate, f"gateway-{label}-{run}")
                for run in range(self.repeats())
            ]
            slow[label] = {
                **median_of(runs),
                "runs": len(runs),
                "kib_per_stream_runs": [run["kib_per_stream"] for run in runs],
            }
        self.figures["memory"] = {
            "slow": slow,
            "fresh_gateway": True,
            "warm_up": WARM_UP,
            "drop_requests": requests,
            "dropped": dropped,
            "errors": sum(1 for r in data["results"] if r["error"]),
            "rss_before_kib": before,
            "rss_after_kib": after,
            "upstream_connections_before": pool_before,
            "upstream_connections_after": pool_after,
        }

    def local_voice(self) -> None:
        """(5) The local Piper voice: first audio over HTTP, and real-time factor on one core."""
        assert self.gateway
        gateway = self.gateway
        result: dict[str, Any] = {}
        # Unmeasured: a worker answers once its voice is loaded, which with this scenario alone
        # (``--only local``) is during the first requests; two at a time reach both workers.
        load(
            self.url(self.gateway),
            self.workdir,
            requests=4,
            concurrency=2,
            rate=24000,
            voice="joe",
            text=ONE_SENTENCE,
        )
        for label, text in (("one_sentence", ONE_SENTENCE), ("three_sentences", THREE_SENTENCES)):
            result[label] = median_of(
                [
                    latency(
                        load(
                            self.url(gateway),
                            self.workdir,
                            requests=10 if self.quick else 30,
                            rate=24000,
                            voice="joe",
                            text=text,
                        )
                    )
                    for _ in range(self.repeats())
                ]
            )
        rtf = subprocess.run(
            [PY, "-m", "bench.piper_rtf"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        result["rtf_one_core"] = json.loads(rtf.stdout)
        self.figures["local_voice"] = result

    def openai_door(self) -> None:
        """(9) The OpenAI door: added TTFB per response format vs the custom door, the
        gateway's CPU per request, the encoders' steps (``bench.openai_door``)."""
        assert self.gateway
        self.figures["openai"] = openai_door.run_openai(
            self.gateway.port, self.gateway.pid, self.quick
        )

    def fault_soak(self) -> None:
        """(6) The fault soak (``bench.soak``), on its own gateway and upstreams."""
        self.figures["soak"] = soak.run_soak(self.workdir, self.quick)

    def pipelined_pieces(self) -> None:
        """(7) Pipelined pieces (``bench.pieces``), on its own gateway and whole-clip upstream."""
        runs = pieces.QUICK_RUNS if self.quick else pieces.RUNS
        self.figures["pieces"] = pieces.run_pieces(self.workdir, runs)

    def phrase_cache(self) -> None:
        """(8) The phrase cache (``bench.cache``), on its own gateways, upstream and Redis."""
        self.figures["cache"] = cache.run_cache(self.workdir, self.quick, GATEWAY_WORKERS)


# ------------------------------------------------------------------ report


def targets(f: dict[str, Any]) -> list[Target]:
    """The targets of every scenario in ``f``, each naming the scenario that gives it."""
    found = suite_targets(f) if all(key in f for key in SUITE_FIGURES) else []
    if "soak" in f:
        found += of_scenario(soak_report.targets(f["soak"]), "(6) fault soak")
    if "pieces" in f:
        found += of_scenario(pieces.targets(f["pieces"]), "(7) pipelined pieces")
    if "cache" in f:
        found += of_scenario(cache_report.targets(f["cache"]), "(8) phrase cache")
    return found


def of_scenario(found: list[Target], scenario: str) -> list[Target]:
    """``found``, each naming ``scenario`` as the one that gives it."""
    return [replace(t, scenario=scenario) for t in found]


#: The scenarios that run servers of their own.
OWN_SERVERS = ("soak", "pieces", "cache")

#: The figures of the scenarios measured against the direct and nginx baselines.
SUITE_FIGURES = (
    "one_stream",
    "cpu_full_speed",
    "realtime_streams",
    "realtime_many",
    "realtime_burst",
    "memory",
    "local_voice",
)


#: Scenario (3)'s bounds on a number of real-time streams: added TTFB p99 and added inter-chunk
#: gap p99 against direct (ms), errors.
HELD_TTFB_MS, HELD_GAP_MS = 20.0, 10.0


def added(rt: dict[str, Any], key: str) -> float:
    """The gateway's figure less direct's (the same streams, the same run)."""
    return float(rt["gateway"][key] - rt["direct"][key])


def held(rt: dict[str, Any]) -> bool:
    """Whether the gateway held a run of real-time streams within scenario (3)'s bounds."""
    return (
        added(rt, "ttfb_p99") <= HELD_TTFB_MS
        and added(rt, "gap_p99") <= HELD_GAP_MS
        and rt["gateway"].get("errors", 0) == 0
    )


def streams_held(f: dict[str, Any]) -> Target:
    """The most concurrent real-time streams the gateway held within the bounds, of the
    counts scenario (3) ran (200 and 600)."""
    runs = [f["realtime_streams"], f["realtime_many"]]
    counts = [int(rt.get("streams", 200)) for rt in runs]
    within = [n for n, rt in zip(counts, runs, strict=True) if held(rt)]
    best = max(within, default=0)
    tried = runs[-1] if best < counts[-1] else runs[counts.index(best)]
    detail = (
        f"at {tried.get('streams', 200)}: TTFB p99 +{added(tried, 'ttfb_p99'):.1f} ms, "
        f"gap p99 +{added(tried, 'gap_p99'):.1f} ms, {tried['gateway'].get('errors', 0):.0f} "
        "errors"
    )
    shown = f"{best} ({detail})" if best else f"< {min(counts)} ({detail})"
    return Target(
        f"concurrent real-time streams with added TTFB p99 ≤ {HELD_TTFB_MS:g} ms, added gap "
        f"p99 ≤ {HELD_GAP_MS:g} ms, 0 errors (of {' and '.join(map(str, counts))} tried)",
        best,
        float(counts[-1]),
        "streams",
        at_least=True,
        shown=shown,
    )


def suite_targets(f: dict[str, Any]) -> list[Target]:
    one = f["one_stream"]
    cpu = f["cpu_full_speed"]
    rt = f["realtime_streams"]
    burst = f["realtime_burst"]
    mem = f["memory"]
    local = f["local_voice"]
    few = rt.get("streams", 200)
    return [
        *of_scenario(
            [
                Target("added TTFB vs direct, 1 stream, p50", added(one, "ttfb_p50"), 0.5, "ms"),
                Target("added TTFB vs direct, 1 stream, p99", added(one, "ttfb_p99"), 1.5, "ms"),
            ],
            "(1) one stream",
        ),
        *of_scenario(
            [
                Target(
                    "gateway CPU per audio-second (24→48 kHz), full speed",
                    cpu["gateway"]["server_cpu_ms_per_audio_s"],
                    1.0,
                    "ms",
                ),
                Target(
                    "gateway CPU / nginx CPU per audio-second, full speed",
                    cpu["gateway"]["server_cpu_ms_per_audio_s"]
                    / max(cpu["nginx"]["server_cpu_ms_per_audio_s"], 1e-9),
                    4.0,
                    "x",
                ),
            ],
            "(2) full speed",
        ),
        *of_scenario(
            [
                Target(
                    f"gateway CPU / nginx CPU per real-time audio-second (24→48 kHz), {few} "
                    "streams",
                    rt["gateway"]["server_cpu_ms_per_stream_s"]
                    / max(rt["nginx"]["server_cpu_ms_per_stream_s"], 1e-9),
                    2.5,
                    "x",
                ),
                Target(
                    f"{few} real-time streams: added TTFB p99", added(rt, "ttfb_p99"), 20.0, "ms"
                ),
                Target(
                    f"{few} real-time streams: added inter-chunk gap p99",
                    added(rt, "gap_p99"),
                    10.0,
                    "ms",
                ),
                streams_held(f),
                Target(
                    f"{burst.get('streams', 200)} callers in the same instant: added TTFB p99",
                    added(burst, "ttfb_p99"),
                    50.0,
                    "ms",
                ),
            ],
            "(3) real-time streams",
        ),
        *of_scenario(
            [
                Target(
                    "memory per active stream (caller asks the provider's rate), fresh gateway",
                    mem["slow"]["same_rate"]["kib_per_stream"],
                    64.0,
                    "KiB",
                ),
                Target(
                    "memory per active resampled stream, 24→48 kHz, fresh gateway",
                    mem["slow"]["resampled"]["kib_per_stream"],
                    64.0,
                    "KiB",
                ),
                Target(
                    "RSS growth over the hang-up run",
                    max(0.0, (mem["rss_after_kib"] - mem["rss_before_kib"]) / 1024),
                    8.0,
                    "MiB",
                ),
                Target(
                    "upstream connections after the hang-up run (vs the idle pool before it)",
                    mem["upstream_connections_after"],
                    max(mem["upstream_connections_before"], 50),
                    "conns",
                ),
            ],
            "(4) memory",
        ),
        *of_scenario(
            [
                Target(
                    "local voice: first audio, one sentence (p50)",
                    local["one_sentence"]["ttfb_p50"],
                    60.0,
                    "ms",
                ),
                Target(
                    "local voice: real-time factor on one core",
                    local["rtf_one_core"]["rtf"],
                    0.15,
                    "",
                ),
            ],
            "(5) local voice",
        ),
    ]


TARGETS = ("direct", "nginx", "gateway")


def row(label: str, figures: dict[str, Any], key: str, digits: int = 2) -> str:
    """A table row: ``key`` of direct, nginx and the gateway."""
    return f"| {label} | " + " | ".join(f"{figures[n][key]:.{digits}f}" for n in TARGETS) + " |"


def server_row(label: str, figures: dict[str, Any], key: str, digits: int = 2) -> str:
    """A table row: ``key`` of nginx and the gateway (direct has no server of its own)."""
    return (
        f"| {label} | - | "
        + " | ".join(f"{figures[n][key]:.{digits}f}" for n in TARGETS[1:])
        + " |"
    )


def realtime_section(f: dict[str, Any]) -> list[str]:
    """Scenario (3): the real-time streams, at the two counts and in a burst."""
    rt, many, burst = f["realtime_streams"], f["realtime_many"], f["realtime_burst"]
    lines = [
        f"## (3) Concurrent streams paced in real time, {REALTIME_SECONDS} s each (ms)",
        "",
        "Callers start at spread-out moments (each of N workers at its own offset within one "
        "stream's length) and each asks for three streams in a row, so N streams run at once "
        "(steady state); the runs of direct, nginx and the gateway alternate, and each figure "
        "is the median of the runs' (errors: their sum). Every process on the machine is "
        "measured: the server (nginx or the gateway), the mock upstream behind it and the load "
        "generator, in CPU time from `/proc` (the load generator's from its first request to "
        "its last answer); a share of 1 is one core, and a stream-second is one second of one "
        "stream. How long each process waited for a core (ready to run while the machine's "
        "other processes had both, from `/proc/PID/schedstat`) is a share of the run too: 1 is "
        "one process waiting throughout (the gateway's, its workers' together).",
        "",
    ]
    for figures in (rt, many):
        streams = figures.get("streams", 200)
        lines += [
            f"**{streams} streams** (load average {figures.get('load_before', 0):.2f} before "
            f"these runs, {figures.get('load_after', 0):.2f} after)"
            + (
                ": the figures for the CPU ratio to nginx."
                if figures is rt
                else ": the figures for how many streams the gateway holds."
            ),
            "",
            "| | direct | nginx | gateway (24→48 kHz) |",
            "|---|---|---|---|",
            row("TTFB p50", figures, "ttfb_p50"),
            row("TTFB p99", figures, "ttfb_p99"),
            row("inter-chunk gap p50", figures, "gap_p50"),
            row("inter-chunk gap p99", figures, "gap_p99"),
            row("errors (all runs)", figures, "errors", 0),
        ]
        if "upstream_cpu_share" in figures["gateway"]:
            lines += [
                server_row("server CPU share", figures, "server_cpu_share"),
                row("mock upstream CPU share", figures, "upstream_cpu_share"),
                row("load generator CPU share", figures, "client_cpu_share"),
                *(
                    server_row(label, figures, key, 3)
                    for label, key in (
                        ("server CPU per stream-second", "server_cpu_ms_per_stream_s"),
                        ("of it in its own code (user mode)", "server_user_ms_per_stream_s"),
                        ("of it in the kernel (its system calls)", "server_system_ms_per_stream_s"),
                    )
                    if key in figures["gateway"]
                ),
                *(
                    server_row(label, figures, key)
                    for label, key in (
                        (
                            "the server's busiest process's share of its CPU",
                            "server_busiest_share",
                        ),
                    )
                    if key in figures["gateway"]
                ),
                row(
                    "mock upstream CPU per stream-second",
                    figures,
                    "upstream_cpu_ms_per_stream_s",
                    3,
                ),
                row(
                    "load generator CPU per stream-second", figures, "client_cpu_ms_per_stream_s", 3
                ),
                *(
                    (server_row if key == "server_wait_share" else row)(label, figures, key)
                    for label, key in (
                        ("server waiting for a core (share)", "server_wait_share"),
                        ("mock upstream waiting for a core (share)", "upstream_wait_share"),
                        ("load generator waiting for a core (share)", "client_wait_share"),
                    )
                    if key in figures["gateway"]
                ),
            ]
        else:
            lines.append(server_row("server CPU share (1 = one core)", figures, "server_cpu_share"))
        lines.append("")
    lines += [
        f"The same {burst.get('streams', 200)} streams started at one instant (a synchronized "
        "burst), one stream each:",
        "",
        "| | direct | nginx | gateway (24→48 kHz) |",
        "|---|---|---|---|",
        row("TTFB p50", burst, "ttfb_p50"),
        row("TTFB p99", burst, "ttfb_p99"),
        row("inter-chunk gap p99", burst, "gap_p99"),
        "",
    ]
    return lines


def render(f: dict[str, Any], meta: dict[str, Any]) -> str:
    one, cpu, mem, local = f["one_stream"], f["cpu_full_speed"], f["memory"], f["local_voice"]
    remeasured = "".join(
        f" Since then, {', '.join(later['scenarios'])} re-measured {later['date']} with "
        f"`{later['command']}`."
        for later in meta.get("remeasured", [])
    )
    kernel = (
        f", its sums in the `{meta['resampler_kernel']}` kernel"
        if meta.get("resampler_kernel")
        else ""
    )
    integer = meta.get("resampler_integer_kernel", "none")
    if integer != "none":
        kernel += f", an upsampling ratio's in its `{integer}` integer path"
    lines = [
        "# Benchmarks",
        "",
        f"Measured {meta['date']} with `{meta['command']}` on {meta['cores']} cores "
        f"({meta['cpu']}), load average before the run {meta['load_before']}, after "
        f"{meta['load_after']}; Python {meta['python']}. Latencies are medians of "
        f"{meta['repeats']} runs. The mock upstream streams a 24 kHz tone in 20 ms chunks; "
        "direct and nginx deliver it as is, **the gateway resamples it 24 → 48 kHz** "
        f"(its polyphase filter, `gateway/polyphase.py`{kernel}) and parses and routes each "
        "request "
        "(at log level warning: no per-request log line). The fault soak (6), pipelined "
        "pieces (7) and the phrase cache (8) run on "
        f"their own gateways and upstreams.{remeasured}",
        "",
        "## Targets",
        "",
        f"The figures of (1) to (5) are medians of {meta['repeats']} runs (each run's "
        "percentile or CPU figure, then their median; the added figures are the gateway's "
        "median less direct's), but for the hang-up run's two and the real-time factor, "
        "which are measured once. Those of (6) to (9) are as their sections say.",
        "",
        "| Figure | Scenario | Measured | Target | |",
        "|---|---|---|---|---|",
    ]
    for t in targets(f):
        lines.append(
            f"| {t.figure} | {t.scenario} | {t.measured} | {t.bound} | "
            f"{'pass' if t.ok else '**FAIL**'} |"
        )
    lines += [
        "",
        "## (1) One stream at a time, 1 s of audio per request: time to first byte (ms)",
        "",
        "| | direct | nginx | gateway (24→48 kHz) |",
        "|---|---|---|---|",
        "| p50 | "
        + " | ".join(f"{one[n]['ttfb_p50']:.2f}" for n in ("direct", "nginx", "gateway"))
        + " |",
        "| p99 | "
        + " | ".join(f"{one[n]['ttfb_p99']:.2f}" for n in ("direct", "nginx", "gateway"))
        + " |",
        "",
        "## (2) Full speed, 10 concurrent, 5 s of audio per request: CPU per second of audio (ms)",
        "",
        "| | direct (upstream only) | nginx | gateway (24→48 kHz) |",
        "|---|---|---|---|",
        "| server process | - | "
        f"{cpu['nginx']['server_cpu_ms_per_audio_s']:.3f} | "
        f"{cpu['gateway']['server_cpu_ms_per_audio_s']:.3f} |",
        "| mock upstream | "
        + " | ".join(
            f"{cpu[n]['upstream_cpu_ms_per_audio_s']:.3f}" for n in ("direct", "nginx", "gateway")
        )
        + " |",
        "| load generator | "
        + " | ".join(
            f"{cpu[n]['client_cpu_ms_per_audio_s']:.3f}" for n in ("direct", "nginx", "gateway")
        )
        + " |",
        "| audio seconds per wall second | "
        + " | ".join(f"{cpu[n]['audio_s_per_wall_s']:.0f}" for n in ("direct", "nginx", "gateway"))
        + " |",
        "",
        *realtime_section(f),
        "## (4) Memory",
        "",
        "Each count of slow streams (15 s each, in real time) runs in a gateway of its own, "
        "started for it and warmed up with "
        f"{mem.get('warm_up', WARM_UP)} short requests at the same rate: its memory per "
        "stream is the RSS growth from that idle process to the moment the most streams are "
        "open, over the streams then open (a gateway that has served a bigger run before "
        "reuses the memory that run freed, and reads next to nothing per stream). "
        f"Medians of {mem['slow']['resampled'].get('runs', 1):.0f} gateways each.",
        "",
        *(
            f"- {m['active_streams']:.0f} slow streams open at once ({m['completed']:.0f} "
            f"completed), {label}: gateway RSS {m['idle_rss_kib'] / 1024:.1f} MiB idle → "
            f"{m['peak_rss_kib'] / 1024:.1f} MiB, **{m['kib_per_stream']:.1f} KiB per stream**"
            + (
                f" (the gateways': {', '.join(f'{k:.1f}' for k in m['kib_per_stream_runs'])})."
                if len(m.get("kib_per_stream_runs", [])) > 1
                else "."
            )
            for label, m in (
                ("same rate (24 kHz)", mem["slow"]["same_rate"]),
                ("resampled 24→48 kHz", mem["slow"]["resampled"]),
            )
        ),
        f"- {mem['drop_requests']} requests, 50 at a time, {mem['dropped']} hung up mid-stream "
        f"({mem['errors']} errors), in the gateway of (1)-(3), after {mem['drop_requests'] // 20} "
        "like them: RSS "
        f"{mem['rss_before_kib'] / 1024:.1f} MiB before, "
        f"{mem['rss_after_kib'] / 1024:.1f} MiB after; "
        f"upstream connections {mem['upstream_connections_before']} before (idle pool), "
        f"{mem['upstream_connections_after']} after.",
        "",
        "## (5) Local voice (Piper, bundled joe model, 22050 Hz → 24000 Hz)",
        "",
        f"- one sentence: first audio p50 {local['one_sentence']['ttfb_p50']:.1f} ms, "
        f"p99 {local['one_sentence']['ttfb_p99']:.1f} ms",
        f"- three sentences: first audio p50 {local['three_sentences']['ttfb_p50']:.1f} ms, "
        f"p99 {local['three_sentences']['ttfb_p99']:.1f} ms",
        f"- real-time factor, one core, one ONNX thread: {local['rtf_one_core']['rtf']:.3f} "
        f"({local['rtf_one_core']['audio_s']:.1f} s of audio in "
        f"{local['rtf_one_core']['wall_s'] * 1000:.0f} ms)",
        "",
        "The bench's local voice runs on the provider's defaults: ONNX Runtime's threads (one per",
        "physical core, two here), not spinning. The first piece it speaks is the sentence's",
        "first clause (1.45 s of speech, 125 latent frames): the voice's front (text encoder,",
        "duration predictor) runs on the whole clause, ~18 ms of one core; then the flow on the",
        "first window's frames and their context, ~9 ms, and the decoder on a first window of 12",
        "frames (0.14 s of speech) and 12 frames of context, ~15 ms, whose audio leaves at once;",
        "the rest of the clause is made while it plays. Phonemizing takes 0.6 ms, the hand-off to",
        "the worker thread and the 22050 → 24000 Hz conversion ~1 ms. Decoded whole, the clause",
        "took ~105 ms of one core. `python -m bench.piper_first --threads 0,1 --whole` measures",
        "the first audio in process per thread setting beside a twin that decodes whole, and",
        "`--spinning` against ONNX Runtime's spinning threads (what they cost: the provider's",
        "docstring and the table below).",
        "",
    ]
    if "soak" in f:
        lines += soak_report.render(f["soak"])
    if "pieces" in f:
        lines += pieces.render(f["pieces"])
    if "cache" in f:
        lines += cache_report.render(f["cache"])
    if "openai" in f:
        lines += openai_door.render(f["openai"])
    history = Path(__file__).with_name("changes.md")
    if history.exists():
        lines.append(history.read_text())
    return "\n".join(lines)


def start_gateway(workdir: Path, upstream: int, name: str) -> Server:
    """A gateway in front of the mock upstream on port ``upstream`` (``--workers`` of them),
    once every worker has started (:func:`bench.harness.settle`)."""
    port = free_port()
    server = start(
        name,
        [
            PY,
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(gateway_conf(workdir, upstream)),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *(["--workers", str(GATEWAY_WORKERS)] if GATEWAY_WORKERS else []),
        ],
        port,
        workdir,
    )
    try:
        settle(server)
    except RuntimeError:
        server.stop()
        raise
    return server


@contextmanager
def servers(bench: Bench, needed: bool = True) -> Iterator[None]:
    """The mock upstream, nginx and the gateway, for the scenarios that compare them (not
    started when ``needed`` is false)."""
    if not needed:
        yield
        return
    workdir = bench.workdir
    try:
        up_port, ng_port = free_port(), free_port()
        bench.upstream = start(
            "upstream", [PY, "-m", "bench.upstream", "--port", str(up_port)], up_port, workdir
        )
        nginx = ensure_nginx()
        conf = nginx_conf(workdir, ng_port, up_port)
        bench.nginx = start("nginx", [nginx, "-p", str(workdir), "-c", str(conf)], ng_port, workdir)
        bench.gateway = start_gateway(workdir, up_port, "gateway")
        yield
    finally:
        for server in (bench.gateway, bench.nginx, bench.upstream):
            if server is not None:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="tts-gateway benchmark suite")
    parser.add_argument("--quick", action="store_true", help="fewer requests, one repeat")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="where to write the report")
    parser.add_argument(
        "--only",
        help="comma-separated scenarios (one,cpu,realtime,memory,local,soak,pieces,openai,cache)",
    )
    parser.add_argument(
        "--render", action="store_true", help="only rewrite benchmarks.md from benchmarks.json"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="the gateway's worker processes (default: its own default, one per core)",
    )
    parser.add_argument(
        "--streams",
        help="scenario (3)'s two counts of real-time streams, comma-separated (default "
        + ",".join(map(str, REALTIME_STREAMS))
        + ")",
    )
    args = parser.parse_args()
    streams_at = REALTIME_STREAMS
    if args.streams:
        try:
            few, many = (int(n) for n in args.streams.split(","))
        except ValueError:
            parser.error("--streams takes two counts, such as 200,600")
        streams_at = (few, many)
    global GATEWAY_WORKERS
    GATEWAY_WORKERS = args.workers
    if args.render:
        saved = json.loads((Path(args.out) / "benchmarks.json").read_text())
        (Path(args.out) / "benchmarks.md").write_text(render(saved["figures"], saved["meta"]))
        return
    steps: dict[str, Callable[[Bench], None]] = {
        "one": Bench.one_stream,
        "cpu": Bench.cpu_full_speed,
        "realtime": Bench.realtime_streams,
        "memory": Bench.memory,
        "local": Bench.local_voice,
        "soak": Bench.fault_soak,
        "pieces": Bench.pipelined_pieces,
        "openai": Bench.openai_door,
        "cache": Bench.phrase_cache,
    }
    chosen = args.only.split(",") if args.only else list(steps)
    unknown = [name for name in chosen if name not in steps]
    if unknown:
        parser.error(f"unknown scenarios {', '.join(unknown)}; choose from {', '.join(steps)}")

    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    started = time.perf_counter()
    command = "python -m bench.run" + (" --quick" if args.quick else "")
    if args.only:
        command += f" --only {args.only}"
    if args.workers:
        command += f" --workers {args.workers}"
    if args.streams:
        command += f" --streams {args.streams}"
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        # What the gateways started from this tree resample with ("numpy": not built).
        "resampler_kernel": KERNEL,
        "resampler_integer_kernel": INTEGER_KERNEL,
    }
    with tempfile.TemporaryDirectory(prefix="tts-bench-") as tmp:
        bench = Bench(Path(tmp), args.quick, realtime_streams_at=streams_at)
        meta["repeats"] = bench.repeats()
        with servers(bench, needed=any(name not in OWN_SERVERS for name in chosen)):
            for name in chosen:
                t0 = time.perf_counter()
                print(f"running {name} ...", flush=True)
                steps[name](bench)
                print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["seconds"] = seconds = round(time.perf_counter() - started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures, meta = merged(out / "benchmarks.json", bench.figures, meta, partial=bool(args.only))
    (out / "benchmarks.json").write_text(json.dumps({"meta": meta, "figures": figures}, indent=2))
    if all(key in figures for key in (*SUITE_FIGURES, *OWN_SERVERS)):
        report = render(figures, meta)
        (out / "benchmarks.md").write_text(report)
        print(report)
    else:
        print(json.dumps(bench.figures, indent=2))
    for t in targets(bench.figures):
        print(f"{'PASS' if t.ok else 'FAIL'}: {t.figure}: {t.measured} (target {t.bound})")
    print(f"total {seconds} s")


def merged(
    saved: Path, figures: dict[str, Any], meta: dict[str, Any], partial: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The figures and meta to write: a run of some scenarios replaces theirs in the saved
    report and is noted in its meta (an earlier run's note keeps only the scenarios whose
    figures are still its own); a whole run replaces everything."""
    if not partial or not saved.exists():
        return figures, meta
    old = json.loads(saved.read_text())
    kept_meta: dict[str, Any] = old["meta"]
    later = {"date": meta["date"], "command": meta["command"], "scenarios": sorted(figures)}
    earlier = [
        {**entry, "scenarios": [name for name in entry["scenarios"] if name not in figures]}
        for entry in kept_meta.get("remeasured", [])
    ]
    kept_meta["remeasured"] = [entry for entry in earlier if entry["scenarios"]] + [later]
    return {**old["figures"], **figures}, kept_meta


if __name__ == "__main__":
    main()
