"""Reading requests off a connection's bytes: httptools (llhttp) parses; this keeps every part of
a request within its bounds, as the parser hands it over and as sent (a header line that never
ends is held inside the parser, unseen by its callbacks), drops trailers, and reads the body of
a request whose Upgrade is ignored (the parser stops at its head)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

import httptools

from .limits import ConnectionLimits

if TYPE_CHECKING:
    from .exchange import Exchange


class ReadStop(Exception):
    """Reading must stop: ``reason`` is ``head_too_large``, ``request_too_large``,
    ``pipelined`` or ``malformed_request``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


class RequestHead(NamedTuple):
    """A request's head as parsed (a named tuple: one is made for every request, at a third of
    a frozen dataclass's cost)."""

    method: str
    http_version: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    expect_continue: bool


class ReaderOwner(Protocol):
    """What the reader tells its connection."""

    def request_begun(self) -> None:
        """The first byte of a request has arrived."""

    def request_head(self, head: RequestHead) -> Exchange:
        """A request's head is complete: its exchange (started or queued). May raise
        :class:`ReadStop` (``pipelined``) to refuse it."""

    def request_read(self, exchange: Exchange) -> None:
        """``exchange``'s body has all arrived."""


class RequestReader:
    """Feeds a connection's plaintext to the parser; raises :class:`ReadStop` when a request
    cannot be read on. ``reading`` is the exchange whose bytes are arriving."""

    def __init__(self, owner: ReaderOwner, limits: ConnectionLimits) -> None:
        self.owner = owner
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        self.reading: Exchange | None = None
        self.in_head = False
        self.stopped = False  # after an ignored Upgrade, a refusal, a parse error
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # URL and header fields, as the parser hands them over
        self._head_raw = 0  # bytes received while the head is incomplete
        self._request_raw = 0  # bytes received for the request being read
        self._upgrade_body: int | None = None  # body bytes still due past an ignored Upgrade

    @property
    def unread(self) -> bool:
        """Whether what the caller sent has not all been read (the connection must close)."""
        reading = self.reading
        return self.stopped or (reading is not None and reading.more_body)

    def release(self) -> None:
        """The connection is closed: let go of the parser and the connection (both refer back
        to this reader) and of the exchange being read, so that reference counting frees
        them. Nothing is fed after this."""
        del self.parser
        del self.owner
        self.reading = None

    def feed(self, data: bytes) -> None:
        if self.stopped:
            # Past an ignored Upgrade only the request's own body is read.
            if self._upgrade_body is not None:
                self._take_upgrade_body(data)
            return
        was_in_head = self.in_head
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # An Upgrade (h2c, websocket) is not offered: the request is answered over HTTP/1.1
            # (RFC 9110 lets a server ignore Upgrade); its body is what follows the head, and
            # nothing after that body is read.
            self.stopped = True
            if self._upgrade_body is not None:
                self._take_upgrade_body(data[upgrade.args[0] :])
            return
        except httptools.HttpParserError as error:
            self.stopped = True
            if isinstance(error.__context__, ReadStop):
                raise error.__context__ from None
            raise ReadStop("malformed_request", str(error)) from None
        if self.in_head:
            self._head_raw = self._head_raw + len(data) if was_in_head else len(data)
            if self._head_raw > self.limits.max_head_bytes:
                self.stopped = True
                raise ReadStop("head_too_large")
        reading = self.reading
        if reading is not None and reading.more_body and not self.in_head:
            self._request_raw += len(data)
            if self._request_raw > self.limits.max_request_bytes:
                self.stopped = True
                raise ReadStop("request_too_large")

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self.reading = None
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._head_raw = 0
        self._request_raw = 0
        self.in_head = True
        self.owner.request_begun()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_head_bytes:
            raise ReadStop("head_too_large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.limits.max_head_bytes:
            raise ReadStop("head_too_large")
        if self.in_head:
            self._headers.append((name.lower(), value))
        # Otherwise a trailer of a chunked body: counted, never merged into the headers the
        # app has already been given (RFC 9110 section 6.5.1).

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        version = parser.get_http_version()
        parsed = httptools.parse_url(self._url)
        headers = self._headers
        upgrade = parser.should_upgrade()
        head = RequestHead(
            method=parser.get_method().decode("ascii"),
            http_version=version,
            raw_path=parsed.path or b"/",
            query=parsed.query or b"",
            headers=headers,
            keep_alive=parser.should_keep_alive() and not upgrade,
            expect_continue=version == "1.1"
            and any(n == b"expect" and v.lower() == b"100-continue" for n, v in headers),
        )
        self.reading = self.owner.request_head(head)
        self._upgrade_body = self._content_length() if upgrade else None

    def on_body(self, body: bytes) -> None:
        if self.reading is not None:
            self.reading.body_arrived(body)

    def on_message_complete(self) -> None:
        exchange = self.reading
        if exchange is None or self._upgrade_body is not None:
            return
        exchange.body_complete()
        self.owner.request_read(exchange)

    # ------------------------------------------------------------------ an ignored Upgrade

    def _take_upgrade_body(self, data: bytes) -> None:
        exchange, due = self.reading, self._upgrade_body
        assert exchange is not None and due is not None
        if due < 0:  # chunked under an Upgrade: not worth supporting
            self._upgrade_body = None
            raise ReadStop("malformed_request", "a chunked body with Upgrade")
        take = data[:due]
        due -= len(take)
        self._upgrade_body = due
        if take:
            exchange.body_arrived(take)
        if due == 0:
            self._upgrade_body = None
            exchange.body_complete()
            self.owner.request_read(exchange)

    def _content_length(self) -> int:
        for name, value in self._headers:
            if name == b"content-length":
                return int(value) if value.strip().isdigit() else -1
            if name == b"transfer-encoding":
                return -1
        return 0
