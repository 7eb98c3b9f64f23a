"""Errors the gateway answers before any audio, and the one place that turns them into HTTP.

::

    GatewayError                status  when
    ├── BadRequest              400     malformed body, missing or invalid field, empty text
    ├── Unauthorized            401     tokens configured and none matches
    ├── VoiceNotFound           404     unknown VoiceId with ``unknown_voice: reject``
    ├── PayloadTooLarge         413     body or text over the configured limits
    ├── UnsupportedMediaType    415     body neither JSON nor form
    ├── TooManyStreams          429     the gateway's own stream limit is full
    ├── ProvidersFailed         502     every voice in the chain failed
    ├── NotReady                503     starting or draining
    ├── ProvidersBusy           503     every voice of the chain at its concurrency limit or
    │                                   its circuit breaker open (with ``Retry-After``)
    └── ProvidersTimedOut       504     every voice in the chain timed out

Provider-side errors (``providers.base.ProviderError``) never reach the caller as such: the
relay turns a chain's failures into ``ProvidersFailed`` or ``ProvidersTimedOut``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.responses import Response


class GatewayError(Exception):
    """A request the gateway answers with an error status and a JSON body."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, dict[str, str]]:
        """``{"error": {"code", "message"[, "field"]}}``."""
        error = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}

    def to_response(self, request_id: str | None = None) -> Response:
        """The JSON error answer."""
        headers = dict(self.headers)
        if request_id:
            headers["X-Request-Id"] = request_id
        return Response(
            json.dumps(self.body()),
            status_code=self.status,
            media_type="application/json",
            headers=headers,
        )


class BadRequest(GatewayError):
    status, code = 400, "bad_request"


class Unauthorized(GatewayError):
    status, code = 401, "unauthorized"


class VoiceNotFound(GatewayError):
    status, code = 404, "unknown_voice"


class PayloadTooLarge(GatewayError):
    status, code = 413, "too_large"


class UnsupportedMediaType(GatewayError):
    status, code = 415, "unsupported_media_type"


class TooManyStreams(GatewayError):
    status, code = 429, "too_many_streams"


class ProvidersFailed(GatewayError):
    status, code = 502, "provider_failed"


class NotReady(GatewayError):
    status, code = 503, "not_ready"


class ProvidersBusy(GatewayError):
    status, code = 503, "provider_busy"


class ProvidersTimedOut(GatewayError):
    status, code = 504, "provider_timeout"
