"""The phrase cache's proof: what a hit costs a caller and the gateway, from memory and from
Redis, against a live answer through the same mock provider, and what a realistic mix saves.

Its own servers, all on 127.0.0.1: the mock upstream (``bench.upstream``), which thinks
:data:`DELAY` seconds before it answers (as a provider does before its first byte) and then
sends :data:`ANSWER_SECONDS` of audio at 24 kHz; a ``redis-server`` without persistence; and
two gateways on the same routing (voice ``cached`` with ``cache: true``, voice ``live`` the same
provider and provider voice without it; the callers ask 48 kHz, so every answer, hit or live,
is resampled):

- ``memory``: the default in-process cache (``memory_mb`` 64), no Redis;
- ``redis``: ``memory_mb: 0`` and ``redis_url``, so that every hit is read from Redis.

Phases:

1. **Hits.** One phrase, asked once by several callers so that every worker holds it (memory)
   or Redis does, then asked again and again by one caller: time to first byte of the hits.
2. **Miss against live.** Texts never asked before, one caller asking voice ``cached`` (each a
   miss) and voice ``live`` (no cache) in turn: the miss's added TTFB, and the live answer's
   TTFB (the baseline the hits are compared with).
3. **CPU.** Many hits, ten callers at a time, on each gateway (and on the memory gateway at
   the mock's own rate, without resampling); many live answers: the gateway's CPU time per
   request (``/proc``), beside the load generator's, the mock's and Redis's.
4. **Mix.** :attr:`CacheSize.mix` requests, 50 callers at a time, :attr:`CacheSize.repeated`
   of them a phrase from a small set of greetings and confirmations, the rest texts never
   asked before: hit ratio, characters requested against characters sent upstream and saved
   (the gateway's own counters), upstream requests made.

The figures, targets and report section are ``bench.cache_report``'s.

    python -m bench.run --only cache     # about 45 seconds on 2 cores
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.harness import PY, Server, cpu_seconds, free_port, load, pct, start
from bench.soak import metric, metric_samples

#: The mock provider's time to its first byte, and the audio it then sends (fast).
DELAY = 0.15
ANSWER_SECONDS = 2.0
#: What the callers ask for (the mock answers 24 kHz: hits and live answers are resampled).
RATE = 48000
NATIVE_RATE = 24000
#: The phrase whose hits are timed.
PHRASE = "Thanks for calling the clinic, how can I help you today?"
#: The repeated phrases of the mix: what a voice agent says again and again.
GREETINGS = (
    "Hello, thanks for calling. How can I help you today?",
    "One moment please, let me check that for you.",
    "Sure, I can help with that.",
    "Could you please repeat that?",
    "Thank you. Is there anything else I can help you with?",
    "Your appointment is confirmed.",
    "I'm sorry, I didn't catch that.",
    "Please hold while I transfer your call.",
    "Thanks for your patience.",
    "Goodbye, and have a great day!",
    "Can I have your full name, please?",
    "Got it, thank you.",
)
_SYLLABLES = ("ka", "lo", "mi", "ra", "te", "su", "no", "vi", "pa", "de", "ro", "li")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_TEMPLATES = (
    "Your appointment with doctor {name} is confirmed for {day} morning.",
    "I have moved your call with {name} to {day} afternoon.",
    "{name}, your order has shipped and should arrive by {day}.",
    "Let me connect you to {name}, who handles claims on {day}.",
)


def unique_text(index: int) -> str:
    """A sentence no other index gives (a name spelled from the index), without digits: the
    default ``skip_digits`` would keep a text with digits out of the cache altogether."""
    syllables, n = [], index
    while True:
        n, digit = divmod(n, len(_SYLLABLES))
        syllables.append(_SYLLABLES[digit])
        if not n:
            break
    name = "".join(syllables).capitalize()
    return _TEMPLATES[index % len(_TEMPLATES)].format(name=name, day=_DAYS[index % len(_DAYS)])


@dataclass(frozen=True, slots=True)
class CacheSize:
    """How much each phase asks."""

    repeats: int = 3  # phases 1 and 2 are repeated; their figures are the medians
    hits: int = 200  # per repeat and gateway, one caller
    unique: int = 16  # per repeat and voice, one caller taking the two voices in turn
    cpu_hits: int = 2000
    cpu_live: int = 400
    mix: int = 2000
    mix_callers: int = 50
    repeated: float = 0.3


FULL = CacheSize()
QUICK = CacheSize(repeats=1, hits=50, unique=8, cpu_hits=400, cpu_live=80, mix=400)


def redis_server() -> str:
    """Debian's redis-server (the CI installs it)."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else ""
    )
    if not found:
        raise RuntimeError("the cache scenario needs redis-server (apt-get install redis-server)")
    return found


