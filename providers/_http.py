"""What every HTTP provider shares: the pooled client, and the one translation of httpx errors and
error statuses into the provider error tree (``providers.base``)."""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import re
import time
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
    ProviderTimeout,
    SynthesisJob,
    closest_rate,
)

log = logging.getLogger("gateway.providers")

#: How much of an error body is read to find its message.
_ERROR_BODY_LIMIT = 16 * 1024


def make_client(config: ProviderConfig, **kwargs: Any) -> httpx.AsyncClient:
    """One pooled client per provider instance, created at start and kept warm.

    The read timeout is the provider's ``first_byte`` timeout: it bounds the wait for the first
    byte and every later gap between chunks. The pool holds a connection per concurrent job."""
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
    kwargs.setdefault("transport", StreamingTransport(limits=limits))
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
            body = b""
            with contextlib.suppress(httpx.HTTPError):
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) >= _ERROR_BODY_LIMIT:
                        break
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
    """The response body, chunk by chunk as it arrives, with errors translated."""
    with translate_errors(provider):
        async for chunk in response.aiter_bytes():
            if chunk:
                yield chunk


def error_message(body: bytes, fallback: str = "") -> str:
    """The human part of a provider's error body (JSON shapes vary: ``{"error": {"message"}}``,
    ``{"error": "..."}``, ``{"message"}``, ``{"detail"}``), shortened for logs."""
    text = body.decode("utf-8", "replace").strip()
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
    message = str(found) if found not in (None, "") else text
    message = " ".join(message.split())
    return (message[:300] + "…") if len(message) > 300 else (message or fallback)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
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

    async def audio(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The native audio in a successful response (default: the body as it arrives)."""
        async for chunk in iter_body(response, self.name):
            yield chunk

    async def stream(self, job: SynthesisJob) -> AsyncGenerator[bytes, None]:
        pieces = (
            split_text(job.text, self.max_text, self.text_size) if self.max_text else [job.text]
        )
        for piece in pieces:
            request = self.build(job, piece)
            async with open_stream(
                self.client, self.name, request, self.error_retryable
            ) as response:
                async for chunk in self.audio(response):
                    yield chunk


# Latin punctuation ends a sentence or clause before whitespace; CJK punctuation needs none.
_SENTENCE = re.compile(r"(?<=[.!?])\s+|(?<=[\u3002\uff01\uff1f])\s*")
_CLAUSE = re.compile(r"(?<=[,;:])\s+|(?<=[\uff0c\uff1b\uff1a])\s*")
_WORD = re.compile(r"\s+")


def split_text(text: str, limit: int, size: Callable[[str], int] = len) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` (as ``size`` measures), at sentence
    boundaries where possible, then clauses, then words, then characters."""
    if size(text) <= limit:
        return [text]
    parts, glue = _parts(text)
    pieces: list[str] = []
    current = ""
    for part in parts:
        joined = f"{current}{glue}{part}" if current else part
        if size(joined) <= limit:
            current = joined
            continue
        if current:
            pieces.append(current)
        if size(part) <= limit:
            current = part
        else:  # one part alone is too long: cut it finer
            finer = split_text(part, limit, size)
            pieces.extend(finer[:-1])
            current = finer[-1]
    if current:
        pieces.append(current)
    return pieces


def _parts(text: str) -> tuple[list[str], str]:
    """The coarsest cut of ``text`` into more than one part, and what joins parts again."""
    for pattern in (_SENTENCE, _CLAUSE, _WORD):
        parts = [p for p in pattern.split(text) if p]
        if len(parts) > 1:
            return parts, " " if _WORD.search(text) else ""
    return list(text), ""


async def iter_sse(response: httpx.Response, provider: str) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events of a streaming response as (event name, data) pairs; the data lines
    of one event are joined with newlines. Comments and ids are skipped."""
    buffer = b""
    async for chunk in iter_body(response, provider):
        buffer += chunk
        while True:
            cut = _EVENT_END.search(buffer)
            if cut is None:
                break
            block, buffer = buffer[: cut.start()], buffer[cut.end() :]
            event = _sse_event(block)
            if event is not None:
                yield event
    if buffer.strip():
        event = _sse_event(buffer)
        if event is not None:
            yield event


_EVENT_END = re.compile(rb"\r?\n\r?\n")


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


def strip_riff(pcm: bytes) -> bytes:
    """The samples of a chunk that carries its own RIFF/WAVE header (walking to ``data``)."""
    if not pcm.startswith(b"RIFF") or pcm[8:12] != b"WAVE":
        return pcm
    offset = 12
    while offset + 8 <= len(pcm):
        chunk_id = pcm[offset : offset + 4]
        size = int.from_bytes(pcm[offset + 4 : offset + 8], "little")
        if chunk_id == b"data":
            return pcm[offset + 8 :]
        offset += 8 + size + (size & 1)
    return b""
