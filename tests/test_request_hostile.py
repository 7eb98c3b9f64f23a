"""Reading a request costs time linear in its size, whatever the caller sends: every step that
sees caller text before routing, timed on inputs built to make a backtracking or quadratic
reader pay (``bench.hostile_parse`` prints the same figures).

The bounds are coarse on purpose, for a slow and loaded machine: the fixed steps take about
2 ms or less on 64 KiB, and the ExtendData reader they replace took 0.8 s on 8 KiB and 50 s on
64 KiB of one letter. Each size is checked before the next is run, so a quadratic reader fails
on the small input instead of holding the test run for minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from bench.hostile_parse import STEPS

KIB = 1024
SIZES_KIB = (8, 16, 32, 64)
#: What one step may take on 64 KiB (the default body limit), best of a few runs.
BOUND_MS = 50.0
#: Allowed on top of 4x the 16 KiB time for 64 KiB: timer and cache noise.
SLACK_MS = 5.0
#: What one step may take on 1 MiB, for ops that raise ``max_body_bytes``.
MIB_BOUND_MS = 800.0


def best_ms(call: Callable[[], object], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best * 1000


@pytest.mark.parametrize("step", list(STEPS))
def test_each_step_reads_hostile_input_in_linear_time(step: str) -> None:
    calls = {kib: STEPS[step](kib * KIB) for kib in SIZES_KIB}
    took = {kib: float("inf") for kib in SIZES_KIB}
    # The sizes in turn, each one's best of five: a machine whose speed moves within seconds
    # meets every size alike, so the growth from one size to the next is the code's.
    for _ in range(5):
        for kib, call in calls.items():
            took[kib] = min(took[kib], best_ms(call, repeats=1))
    for kib in SIZES_KIB:
        assert took[kib] < BOUND_MS, f"{step}: {kib} KiB took {took[kib]:.1f} ms"
    assert took[64] < 4 * took[16] + SLACK_MS, f"{step}: {took} ms by KiB"


@pytest.mark.parametrize("step", list(STEPS))
def test_each_step_stays_bounded_at_a_raised_body_limit(step: str) -> None:
    small = best_ms(STEPS[step](8 * KIB), repeats=1)
    assert small < BOUND_MS, f"{step}: 8 KiB took {small:.1f} ms"  # not worth trying 1 MiB
    took = best_ms(STEPS[step](1024 * KIB), repeats=2)
    assert took < MIB_BOUND_MS, f"{step}: 1 MiB took {took:.1f} ms"
