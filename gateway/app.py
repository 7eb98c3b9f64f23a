"""The HTTP surface: the synthesis route, health, readiness, the voice table and metrics.

The synthesis route is plain ASGI rather than a Starlette endpoint because it must own the whole
exchange: it watches for the caller hanging up from the moment the body is read (a disconnect
while waiting for the provider's first byte cancels the provider too), and it closes the
provider stream itself in ``finally`` — Starlette's ``StreamingResponse`` neither ``aclose()``\\ s
its iterator on disconnect nor runs background tasks when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HTTPRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from providers.base import Provider, ProviderError, build_provider

from .config import ConfigError, GatewayConfig, default_config, load_config
from .errors import (
    BadRequest,
    GatewayError,
    NotReady,
    PayloadTooLarge,
    TooManyStreams,
    Unauthorized,
    VoiceNotFound,
)
from .http1 import ANSWERED_SCOPE_KEY, EVENTS_STATE_KEY, WRITE_DRAIN_BYTES
from .logs import LOG_FORMAT as LOG_FORMAT  # re-exported: the format lives with logging
from .logs import configure_logging
from .metrics import Metrics
from .relay import AudioStream, Relay
from .request import TTSRequest, parse_body, request_token, validate
from .routing import Route, Router

log = logging.getLogger("gateway")


class Routing:
    """One loaded routing file and the providers it built. A request uses one ``Routing`` from
    start to end, so a reload never changes a request under way."""

    def __init__(self, config: GatewayConfig, metrics: Metrics) -> None:
        self.config = config
        self.router = Router(config)
        self.providers: dict[str, Provider] = {
            name: build_provider(pc) for name, pc in config.providers.items()
        }
        self.relay = Relay(self.providers, metrics, config.server.resampler)
        self._tokens = tuple(t.encode() for t in config.server.tokens)
        self.users = 0
        self._idle = asyncio.Event()
        self._idle.set()

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

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Mark one request as using this routing."""
        self.users += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.users -= 1
            if not self.users:
                self._idle.set()

    def token_ok(self, token: str | None) -> bool:
        """Constant-time match against every configured token (no early exit)."""
        if not self._tokens:
            return True
        given = (token or "").encode("utf-8", "surrogatepass")
        matched = False
        for accepted in self._tokens:
            matched |= hmac.compare_digest(given, accepted)
        return matched

    def chain_for(self, voice_id: str) -> list[Route]:
        """The voice chain for a VoiceId, or ``VoiceNotFound``."""
        chain = self.router.resolve(voice_id)
        if not chain:
            raise VoiceNotFound(f"unknown VoiceId {voice_id!r}", field="VoiceId")
        return chain


