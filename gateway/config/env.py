"""Environment references in the routing file's values: ``${NAME}``, ``${NAME:-default}``.

Keys (``api_key: ${OPENAI_API_KEY}``) stay out of the file this way. ``$$`` is a literal dollar;
anything else after a dollar sign is left alone, so that values like passwords with a lone ``$``
survive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from .messages import shown
from .report import INVALID, Report

# A reference is ${NAME} or ${NAME:-default}.
_ENV_BODY: Final = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.S)


def expand(text: str, path: str, env: Mapping[str, str], report: Report) -> Any:
    """``text`` with its references replaced from ``env``; :data:`INVALID` (and a problem at
    ``path``) when one names an unset variable without a default, or is malformed."""
    if "$" not in text:
        return text
    missing: list[str] = []
    malformed: list[str] = []

    def replace(whole: str, body: str | None) -> str:
        if whole == "$$":
            return "$"
        parsed = _ENV_BODY.fullmatch(body) if body is not None else None
        if parsed is None:
            malformed.append(whole)
            return whole
        name, default = parsed.group("name"), parsed.group("default")
        value = env.get(name)
        if default is not None:
            # As in the shell, ":-" also covers a variable that is set but empty.
            return value if value else default
        if value is None:
            missing.append(name)
            return whole
        return value

    expanded = substitute(text, replace)
    for name in missing:
        report.error(path, f"environment variable {shown(name)} is not set (and has no default)")
    for ref in malformed:
        report.error(path, f"malformed reference {shown(ref)}; use ${{NAME}} or ${{NAME:-default}}")
    return INVALID if missing or malformed else expanded


def substitute(text: str, replace: Callable[[str, str | None], str]) -> str:
    """``text`` with every ``$$``, ``${body}`` and unclosed ``${`` replaced by
    ``replace(whole, body)`` (``body`` is None for ``$$`` and an unclosed ``${``).

    One pass, linear in the text: a regex with ``[^}]*`` would scan the rest of the text
    again at every unclosed ``${``, quadratic on a value of many of them."""
    out: list[str] = []
    start = 0
    may_close = True  # False once no "}" is left after the last unclosed "${"
    while (dollar := text.find("$", start)) >= 0:
        out.append(text[start:dollar])
        follower = text[dollar + 1 : dollar + 2]
        if follower == "$":
            out.append(replace("$$", None))
            start = dollar + 2
        elif follower == "{":
            close = text.find("}", dollar + 2) if may_close else -1
            if close < 0:
                may_close = False
                out.append(replace("${", None))
                start = dollar + 2
            else:
                out.append(replace(text[dollar : close + 1], text[dollar + 2 : close]))
                start = close + 1
        else:
            out.append("$")
            start = dollar + 1
    out.append(text[start:])
    return "".join(out)
