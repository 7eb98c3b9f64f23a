"""The ASGI app: the front doors and the ops routes over one running gateway, its lifespan
(providers started and stopped, signals hooked up), and the factory for worker processes.

The data path of a request, module by module::

    http1 (connection) ─► front.custom_tts or front.openai_api (read, check)
        ─► synthesis (route, admit, budgets) ─► relay (voice chain, retries, first audio)
        ─► provider ─► audio (converter) ─► the door's wire format (encode, for OpenAI's)
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import heap
from .config import ConfigError, GatewayConfig, default_config, load_config
from .front.custom_tts import CustomTTSDoor
from .front.openai_api import SPEECH_PATH, OpenAISpeechDoor, models_route
from .front.ops import http_error, ops_routes
from .front.playground import playground_routes
from .health import SAMPLE_SECONDS
from .http1 import EVENTS_STATE_KEY
from .logs import LOG_FORMAT as LOG_FORMAT  # re-exported: the format lives with logging
from .logs import configure_logging
from .metrics import serve_metrics
from .runtime import Gateway, Reloader, log_config_warnings
from .signals import ProcessSignals
from .watch import POLL_SECONDS, FileWatch

log = logging.getLogger("gateway")

#: The process's signal handlers, shared by every app it serves.
_SIGNALS = ProcessSignals()


def create_app(
    config: GatewayConfig | None = None,
    config_path: str | None = None,
    *,
    workers: int = 1,
    supervised: bool = False,
    metrics_host: str | None = None,
    settle_heap: bool = False,
) -> Starlette:
    """The ASGI app for a routing file: ``config`` as given, else loaded from ``config_path``,
    else the built-in default. With a ``config_path``, SIGHUP reloads that file, and so does
    a change to it (``server.watch``) unless ``supervised``: then the supervisor watches it
    for every process. ``workers``: how many processes share the limits (see
    :func:`gateway.runtime.share_limits`). ``metrics_host``: the address of
    ``server.metrics.port`` (default ``server.host``; ``serve --host`` names it).
    ``settle_heap``: this process serves, and sets its heap aside from the cycle collector once
    started (:func:`gateway.heap.settle`)."""
    if config is None:
        config = load_config(config_path) if config_path else default_config()
    gateway = Gateway(config, config_path, workers)
    watch = bool(config_path) and config.server.watch and not supervised

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        log_config_warnings(gateway.config)
        if not gateway.config.server.tokens:
            log.warning("no tokens configured: every caller is accepted")
        await gateway.start()
        if settle_heap:
            heap.settle()
        reloader = app.state.reloader = Reloader(gateway)
        hooked = _SIGNALS.add(gateway, reloader)
        if hooked:
            # A worker process is born with SIGHUP blocked (see gateway.supervisor): now that
            # it can reload, let a SIGHUP in, one sent during the start-up included.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        chores = [asyncio.create_task(_sample(gateway))] if gateway.metrics.multiprocess else []
        if watch and config_path:
            chores.append(asyncio.create_task(_watch(config_path, reloader)))
        endpoint = gateway.config.server.metrics
        scrape = None
        if endpoint.port is not None and not supervised:
            host = metrics_host or gateway.config.server.host
            scrape = serve_metrics(host, endpoint.port, gateway.metrics)
        try:
            # The connection layer counts connections into the gateway's metrics.
            yield {EVENTS_STATE_KEY: gateway.metrics}
        finally:
            if scrape is not None:
                scrape.shutdown()
                scrape.server_close()
            for chore in chores:
                chore.cancel()
            await asyncio.gather(*chores, return_exceptions=True)
            if hooked:
                _SIGNALS.remove(gateway)
            await reloader.aclose()
            await gateway.stop()

    path = gateway.config.server.path
    doors: dict[str, ASGIApp] = {}
    routes: list[BaseRoute] = []
    if gateway.config.server.openai_api and path != SPEECH_PATH:
        doors[SPEECH_PATH] = OpenAISpeechDoor(gateway)
        routes += [Route(SPEECH_PATH, doors[SPEECH_PATH], methods=["POST"]), models_route(gateway)]
    doors[path] = CustomTTSDoor(gateway)
    routes.insert(0, Route(path, doors[path], methods=["POST"]))
    app = GatewayApp(
        routes=[*routes, *ops_routes(gateway), *playground_routes(gateway)],
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
    app.doors = MappingProxyType(doors)
    # A path with a stray slash is a 404 like any other, not a redirect built from the
    # caller's own Host header.
    app.router.redirect_slashes = False
    app.state.gateway = gateway
    return app


async def _watch(path: str, reloader: Reloader) -> None:
    """Reload when the routing file changes on disk (``server.watch``, one process)."""
    watch = await asyncio.to_thread(FileWatch, path)
    while True:
        await asyncio.sleep(POLL_SECONDS)
        if await asyncio.to_thread(watch.poll):
            log.info("%s changed on disk: reloading", path)
            reloader.request()


async def _sample(gateway: Gateway) -> None:
    """Keep this process's share of the providers' live gauges current (multiprocess mode)."""
    while True:
        gateway.board.sample()
        await asyncio.sleep(SAMPLE_SECONDS)


class GatewayApp(Starlette):
    """Starlette, with the synthesis routes (the front doors, by path) taken before its
    middleware: a door handles its own errors, and every audio chunk would otherwise pass
    through two wrappers of ``send``."""

    doors: Mapping[str, ASGIApp] = MappingProxyType({})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            door = self.doors.get(scope["path"])
            if door is not None:
                await door(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory``: the routing file named by ``TTS_GATEWAY_CONFIG``, or
    the built-in default."""
    path = os.environ.get("TTS_GATEWAY_CONFIG") or None
    try:
        config = load_config(path) if path else default_config()
    except ConfigError as error:
        # A worker started after the file went bad (the parent checked it): say what is
        # wrong, as check-config would, instead of a traceback.
        print(f"invalid routing file:\n{error}", file=sys.stderr)
        raise SystemExit(1) from None
    if not logging.getLogger().handlers:  # a fresh worker process: log like the parent
        configure_logging(config.server.log_level, config.server.log_format)
    return create_app(config, path)
