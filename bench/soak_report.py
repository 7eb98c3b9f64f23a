"""The fault soak's figures (from the callers' results and the upstreams' ledgers), its targets
and its section of the benchmark report. The soak itself is ``bench.soak``."""

from __future__ import annotations

import collections
from typing import Any

from bench.harness import Target, pct
from bench.integrity import SOUND

#: Verdicts of audio that is not one voice's answer (``bench.integrity``).
BAD_KINDS = ("duplicated", "skipped", "mixed", "garbled")
_FAULT_LABELS = (
    ("ok", "in full"),
    ("error", "5xx"),
    ("reset", "resets"),
    ("stall_before", "stalls before the first byte"),
    ("stall_mid", "stalls mid-answer"),
    ("throttle", "429"),
)
_PASSES = (("breaker_on", "breaker on"), ("breaker_off", "breaker off"))


def latencies(values: list[float]) -> dict[str, float]:
    """p50, p99 and count of ``values`` (milliseconds)."""
    return {"p50": pct(values, 0.5), "p99": pct(values, 0.99), "count": len(values)}


def bad_audio(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answers whose audio is not one voice's answer or its start."""
    return [r for r in results if r["verdict"] and r["verdict"] not in SOUND]


def judge_faults(
    results: list[dict[str, Any]], ledgers: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """A fault pass's figures from the callers' results and the ledger of the upstream of each
    voice (by the voice's name, as the content check names it).

    An answer cut short with no hang-up is accounted for when the upstream whose audio it is
    stalled mid-answer on that request: once audio has gone out nothing can be replayed, so
    the gateway ends the stream (the contract's "a later failure ends the stream early"). A
    cut with no such stall is the gateway's doing, and counts as bad audio."""
    kept = [r for r in results if not r["dropped"]]
    complete, cut_by_stall, unexplained, failed = [], [], [], []
    for r in kept:
        if r["status"] == 200 and r["verdict"] == "complete":
            complete.append(r)
            continue
        ledger = ledgers.get(r["answer_voice"], {}).get("by_request", {})
        if r["status"] == 200 and r["verdict"] == "cut" and "stall_mid" in ledger.get(r["id"], []):
            cut_by_stall.append(r)
        elif r["status"] == 200 and r["verdict"] in SOUND:
            unexplained.append(r)
        else:
            failed.append(r)
    garbled = bad_audio(results)
    asked = {voice: ledger["requests"] for voice, ledger in ledgers.items()}
    return {
        "requests": len(results),
        "hung_up": len(results) - len(kept),
        "complete": len(complete),
        "cut_by_upstream_stall": len(cut_by_stall),
        "cut_unexplained": len(unexplained),
        "failed": len(failed),
        "failed_statuses": dict(collections.Counter(str(r["status"]) for r in failed)),
        "served_share": len(complete) / max(1, len(kept) - len(cut_by_stall)),
        "served_share_raw": len(complete) / max(1, len(kept)),
        "bad_audio": {kind: sum(1 for r in garbled if r["verdict"] == kind) for kind in BAD_KINDS},
        "bad_examples": [
            f"{r['id']}: {r['verdict']} {r['detail']}".strip() for r in garbled + unexplained
        ][:5],
        "wrong_voice_header": sum(1 for r in complete if r["voice"] != r["answer_voice"]),
        "answered_by": dict(collections.Counter(r["answer_voice"] for r in complete)),
        "upstream_requests": asked,
        "upstream_requests_per_request": sum(asked.values()) / max(1, len(results)),
        "faults_served": next(iter(ledgers.values()))["kinds"],
        "ttfb_ms": latencies([r["ttfb"] for r in complete]),
        "cut_end_silence_ms": latencies([r["tail"] for r in cut_by_stall]),
    }


# ------------------------------------------------------------------ targets


def targets(f: dict[str, Any]) -> list[Target]:
    faults, outage, saturation = f["faults"], f["outage"], f["saturation"]
    passes = faults["passes"]
    held = faults["held_after"]
    callers = f["size"]["saturation_callers"]
    served = [
        Target(
            f"fault soak, {label}: complete answers, of requests not hung up nor cut by an "
            "upstream stall mid-answer",
            100 * passes[key]["served_share"],
            99.9,
            "%",
            at_least=True,
        )
        for key, label in _PASSES
    ]
    requests = sum(p["requests"] for p in passes.values())
    return [
        *served,
        Target(
            "fault soak: answers with duplicated, skipped, mixed or garbled audio, or cut "
            "for no upstream fault (all phases)",
            sum(sum(p["bad_audio"].values()) + p["cut_unexplained"] for p in passes.values())
            + outage["bad_audio"]
            + saturation["bad_audio"],
            0,
            "",
        ),
        Target(
            f"fault soak: gateway RSS growth over {requests} requests",
            max(0.0, (faults["rss_after_kib"] - faults["rss_before_kib"]) / 1024),
            8.0,
            "MiB",
        ),
        Target(
            "fault soak: provider slots and stalled upstream connections still held after it",
            held["in_flight"] + held["queued"] + held["stalls_open"],
            0,
            "",
        ),
        Target(
            "fault soak: lines the gateway logged at ERROR (its own trouble, not a provider's)",
            f["gateway_log"]["errors"],
            0,
            "",
        ),
        Target(
            "primary's breaker open: TTFB p50 vs straight to the fallback",
            abs(outage["p50_difference_ms"]),
            10.0,
            "ms",
        ),
        Target(f"{callers} real-time callers on max_concurrency 50: 504", saturation["504"], 0, ""),
        Target(f"{callers} real-time callers on max_concurrency 50: 5xx", saturation["5xx"], 0, ""),
    ]


# ------------------------------------------------------------------ report


def _pair(figures: dict[str, float], spec: str) -> str:
    """``p50 / p99 ms``, or a dash when there was nothing to measure."""
    if not figures["count"]:
        return "-"
    return f"{figures['p50']:{spec}} / {figures['p99']:{spec}} ms"


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in counts.items()) or "none"


def _row(label: str, passes: dict[str, Any], cell: Any) -> str:
    return f"| {label} | " + " | ".join(cell(passes[key]) for key, _ in _PASSES) + " |"


def render(f: dict[str, Any]) -> list[str]:
    """The soak's section of the report."""
    m, faults, outage, sat, size = (
        f["measured"],
        f["faults"],
        f["outage"],
        f["saturation"],
        f["size"],
    )
    passes = faults["passes"]
    answer = f["answer"]
    lines = [
        "## (6) Fault soak",
        "",
        f"Measured {m['date']} with `python -m bench.soak` (the same as `python -m bench.run "
        f"--only soak`) on {m['cores']} cores, load average {m['load_before']} before, "
        f"{m['load_after']} after; {m['seconds']} s in all. Two upstreams of `bench.faults` "
        "behind one gateway: the primary voice's upstream injects faults, the fallbacks' is "
        "healthy. Every answer is checked by content: each voice's answer to each (unique) "
        "text is its own deterministic sample sequence, asked for at the upstream's rate "
        "(24 kHz, passed through unresampled), so that a duplicated, lost, shifted or mixed "
        "chunk cannot pass unseen.",
        "",
        "Settings, on a time scale a tenth of production's:",
        "",
        *(f"- {name}: {value}" for name, value in f["settings"].items()),
        "",
        "### Faults",
        "",
        f"{size['requests']} requests per pass, {size['callers']} callers at a time, a fifth "
        f"of them hanging up mid-stream; each answer {answer['seconds']:g} s of audio streamed "
        f"at {answer['speed']:g} times real time. The primary's upstream answers 30 % 5xx, 10 % "
        "connection resets before the first byte, 2.5 % stalls before the first byte (half "
        "with no byte at all, half after a 200 head), 2.5 % stalls mid-answer, 5 % 429 with "
        "`Retry-After: 1`, the rest in full. The first pass is the routing file as an operator "
        "would write it; in the second the primary's breaker is off, so that every request "
        "meets the faults.",
        "",
        "| | " + " | ".join(label for _, label in _PASSES) + " |",
        "|---|---|---|",
        _row("hung up by the caller", passes, lambda p: str(p["hung_up"])),
        _row(
            "primary's upstream asked; what it answered",
            passes,
            lambda p: (
                f"{p['upstream_requests'][_primary(p)]}: "
                + ", ".join(f"{p['faults_served'].get(k, 0)} {label}" for k, label in _FAULT_LABELS)
            ),
        ),
        _row("complete answers", passes, lambda p: str(p["complete"])),
        _row(
            "cut short by an upstream stall mid-answer (silence before the end, p50 / p99)",
            passes,
            lambda p: f"{p['cut_by_upstream_stall']} ({_pair(p['cut_end_silence_ms'], '.0f')})",
        ),
        _row("cut short for no upstream fault", passes, lambda p: str(p["cut_unexplained"])),
        _row(
            "no audio (by status)",
            passes,
            lambda p: f"{p['failed']} ({_counts(p['failed_statuses'])})",
        ),
        _row(
            "**share served**: complete, of the requests neither hung up nor cut by an "
            "upstream stall (counting the stall cuts)",
            passes,
            lambda p: f"**{100 * p['served_share']:.3f} %** ({100 * p['served_share_raw']:.2f} %)",
        ),
        _row(
            "duplicated / skipped / mixed / garbled audio",
            passes,
            lambda p: " / ".join(str(p["bad_audio"][k]) for k in BAD_KINDS),
        ),
        _row(
            "X-Voice naming another voice than the audio's",
            passes,
            lambda p: str(p["wrong_voice_header"]),
        ),
        _row("answered by", passes, lambda p: _counts(p["answered_by"])),
        _row(
            "upstream requests per caller request",
            passes,
            lambda p: f"{p['upstream_requests_per_request']:.2f}",
        ),
        _row(
            "TTFB of complete answers p50 / p99",
            passes,
            lambda p: _pair(p["ttfb_ms"], ".1f"),
        ),
        _row(
            "breaker opened / closed; requests that skipped it",
            passes,
            lambda p: (
                f"{p['gateway']['breaker_opened']:.0f} / "
                f"{p['gateway']['breaker_closed']:.0f}; {p['gateway']['skipped_open']:.0f}"
            ),
        ),
        _row(
            "primary attempts ok / error / timeout; retries denied by the budget",
            passes,
            lambda p: (
                " / ".join(f"{p['gateway']['attempts'][k]:.0f}" for k in ("ok", "error", "timeout"))
                + f"; {p['gateway']['retries_denied']:.0f}"
            ),
        ),
        _row(
            "hedges started (won by the hedge)",
            passes,
            lambda p: f"{p['gateway']['hedges']:.0f} ({p['gateway']['hedges_won_by_hedge']:.0f})",
        ),
        _row(
            "streams ended as stall / by the caller hanging up",
            passes,
            lambda p: (
                f"{p['gateway']['streams_ended_stall']:.0f} / "
                f"{p['gateway']['streams_ended_disconnect']:.0f}"
            ),
        ),
        _row("wall time", passes, lambda p: f"{p['wall_s']:.0f} s"),
        _row(
            "gateway RSS after the pass",
            passes,
            lambda p: f"{p['rss_after_kib'] / 1024:.1f} MiB",
        ),
        "",
        f"Over both passes: gateway RSS {faults['rss_before_kib'] / 1024:.1f} MiB before (after "
        "a warm-up through the same faults), "
        f"{faults['rss_after_kib'] / 1024:.1f} MiB after; the gateway's connections to the "
        f"faulty / healthy upstream {faults['sockets_before']['faulty']} / "
        f"{faults['sockets_before']['healthy']} before (the pools after a warm-up at the same "
        f"concurrency), {faults['sockets_after']['faulty']} / "
        f"{faults['sockets_after']['healthy']} after, all idle; "
        f"{faults['settle_s']:.1f} s after the last caller, provider slots in flight "
        f"{faults['held_after']['in_flight']}, queued {faults['held_after']['queued']}, "
        f"stalled upstream connections still open {faults['held_after']['stalls_open']}. "
        f"The gateway's log over the whole soak: {_counts(f['gateway_log']['levels'])} lines "
        "(a provider's failure is a WARNING).",
        "",
        "### Full outage of the primary",
        "",
        f"Every primary request answered 503; its breaker was {outage['breaker_before']} after "
        f"20 requests. Then {size['outage_rounds']} runs of {size['outage_requests']} requests "
        f"one at a time each way, {outage['probes']:.0f} probes of the primary among them "
        "(medians of the runs):",
        "",
        "| TTFB (ms) | primary voice, breaker open | straight to the fallback voice |",
        "|---|---|---|",
        f"| p50 | {outage['primary']['p50']:.2f} | {outage['fallback']['p50']:.2f} |",
        f"| p99 | {outage['primary']['p99']:.2f} | {outage['fallback']['p99']:.2f} |",
        "",
        "### Saturation",
        "",
        f"{sat['requests']} requests of {size['saturation_seconds']:g} s trickled in real time, "
        f"{size['saturation_callers']} callers at once (starts spread over one stream's "
        "length), on a voice whose provider takes 50 at a time: statuses "
        f"{_counts(sat['statuses'])}, so **{sat['504']} answered 504 and {sat['5xx']} 5xx**; "
        f"{sat['no_answer']} without an answer; answered by {_counts(sat['answered_by'])} "
        f"(the gateway counted {sat['overflow_metric']:.0f} overflows). TTFB p50 / p99 "
        f"{_pair(sat['ttfb_ms']['capped'], '.1f')} on the capped voice (a slot freed within "
        f"the queue wait), {_pair(sat['ttfb_ms']['overflow'], '.1f')} overflowed (after the "
        "whole queue wait).",
        "",
    ]
    return lines


def _primary(figures: dict[str, Any]) -> str:
    """The name of the pass's primary voice (its upstream's ledger comes first)."""
    return str(next(iter(figures["upstream_requests"])))
