"""What every front door of the synthesis core does the same way, whatever its protocol.

A door is a plain ASGI app rather than a Starlette endpoint, because it must own the whole
exchange: it watches for the caller hanging up from the moment the body is read (a hang-up
while waiting for the provider's first byte cancels the provider too), and the stream is closed
in ``finally`` — Starlette's ``StreamingResponse`` neither ``aclose()``\\ s its iterator on
disconnect nor runs background tasks when cancelled.

::

    SynthesisDoor.__call__   the routing in use for the whole request
      refuse while starting or draining (503) ─► read the body (bounded)
      ─► parse(...)          the door's protocol: token, fields → its call
      ─► synthesize(...)     SynthesisCore.open, Synthesis.pump, the door's wire format
         beside a watcher of the connection: whichever ends first wins
      a GatewayError before any audio ─► error_response(...), in the door's error shape
      Outcome.finish() in every case: the metrics and the log line
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from random import getrandbits
from typing import ClassVar, Generic, TypeVar
from urllib.parse import quote

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .. import budgets
from ..deadlines import deadline
from ..errors import GatewayError, NotReady
from ..http1 import ANSWERED_SCOPE_KEY, EXCHANGE_SCOPE_KEY, Exchange
from ..runtime import Gateway, LoadedRouting
from ..synthesis import Outcome, Synthesis
from .body import ClientGone, header, read_body, wait_for_disconnect

__all__ = [
    "HangUp",
    "SynthesisDoor",
    "answer_headers",
    "audio_headers",
    "header_value",
    "request_id",
]

#: A caller's X-Request-Id is kept only if it is this tame (it goes into logs and upstream headers).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Call = TypeVar("Call")


def request_id(scope: Scope) -> str:
    """The caller's ``X-Request-Id`` when it is tame, else a new one."""
    given = header(scope, b"x-request-id") or ""
    # 32 random hex digits, as uuid4().hex has them (less its six fixed bits). An id names a
    # request in logs and upstream headers and guards nothing, so they come from the
    # process's own generator (seeded from the system's at start) rather than a system call
    # per request.
    return given if _REQUEST_ID.fullmatch(given) else f"{getrandbits(128):032x}"


#: What :func:`header_value` leaves as it is: visible ASCII but ``%``.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def header_value(text: str) -> bytes:
    """``text`` as a header value that no caller can use to break the head: UTF-8, with every
    byte outside visible ASCII (and ``%``) percent-encoded."""
    if text.isascii() and text.isprintable() and " " not in text and "%" not in text:
        return text.encode()  # visible ASCII but "%" already: nothing to encode
    return quote(text, safe=_HEADER_SAFE).encode()


def answer_headers(synthesis: Synthesis, content_type: str) -> list[tuple[bytes, bytes]]:
    """The head of an audio answer, every door alike: its type, the request id, the voice that
    answered, and whether it came from the phrase cache (``X-Cache``, when the voice uses it)."""
    return audio_headers(
        content_type,
        synthesis.outcome.request_id,
        synthesis.answering_voice,
        synthesis.stream.cache,
    )


def audio_headers(
    content_type: str, request_id: str, voice: str, cache: str | None
) -> list[tuple[bytes, bytes]]:
    """:func:`answer_headers` from its parts: ``voice``, the routing file's name for the voice
    that answered (:meth:`ChainStep.answering_voice`), ``cache`` its stream's
    :attr:`~gateway.stream.AudioStream.cache`."""
    headers = [
        (b"content-type", content_type.encode()),
        (b"x-request-id", request_id.encode()),
        (b"x-voice", header_value(voice)),
        (b"cache-control", b"no-store"),
    ]
    if cache is not None:
        headers.append((b"x-cache", cache.encode()))
    return headers


class HangUp:
    """Cancels the task that made it when the caller hangs up: told by the gateway's own
    connection layer (``exchange``: :meth:`Exchange.when_gone`), else from a watcher task that
    waits for the ``http.disconnect`` message (which another server also sends once the answer
    is complete, when the door's sends are over). No task beside the work on the gateway's own
    connections; one under another server, rather than the work in a task of its own beside a
    watcher and ``asyncio.wait`` over the two. On the gateway's own connections the answer's
    end is not a hang-up: :meth:`SynthesisDoor.end_body` may still wait for the caller to take
    the last bytes.

    The task is cancelled at most once; :meth:`heard` tells whether it was (and takes that
    cancellation back, once, so that the task's count of cancellations is as if it had not
    been). Call :meth:`stop` when the work is over, however it ended."""

    def __init__(self, receive: Receive, exchange: Exchange | None = None) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("HangUp must be made inside a task")
        self._task = task
        self._heard = False
        self._settled = False
        self._exchange = exchange  # held until stop(): the hook is live while it is
        self._watcher: asyncio.Task[None] | None = None
        if exchange is not None:
            exchange.when_gone(self._gone)
        else:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(receive))

    def _gone(self) -> None:
        if self._exchange is not None:  # not stopped meanwhile
            self._heard = True
            self._task.cancel()

    async def _watch(self, receive: Receive) -> None:
        try:
            await wait_for_disconnect(receive)
        except asyncio.CancelledError:
            # Stopped (the usual end): return rather than end cancelled, for a cancelled task
            # keeps its CancelledError, whose traceback holds this frame, which holds this
            # watcher, which holds the task: a cycle per request, left to the cycle collector
            # with the exchange it holds.
            return
        self._heard = True
        self._task.cancel()

    def heard(self) -> bool:
        """Whether the caller hung up and the task was cancelled for it."""
        if self._heard and not self._settled:
            self._settled = True
            self._task.uncancel()
        return self._heard

    def cancelled_from_outside(self) -> bool:
        """Whether the task was cancelled by someone else too (asked after :meth:`heard`)."""
        return self._task.cancelling() > 0

    def stop(self) -> None:
        """Stop watching (the work is over)."""
        if self._exchange is not None:
            # The exchange's hold on this watch (and through it on the task) let go of.
            self._exchange.when_gone(None)
            self._exchange = None
        if self._watcher is not None:
            self._watcher.cancel()


