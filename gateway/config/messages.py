"""How a problem is worded: key paths, short descriptions of values, did-you-mean hints.

Problems go into log lines and terminals, so everything taken from the file is shortened and
its unprintable characters escaped; and what must never be in a name is defined here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from typing import Any, Final

from .limits import MAX_NAME, MAX_SUGGEST

# What must never be in a name: it would end up in a response header or a log line. C0 and C1
# controls, DEL, and the Unicode line and paragraph separators.
CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def control_message(text: str) -> str:
    """The problem with ``text``, which holds a control character: it names the character,
    never the value (it may be a secret)."""
    found = CONTROL.search(text)
    char = found.group() if found else ""
    return f"must not contain control characters or line breaks (found {char!r})"


def first_control(value: Any) -> str | None:
    """The first string in ``value`` (a string, or lists and mappings of them) that holds a
    control character."""
    if isinstance(value, str):
        return value if CONTROL.search(value) else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        found = first_control(item)
        if found is not None:
            return found
    return None


def child(path: str, key: str) -> str:
    """The key path of ``key`` in the mapping at ``path``."""
    # Keys that would make the path ambiguous are quoted; globs like en-US-* stay readable.
    # Control characters are escaped: paths go into log lines.
    if not key or any(c in key for c in ".[]\"' \t") or not key.isprintable():
        key = '"' + escape(key.replace('"', '\\"')) + '"'
        return f"{path}[{key}]" if path else f"[{key}]"
    return f"{path}.{key}" if path else key


def item(path: str, index: int) -> str:
    """The key path of item ``index`` of the list at ``path``."""
    return f"{path}[{index}]"


def escape(text: str) -> str:
    """``text`` with every unprintable character written as its Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown(text: str, limit: int = 40) -> str:
    """``repr(text)``, shortened: values from the file go into messages, which must stay short."""
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


def describe(value: Any) -> str:
    """What a value is, for "expected ..., got ..." (``an integer (3)``, ``a mapping``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({text!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def suggest(word: str, choices: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    if len(choices) > MAX_SUGGEST or len(word) > MAX_NAME:
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def quoted_list(items: Collection[str]) -> str:
    """``'a', 'b', 'c'``."""
    return ", ".join(repr(i) for i in items)


def some(names: Collection[str], limit: int = 10) -> str:
    """The first ``limit`` names, comma-separated, and how many there are in all if more."""
    listed = [escape(name) for _, name in zip(range(limit), names, strict=False)]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(listed) + more
