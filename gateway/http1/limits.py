"""The settings, bounds and small shared pieces of the connection layer: the limits a
connection is held to, where it reports, and the JSON error answers it writes itself."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, Protocol

from .tls import TLSFiles

log = logging.getLogger("gateway.http")

#: The connection-cap warning is logged at most this often.
_CAP_LOG_INTERVAL: Final = 10.0


class ConnectionEvents(Protocol):
    """Where connection counts go (the gateway's metrics): found in the lifespan state under
    :data:`EVENTS_STATE_KEY`, so that the server layer needs no reference to the app."""

    def opened(self) -> None: ...

    def closed(self) -> None: ...

    def refused(self, reason: str) -> None:
        """A connection ended by the server layer itself: ``max_connections``,
        ``header_timeout``, ``body_timeout``, ``head_too_large``, ``malformed_request``."""


#: The lifespan-state key under which the app offers its :class:`ConnectionEvents`.
EVENTS_STATE_KEY: Final = "gateway.connection_events"
#: The scope key under which the connection layer leaves the status it answered a request with
#: itself (a body that timed out or was malformed), for the app's log line.
ANSWERED_SCOPE_KEY: Final = "gateway.answered"
#: Where a request's scope holds its :class:`~gateway.http1.exchange.Exchange`, for a front door
#: that writes a streamed body without an ASGI ``send`` per chunk (``Exchange.write_now``).
EXCHANGE_SCOPE_KEY: Final = "gateway.exchange"


class NoEvents:
    def opened(self) -> None:
        pass

    def closed(self) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Deadlines (seconds) and bounds for client connections: ``server.timeouts`` and
    ``server.max_connections`` of the routing file; ``tls`` to serve HTTPS (the handshake is
    held to the ``header`` deadline). ``max_request_bytes`` bounds a request as sent (head,
    body with its chunk framing, trailers); the app bounds the body itself more tightly."""

    header: float = 5.0
    body: float = 10.0
    keep_alive: float = 5.0
    max_connections: int = 4096
    max_head_bytes: int = 32 * 1024
    max_request_bytes: int = 32 * 1024 + 4 * 65536 + 65536
    tls: TLSFiles | None = None


_REASONS: Final = {int(status): status.phrase.encode() for status in HTTPStatus}


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"")


def error_response(status: int, code: str, message: str, *extra: bytes) -> bytes:
    """A complete JSON error answer that closes the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status)),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
        *extra,
        b"\r\n",
    ]
    return b"".join(head) + body


class CapLog:
    """Counts connections refused at the cap; logs a warning at most every few seconds."""

    refused = 0
    _last = -_CAP_LOG_INTERVAL
    _since = 0

    @classmethod
    def refuse(cls, open_connections: int, cap: int) -> None:
        cls.refused += 1
        cls._since += 1
        now = time.monotonic()
        if now - cls._last >= _CAP_LOG_INTERVAL:
            log.warning(
                "connection limit reached: %d open, server.max_connections is %d; "
                "%d new connection(s) answered 503 since the last warning",
                open_connections - 1,
                cap,
                cls._since,
            )
            cls._last = now
            cls._since = 0
