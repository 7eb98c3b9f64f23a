"""The gateway's log: one format for its own lines and uvicorn's, the libraries that would write
a secret kept quiet, and every configured secret masked in every line, tracebacks included.

Secrets must not reach the log in the first place: providers send keys in headers, not URLs,
and mask what an upstream echoes back (:meth:`providers.base.Provider.redact`). What is done
here is the second line of defence: libraries that log what they send (httpx and httpcore the
URL of every request at INFO and DEBUG, websockets every handshake header at DEBUG, botocore
the signed request at DEBUG, google-auth the token exchange) are held at WARNING whatever the
gateway's level, and the formatter masks the secrets of every provider built in this process
(:func:`providers.base.live_secrets`) in each line it writes.

Two formats (``server.log_format``): ``text``, :data:`LOG_FORMAT`; and ``json``, one JSON object
per line (:class:`JsonFormatter`) for a log pipeline — the gateway's lines, uvicorn's, the
libraries', Python's warnings and an uncaught exception's traceback alike. A line may carry
fields of its own (``extra=``): the request line (:meth:`gateway.synthesis.Outcome.fields`) and
the start-up, reload and drain events (an ``event`` field) are written as fields in ``json``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, TextIO

from providers.base import live_secrets

#: One format for the gateway's and uvicorn's log lines.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

#: Loggers of libraries that write what they send or receive, secrets included.
QUIET_LOGGERS = ("httpx", "httpcore", "websockets", "botocore", "google", "urllib3", "hpack")

#: uvicorn's loggers, which it sets to its own level at start: they follow the gateway's level.
SERVER_LOGGERS = ("uvicorn.error", "uvicorn.asgi")

#: The formats of ``server.log_format``.
LOG_FORMATS: Final = ("text", "json")

MASK = "***"


def redact(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with every live provider's secrets (or ``secrets``, longest first) masked."""
    for secret in live_secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output (message, traceback, stack) has the secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


#: Attributes every log record has: any other one came from ``extra=`` and is a field of its own.
_RECORD_ATTRIBUTES: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
#: Extras that are not for the log: uvicorn's copy of a message with terminal colours.
_SKIPPED_EXTRAS: Final = frozenset({"color_message"})
#: How deep a field's lists and mappings are written (a deeper or self-containing one is cut).
_MAX_FIELD_DEPTH: Final = 6


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``ts`` (RFC 3339, UTC, milliseconds),
    ``level``, ``logger``, ``msg``; then the record's ``extra=`` fields at the top level, as
    they are (numbers as numbers, lists as lists); then, for an exception, ``error`` (its type
    and message) and ``traceback`` (as one string).

    Every string is masked (:func:`redact`) before it is serialized, so that a secret JSON
    escaping would alter (one with a quote, a backslash or a non-ASCII character) is masked
    as surely as in text. The line is ASCII (JSON's ``\\u`` escapes), so that no character in
    it can read as a line break to whatever splits the stream into lines, and it is written
    whatever a record holds: a value JSON has no type for is written as its text, a message
    whose arguments do not fit as its template."""

    def format(self, record: logging.LogRecord) -> str:
        secrets = live_secrets()
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": _message(record),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in _SKIPPED_EXTRAS:
                entry.setdefault(key, value)
        if record.exc_info and record.exc_info[1] is not None:
            entry.setdefault("error", _exception_summary(record.exc_info[1]))
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["traceback"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        fields = _plain(entry, secrets, 0)
        try:
            return json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
        except (TypeError, ValueError):  # not reached with _plain's values; never a lost line
            return json.dumps({k: fields[k] for k in ("ts", "level", "logger", "msg")})


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a call whose arguments do not fit its template: the line, not a dump
        return f"{record.msg} (log arguments that do not fit: {record.args!r})"


def _exception_summary(error: BaseException) -> str:
    try:
        text = str(error)
    except Exception:
        text = "<unprintable>"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _plain(value: Any, secrets: list[str], depth: int) -> Any:
    """``value`` as JSON can hold it, every string masked."""
    if isinstance(value, str):
        return redact(value, secrets)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):  # JSON (and Python's int-to-text limit) has room for 64 bits
        return value if value.bit_length() <= 64 else f"<integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if depth < _MAX_FIELD_DEPTH:
        if isinstance(value, Mapping):
            return {
                redact(str(k), secrets): _plain(v, secrets, depth + 1) for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [_plain(v, secrets, depth + 1) for v in value]
    try:
        text = str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return redact(text, secrets)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to ``sys.stderr`` as it is when the line is written, not as it was when the
    handler was made (a daemon, a test or a pipe may swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` (a routing file's ``log_level``: ``debug``, ``info``,
    ``warning``, ``error``, ``critical``) in ``fmt`` (its ``log_format``: ``text``,
    :data:`LOG_FORMAT`; ``json``, :class:`JsonFormatter`), secrets masked, uvicorn's
    :data:`SERVER_LOGGERS` at ``level`` too, and the :data:`QUIET_LOGGERS` at WARNING or
    above. In ``json`` Python's warnings and an uncaught exception are logged too, so that
    nothing else reaches stderr. Calling it again changes the level and the format; the
    gateway's handler is installed once."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}")
    root = logging.getLogger()
    handler = _gateway_handler()
    if handler is None:
        handler = _StderrHandler()
        root.addHandler(handler)
    structured = fmt == "json"
    handler.setFormatter(JsonFormatter() if structured else RedactingFormatter(LOG_FORMAT))
    root.setLevel(numeric)
    for name in SERVER_LOGGERS:
        logging.getLogger(name).setLevel(numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    _route_strays(structured)


def reconfigure_logging(level: str, fmt: str) -> bool:
    """:func:`configure_logging` again, if this process logs through the gateway's handler
    (``serve`` and its workers do): a reload's ``log_level`` and ``log_format`` take effect at
    once. A process that only embeds the app keeps the logging it set up. Whether it did."""
    if _gateway_handler() is None:
        return False
    configure_logging(level, fmt)
    return True


def writes_json() -> bool:
    """Whether the gateway's log is JSON: a line's fields then speak for themselves, and its
    message need not repeat them."""
    handler = _gateway_handler()
    return handler is not None and isinstance(handler.formatter, JsonFormatter)


def _gateway_handler() -> _StderrHandler | None:
    return next((h for h in logging.getLogger().handlers if isinstance(h, _StderrHandler)), None)


#: The exception hook that was in place before :func:`_route_strays` put the gateway's in.
_previous_excepthook: Any = None


def _route_strays(structured: bool) -> None:
    """In JSON, what Python writes to stderr by itself goes through the log instead: warnings
    (``logging.captureWarnings``) and the traceback of an uncaught exception. Put back as it
    was for text."""
    global _previous_excepthook
    if structured and sys.excepthook is not _log_uncaught:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _log_uncaught
        logging.captureWarnings(True)
    elif not structured and sys.excepthook is _log_uncaught:
        sys.excepthook = _previous_excepthook or sys.__excepthook__
        _previous_excepthook = None
        logging.captureWarnings(False)


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    logging.getLogger("gateway").critical(
        "uncaught exception, exiting", exc_info=(kind, error, traceback)
    )
