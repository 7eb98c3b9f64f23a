"""The resilience keys of the routing file: what each reads as, their defaults, and a clear error
naming the key path (and line) for every bad value; ``check-config`` takes the contract's
example of them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.config import parse_config
from providers.base import BreakerPolicy
from tests.config_support import problems, yml
from tests.test_cli import cli

#: A valid file; ``{provider}`` adds lines to provider ``p``, ``{voice}`` to voice ``joe``.
TEMPLATE = """
server:
  default_voice: joe
providers:
  p:
    type: fake
    api_key: k
{provider}
voices:
  joe:
    provider: p
    fallback: [amy]
{voice}
  amy:
    provider: p
"""


def routing(provider: str = "", voice: str = "") -> str:
    return TEMPLATE.format(provider=provider, voice=voice)


def test_the_keys_read_as_given() -> None:
    config = parse_config(
        yml(
            routing(
                "    max_concurrency: 3\n    queue: 0.5\n"
                "    circuit_breaker: {failures: 2, cooldown: 0.5, max_cooldown: 4}\n"
                "    retry_budget: 0.5\n    timeout: {stall: 2}",
                "    hedge_after: 0.4\n    sticky_fallback: 300",
            )
        )
    )
    p, joe = config.providers["p"], config.voices["joe"]
    assert (p.max_concurrency, p.queue, p.retry_budget) == (3, 0.5, 0.5)
    assert p.circuit_breaker == BreakerPolicy(failures=2, cooldown=0.5, max_cooldown=4)
    assert p.timeout.stall == 2
    assert (joe.hedge_after, joe.sticky_fallback) == (0.4, 300)


def test_the_defaults() -> None:
    config = parse_config(yml(routing()))
    p, joe = config.providers["p"], config.voices["joe"]
    assert p.circuit_breaker == BreakerPolicy(failures=5, cooldown=10, max_cooldown=120)
    assert (p.queue, p.retry_budget, p.timeout.stall) == (0.25, 0.2, 5)
    assert p.max_concurrency == config.server.max_concurrent_streams
    assert (joe.hedge_after, joe.sticky_fallback) == (None, None)


@pytest.mark.parametrize("off", ["false", "off"])
def test_the_breaker_turned_off(off: str) -> None:
    config = parse_config(yml(routing(f"    circuit_breaker: {off}")))
    assert config.providers["p"].circuit_breaker is None


@pytest.mark.parametrize("on", ["true", "null", "on"])
def test_the_breaker_on_with_its_defaults(on: str) -> None:
    config = parse_config(yml(routing(f"    circuit_breaker: {on}")))
    assert config.providers["p"].circuit_breaker == BreakerPolicy()


def test_a_null_retry_budget_leaves_retries_unbounded_and_zero_keeps_the_floor() -> None:
    assert parse_config(yml(routing("    retry_budget: null"))).providers["p"].retry_budget is None
    assert parse_config(yml(routing("    retry_budget: 0"))).providers["p"].retry_budget == 0


@pytest.mark.parametrize(
    ("line", "path", "message"),
    [
        ("max_concurrency: 0", "providers.p.max_concurrency", "must be an integer >= 1, got 0"),
        ("max_concurrency: many", "providers.p.max_concurrency", "expected an integer >= 1"),
        ("max_concurrency: 2.5", "providers.p.max_concurrency", "expected an integer >= 1"),
        ("queue: -1", "providers.p.queue", "must be a number >= 0, got -1"),
        ("queue: soon", "providers.p.queue", "expected a number >= 0"),
        ("queue: 100000", "providers.p.queue", "must be at most 86400 seconds"),
        ("circuit_breaker: [5]", "providers.p.circuit_breaker", "expected a mapping"),
        ("circuit_breaker: 5", "providers.p.circuit_breaker", "expected a mapping"),
        (
            "circuit_breaker: {failures: 0}",
            "providers.p.circuit_breaker.failures",
            "must be an integer from 1",
        ),
        (
            "circuit_breaker: {failures: 2.5}",
            "providers.p.circuit_breaker.failures",
            "expected an integer",
        ),
        (
            "circuit_breaker: {cooldown: -1}",
            "providers.p.circuit_breaker.cooldown",
            "must be a number > 0, got -1",
        ),
        (
            "circuit_breaker: {cooldown: 0}",
            "providers.p.circuit_breaker.cooldown",
            "must be a number > 0, got 0",
        ),
        (
            "circuit_breaker: {cooldown: ten}",
            "providers.p.circuit_breaker.cooldown",
            "expected a number > 0",
        ),
        (
            "circuit_breaker: {max_cooldown: -3}",
            "providers.p.circuit_breaker.max_cooldown",
            "must be a number > 0",
        ),
        (
            "circuit_breaker: {cooldown: 30, max_cooldown: 10}",
            "providers.p.circuit_breaker.max_cooldown",
            "max_cooldown (10) must be at least cooldown (30)",
        ),
        (
            # Against the default maximum (120): the key given is the one named.
            "circuit_breaker: {cooldown: 300}",
            "providers.p.circuit_breaker.cooldown",
            "max_cooldown (120) must be at least cooldown (300)",
        ),
        (
            "circuit_breaker: {max_cooldown: 1e9}",
            "providers.p.circuit_breaker.max_cooldown",
            "must be at most 86400 seconds",
        ),
        (
            "circuit_breaker: {failure: 3}",
            "providers.p.circuit_breaker.failure",
            "unknown key 'failure' (did you mean 'failures'?)",
        ),
        (
            "circuit_breaker: {failures: 3, probe: 1}",
            "providers.p.circuit_breaker.probe",
            "unknown key 'probe'",
        ),
        ("retry_budget: 1.5", "providers.p.retry_budget", "must be a share from 0 to 1, got 1.5"),
        ("retry_budget: -0.1", "providers.p.retry_budget", "must be a number >= 0, got -0.1"),
        ("retry_budget: lots", "providers.p.retry_budget", "expected a number >= 0"),
        ("retry_budget: .nan", "providers.p.retry_budget", "expected a number >= 0"),
        ("retry_budget: true", "providers.p.retry_budget", "expected a number >= 0"),
        ("timeout: {stall: 0}", "providers.p.timeout.stall", "must be a number > 0, got 0"),
        ("timeout: {stall: -2}", "providers.p.timeout.stall", "must be a number > 0, got -2"),
    ],
)
def test_a_bad_provider_value_is_refused_naming_its_key(line: str, path: str, message: str) -> None:
    found = problems(routing(f"    {line}"))
    assert len(found) == 1, found
    assert found[0][0] == 7  # the line of the key
    assert found[0][1] == path
    assert message in found[0][2]


@pytest.mark.parametrize(
    ("line", "path", "message"),
    [
        ("hedge_after: -1", "voices.joe.hedge_after", "must be a number > 0, got -1"),
        ("hedge_after: 0", "voices.joe.hedge_after", "must be a number > 0, got 0"),
        ("hedge_after: soon", "voices.joe.hedge_after", "expected a number > 0"),
        ("hedge_after: 1e9", "voices.joe.hedge_after", "must be at most 86400 seconds"),
        ("sticky_fallback: -5", "voices.joe.sticky_fallback", "must be a number > 0, got -5"),
        ("sticky_fallback: [300]", "voices.joe.sticky_fallback", "expected a number > 0"),
    ],
)
def test_a_bad_voice_value_is_refused_naming_its_key(line: str, path: str, message: str) -> None:
    found = problems(routing(voice=f"    {line}"))
    assert len(found) == 1, found
    assert found[0][1] == path
    assert message in found[0][2]


def test_every_bad_key_is_listed_at_once() -> None:
    found = problems(
        routing(
            "    queue: -1\n    retry_budget: 2\n    circuit_breaker: {failures: 0, cooldown: -1}",
            "    hedge_after: 0",
        )
    )
    assert sorted(path for _, path, _ in found) == [
        "providers.p.circuit_breaker.cooldown",
        "providers.p.circuit_breaker.failures",
        "providers.p.queue",
        "providers.p.retry_budget",
        "voices.joe.hedge_after",
    ]


#: The resilience keys as the gateway contract shows them.
CONTRACT_EXAMPLE = """\
server:
  default_voice: joe
