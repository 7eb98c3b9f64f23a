"""The load generator: its own process, plain asyncio protocols on uvloop, lighter than what
it measures (no HTTP client library per request).

Each of ``concurrency`` workers holds one keep-alive connection and sends requests one after
another until ``requests`` have been sent in all. Per request it records: time to the first
body byte, total time, body bytes, and the gaps between body data arriving. A share of the
requests (``drop``) hangs up mid-stream after a random part of the answer, as a caller who
barges in does.

With ``--ids PREFIX`` every request is its own: ``X-Request-Id: PREFIX-<n>`` and a text ending
in that id. With ``--expect VOICE,...`` as well, each answer is kept and checked by content
(``bench.integrity``) against what each of those voices would have said for its text. With
``--texts FILE`` (a JSON list of strings) request ``n`` says the ``n``-th text (cycling);
``--voice a,b`` alternates voices the same way; ``--delay SECONDS`` asks the mock upstream to
think that long before it answers. ``--pause SECONDS`` has each worker wait that long after
an answer before its next request, and ``--fresh`` opens a new connection for each request: a
caller whose sentences come seconds apart, to a gateway that has gone quiet meanwhile.

    python -m bench.loadgen --url http://127.0.0.1:8080/stream-audio --concurrency 10 \\
        --requests 300 --rate 48000 --seconds 1 --pace fast --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from bench.harness import waited_ns
from bench.integrity import answer_samples, check, expected_pcm
from bench.upstream import run_fast


@dataclass
class Result:
    """One request as the caller saw it. Times in milliseconds."""

    status: int = 0
    ttfb: float = 0.0
    total: float = 0.0
    bytes: int = 0
    dropped: bool = False
    error: str = ""
    gaps: list[float] = field(default_factory=list)
    id: str = ""
    voice: str = ""  # the answer's X-Voice header
    cache: str = ""  # the answer's X-Cache header (hit, shared, miss; "" without one)
    tail: float = 0.0  # from the last audio to the end of the answer
    verdict: str = ""  # the content check's (bench.integrity), with --expect
    answer_voice: str = ""  # whose audio the content is
    detail: str = ""


class Response(asyncio.Protocol):
    """Reads one HTTP/1.1 response (chunked or sized) at a time off a keep-alive connection.

    Each read is parsed where it lies (offsets into the bytes received, nothing copied but
    what ``--expect`` keeps); only a head or a chunk-size line cut between two reads is held
    over to the next."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.held = b""  # the unparsed end of the last read (a head or a size line, cut)
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.reset(Result(), 0.0, -1)

    def reset(self, result: Result, started: float, drop_at: int, keep: bool = False) -> None:
        self.result = result
        self.started = started
        self.drop_at = drop_at
        self.body: bytearray | None = bytearray() if keep else None
        self.head_done = False
        self.chunked = False
        self.remaining = 0  # body bytes left (sized) or in the current chunk (chunked)
        self.crlf = 0  # bytes of the CRLF that ends the current chunk still to skip
        self.last = 0.0
        self.done = False
        self.last_answer = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done and not self.result.dropped:
            self.result.error = self.result.error or "connection closed"
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.held:
            data, self.held = self.held + data, b""
        result = self.result
        if self._parse(data):
            if self.last:
                result.gaps.append((now - self.last) * 1000)
            else:
                result.ttfb = (now - self.started) * 1000
            self.last = now
        if self.done:
            result.total = (now - self.started) * 1000
            if self.last:
                result.tail = (now - self.last) * 1000
            self._wake()
        elif self.drop_at >= 0 and result.bytes >= self.drop_at:
            result.dropped = True
            result.total = (now - self.started) * 1000
            assert self.transport is not None
            self.transport.abort()
            self._wake()

    def _parse(self, data: bytes) -> int:
        """Take what ``data`` holds of the response; the body bytes in it."""
        pos, end = 0, len(data)
        if self.chunked and not (self.remaining or self.crlf or self.body is not None):
            # The usual read in real time: one whole chunk (size line, data, CRLF).
            line_end = data.find(b"\r\n", 0, 10)
            if line_end > 0 and data.endswith(b"\r\n"):
                try:
                    size = int(data[:line_end], 16)
                except ValueError:
                    size = 0
                if size and line_end + 4 + size == end:
                    self.result.bytes += size
                    return size
        if not self.head_done:
            head_end = data.find(b"\r\n\r\n")
            if head_end < 0:
                self.held = data
                return 0
            self._head(data[:head_end].decode("latin-1"))
            pos = head_end + 4
        body = self.body
        got = 0
        if not self.chunked:
            take = min(self.remaining, end - pos)
            if body is not None:
                body += data[pos : pos + take]
            self.remaining -= take
            self.done = self.remaining == 0
            self.result.bytes += take
            return take
        while pos < end:
            if self.remaining:
                take = min(self.remaining, end - pos)
                if body is not None:
                    body += data[pos : pos + take]
                got += take
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.crlf = 2
                continue
            if self.crlf:  # the CRLF after a chunk's data
                skip = min(self.crlf, end - pos)
                self.crlf -= skip
                pos += skip
                continue
            line_end = data.find(b"\r\n", pos)
            if line_end < 0:
                self.held = data[pos:]
                break
            size = int(data[pos:line_end].partition(b";")[0], 16)
            if size == 0:
                if data.find(b"\r\n\r\n", line_end) < 0:  # the last chunk, its trailer cut
                    self.held = data[pos:]
                    break
                self.done = True
                break
            pos = line_end + 2
            self.remaining = size
        self.result.bytes += got
        return got

    def _head(self, raw: str) -> None:
        head = raw.lower()
        self.result.status = int(head.split(" ", 2)[1])
        for line in raw.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "x-voice":
                self.result.voice = value.strip()
            elif name.strip().lower() == "x-cache":
                self.result.cache = value.strip()
        self.head_done = True
        self.chunked = "transfer-encoding: chunked" in head
        # The server closes after this answer (RFC 9112 9.6): the next request takes a new
        # connection, as an HTTP client's would (a worker shedding it, a draining gateway).
        self.last_answer = "\r\nconnection: close" in head
        if not self.chunked:
            for line in head.split("\r\n"):
                if line.startswith("content-length:"):
                    self.remaining = int(line.split(":")[1])


