"""What every HTTP provider shares: the pooled client, and the one translation of httpx errors and
error statuses into the provider error tree (``providers.base``)."""

from __future__ import annotations

import contextlib
import email.utils
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from ._pool import StreamingTransport
from .base import (
    ProviderConfig,
    ProviderConnectionError,
    ProviderError,
    ProviderHTTPError,
    ProviderTimeout,
)

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
    client: httpx.AsyncClient, provider: str, request: httpx.Request
) -> AsyncIterator[httpx.Response]:
    """Send ``request`` and hand over the streaming response once its status is a success.

    An error status raises :class:`ProviderHTTPError` with the provider's own message and any
    ``Retry-After``. The response is always closed on exit, which is what releases the upstream
    connection when the caller hangs up."""
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
        for key in ("error", "message", "detail", "title"):
            if key in data:
                found = data[key]
                break
        if isinstance(found, dict):
            found = found.get("message") or found.get("code") or found
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
