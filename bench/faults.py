"""A fault-injecting upstream speaking the custom TTS interface: the sick provider of the soak.

Each synthesis request gets, at random, one of these answers (:class:`FaultPlan` gives their
shares):

- ``error``: HTTP 500, 502 or 503 with a JSON error body;
- ``reset``: the connection reset (RST) before the first byte of the answer;
- ``stall_before``: connected, and then nothing: half of these send no byte at all, the other
  half a 200 head and no audio;
- ``stall_mid``: a 200 head and part of the audio, then silence mid-answer;
- ``throttle``: HTTP 429 with ``Retry-After``;
- ``ok``: the whole answer, streamed.

A stalled connection is held until its client closes it (at most :data:`STALL_CAP` seconds),
and counted while held: after a run, stalls still held are connections the client leaked.
The draw is seeded: the ``n``-th request carrying a given ``X-Request-Id`` gets the same answer
in every run, however requests interleave (a request without one draws from a seeded
sequence).

An answer's audio is ``bench.integrity.expected_pcm(VoiceId, Text)`` at the ``SampleRate``
asked for, in 20 ms chunks, paced as ``bench.upstream`` paces its tone (``ExtendData``:
``BenchSeconds``, ``BenchPace``, ``BenchSpeed``).

Control routes, for the soak: ``GET /ledger`` (what was answered: counts per kind, the kinds
each request id got in order, connections and stalls held now) and ``PUT /plan`` (a JSON
object of :class:`FaultPlan` fields: the new plan, with a fresh ledger).

    python -m bench.faults --port 9001 --plan soak
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bench.integrity import answer_samples, expected_pcm
from bench.upstream import CHUNK_MS, END, UpstreamProtocol, parameters, run_fast, serve

_FAULTS = ("error", "reset", "stall_before", "stall_mid", "throttle")
#: The longest a stalled connection is held open before the upstream closes it itself.
STALL_CAP = 60.0
_REQUEST_ID = re.compile(rb"^x-request-id:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.I | re.M)
_STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The share of synthesis requests answered with each fault (the rest are answered in
    full), the ``Retry-After`` seconds of a 429, and the seed of the draw."""

    error: float = 0.0
    reset: float = 0.0
    stall_before: float = 0.0
    stall_mid: float = 0.0
    throttle: float = 0.0
    retry_after: int = 1
    seed: int = 9

    def __post_init__(self) -> None:
        shares = [getattr(self, kind) for kind in _FAULTS]
        if not all(isinstance(s, int | float) and 0 <= s <= 1 for s in shares) or sum(shares) > 1:
            raise ValueError(
                "each fault's share is a number from 0 to 1, and they add up to 1 at most"
            )

    def draw(self, key: str) -> tuple[str, random.Random]:
        """The answer for the request known as ``key``, and a generator seeded by the same key
        for the answer's details."""
        rng = random.Random(f"{self.seed}:{key}")
        roll = rng.random()
        for kind in _FAULTS:
            share: float = getattr(self, kind)
            if roll < share:
                return kind, rng
            roll -= share
        return "ok", rng


#: What the soak's primary voice suffers: 30 % 5xx, 10 % resets, 5 % stalls (half before the
#: first byte, half mid-answer), 5 % 429.
SOAK = FaultPlan(error=0.30, reset=0.10, stall_before=0.025, stall_mid=0.025, throttle=0.05)
HEALTHY = FaultPlan()
OUTAGE = FaultPlan(error=1.0)
PLANS = {"soak": SOAK, "healthy": HEALTHY, "outage": OUTAGE}


@dataclass
class Ledger:
    """What the upstream answered since its plan was last set, and what it holds now."""

    requests: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    by_request: dict[str, list[str]] = field(default_factory=dict)
    connections_made: int = 0
    connections_open: int = 0
    stalls_open: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "kinds": dict(self.kinds),
            "by_request": self.by_request,
            "connections_made": self.connections_made,
            "connections_open": self.connections_open,
            "stalls_open": self.stalls_open,
        }


