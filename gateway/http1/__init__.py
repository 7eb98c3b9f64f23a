"""The gateway's HTTP/1.1 connections: an ``asyncio.Protocol`` that speaks ASGI to the app.

uvicorn runs the process (sockets, workers, signals, lifespan) and is handed this protocol in
place of its own (``uvicorn.Config(http=protocol_factory(limits))``), because a server that
faces the public internet needs what uvicorn's HTTP layer does not give:

- **deadlines on every wait** — a connection's first request head (and, over TLS, the
  handshake before it) must arrive within ``header`` seconds of the connection opening, a later
  one within ``header`` of its first byte, the body within ``body`` seconds of the head; an idle
  keep-alive connection is closed after ``keep_alive`` seconds, and a caller that takes none of
  an answer for a while is cut off. A head or body that misses its deadline is answered ``408``
  where an answer is still possible;
- **a cap on open connections** — beyond ``max_connections`` a new connection is answered ``503``
  (over TLS, closed) at once, logged at most every few seconds; TLS is terminated here, through
  memory buffers, so that a handshake counts against the cap and the header deadline;
- **bounds on every buffer** — the request head (URL and headers, counted as sent too, so that
  a header line that never ends is caught) and the request as sent are capped, a request body
  is buffered only up to a high-water mark before reading pauses, pipelined requests are
  capped, and no further request is read while the caller has not taken the last answer;
- **an answer that ends the exchange** — a response that leaves the request body unread (413,
  408, an early error) closes the connection instead of reading on: the connection stops taking
  requests, says ``Connection: close``, half-closes, and discards what is still in flight for a
  moment so that the answer is not lost to a TCP reset;
- **HTTP/1.0 framing** — an HTTP/1.0 caller cannot parse chunked bodies; a streamed answer to it
  is delimited by closing the connection.

Requests are parsed by httptools (llhttp, in C). Requests on one connection are answered in
order; a pipelined request waits for the previous answer to finish. Trailers of a chunked body
are counted and dropped, never merged into the headers; an Upgrade is ignored (the request is
answered over HTTP/1.1, its body read, the connection closed after it).
"""

from .connection import WRITE_DRAIN_BYTES, HTTPProtocol, protocol_factory
from .exchange import Exchange
from .io import WriteFlow
from .limits import (
    ANSWERED_SCOPE_KEY,
    EVENTS_STATE_KEY,
    EXCHANGE_SCOPE_KEY,
    ConnectionEvents,
    ConnectionLimits,
)
from .tls import TLSFiles

__all__ = [
    "ANSWERED_SCOPE_KEY",
    "EVENTS_STATE_KEY",
    "EXCHANGE_SCOPE_KEY",
    "WRITE_DRAIN_BYTES",
    "ConnectionEvents",
    "ConnectionLimits",
    "Exchange",
    "HTTPProtocol",
    "TLSFiles",
    "WriteFlow",
    "protocol_factory",
]
