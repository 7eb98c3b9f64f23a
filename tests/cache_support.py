"""What the phrase-cache tests share: a loopback upstream speaking the custom TTS interface whose
answers are scripted step by step (chunks, waits the test releases, a connection cut mid-body),
a routing file with a cached voice over it, and a caller that reads an answer chunk by chunk."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.support import LoopbackServer, RawResponse, raw_post, read_request, tone

#: 100 ms of a 440 Hz tone at 24 kHz, in three chunks of different sizes.
PHRASE = (tone(440, 0.04, 24000), tone(440, 0.02, 24000), tone(440, 0.04, 24000))
#: Cuts the connection without ending the chunked body (an upstream failing mid-answer).
CUT = "cut"

Step = bytes | asyncio.Event | str


@dataclass
class Received:
    """A request as the upstream received it."""

    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def text(self) -> str:
        return str(self.body.get("Text", ""))


@dataclass
class PhraseUpstream(LoopbackServer):
    """Answers each request with the next step list of :attr:`script`, or :attr:`steps` once
    the script is used up: bytes are sent as one chunk each, an event is waited for (the wait
    ends early if the gateway hangs up), :data:`CUT` closes the connection mid-body. A status
    other than 200 answers that status with a JSON error instead. Records every request and
    every answer the gateway hung up on (:attr:`hung_up`)."""

    steps: Sequence[Step] = PHRASE
    status: int = 200
    script: collections.deque[Sequence[Step]] = field(default_factory=collections.deque)
    requests: list[Received] = field(default_factory=list)
    hung_up: int = 0
    port: int = 0

    @property
    def count(self) -> int:
        return len(self.requests)

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        _, headers, raw = await read_request(reader)
        self.requests.append(Received(headers, json.loads(raw)))
        steps = self.script.popleft() if self.script else self.steps
        if self.status != 200:
            body = b'{"error": {"code": "unavailable", "message": "upstream says no"}}'
            writer.write(
                f"HTTP/1.1 {self.status} Error\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            return True
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        eof = asyncio.ensure_future(reader.read(1))  # b"" once the gateway hangs up
        try:
            for step in steps:
                if isinstance(step, bytes):
                    writer.write(b"%x\r\n%s\r\n" % (len(step), step))
                    await writer.drain()
                elif isinstance(step, asyncio.Event):
                    waiting = asyncio.ensure_future(step.wait())
                    await asyncio.wait((waiting, eof), return_when=asyncio.FIRST_COMPLETED)
                    waiting.cancel()
                elif step == CUT:
                    writer.transport.abort()
                    return False
                if eof.done():
                    self.hung_up += 1
                    return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return False
        finally:
            eof.cancel()


def routing(
    url: str,
    *,
    voice: dict[str, Any] | None = None,
    provider: dict[str, Any] | None = None,
    cache: dict[str, Any] | None = None,
    **server: Any,
) -> str:
    """A routing file: the provider ``up`` (``type: custom`` over ``url``, answering at 24 kHz
    only) and the voice ``v`` on it with ``cache: true``, plus ``live`` on the same provider
    without the cache (what a live answer is); ``cache`` is ``server.cache``."""
    block: dict[str, Any] = {
        "type": "custom",
        "url": url,
        "sample_rates": [24000],
        "retry": {"attempts": 1, "backoff": 0.01, "max_backoff": 0.02},
        "timeout": {"connect": 2, "first_byte": 10, "total": 30, "stall": 30},
    }
    block.update(provider or {})
    cached: dict[str, Any] = {"provider": "up", "cache": True}
    cached.update(voice or {})
    live = {k: v for k, v in cached.items() if k != "cache"}
    server.setdefault("default_voice", "v")
    server["cache"] = cache or {}
    return json.dumps(
        {"server": server, "providers": {"up": block}, "voices": {"v": cached, "live": live}}
    )


def body(
    text: str = "Hello there.", rate: int = 24000, voice: str = "v", **extend: str
) -> dict[str, Any]:
    """A request to the custom door."""
    return {"Text": text, "SampleRate": rate, "VoiceId": voice, "ExtendData": json.dumps(extend)}


@dataclass
class Answer:
    """An answer as the caller got it: status, headers and the body chunk by chunk."""

    status: int
    headers: dict[str, str]
    chunks: list[bytes]

    @property
    def audio(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def cache(self) -> str | None:
        return self.headers.get("x-cache")


async def read_answer(response: RawResponse) -> Answer:
    """The rest of ``response``, chunk by chunk; the connection is closed after."""
    chunks: list[bytes] = []
    try:
        if response.headers.get("transfer-encoding") == "chunked":
            while (chunk := await response.read_chunk()) is not None:
                chunks.append(chunk)
        else:
            size = int(response.headers.get("content-length", "0"))
            chunks.append(await response.reader.readexactly(size))
    finally:
        response.close()
    return Answer(response.status, response.headers, chunks)


async def ask(url: str, request: dict[str, Any]) -> Answer:
    """One whole answer from the gateway at ``url``."""
    return await read_answer(await raw_post(url, "/stream-audio", request))
