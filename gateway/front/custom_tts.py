"""``POST <server.path>``: the custom TTS interface, as a front door of the synthesis core.

Read the body → parse and check it (token, fields) → :meth:`SynthesisCore.open` → write the
PCM as a chunked (or, for HTTP/1.0, close-delimited) body. The exchange around it (the caller
hanging up, the errors, the outcome) is :class:`gateway.front.door.SynthesisDoor`'s.
"""

from __future__ import annotations

from starlette.types import Scope, Send

from ..budgets import CallerPace
from ..errors import Unauthorized
from ..http1 import EXCHANGE_SCOPE_KEY, WRITE_DRAIN_BYTES
from ..request import TTSRequest, parse_body, request_token, validate
from ..runtime import LoadedRouting
from ..synthesis import Outcome, Synthesis
from .body import bearer, header, multipart_fields
from .door import SynthesisDoor, answer_headers


class CustomTTSDoor(SynthesisDoor[TTSRequest]):
    """The custom-interface front door (an ASGI app for one route)."""

    door = "custom"

    async def parse(
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
        outcome.describe(request)
        return request

    async def synthesize(
        self, routing: LoadedRouting, call: TTSRequest, outcome: Outcome, scope: Scope, send: Send
    ) -> None:
        async with self.gateway.core.open(routing, call, outcome) as synthesis:
            await self._answer(routing, synthesis, scope, send)

    async def _answer(
        self, routing: LoadedRouting, synthesis: Synthesis, scope: Scope, send: Send
    ) -> None:
        request, outcome = synthesis.request, synthesis.outcome
        headers = answer_headers(synthesis, routing.config.server.content_type)
        headers[1:1] = [
            (b"x-sample-rate", str(request.sample_rate).encode()),
            (b"x-channels", b"1"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        outcome.answered(200)

        async def write(pcm: bytes) -> None:
            await send({"type": "http.response.body", "body": pcm, "more_body": True})

        tail = await synthesis.pump(
            write,
            CallerPace(request.sample_rate, WRITE_DRAIN_BYTES),
            direct=scope.get(EXCHANGE_SCOPE_KEY),
        )
        await self.end_body(send, tail, outcome, scope)