def log_config_warnings(config: GatewayConfig) -> None:
    """Log what the routing file's providers warned about (see ``GatewayConfig.warnings``)."""
    for warning in config.warnings:
        log.warning("%s", warning)


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
    """The running gateway: the current :class:`Routing`, counters, readiness, reloads."""

    def __init__(self, config: GatewayConfig, config_path: str | None = None) -> None:
        self.metrics = Metrics()
        self.routing = Routing(config, self.metrics)
        self.config_path = config_path
        self.active_streams = 0
        self.ready = False
        self.draining = False
        self._retiring: set[asyncio.Task[None]] = set()
        # Deadlines of the requests under way, brought forward to the drain deadline on drain.
        self._deadlines: set[asyncio.Timeout] = set()
        self._drain_at: float | None = None

    @property
    def config(self) -> GatewayConfig:
        return self.routing.config

    @property
    def providers(self) -> dict[str, Provider]:
        return self.routing.providers

    async def start(self) -> None:
        """Start the providers; then ready."""
        await self.routing.start()
        self.metrics.set_config(self.config.source, len(self.config.voices))
        self.ready = True
        log.info(
            "ready: %d providers, %d voices, config %s",
            len(self.providers),
            len(self.config.voices),
            self.config.source,
        )

    def begin_drain(self) -> None:
        """Stop taking requests (503, ``/readyz`` too) and give the streams under way
        ``server.drain_seconds`` to finish; those still running then are ended (``drain``)."""
        if self.draining:
            return
        self.draining = True
        seconds = self.config.server.drain_seconds
        self._drain_at = asyncio.get_running_loop().time() + seconds
        log.info(
            "draining: %d stream(s) under way have up to %g s to finish",
            self.active_streams,
            seconds,
        )
        for deadline in self._deadlines:
            self._bring_forward(deadline)

    @property
    def drain_expired(self) -> bool:
        """Whether the drain deadline has passed."""
        return self._drain_at is not None and asyncio.get_running_loop().time() >= self._drain_at

    @contextlib.contextmanager
    def drain_deadline(self, deadline: asyncio.Timeout) -> Iterator[asyncio.Timeout]:
        """Bring ``deadline`` forward to the drain deadline if a drain starts (or has started)
        while it is in force."""
        self._deadlines.add(deadline)
        if self._drain_at is not None:
            self._bring_forward(deadline)
        try:
            yield deadline
        finally:
            self._deadlines.discard(deadline)

    def cut_by_drain(self, deadline: asyncio.Timeout) -> bool:
        """Whether ``deadline`` expired because it was brought forward by the drain."""
        return self._drain_at is not None and deadline.when() == self._drain_at

    def _bring_forward(self, deadline: asyncio.Timeout) -> None:
        assert self._drain_at is not None
        when = deadline.when()
        if when is None or when > self._drain_at:
            deadline.reschedule(self._drain_at)

    async def stop(self) -> None:
        """Refuse new work and release every provider."""
        self.ready = False
        self.draining = True
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.routing.aclose()

    async def reload(self) -> bool:
        """Load the routing file again. A file with errors is refused (every error logged) and
        the running routing stays; a good one takes over for new requests, while requests under
        way finish on the old one. Returns whether the new file took over.

        Never raises (but for cancellation): whatever goes wrong refuses the reload and counts
        it as ``refused``. Reading, checking and building run in a worker thread, so that a
        large or hostile file never holds up the requests being served."""
        if not self.config_path:
            log.warning("reload asked, but the gateway runs on the built-in default")
            return False
        try:
            return await self._reload(self.config_path)
        except Exception:  # a bug must cost one reload, not the reload task
            log.exception("reload refused: unexpected error, keeping the running routing file")
            self.metrics.reloads.labels("refused").inc()
            return False

    async def _reload(self, path: str) -> bool:
        try:
            config = await asyncio.to_thread(load_config, path)
        except ConfigError as error:
            log.error("reload refused, keeping the running routing file:\n%s", error)
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
        )
        changed = [k for k in fixed if getattr(config.server, k) != getattr(self.config.server, k)]
        if changed:
            names = ", ".join(f"server.{k}" for k in changed)
            log.warning("reload: %s take effect only on restart", names)
        try:
            # Building providers may read files (credentials, model configs): off the loop too.
            routing = await asyncio.to_thread(Routing, config, self.metrics)
        except Exception as exc:
            log.error(
                "reload refused: the providers could not be built (%s: %s)",
                type(exc).__name__,
                exc,
            )
            self.metrics.reloads.labels("refused").inc()
            return False
        try:
            await routing.start()
        except Exception:
            log.exception("reload refused: a provider failed to start")
            self.metrics.reloads.labels("refused").inc()
            return False
        old, self.routing = self.routing, routing
        grace = old.config.server.drain_seconds + max(
            (p.timeout.total for p in old.config.providers.values()), default=0.0
        )
        task = asyncio.create_task(old.retire(grace))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        self.metrics.reloads.labels("ok").inc()
        self.metrics.set_config(config.source, len(config.voices))
        log.info("reloaded %s: %d voices", config.source, len(config.voices))
        return True

    async def open(self, request: TTSRequest, request_id: str) -> AudioStream:
        """Route and relay one validated request (used by the CLI)."""
        routing = self.routing
        return await routing.relay.open(routing.chain_for(request.voice_id), request, request_id)


#: A caller's X-Request-Id is kept only if it is this tame (it goes into logs and upstream headers).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: How long the last bytes of an answer may take to go out to a caller that stopped reading
#: (kept under the server's drain backstop, so that a drain never has to cancel a request).
_LAST_SEND_SECONDS = 5.0
#: A send that waits longer than this waited for the caller, not for the event loop.
_SEND_WAIT_NOTICED = 0.002
#: How far behind real time a caller may fall, taking the audio, before its stream is ended.
_SLOW_CALLER_GRACE_SECONDS = 5.0


#: Longest value written into a request's log line (what a caller sends is cut to this).
_LOG_VALUE_CHARS = 256


def _log_value(value: Any) -> str:
    """A value for a ``key=value`` log line: at most ``_LOG_VALUE_CHARS`` characters (the rest
    is counted, not written), quoted when it could break the line's format."""
    text = str(value)
    if len(text) > _LOG_VALUE_CHARS:
        text = f"{text[:_LOG_VALUE_CHARS]}...(+{len(text) - _LOG_VALUE_CHARS} chars)"
    if text and text.isprintable() and " " not in text and "=" not in text:
        return text
    return repr(text)


