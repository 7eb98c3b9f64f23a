"""What the gateway knows of each provider's health, kept across reloads.

A :class:`ProviderHealth` bundles, for one provider, its admission (:class:`ProviderGate`), its
circuit breaker, its retry budget and its last error. The :class:`HealthBoard` keeps one per
provider name for the gateway's life: a reload that leaves a provider's type and settings as
they were keeps its state (an open breaker stays open, the slots in flight stay counted), and
only takes the reloaded limits and policies; a provider whose type or settings changed is a new
upstream and starts afresh. ``GET /providers`` and the live gauges read the board.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from providers.base import Provider, ProviderError, ProviderTimeout

from .admission import ProviderGate
from .breaker import STATE_VALUES, CircuitBreaker, State
from .metrics import Metrics
from .window import ShareBudget

#: Seconds between two samples of the live gauges in multiprocess mode.
SAMPLE_SECONDS = 1.0
#: Retries a provider may always make in a window, whatever its retry budget's share: a quiet
#: provider's one failing request may still be retried.
RETRY_FLOOR = 3


@dataclass(slots=True)
class LastError:
    """The most recent failure of a provider, as the caller is told of it."""

    summary: str
    kind: str
    at: float  # time.time()


class ProviderHealth:
    """One provider's admission, breaker, retry budget and last error."""

    def __init__(self, provider: Provider, metrics: Metrics) -> None:
        self.name = provider.name
        self.provider = provider
        config = provider.config
        self.gate = ProviderGate(config.max_concurrency, self._signalled)
        self.breaker = CircuitBreaker(config.circuit_breaker, self._changed)
        self.retries = ShareBudget(config.retry_budget, RETRY_FLOOR)
        self.last_error: LastError | None = None
        self._metrics = metrics

    def adopt(self, provider: Provider) -> None:
        """A reload built ``provider`` for this same upstream: take its limits and policies."""
        provider.signalled_concurrency = self.provider.signalled_concurrency
        self.provider = provider
        config = provider.config
        self.gate.limit = config.max_concurrency
        self.breaker.configure(config.circuit_breaker)
        self.retries.share = config.retry_budget

    def _signalled(self) -> int | None:
        return self.provider.signalled_concurrency

    def _changed(self, old: State, new: State) -> None:
        self._metrics.breaker_transitions.labels(self.name, new).inc()

    def noted(self, error: ProviderError) -> None:
        """Remember ``error`` as the provider's last."""
        kind = "timeout" if isinstance(error, ProviderTimeout) else type(error).__name__
        self.last_error = LastError(error.summary, kind, time.time())

    def snapshot(self) -> dict[str, Any]:
        """The provider's live state, JSON-ready (``GET /providers``)."""
        breaker = self.breaker
        policy = breaker.policy
        base, spent = self.retries.counts
        last = self.last_error
        return {
            "name": self.name,
            "type": self.provider.config.type,
            "breaker": {
                "state": breaker.state,
                "enabled": policy is not None,
                "consecutive_failures": breaker.failures,
                "retry_in": round(breaker.retry_after(), 3),
                "cooldown": breaker.cooldown if policy is not None else None,
            },
            "in_flight": self.gate.in_flight,
            "queue": self.gate.waiting,
            "max_concurrency": self.gate.capacity,
            "retries": {"first_attempts": base, "retries": spent},
            "last_error": None
            if last is None
            else {
                "summary": last.summary,
                "kind": last.kind,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last.at)),
                "seconds_ago": round(time.time() - last.at, 1),
            },
        }


class HealthBoard(Collector):
    """Every provider's :class:`ProviderHealth`, by name, for the gateway's life; also the
    collector of the live gauges (breaker state, in flight, queued), read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._by_name: dict[str, ProviderHealth] = {}
        self._sampled: set[str] = set()
        if not metrics.multiprocess:
            metrics.registry.register(self)

    def adopt(self, providers: Mapping[str, Provider]) -> dict[str, ProviderHealth]:
        """The health of each of a routing file's providers: kept for a provider whose type and
        settings are unchanged, new otherwise. Providers no longer routed are forgotten."""
        board: dict[str, ProviderHealth] = {}
        for name, provider in providers.items():
            known = self._by_name.get(name)
            if known is not None and _same_upstream(known.provider, provider):
                known.adopt(provider)
                board[name] = known
            else:
                board[name] = ProviderHealth(provider, self._metrics)
        self._by_name = board
        return board

    def sample(self) -> None:
        """Write every provider's live state into the shared gauges (multiprocess mode, where
        each process samples its own, :data:`SAMPLE_SECONDS` apart, and a scrape sums them)."""
        metrics = self._metrics
        if metrics.breaker_state is None or metrics.in_flight is None or metrics.queued is None:
            return
        sampled = set()
        for health in self:
            metrics.breaker_state.labels(health.name).set(STATE_VALUES[health.breaker.state])
            metrics.in_flight.labels(health.name).set(health.gate.in_flight)
            metrics.queued.labels(health.name).set(health.gate.waiting)
            sampled.add(health.name)
        # A value in the shared files stays until the process ends: a provider a reload took
        # away is zeroed, not left showing its last state (an open breaker alerting forever).
        for gone in self._sampled - sampled:
            for gauge in (metrics.breaker_state, metrics.in_flight, metrics.queued):
                gauge.labels(gone).set(0)
        self._sampled = sampled

    def __iter__(self) -> Iterator[ProviderHealth]:
        return iter(list(self._by_name.values()))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "tts_breaker_state",
            "Circuit-breaker state per provider: 0 closed, 1 half_open, 2 open.",
            labels=["provider"],
        )
        in_flight = GaugeMetricFamily(
            "tts_provider_in_flight", "Upstream syntheses in flight.", labels=["provider"]
        )
        queued = GaugeMetricFamily(
            "tts_provider_queued", "Requests waiting for a provider slot.", labels=["provider"]
        )
        for health in self:
            state.add_metric([health.name], STATE_VALUES[health.breaker.state])
            in_flight.add_metric([health.name], health.gate.in_flight)
            queued.add_metric([health.name], health.gate.waiting)
        return [state, in_flight, queued]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


def _same_upstream(old: Provider, new: Provider) -> bool:
    return (old.config.type, dict(old.config.settings)) == (
        new.config.type,
        dict(new.config.settings),
    )
