"""The cache scenario's targets and its section of the benchmark report. The scenario itself
is ``bench.cache``."""

from __future__ import annotations

from typing import Any

from bench.harness import Target

#: Time to first byte of a hit (p50), from each tier.
HIT_MEMORY_MS = 2.0
HIT_REDIS_MS = 5.0
#: What a miss may add to a live answer's time to first byte (p50): nothing measurable.
MISS_ADDED_MS = 1.0


def targets(f: dict[str, Any]) -> list[Target]:
    return [
        Target(
            "phrase cache: hit TTFB p50, from memory", f["hit_memory"]["p50"], HIT_MEMORY_MS, "ms"
        ),
        Target("phrase cache: hit TTFB p50, from Redis", f["hit_redis"]["p50"], HIT_REDIS_MS, "ms"),
        Target(
            "phrase cache: a miss's added TTFB p50 vs the same voice with cache: false",
            f["miss_added_p50"],
            MISS_ADDED_MS,
            "ms",
        ),
    ]


def _verdict(target: Target) -> str:
    return f"{target.bound} | {'pass' if target.ok else '**FAIL**'}"


def render(f: dict[str, Any]) -> list[str]:
    """The cache scenario's section of the report."""
    m, size, mock, cpu, mix = f["measured"], f["size"], f["mock"], f["cpu"], f["mix"]
    hit_memory, hit_redis, miss_added = targets(f)
    proof = f["redis_gateway"]
    answers = mix["answers"]
    lines = [
        "## (8) Phrase cache",
        "",
        f"`python -m bench.run --only cache`, measured {m['date']} on {m['cores']} cores (load "
        f"average {m['load_before']} before, {m['load_after']} after), {m['seconds']} s. Its "
        "own servers on loopback: the mock upstream, which waits "
        f"{mock['delay_s'] * 1000:.0f} ms before its first byte (a provider's thinking time) "
        f"and then sends {mock['answer_s']:g} s of {mock['rate'] // 1000} kHz audio; a "
        "`redis-server` without persistence; two gateways with voice `cached` (`cache: true`) "
        "and voice `live` (the same provider and provider voice, no cache). One gateway has "
        "the default in-process cache (64 MiB per worker); the other `memory_mb: 0` and "
        "`redis_url`, so that every hit it serves is read from Redis. Callers ask "
        f"{f['caller_rate'] // 1000} kHz: hits and live answers alike are resampled. "
        f"Times to first byte are medians of {size['repeats']} runs; the CPU figures and "
        "the mix come from one.",
        "",
        "### Time to first byte (ms)",
        "",
        "| | p50 | p99 | requests per run | target (p50) | |",
        "|---|---|---|---|---|---|",
        f"| hit, from memory | {f['hit_memory']['p50']:.2f} | {f['hit_memory']['p99']:.2f} | "
        f"{f['hit_memory']['count']:.0f} | {_verdict(hit_memory)} |",
        f"| hit, from Redis (`memory_mb: 0`) | {f['hit_redis']['p50']:.2f} | "
        f"{f['hit_redis']['p99']:.2f} | {f['hit_redis']['count']:.0f} | {_verdict(hit_redis)} |",
        f"| live answer (`cache: false`), a new text each time | {f['live']['p50']:.2f} | "
        f"{f['live']['p99']:.2f} | {f['live']['count']:.0f} | - | |",
        f"| miss (`cache: true`), a new text each time | {f['miss']['p50']:.2f} | "
        f"{f['miss']['p99']:.2f} | {f['miss']['count']:.0f} | - | |",
        f"| a miss's added cost (miss minus live, p50) | {f['miss_added_p50']:.2f} | | | "
        f"{_verdict(miss_added)} |",
        "",
        "Hits are asked by one caller after the phrase is cached; live answers and misses by "
        "one caller asking the two voices in turn, a new text each time. The Redis "
        f"gateway's in-process cache held {proof['memory_entries']:.0f} entries "
        f"({proof['memory_bytes']:.0f} bytes) at the end; it counted {proof['hits']:.0f} hits "
        f"and Redis {proof['redis_keyspace_hits']:.0f} keyspace hits.",
        "",
        "### CPU per request (ms)",
        "",
        "| | requests | callers at once | gateway | mock upstream | redis-server "
        "| load generator |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (
        ("hit_memory", "hit, from memory"),
        ("hit_memory_native", "hit, from memory, caller at 24 kHz (no resampling)"),
        ("hit_redis", "hit, from Redis"),
        ("live", "live answer"),
    ):
        c = cpu[key]
        lines.append(
            f"| {label} | {c['requests']} | {c['callers']} | {c['gateway_ms']:.3f} | "
            f"{c['upstream_ms']:.3f} | {c['redis_server_ms']:.3f} | {c['loadgen_ms']:.3f} |"
        )
    saved_share = mix["characters_saved"] / max(mix["characters_requested"], 1)
    lines += [
        "",
        "CPU time from `/proc` (10 ms clock ticks) over the whole phase, divided by its "
        "requests; the load generator's includes its own start. Callers at 48 kHz: every "
        f"answer, hit or live, is {mock['answer_s']:g} s of audio resampled 24 → 48 kHz, which "
        "is most of what a hit costs.",
        "",
        f"### A realistic mix: {mix['requests']} requests, {mix['callers']} callers at once",
        "",
        f"{mix['repeated']} of them ({size['repeated']:.0%}) say one of {mix['phrases']} "
        "greetings and confirmations, the rest a text never asked before; voice `cached` on "
        "the memory gateway. Characters from the gateway's `/metrics` "
        "(`tts_provider_characters_total`, `tts_cache_characters_saved_total`).",
        "",
        "| | |",
        "|---|---|",
        f"| answers | {mix['ok']} of {mix['requests']}: {answers['hit']} hits, "
        f"{answers['shared']} shared with an identical request in flight, "
        f"{answers['miss']} misses |",
        f"| hit ratio (hits and shared) | {mix['hit_ratio']:.1%} |",
        f"| characters requested | {mix['characters_requested']} |",
        f"| characters sent upstream (billed) | {mix['characters_upstream']:.0f} |",
        f"| characters saved | {mix['characters_saved']:.0f} ({saved_share:.1%}) |",
        f"| upstream requests | {mix['upstream_requests']:.0f} |",
        f"| TTFB p50 / p99, hits | {mix['ttfb_hit']['p50']:.2f} / "
        f"{mix['ttfb_hit']['p99']:.2f} ms |",
        f"| TTFB p50 / p99, misses | {mix['ttfb_miss']['p50']:.2f} / "
        f"{mix['ttfb_miss']['p99']:.2f} ms |",
        f"| CPU: gateway / mock upstream / load generator | {mix['gateway_cpu_s']:.2f} / "
        f"{mix['upstream_cpu_s']:.2f} / {mix['loadgen_cpu_s']:.2f} s in {mix['wall_s']:.1f} s |",
        "",
    ]
    return lines
