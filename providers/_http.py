"""What every HTTP provider shares: the pooled client, the one translation of httpx errors and
error statuses into the provider error tree (``providers.base``), the check that a success
answer is of a type the provider sends, and bounded, linear-time readers of JSON and
server-sent events."""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import math
import re
import time
import unicodedata
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any, ClassVar

import httpx

from ._pool import StreamingTransport
from .base import (
    AudioFormat,
    Provider,
    ProviderConfig,
    ProviderConnectionError,
    ProviderError,
    ProviderHTTPError,
    ProviderProtocolError,
    ProviderTimeout,
    SynthesisJob,
    closest_rate,
)
from .sentences import split_to_limit

log = logging.getLogger("gateway.providers")

#: How much of an error body is read to find its message.
_ERROR_BODY_LIMIT = 16 * 1024
#: The most one server-sent event or one JSON object of a stream may take. Streamed events
#: carry a fraction of a second of audio each (a few KiB); 2 MiB is ~40 s of 24 kHz PCM in
#: base64, so only a broken or hostile upstream gets near it, and memory per stream stays bounded.
MAX_EVENT_BYTES = 2 * 1024 * 1024
#: Media types of the raw-audio providers' success answers. A missing type is accepted too: a
#: vendor-sample upstream labels its PCM ``audio/mpeg``, others label nothing.
AUDIO_TYPES = ("audio/*", "application/octet-stream", "binary/octet-stream")


def make_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """The transport under every provider client (see ``providers._pool``)."""
    return StreamingTransport(limits=limits)


#: What :func:`make_client` builds its transport with. This is the one seam for tests: put a
#: factory of mock (or guarded) transports here and every provider client built after uses it.
transport_factory: Callable[[httpx.Limits], httpx.AsyncBaseTransport] = make_transport


def make_client(config: ProviderConfig, **kwargs: Any) -> httpx.AsyncClient:
    """One pooled client per provider instance, created at start and kept warm.

    The read timeout is the provider's ``first_byte`` timeout: it bounds the wait for the first
    byte and every later gap between chunks. The pool holds a connection per concurrent job.
    Answers are asked for uncompressed: audio does not shrink, and a compressed answer could
    expand a thousandfold in one read."""
    timeout = httpx.Timeout(
        connect=config.timeout.connect,
        read=config.timeout.first_byte,
        write=config.timeout.first_byte,
        pool=config.timeout.first_byte,
    )
    limits = httpx.Limits(
        max_connections=config.max_concurrency,
        max_keepalive_connections=config.max_concurrency,
        keepalive_expiry=120,
    )
    kwargs.setdefault("transport", transport_factory(limits))
    kwargs.setdefault("headers", {"Accept-Encoding": "identity"})
    return _CookielessClient(timeout=timeout, limits=limits, **kwargs)


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _CookielessClient(httpx.AsyncClient):
    """TTS APIs authenticate with keys, not cookies; httpx would otherwise run every response
    through ``http.cookiejar`` (measured: ~7 % of the gateway's CPU per request)."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("this client keeps no cookies")


_NO_COOKIES = _NoCookies()


@contextlib.contextmanager
def translate_errors(provider: str) -> Iterator[None]:
    """Turn httpx's exceptions into provider errors, around connecting and around reading."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ProviderTimeout(provider, f"timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise ProviderConnectionError(provider, f"{type(exc).__name__}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise ProviderError(provider, f"{type(exc).__name__}: {exc}") from exc


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    provider: str,
    request: httpx.Request,
    retryable: Callable[[httpx.Response], bool | None] | None = None,
) -> AsyncIterator[httpx.Response]:
    """Send ``request`` and hand over the streaming response once its status is a success.

    An error status raises :class:`ProviderHTTPError` with the provider's own message and any
    ``Retry-After``; ``retryable`` may overrule the status-based retry decision (an API that
    answers throttling with a 400). The response is always closed on exit, which is what
    releases the upstream connection when the caller hangs up."""
    with translate_errors(provider):
        response = await client.send(request, stream=True)
    try:
        if not response.is_success:
            body = await read_error_body(response)
            raise ProviderHTTPError(
                provider,
                response.status_code,
                error_message(body, response.reason_phrase),
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                retryable=retryable(response) if retryable else None,
            )
        yield response
    finally:
        await response.aclose()


async def iter_body(response: httpx.Response, provider: str) -> AsyncIterator[bytes]:
    """The response body, chunk by chunk as it arrives, with errors translated. Only ever
    called on an answer :func:`check_type` passed, so nothing is decompressed on the way."""
    with translate_errors(provider):
        async for chunk in response.aiter_bytes():
            if chunk:
                yield chunk


async def read_body(response: httpx.Response, provider: str, limit: int) -> bytes:
    """The whole body of an answer that is one document; over ``limit`` bytes is an error."""
    body = bytearray()
    async for chunk in iter_body(response, provider):
        body += chunk
        if len(body) > limit:
            raise ProviderProtocolError(provider, f"the answer is over {_size(limit)}")
    return bytes(body)


async def read_error_body(response: httpx.Response) -> bytes:
    """Up to 16 KiB of an answer that is an error: enough for its message, never more (and
    nothing of a compressed one, which could expand a thousandfold in one read)."""
    body = bytearray()
    if not _identity(response):
        return b""
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    return bytes(body[:_ERROR_BODY_LIMIT])


def media_type(response: httpx.Response) -> str:
    """The answer's declared media type, lower-case and without parameters ("" if none)."""
    declared = str(response.headers.get("content-type", ""))
    return declared.partition(";")[0].strip().lower()


