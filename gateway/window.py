"""A share of events over a sliding window: retries of a provider as a share of its first
attempts (the retry budget), hedges as a share of a voice's requests (the hedge bound).

Counts are kept in one-second buckets of a ring (ten for the usual ten seconds), so memory is
fixed and each call is a few operations, whatever the traffic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

#: The window every share is taken over, in seconds.
WINDOW_SECONDS = 10.0


class ShareBudget:
    """``spend()`` succeeds while the spent events of the last ``window`` seconds stay under
    ``share`` of the base events (``note()``), or under ``floor`` (so that a quiet provider
    may still retry a request or two)."""

    def __init__(
        self,
        share: float | None,
        floor: int,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.share = share
        self.floor = floor
        self._slots = max(1, round(window))
        self._step = window / self._slots
        self._base = [0] * self._slots
        self._spent = [0] * self._slots
        self._base_total = 0
        self._spent_total = 0
        self._tick = math.floor(clock() / self._step)
        self._clock = clock

    def note(self) -> None:
        """One base event (a first attempt, a request)."""
        index = self._advance()
        self._base[index] += 1
        self._base_total += 1

    def spend(self) -> bool:
        """Take one event out of the budget if it allows one now."""
        if self.share is None:
            return True
        index = self._advance()
        allowed = max(self.floor, math.floor(self.share * self._base_total))
        if self._spent_total >= allowed:
            return False
        self._spent[index] += 1
        self._spent_total += 1
        return True

    @property
    def counts(self) -> tuple[int, int]:
        """(base, spent) over the window."""
        self._advance()
        return self._base_total, self._spent_total

    def _advance(self) -> int:
        tick = math.floor(self._clock() / self._step)
        passed = tick - self._tick
        if passed > 0:
            for offset in range(1, min(passed, self._slots) + 1):
                index = (self._tick + offset) % self._slots
                self._base_total -= self._base[index]
                self._spent_total -= self._spent[index]
                self._base[index] = 0
                self._spent[index] = 0
            self._tick = tick
        return tick % self._slots
