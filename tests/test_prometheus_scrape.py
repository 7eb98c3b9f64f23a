"""A real scrape: Debian's Prometheus on loopback scrapes a gateway of two worker processes
while it serves traffic, loads the alert rules, and evaluates every PromQL expression of the
Grafana dashboard and of the rules through its HTTP API. Each must parse and evaluate; the
dashboard's must return data once the traffic they chart has flowed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import tone

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
CHUNK = tone(440, 0.02, 24000)
#: Grafana's own variables, as a panel would have them over a short range.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "15s",
    "${__interval}": "15s",
    "$__range": "5m",
    "${__range}": "5m",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prometheus() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed (apt-get install -y prometheus)")
        pytest.skip("prometheus is not installed (apt-get install -y prometheus)")
    return found


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every dashboard, Grafana's variables filled."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if expr:
                    found.append((str(panel.get("title", "")), fill(expr)))

    for path in sorted(DASHBOARDS.glob("*.json")):
        walk(json.loads(path.read_text())["panels"])
    return found


def fill(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    # A dashboard variable left (a provider picker): every value.
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [
        (rule["alert"], rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


#: Metrics that only count events this traffic does not cause: a panel charting them alone may
#: be empty here.
EVENT_ONLY = {
    "tts_hedges",
    "tts_hedge_wins",
    "tts_overflow",
    "tts_sticky_hits",
    "tts_provider_rejections",
    "tts_retries_denied",
    "tts_connections_refused",
    "tts_breaker_transitions",
    "tts_hedge_characters",  # no voice hedges here
    "tts_cache_characters_saved",  # nor uses the phrase cache
}


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\btts_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count|total|created)$", "", name) for name in names}


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def _until(check: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A two-worker gateway that has served traffic (fallbacks included), and a client of a
    Prometheus that has scraped it since and evaluated the alert rules."""
    prometheus = _prometheus()
    tmp = tmp_path_factory.mktemp("scrape")
    upstream_port, gateway_port, prometheus_port = _free_port(), _free_port(), _free_port()
    dead_port = _free_port()  # nothing listens: every attempt is refused, the fallback answers
    routing = tmp / "gateway.yaml"
    routing.write_text(
        yaml.safe_dump(
            {
                "server": {"default_voice": "good", "log_level": "warning", "workers": 2},
                "providers": {
                    "healthy": {
                        "type": "custom",
                        "url": f"http://127.0.0.1:{upstream_port}/stream-audio",
                        "sample_rates": [24000],
                    },
                    "down": {
                        "type": "custom",
                        "url": f"http://127.0.0.1:{dead_port}/stream-audio",
                        "retry": {"attempts": 1},
                    },
                },
                "voices": {
                    "good": {"provider": "healthy"},
                    "flaky": {"provider": "down", "fallback": ["good"]},
                },
            }
        )
    )
    scrape_config = tmp / "prometheus.yml"
    scrape_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "tts-gateway",
                        "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}],
                    }
                ],
            }
        )
    )
    processes = [
        _start(
            [sys.executable, "-m", "bench.upstream", "--port", str(upstream_port)],
            tmp / "upstream.log",
        ),
        _start(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--config",
                str(routing),
                "--host",
                "127.0.0.1",
                "--port",
                str(gateway_port),
            ],
            tmp / "gateway.log",
        ),
        _start(
            [
                prometheus,
                f"--config.file={scrape_config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            tmp / "prometheus.log",
        ),
    ]
    gateway = f"http://127.0.0.1:{gateway_port}"
    try:
        with httpx.Client(timeout=30) as client:
            _until(lambda: client.get(gateway + "/readyz").status_code == 200, 60, "the gateway")
            body = {"Text": "Hello there.", "SampleRate": 48000, "ExtendData": ""}
            for voice in ["good"] * 24 + ["flaky"] * 8:
                answer = client.post(gateway + "/stream-audio", json=dict(body, VoiceId=voice))
                assert answer.status_code == 200, answer.text
        api = httpx.Client(base_url=f"http://127.0.0.1:{prometheus_port}/api/v1", timeout=10)

        def scraped_after_traffic() -> bool:
            # Three samples of the final count: rate() and increase() have what they need.
            result = query(api, "count_over_time(sum(tts_requests_total)[1m:1s]) >= 3")
            total = query(api, "sum(tts_requests_total)")
            return bool(result) and bool(total) and float(total[0]["value"][1]) == 32

        _until(scraped_after_traffic, 60, "Prometheus to scrape the traffic")
        _until(lambda: rules_evaluated(api), 30, "the alert rules to be evaluated")
        yield api
        api.close()
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def query(api: httpx.Client, expr: str) -> list[dict[str, Any]]:
    """The result of an instant query; a parse or evaluation error fails the test."""
    answer = api.get("/query", params={"query": expr})
    data = answer.json()
    assert answer.status_code == 200 and data["status"] == "success", (expr, data)
    result: list[dict[str, Any]] = data["data"]["result"]
    return result


def rules_evaluated(api: httpx.Client) -> bool:
    groups = api.get("/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    return bool(rules) and all(rule.get("lastEvaluation", "").startswith("2") for rule in rules)


def test_every_dashboard_expression_parses_and_the_traffic_ones_return_data(
    scraped: httpx.Client,
) -> None:
    expressions = dashboard_expressions()
    assert expressions, "the dashboard has no PromQL"
    empty = []
    for title, expr in expressions:
        result = query(scraped, expr)
        if not result and not (_metric_names(expr) & EVENT_ONLY):
            empty.append(f"{title}: {expr}")
    assert not empty, "panels with no data after the traffic they chart:\n" + "\n".join(empty)


def test_every_alert_rule_loads_and_evaluates(scraped: httpx.Client) -> None:
    expected = dict(alert_expressions())
    assert expected, "no alert rules"
    groups = scraped.get("/rules").json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(expected) <= set(loaded)
    for name, expr in expected.items():
        assert loaded[name]["health"] == "ok", (name, loaded[name].get("lastError"))
        query(scraped, expr)  # parses and evaluates on its own too


def test_the_scrape_sums_both_workers(scraped: httpx.Client) -> None:
    # Every request counted once, whichever worker answered it; both voices' traffic seen.
    requests = query(scraped, 'sum(tts_requests_total{status="200"})')
    assert float(requests[0]["value"][1]) == 32
    fallbacks = query(scraped, "sum(tts_fallbacks_total)")
    assert float(fallbacks[0]["value"][1]) == 8
    assert query(scraped, 'tts_streams_active{job="tts-gateway"}')
