"""A request's headers and body as a front door reads them: bounded, and with the caller's
hang-up noticed."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.types import Message, Receive, Scope

from ..errors import BadRequest, PayloadTooLarge


class ClientGone(Exception):
    """The caller hung up before its request was read."""


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (the first, latin-1 as HTTP has it), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def bearer(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    auth = header(scope, b"authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (``PayloadTooLarge`` beyond, at once when the
    Content-Length says so); ``ClientGone`` if the caller hangs up first."""
    length = header(scope, b"content-length")
    if length and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"body of {length} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def multipart_fields(scope: Scope, body: bytes) -> dict[str, Any]:
    """The text fields of a ``multipart/form-data`` body (Starlette's parser, with its own
    limits on parts and fields)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form()
    except Exception as exc:  # python-multipart raises several unrelated types
        raise BadRequest(f"malformed multipart body: {exc}", code="malformed_body") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the caller has hung up (or its answer is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass
