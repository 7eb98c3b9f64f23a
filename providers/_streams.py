"""Bounded, linear-time readers of a success answer's body: as it arrives, whole up to a limit,
as server-sent events, or as a stream of concatenated JSON objects; and the tolerant walk into
an upstream's JSON. Each byte is searched once, and every buffer has a bound, past which the
answer is a provider error rather than a growing buffer."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ._errors import translate_errors
from ._pool import BODY_EXTENSION
from .base import ProviderProtocolError

#: The most one server-sent event or one JSON object of a stream may take. Streamed events
#: carry a fraction of a second of audio each (a few KiB); 2 MiB is ~40 s of 24 kHz PCM in
#: base64, so only a broken or hostile upstream gets near it, and memory per stream stays bounded.
MAX_EVENT_BYTES = 2 * 1024 * 1024


async def iter_body(response: httpx.Response, provider: str) -> AsyncIterator[bytes]:
    """The response body, chunk by chunk as it arrives, with errors translated. Only ever
    called on an answer ``check_type`` (``providers._http``) passed, so nothing is
    decompressed on the way: the response's byte stream is read as it is, without the
    decoder and the chunker of ``aiter_bytes`` (two more layers for every chunk, doing
    nothing here)."""
    stream = response.stream
    body: AsyncIterator[bytes]
    if isinstance(stream, httpx.AsyncByteStream) and not response.is_stream_consumed:
        # The gateway's transport's own stream, where it is: not through the client's wrapper
        # of it (which only times the response, when it is closed).
        own = response.extensions.get(BODY_EXTENSION)
        body = (own if isinstance(own, httpx.AsyncByteStream) else stream).__aiter__()
    else:  # a body read already (a mock's content): httpx hands over what it kept
        body = response.aiter_bytes()
    try:
        with translate_errors(provider):
            async for chunk in body:
                if chunk:
                    yield chunk
    finally:
        # Closed early (the stream was tapped, or the caller hung up): the body's own iterator
        # is closed now, rather than left to the event loop's finalizer (a task each).
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()


def is_body(source: AsyncIterator[bytes]) -> bool:
    """Whether ``source`` is :func:`iter_body`'s: a response body as it is, nothing decoded."""
    return getattr(source, "ag_code", None) is _ITER_BODY_CODE


_ITER_BODY_CODE = iter_body.__code__


async def read_body(response: httpx.Response, provider: str, limit: int) -> bytes:
    """The whole body of an answer that is one document; over ``limit`` bytes is an error."""
    body = bytearray()
    async for chunk in iter_body(response, provider):
        body += chunk
        if len(body) > limit:
            raise ProviderProtocolError(provider, f"the answer is over {_size(limit)}")
    return bytes(body)


def clip_bound(text: str, sample_rate: int) -> int:
    """The most bytes a one-document answer carrying the whole clip for ``text`` may take: the
    text spoken at 4 characters a second (a quarter of a normal speaker's pace; 30 s at
    least), as 16-bit mono at ``sample_rate`` in base64, with 64 KiB for the JSON around it.
    A typical sentence at 48 kHz gets ~4 MiB; nothing the caller could not have asked for."""
    seconds = max(30.0, len(text) / 4)
    return int(seconds * sample_rate * 2 * 4 / 3) + 64 * 1024


