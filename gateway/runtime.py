"""The running gateway: its current routing file and what that built, reloads on SIGHUP (one at
a time, off the event loop), readiness and the drain."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import math
import os
import time
from types import MappingProxyType

from providers.base import Provider, build_provider

from . import heap
from .admission import StreamLimit
from .budgets import DrainClock
from .cache import PhraseCache
from .cache.warm import WarmReport, warm_phrases
from .config import ConfigError, GatewayConfig, load_config
from .direct import RELAY_STEP
from .errors import VoiceNotFound
from .health import HealthBoard, ProviderHealth
from .logs import reconfigure_logging
from .metrics import Metrics
from .polyphase import INTEGER_KERNEL, KERNEL
from .relay import Relay
from .routing import ChainStep, Router
from .spend import SpendMeter
from .sticky import StickyCalls
from .synthesis import SynthesisCore

log = logging.getLogger("gateway")

#: The tenant of every request when the gateway has no tokens.
ANONYMOUS = "anonymous"


class LoadedRouting:
    """One loaded routing file and what it built: the router, the providers and the relay.
    A request uses one from start to end, so a reload never changes a request under way.

    The providers' health (admission, breakers, retry budgets) comes from the gateway's
    :class:`HealthBoard` once the routing takes over (:meth:`attach`), so that a reload keeps
    what is known of an unchanged provider; until then the routing has health of its own."""

    def __init__(
        self,
        config: GatewayConfig,
        metrics: Metrics,
        sticky: StickyCalls | None = None,
        cache: PhraseCache | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.router = Router(config)
        self.providers: dict[str, Provider] = {
            name: build_provider(pc) for name, pc in config.providers.items()
        }
        self.health: dict[str, ProviderHealth] = {
            name: ProviderHealth(provider, metrics) for name, provider in self.providers.items()
        }
        self.relay = Relay(
            self.providers, self.health, metrics, config.server.resampler, sticky, cache
        )
        server = config.server
        self._tokens = tuple(t.encode() for t in server.tokens)
        names = server.token_names or (None,) * len(server.tokens)
        self._tenants = tuple(name or f"token-{i + 1}" for i, name in enumerate(names))
        self.users = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def attach(self, board: HealthBoard) -> None:
        """Take the providers' health from ``board`` (on the event loop, as the routing takes
        over: the board is the gateway's, shared with the routing still serving)."""
        self.health.update(board.adopt(self.providers))

    async def start(self) -> None:
        """Start every provider (load local models, open pooled clients)."""
        try:
            await asyncio.gather(*(p.start() for p in self.providers.values()))
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self.providers.values()))

    async def retire(self, grace: float) -> None:
        """Close the providers once the requests still using them are done (or after
        ``grace`` seconds)."""
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        finally:  # also when shutdown cancels the wait
            await self.aclose()

    def in_use(self) -> _InUse:
        """Mark one request as using this routing (a ``with`` block)."""
        return _InUse(self)

    def _used(self) -> None:
        self.users += 1
        self._idle.clear()

    def _released(self) -> None:
        self.users -= 1
        if not self.users:
            self._idle.set()

    def token_ok(self, token: str | None) -> bool:
        """Constant-time match against every configured token (no early exit)."""
        return self.tenant(token) is not None

    def tenant(self, token: str | None) -> str | None:
        """The tenant ``token`` belongs to: its name in ``server.tokens`` (``token-N`` for the
        N-th unnamed one), ``anonymous`` when no tokens are configured, ``None`` when it
        matches none. Every token is compared, in constant time each (no early exit)."""
        if not self._tokens:
            return ANONYMOUS
        given = (token or "").encode("utf-8", "surrogatepass")
        found: str | None = None
        for accepted, name in zip(self._tokens, self._tenants, strict=True):
            if hmac.compare_digest(given, accepted) and found is None:
                found = name
        return found

    def chain_for(self, voice_id: str) -> list[ChainStep]:
        """The voice chain for a VoiceId, or ``VoiceNotFound``."""
        chain = self.router.resolve(voice_id)
        if not chain:
            raise VoiceNotFound(f"unknown VoiceId {voice_id!r}", field="VoiceId")
        return chain


class _InUse:
    """The block of :meth:`LoadedRouting.in_use` (a class rather than ``contextlib``'s
    generator: it is entered for every request)."""

    __slots__ = ("_routing",)

    def __init__(self, routing: LoadedRouting) -> None:
        self._routing = routing

    def __enter__(self) -> None:
        self._routing._used()

    def __exit__(self, *exc_info: object) -> None:
        self._routing._released()