class SynthesisDoor(ABC, Generic[Call]):
    """A front door (an ASGI app for one route): the exchange around the synthesis core.
    A door says how its request is read (:meth:`parse`), how its audio is written
    (:meth:`synthesize`) and how its errors look (:meth:`error_response`)."""

    #: The door's name in the request's log line and :class:`Outcome`.
    door: ClassVar[str]

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        routing = self.gateway.routing
        with routing.in_use():
            await self._serve(routing, scope, receive, send)

    @abstractmethod
    async def parse(
        self, routing: LoadedRouting, scope: Scope, body: bytes, outcome: Outcome
    ) -> Call:
        """The request, checked (token included): raise a :class:`GatewayError`, or return
        the call, with ``outcome`` told of it (tenant, characters, :meth:`Outcome.describe`)."""

    @abstractmethod
    async def synthesize(
        self, routing: LoadedRouting, call: Call, outcome: Outcome, scope: Scope, send: Send
    ) -> None:
        """Open the synthesis, send the answer's head, pump the audio, end the body."""

    def error_response(self, error: GatewayError, request_id: str) -> Response:
        """An error answered before any audio (the gateway's JSON shape unless a door has its
        own)."""
        return error.to_response(request_id)

    async def _serve(
        self, routing: LoadedRouting, scope: Scope, receive: Receive, send: Send
    ) -> None:
        gateway = self.gateway
        rid = request_id(scope)
        outcome = Outcome(gateway.metrics, rid, door=self.door)
        try:
            if not gateway.ready or gateway.draining:
                raise NotReady("the gateway is starting or draining", headers={"Retry-After": "1"})
            body = await read_body(scope, receive, routing.config.server.max_body_bytes)
            call = await self.parse(routing, scope, body, outcome)
            # The work runs in this task, cancelled when the caller hangs up, whether or not
            # audio has started (told by the connection layer, or by a watcher beside it).
            hang_up = HangUp(receive, scope.get(EXCHANGE_SCOPE_KEY))
            try:
                await self.synthesize(routing, call, outcome, scope, send)
            except asyncio.CancelledError:
                if not hang_up.heard() or hang_up.cancelled_from_outside():
                    self._cut_short(outcome)  # the gateway is going (shutdown)
                    raise
            finally:
                hang_up.stop()
            if hang_up.heard():
                self._cut_short(outcome)
        except ClientGone:
            # The connection layer may have answered itself (a body late or malformed).
            outcome.answered(int(scope.get(ANSWERED_SCOPE_KEY) or 499))
        except GatewayError as error:
            outcome.answered(error.status, error.code)
            await self.error_response(error, rid)(scope, receive, send)
        finally:
            outcome.finish()

    @staticmethod
    def _cut_short(outcome: Outcome) -> None:
        """The work ended because the caller went (or the gateway is going)."""
        if outcome.end is None:  # not merely a hang-up after the last byte
            outcome.ended("client_disconnect")
        if outcome.status is None:
            outcome.answered(499)

    @staticmethod
    async def end_body(send: Send, last: bytes, outcome: Outcome, scope: Scope) -> None:
        """Send ``last`` and end the body, and wait within :data:`budgets.LAST_SEND_SECONDS`
        for the caller to take them (a caller that stops reading now is left to the
        connection layer: the audio was all sent). On the gateway's own connections the last
        bytes and the end of the body leave in one write."""
        exchange: Exchange | None = scope.get(EXCHANGE_SCOPE_KEY)
        if exchange is not None:
            # The body's end never waits in the exchange's send: only a full write buffer is
            # waited for, and then within the deadline (no timer otherwise).
            await send({"type": "http.response.body", "body": last, "more_body": False})
            if not exchange.write_paused:
                return
        try:
            async with deadline(budgets.LAST_SEND_SECONDS):
                if exchange is None:
                    if last:
                        await send({"type": "http.response.body", "body": last, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                else:
                    await exchange.drained()
        except TimeoutError:
            outcome.end = f"{outcome.end},caller_not_reading"