async def iter_sse(response: httpx.Response, provider: str) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events of a streaming response as (event name, data) pairs; the data lines
    of one event are joined with newlines. Comments and ids are skipped.

    Each byte is searched once (a search resumes where the last one ended), and an event
    longer than :data:`MAX_EVENT_BYTES` is an error rather than a growing buffer."""
    buffer = bytearray()
    searched = 0  # bytes of the buffer known to hold no event end
    async for chunk in iter_body(response, provider):
        buffer += chunk
        start = 0
        while (cut := _EVENT_END.search(buffer, max(start, searched - 3))) is not None:
            event = _sse_event(bytes(buffer[start : cut.start()]))
            start = cut.end()
            if event is not None:
                yield event
        del buffer[:start]
        searched = len(buffer)
        if searched > MAX_EVENT_BYTES:
            raise ProviderProtocolError(provider, f"an event over {_size(MAX_EVENT_BYTES)}")
    if buffer.strip():
        event = _sse_event(bytes(buffer))
        if event is not None:
            yield event


_EVENT_END = re.compile(rb"\r?\n\r?\n")


def json_object(data: str | bytes, provider: str) -> dict[str, Any]:
    """One JSON object from an upstream; anything else (not JSON, ``5``, ``[]``) is an error."""
    try:
        value = json.loads(data)
    except ValueError:
        raise ProviderProtocolError(provider, "a frame that is not JSON", retryable=True) from None
    if not isinstance(value, dict):
        raise ProviderProtocolError(
            provider, f"a JSON {type(value).__name__} where an object was due"
        )
    return value


def member(value: dict[str, Any], *path: str) -> Any:
    """``value[path[0]][path[1]]…``, or None where a step is missing or not an object: the
    tolerant walk into an upstream's JSON, which may be shaped in any way."""
    found: Any = value
    for key in path:
        if not isinstance(found, dict):
            return None
        found = found.get(key)
    return found


class JSONObjectStream:
    """Cuts a byte stream of concatenated JSON objects (``{…}{…}`` or one per line) into the
    objects' bytes, in time linear in the stream: brackets are counted and strings skipped
    with one regular-expression search per token, so no object is ever parsed twice, and an
    unfinished object over :data:`MAX_EVENT_BYTES` is an error."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._buffer = bytearray()
        self._scan = 0  # where scanning resumes
        self._depth = 0
        self._in_string = False

    def feed(self, data: bytes) -> list[bytes]:
        """The objects completed by ``data``."""
        buffer = self._buffer
        buffer += data
        objects: list[bytes] = []
        start = 0  # where the current object begins
        pos = self._scan
        while pos < len(buffer):
            if self._in_string:
                found = _STRING_STOP.search(buffer, pos)
                if found is None:
                    pos = len(buffer)
                    break
                if found.group() == b"\\":
                    if found.end() >= len(buffer):  # the escaped character is yet to come
                        pos = found.start()
                        break
                    pos = found.end() + 1
                    continue
                self._in_string = False
                pos = found.end()
                continue
            if self._depth == 0:
                found = _OBJECT_START.match(buffer, pos)
                assert found is not None  # the pattern matches the empty string
                if not found.group(1):
                    if found.end() < len(buffer):
                        raise ProviderProtocolError(
                            self.provider, "a stream that is not JSON objects"
                        )
                    pos = start = len(buffer)  # whitespace between objects
                    break
                start = found.start(1)
                self._depth = 1
                pos = found.end()
                continue
            found = _STRUCTURE.search(buffer, pos)
            if found is None:
                pos = len(buffer)
                break
            token = found.group()
            pos = found.end()
            if token == b'"':
                self._in_string = True
            elif token in (b"{", b"["):
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    objects.append(bytes(buffer[start:pos]))
                    start = pos
        del buffer[:start]
        self._scan = pos - start
        if len(buffer) > MAX_EVENT_BYTES:
            raise ProviderProtocolError(self.provider, f"an object over {_size(MAX_EVENT_BYTES)}")
        return objects

    def finish(self) -> None:
        """The stream ended: an object cut off midway is an error."""
        if self._depth or self._in_string or self._buffer.strip():
            raise ProviderProtocolError(
                self.provider, "the stream ended inside an object", retryable=True
            )


_OBJECT_START = re.compile(rb"\s*({)?")
_STRUCTURE = re.compile(rb'[{}\[\]"]')
_STRING_STOP = re.compile(rb'["\\]')


def _sse_event(block: bytes) -> tuple[str, str] | None:
    name, data = "message", []
    for line in block.decode("utf-8", "replace").splitlines():
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    return (name, "\n".join(data)) if data else None


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"