@dataclass(frozen=True)
class Plan:
    """What the workers send: the request for each job, and how to check its answer."""

    url: str
    rate: int
    seconds: float
    pace: str
    voice: str
    text: str
    speed: float = 0.0  # with pace "realtime": times real time (0: real time)
    ids: str = ""  # prefix of per-request ids ("": every request the same)
    expect: tuple[str, ...] = ()  # voices whose answers the content is checked against
    texts: tuple[str, ...] = ()  # one per request, cycling (instead of ``text``)
    delay: float = 0.0  # seconds the mock upstream waits before answering

    @property
    def varies(self) -> bool:
        """Whether requests differ from one another."""
        return bool(self.ids or len(self.texts) > 1 or "," in self.voice)

    def voice_of(self, index: int) -> str:
        voices = self.voice.split(",")
        return voices[index % len(voices)]

    def text_of(self, index: int) -> str:
        text = self.texts[index % len(self.texts)] if self.texts else self.text
        return f"{text} ({self.ids}-{index})" if self.ids else text

    def request(self, index: int) -> bytes:
        return build_request(
            self.url,
            self.rate,
            self.seconds,
            self.pace,
            self.voice_of(index),
            self.text_of(index),
            request_id=f"{self.ids}-{index}" if self.ids else None,
            speed=self.speed,
            delay=self.delay,
        )

    def judge(self, index: int, result: Result, body: bytes) -> None:
        """Check ``body`` by content against every expected voice's answer for its text."""
        samples = answer_samples(self.seconds, self.rate)
        text = self.text_of(index)
        verdict = check(body, {v: expected_pcm(v, text, samples) for v in self.expect})
        result.verdict = verdict.kind
        result.answer_voice = verdict.voice or ""
        result.detail = verdict.detail


async def worker(
    host: str,
    port: int,
    plan: Plan,
    jobs: asyncio.Queue[tuple[int, float]],
    results: list[Result],
    expected_bytes: int,
    patience: float,
    delay: float = 0.0,
    pause: float = 0.0,
    fresh: bool = False,
) -> None:
    loop = asyncio.get_running_loop()
    if delay:
        await asyncio.sleep(delay)
    protocol: Response | None = None
    same = None if plan.varies else plan.request(0)
    while True:
        try:
            index, drop = jobs.get_nowait()
        except asyncio.QueueEmpty:
            break
        if protocol is None or protocol.closed:
            try:
                _, protocol = await loop.create_connection(Response, host, port)
            except OSError as exc:
                results.append(Result(error=f"connect: {exc}"))
                protocol = None
                continue
        drop_at = int(drop * expected_bytes) if drop >= 0 else -1
        result = Result(id=f"{plan.ids}-{index}" if plan.ids else "")
        protocol.reset(result, time.perf_counter(), drop_at, keep=bool(plan.expect))
        protocol.waiter = loop.create_future()
        assert protocol.transport is not None
        protocol.transport.write(same or plan.request(index))
        try:
            await asyncio.wait_for(protocol.waiter, patience)
        except TimeoutError:
            result.error = "timeout"
            protocol.transport.abort()
        if protocol.body is not None and result.status == 200:
            plan.judge(index, result, bytes(protocol.body))
        results.append(result)
        if result.dropped or result.error:
            protocol = None
        elif (fresh or protocol.last_answer) and protocol.transport is not None:
            protocol.transport.close()
            protocol = None
        if pause and not jobs.empty():
            await asyncio.sleep(pause)
    if protocol is not None and protocol.transport is not None:
        protocol.transport.close()


