"""The circuit breaker of one provider: stop sending it work while it is failing.

::

    closed ──(``failures`` consecutive retryable failures, or a 429 with Retry-After)──► open
    open ──(the cooldown has passed; the next request is the probe)──► half_open
    half_open ──(the probe got audio)──► closed          (cooldown back to its start)
    half_open ──(the probe failed)──► open                (cooldown doubled, up to max_cooldown)

While it is open, and while a probe is under way, chains skip the provider at once: no attempt,
no retry, no first-byte budget spent. What the caller did (bad input, hanging up) and a hedge
cancelled because the other side won are no verdict on the provider: they neither count as
failures nor reset the count, and a probe ended that way lets the next request probe.

Every request that may use the provider holds a :class:`Ticket` from :meth:`CircuitBreaker.admit`
and ends it with exactly one of :meth:`~CircuitBreaker.succeeded`,
:meth:`~CircuitBreaker.failed` or :meth:`~CircuitBreaker.released`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from providers.base import BreakerPolicy

State = Literal["closed", "open", "half_open"]
#: The gauge's value of each state.
STATE_VALUES: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}


class Ticket:
    """What a request was admitted as: :data:`Ticket.NORMAL` (shared by every request while
    the breaker is closed), or a probe of its own, so that only the probe's own request can
    settle it (never a late verdict of an earlier probe)."""

    __slots__ = ("probe",)
    NORMAL: Ticket

    def __init__(self, probe: bool) -> None:
        self.probe = probe

    def __repr__(self) -> str:
        return "Ticket(probe)" if self.probe else "Ticket.NORMAL"


Ticket.NORMAL = Ticket(probe=False)


class CircuitBreaker:
    """One provider's breaker (see the module docstring). ``on_change(old, new)`` is told of
    every transition; ``clock`` is monotonic seconds."""

    def __init__(
        self,
        policy: BreakerPolicy | None,
        on_change: Callable[[State, State], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.state: State = "closed"
        self.failures = 0
        self.cooldown = policy.cooldown if policy else 0.0
        self.open_until = 0.0
        self._probe: Ticket | None = None
        self._on_change = on_change
        self._clock = clock

    def configure(self, policy: BreakerPolicy | None) -> None:
        """Take a reloaded policy; a breaker turned off closes."""
        self.policy = policy
        if policy is None:
            self._probe = None
            self._move("closed")
            self.failures = 0
        else:
            self.cooldown = min(max(self.cooldown, policy.cooldown), policy.max_cooldown)

    def admit(self) -> Ticket | None:
        """A ticket to try the provider now, or None: skip it."""
        if self.state == "closed" or self.policy is None:
            return Ticket.NORMAL
        if self.state == "open":
            if self._clock() < self.open_until:
                return None
            self._move("half_open")
        if self._probe is not None:
            return None
        self._probe = Ticket(probe=True)
        return self._probe

    @property
    def allows_retry(self) -> bool:
        """Whether a request that just failed may try the provider again: only while closed
        (a probe is one attempt; an open breaker means no retries)."""
        return self.state == "closed" or self.policy is None

    def retry_after(self) -> float:
        """Seconds until the provider may be tried again (0 when it may now)."""
        if self.state == "open":
            return max(0.0, self.open_until - self._clock())
        return 0.0

    def succeeded(self, ticket: Ticket) -> None:
        """The request got audio from the provider."""
        if ticket is self._probe:
            self._probe = None
            if self.policy is not None:
                self.cooldown = self.policy.cooldown
            self.failures = 0
            self._move("closed")
        elif self.state == "closed":
            self.failures = 0

    def failed(self, ticket: Ticket, retry_after: float | None = None) -> None:
        """A retryable failure of the provider (``retry_after``: it asked to be left alone
        that long, as a 429 with ``Retry-After`` does)."""
        policy = self.policy
        if policy is None:
            return
        if ticket is self._probe:
            self._probe = None
            self.cooldown = min(self.cooldown * 2, policy.max_cooldown)
            self._open(self.cooldown)
        elif self.state == "closed":
            self.failures += 1
            if self.failures >= policy.failures:
                self._open(self.cooldown)
        if retry_after:
            seconds = min(retry_after, policy.max_cooldown)
            if self.state != "open" or self._clock() + seconds > self.open_until:
                self._open(seconds)

    def released(self, ticket: Ticket) -> None:
        """The request ended without a verdict on the provider (the caller hung up, the other
        side of a hedge won, the answer was a refusal of this text)."""
        if ticket is self._probe:
            self._probe = None

    def _open(self, seconds: float) -> None:
        self.open_until = self._clock() + seconds
        self._probe = None
        self.failures = 0
        self._move("open")

    def _move(self, state: State) -> None:
        old, self.state = self.state, state
        if old != state and self._on_change is not None:
            self._on_change(old, state)
