"""ExtendData, read tolerantly: whatever shape it comes in, salvaged, never a reason to fail.

The interface documents ``ExtendData`` as a string holding a JSON object, but the vendor's own
example is single-quoted and missing a quote. A JSON string (also encoded more than once) or an
object is taken as it is; anything else goes through a salvage that reads ``key: value`` pairs
out of whatever looks like a literal object.

This reads caller text on the event loop, so it costs time linear in its input: ``json`` in C, a
tokenizer of possessive alternatives that cannot backtrack, and a loop doing a constant amount
of work per token, with the number of tokens capped.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

# ExtendData is a field of the request: its log lines keep the request's logger name.
log = logging.getLogger("gateway.request")

#: How many times ExtendData may have been JSON-encoded (a JSON string holding a JSON string...).
_JSON_LAYERS = 3
#: Tokens (and escapes) the salvage reads at most: a real ExtendData has a few dozen.
_SALVAGE_TOKENS = 2048
#: Containers nested deeper than this are skipped by the salvage.
_SALVAGE_DEPTH = 16

_SENTENCE_ID = re.compile(r"-?[0-9]{1,18}")
_DECIMAL = re.compile(r"-?[0-9]{1,18}(?:\.[0-9]{1,18})?(?:[eE][-+]?[0-9]{1,3})?")

# One token of a JSON-like or Python-like literal, after any whitespace. Each alternative is
# told apart by its first character and is possessive, so the scan never backtracks and every
# character is read a bounded number of times: a quoted string runs to its closing quote or to
# the end of the text; a bare word runs to the next space, quote or punctuation, and takes a
# quote right after it with it when a colon follows (a key missing its opening quote, as in
# the vendor's example ``,UserData':'...'``). ``\Z`` ends the scan, also after trailing spaces.
_TOKEN = re.compile(
    r"""\s*+(?:
        (?P<open>[{\[(]) | (?P<close>[}\])]) | (?P<colon>:) | (?P<comma>,)
      | '(?P<sq>(?:[^'\\]++|\\.)*+)'?
      | "(?P<dq>(?:[^"\\]++|\\.)*+)"?
      | (?P<bare>[^\s{}\[\]():,'"]++)(?:['"](?=\s*+:))?
      | \Z
    )""",
    re.VERBOSE | re.DOTALL,
)

#: A backslash escape in a quoted string: a UTF-16 surrogate pair as JSON writes characters
#: beyond the BMP, ``\uXXXX``, ``\xXX``, or one character.
_ESCAPE = re.compile(
    r"\\(u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    r"|u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|.)",
    re.DOTALL,
)
_SIMPLE_ESCAPES = {
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "b": "\b",
    "f": "\f",
    "/": "/",
    "\\": "\\",
    "'": "'",
    '"': '"',
}


def parse_extend_data(value: Any) -> dict[str, Any]:
    """Read ExtendData however it came: a JSON string (also encoded twice), an object, a
    Python-style dict literal (single quotes, ``True``, ``None``), the vendor's broken example,
    empty or absent. Never raises; salvages what it can. The result holds JSON values only, and
    its strings encode as UTF-8 (it is passed on to upstreams)."""
    try:
        if isinstance(value, Mapping):
            parsed: dict[str, Any] = {str(k): v for k, v in value.items()}
            plain = False
        elif isinstance(value, str):
            parsed, plain = _read_extend_string(value)
        else:
            return {}
        if not plain:
            # Plain JSON whatever came in; a lone surrogate (``"\ud800"``) becomes "?".
            text = json.dumps(parsed, default=str, allow_nan=False, ensure_ascii=False)
            parsed = json.loads(text.encode("utf-8", "replace"))
    except Exception:  # hostile input of any kind: keep nothing rather than fail
        log.info("ExtendData could not be read; ignored")
        return {}
    sentence = parsed.get("SentenceId")
    if isinstance(sentence, str) and _SENTENCE_ID.fullmatch(sentence.strip()):
        parsed["SentenceId"] = int(sentence.strip())
    return parsed


def _read_extend_string(text: str) -> tuple[dict[str, Any], bool]:
    """ExtendData sent as text: what it holds, and whether that is plain JSON as read (see
    :func:`_plain_as_read`)."""
    for layer in range(_JSON_LAYERS):
        text = text.strip()
        if not text:
            return {}, True
        try:
            loaded = json.loads(text)
        except (ValueError, RecursionError):
            break
        if isinstance(loaded, dict):
            if layer == 0 and _plain_as_read(text):
                return loaded, True  # the usual case: a JSON object, read once
            return {str(k): v for k, v in loaded.items()}, False
        if not isinstance(loaded, str):
            break
        text = loaded  # JSON-encoded twice: read what it holds
    return _salvage(text), False


def _plain_as_read(text: str) -> bool:
    """Whether what ``json.loads`` read from ``text`` is plain JSON already: no ``\\u``
    escape (one may hide a lone surrogate), no ``NaN`` or ``Infinity`` (JSON has none), no
    character UTF-8 cannot encode (each a pass in C; a string that merely holds such a word
    is made plain the long way)."""
    if "\\u" in text or "NaN" in text or "Infinity" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Container:
    """A ``{`` or ``[`` the salvage is inside of: what it fills and, in an object, the key read
    so far and whether its colon has been seen."""

    __slots__ = ("colon", "items", "key")

    def __init__(self, items: dict[str, Any] | list[Any]) -> None:
        self.items = items
        self.key: str | None = None
        self.colon = False


def _salvage(text: str) -> dict[str, Any]:
    """Read ``key: value`` pairs out of anything that looks like a literal object.

    One pass over :data:`_TOKEN`'s tokens. Keys and values may be quoted either way or bare;
    ``true``/``True``/``null``/``None`` and numbers are read as such; nested objects and lists
    (``[...]`` or ``(...)``) are read into their key. What does not fit is skipped: a key without
    its colon, a stray colon or closer, a value without a key. A ``{`` where a key is expected
    adds its pairs to the object around it (so the outer braces are optional), an unterminated
    input keeps what was read, and reading stops after :data:`_SALVAGE_TOKENS` tokens.
    """
    result: dict[str, Any] = {}
    stack = [_Container(result)]
    skipping = 0  # how deep inside a group that is being skipped
    work = 0
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        work += 1
        if kind in ("sq", "dq"):
            work += match.group(kind).count("\\")
        if work > _SALVAGE_TOKENS:
            log.info("ExtendData is long and not JSON; read only its first part")
            break
        if skipping:
            skipping += 1 if kind == "open" else -1 if kind == "close" else 0
            continue
        top = stack[-1]
        items = top.items
        if kind == "open":
            child: dict[str, Any] | list[Any] | None = None
            if len(stack) < _SALVAGE_DEPTH:
                child = {} if match.group("open") == "{" else []
                if isinstance(items, list):
                    items.append(child)
                elif top.key is not None and top.colon:
                    items[top.key] = child
                elif top.key is None and isinstance(child, dict):
                    child = items  # braces where a key belongs: more pairs of this object
                else:
                    child = None
            top.key, top.colon = None, False
            if child is None:
                skipping = 1
            else:
                stack.append(_Container(child))
        elif kind == "close":
            if len(stack) > 1:
                stack.pop()
        elif kind == "colon":
            top.colon = top.key is not None
        elif kind == "comma":
            top.key, top.colon = None, False
        elif kind is not None:
            word = match.group(kind)
            quoted = kind != "bare"
            if quoted and "\\" in word:
                word = _ESCAPE.sub(_unescape, word)
            if isinstance(items, list):
                items.append(word if quoted else _bare_value(word))
            elif top.key is not None and top.colon:
                items[top.key] = word if quoted else _bare_value(word)
                top.key, top.colon = None, False
            else:  # a key (or, with no colon yet, the key before it was none)
                top.key, top.colon = word, False
    return result


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if len(code) == 1:
        return _SIMPLE_ESCAPES.get(code, match.group(0))
    if len(code) == 11:  # a surrogate pair, as JSON writes characters beyond the BMP
        high, low = int(code[1:5], 16), int(code[7:], 16)
        return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
    return chr(int(code[1:], 16))


def _bare_value(word: str) -> Any:
    if _SENTENCE_ID.fullmatch(word):
        return int(word)
    if _DECIMAL.fullmatch(word):
        number = float(word)
        return number if math.isfinite(number) else word
    lowered = word.lower() if len(word) <= 5 else ""
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    return word