class FaultyUpstream:
    """The upstream's state, shared by its connections: the plan and the ledger."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self.ledger = Ledger()
        self._anonymous = 0

    def draw(self, request_id: str | None) -> tuple[str, random.Random]:
        """The answer for the next request with ``request_id``, noted in the ledger."""
        ledger = self.ledger
        ledger.requests += 1
        if request_id is None:
            self._anonymous += 1
            key = f"-:{self._anonymous}"
            kind, rng = self.plan.draw(key)
        else:
            seen = ledger.by_request.setdefault(request_id, [])
            kind, rng = self.plan.draw(f"{request_id}:{len(seen)}")
            seen.append(kind)
        ledger.kinds[kind] += 1
        return kind, rng

    def set_plan(self, plan: FaultPlan) -> None:
        """A new plan, with a fresh ledger (the live counts carried over)."""
        old = self.ledger
        self.plan = plan
        self.ledger = Ledger(connections_open=old.connections_open, stalls_open=old.stalls_open)

    def protocol(self) -> FaultyProtocol:
        return FaultyProtocol(self)


def _response(status: int, body: bytes = b"", headers: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


class FaultyProtocol(UpstreamProtocol):
    """One connection to the faulty upstream: synthesis answers by the plan, and the control
    routes."""

    def __init__(self, upstream: FaultyUpstream) -> None:
        super().__init__()
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.upstream.ledger.connections_made += 1
        self.upstream.ledger.connections_open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.upstream.ledger.connections_open -= 1
        super().connection_lost(exc)

    async def respond(self, head: bytes, body: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        method, _, rest = head.partition(b" ")
        path = rest.partition(b" ")[0]
        if method == b"GET" and path == b"/ledger":
            transport.write(_response(200, json.dumps(self.upstream.ledger.as_json()).encode()))
        elif method == b"PUT" and path == b"/plan":
            try:
                plan = FaultPlan(**json.loads(body))
            except (ValueError, TypeError) as exc:
                error = json.dumps({"error": {"message": str(exc)}}).encode()
                transport.write(_response(400, error))
            else:
                self.upstream.set_plan(plan)
                transport.write(_response(200, json.dumps(asdict(plan)).encode()))
        elif method == b"POST":
            if not await self.synthesize(head, body):
                return
        else:
            transport.write(_response(404, b'{"error": {"message": "no such route"}}'))
        self.finished()

    async def synthesize(self, head: bytes, body: bytes) -> bool:
        """Answer one synthesis request by the plan; whether the connection may serve another."""
        found = _REQUEST_ID.search(head)
        kind, rng = self.upstream.draw(found.group(1).decode("latin-1") if found else None)
        transport = self.transport
        assert transport is not None
        if kind == "reset":
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            return False
        if kind == "error":
            status = rng.choice((500, 502, 503))
            transport.write(_response(status, b'{"error": {"message": "injected fault"}}'))
            return True
        if kind == "throttle":
            retry = f"Retry-After: {self.upstream.plan.retry_after}\r\n"
            message = b'{"error": {"message": "rate limited (injected)"}}'
            transport.write(_response(429, message, retry))
            return True
        try:
            request = json.loads(body)
            text, voice = str(request["Text"]), str(request.get("VoiceId") or "")
            rate = int(request.get("SampleRate") or 24000)
        except (ValueError, KeyError, TypeError):
            transport.write(_response(400, b'{"error": {"message": "a malformed request"}}'))
            return True
        seconds, speed = parameters(body)
        pcm = expected_pcm(voice, text, answer_samples(seconds, rate, CHUNK_MS))
        size = rate * CHUNK_MS // 1000 * 2
        chunks = [_chunk(pcm[i : i + size]) for i in range(0, len(pcm), size)]
        answer_head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nTransfer-Encoding: chunked\r\n"
            b"X-Sample-Rate: %d\r\n\r\n" % rate
        )
        if kind == "stall_mid" and len(chunks) < 2:
            kind = "stall_before"  # no middle to stall in
        if kind == "stall_before":
            if rng.random() < 0.5:
                transport.write(answer_head)
            await self.stall()
            return False
        transport.write(answer_head)
        if kind == "stall_mid":
            chunks = chunks[: rng.randrange(1, len(chunks))]
        if speed is None:
            transport.write(b"".join(chunks))
        elif not await self.send_paced(chunks, CHUNK_MS / 1000 / speed):
            return False
        if kind == "stall_mid":
            await self.stall()
            return False
        if self.transport is None:
            return False
        self.transport.write(END)
        return True

    async def stall(self) -> None:
        """Hold the connection silent until the client closes it (or :data:`STALL_CAP`)."""
        upstream = self.upstream
        upstream.ledger.stalls_open += 1
        try:
            await asyncio.sleep(STALL_CAP)
            if self.transport is not None:
                self.transport.close()
        finally:
            upstream.ledger.stalls_open -= 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--plan", choices=sorted(PLANS), default="soak")
    parser.add_argument("--seed", type=int, default=SOAK.seed)
    args = parser.parse_args()
    upstream = FaultyUpstream(replace(PLANS[args.plan], seed=args.seed))
    run_fast(serve(args.host, args.port, protocol=upstream.protocol))


if __name__ == "__main__":
    main()
