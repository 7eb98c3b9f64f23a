"""Prometheus counters of one gateway instance (its own registry, so apps in one process, as in
tests, never collide).

Served by several worker processes (:mod:`gateway.supervisor`), the gateway runs
prometheus-client's multiprocess mode: the supervisor names a directory in
``PROMETHEUS_MULTIPROC_DIR`` before the workers start, each worker's values go to files there,
and ``/metrics`` (any worker's, or the supervisor's metrics port) sums counters and histograms
over every process that ever served, and the live gauges over the processes alive now.

There every write of a value is a write to a shared file under a lock (~1.6 µs, against ~0.5
in one process), some fifteen a request; so the counters, the histograms' observations (a sum
and a bucket each), and the two gauges that only go up and down (streams, connections), are
tallied in memory during a turn of the event loop and written once each, by series, at its
end (:class:`_Tally`): a scrape sees them a turn later at most, and this process's own scrape
flushes them first (:meth:`Metrics.flush`)."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Final, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client import values as _values
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector

from providers._turn import TurnWrites

#: The environment variable that puts prometheus-client in multiprocess mode.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess() -> bool:
    """Whether this process's metrics are shared with other processes (set at import of
    prometheus-client, by the environment)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def prepare_directory(path: str) -> None:
    """Make an operator's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``) ready for a new
    run: created if missing, and rid of the files an earlier run left there, whose counts would
    otherwise be summed into this run's (an ``OSError`` if it cannot be done)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))


def serve_metrics(host: str, port: int, metrics: Metrics | None = None) -> WSGIServer:
    """``/metrics`` on a port of its own (``server.metrics.port``), served from a thread by
    prometheus-client's own server: ``metrics``' registry, or every process's (multiprocess
    mode, from the supervisor). Stop it with ``shutdown()`` and ``server_close()``."""
    if metrics is not None and not metrics.multiprocess:
        registry = metrics.registry
    else:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def render_all() -> bytes:
    """Every process's metrics, summed (multiprocess mode)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


_Metric = TypeVar("_Metric", bound=MetricWrapperBase)


