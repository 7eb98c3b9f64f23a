"""What a pause costs the next step of Python on this machine, with no gateway at all.

Scenario (1)'s worst requests are the gateway's first after it sat idle through direct's and
nginx's rounds: each of their steps takes about three times the CPU it takes back to back
(``python -m bench.first_byte --timeline --pause 0.5 --fresh``). This module times one fixed
step of plain Python (a dict of a few hundred entries, its JSON written and read back: about
the size of a request's own path) in this process alone, back to back and after sleeps of
``--pauses`` seconds, in CPU time (``thread_time``) and wall time: what the machine (its cores'
idle states, what the hypervisor does with an idle core, caches left to others) adds after a
pause, whatever the program.

    python -m bench.idle                       # pauses 0, 0.01, 0.1 and 0.5 s, 20 steps each
    python -m bench.idle --steps 40 --json idle.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

#: Entries in the step's dict.
ENTRIES = 300


def step() -> int:
    """The fixed piece of plain Python timed: a dict built, written as JSON, read back."""
    made = {str(i): [i, i * 2, {"a": i}] for i in range(ENTRIES)}
    return len(json.loads(json.dumps(made)))


def timed() -> tuple[float, float]:
    """One :func:`step`: (CPU µs, wall µs)."""
    cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
    step()
    return (time.thread_time_ns() - cpu) / 1000, (time.perf_counter_ns() - wall) / 1000


def measure(pauses: list[float], steps: int, warm: int = 50) -> list[dict[str, float]]:
    """For each pause, ``steps`` steps each after sleeping that long: the medians and the
    worst, in µs, and the median CPU against the first pause's (back to back, 0)."""
    for _ in range(warm):
        timed()
    found: list[dict[str, float]] = []
    for pause in pauses:
        cpu: list[float] = []
        wall: list[float] = []
        for _ in range(steps):
            if pause:
                time.sleep(pause)
            c, w = timed()
            cpu.append(c)
            wall.append(w)
        found.append(
            {
                "pause_s": pause,
                "cpu_us_p50": statistics.median(cpu),
                "cpu_us_max": max(cpu),
                "wall_us_p50": statistics.median(wall),
            }
        )
    base = found[0]["cpu_us_p50"]
    for row in found:
        row["cpu_vs_first"] = row["cpu_us_p50"] / base
    return found


def show(found: list[dict[str, Any]]) -> str:
    lines = [
        "| pause before the step (s) | CPU µs p50 | CPU µs max | wall µs p50 "
        "| CPU p50 vs the first |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['pause_s']:g} | {r['cpu_us_p50']:.1f} | {r['cpu_us_max']:.1f} | "
        f"{r['wall_us_p50']:.1f} | {r['cpu_vs_first']:.2f}x |"
        for r in found
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pauses", default="0,0.01,0.1,0.5", help="seconds, comma-separated")
    parser.add_argument("--steps", type=int, default=20, help="steps timed per pause")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    try:
        pauses = [float(p) for p in args.pauses.split(",")]
    except ValueError:
        parser.error(f"--pauses takes seconds, comma-separated (got {args.pauses!r})")
    if args.steps < 1 or not pauses or any(not 0 <= p < 60 for p in pauses):
        parser.error("--steps must be at least 1 and each of --pauses 0 to 60 s")
    found = measure(pauses, args.steps)
    print(show(found))
    if args.json:
        args.json.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