def build_request(
    url: str,
    rate: int,
    seconds: float,
    pace: str,
    voice: str,
    text: str = "Benchmark.",
    request_id: str | None = None,
    speed: float = 0.0,
    delay: float = 0.0,
) -> bytes:
    parts = urlsplit(url)
    bench: dict[str, Any] = {"InstanceId": "bench", "BenchSeconds": seconds, "BenchPace": pace}
    if speed:
        bench["BenchSpeed"] = speed
    if delay:
        bench["BenchDelay"] = delay
    body = json.dumps(
        {"Text": text, "VoiceId": voice, "SampleRate": rate, "ExtendData": json.dumps(bench)}
    ).encode()
    extra = f"X-Request-Id: {request_id}\r\n" if request_id else ""
    return (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = urlsplit(args.url)
    plan = Plan(
        args.url,
        args.rate,
        args.seconds,
        args.pace,
        args.voice,
        args.text,
        speed=args.speed,
        ids=args.ids,
        expect=tuple(v for v in args.expect.split(",") if v),
        texts=tuple(texts(args.texts)) if args.texts else (),
        delay=args.delay,
    )
    rng = random.Random(args.seed)
    jobs: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    for index in range(args.requests):
        jobs.put_nowait((index, rng.uniform(0.05, 0.9) if rng.random() < args.drop else -1.0))
    expected = int(args.seconds * args.rate) * 2
    results: list[Result] = []
    waited = waited_ns(os.getpid())  # read before the clocks start: its /proc scan not counted
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(
        *(
            worker(
                parts.hostname or "127.0.0.1",
                parts.port or 80,
                plan,
                jobs,
                results,
                expected,
                args.timeout,
                # Independent callers: start times spread evenly over `ramp` seconds.
                index * args.ramp / args.concurrency,
                args.pause,
                args.fresh,
            )
            for index in range(args.concurrency)
        )
    )
    wall, run_cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "wall": wall,
        "cpu": time.process_time(),  # the process's, its start included
        "run_cpu": run_cpu,  # from the first request to the last answer
        # Seconds it was ready to run but waited for a core, over the same time.
        "run_waited": (waited_ns(os.getpid()) - waited) / 1e9,
        "results": [asdict(r) for r in results],
    }


def texts(path: str) -> list[str]:
    """The texts of a ``--texts`` file: a JSON list of strings."""
    with open(path, encoding="utf-8") as source:
        found = json.load(source)
    if not isinstance(found, list) or not found or not all(isinstance(t, str) for t in found):
        raise SystemExit(f"{path}: expected a JSON list of strings")
    return found


def summary(data: dict[str, Any]) -> str:
    results = [r for r in data["results"] if not r["error"]]
    ok = [r for r in results if r["status"] == 200 and not r["dropped"]]
    ttfb = sorted(r["ttfb"] for r in ok)
    errors = len(data["results"]) - len(results)
    if not ttfb:
        return f"no successful request ({errors} errors)"
    p99 = ttfb[min(len(ttfb) - 1, int(0.99 * len(ttfb)))]
    return (
        f"{len(ok)} ok, {errors} errors, ttfb p50 {statistics.median(ttfb):.2f} ms, "
        f"p99 {p99:.2f} ms, wall {data['wall']:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="custom TTS interface load generator")
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rate", type=int, default=24000, help="SampleRate asked for")
    parser.add_argument("--seconds", type=float, default=1.0, help="audio per request")
    parser.add_argument("--pace", choices=("fast", "realtime"), default="fast")
    parser.add_argument("--voice", default="bench", help="comma-separated: taken in turn")
    parser.add_argument("--text", default="Benchmark.")
    parser.add_argument(
        "--speed", type=float, default=0.0, help="with --pace realtime: times real time"
    )
    parser.add_argument("--texts", default="", help="a JSON list of texts, one per request")
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds the mock upstream waits to answer"
    )
    parser.add_argument("--ids", default="", help="give each request its own id with this prefix")
    parser.add_argument(
        "--expect", default="", help="with --ids: check each answer against these voices' audio"
    )
    parser.add_argument("--drop", type=float, default=0.0, help="share of requests hung up on")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--ramp", type=float, default=0.0, help="spread the workers' starts over this many s"
    )
    parser.add_argument(
        "--pause", type=float, default=0.0, help="seconds each worker waits between requests"
    )
    parser.add_argument("--fresh", action="store_true", help="a new connection per request")
    parser.add_argument("--json", help="write every result here")
    args = parser.parse_args()

    holder: dict[str, Any] = {}

    async def go() -> None:
        holder.update(await run(args))

    run_fast(go())
    if args.json:
        with open(args.json, "w") as out:
            json.dump(holder, out)
    print(summary(holder), file=sys.stderr)


if __name__ == "__main__":
    main()