class _KnownChildren(MetricWrapperBase):
    """A labelled metric whose ``labels(*values)`` looks a child it has handed out before up
    in a dict: prometheus-client checks the count of the values, converts each with ``str()``
    and takes a lock on every call (~1.2 µs, some ten times a request). The children are the
    same objects either way; the dict holds no more series than the metric does (the values
    are statuses, providers, voices, reasons and tenants: the gateway's own, or the routing
    file's), and forgets them when series are removed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._known: dict[tuple[Any, ...], Any] = {}
        super().__init__(*args, **kwargs)

    def labels(self: _Metric, *labelvalues: Any, **labelkwargs: Any) -> _Metric:
        if not labelvalues or labelkwargs:
            return super().labels(*labelvalues, **labelkwargs)
        known: dict[tuple[Any, ...], _Metric] = self._known  # type: ignore[attr-defined]
        try:
            child = known.get(labelvalues)
        except TypeError:  # an unhashable value: prometheus-client str()s it
            return super().labels(*labelvalues)
        if child is None:
            child = known[labelvalues] = super().labels(*labelvalues)
        return child

    def remove(self, *labelvalues: Any) -> None:
        self._known = {}
        super().remove(*labelvalues)

    def remove_by_labels(self, labels: dict[str, str]) -> None:
        self._known = {}
        super().remove_by_labels(labels)

    def clear(self) -> None:
        self._known = {}
        super().clear()


#: Whether this process's values are written to files shared with other processes
#: (prometheus-client chose its value class by the environment at import).
_SHARED: Final = _values.ValueClass is not _values.MutexValue


class _Tally:
    """Increments of the event loop's turn, by value (a series' own number: a counter's, a
    gauge's, a histogram's sum or bucket), written once each when the turn is over (with the
    writes to sockets held for it: ``providers._turn``), or when :meth:`flush` is called. Only
    on the thread that runs the loop: from any other, or with no loop running, a value is
    written at once."""

    __slots__ = ("_loop", "_pending", "_thread")

    def __init__(self) -> None:
        self._pending: dict[Any, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    def add(self, value: Any, amount: float) -> None:
        pending = self._pending
        if pending:
            if self._thread == threading.get_ident():
                loop = self._loop
                if loop is not None and loop.is_running():  # its flush is still to come
                    pending[value] = pending.get(value, 0.0) + amount
                    return
                self.flush()  # the loop it was due on has stopped
                pending = self._pending
            else:
                value.inc(amount)
                return
        loop = asyncio._get_running_loop()
        if loop is None:
            value.inc(amount)
            return
        self._loop = loop
        self._thread = threading.get_ident()
        pending[value] = amount
        TurnWrites.of(loop).hold(self, socket=False)

    def flush(self) -> None:
        """Write what is held (on the loop's thread)."""
        pending = self._pending
        if pending:
            self._pending = {}
            for value, amount in pending.items():
                value.inc(amount)

    send_held = flush  # at the end of the turn, with the sockets' writes (providers._turn)


_TALLY: Final = _Tally()


def _unobservable(metric: MetricWrapperBase) -> bool:
    """Whether ``metric`` is a labelled metric's parent, which holds no value of its own
    (prometheus-client's ``_is_observable``, in one test)."""
    return bool(metric._labelnames) and not metric._labelvalues


class _Counter(_KnownChildren, Counter):
    """A :class:`prometheus_client.Counter` whose children are looked up once each, and whose
    increments go straight to the series' value (what ``Counter.inc`` does after its checks,
    made here in one test), tallied for the turn when values are shared between processes."""

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if exemplar is not None or amount < 0 or _unobservable(self):
            super().inc(amount, exemplar)  # prometheus-client's own errors, and exemplars
        elif _SHARED:
            _TALLY.add(self._value, amount)
        else:
            self._value.inc(amount)


class _UpDownGauge(Gauge):
    """A :class:`prometheus_client.Gauge` that only goes up and down (never ``set``), whose
    changes are tallied for the turn when values are shared between processes."""

    def inc(self, amount: float = 1) -> None:
        if not _SHARED or _unobservable(self):
            super().inc(amount)
        else:
            _TALLY.add(self._value, amount)

    def dec(self, amount: float = 1) -> None:
        self.inc(-amount)

    def set(self, value: float) -> None:
        raise TypeError("an up-and-down gauge is never set")


class _Histogram(_KnownChildren, Histogram):
    """A :class:`prometheus_client.Histogram` whose children are looked up once each, and
    whose observations are tallied for the turn (its sum and its bucket) when values are
    shared between processes."""

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if not _SHARED or exemplar is not None or _unobservable(self):
            super().observe(amount, exemplar)
            return
        _TALLY.add(self._sum, amount)
        for i, bound in enumerate(self._upper_bounds):
            if amount <= bound:
                _TALLY.add(self._buckets[i], 1.0)
                break


_TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)


