"""The fault soak: the gateway in front of a sick provider, with a healthy fallback.

Three phases, against one gateway and two upstreams of ``bench.faults`` (the faulty one serves
the primary voice; the healthy one, faults off, the fallbacks):

1. **Faults.** The primary's upstream answers by :data:`bench.faults.SOAK`: 30 % HTTP 5xx,
   10 % connection resets before the first byte, 5 % stalls (half before the first byte, half
   mid-answer), 5 % 429 with ``Retry-After: 1``; the rest in full. 10 000 requests, 50 callers
   at a time, a fifth of them hanging up mid-stream; twice: once as an operator would route it
   (voice ``primary``), once with the primary's breaker off (voice ``exposed``, same upstream),
   so that every request meets the faults rather than mostly the open breaker. Every answer
   is checked by content (``bench.integrity``): the caller asks for the upstream's own rate,
   so the audio arrives unresampled and must be, byte for byte, one voice's answer for its
   text or the start of it. Then the gateway's RSS and its connections to the upstreams are
   compared with before, and the gateway and the upstreams are asked what they still hold.
2. **Outage.** Every primary request fails (503): once its breaker is open, the time to first
   byte of requests for the primary voice (which skip it) against requests straight to the
   fallback voice.
3. **Saturation.** 200 real-time callers (3 s streams trickled in 20 ms chunks) on a voice whose
   provider has ``max_concurrency: 50`` and a fallback: no 504, no 5xx; the overflow goes to the
   fallback.

Timeouts are tight (first byte 1 s, stall 0.5 s) so that the run takes minutes; breaker and
retry settings are what an operator would set at that time scale (:func:`routing_file`).
The figures, targets and report section are ``bench.soak_report``'s.

    python -m bench.soak            # the whole soak, about a minute and a half on 2 cores
    python -m bench.soak --quick    # 2000 requests per pass, one outage round
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.faults import HEALTHY, OUTAGE, SOAK, FaultPlan
from bench.harness import PY, Server, connections_to, free_port, load, rss_kib, start
from bench.soak_report import bad_audio, judge_faults, latencies, render, targets

#: Seconds of audio per answer in the faults and outage phases, and how much faster than real
#: time the upstreams trickle it (20 ms chunks 5 ms apart: a caller's hang-up lands mid-stream).
ANSWER_SECONDS = 0.4
ANSWER_SPEED = 4.0
ANSWER = {"seconds": ANSWER_SECONDS, "pace": "realtime", "speed": ANSWER_SPEED}
#: The upstreams' own rate, asked for by the callers: no resampling, so content can be compared.
RATE = 24000
#: How long a run may take to give back every slot and stalled connection once its callers
#: are done.
SETTLE_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class SoakSize:
    """How much each phase asks."""

    requests: int = 10_000
    callers: int = 50
    hang_ups: float = 0.2
    outage_rounds: int = 3
    outage_requests: int = 100
    saturation_callers: int = 200
    saturation_requests: int = 600
    saturation_seconds: float = 3.0


FULL = SoakSize()
QUICK = SoakSize(requests=2000, outage_rounds=1, saturation_requests=200)

#: The routing file's resilience settings, as the report states them.
SETTINGS = {
    "primary provider": "timeout {connect: 0.5, first_byte: 1, stall: 0.5, total: 30}, "
    "retry {attempts: 2, backoff: 0.05, max_backoff: 0.2}, retry_budget 0.2, "
    "circuit_breaker {failures: 5, cooldown: 1, max_cooldown: 8}",
    "primary voice": "hedge_after 0.3, fallback [backup]",
    "exposed voice": "the primary's settings on the same upstream, with circuit_breaker: false",
    "saturated provider": "max_concurrency 50, queue 0.25 (the default), fallback [overflow]",
}


def routing_file(workdir: Path, faulty: int, healthy: int) -> Path:
    """The soak's routing file. The time scale is a tenth of production's: a first-byte budget
    of 1 s where 5 s is usual, a stall gap of 0.5 s, a breaker cooldown of 1 s growing to 8 s
    where 10 s and 120 s are the defaults. Two attempts per voice (a second chance after a
    reset, not a third against a provider already failing), the default retry budget, and a
    hedge once the primary is 0.3 s late (a voice agent's caller hears every 100 ms)."""
    timeout = "{connect: 0.5, first_byte: 1, stall: 0.5, total: 30}"
    path = workdir / "soak.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        server:
          max_concurrent_streams: 1000
          default_voice: backup
          log_level: warning
        providers:
          flaky:
            type: custom
            url: http://127.0.0.1:{faulty}/stream-audio
            sample_rates: [{RATE}]
            timeout: {timeout}
            retry: {{attempts: 2, backoff: 0.05, max_backoff: 0.2}}
            retry_budget: 0.2
            circuit_breaker: {{failures: 5, cooldown: 1, max_cooldown: 8}}
          exposed:
            type: custom
            url: http://127.0.0.1:{faulty}/stream-audio
            sample_rates: [{RATE}]
            timeout: {timeout}
            retry: {{attempts: 2, backoff: 0.05, max_backoff: 0.2}}
            retry_budget: 0.2
            circuit_breaker: false
          healthy:
            type: custom
            url: http://127.0.0.1:{healthy}/stream-audio
            sample_rates: [{RATE}]
            timeout: {timeout}
          capped:
            type: custom
            url: http://127.0.0.1:{healthy}/stream-audio
            sample_rates: [{RATE}]
            max_concurrency: 50
            timeout: {timeout}
        voices:
          primary: {{provider: flaky, voice: primary, fallback: [backup], hedge_after: 0.3}}
          exposed: {{provider: exposed, voice: exposed, fallback: [backup], hedge_after: 0.3}}
          backup: {{provider: healthy, voice: backup}}
          capped: {{provider: capped, voice: capped, fallback: [overflow]}}
          overflow: {{provider: healthy, voice: overflow}}
    """)
    )
    return path


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        value
        for (found, items), value in samples.items()
        if found == name and set(labels.items()) <= set(items)
    )


def log_levels(path: Path) -> dict[str, Any]:
    """Lines of a gateway log by level, and the first few at ERROR or above (a provider's
    failure is a WARNING; an ERROR is the gateway's own trouble)."""
    levels: collections.Counter[str] = collections.Counter()
    errors: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        fields = line.split(" ", 3)
        level = fields[2] if len(fields) > 2 and fields[2].isupper() else "other"
        levels[level] += 1
        if level in ("ERROR", "CRITICAL") and len(errors) < 5:
            errors.append(line[:300])
    return {
        "levels": dict(levels),
        "errors": levels["ERROR"] + levels["CRITICAL"],
        "error_examples": errors,
    }


class Soak:
    """One soak run: its servers, its phases, its figures."""

    def __init__(self, workdir: Path, size: SoakSize) -> None:
        self.workdir = workdir
        self.size = size
        self.faulty: Server | None = None
        self.healthy: Server | None = None
        self.gateway: Server | None = None
        self.http = httpx.Client(timeout=10.0)

    # ------------------------------------------------------------------ servers

    @contextmanager
    def servers(self) -> Iterator[None]:
        try:
            faulty, healthy, gateway = free_port(), free_port(), free_port()
            self.faulty = start(
                "faulty",
                [PY, "-m", "bench.faults", "--port", str(faulty), "--plan", "healthy"],
                faulty,
                self.workdir,
            )
            self.healthy = start(
                "healthy",
                [PY, "-m", "bench.faults", "--port", str(healthy), "--plan", "healthy"],
                healthy,
                self.workdir,
            )
            config = str(routing_file(self.workdir, faulty, healthy))
            # One process: the soak reads the breaker and the slots of "the" gateway through
            # /providers, which with several workers shows the answering worker's alone (each
            # has its own breakers). The fault handling is the same in every worker.
            listen = ["--host", "127.0.0.1", "--port", str(gateway), "--workers", "1"]
            self.gateway = start(
                "soak-gateway",
                [PY, "-m", "gateway.cli", "serve", "--config", config, *listen],
                gateway,
                self.workdir,
            )
            yield
        finally:
            for server in (self.gateway, self.healthy, self.faulty):
                if server is not None:
                    server.stop()
            self.http.close()

    def _server(self, server: Server | None) -> Server:
        assert server is not None, "the soak's servers are not running"
        return server

    def base(self, server: Server | None) -> str:
        return f"http://127.0.0.1:{self._server(server).port}"

    def url(self) -> str:
        return f"{self.base(self.gateway)}/stream-audio"

    def set_plan(self, server: Server | None, plan: FaultPlan) -> None:
        self.http.put(f"{self.base(server)}/plan", json=asdict(plan)).raise_for_status()

    def ledger(self, server: Server | None) -> dict[str, Any]:
        answer = self.http.get(f"{self.base(server)}/ledger")
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()
        return data

    def providers(self) -> dict[str, dict[str, Any]]:
        answer = self.http.get(f"{self.base(self.gateway)}/providers")
        answer.raise_for_status()
        return {p["name"]: p for p in answer.json()["providers"]}

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        answer = self.http.get(f"{self.base(self.gateway)}/metrics")
        answer.raise_for_status()
        return metric_samples(answer.text)

    def sockets(self) -> dict[str, int]:
        """The gateway's established connections to each upstream."""
        gateway = self._server(self.gateway)
        return {
            name: connections_to(gateway.pid, self._server(server).port)
            for name, server in (("faulty", self.faulty), ("healthy", self.healthy))
        }

    def held(self) -> dict[str, int]:
        """What is still held once the callers are done: provider slots in flight and waiting
        at the gateway, stalled connections at the upstreams."""
        providers = self.providers()
        return {
            "in_flight": sum(p["in_flight"] for p in providers.values()),
            "queued": sum(p["queue"] for p in providers.values()),
            "stalls_open": self.ledger(self.faulty)["stalls_open"]
            + self.ledger(self.healthy)["stalls_open"],
        }

    def settle(self) -> tuple[float, dict[str, int]]:
        """Wait (at most :data:`SETTLE_SECONDS`) until nothing is held: the seconds it took
        and what is held at the end."""
        started = time.monotonic()
        while True:
            held = self.held()
            if not any(held.values()) or time.monotonic() - started > SETTLE_SECONDS:
                return time.monotonic() - started, held
            time.sleep(0.1)

    def load(self, **options: Any) -> list[dict[str, Any]]:
        options.setdefault("rate", RATE)
        results: list[dict[str, Any]] = load(self.url(), self.workdir, **options)["results"]
        return results

    # ------------------------------------------------------------------ phases

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        measured = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cores": os.cpu_count(),
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        with self.servers():
            figures = {"faults": self.faults(), "outage": self.outage()}
            figures["saturation"] = self.saturation()
        measured["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        measured["seconds"] = round(time.perf_counter() - started)
        figures["gateway_log"] = log_levels(self._server(self.gateway).log)
        return {
            "measured": measured,
            "settings": SETTINGS,
            "size": asdict(self.size),
            "answer": {"seconds": ANSWER_SECONDS, "speed": ANSWER_SPEED},
            **figures,
        }

    def faults(self) -> dict[str, Any]:
        """Phase 1 (see the module docstring): a pass with the breaker, then one without."""
        size = self.size
        # Warm up: pools filled, and every code path taken once (the faults through the voice
        # without a breaker, which leaves the primary's breaker closed), so that the RSS
        # compared after the passes is the gateway's in use, not its first use of a path.
        warm = {"requests": 4 * size.callers, "concurrency": size.callers, "drop": size.hang_ups}
        for voice in ("primary", "backup"):
            self.load(voice=voice, **warm, **ANSWER)
        self.set_plan(self.faulty, SOAK)
        self.load(voice="exposed", **warm, **ANSWER)
        self.set_plan(self.faulty, HEALTHY)
        self.settle()
        rss_before, sockets_before = rss_kib(self._server(self.gateway).pid), self.sockets()
        passes = {
            "breaker_on": self.fault_pass("primary", "flaky"),
            "breaker_off": self.fault_pass("exposed", "exposed"),
        }
        settle_s, held = self.settle()
        return {
            "passes": passes,
            "settle_s": settle_s,
            "held_after": held,
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_kib(self._server(self.gateway).pid),
            "sockets_before": sockets_before,
            "sockets_after": self.sockets(),
            "upstream_connections_open": {
                "faulty": self.ledger(self.faulty)["connections_open"],
                "healthy": self.ledger(self.healthy)["connections_open"],
            },
        }

    def fault_pass(self, voice: str, provider: str) -> dict[str, Any]:
        """:data:`SoakSize.requests` requests for ``voice`` (served by ``provider`` on the
        faulty upstream, falling back to ``backup``) with the faults on; its figures."""
        size = self.size
        self.set_plan(self.faulty, SOAK)
        self.set_plan(self.healthy, HEALTHY)
        before = self.metrics()
        t0 = time.perf_counter()
        results = self.load(
            voice=voice,
            ids=voice,
            expect=f"{voice},backup",
            requests=size.requests,
            concurrency=size.callers,
            drop=size.hang_ups,
            timeout=30,
            **ANSWER,
        )
        wall = time.perf_counter() - t0
        after = self.metrics()
        faulty, healthy = self.ledger(self.faulty), self.ledger(self.healthy)
        self.set_plan(self.faulty, HEALTHY)
        figures = judge_faults(results, {voice: faulty, "backup": healthy})

        def delta(name: str, **labels: str) -> float:
            return metric(after, name, **labels) - metric(before, name, **labels)

        def of_provider(name: str, **labels: str) -> float:
            return delta(name, provider=provider, **labels)

        figures.update(
            wall_s=wall,
            rss_after_kib=rss_kib(self._server(self.gateway).pid),
            gateway={
                "breaker_opened": of_provider("tts_breaker_transitions_total", state="open"),
                "breaker_closed": of_provider("tts_breaker_transitions_total", state="closed"),
                "skipped_open": of_provider("tts_provider_rejections_total", reason="open"),
                "retries_denied": of_provider("tts_retries_denied_total"),
                "hedges": delta("tts_hedges_total", voice=voice),
                "hedges_won_by_hedge": delta("tts_hedge_wins_total", voice=voice, side="hedge"),
                "streams_ended_stall": delta("tts_streams_ended_total", reason="stall"),
                "streams_ended_disconnect": delta(
                    "tts_streams_ended_total", reason="client_disconnect"
                ),
                "attempts": {
                    outcome: of_provider("tts_provider_attempts_total", outcome=outcome)
                    for outcome in ("ok", "error", "timeout")
                },
            },
        )
        return figures

    def outage(self) -> dict[str, Any]:
        """Phase 2 (see the module docstring)."""
        size = self.size
        self.set_plan(self.faulty, OUTAGE)
        answer = {"seconds": ANSWER_SECONDS, "pace": "fast"}
        # Enough failing requests to open the breaker, whatever phase 1 left it in.
        self.load(voice="primary", requests=20, **answer)
        state_before = self.providers()["flaky"]["breaker"]["state"]
        before = self.metrics()
        runs: dict[str, list[dict[str, float]]] = {"primary": [], "fallback": []}
        bad = not_complete = 0
        for index in range(size.outage_rounds):
            for label, voice in (("primary", "primary"), ("fallback", "backup")):
                results = self.load(
                    voice=voice,
                    ids=f"outage{index}{label}",
                    expect="primary,backup",
                    requests=size.outage_requests,
                    **answer,
                )
                ok = [r for r in results if r["status"] == 200 and r["verdict"] == "complete"]
                not_complete += len(results) - len(ok)
                bad += len(bad_audio(results))
                runs[label].append(latencies([r["ttfb"] for r in ok]))
        after = self.metrics()
        self.set_plan(self.faulty, HEALTHY)
        probes = metric(after, "tts_breaker_transitions_total", state="half_open") - metric(
            before, "tts_breaker_transitions_total", state="half_open"
        )
        summary = {
            label: {key: statistics.median(run[key] for run in values) for key in ("p50", "p99")}
            for label, values in runs.items()
        }
        return {
            **summary,
            "runs": runs,
            "breaker_before": state_before,
            "probes": probes,
            "not_complete": not_complete,
            "bad_audio": bad,
            "p50_difference_ms": summary["primary"]["p50"] - summary["fallback"]["p50"],
        }

    def saturation(self) -> dict[str, Any]:
        """Phase 3 (see the module docstring)."""
        size = self.size
        before = self.metrics()
        results = self.load(
            voice="capped",
            ids="saturation",
            expect="capped,overflow",
            requests=size.saturation_requests,
            concurrency=size.saturation_callers,
            seconds=size.saturation_seconds,
            pace="realtime",
            ramp=size.saturation_seconds,
            timeout=60,
        )
        after = self.metrics()
        settle_s, held = self.settle()
        bad = bad_audio(results)
        statuses = collections.Counter(r["status"] for r in results)
        answered = collections.Counter(
            r["answer_voice"] for r in results if r["verdict"] == "complete"
        )
        ttfb = {
            voice: latencies(
                [r["ttfb"] for r in results if r["verdict"] == "complete" and r["voice"] == voice]
            )
            for voice in ("capped", "overflow")
        }
        return {
            "requests": len(results),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "504": statuses[504],
            "5xx": sum(v for k, v in statuses.items() if k >= 500),
            "no_answer": sum(1 for r in results if r["error"]),
            "complete": sum(answered.values()),
            "answered_by": dict(answered),
            "overflow_metric": metric(after, "tts_overflow_total", voice="overflow")
            - metric(before, "tts_overflow_total", voice="overflow"),
            "bad_audio": len(bad),
            "bad_examples": [f"{r['id']}: {r['verdict']} {r['detail']}" for r in bad][:5],
            "ttfb_ms": ttfb,
            "held_after": held,
            "settle_s": settle_s,
        }


def run_soak(workdir: Path, quick: bool = False) -> dict[str, Any]:
    """Run the soak in ``workdir``; its figures."""
    return Soak(workdir, QUICK if quick else FULL).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2000 requests, one outage round")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--workdir", help="keep the servers' logs here (default: a temporary dir)")
    args = parser.parse_args()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        figures = run_soak(Path(args.workdir), args.quick)
    else:
        with tempfile.TemporaryDirectory(prefix="tts-soak-") as tmp:
            figures = run_soak(Path(tmp), args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print("\n".join(render(figures)))
    for t in targets(figures):
        verdict = "PASS" if t.ok else "FAIL"
        print(f"{verdict}: {t.figure}: {t.value:.3f} {t.unit} (target {t.bound})")


if __name__ == "__main__":
    main()
