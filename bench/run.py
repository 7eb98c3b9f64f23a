"""The benchmark suite: what the gateway costs on top of the provider, side by side with two
baselines measured in the same run — the client straight to the mock upstream (the floor) and
nginx as a plain streaming reverse proxy (what a proxy written in C costs).

    python -m bench.run               # everything, about nine minutes on 2 cores
    python -m bench.run --quick       # fewer requests and repeats, for a smoke test
    python -m bench.run --only cache  # one,cpu,realtime,memory,local,soak,pieces,openai,cache

Writes ``docs/benchmarks.md`` (the table printed at the end) and ``docs/benchmarks.json`` (every
figure). A run of some scenarios (``--only``) replaces their figures in the JSON and keeps the
others', and rewrites the report when every scenario has figures. The fault soak (``soak``,
``bench.soak``) and the phrase cache (``cache``, ``bench.cache``) run their own gateways and
upstreams. All traffic stays on 127.0.0.1. Each
server's CPU time comes from ``/proc/PID/stat``, memory from ``/proc/PID/status``. Shared,
noisy machines: latency figures are medians of repeated runs, and the targets are judged on
those medians and on ratios.
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import cache, cache_report, openai_door, pieces, soak, soak_report
from bench.harness import (
    PY,
    ROOT,
    Server,
    Target,
    connections_to,
    cpu_seconds,
    free_port,
    load,
    pct,
    rss_kib,
    start,
)

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
            threads: 1
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
        "ttfb_p50": pct(ttfb, 0.5),
        "ttfb_p99": pct(ttfb, 0.99),
        "gap_p50": pct(gaps, 0.5),
        "gap_p99": pct(gaps, 0.99),
        "bytes": sum(r["bytes"] for r in data["results"]),
        "wall": data["wall"],
        "client_cpu": data["cpu"],
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


@dataclass
class Bench:
    workdir: Path
    quick: bool
    upstream: Server | None = None
    nginx: Server | None = None
    gateway: Server | None = None
    figures: dict[str, Any] = field(default_factory=dict)

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

    # -------------------------------------------------------------- scenarios

    def one_stream(self) -> None:
        """(1) One stream at a time: time to first byte."""
        requests = 60 if self.quick else 300
        result: dict[str, Any] = {}
        for name, server, rate in self.targets():
            runs = [
                latency(
                    load(
                        self.url(server),
                        self.workdir,
                        requests=requests,
                        rate=rate,
                        seconds=1,
                        pace="fast",
                    )
                )
                for _ in range(self.repeats())
            ]
            result[name] = median_of(runs)
        self.figures["one_stream"] = result

    def cpu_full_speed(self) -> None:
        """(2) Full speed, 10 concurrent: server CPU per second of audio delivered."""
        # Enough audio for the CPU clock's 10 ms ticks to be a small error even for nginx.
        requests = 100 if self.quick else 1000
        result: dict[str, Any] = {}
        for name, server, rate in self.targets():
            runs = []
            for _ in range(self.repeats()):
                before = cpu_seconds(server.pid)
                up_before = cpu_seconds(self.upstream.pid) if self.upstream else 0.0
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
                up_cpu = (cpu_seconds(self.upstream.pid) if self.upstream else 0.0) - up_before
                figures = latency(data)
                audio = figures["bytes"] / 2 / rate
                runs.append(
                    {
                        "server_cpu_ms_per_audio_s": cpu * 1000 / audio,
                        "upstream_cpu_ms_per_audio_s": up_cpu * 1000 / audio,
                        "client_cpu_ms_per_audio_s": figures["client_cpu"] * 1000 / audio,
                        "audio_s_per_wall_s": audio / figures["wall"],
                    }
                )
            result[name] = median_of(runs)
        self.figures["cpu_full_speed"] = result

    def realtime_streams(self) -> None:
        """(3) 200 concurrent streams paced in real time: added TTFB and inter-chunk gaps.

        Callers are independent, so their requests are spread out: each of the 200 workers
        starts at its own offset within one stream's length, then asks for three streams back
        to back, which keeps 200 streams running at once. The same 200 starting at one instant
        (a synchronized burst, the worst case) is measured too and reported beside it."""
        concurrency, seconds = 200, 3
        result: dict[str, Any] = {}
        burst: dict[str, Any] = {}
        for name, server, rate in self.targets():
            runs = []
            for _ in range(self.repeats()):
                before = cpu_seconds(server.pid)
                data = load(
                    self.url(server),
                    self.workdir,
                    requests=concurrency * 3,
                    concurrency=concurrency,
                    rate=rate,
                    seconds=seconds,
                    pace="realtime",
                    ramp=seconds,
                )
                figures = latency(data)
                figures["server_cpu_share"] = (cpu_seconds(server.pid) - before) / figures["wall"]
                runs.append(figures)
            result[name] = median_of(runs)
            burst[name] = latency(
                load(
                    self.url(server),
                    self.workdir,
                    requests=concurrency,
                    concurrency=concurrency,
                    rate=rate,
                    seconds=seconds,
                    pace="realtime",
                )
            )
        self.figures["realtime_streams"] = result
        self.figures["realtime_burst"] = burst

    def slow_streams(self, streams: int, rate: int) -> dict[str, float]:
        """Hold ``streams`` real-time streams open at once; the gateway's RSS per stream."""
        assert self.gateway and self.upstream
        gw = self.gateway
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
        process.wait()
        done = latency(json.loads(out.read_text()))
        return {
            "idle_rss_kib": idle,
            "peak_rss_kib": peak,
            "active_streams": active,
            "completed": done["ok"],
            "kib_per_stream": (peak - idle) / max(active, 1),
        }

    def memory(self) -> None:
        """(4) RSS per active stream (1000 slow streams, with and without resampling); then
        requests with hang-ups."""
        assert self.gateway and self.upstream
        gw = self.gateway
        streams = 300 if self.quick else 1000
        slow: dict[str, dict[str, float]] = {}
        # 1000 resampled real-time streams need ~2.7 cores for soxr's variable-rate filter
        # alone (0.55 cores per 200, see (3)): on a 2-core machine they would measure the
        # backlog of an overloaded process, not the cost of a stream. A third of them fits.
        for label, rate, count in (
            ("same_rate", UPSTREAM_RATE, streams),
            ("resampled", 48000, streams // 3),
        ):
            slow[label] = self.slow_streams(count, rate)
        requests = 2000 if self.quick else 10000
        before = rss_kib(gw.pid)
        pool_before = connections_to(gw.pid, self.upstream.port)
        data = load(
            self.url(gw),
            self.workdir,
            requests=requests,
            concurrency=50,
            rate=48000,
            seconds=1,
            pace="fast",
            drop=0.2,
        )
        time.sleep(1.0)
        after = rss_kib(gw.pid)
        dropped = sum(1 for r in data["results"] if r["dropped"])
        self.figures["memory"] = {
            "slow": slow,
            "drop_requests": requests,
            "dropped": dropped,
            "errors": sum(1 for r in data["results"] if r["error"]),
            "rss_before_kib": before,
            "rss_after_kib": after,
            "upstream_connections_before": pool_before,
            "upstream_connections_after": connections_to(gw.pid, self.upstream.port),
        }

    def local_voice(self) -> None:
        """(5) The local Piper voice: first audio over HTTP, and real-time factor on one core."""
        assert self.gateway
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
            data = load(
                self.url(self.gateway),
                self.workdir,
                requests=10 if self.quick else 30,
                rate=24000,
                voice="joe",
                text=text,
            )
            result[label] = latency(data)
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
    """The targets of every scenario in ``f``."""
    found = suite_targets(f) if all(key in f for key in SUITE_FIGURES) else []
    if "soak" in f:
        found += soak_report.targets(f["soak"])
    if "pieces" in f:
        found += pieces.targets(f["pieces"])
    if "cache" in f:
        found += cache_report.targets(f["cache"])
    return found


#: The scenarios that run servers of their own.
OWN_SERVERS = ("soak", "pieces", "cache")

#: The figures of the scenarios measured against the direct and nginx baselines.
SUITE_FIGURES = ("one_stream", "cpu_full_speed", "realtime_streams", "memory", "local_voice")


def suite_targets(f: dict[str, Any]) -> list[Target]:
    one = f["one_stream"]
    cpu = f["cpu_full_speed"]
    rt = f["realtime_streams"]
    mem = f["memory"]
    local = f["local_voice"]
    return [
        Target(
            "added TTFB vs direct, 1 stream, p50",
            one["gateway"]["ttfb_p50"] - one["direct"]["ttfb_p50"],
            1.0,
            "ms",
        ),
        Target(
            "added TTFB vs direct, 1 stream, p99",
            one["gateway"]["ttfb_p99"] - one["direct"]["ttfb_p99"],
            5.0,
            "ms",
        ),
        Target(
            "gateway CPU per audio-second (24→48 kHz)",
            cpu["gateway"]["server_cpu_ms_per_audio_s"],
            1.0,
            "ms",
        ),
        Target(
            "gateway CPU / nginx CPU per audio-second",
            cpu["gateway"]["server_cpu_ms_per_audio_s"]
            / max(cpu["nginx"]["server_cpu_ms_per_audio_s"], 1e-9),
            4.0,
            "x",
        ),
        Target(
            "200 real-time streams: added TTFB p99",
            rt["gateway"]["ttfb_p99"] - rt["direct"]["ttfb_p99"],
            20.0,
            "ms",
        ),
        Target(
            "200 real-time streams: added inter-chunk gap p99",
            rt["gateway"]["gap_p99"] - rt["direct"]["gap_p99"],
            10.0,
            "ms",
        ),
        Target(
            "memory per active stream (caller asks the provider's rate)",
            mem["slow"]["same_rate"]["kib_per_stream"],
            64.0,
            "KiB",
        ),
        Target(
            "memory per active stream, resampled 24→48 kHz (soxr state included)",
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
        Target(
            "local voice: first audio, one sentence (p50)",
            local["one_sentence"]["ttfb_p50"],
            60.0,
            "ms",
        ),
        Target("local voice: real-time factor on one core", local["rtf_one_core"]["rtf"], 0.15, ""),
    ]


def render(f: dict[str, Any], meta: dict[str, Any]) -> str:
    one, cpu, rt, mem, local = (
        f["one_stream"],
        f["cpu_full_speed"],
        f["realtime_streams"],
        f["memory"],
        f["local_voice"],
    )
    remeasured = "".join(
        f" Since then, {', '.join(later['scenarios'])} re-measured {later['date']} with "
        f"`{later['command']}`."
        for later in meta.get("remeasured", [])
    )
    lines = [
        "# Benchmarks",
        "",
        f"Measured {meta['date']} with `{meta['command']}` on {meta['cores']} cores "
        f"({meta['cpu']}), load average before the run {meta['load_before']}, after "
        f"{meta['load_after']}; Python {meta['python']}. Latencies are medians of "
        f"{meta['repeats']} runs. The mock upstream streams a 24 kHz tone in 20 ms chunks; "
        "direct and nginx deliver it as is, **the gateway resamples it 24 → 48 kHz** "
        "(soxr) and parses and routes each request (at log level warning: no per-request "
        "log line). The fault soak (6), pipelined pieces (7) and the phrase cache (8) run on "
        f"their own gateways and upstreams.{remeasured}",
        "",
        "## Targets",
        "",
        "| Figure | Measured | Target | |",
        "|---|---|---|---|",
    ]
    for t in targets(f):
        lines.append(
            f"| {t.figure} | {t.value:.2f} {t.unit} | {t.bound} | "
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
        "## (3) 200 concurrent streams paced in real time, 3 s each (ms)",
        "",
        "Callers start at spread-out moments and each asks for three streams in a row, so 200 "
        "streams run at once (steady state).",
        "",
        "| | direct | nginx | gateway (24→48 kHz) |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("ttfb_p50", "TTFB p50"),
        ("ttfb_p99", "TTFB p99"),
        ("gap_p50", "inter-chunk gap p50"),
        ("gap_p99", "inter-chunk gap p99"),
    ):
        lines.append(
            f"| {label} | "
            + " | ".join(f"{rt[n][key]:.2f}" for n in ("direct", "nginx", "gateway"))
            + " |"
        )
    lines.append(
        "| server CPU share (1 = one core) | - | "
        f"{rt['nginx']['server_cpu_share']:.2f} | {rt['gateway']['server_cpu_share']:.2f} |"
    )
    burst = f["realtime_burst"]
    lines += [
        "",
        "The same 200 streams started at one instant (a synchronized burst; not a target):",
        "",
        "| | direct | nginx | gateway (24→48 kHz) |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("ttfb_p50", "TTFB p50"),
        ("ttfb_p99", "TTFB p99"),
        ("gap_p99", "inter-chunk gap p99"),
    ):
        lines.append(
            f"| {label} | "
            + " | ".join(f"{burst[n][key]:.2f}" for n in ("direct", "nginx", "gateway"))
            + " |"
        )
    lines += [
        "",
        "## (4) Memory",
        "",
        *(
            f"- {m['active_streams']} slow streams open at once ({m['completed']} completed), "
            f"{label}: gateway RSS {m['idle_rss_kib'] / 1024:.1f} MiB before → "
            f"{m['peak_rss_kib'] / 1024:.1f} MiB, **{m['kib_per_stream']:.1f} KiB per stream**."
            for label, m in (
                ("same rate (24 kHz)", mem["slow"]["same_rate"]),
                ("resampled 24→48 kHz", mem["slow"]["resampled"]),
            )
        ),
        f"- {mem['drop_requests']} requests, 50 at a time, {mem['dropped']} hung up mid-stream "
        f"({mem['errors']} errors): RSS {mem['rss_before_kib'] / 1024:.1f} MiB before, "
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
        "The bench's local voice runs one ONNX thread (`threads: 1`). The first piece it speaks",
        "is the sentence's first clause (1.45 s of speech, 125 latent frames): the voice's front",
        "(text encoder, duration predictor, flow) runs on the whole clause, ~32 ms of one core,",
        "then its decoder on a first window of 24 frames (0.28 s of speech) and 12 frames of",
        "context, ~20 ms, whose audio leaves at once; the rest of the clause is decoded while it",
        "plays. Phonemizing takes 0.6 ms, the hand-off to the worker thread and the 22050 → 24000",
        "Hz conversion ~1 ms (soxr's block filter returns all but the last ~20 ms of the window at",
        "once). Decoded whole, the clause took ~105 ms. `python -m bench.piper_first --threads 1",
        "--whole` measures the first audio in process beside a twin that decodes whole, `--threads",
        "1,2` per thread setting, and `--spinning` against ONNX Runtime's spinning threads (what",
        "they cost: the provider's docstring and the table below).",
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


@contextmanager
def servers(bench: Bench, needed: bool = True) -> Iterator[None]:
    """The mock upstream, nginx and the gateway, for the scenarios that compare them (not
    started when ``needed`` is false)."""
    if not needed:
        yield
        return
    workdir = bench.workdir
    try:
        up_port, ng_port, gw_port = free_port(), free_port(), free_port()
        bench.upstream = start(
            "upstream", [PY, "-m", "bench.upstream", "--port", str(up_port)], up_port, workdir
        )
        nginx = ensure_nginx()
        conf = nginx_conf(workdir, ng_port, up_port)
        bench.nginx = start("nginx", [nginx, "-p", str(workdir), "-c", str(conf)], ng_port, workdir)
        bench.gateway = start(
            "gateway",
            [
                PY,
                "-m",
                "gateway.cli",
                "serve",
                "--config",
                str(gateway_conf(workdir, up_port)),
                "--host",
                "127.0.0.1",
                "--port",
                str(gw_port),
                *(["--workers", str(GATEWAY_WORKERS)] if GATEWAY_WORKERS else []),
            ],
            gw_port,
            workdir,
        )
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
    args = parser.parse_args()
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
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    with tempfile.TemporaryDirectory(prefix="tts-bench-") as tmp:
        bench = Bench(Path(tmp), args.quick)
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
        print(
            f"{'PASS' if t.ok else 'FAIL'}: {t.figure}: {t.value:.2f} {t.unit} (target {t.bound})"
        )
    print(f"total {seconds} s")


def merged(
    saved: Path, figures: dict[str, Any], meta: dict[str, Any], partial: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The figures and meta to write: a run of some scenarios replaces theirs in the saved
    report and is noted in its meta; a whole run replaces everything."""
    if not partial or not saved.exists():
        return figures, meta
    old = json.loads(saved.read_text())
    kept_meta: dict[str, Any] = old["meta"]
    later = {"date": meta["date"], "command": meta["command"], "scenarios": sorted(figures)}
    kept_meta["remeasured"] = [
        entry
        for entry in kept_meta.get("remeasured", [])
        if not set(entry["scenarios"]) <= set(figures)
    ] + [later]
    return {**old["figures"], **figures}, kept_meta


if __name__ == "__main__":
    main()
