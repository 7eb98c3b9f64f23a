"""The gateway's counters and histograms look their children up once each (``gateway.metrics``):
still one series per label set, counted as prometheus-client counts it."""

from __future__ import annotations

from gateway.metrics import Metrics


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_child_looked_up_again_counts_in_its_own_series() -> None:
    metrics = Metrics()
    for status in ("200", "200", "404", "200"):
        metrics.requests.labels(status).inc()
    assert metrics.requests.labels("200") is metrics.requests.labels("200")
    assert value(metrics, "tts_requests_total", status="200") == 3
    assert value(metrics, "tts_requests_total", status="404") == 1
    metrics.attempts.labels("pa", "ok").inc()
    metrics.attempts.labels("pa", "error").inc(2)
    metrics.attempts.labels("pb", "ok").inc()
    assert value(metrics, "tts_provider_attempts_total", provider="pa", outcome="ok") == 1
    assert value(metrics, "tts_provider_attempts_total", provider="pa", outcome="error") == 2
    assert value(metrics, "tts_provider_attempts_total", provider="pb", outcome="ok") == 1


def test_values_of_another_type_or_by_name_reach_the_same_series() -> None:
    metrics = Metrics()
    metrics.requests.labels(200).inc()
    metrics.requests.labels("200").inc()
    metrics.requests.labels(status="200").inc()
    assert value(metrics, "tts_requests_total", status="200") == 3


def test_a_histogram_observes_per_label_set() -> None:
    metrics = Metrics()
    metrics.ttfb.labels("pa").observe(0.004)
    metrics.ttfb.labels("pa").observe(0.2)
    metrics.ttfb.labels("pb").observe(0.02)
    assert value(metrics, "tts_first_byte_seconds_count", provider="pa") == 2
    assert value(metrics, "tts_first_byte_seconds_bucket", provider="pa", le="0.005") == 1
    assert value(metrics, "tts_first_byte_seconds_count", provider="pb") == 1


def test_removed_series_are_forgotten() -> None:
    metrics = Metrics()
    metrics.requests.labels("200").inc(5)
    metrics.requests.labels("503").inc()
    metrics.requests.remove("200")
    assert value(metrics, "tts_requests_total", status="200") is None
    metrics.requests.labels("200").inc()  # a new series, from zero
    assert value(metrics, "tts_requests_total", status="200") == 1
    metrics.requests.clear()
    assert value(metrics, "tts_requests_total", status="200") is None
    assert value(metrics, "tts_requests_total", status="503") is None
    metrics.requests.labels("503").inc()
    assert value(metrics, "tts_requests_total", status="503") == 1
    metrics.requests.labels("503").inc()
    metrics.requests.remove_by_labels({"status": "503"})
    assert value(metrics, "tts_requests_total", status="503") is None
    metrics.requests.labels("503").inc()
    assert value(metrics, "tts_requests_total", status="503") == 1
