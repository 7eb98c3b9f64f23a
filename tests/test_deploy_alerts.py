"""The alert rules (deploy/prometheus/alerts.yaml): promtool checks them and runs their unit
tests (alerts.test.yaml: series that fire each alert and series that do not); each alert has
what an on-call needs (for, severity, summary, description, a runbook section) and reads only
metrics the gateway exports."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.deploy_support import DEPLOY, load_yaml, run, tool, unknown_metrics

RULES = DEPLOY / "prometheus" / "alerts.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"

#: The alerts operators asked for, one per failure they must hear about.
EXPECTED = {
    "TTSGatewayHigh5xxShare",
    "TTSGatewayFirstByteSlow",
    "TTSGatewayBreakerOpen",
    "TTSGatewayFallbackShare",
    "TTSGatewayNoTraffic",
    "TTSGatewayReloadRefused",
}


def promtool(*args: str, cwd: Path) -> tuple[int, str]:
    exe = tool("promtool", "apt-get install prometheus")
    result = run([exe, *args], cwd=cwd)
    return result.returncode, result.stdout + result.stderr


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    code, output = promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert code == 0, output
    assert f"{len(EXPECTED)} rules found" in output, output


def test_promtool_runs_the_rules_unit_tests() -> None:
    code, output = promtool("test", "rules", RULE_TESTS.name, cwd=RULES.parent)
    assert code == 0, output
    assert "SUCCESS" in output, output


def test_promtool_refuses_a_rule_that_does_not_parse(tmp_path: Path) -> None:
    text = RULES.read_text()
    assert "> 0.05" in text
    (tmp_path / RULES.name).write_text(text.replace("> 0.05", "> > 0.05", 1))
    code, output = promtool("check", "rules", RULES.name, cwd=tmp_path)
    assert code != 0, output


def test_the_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    # The "does not fire" cases bite: a 5xx threshold of 1 % would fire on 1.6 %.
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    text = RULES.read_text()
    (tmp_path / RULES.name).write_text(text.replace(") > 0.05", ") > 0.01", 1))
    code, output = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert code != 0, output
    assert "TTSGatewayHigh5xxShare" in output, output


def test_the_alerts_asked_for_are_there_each_with_what_an_on_call_needs() -> None:
    rules = alerts()
    assert {rule["alert"] for rule in rules} == EXPECTED
    for rule in rules:
        name = rule["alert"]
        assert rule["for"], name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        # A section of the runbook per alert, headed by the alert's name.
        assert annotations["runbook_url"] == f"docs/operations.md#{name.lower()}", name


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: str(rule["alert"]))
def test_every_alert_reads_only_what_the_gateway_exports(rule: dict[str, Any]) -> None:
    assert unknown_metrics(rule["expr"]) == set()
    # The scrape job's name, as deploy/prometheus/prometheus.yml and the Service give it.
    assert 'job="tts-gateway"' in rule["expr"]


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == EXPECTED
    assert quiet == EXPECTED