providers:
  local:
    type: piper
  openai:
    type: openai
    api_key: ${OPENAI_API_KEY:-sk-test}
    max_concurrency: 64            # upstream requests in flight at once on this provider
    queue: 0.25                    # seconds a request may wait for a free slot
    circuit_breaker: {failures: 5, cooldown: 10, max_cooldown: 120}
    retry_budget: 0.2              # retries at most this share of first attempts (10 s window)
voices:
  joe:
    provider: local
  alloy:
    provider: openai
    fallback: [joe]
    hedge_after: 0.4               # seconds with no audio before the next voice starts
    sticky_fallback: 300           # a call that failed over keeps its fallback this long
"""


def test_check_config_accepts_the_contracts_example(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONTRACT_EXAMPLE)
    result = subprocess.run(
        [*cli(), "check-config", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "alloy" in result.stdout and "joe" in result.stdout
    config = parse_config(CONTRACT_EXAMPLE, "gateway.yaml", {})
    openai = config.providers["openai"]
    assert (openai.max_concurrency, openai.queue, openai.retry_budget) == (64, 0.25, 0.2)
    assert openai.circuit_breaker == BreakerPolicy(5, 10, 120)
    assert (config.voices["alloy"].hedge_after, config.voices["alloy"].sticky_fallback) == (
        0.4,
        300,
    )


def test_check_config_names_the_file_line_and_key_of_a_bad_breaker(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        CONTRACT_EXAMPLE.replace(
            "{failures: 5, cooldown: 10, max_cooldown: 120}", "{failures: 5, cooldown: 600}"
        )
    )
    result = subprocess.run(
        [*cli(), "check-config", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "gateway.yaml:11" in result.stderr
    assert "providers.openai.circuit_breaker.cooldown" in result.stderr
