"""Structured logs (``server.log_format: json``): every line the process writes is one JSON
object, and no secret gets through, whatever JSON escaping does to it."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.logs import JsonFormatter, configure_logging
from providers.base import ProviderConfig, build_provider
from tests.support import logging_at_debug, provider_block, scripted_config

REPO = Path(__file__).resolve().parent.parent
#: RFC 3339, UTC, milliseconds.
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
#: A secret JSON escaping would alter (a quote, a backslash): its distinctive middle may appear
#: in no line, in no encoding.
SECRET_A = 'tok"LEAKA\\9f8e7d6c5b4a'


def json_lines(written: str) -> list[dict[str, Any]]:
    """Every line of ``written``, each parsed as one JSON object with the common fields."""
    assert written.endswith("\n"), written[-200:]
    entries = []
    for line in written.split("\n")[:-1]:
        assert line.isascii(), line
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert TS.fullmatch(entry["ts"]), line
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        assert isinstance(entry["logger"], str) and isinstance(entry["msg"], str), line
        entries.append(entry)
    return entries


@pytest.fixture
def json_log(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    with logging_at_debug(capsys, "json") as read:
        yield read


# ---------------------------------------------------------------- the formatter


def test_a_line_is_one_object_with_its_fields_typed_and_its_traceback_inside(
    json_log: Callable[[], str],
) -> None:
    log = logging.getLogger("gateway.test")
    log.info(
        "figures: %d",
        3,
        extra={"event": "x", "count": 3, "share": 0.5, "names": ["a", "b"], "none": None},
    )
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("it failed\nacross lines")
    log.warning("odd values", extra={"nan": float("nan"), "huge": 1 << 100, "obj": object()})
    first, failed, odd = json_lines(json_log())
    assert first["msg"] == "figures: 3" and first["logger"] == "gateway.test"
    assert first["level"] == "INFO"
    assert (first["event"], first["count"], first["share"]) == ("x", 3, 0.5)
    assert first["names"] == ["a", "b"] and first["none"] is None
    assert "color_message" not in first
    assert failed["level"] == "ERROR" and failed["msg"] == "it failed\nacross lines"
    assert failed["error"] == "RuntimeError: boom\nsecond line"
    assert failed["traceback"].startswith("Traceback (most recent call last):")
    assert failed["traceback"].endswith("RuntimeError: boom\nsecond line")
    assert (odd["nan"], odd["huge"]) == ("nan", "<integer of 101 bits>")
    assert odd["obj"].startswith("<object object at")
    unfit = logging.makeLogRecord({"msg": "%d arguments that do not fit", "args": ("x",)})
    assert json.loads(JsonFormatter().format(unfit))["msg"].startswith("%d arguments")


def test_secrets_are_masked_before_json_escapes_them(json_log: Callable[[], str]) -> None:
    provider = build_provider(
        ProviderConfig(
            name="up",
            type="custom",
            settings={"url": "https://tts.upstream.test/stream-audio", "token": SECRET_A},
        )
    )
    escaped = json.dumps(SECRET_A)[1:-1]  # as an upstream's JSON error body echoes it
    log = logging.getLogger("gateway.test")
    log.warning("raw %s, JSON-escaped %s, repr %r", SECRET_A, escaped, SECRET_A)
    log.warning("fields", extra={"echo": SECRET_A, "list": [escaped], "map": {"k": SECRET_A}})
    try:
        raise RuntimeError(f"upstream said {SECRET_A}")
    except RuntimeError:
        log.exception("failed")
    written = json_log()
    assert "LEAKA" not in written
    raw, fields, failed = json_lines(written)
    assert raw["msg"] == "raw ***, JSON-escaped ***, repr '***'"
    assert (fields["echo"], fields["list"], fields["map"]) == ("***", ["***"], {"k": "***"})
    assert failed["error"] == "RuntimeError: upstream said ***"
    assert failed["traceback"].endswith("RuntimeError: upstream said ***")
    assert provider.secrets  # alive until here: its secrets are the ones masked


# ---------------------------------------------------------------- the setting


def test_log_format_is_a_server_setting() -> None:
    providers = {"pa": provider_block()}
    voices = {"a": {"provider": "pa"}}
    assert parse_config(scripted_config(voices, providers)).server.log_format == "text"
    config = parse_config(scripted_config(voices, providers, log_format="JSON"))
    assert config.server.log_format == "json"
    with pytest.raises(ConfigError) as refused:
        parse_config(scripted_config(voices, providers, log_format="jsonl"))
    assert "server.log_format: must be one of 'text', 'json', got 'jsonl'" in str(refused.value)
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("info", "yaml")


# ---------------------------------------------------------------- the whole process


def test_warnings_and_an_uncaught_exception_are_json_lines() -> None:
    script = (
        "import warnings\n"
        "from gateway.logs import JsonFormatter, configure_logging\n"
        "configure_logging('info', 'json')\n"
        "warnings.warn('a library complains')\n"
        "raise RuntimeError('the end\\nof it')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    warned, crashed = json_lines(result.stderr)
    assert warned["logger"] == "py.warnings" and "a library complains" in warned["msg"]
    assert crashed["level"] == "CRITICAL" and crashed["error"] == "RuntimeError: the end\nof it"
    assert crashed["traceback"].startswith("Traceback")
