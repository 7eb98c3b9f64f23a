"""Typed readers: a plain value from the file in, a checked value of one type out (or None and
a problem at its key path). Every section of the schema is read through these."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from .limits import MAX_NAME
from .messages import CONTROL, child, control_message, describe, item, quoted_list, shown, suggest
from .report import INVALID, Report

_Choice = TypeVar("_Choice", bound=str)


class Reader:
    """Reads the values of one file, reporting each mistake to ``report``.

    Every reader takes the value and its key path; None (``key:`` with nothing after it) means
    unset everywhere in the file and is returned as None without a problem, and so is
    :data:`INVALID`, which already has one."""

    def __init__(self, report: Report, raw: Mapping[str, str]) -> None:
        self.report = report
        self.raw = raw

    def check_keys(
        self,
        block: Mapping[str, Any],
        path: str,
        allowed: Collection[str],
        required: Collection[str] = (),
    ) -> None:
        """Report unknown keys (with a did-you-mean hint) and missing required ones."""
        for key in block:
            if key not in allowed:
                hint = suggest(key, allowed) or f" (allowed: {', '.join(sorted(allowed))})"
                self.report.error(child(path, key), f"unknown key {key!r}{hint}", key=True)
        for key in required:
            # "key:" with nothing after it is null, which everywhere in this file means unset.
            if block.get(key) is None:
                self.report.error(path, f"missing required key {key!r}", key=True)

    def mapping(self, value: Any, path: str) -> dict[str, Any] | None:
        """A mapping, or None (null counts as absent); wrong types are reported."""
        if value is None or value is INVALID:
            return None
        if not isinstance(value, dict):
            self.report.error(path, f"expected a mapping, got {describe(value)}")
            return None
        return value

    def entry(self, value: Any, path: str, needs: str) -> dict[str, Any] | None:
        """A provider block or a voice entry: a mapping, which ``needs`` a key (checked later)."""
        if not isinstance(value, dict):
            if value is not INVALID:
                message = f"expected a mapping with at least {needs!r}, got {describe(value)}"
                self.report.error(path, message)
            return None
        return value

    def section(self, root: Mapping[str, Any], name: str) -> dict[str, Any]:
        """``providers`` or ``voices``: a required, non-empty mapping."""
        value = root.get(name)
        if value is None or value is INVALID:
            return {}  # already reported, as missing or as invalid
        if not isinstance(value, dict) or not value:
            self.report.error(name, f"expected a non-empty mapping, got {describe(value)}")
            return {}
        return value

    def string(
        self, value: Any, path: str, *, non_empty: bool = False, limit: int | None = None
    ) -> str | None:
        """A string: every string read this way is a name, a path or a header value, so
        control characters (which would reach a response header or a log line) are refused."""
        if value is None or value is INVALID:
            return None
        if not isinstance(value, str):
            hint = "; quote it if meant" if isinstance(value, bool | int | float) else ""
            self.report.error(path, f"expected a string, got {describe(value)}{hint}")
            return None
        if non_empty and not value.strip():
            self.report.error(path, "must not be empty")
            return None
        if limit is not None and len(value) > limit:
            self.report.error(path, f"longer than {limit} characters")
            return None
        if CONTROL.search(value):
            self.report.error(path, control_message(value))
            return None
        return value

    def name(
        self, value: Any, path: str, *, non_empty: bool = True, limit: int | None = MAX_NAME
    ) -> str | None:
        """A name (voice, provider, token): a string, or any other scalar taken as written."""
        if value is not None and value is not INVALID and path in self.raw:
            value = self.raw[path]
        return self.string(value, path, non_empty=non_empty, limit=limit)

    def choice(self, value: Any, path: str, choices: tuple[_Choice, ...]) -> _Choice | None:
        """One of ``choices`` (a ``Literal`` type's values), in any capitalisation."""
        text = self.string(value, path)
        if text is None:
            return None
        lowered = text.lower()
        for choice in choices:
            if choice == lowered:
                return choice
        hint = suggest(lowered, choices)
        self.report.error(path, f"must be one of {quoted_list(choices)}, got {shown(text)}{hint}")
        return None

    def integer(
        self, value: Any, path: str, minimum: int, maximum: int | None = None
    ) -> int | None:
        """An integer from ``minimum`` to ``maximum``; a string of one counts (env expansion
        yields strings)."""
        if value is None or value is INVALID:
            return None
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            # Env expansion yields strings; "${PORT:-8080}" must still be a port.
            try:
                number = int(value.strip())
            except ValueError:
                number = None
        bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        if number is None:
            self.report.error(path, f"expected an integer {bounds}, got {describe(value)}")
            return None
        if number < minimum or (maximum is not None and number > maximum):
            self.report.error(path, f"must be an integer {bounds}, got {number}")
            return None
        return number

    def number(
        self, value: Any, path: str, minimum: float, *, strict: bool = False
    ) -> float | None:
        """A finite number ``>= minimum`` (``> minimum`` when ``strict``)."""
        if value is None or value is INVALID:
            return None
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        if number is None or not math.isfinite(number):
            self.report.error(path, f"expected a number {bound}, got {describe(value)}")
            return None
        if number < minimum or (strict and number == minimum):
            self.report.error(path, f"must be a number {bound}, got {number:g}")
            return None
        return number

    def strings(
        self, value: Any, path: str, *, allow_empty: bool = False, limit: int | None = MAX_NAME
    ) -> list[tuple[int, str]] | None:
        """A list of names (a single one counts as a list of one), with their indexes."""
        if value is None or value is INVALID:
            return None
        if isinstance(value, str) or path in self.raw:
            text = self.name(value, path, non_empty=not allow_empty, limit=limit)
            return [] if text is None else [(0, text)]
        if not isinstance(value, list):
            self.report.error(path, f"expected a list of strings, got {describe(value)}")
            return None
        result: list[tuple[int, str]] = []
        for i, entry in enumerate(value):
            text = self.name(entry, item(path, i), non_empty=not allow_empty, limit=limit)
            if text is not None:
                result.append((i, text))
        return result