def routing_file(workdir: Path, name: str, upstream: int, cache: str) -> Path:
    """A gateway's routing: ``cache`` is its ``server.cache`` block (a YAML flow mapping)."""
    path = workdir / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        server:
          max_concurrent_streams: 1000
          default_voice: cached
          log_level: warning
          cache: {cache}
        providers:
          upstream:
            type: custom
            url: http://127.0.0.1:{upstream}/stream-audio
            sample_rates: [24000]
            max_concurrency: 500
            timeout: {{connect: 5, first_byte: 10, total: 60}}
            retry: {{attempts: 1}}
        voices:
          cached: {{provider: upstream, voice: clinic, cache: true}}
          live: {{provider: upstream, voice: clinic}}
    """)
    )
    return path


def ttfb(results: list[dict[str, Any]], cache: str | None = None) -> dict[str, float]:
    """p50, p99 and count of the time to first byte of complete answers (those whose
    ``X-Cache`` is ``cache``, when given)."""
    values = [
        r["ttfb"]
        for r in results
        if r["status"] == 200 and not r["error"] and (cache is None or r["cache"] == cache)
    ]
    return {"p50": pct(values, 0.5), "p99": pct(values, 0.99), "count": len(values)}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


class CacheBench:
    """One run of the cache scenario: its servers, its phases, its figures."""

    def __init__(self, workdir: Path, size: CacheSize, workers: int | None = None) -> None:
        self.workdir = workdir
        self.size = size
        self.workers = workers
        self.upstream: Server | None = None
        self.redis: Server | None = None
        self.gateways: dict[str, Server] = {}
        self.http = httpx.Client(timeout=10.0)
        self.asked = 0  # unique texts handed out so far

    # ------------------------------------------------------------------ servers

    @contextmanager
    def servers(self) -> Iterator[None]:
        try:
            up, redis = free_port(), free_port()
            self.upstream = start(
                "cache-upstream", [PY, "-m", "bench.upstream", "--port", str(up)], up, self.workdir
            )
            self.redis = start(
                "redis",
                [
                    redis_server(),
                    *("--bind", "127.0.0.1", "--port", str(redis)),
                    *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
                ],
                redis,
                self.workdir,
            )
            for name, cache in (
                ("memory", "{}"),
                ("redis", f"{{memory_mb: 0, redis_url: 'redis://127.0.0.1:{redis}/0'}}"),
            ):
                port = free_port()
                config = routing_file(self.workdir, name, up, cache)
                workers = ["--workers", str(self.workers)] if self.workers else []
                listen = ["--host", "127.0.0.1", "--port", str(port), *workers]
                self.gateways[name] = start(
                    f"cache-gateway-{name}",
                    [PY, "-m", "gateway.cli", "serve", "--config", str(config), *listen],
                    port,
                    self.workdir,
                )
            yield
        finally:
            for server in (*self.gateways.values(), self.redis, self.upstream):
                if server is not None:
                    server.stop()
            self.http.close()

    def url(self, gateway: str) -> str:
        return f"http://127.0.0.1:{self.gateways[gateway].port}/stream-audio"

    def metrics(self, gateway: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        answer = self.http.get(f"http://127.0.0.1:{self.gateways[gateway].port}/metrics")
        answer.raise_for_status()
        return metric_samples(answer.text)

    def redis_info(self) -> dict[str, Any]:
        import redis

        assert self.redis is not None
        client = redis.Redis(port=self.redis.port, socket_timeout=5)
        try:
            info: dict[str, Any] = client.info("stats")
            info["keys"] = client.dbsize()
        finally:
            client.close()
        return info

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of every process measured."""
        assert self.upstream and self.redis
        found = {name: cpu_seconds(server.pid) for name, server in self.gateways.items()}
        found["upstream"] = cpu_seconds(self.upstream.pid)
        found["redis_server"] = cpu_seconds(self.redis.pid)
        return found

    def unique_texts(self, count: int) -> list[str]:
        """``count`` texts never asked before in this run."""
        texts = [unique_text(self.asked + n) for n in range(count)]
        self.asked += count
        return texts

    def texts_file(self, texts: list[str], name: str) -> str:
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps(texts))
        return str(path)

    def load(self, gateway: str, **options: Any) -> dict[str, Any]:
        options = {"rate": RATE, "seconds": ANSWER_SECONDS, "delay": DELAY, **options}
        return load(self.url(gateway), self.workdir, **options)

    # ------------------------------------------------------------------ phases

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        measured = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cores": os.cpu_count(),
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        with self.servers():
            self.prime()
            runs = [self.latencies(index) for index in range(self.size.repeats)]
            figures: dict[str, Any] = {
                key: median_of([run[key] for run in runs]) for key in runs[0]
            }
            figures["miss_added_p50"] = statistics.median(
                run["miss"]["p50"] - run["live"]["p50"] for run in runs
            )
            figures["cpu"] = self.cpu_per_request()
            figures["mix"] = self.mix()
            figures["redis_gateway"] = self.redis_gateway()
        measured["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        measured["seconds"] = round(time.perf_counter() - started)
        return {
            "measured": measured,
            "size": asdict(self.size),
            "mock": {"delay_s": DELAY, "answer_s": ANSWER_SECONDS, "rate": NATIVE_RATE},
            "caller_rate": RATE,
            **figures,
        }

    def prime(self) -> None:
        """The timed phrase into every memory worker and into Redis."""
        callers = 4 * (self.workers or os.cpu_count() or 1)
        self.load("memory", voice="cached", text=PHRASE, requests=callers, concurrency=callers)
        self.load("redis", voice="cached", text=PHRASE, requests=1)
        deadline = time.monotonic() + 10
        while not self.redis_info()["keys"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the phrase never reached Redis")
            time.sleep(0.05)

    def latencies(self, index: int) -> dict[str, dict[str, float]]:
        """Phases 1 and 2, once."""
        size = self.size
        found = {}
        for gateway in ("memory", "redis"):
            results = self.load(gateway, voice="cached", text=PHRASE, requests=size.hits)
            found[f"hit_{gateway}"] = ttfb(results["results"], "hit")
        # One caller taking the voices in turn: the same conditions for both, and neither
        # waiting on the other (two callers at once on one worker measured how each yields to
        # the other's resampling, not what a miss costs).
        results = self.load(
            "memory",
            voice="cached,live",
            texts=self.texts_file(self.unique_texts(2 * size.unique), f"unique-{index}"),
            requests=2 * size.unique,
        )["results"]
        found["miss"] = ttfb(results, "miss")
        found["live"] = ttfb(results, "")
        return found

    def cpu_per_request(self) -> dict[str, dict[str, float]]:
        """Phase 3: CPU milliseconds per request of each process, per kind of request."""
        size = self.size
        found = {}
        # The same hits asked at the mock's own rate as well: what a hit costs without the
        # resampling that every answer at another rate pays, hit or live.
        for label, gateway, voice, requests, callers, rate in (
            ("hit_memory", "memory", "cached", size.cpu_hits, 10, RATE),
            ("hit_memory_native", "memory", "cached", size.cpu_hits, 10, NATIVE_RATE),
            ("hit_redis", "redis", "cached", size.cpu_hits, 10, RATE),
            ("live", "memory", "live", size.cpu_live, 40, RATE),
        ):
            before = self.cpu()
            data = self.load(
                gateway,
                voice=voice,
                text=PHRASE,
                requests=requests,
                concurrency=callers,
                rate=rate,
            )
            after = self.cpu()
            ok = [r for r in data["results"] if r["status"] == 200 and not r["error"]]
            per = 1000 / requests
            found[label] = {
                "requests": requests,
                "callers": callers,
                "rate": rate,
                "ok": len(ok),
                "hits": sum(1 for r in ok if r["cache"] == "hit"),
                "gateway_ms": (after[gateway] - before[gateway]) * per,
                "upstream_ms": (after["upstream"] - before["upstream"]) * per,
                "redis_server_ms": (after["redis_server"] - before["redis_server"]) * per,
                "loadgen_ms": data["cpu"] * per,
                "wall_s": data["wall"],
            }
        return found

    def mix(self) -> dict[str, Any]:
        """Phase 4, on the memory gateway."""
        size = self.size
        rng = random.Random(11)
        repeated = round(size.mix * size.repeated)
        texts = [rng.choice(GREETINGS) for _ in range(repeated)]
        texts += self.unique_texts(size.mix - repeated)
        rng.shuffle(texts)
        before = self.metrics("memory")
        up_before = self.cpu()
        data = self.load(
            "memory",
            voice="cached",
            texts=self.texts_file(texts, "mix"),
            requests=size.mix,
            concurrency=size.mix_callers,
        )
        cpu_after = self.cpu()
        after = self.metrics("memory")

        def delta(name: str, **labels: str) -> float:
            return metric(after, name, **labels) - metric(before, name, **labels)

        results = data["results"]
        kinds = {kind: sum(1 for r in results if r["cache"] == kind) for kind in ("hit", "shared")}
        kinds["miss"] = sum(1 for r in results if r["cache"] == "miss")
        requested = sum(len(t) for t in texts)
        upstream_chars = delta("tts_provider_characters_total", provider="upstream")
        return {
            "requests": size.mix,
            "callers": size.mix_callers,
            "repeated": repeated,
            "phrases": len(GREETINGS),
            "ok": sum(1 for r in results if r["status"] == 200 and not r["error"]),
            "answers": kinds,
            "hit_ratio": (kinds["hit"] + kinds["shared"]) / size.mix,
            "characters_requested": requested,
            "characters_upstream": upstream_chars,
            "characters_saved": delta("tts_cache_characters_saved_total", provider="upstream"),
            "upstream_requests": delta("tts_provider_attempts_total", provider="upstream"),
            "lookups": {
                result: delta("tts_cache_lookups_total", provider="upstream", result=result)
                for result in ("hit", "shared", "miss")
            },
            "ttfb_hit": ttfb(results, "hit"),
            "ttfb_miss": ttfb(results, "miss"),
            "wall_s": data["wall"],
            "gateway_cpu_s": cpu_after["memory"] - up_before["memory"],
            "upstream_cpu_s": cpu_after["upstream"] - up_before["upstream"],
            "loadgen_cpu_s": data["cpu"],
        }

    def redis_gateway(self) -> dict[str, float]:
        """Proof that the Redis gateway's hits came from Redis: its in-process cache stayed
        empty, and Redis served the lookups."""
        samples = self.metrics("redis")
        info = self.redis_info()
        return {
            "memory_entries": metric(samples, "tts_cache_entries"),
            "memory_bytes": metric(samples, "tts_cache_bytes"),
            "hits": metric(samples, "tts_cache_lookups_total", result="hit"),
            "redis_keyspace_hits": float(info["keyspace_hits"]),
            "redis_keys": float(info["keys"]),
        }


def run_cache(workdir: Path, quick: bool = False, workers: int | None = None) -> dict[str, Any]:
    """Run the cache scenario in ``workdir``; its figures."""
    return CacheBench(workdir, QUICK if quick else FULL, workers).run()
