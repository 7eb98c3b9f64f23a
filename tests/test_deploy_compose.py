"""Compose (deploy/compose.yaml), the Prometheus that scrapes the gateway and the Grafana
dashboard: the compose file against the Compose specification's schema, the Prometheus config by
promtool, and the dashboard's every query parsed and read against the metrics the gateway's
/metrics page really offers."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import _DRAIN_BACKSTOP_SECONDS
from gateway.config import load_config
from tests.deploy_support import (
    DEPLOY,
    REPO,
    environment_references,
    exported_metric_names,
    load_yaml,
    promql_metric_names,
    run,
    tool,
    unknown_metrics,
)

COMPOSE = DEPLOY / "compose.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tts-gateway.json"
ENV_EXAMPLE = DEPLOY / ".env.example"

#: Grafana's own variables, as Prometheus would see them once Grafana has filled them in.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "3h", "$__interval": "15s"}


def compose_schema_errors(path: Path) -> tuple[int, str]:
    exe = tool("check-jsonschema", "pip install check-jsonschema: the test extra")
    result = run([exe, "--builtin-schema", "vendor.compose-spec", str(path)])
    return result.returncode, result.stdout + result.stderr


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, duration
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_the_compose_file_matches_the_compose_specification() -> None:
    code, output = compose_schema_errors(COMPOSE)
    assert code == 0, output


def test_the_compose_schema_check_fails_a_file_with_an_unknown_key(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    text = COMPOSE.read_text()
    assert "    stop_grace_period: 30s\n" in text
    broken.write_text(text.replace("    stop_grace_period: 30s\n", "    stop_grace: 30s\n"))
    code, output = compose_schema_errors(broken)
    assert code != 0
    assert "stop_grace" in output, output


def test_compose_runs_the_image_with_the_example_routing_file_and_time_to_drain() -> None:
    compose = load_yaml(COMPOSE)
    gateway = compose["services"]["gateway"]
    build = gateway["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    [mount] = gateway["volumes"]
    assert mount["read_only"] is True
    assert (DEPLOY / mount["source"]).resolve() == DEPLOY / "gateway.example.yaml"
    assert gateway["environment"]["TTS_GATEWAY_CONFIG"] == mount["target"]
    assert gateway["env_file"] == ".env" and ENV_EXAMPLE.is_file()
    assert gateway["ports"] == ["8080:8080"]
    # docker stop's default of 10 s would kill streams still draining: the grace period covers
    # server.drain_seconds and the server's own backstop after it.
    drain = load_config(DEPLOY / "gateway.example.yaml", env={}).server.drain_seconds
    assert seconds(gateway["stop_grace_period"]) > drain + _DRAIN_BACKSTOP_SECONDS
    assert gateway["ulimits"]["nofile"]["soft"] >= 65536
    for service in ("prometheus", "grafana"):
        for volume in compose["services"][service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{service} mounts {source}, which is missing"


def test_prometheus_scrapes_the_gateway_service_and_loads_the_alerts() -> None:
    compose = load_yaml(COMPOSE)
    config = load_yaml(PROMETHEUS)
    [job] = config["scrape_configs"]
    assert job["job_name"] == "tts-gateway"  # the job the alerts select
    assert job["metrics_path"] == "/metrics"
    [target] = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose["services"]
    assert compose["services"][host]["ports"] == [f"{port}:{port}"]
    assert config["rule_files"] == ["alerts.yaml"]
    assert (PROMETHEUS.parent / "alerts.yaml").is_file()


def test_promtool_checks_the_prometheus_config_and_its_rule_files() -> None:
    promtool = tool("promtool", "apt-get install prometheus")
    result = run([promtool, "check", "config", PROMETHEUS.name], cwd=PROMETHEUS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_grafana_is_provisioned_with_the_prometheus_service_and_the_dashboard_folder() -> None:
    compose = load_yaml(COMPOSE)
    grafana = compose["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    provisioning = DEPLOY / mounts["./grafana/provisioning"].replace(
        "/etc/grafana/provisioning", "grafana/provisioning"
    )
    [source] = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    [provider] = load_yaml(provisioning / "dashboards" / "tts-gateway.yaml")["providers"]
    assert provider["options"]["path"] == mounts["./grafana/dashboards"]
    assert (DEPLOY / "grafana" / "dashboards" / DASHBOARD.name).is_file()


def test_env_example_names_every_variable_of_the_example_routing_file_without_values() -> None:
    example = env_file(ENV_EXAMPLE)
    assert example, "no keys"
    assert all(value == "" for value in example.values()), "a value in .env.example"
    referenced = environment_references(load_yaml(DEPLOY / "gateway.example.yaml"))
    # The port is the image's, not a key: it stays out of .env; compose sets REDIS_URL to its
    # own Redis service.
    assert referenced - {"TTS_GATEWAY_PORT", "REDIS_URL"} == set(example) - {
        "GRAFANA_ADMIN_PASSWORD"
    }
    assert load_yaml(COMPOSE)["services"]["gateway"]["environment"]["REDIS_URL"].startswith(
        "redis://redis:"
    )
    compose = COMPOSE.read_text()
    assert "${GRAFANA_ADMIN_PASSWORD:?" in compose
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in ignored, "deploy/.env (real keys) must never be committed"


# ---------------------------------------------------------------- the dashboard


def dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def prometheus_expr(expr: str) -> str:
    """``expr`` as Grafana sends it, its variables filled in (none but Grafana's own)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a dashboard variable Prometheus would not know: {expr}"
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels()
        for target in panel["targets"]
    ]


