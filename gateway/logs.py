"""The gateway's log: one format for its own lines and uvicorn's, the libraries that would write
a secret kept quiet, and every configured secret masked in every line, tracebacks included.

Secrets must not reach the log in the first place: providers send keys in headers, not URLs,
and mask what an upstream echoes back (:meth:`providers.base.Provider.redact`). What is done
here is the second line of defence: libraries that log what they send (httpx and httpcore the
URL of every request at INFO and DEBUG, websockets every handshake header at DEBUG, botocore
the signed request at DEBUG, google-auth the token exchange) are held at WARNING whatever the
gateway's level, and the formatter masks the secrets of every provider built in this process
(:func:`providers.base.live_secrets`) in each line it writes.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from providers.base import live_secrets

#: One format for the gateway's and uvicorn's log lines.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

#: Loggers of libraries that write what they send or receive, secrets included.
QUIET_LOGGERS = ("httpx", "httpcore", "websockets", "botocore", "google", "urllib3", "hpack")

MASK = "***"


def redact(text: str) -> str:
    """``text`` with every live provider's secrets masked."""
    for secret in live_secrets():
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output (message, traceback, stack) has the secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


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


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` (a routing file's ``log_level``: ``debug``, ``info``,
    ``warning``, ``error``, ``critical``) in :data:`LOG_FORMAT`, secrets masked, and hold the
    :data:`QUIET_LOGGERS` at WARNING or above. Calling it again changes the level; the
    gateway's handler is installed once."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        root.addHandler(handler)
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    root.setLevel(numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
