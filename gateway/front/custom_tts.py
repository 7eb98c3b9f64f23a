"""``POST <server.path>``: the custom TTS interface, as a front door of the synthesis core.

Read the body → parse and check it (token, fields) → :meth:`SynthesisCore.open` → write the
PCM as a chunked (or, for HTTP/1.0, close-delimited) body. Plain ASGI rather than a Starlette
endpoint, because it must own the whole exchange: it watches for the caller hanging up from
the moment the body is read (a hang-up while waiting for the provider's first byte cancels the
provider too), and the stream is closed in ``finally`` — Starlette's ``StreamingResponse``
neither ``aclose()``\\ s its iterator on disconnect nor runs background tasks when cancelled.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from urllib.parse import quote

from starlette.types import Receive, Scope, Send

from .. import budgets
from ..budgets import CallerPace
from ..errors import GatewayError, NotReady, Unauthorized
from ..http1 import ANSWERED_SCOPE_KEY, WRITE_DRAIN_BYTES
from ..request import TTSRequest, parse_body, request_token, validate
from ..runtime import Gateway, LoadedRouting
from ..synthesis import Outcome, Synthesis
from .body import ClientGone, bearer, header, multipart_fields, read_body, wait_for_disconnect

#: A caller's X-Request-Id is kept only if it is this tame (it goes into logs and upstream headers).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _header_value(text: str) -> bytes:
    """``text`` as a header value that no caller can use to break the head: UTF-8, with every
    byte outside visible ASCII (and ``%``) percent-encoded."""
    return quote(text, safe="".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")).encode()


class CustomTTSDoor:
    """The custom-interface front door (an ASGI app for one route)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        routing = self.gateway.routing
        with routing.in_use():
            await self._serve(routing, scope, receive, send)

    async def _serve(
        self, routing: LoadedRouting, scope: Scope, receive: Receive, send: Send
    ) -> None:
        gateway = self.gateway
        request_id = header(scope, b"x-request-id") or ""
        if not _REQUEST_ID.fullmatch(request_id):
            request_id = uuid.uuid4().hex
        outcome = Outcome(gateway.metrics, request_id)
        try:
            if not gateway.ready or gateway.draining:
                raise NotReady("the gateway is starting or draining", headers={"Retry-After": "1"})
            server = routing.config.server
            body = await read_body(scope, receive, server.max_body_bytes)
            request = await self._parse(routing, scope, body, outcome)
            outcome.describe(request)
            # The work runs beside a watcher of the connection: whichever ends first wins, so
            # a caller hanging up cancels the provider whether or not audio has started.
            work = asyncio.create_task(self._synthesize(routing, request, outcome, send))
            watcher = asyncio.create_task(wait_for_disconnect(receive))
            try:
                await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                watcher.cancel()
                if not work.done():
                    work.cancel()
                    await asyncio.wait((work,))
                    if outcome.end is None:  # not merely a hang-up after the last byte
                        outcome.ended("client_disconnect")
                    if outcome.status is None:
                        outcome.answered(499)
            if not work.cancelled():
                work.result()
        except ClientGone:
            # The connection layer may have answered itself (a body late or malformed).
            outcome.answered(int(scope.get(ANSWERED_SCOPE_KEY) or 499))
        except GatewayError as error:
            outcome.answered(error.status, error.code)
            await error.to_response(request_id)(scope, receive, send)
        finally:
            outcome.finish()

    async def _parse(
        self, routing: LoadedRouting, scope: Scope, body: bytes, outcome: Outcome
    ) -> TTSRequest:
        content_type = header(scope, b"content-type")
        if content_type and content_type.lower().startswith("multipart/form-data"):
            data = await multipart_fields(scope, body)
        else:
            data = parse_body(body, content_type)
        tenant = routing.tenant(request_token(data, bearer(scope)))
        if tenant is None:
            raise Unauthorized("Token is missing or not accepted", field="Token")
        outcome.tenant = tenant
        request = validate(data, max_text_chars=routing.config.server.max_text_chars)
        outcome.characters = len(request.text)
        return request

    async def _synthesize(
        self, routing: LoadedRouting, request: TTSRequest, outcome: Outcome, send: Send
    ) -> None:
        async with self.gateway.core.open(routing, request, outcome) as synthesis:
            await self._answer(routing, synthesis, send)

    async def _answer(self, routing: LoadedRouting, synthesis: Synthesis, send: Send) -> None:
        request, outcome = synthesis.request, synthesis.outcome
        headers = [
            (b"content-type", routing.config.server.content_type.encode()),
            (b"x-sample-rate", str(request.sample_rate).encode()),
            (b"x-channels", b"1"),
            (b"x-request-id", outcome.request_id.encode()),
            (b"x-voice", _header_value(synthesis.answering_voice)),
            (b"cache-control", b"no-store"),
        ]
        if synthesis.stream.cache is not None:
            headers.append((b"x-cache", synthesis.stream.cache.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        outcome.answered(200)

        async def write(pcm: bytes) -> None:
            await send({"type": "http.response.body", "body": pcm, "more_body": True})

        tail = await synthesis.pump(write, CallerPace(request.sample_rate, WRITE_DRAIN_BYTES))
        try:
            async with asyncio.timeout(budgets.LAST_SEND_SECONDS):
                if tail:
                    await write(tail)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:  # the connection layer drops it; the audio was all sent
            outcome.end = f"{outcome.end},caller_not_reading"
