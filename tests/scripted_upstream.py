"""A loopback upstream speaking the custom TTS interface that follows a script, request by
request: when its audio comes, whether it fails first, goes silent mid-answer or holds the
connection open. It records each exchange, and above all how it ended: the upstream finished,
or the gateway hung up on it (EOF seen at once, with a bare asyncio socket), which is how the
resilience tests prove that a cancelled or stalled upstream connection was closed.

A script is a list of steps, run in order:

- ``bytes``: one chunk of audio (the 200 head goes out first if it has not yet);
- ``HEAD``: the 200 head now, before any audio;
- a float: a pause of that many seconds;
- an :class:`asyncio.Event`: wait until the test sets it;
- a :class:`Signal`: set its event (to tell the test, or another upstream, where this one is);
- a :class:`Fail`: answer with an error status instead (before any other output);
- ``HOLD``: stay connected and silent until the gateway hangs up (after ``HEAD``, the
  gateway waits for audio; without it, for the answer's head).

After the last step the chunked body is ended. A hang-up ends the script wherever it is.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from tests.support import LoopbackServer, read_request

HEAD: Final = "head"
HOLD: Final = "hold"


@dataclass(frozen=True)
class Fail:
    """Answer ``status`` with ``body`` (and ``headers``), then close."""

    status: int
    body: bytes = b'{"error": {"code": "unavailable", "message": "upstream says no"}}'
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Signal:
    """Set ``event`` when the script gets here."""

    event: asyncio.Event


Step = bytes | float | asyncio.Event | Signal | Fail | Literal["head", "hold"]


@dataclass
class Exchange:
    """One request and what came of it: ``end`` is ``complete`` (the whole answer went out),
    ``failed`` (an error status went out) or ``hung_up`` (the gateway closed the connection
    before the answer ended); ``ended`` is set then."""

    body: dict[str, Any]
    started: float
    audio_sent: int = 0
    last_audio_at: float | None = None
    end: str | None = None
    ended_at: float | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class ScriptedUpstream(LoopbackServer):
    """Request *i* plays ``replies[i]`` (the last reply repeats); a test may replace
    ``replies`` between requests (a provider that recovers)."""

    def __init__(self, *replies: Sequence[Step]) -> None:
        self.replies: list[Sequence[Step]] = list(replies)
        self.exchanges: list[Exchange] = []

    @property
    def hung_up(self) -> list[Exchange]:
        """The exchanges the gateway closed before their answer ended."""
        return [e for e in self.exchanges if e.end == "hung_up"]

    async def all_ended(self, seconds: float = 5.0) -> list[str]:
        """Wait (at most ``seconds``) until every exchange so far has ended; their ends."""
        exchanges = list(self.exchanges)
        await asyncio.wait_for(asyncio.gather(*(e.ended.wait() for e in exchanges)), seconds)
        return [str(e.end) for e in exchanges]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        exchange: Exchange | None = None
        try:
            _, _, raw = await read_request(reader)
            body = json.loads(raw)
            script = self.replies[min(len(self.exchanges), len(self.replies) - 1)]
            exchange = Exchange(body, time.perf_counter())
            self.exchanges.append(exchange)
            gone = asyncio.ensure_future(reader.read(1))  # b"" once the gateway hangs up
            try:
                exchange.end = await self._play(script, exchange, writer, gone)
            except ConnectionError:
                exchange.end = "hung_up"
            finally:
                gone.cancel()
                if gone.done() and not gone.cancelled():
                    gone.exception()  # retrieved: a reset is a hang-up like any other
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if exchange is not None:
                exchange.ended_at = time.perf_counter()
                exchange.ended.set()
            writer.close()

    @staticmethod
    async def _play(
        script: Sequence[Step],
        exchange: Exchange,
        writer: asyncio.StreamWriter,
        gone: asyncio.Future[bytes],
    ) -> str:
        headed = False

        def head() -> None:
            nonlocal headed
            if not headed:
                headed = True
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nConnection: close\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )

        for step in script:
            if gone.done():
                return "hung_up"
            if isinstance(step, Fail):
                extra = "".join(f"{k}: {v}\r\n" for k, v in step.headers.items())
                writer.write(
                    f"HTTP/1.1 {step.status} Error\r\nContent-Type: application/json\r\n"
                    f"Connection: close\r\n{extra}Content-Length: {len(step.body)}\r\n\r\n".encode()
                    + step.body
                )
                await writer.drain()
                return "failed"
            if isinstance(step, Signal):
                step.event.set()
            elif isinstance(step, bytes):
                head()
                writer.write(b"%x\r\n%s\r\n" % (len(step), step))
                await writer.drain()
                exchange.audio_sent += len(step)
                exchange.last_audio_at = time.perf_counter()
            elif isinstance(step, float | int):
                await asyncio.wait((gone,), timeout=step)
            elif isinstance(step, asyncio.Event):
                waiting = asyncio.ensure_future(step.wait())
                await asyncio.wait((gone, waiting), return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
            elif step == HEAD:
                head()
                await writer.drain()
            elif step == HOLD:
                await gone
        if gone.done():
            return "hung_up"
        head()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return "complete"


def custom_block(upstream: ScriptedUpstream, **overrides: Any) -> dict[str, Any]:
    """A ``type: custom`` provider block on ``upstream``: one attempt per request (a test
    scripts each attempt) and budgets far longer than any test waits, so that what ends an
    upstream connection is the behaviour under test, never a timeout."""
    block: dict[str, Any] = {
        "type": "custom",
        "url": upstream.url,
        "retry": {"attempts": 1},
        "timeout": {"connect": 2, "first_byte": 30, "total": 60},
    }
    block.update(overrides)
    return block
