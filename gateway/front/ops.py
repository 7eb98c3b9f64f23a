"""The routes beside the front doors: liveness, readiness, the voice table, each provider's
live state, metrics, and the JSON shape of Starlette's own 404/405."""

from __future__ import annotations

import asyncio
import os

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import GatewayError, NotReady, Unauthorized
from ..runtime import Gateway
from .body import bearer


def token_refused(gateway: Gateway, request: Request) -> Response | None:
    """The 401 for a caller without a configured token (``Authorization: Bearer``), or None
    when it may go on: the guard of ``/voices``, ``/providers``, a guarded ``/metrics`` and the
    playground's config."""
    if gateway.routing.token_ok(bearer(request.scope)):
        return None
    return Unauthorized(
        "send a configured token as 'Authorization: Bearer <token>'", field="Authorization"
    ).to_response()


def ops_routes(gateway: Gateway) -> list[Route]:
    """``/healthz``, ``/readyz``, ``/voices``, ``/providers``, ``/metrics``."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if gateway.ready and not gateway.draining:
            return JSONResponse({"status": "ready"})
        state = "draining" if gateway.draining else "starting"
        return NotReady(f"the gateway is {state}").to_response()

    async def voices(request: Request) -> Response:
        if (refusal := token_refused(gateway, request)) is not None:
            return refusal
        server = gateway.config.server
        return JSONResponse(
            {
                "default_voice": server.default_voice,
                "unknown_voice": server.unknown_voice,
                "voices": gateway.routing.router.table(),
            }
        )

    async def providers(request: Request) -> Response:
        if (refusal := token_refused(gateway, request)) is not None:
            return refusal
        # With several worker processes, each has its own view: say whose this is.
        return JSONResponse(
            {
                "pid": os.getpid(),
                "workers": gateway.workers,
                "providers": [health.snapshot() for health in gateway.board],
            }
        )

    async def metrics(request: Request) -> Response:
        endpoint = gateway.config.server.metrics
        if endpoint.port is not None:
            error = GatewayError(f"/metrics is served on port {endpoint.port}", code="not_found")
            error.status = 404
            return error.to_response()
        if endpoint.token and (refusal := token_refused(gateway, request)) is not None:
            return refusal
        gateway.metrics.flush()  # this process's increments of the turn, before the read
        body = (
            await asyncio.to_thread(gateway.metrics.render)
            if gateway.metrics.multiprocess
            else gateway.metrics.render()
        )
        return Response(body, media_type="text/plain; version=0.0.4")

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/voices", voices, methods=["GET"]),
        Route("/providers", providers, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 in the gateway's JSON error shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    error = GatewayError(f"{request.method} {request.url.path}: {exc.detail}", code=code)
    error.status = exc.status_code
    error.headers = dict(exc.headers or {})
    return error.to_response()