def _answering_voice(stream: AudioStream, request: TTSRequest) -> str:
    """The routing file's name for the voice that answered (the VoiceId itself when a pattern
    matched it)."""
    voice = stream.route.voice
    return request.voice_id if voice.is_pattern else voice.key


def _header_value(text: str) -> bytes:
    """``text`` as a header value that no caller can use to break the head: UTF-8, with every
    byte outside visible ASCII (and ``%``) percent-encoded."""
    return quote(text, safe="".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")).encode()


class _ClientGone(Exception):
    """The caller hung up before its request was read."""


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _bearer(scope: Scope) -> str | None:
    auth = _header(scope, b"authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


class SynthesisEndpoint:
    """``POST <server.path>``: the custom TTS interface."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gateway
        routing = gw.routing
        with routing.in_use():
            await self._serve(routing, scope, receive, send)

    async def _serve(self, routing: Routing, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gateway
        server = routing.config.server
        started = time.perf_counter()
        request_id = _header(scope, b"x-request-id") or ""
        if not _REQUEST_ID.fullmatch(request_id):
            request_id = uuid.uuid4().hex
        info: dict[str, Any] = {"request_id": request_id}
        counted = False
        try:
            if not gw.ready or gw.draining:
                raise NotReady("the gateway is starting or draining", headers={"Retry-After": "1"})
            body = await self._read_body(scope, receive, server.max_body_bytes)
            request = await self._parse(routing, scope, body)
            info.update(voice=request.voice_id, sample_rate=request.sample_rate)
            info.update(request.log_fields())
            chain = routing.chain_for(request.voice_id)
            if gw.active_streams >= server.max_concurrent_streams:
                raise TooManyStreams(
                    f"{server.max_concurrent_streams} streams are in progress",
                    headers={"Retry-After": "1"},
                )
            gw.active_streams += 1
            gw.metrics.active.inc()
            counted = True
            # The work runs beside a watcher of the connection: whichever ends first wins, so
            # a caller hanging up cancels the provider whether or not audio has started.
            work = asyncio.create_task(
                self._relay(routing, send, chain, request, request_id, started, info)
            )
            watcher = asyncio.create_task(_wait_for_disconnect(receive))
            try:
                await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                watcher.cancel()
                if not work.done():
                    work.cancel()
                    await asyncio.wait((work,))
                    if "end" not in info:  # not merely a hang-up after the last byte
                        info["end"] = "client_disconnect"
                        gw.metrics.streams_ended.labels("client_disconnect").inc()
                    if "status" not in info:
                        info["status"] = 499
                        gw.metrics.requests.labels("499").inc()
            if not work.cancelled():
                work.result()
        except _ClientGone:
            # The connection layer may have answered itself (a body late or malformed).
            status = int(scope.get(ANSWERED_SCOPE_KEY) or 499)
            info["status"] = status
            gw.metrics.requests.labels(str(status)).inc()
        except GatewayError as error:
            info.update(status=error.status, error=error.code)
            gw.metrics.requests.labels(str(error.status)).inc()
            await error.to_response(request_id)(scope, receive, send)
        finally:
            if counted:
                gw.active_streams -= 1
                gw.metrics.active.dec()
            info["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
            if log.isEnabledFor(logging.INFO):  # the line is built only if it is written
                log.info(" ".join(f"{k}={_log_value(v)}" for k, v in info.items()))

    async def _relay(
        self,
        routing: Routing,
        send: Send,
        chain: list[Route],
        request: TTSRequest,
        request_id: str,
        started: float,
        info: dict[str, Any],
    ) -> None:
        gw = self.gateway
        try:
            async with asyncio.timeout(None) as opening:
                with gw.drain_deadline(opening):
                    stream = await routing.relay.open(chain, request, request_id)
        except TimeoutError:
            if not opening.expired():
                raise
            # The drain deadline passed before any audio existed: nothing has gone out yet.
            raise NotReady("the gateway is shutting down", headers={"Retry-After": "1"}) from None
        try:
            info.update(provider=stream.provider.name, answered_by=stream.route.voice.key)
            content_type = routing.config.server.content_type
            await self._send_audio(send, stream, content_type, request, request_id, started, info)
        finally:
            await stream.aclose()

    async def _send_audio(
        self,
        send: Send,
        stream: AudioStream,
        content_type: str,
        request: TTSRequest,
        request_id: str,
        started: float,
        info: dict[str, Any],
    ) -> None:
        gw = self.gateway
        provider = stream.provider.name
        headers = [
            (b"content-type", content_type.encode()),
            (b"x-sample-rate", str(request.sample_rate).encode()),
            (b"x-channels", b"1"),
            (b"x-request-id", request_id.encode()),
            (b"x-voice", _header_value(_answering_voice(stream, request))),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        info["status"] = 200
        gw.metrics.requests.labels("200").inc()
        end = "complete"
        deadline = asyncio.get_running_loop().time() + stream.provider.config.timeout.total
        first = True
        # Seconds spent waiting for the caller to take what was sent, and the seconds of audio
        # it took meanwhile (a wait ends when it has taken WRITE_DRAIN_BYTES): a real-time
        # player takes audio at least as fast as it plays, so the two stay close; one far
        # behind would hold the provider's slot for as long as it dawdles.
        blocked = taken = 0.0
        bytes_per_second = 2 * request.sample_rate
        chunks = stream.chunks()
        try:
            async with asyncio.timeout_at(deadline) as budget:
                with gw.drain_deadline(budget):
                    async for pcm in chunks:
                        sending = time.perf_counter()
                        await send({"type": "http.response.body", "body": pcm, "more_body": True})
                        waited = time.perf_counter() - sending
                        if first:
                            first = False
                            ttfb = sending - started
                            gw.metrics.ttfb.labels(provider).observe(ttfb)
                            info["ttfb_ms"] = round(ttfb * 1000, 1)
                        elif waited > _SEND_WAIT_NOTICED:
                            blocked += waited
                            taken += WRITE_DRAIN_BYTES / bytes_per_second
                            if blocked > taken + _SLOW_CALLER_GRACE_SECONDS:
                                end = "caller_too_slow"
                                break
        except TimeoutError:
            end = "drain" if gw.cut_by_drain(budget) else "timeout"
        except Exception as error:
            # Audio has gone out: no retry, no fallback, no error bytes. End what we have.
            end = "provider_error"
            if isinstance(error, ProviderError):
                info["error"] = stream.provider.redact(error.reason)
                log.warning("request_id=%s stream ended early: %s", request_id, info["error"])
            else:
                info["error"] = type(error).__name__
                log.exception("request_id=%s provider %s failed mid-stream", request_id, provider)
        await chunks.aclose()
        # Release the provider (slot, upstream connection) before the last sends, which a
        # caller that stopped reading could hold up.
        tail = stream.flush() if end != "complete" else b""
        await stream.aclose()
        info["end"] = end
        info["audio_ms"] = round(stream.bytes_out / 2 / request.sample_rate * 1000)
        gw.metrics.streams_ended.labels(end).inc()
        gw.metrics.audio_seconds.labels(provider).inc(stream.bytes_out / 2 / request.sample_rate)
        try:
            async with asyncio.timeout(_LAST_SEND_SECONDS):
                if tail:
                    await send({"type": "http.response.body", "body": tail, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:  # the server drops the connection; the audio was all sent
            info["end"] = f"{end},caller_not_reading"

    @staticmethod
    async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
        length = _header(scope, b"content-length")
        if length and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"body of {length} bytes is over the limit of {limit}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _parse(self, routing: Routing, scope: Scope, body: bytes) -> TTSRequest:
        server = routing.config.server
        content_type = _header(scope, b"content-type")
        if content_type and content_type.lower().startswith("multipart/form-data"):
            data = await _parse_multipart(scope, body)
        else:
            data = parse_body(body, content_type)
        if not routing.token_ok(request_token(data, _bearer(scope))):
            raise Unauthorized("Token is missing or not accepted", field="Token")
        return validate(data, max_text_chars=server.max_text_chars)


async def _parse_multipart(scope: Scope, body: bytes) -> dict[str, Any]:
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


def create_app(config: GatewayConfig | None = None, config_path: str | None = None) -> Starlette:
    """The ASGI app for a routing file: ``config`` as given, else loaded from ``config_path``,
    else the built-in default. With a ``config_path``, SIGHUP reloads that file."""
    if config is None:
        config = load_config(config_path) if config_path else default_config()
    gateway = Gateway(config, config_path)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        log_config_warnings(gateway.config)
        if not gateway.config.server.tokens:
            log.warning("no tokens configured: every caller is accepted")
        await gateway.start()
        reloader = app.state.reloader = Reloader(gateway)
        hooked = _SIGNALS.add(gateway, reloader)
        try:
            # The server layer counts connections into the gateway's metrics (see protocol).
            yield {EVENTS_STATE_KEY: gateway.metrics}
        finally:
            if hooked:
                _SIGNALS.remove(gateway)
            await reloader.aclose()
            await gateway.stop()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if gateway.ready and not gateway.draining:
            return JSONResponse({"status": "ready"})
        state = "draining" if gateway.draining else "starting"
        return NotReady(f"the gateway is {state}").to_response()

    async def voices(request: Request) -> Response:
        if not gateway.routing.token_ok(_bearer(request.scope)):
            return Unauthorized(
                "send a configured token as 'Authorization: Bearer <token>'", field="Authorization"
            ).to_response()
        server = gateway.config.server
        return JSONResponse(
            {
                "default_voice": server.default_voice,
                "unknown_voice": server.unknown_voice,
                "voices": gateway.routing.router.table(),
            }
        )

    async def metrics(request: Request) -> Response:
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    synthesis = SynthesisEndpoint(gateway)
    routes = [
        HTTPRoute(gateway.config.server.path, synthesis, methods=["POST"]),
        HTTPRoute("/healthz", healthz, methods=["GET"]),
        HTTPRoute("/readyz", readyz, methods=["GET"]),
        HTTPRoute("/voices", voices, methods=["GET"]),
        HTTPRoute("/metrics", metrics, methods=["GET"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        error = GatewayError(f"{request.method} {request.url.path}: {exc.detail}", code=code)
        error.status = exc.status_code
        error.headers = dict(exc.headers or {})
        return error.to_response()

    app = GatewayApp(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    app.synthesis = (gateway.config.server.path, synthesis)
    # A path with a stray slash is a 404 like any other, not a redirect built from the
    # caller's own Host header.
    app.router.redirect_slashes = False
    app.state.gateway = gateway
    return app


class GatewayApp(Starlette):
    """Starlette, with the synthesis route taken before its middleware: that route handles
    its own errors, and every audio chunk would otherwise pass through two wrappers of
    ``send``."""

    synthesis: tuple[str, ASGIApp] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.synthesis is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == self.synthesis[0]
        ):
            await self.synthesis[1](scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class _ProcessSignals:
    """The signals a served gateway answers: SIGHUP reloads its routing file; SIGTERM and
    SIGINT start its drain clock (the server's own handler, which runs next, stops accepting
    and waits for the connections). One set of handlers serves every gateway of the process
    (tests serve several at once): installed with the first, removed with the last, and a
    handler is put back only if it is still ours."""

    def __init__(self) -> None:
        self._members: dict[Gateway, tuple[Reloader, asyncio.AbstractEventLoop]] = {}
        self._previous: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, gateway: Gateway, reloader: Reloader) -> bool:
        """Hook ``gateway`` up; False where signals cannot be handled (not the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        loop = asyncio.get_running_loop()
        if not self._members:
            self._loop = loop
            loop.add_signal_handler(signal.SIGHUP, self._reload)
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous = signal.getsignal(signum)
                if callable(previous):  # a server handles it: run before it
                    self._previous[signum] = previous
                    signal.signal(signum, self._drain)
        self._members[gateway] = (reloader, loop)
        return True

    def remove(self, gateway: Gateway) -> None:
        self._members.pop(gateway, None)
        if self._members:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_signal_handler(signal.SIGHUP)
        self._loop = None
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._drain:
                signal.signal(signum, previous)
        self._previous.clear()

    def _reload(self) -> None:
        for reloader, _ in list(self._members.values()):
            reloader.request()

    def _drain(self, number: int, frame: FrameType | None) -> None:
        for gateway, (_, loop) in list(self._members.items()):
            if not loop.is_closed():
                loop.call_soon_threadsafe(gateway.begin_drain)
        previous = self._previous.get(number)
        if callable(previous):
            previous(number, frame)


_SIGNALS = _ProcessSignals()


def app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory`` and worker processes: the routing file named by
    ``TTS_GATEWAY_CONFIG``, or the built-in default."""
    path = os.environ.get("TTS_GATEWAY_CONFIG") or None
    try:
        config = load_config(path) if path else default_config()
    except ConfigError as error:
        # A worker started after the file went bad (the parent checked it): say what is
        # wrong, as check-config would, instead of a traceback.
        print(f"invalid routing file:\n{error}", file=sys.stderr)
        raise SystemExit(1) from None
    if not logging.getLogger().handlers:  # a fresh worker process: log like the parent
        configure_logging(config.server.log_level)
    return create_app(config, path)