def share_limits(config: GatewayConfig, workers: int) -> GatewayConfig:
    """``config`` as one of ``workers`` processes applies it: ``max_concurrent_streams`` and
    every provider's ``max_concurrency`` split between them (rounded up, at least 1), so that
    together they take what one process would. New connections go to a worker whose limits are
    less than half full while there is one (:class:`gateway.http1.accept.LoadBoard`); a process
    whose share is full answers as one full process would (429, or the next voice)."""
    if workers <= 1:
        return config

    def share(limit: int) -> int:
        return max(1, math.ceil(limit / workers))

    server = dataclasses.replace(
        config.server, max_concurrent_streams=share(config.server.max_concurrent_streams)
    )
    providers = {
        name: dataclasses.replace(provider, max_concurrency=share(provider.max_concurrency))
        for name, provider in config.providers.items()
    }
    return dataclasses.replace(config, server=server, providers=MappingProxyType(providers))


def log_config_warnings(config: GatewayConfig) -> None:
    """Log what the routing file's providers warned about (see ``GatewayConfig.warnings``)."""
    for warning in config.warnings:
        log.warning("%s", warning, extra={"event": "config_warning"})


class Reloader:
    """Runs :meth:`Gateway.reload` for SIGHUP, one reload at a time: a SIGHUP during a reload
    queues one more (any number of them, one), since the file may have changed again after
    the running reload read it. The task is kept, so that it is neither garbage-collected
    mid-reload nor left running after shutdown."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        """Ask for a reload (from the event loop's thread)."""
        if self.task is not None and not self.task.done():
            self._again = True
            return
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            await self.gateway.reload()  # never raises

    async def aclose(self) -> None:
        """Cancel a reload under way (shutdown)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Gateway:
    """The running gateway: the current :class:`LoadedRouting`, readiness, the drain, reloads,
    and the synthesis core its front doors call."""

    def __init__(
        self, config: GatewayConfig, config_path: str | None = None, workers: int = 1
    ) -> None:
        self.workers = workers
        config = share_limits(config, workers)
        self.metrics = Metrics()
        self.board = HealthBoard(self.metrics)
        self.sticky = StickyCalls()
        self.cache = PhraseCache(config.server.cache, self.metrics)
        self.routing = LoadedRouting(config, self.metrics, self.sticky, self.cache)
        self.routing.attach(self.board)
        self.config_path = config_path
        self.streams = StreamLimit(self.metrics.active)
        self.drain = DrainClock()
        self.core = SynthesisCore(self.streams, self.drain, SpendMeter(self.metrics))
        self.ready = False
        self.draining = False
        self._retiring: set[asyncio.Task[None]] = set()
        self.warming: asyncio.Task[WarmReport] | None = None

    @property
    def config(self) -> GatewayConfig:
        return self.routing.config

    def occupancy(self) -> float:
        """How full this process's fullest limit is (0 to 1): its streams against
        ``max_concurrent_streams``, each provider's requests in flight against its
        ``max_concurrency`` (this process's shares of them, with several workers)."""
        fullest = self.streams.active / max(1, self.config.server.max_concurrent_streams)
        for health in self.board:
            gate = health.gate
            fullest = max(fullest, gate.in_flight / max(1, gate.capacity))
        return fullest

    @property
    def providers(self) -> dict[str, Provider]:
        return self.routing.providers

    async def start(self) -> None:
        """Start the providers; then ready."""
        figures = self._figures()
        log.info("starting %d providers", len(self.providers), extra={"event": "start", **figures})
        starting = time.perf_counter()
        await self.routing.start()
        self.metrics.set_config(self.config.source, len(self.config.voices))
        self.ready = True
        log.info(
            "ready: %d providers, %d voices, config %s",
            len(self.providers),
            len(self.config.voices),
            self.config.source,
            extra={
                "event": "ready",
                **figures,
                "start_ms": round((time.perf_counter() - starting) * 1000, 1),
                "resampler_kernel": KERNEL,
                "resampler_integer_kernel": INTEGER_KERNEL,
                "relay_step": RELAY_STEP,
            },
        )
        if KERNEL == "numpy":
            log.warning(
                "the resampler's compiled kernel is not built (no C compiler when the gateway "
                "was installed): numpy resamples real-time streams, at more CPU a stream",
                extra={"event": "resampler_kernel", "resampler_kernel": KERNEL},
            )
        self._warm()

    def _warm(self) -> None:
        """Synthesize ``server.cache.warm`` into the cache, in the background (the gateway
        serves meanwhile; a phrase already cached costs a lookup)."""
        if not self.config.server.cache.warm:
            return
        if self.warming is not None:
            self.warming.cancel()
        self.warming = asyncio.get_running_loop().create_task(
            warm_phrases(self.routing, self.cache, self.config.server.cache.warm)
        )

    def _figures(self) -> dict[str, object]:
        """What the start-up and reload events tell of the running routing file."""
        config = self.config
        return {
            "config": config.source,
            "providers": len(config.providers),
            "voices": len(config.voices),
            "pid": os.getpid(),
        }

    def begin_drain(self) -> None:
        """Stop taking requests (503, ``/readyz`` too) and give the streams under way
        ``server.drain_seconds`` to finish; those still running then are ended (``drain``)."""
        if self.draining:
            return
        self.draining = True
        seconds = self.config.server.drain_seconds
        log.info(
            "draining: %d stream(s) under way have up to %g s to finish",
            self.streams.active,
            seconds,
            extra={"event": "drain", "streams": self.streams.active, "drain_seconds": seconds},
        )
        self.drain.start(seconds)

    async def stop(self) -> None:
        """Refuse new work and release every provider."""
        self.ready = False
        self.draining = True
        for task in list(self._retiring):
            task.cancel()
        if self.warming is not None:
            self.warming.cancel()
            await asyncio.gather(self.warming, return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.cache.aclose()
        await self.routing.aclose()
        self.metrics.flush()
        log.info("stopped: every provider released", extra={"event": "stop", "pid": os.getpid()})

    async def reload(self) -> bool:
        """Load the routing file again. A file with errors is refused (every error logged) and
        the running routing stays; a good one takes over for new requests, while requests under
        way finish on the old one. Returns whether the new file took over.

        Never raises (but for cancellation): whatever goes wrong refuses the reload and counts
        it as ``refused``. Reading, checking and building run in a worker thread, so that a
        large or hostile file never holds up the requests being served."""
        if not self.config_path:
            log.warning(
                "reload asked, but the gateway runs on the built-in default",
                extra=_refused("no routing file: the gateway runs on the built-in default"),
            )
            return False
        try:
            return await self._reload(self.config_path)
        except Exception as exc:  # a bug must cost one reload, not the reload task
            log.exception(
                "reload refused: unexpected error, keeping the running routing file",
                extra=_refused(f"unexpected error ({type(exc).__name__})"),
            )
            self.metrics.reloads.labels("refused").inc()
            return False

    async def _reload(self, path: str) -> bool:
        try:
            config = share_limits(await asyncio.to_thread(load_config, path), self.workers)
        except ConfigError as error:
            log.error(
                "reload refused, keeping the running routing file:\n%s",
                error,
                extra=_refused(*(str(problem) for problem in error.problems)),
            )
            self.metrics.reloads.labels("refused").inc()
            return False
        log_config_warnings(config)
        fixed = (
            "path",
            "host",
            "port",
            "ssl_certfile",
            "ssl_keyfile",
            "timeouts",
            "max_connections",
            "workers",
            "watch",
            "metrics",
            "openai_api",
        )
        changed = [k for k in fixed if getattr(config.server, k) != getattr(self.config.server, k)]
        if changed:
            names = ", ".join(f"server.{k}" for k in changed)
            log.warning(
                "reload: %s take effect only on restart",
                names,
                extra={"event": "reload_needs_restart", "keys": [f"server.{k}" for k in changed]},
            )
        try:
            # Building providers may read files (credentials, model configs): off the loop too.
            routing = await asyncio.to_thread(
                LoadedRouting, config, self.metrics, self.sticky, self.cache
            )
        except Exception as exc:
            log.error(
                "reload refused: the providers could not be built (%s: %s)",
                type(exc).__name__,
                exc,
                extra=_refused(f"the providers could not be built ({type(exc).__name__}: {exc})"),
            )
            self.metrics.reloads.labels("refused").inc()
            return False
        try:
            await routing.start()
        except Exception as exc:
            log.exception(
                "reload refused: a provider failed to start",
                extra=_refused(f"a provider failed to start ({type(exc).__name__}: {exc})"),
            )
            self.metrics.reloads.labels("refused").inc()
            return False
        routing.attach(self.board)
        old, self.routing = self.routing, routing
        self.cache.reconfigure(config.server.cache)
        grace = old.config.server.drain_seconds + max(
            (p.timeout.total for p in old.config.providers.values()), default=0.0
        )
        task = asyncio.create_task(old.retire(grace))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        # The old routing's objects, set aside at start in a serving process, back to the
        # cycle collector once retired (gateway.heap).
        task.add_done_callback(_thaw)
        self.metrics.reloads.labels("ok").inc()
        self.metrics.set_config(config.source, len(config.voices))
        server, before = config.server, old.config.server
        if (server.log_level, server.log_format) != (before.log_level, before.log_format):
            reconfigure_logging(server.log_level, server.log_format)
        log.info(
            "reloaded %s: %d voices",
            config.source,
            len(config.voices),
            extra={"event": "reload", **self._figures()},
        )
        self._warm()
        return True


def _thaw(_task: asyncio.Task[None]) -> None:
    heap.thaw()


def _refused(*errors: str) -> dict[str, object]:
    """The fields of a refused reload's log line: every reason it was refused."""
    return {"event": "reload_refused", "errors": list(errors)}
