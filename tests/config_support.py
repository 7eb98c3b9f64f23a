"""What the routing-file tests share: a minimal valid file and readers of the problems found."""

from __future__ import annotations

from collections.abc import Mapping
from textwrap import dedent

import pytest

from gateway.config import ConfigError, parse_config
from tests import support  # noqa: F401  (registers the plugin type ``fake`` the files use)


def yml(text: str) -> str:
    """Dedent so that the first line of the literal is line 1 of the file."""
    return dedent(text).lstrip("\n")


def problems(text: str, env: Mapping[str, str] | None = None) -> list[tuple[int | None, str, str]]:
    """(line, path, message) of every problem ``text`` has; fails if it loads."""
    with pytest.raises(ConfigError) as caught:
        parse_config(yml(text), "gateway.yaml", env or {})
    assert all(p.source == "gateway.yaml" for p in caught.value.problems)
    return [(p.line, p.path, p.message) for p in caught.value.problems]


def only_problem(text: str, env: Mapping[str, str] | None = None) -> tuple[int | None, str, str]:
    found = problems(text, env)
    assert len(found) == 1, found
    return found[0]


# A minimal valid file; the error tests each break one thing in a copy of it.
MINIMAL = """
server:
  default_voice: joe
providers:
  p:
    type: fake
    api_key: k
voices:
  joe:
    provider: p
"""
