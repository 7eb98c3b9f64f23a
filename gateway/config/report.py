"""What one check of a routing file found: its problems and warnings, each at its key path and
line, and the marker for a value that already produced a problem."""

from __future__ import annotations

import math
from typing import Any, Final

from .limits import MAX_PROBLEMS
from .model import ConfigError, ConfigProblem


class Invalid:
    """Stands in for a value that already produced a problem, so that later checks stay quiet
    about it instead of piling a second, confusing error on the same spot."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Final = Invalid()


def contains_invalid(value: Any) -> bool:
    """Whether ``value`` is, or holds anywhere inside, :data:`INVALID`."""
    if value is INVALID:
        return True
    if isinstance(value, dict):
        return any(contains_invalid(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_invalid(v) for v in value)
    return False


class Report:
    """The problems and warnings of one file, and the line of every key and value by its path
    (filled in as the file is read, so that a problem found later names its line)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[ConfigProblem] = []
        self.unlisted = 0  # problems beyond MAX_PROBLEMS, only counted
        self.warnings: list[ConfigProblem] = []
        self.key_lines: dict[str, int] = {}
        self.value_lines: dict[str, int] = {}

    @property
    def full(self) -> bool:
        """Whether no more problems are listed (the next ones are only counted)."""
        return len(self.problems) >= MAX_PROBLEMS

    def line_of(self, path: str, *, key: bool = False) -> int | None:
        """The line of a path's value, or of its key when ``key`` (or when it has no value)."""
        if key:
            return self.key_lines.get(path, self.value_lines.get(path))
        return self.value_lines.get(path, self.key_lines.get(path))

    def error(self, path: str, message: str, *, key: bool = False, line: int | None = None) -> None:
        """Record a problem at ``path`` (at its key's line when ``key``, or at ``line``)."""
        if self.full:
            self.unlisted += 1
            return
        if line is None:
            line = self.line_of(path, key=key)
        self.problems.append(ConfigProblem(self.source, path, message, line))

    def warn(self, path: str, message: str, line: int | None) -> None:
        """Record a warning: something that leaves the file valid."""
        self.warnings.append(ConfigProblem(self.source, path, message, line))

    def fail(self) -> ConfigError:
        """The error listing every problem so far, in line order."""
        problems = sorted(self.problems, key=lambda p: p.line if p.line is not None else math.inf)
        if self.unlisted:
            more = f"... and {self.unlisted} more problems (fix these first)"
            problems.append(ConfigProblem(self.source, "", more))
        return ConfigError(problems, tuple(self.warnings))