class Metrics:
    """Everything the gateway counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = multiprocess()
        self._source: str | None = None
        r = self.registry
        self.requests = _Counter(
            "tts_requests", "Synthesis requests by answer status.", ["status"], registry=r
        )
        self.ttfb = _Histogram(
            "tts_first_byte_seconds",
            "From request arrival to the first audio byte, by the provider that answered.",
            ["provider"],
            buckets=_TTFB_BUCKETS,
            registry=r,
        )
        self.attempts = _Counter(
            "tts_provider_attempts",
            "Attempts to open a provider stream, by outcome (ok, error, timeout, no_audio, ...).",
            ["provider", "outcome"],
            registry=r,
        )
        self.characters = _Counter(
            "tts_provider_characters",
            "Characters of text sent to each provider (what the bill is made of).",
            ["provider"],
            registry=r,
        )
        self.fallbacks = _Counter(
            "tts_fallbacks", "Requests answered by a fallback voice.", ["voice"], registry=r
        )
        self.audio_seconds = _Counter(
            "tts_audio_seconds", "Seconds of audio delivered.", ["provider"], registry=r
        )
        self.streams_ended = _Counter(
            "tts_streams_ended",
            "Audio streams by how they ended (complete, client_disconnect, provider_error, "
            "stall, timeout, drain, caller_too_slow).",
            ["reason"],
            registry=r,
        )
        self.active = _UpDownGauge(
            "tts_streams_active",
            "Audio streams in progress.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.reloads = _Counter(
            "tts_config_reloads",
            "Routing-file reloads by result (ok, refused).",
            ["result"],
            registry=r,
        )
        for result in ("ok", "refused"):
            # At zero from the start, so that the first refusal is an increase to Prometheus
            # (a series that first appears at 1 is none, and would never fire an alert).
            self.reloads.labels(result)
        self.connections_open = _UpDownGauge(
            "tts_connections_open",
            "Client connections open (HTTP, any route).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_refused = _Counter(
            "tts_connections_refused",
            "Client connections ended by the server layer: max_connections (answered 503), "
            "header_timeout, body_timeout (408), head_too_large (431), request_too_large (413), "
            "malformed_request (400).",
            ["reason"],
            registry=r,
        )
        self.breaker_transitions = _Counter(
            "tts_breaker_transitions",
            "Circuit-breaker transitions, by provider and the state entered (open, half_open, "
            "closed).",
            ["provider", "state"],
            registry=r,
        )
        self.rejections = _Counter(
            "tts_provider_rejections",
            "Requests that skipped a provider without asking it: its breaker was open (open), "
            "its queue wait ran out (busy), it said it was at its concurrency limit (saturated).",
            ["provider", "reason"],
            registry=r,
        )
        self.retries_denied = _Counter(
            "tts_retries_denied",
            "Retries not made because the provider's retry budget was spent.",
            ["provider"],
            registry=r,
        )
        self.overflow = _Counter(
            "tts_overflow",
            "Requests answered by a later voice because an earlier one was open or busy, by the "
            "voice that answered.",
            ["voice"],
            registry=r,
        )
        self.hedges = _Counter(
            "tts_hedges",
            "Hedges started, by the voice whose first byte was late.",
            ["voice"],
            registry=r,
        )
        self.hedge_wins = _Counter(
            "tts_hedge_wins",
            "Hedged requests by the side whose audio came first (primary, hedge).",
            ["voice", "side"],
            registry=r,
        )
        self.sticky_hits = _Counter(
            "tts_sticky_hits",
            "Requests sent first to the fallback their call failed over to, by requested voice.",
            ["voice"],
            registry=r,
        )
        # The phrase cache (gateway.cache).
        self.cache_lookups = _Counter(
            "tts_cache_lookups",
            "Phrase-cache lookups of voices with cache: true, by result: hit (stored audio), "
            "shared (an identical synthesis in flight), miss (a synthesis of its own).",
            ["provider", "result"],
            registry=r,
        )
        self.cache_stored = _Counter(
            "tts_cache_stored",
            "Complete answers stored in the phrase cache.",
            ["provider"],
            registry=r,
        )
        self.cache_characters_saved = _Counter(
            "tts_cache_characters_saved",
            "Characters not sent to the provider because the cache (or a shared synthesis) "
            "answered.",
            ["provider"],
            registry=r,
        )
        self.cache_audio_saved = _Counter(
            "tts_cache_audio_seconds_saved",
            "Seconds of audio delivered from the cache (or a shared synthesis) instead of "
            "synthesized (also counted in tts_audio_seconds).",
            ["provider"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            "tts_cache_bytes",
            "Bytes held by the in-process phrase cache (summed over the processes).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_entries = Gauge(
            "tts_cache_entries",
            "Entries in the in-process phrase cache (summed over the processes).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_redis_errors = _Counter(
            "tts_cache_redis_errors",
            "Phrase-cache Redis calls that failed (the cache went on memory-only), by op.",
            ["op"],
            registry=r,
        )
        # Spend: what was billed against what reached the caller.
        self.characters_delivered = _Counter(
            "tts_provider_characters_delivered",
            "Characters whose audio reached the caller (a stream cut short counts the share "
            "of its characters that its audio delivered is of the whole answer's).",
            ["provider"],
            registry=r,
        )
        self.audio_generated = _Counter(
            "tts_audio_generated_seconds",
            "Seconds of audio each provider produced, delivered or not: a whole answer; for "
            "one cut short by the gateway or the caller, its expected length at the provider's "
            "learned speaking pace unless it had been received whole; for one the provider "
            "broke off, or a hedge's loser, what was received.",
            ["provider"],
            registry=r,
        )
        self.hedge_characters = _Counter(
            "tts_hedge_characters",
            "Characters billed by attempts that lost a hedge race (the hedge's overhead).",
            ["provider"],
            registry=r,
        )
        self.tenant_requests = _Counter(
            "tts_tenant_requests",
            "Requests per tenant (the token's name in the routing file), by status.",
            ["tenant", "status"],
            registry=r,
        )
        self.tenant_characters = _Counter(
            "tts_tenant_characters",
            "Characters of text per tenant in requests answered with audio.",
            ["tenant"],
            registry=r,
        )
        self.config_info = Gauge(
            "tts_config_voices",
            "Voices in the routing file in use, by its source.",
            ["source"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # Each provider's live state: in one process read at scrape time from the health
        # board (gateway.health); over several, sampled into these by every process.
        self.breaker_state: Gauge | None = None
        self.in_flight: Gauge | None = None
        self.queued: Gauge | None = None
        if self.multiprocess:
            self.breaker_state = Gauge(
                "tts_breaker_state",
                "Circuit-breaker state per provider: 0 closed, 1 half_open, 2 open (the "
                "worst over the processes).",
                ["provider"],
                registry=r,
                multiprocess_mode="livemax",
            )
            self.in_flight = Gauge(
                "tts_provider_in_flight",
                "Upstream syntheses in flight.",
                ["provider"],
                registry=r,
                multiprocess_mode="livesum",
            )
            self.queued = Gauge(
                "tts_provider_queued",
                "Requests waiting for a provider slot.",
                ["provider"],
                registry=r,
                multiprocess_mode="livesum",
            )

    def opened(self) -> None:
        """A client connection opened (the server layer's ``ConnectionEvents``)."""
        self.connections_open.inc()

    def closed(self) -> None:
        """A client connection closed."""
        self.connections_open.dec()

    def refused(self, reason: str) -> None:
        """The server layer ended a connection itself, for ``reason``."""
        self.connections_refused.labels(reason).inc()

    def set_config(self, source: str, voices: int) -> None:
        """Name the routing file in use (one series at a time)."""
        if self.multiprocess:
            # A value written to the shared files stays there: zero the old series instead.
            if self._source is not None and self._source != source:
                self.config_info.labels(self._source).set(0)
        else:
            self.config_info.clear()
        self._source = source
        self.config_info.labels(source).set(voices)

    @staticmethod
    def flush() -> None:
        """Write the increments this process holds for the event loop's turn (on the loop's
        thread; see the module docstring): before a scrape, and at the end."""
        _TALLY.flush()

    def render(self) -> bytes:
        """The text exposition format: this gateway's, or every process's in multiprocess
        mode (what this process holds for the turn written first when called on the event
        loop's thread; from another, call :meth:`flush` on it first)."""
        if threading.get_ident() == _TALLY._thread:
            _TALLY.flush()
        return render_all() if self.multiprocess else generate_latest(self.registry)