async def check_type(response: httpx.Response, provider: str, accepted: tuple[str, ...]) -> None:
    """Refuse a success answer whose declared type is not one of ``accepted`` (``type/*``
    matches a family; no declared type passes): an HTML page from a proxy or a JSON error
    document at status 200 is an error, with its message in the log, never audio."""
    if not _identity(response):
        encoding = str(response.headers.get("content-encoding"))
        raise ProviderProtocolError(provider, f"a compressed answer ({_shown(encoding)})")
    declared = media_type(response)
    if not declared or any(
        declared == kind or (kind.endswith("/*") and declared.startswith(kind[:-1]))
        for kind in accepted
    ):
        return
    message = error_message(await read_error_body(response))
    raise ProviderProtocolError(
        provider, f"answered {_shown(declared)} where {accepted[0]} was due: {message}"
    )


def _identity(response: httpx.Response) -> bool:
    """Whether the answer is sent as is (no ``Content-Encoding``, or ``identity``)."""
    return str(response.headers.get("content-encoding", "")).strip().lower() in ("", "identity")


def _shown(value: str) -> str:
    """An upstream's short token (a media type, an encoding) safe to put in a log line."""
    return re.sub(r"[^\w.+/*-]", "?", value[:60])


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"


def error_message(body: bytes, fallback: str = "") -> str:
    """The human part of a provider's error body (JSON shapes vary: ``{"error": {"message"}}``,
    ``{"error": "..."}``, ``{"message"}``, ``{"detail"}``), on one line of printable characters,
    shortened for logs."""
    text = body[:_ERROR_BODY_LIMIT].decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    found: Any = None
    if isinstance(data, dict):
        for key in ("error", "message", "detail", "err_msg", "title"):
            if key in data:
                found = data[key]
                break
        if isinstance(found, dict):
            found = found.get("message") or found.get("code") or found
        elif isinstance(found, list):  # FastAPI-style validation errors (ElevenLabs 422)
            found = "; ".join(
                str(item.get("msg", item)) if isinstance(item, dict) else str(item)
                for item in found
            )
    message = short_text(found) if found not in (None, "") else short_text(text)
    return message or fallback


def short_text(value: object) -> str:
    """An upstream's message as one printable line of at most 300 characters: for the log,
    where terminal escapes, line breaks and megabytes of text have no business."""
    text = " ".join(str(value)[:_ERROR_BODY_LIMIT].split())
    text = "".join(c if unicodedata.category(c)[0] != "C" else "?" for c in text[:301])
    return (text[:300] + "…") if len(text) > 300 else text


def clip_bound(text: str, sample_rate: int) -> int:
    """The most bytes a one-document answer carrying the whole clip for ``text`` may take: the
    text spoken at 4 characters a second (a quarter of a normal speaker's pace; 30 s at
    least), as 16-bit mono at ``sample_rate`` in base64, with 64 KiB for the JSON around it.
    A typical sentence at 48 kHz gets ~4 MiB; nothing the caller could not have asked for."""
    seconds = max(30.0, len(text) / 4)
    return int(seconds * sample_rate * 2 * 4 / 3) + 64 * 1024


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "inf" and "nan" parse as floats too, and mean nothing here
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HTTPProvider(Provider):
    """Base of the providers that speak HTTP: one pooled client for the provider's life, and
    long texts cut at sentence boundaries into consecutive requests streamed as one answer.

    A subclass builds the request for one piece of text (:meth:`build`) and, if the body is not
    plain audio bytes, decodes it (:meth:`audio`)."""

    settings_keys: ClassVar[frozenset[str]] = frozenset({"api_key", "base_url"})
    required_settings: ClassVar[frozenset[str]] = frozenset({"api_key"})
    #: The media types a success answer may declare (see :func:`check_type`).
    answer_types: ClassVar[tuple[str, ...]] = AUDIO_TYPES
    #: The provider's limit on one request's text, in :meth:`text_size` units (None: no limit).
    max_text: ClassVar[int | None] = None
    default_base_url: ClassVar[str] = ""
    #: The rates the provider can send raw PCM at (empty: any rate the caller asks for).
    native_rates: ClassVar[tuple[int, ...]] = ()

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        settings = config.settings
        self.api_key = str(settings.get("api_key") or "")
        self.base_url = str(settings.get("base_url") or self.default_base_url).rstrip("/")
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if "api_key" in self.config.settings and not self.api_key:
            log.warning("provider %s has an empty api_key: its requests will be refused", self.name)
        if self._client is None:
            self._client = make_client(self.config)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = make_client(self.config)
        return self._client

    def native_format(self, job: SynthesisJob) -> AudioFormat:
        """Raw S16LE mono at the offered rate closest to the caller's."""
        rates = self.native_rates
        return AudioFormat(closest_rate(job.sample_rate, rates) if rates else job.sample_rate)

    def error_retryable(self, response: httpx.Response) -> bool | None:
        """Whether an error answer may succeed on retry; None: decide by the status code."""
        return None

    def text_size(self, text: str) -> int:
        """How the provider counts its text limit (characters unless said otherwise)."""
        return len(text)

    @abstractmethod
    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        """The HTTP request for one piece of the job's text."""

    async def audio(
        self, response: httpx.Response, job: SynthesisJob, text: str
    ) -> AsyncIterator[bytes]:
        """The native audio in a successful response to the request for ``text`` (one piece
        of ``job``); the default is the body as it arrives."""
        async for chunk in iter_body(response, self.name):
            yield chunk

    async def stream(self, job: SynthesisJob) -> AsyncGenerator[bytes, None]:
        pieces = (
            split_to_limit(job.text, self.max_text, self.text_size) if self.max_text else [job.text]
        )
        for piece in pieces:
            request = self.build(job, piece)
            async with open_stream(
                self.client, self.name, request, self.error_retryable
            ) as response:
                await check_type(response, self.name, self.answer_types)
                async for chunk in self.audio(response, job, piece):
                    yield chunk


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