def test_the_dashboard_is_grafana_json_on_a_selectable_prometheus_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "tts-gateway"
    [variable] = dashboard["templating"]["list"]
    assert variable == variable | {"name": "datasource", "type": "datasource"}
    assert variable["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard_panels():
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["expr"].strip(), panel["title"]
    # On the 24-column grid, without two panels on one spot.
    boxes = [panel["gridPos"] for panel in dashboard["panels"]]
    for box in boxes:
        assert box["x"] >= 0 and box["x"] + box["w"] <= 24, box
    for a, b in combinations(boxes, 2):
        apart = (
            a["x"] + a["w"] <= b["x"]
            or b["x"] + b["w"] <= a["x"]
            or a["y"] + a["h"] <= b["y"]
            or b["y"] + b["h"] <= a["y"]
        )
        assert apart, (a, b)


@pytest.mark.parametrize(("panel", "expr"), dashboard_exprs())
def test_every_dashboard_query_parses_and_reads_only_what_the_gateway_exports(
    panel: str, expr: str
) -> None:
    assert unknown_metrics(prometheus_expr(expr)) == set(), panel


def test_a_query_on_a_metric_the_gateway_does_not_export_is_caught() -> None:
    # The check bites: a misspelt name (no _total), and a query that does not parse.
    assert unknown_metrics("sum(rate(tts_requests[1m]))") == {"tts_requests"}
    with pytest.raises(ValueError, match="parenthesis"):
        promql_metric_names("sum(rate(tts_requests_total[1m])")
    assert "tts_requests_total" in exported_metric_names()


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    read = {
        name for _, expr in dashboard_exprs() for name in promql_metric_names(prometheus_expr(expr))
    }
    wanted = {
        "tts_requests_total",  # requests and status mix
        "tts_first_byte_seconds_bucket",  # TTFB percentiles
        "tts_streams_active",
        "tts_fallbacks_total",
        "tts_breaker_state",
        "tts_provider_characters_total",  # cost
        "tts_audio_seconds_total",
        "tts_config_reloads_total",
        # spend: billed against delivered, the hedge's overhead, the cache's savings, tenants
        "tts_provider_characters_delivered_total",
        "tts_audio_generated_seconds_total",
        "tts_hedge_characters_total",
        "tts_cache_characters_saved_total",
        "tts_tenant_characters_total",
        "tts_tenant_requests_total",
    }
    assert wanted <= read, wanted - read
    ttfb = [
        expr
        for _, expr in dashboard_exprs()
        if "tts_first_byte_seconds_bucket" in expr and "provider" in expr
    ]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({quantile}," in expr for expr in ttfb), quantile
