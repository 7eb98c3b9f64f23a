"""What the tests of deploy/ share: where the files are, the command-line tools that check them
(a tool that is missing skips its test on a developer's machine and fails it in CI), the
metric names the gateway exports and those a PromQL expression reads."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from tests.support import provider_block, scripted_config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


def in_ci() -> bool:
    """Whether this run is CI's (``CI`` set, as CI sets it), where nothing may be skipped."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def tool(name: str, how_to_install: str) -> str:
    """The path of the command-line tool ``name``: this virtualenv's first, then ``PATH``'s.
    Missing, the calling test is skipped, or fails in CI."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed ({how_to_install})"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def run(args: Sequence[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run a checking tool; its exit code and output are the caller's to judge."""
    return subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document is not None]


def environment_references(value: Any) -> set[str]:
    """The ``${NAME}`` variables a loaded routing file's values read."""
    if isinstance(value, dict):
        return set().union(*(environment_references(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(environment_references(v) for v in value))
    if isinstance(value, str):
        return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", value))
    return set()


@functools.cache
def exported_metric_names() -> frozenset[str]:
    """Every series name a gateway's ``GET /metrics`` page offers: its families as exposed
    (counters as ``*_total``, histograms as ``*_bucket``, ``*_sum`` and ``*_count``)."""
    routing = scripted_config(voices={"joe": {"provider": "p"}}, providers={"p": provider_block()})
    with TestClient(create_app(parse_config(routing))) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    names: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        elif family.type == "gauge":
            names.add(family.name)
    return frozenset(names)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (ValueError if it does not parse, or selects a series
    by anything but its name)."""
    names: set[str] = set()
    nameless: list[str] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            else:
                nameless.append(str(node))

    promql_parser.walk(promql_parser.parse(expr), visit)
    if nameless:
        raise ValueError(f"selectors without a metric name: {nameless}")
    return names


def unknown_metrics(expr: str) -> set[str]:
    """The names ``expr`` reads that the gateway does not export (``up`` is Prometheus' own)."""
    return promql_metric_names(expr) - exported_metric_names() - {"up"}
