"""TLS on a client connection, terminated by the gateway's connection layer through memory
buffers (see :class:`TLSSession`), and the server-side context it uses."""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from typing import Final

#: Plaintext taken out of the TLS layer at a time.
_TLS_READ_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """A certificate chain and its key (PEM files) for serving HTTPS."""

    certfile: str
    keyfile: str


@functools.lru_cache(maxsize=4)
def tls_context(files: TLSFiles) -> ssl.SSLContext:
    """The server-side TLS context for ``files``: built once per process (workers included)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.certfile, files.keyfile)
    context.set_alpn_protocols(["http/1.1"])
    return context


class TLSSession:
    """TLS on one connection, through memory buffers: bytes from the socket go in, plaintext
    and the bytes to send back come out. Done here rather than by the server so that the
    handshake is a connection's first step under the gateway's own deadline and cap, and so
    that no byte can be taken for plain HTTP before it (a server-side TLS layer started after
    the connection is accepted can miss the first bytes)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.established = False
        self.closed_by_peer = False

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """(plaintext, bytes to send back) for ``data`` from the socket; ``ssl.SSLError`` on a
        failed handshake or a corrupt record."""
        self._incoming.write(data)
        if not self.established:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                return b"", self._outgoing.read()
            self.established = True
        plain: list[bytes] = []
        while True:
            try:
                piece = self._tls.read(_TLS_READ_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed_by_peer = True
                break
            if not piece:
                break
            plain.append(piece)
        return b"".join(plain), self._outgoing.read()

    def send(self, data: bytes) -> bytes:
        """``data`` as TLS records to write to the socket."""
        self._tls.write(data)
        return self._outgoing.read()
