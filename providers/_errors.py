"""What an upstream's failure says, in the provider error tree (``providers.base``) and in a
log line: httpx's exceptions translated in one place, the message found in an error body of any
of the usual JSON shapes, and ``Retry-After``. Nothing an upstream sends reaches a log line but
as one short line of printable text (:func:`short_text`)."""

from __future__ import annotations

import email.utils
import json
import math
import time
import unicodedata
from types import TracebackType
from typing import Any

import httpx

from .base import ProviderConnectionError, ProviderError, ProviderTimeout

#: How much of an error body is read to find its message.
ERROR_BODY_LIMIT = 16 * 1024


def translate_errors(provider: str) -> _Translated:
    """Turn httpx's exceptions into provider errors, around connecting and around reading
    (a ``with`` block)."""
    return _Translated(provider)


class _Translated:
    """The block of :func:`translate_errors` (a class rather than ``contextlib``'s generator:
    it is entered around every upstream request)."""

    __slots__ = ("provider",)

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        provider = self.provider
        if isinstance(exc, httpx.TimeoutException):
            raise ProviderTimeout(provider, f"timed out ({type(exc).__name__})") from exc
        if isinstance(exc, httpx.TransportError):
            raise ProviderConnectionError(provider, f"{type(exc).__name__}: {exc}") from exc
        if isinstance(exc, httpx.HTTPError):
            raise ProviderError(provider, f"{type(exc).__name__}: {exc}") from exc


def error_message(body: bytes, fallback: str = "") -> str:
    """The human part of a provider's error body (JSON shapes vary: ``{"error": {"message"}}``,
    ``{"error": "..."}``, ``{"message"}``, ``{"detail"}``), on one line of printable characters,
    shortened for logs."""
    text = body[:ERROR_BODY_LIMIT].decode("utf-8", "replace").strip()
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
    text = " ".join(str(value)[:ERROR_BODY_LIMIT].split())
    text = "".join(c if unicodedata.category(c)[0] != "C" else "?" for c in text[:301])
    return (text[:300] + "…") if len(text) > 300 else text


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
