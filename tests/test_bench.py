"""The benchmark's own parts measure what they claim: the mock upstream sends the tone it
announces, the load generator counts bytes, first bytes, gaps and hang-ups correctly; the
fault soak's upstream injects each fault it names, its integrity check tells a sound answer
from a duplicated, skipped, mixed, garbled or cut one, and a small soak runs end to end; so
does a small run of the phrase cache's scenario."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest

from bench import cache_report, first_byte, hotpath, idle, soak_report
from bench import resampler as resampler_bench
from bench.cache import CacheBench, CacheSize, redis_server, unique_text
from bench.faults import HEALTHY, SOAK, FaultPlan, FaultyUpstream
from bench.floor import FIRST_BYTES, FloorRelay, latency_report
from bench.floor import report as floor_report
from bench.harness import (
    PY,
    ROOT,
    Server,
    busiest_share,
    cpu_by_process,
    cpu_ns,
    cpu_seconds,
    process_tree,
    settle,
    waited_ns,
)
from bench.hotpath import layers
from bench.integrity import Verdict, answer_samples, check, expected_pcm
from bench.loadgen import Plan, Response, Result, run
from bench.pieces import SYNTHESIS_MS_PER_CHAR, ClipProtocol, clip_bytes, listen, run_pieces
from bench.pieces import render as render_pieces
from bench.pieces import targets as pieces_targets
from bench.run import Bench, latency, merged, render, streams_held
from bench.soak import Soak, SoakSize
from bench.upstream import CHUNK_SAMPLES, RATE, UpstreamProtocol, serve
from gateway.direct import RELAY_STEP
from gateway.polyphase import PolyphaseResampler
from tests.support import eventually, free_socket, peak_frequency


async def start_upstream() -> tuple[asyncio.Task[None], int]:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    ready = asyncio.Event()
    task = asyncio.create_task(serve("127.0.0.1", port, ready))
    await ready.wait()
    return task, port


def arguments(port: int, **overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "url": f"http://127.0.0.1:{port}/stream-audio",
        "concurrency": 2,
        "requests": 6,
        "rate": RATE,
        "seconds": 0.2,
        "pace": "fast",
        "voice": "bench",
        "text": "Benchmark.",
        "drop": 0.0,
        "timeout": 10.0,
        "seed": 1,
        "ramp": 0.0,
        "speed": 0.0,
        "ids": "",
        "expect": "",
        "texts": "",
        "delay": 0.0,
        "pause": 0.0,
        "fresh": False,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


async def test_fast_requests_deliver_the_announced_tone() -> None:
    task, port = await start_upstream()
    try:
        data = await run(arguments(port))
    finally:
        task.cancel()
    results = data["results"]
    assert len(results) == 6
    expected = round(0.2 * 1000 / 20) * CHUNK_SAMPLES * 2
    assert all(r["status"] == 200 and r["bytes"] == expected for r in results)
    assert all(0 < r["ttfb"] <= r["total"] for r in results)


@pytest.mark.parametrize("resample", [False, True])
async def test_the_floor_relay_passes_the_upstream_answer_on(resample: bool) -> None:
    """bench.floor's bare relay answers what the upstream answers (resampled by the gateway's
    own filter with ``resample``), over kept-alive connections on both sides."""
    task, port = await start_upstream()
    relay = FloorRelay(port, resample)
    server = await asyncio.get_running_loop().create_server(relay.caller, "127.0.0.1", 0)
    relay_port = server.sockets[0].getsockname()[1]
    extend = json.dumps({"BenchSeconds": 0.3, "BenchPace": "fast"})
    body = {"Text": "Benchmark.", "VoiceId": "bench", "SampleRate": RATE, "ExtendData": extend}
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            direct = await client.post(f"http://127.0.0.1:{port}/stream-audio", json=body)
            relayed = [
                await client.post(f"http://127.0.0.1:{relay_port}/stream-audio", json=body)
                for _ in range(3)
            ]
    finally:
        idle = len(relay.idle)
        relay.close()
        server.close()
        task.cancel()
    assert direct.status_code == 200 and len(direct.content) == 15 * CHUNK_SAMPLES * 2
    expected = direct.content
    if resample:
        resampler = PolyphaseResampler(2, 1, 32768.0)
        expected = resampler.process_s16(direct.content) + resampler.flush_s16()
        assert len(expected) == 2 * len(direct.content)
    for answer in relayed:
        assert answer.status_code == 200
        assert answer.content == expected
    assert idle == 1  # one upstream connection, kept alive for every request


def test_the_floor_relay_sends_a_big_first_read_in_two_and_the_same_audio() -> None:
    """A first read of a second of audio: its first 40 ms go out converted before the rest is,
    and the answer is what converting the whole gives."""
    relay = FloorRelay(0, True)
    writes: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            writes.append(data)

    caller = cast(Any, relay.caller())
    caller.transport = Transport()
    caller.resampler = relay.resampler()
    audio = (np.sin(np.arange(RATE) * 0.1) * 8000).astype("<i2").tobytes()
    caller.audio(audio)
    caller.end()
    assert len(audio) > 2 * FIRST_BYTES
    resampler = PolyphaseResampler(2, 1, 32768.0)
    first = resampler.process_s16(audio[:FIRST_BYTES])
    whole = first + resampler.process_s16(audio[FIRST_BYTES:]) + resampler.flush_s16()
    head, _, chunked = b"".join(writes).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert writes[0].endswith(b"%x\r\n%s\r\n" % (len(first), first))  # first, on its own
    assert dechunk(chunked) == (whole, True)
    check = PolyphaseResampler(2, 1, 32768.0)
    assert whole == check.process_s16(audio) + check.flush_s16()  # cut or not, the same


async def test_the_floor_relay_serves_from_several_processes_and_stops_them_all() -> None:
    task, port = await start_upstream()
    sock = free_socket()
    relay_port = sock.getsockname()[1]
    sock.close()
    args = [PY, "-m", "bench.floor", "serve", "--port", str(relay_port)]
    args += ["--upstream", str(port), "--processes", "2", "--resample"]
    process = await asyncio.create_subprocess_exec(*args, cwd=ROOT)
    try:
        assert await eventually(lambda: len(process_tree(process.pid)) == 2, 30)
        children = process_tree(process.pid)[1:]
        extend = json.dumps({"BenchSeconds": 0.1, "BenchPace": "fast"})
        body = {"Text": "Benchmark.", "VoiceId": "bench", "SampleRate": RATE, "ExtendData": extend}

        async def answered() -> bool:
            async with httpx.AsyncClient(timeout=30) as client:
                url = f"http://127.0.0.1:{relay_port}/stream-audio"
                answer = await client.post(url, json=body)
            return answer.status_code == 200 and len(answer.content) == 2 * 5 * CHUNK_SAMPLES * 2

        # The socket listens from before the fork: a request waits for a process to take it.
        assert await answered()
        assert await answered()
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            # A child that has exited but not been reaped yet counts as gone.
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            return state == "Z"

        assert await eventually(lambda: all(gone(pid) for pid in children), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        task.cancel()


def test_the_floor_latency_report_puts_each_figure_beside_direct() -> None:
    keys = ("one_ttfb_p50", "one_ttfb_p99", "burst_ttfb_p50", "burst_ttfb_p99", "request_cpu_ms")
    direct = dict(zip(keys, (0.1, 0.5, 8.0, 10.0, 0.05), strict=True))
    gateway = dict(zip(keys, (1.1, 0.4, 80.0, 120.0, 0.7), strict=True))
    result = {
        "rounds": 3,
        "floor_processes": 2,
        "gateway_workers": None,
        "burst_streams": 200,
        "targets": {"direct": {**direct, "errors": 0}, "gateway": {**gateway, "errors": 1}},
    }
    table = latency_report(result)
    assert "| direct | 0.10 | 0.50 | 8.00 | 10.00 | 0.050 | 0 |" in table
    row = "| 1.10 (+1.00) | 0.40 (-0.10) | 80.00 (+72.00) | 120.00 (+110.00) | 0.700 | 1 |"
    assert f"| gateway {row}" in table
    assert "the relay in 2 process(es), the gateway with its default worker(s)" in table


def test_cpu_ns_counts_a_process_and_its_childrens_cpu_exactly() -> None:
    # A parent that starts a child; both burn CPU, then say so and wait for their input to end.
    burn = (
        "import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    )
    child = burn + "\nprint(1, flush=True)\nsys.stdin.read()"
    script = (
        f"import subprocess\n{burn}\n"
        f"child = subprocess.Popen([sys.executable, '-c', {child!r}], stdin=subprocess.PIPE, "
        "stdout=subprocess.PIPE, text=True)\n"
        "child.stdout.readline()\nprint('burnt', flush=True)\nsys.stdin.read()\n"
        "child.stdin.close()\nchild.wait()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        assert process.stdout.readline().strip() == "burnt"
        exact = cpu_ns(process.pid) / 1e9
        ticks = cpu_seconds(process.pid)
        process.stdin.close()
        process.wait()
    # Both processes burnt 0.3 s, on top of starting an interpreter each.
    assert 0.6 <= exact < 3.0
    assert abs(exact - ticks) < 0.05  # /proc/PID/stat's ticks say the same, to a tick or so


def test_busiest_share_is_the_share_of_the_process_that_took_most_of_the_trees_cpu() -> None:
    # An idle parent whose child burns 0.4 s of CPU once told to: between two readings around
    # the burn, the child took nearly all of the tree's CPU.
    child = (
        "import sys, time\nsys.stdin.readline()\n"
        "end = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"
        "print('burnt', flush=True)\nsys.stdin.read()"
    )
    script = (
        f"import subprocess, sys\nchild = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        "print(child.pid, flush=True)\nchild.wait()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        child_pid = int(process.stdout.readline())
        before = cpu_by_process(process.pid)
        assert set(before) == {process.pid, child_pid}
        process.stdin.write("go\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "burnt"
        after = cpu_by_process(process.pid)
        process.stdin.close()
        process.wait()
    assert sum(after[child_pid]) - sum(before[child_pid]) >= 0.35
    assert busiest_share(before, after) > 0.9
    # Two processes alike: half each; a process new since the first reading counts from 0;
    # nothing taken: 0.
    assert busiest_share({1: (1.0, 0.0), 2: (2.0, 0.0)}, {1: (1.5, 0.0), 2: (2.0, 0.5)}) == 0.5
    assert busiest_share({1: (1.0, 0.0)}, {1: (1.25, 0.25), 2: (1.0, 0.5)}) == 0.75
    assert busiest_share({1: (1.0, 0.5)}, {1: (1.0, 0.5)}) == 0.0


def test_waited_ns_counts_the_time_a_process_waited_for_a_core() -> None:
    # Three processes that burn 0.3 s of CPU each on the same core take turns on it: each
    # waits for it about twice as long as it runs (the other two's turns).
    burn = (
        "import os, sys, time\nos.sched_setaffinity(0, {int(sys.argv[1])})\n"
        "end = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
        "print('burnt', flush=True)\nsys.stdin.read()"
    )
    core = min(os.sched_getaffinity(0))
    burners = [
        subprocess.Popen(
            [sys.executable, "-c", burn, str(core)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for process in burners:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "burnt"
        waited = [waited_ns(process.pid) / 1e9 for process in burners]
        ran = [cpu_ns(process.pid) / 1e9 for process in burners]
    finally:
        for process in burners:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.close()
            process.wait()
            process.stdout.close()
    # Each ran its 0.3 s (and its interpreter's start) and waited for the others' turns: in
    # all, longer than they ran. The time on the core, read by mistake, would be as long.
    assert all(0.3 <= r < 3.0 for r in ran)
    assert sum(waited) > 1.3 * sum(ran)
    assert max(waited) < 10.0


def test_settle_waits_until_a_starting_server_has_gone_quiet(tmp_path: Path) -> None:
    # A "server" that is up (its port would answer) but busy for 0.8 s of CPU first, as a
    # supervisor's workers are while they import and load: settle returns only after that,
    # with the CPU spent; one already quiet settles in two quarter-seconds.
    busy = (
        "import sys, time\nend = time.process_time() + 0.8\n"
        "while time.process_time() < end: pass\nsys.stdin.read()"
    )
    quiet = "import sys\nsys.stdin.read()"
    for script, burnt in ((busy, True), (quiet, False)):
        process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
        server = Server("starting", process, 0, tmp_path / "log")
        try:
            if not burnt:
                settle(server)  # past the interpreter's own start-up
            waited = settle(server)
            spent = cpu_ns(process.pid) / 1e9
        finally:
            assert process.stdin is not None
            process.stdin.close()
            process.wait()
        assert waited >= 0.5  # two quarter-seconds at the least
        if burnt:
            assert spent >= 0.8 and waited >= 0.8
        else:
            assert waited < 0.8


def test_interleaved_bursts_compare_the_copies_turn_by_turn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Scripted bursts: the machine's speed halves every other turn; the second copy always
    # costs 10 % more than the first in the same turn.
    taken: list[str] = []

    def burst(server: Any, workdir: Path, callers: int, rounds: int, spy: Any) -> dict[str, float]:
        taken.append(server)
        turn = (len(taken) - 1) // 2
        slow = 2.0 if turn % 2 else 1.0
        own = 1.1 if server == "b" else 1.0
        return {"ms_per_request": 0.4 * slow * own, "ttfb_p99": 50.0 * slow * own, "errors": 0}

    monkeypatch.setattr(hotpath, "burst", burst)
    figures: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    pairs = cast(Any, [(Path("A"), "a"), (Path("B"), "b")])
    hotpath.interleaved(pairs, tmp_path, 200, 6, figures)
    hotpath.show_ratios([Path("A"), Path("B")], figures)
    # Every other turn in the other order.
    assert taken == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b", "b", "a"]
    out = capsys.readouterr().out
    assert "B / A, ms_per_request, turn by turn: median 1.100 (quartiles 1.100-1.100) of 6" in out
    assert "B / A, ttfb_p99, turn by turn: median 1.100" in out


def test_the_floor_report_puts_each_figure_beside_nginx() -> None:
    figures = {"server_cpu_share": 0.1, "ttfb_p99": 3.0, "errors": 0}
    result = {
        "streams": 200,
        "rounds": 3,
        "targets": {
            "nginx": {**figures, "server_cpu_ms_per_stream_s": 0.8},
            "floor relay": {**figures, "server_cpu_ms_per_stream_s": 2.0},
        },
    }
    table = floor_report(result)
    assert "| nginx | 0.800 | 1.00 |" in table
    assert "| floor relay | 2.000 | 2.50 |" in table


async def test_realtime_pacing_shows_in_the_gaps_and_the_total() -> None:
    task, port = await start_upstream()
    try:
        data = await run(arguments(port, requests=2, seconds=0.3, pace="realtime"))
    finally:
        task.cancel()
    for result in data["results"]:
        assert result["total"] >= 0.3 * 1000 - 25  # 15 chunks, 20 ms apart
        assert abs(float(np.median(result["gaps"])) - 20.0) < 5.0


async def test_dropped_requests_hang_up_midway() -> None:
    task, port = await start_upstream()
    try:
        data = await run(
            arguments(port, requests=20, drop=0.5, seconds=0.5, pace="realtime", concurrency=10)
        )
    finally:
        task.cancel()
    dropped = [r for r in data["results"] if r["dropped"]]
    complete = [r for r in data["results"] if not r["dropped"]]
    full = 0.5 * RATE * 2
    assert dropped and complete
    assert all(r["bytes"] < full for r in dropped)
    assert all(r["bytes"] == full for r in complete)
    assert not any(r["error"] for r in data["results"])


async def test_the_upstream_waits_the_asked_delay_before_its_first_byte() -> None:
    task, port = await start_upstream()
    try:
        data = await run(arguments(port, requests=2, concurrency=1, delay=0.2))
    finally:
        task.cancel()
    # A lower bound only (a loaded machine may add to it): the mock did wait.
    assert all(r["status"] == 200 and r["ttfb"] >= 150 for r in data["results"])


async def test_the_load_generator_spaces_its_requests_and_opens_a_connection_for_each() -> None:
    opened = 0

    def counted() -> asyncio.Protocol:
        nonlocal opened
        opened += 1
        return UpstreamProtocol()

    server = await asyncio.get_running_loop().create_server(counted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        spaced = await run(arguments(port, requests=3, concurrency=1, pause=0.2, fresh=True))
        fresh = opened
        kept = await run(arguments(port, requests=3, concurrency=1))
    finally:
        server.close()
    results = spaced["results"] + kept["results"]
    assert [r["status"] for r in results] == [200] * 6
    assert not any(r["error"] for r in results)
    assert all(r["bytes"] == 0.2 * RATE * 2 for r in results)
    assert fresh == 3  # --fresh: a connection per request
    assert opened == 4  # without it: one kept-alive connection for all three
    assert spaced["wall"] >= 0.4  # two pauses between three requests


async def test_the_load_generator_takes_a_new_connection_after_an_answer_that_closes() -> None:
    # A server that says "Connection: close" (a worker shedding the connection, a draining
    # gateway) and closes a moment later: the next request goes on a new connection, not on
    # the one closing under it.
    opened = 0
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npcm!"

    class Closing(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            nonlocal opened
            opened += 1
            self.transport = cast(asyncio.Transport, transport)

        def data_received(self, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                self.transport.write(answer)
                asyncio.get_running_loop().call_later(0.1, self.transport.close)

    server = await asyncio.get_running_loop().create_server(Closing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        data = await run(arguments(port, requests=3, concurrency=1))
    finally:
        server.close()
    assert [(r["status"], r["bytes"], r["error"]) for r in data["results"]] == [(200, 4, "")] * 3
    assert opened == 3


def test_the_load_generator_takes_texts_and_voices_in_turn() -> None:
    plan = Plan(
        "http://127.0.0.1:1/stream-audio",
        24000,
        1.0,
        "fast",
        "a,b",
        "unused",
        texts=("one", "two", "three"),
        delay=0.15,
    )
    bodies = [json.loads(plan.request(n).split(b"\r\n\r\n", 1)[1]) for n in range(4)]
    assert [(b["VoiceId"], b["Text"]) for b in bodies] == [
        ("a", "one"),
        ("b", "two"),
        ("a", "three"),
        ("b", "one"),
    ]
    assert json.loads(bodies[0]["ExtendData"])["BenchDelay"] == 0.15
    assert plan.varies


def test_the_tone_chunks_join_into_a_continuous_440_hz_sine() -> None:
    from bench.upstream import CHUNKS

    pcm = b"".join(chunk.split(b"\r\n")[1] for chunk in CHUNKS * 4)
    assert abs(peak_frequency(pcm, RATE) - 440) <= RATE / (len(pcm) // 2)
    x = np.frombuffer(pcm, dtype="<i2").astype(float)
    # No jump between the last sample of one cycle of chunks and the first of the next.
    assert np.abs(np.diff(x)).max() <= 2 * math.pi * 440 / RATE * 0.4 * 32767 + 2


class _Transport:
    """Stands in for a connection's transport: counts hang-ups."""

    def __init__(self) -> None:
        self.aborted = 0

    def abort(self) -> None:
        self.aborted += 1


def _read(pieces: list[bytes], keep: bool) -> Response:
    response = Response()
    response.transport = cast(asyncio.Transport, _Transport())
    response.reset(Result(), 0.0, -1, keep=keep)
    for piece in pieces:
        response.data_received(piece)
    return response


@pytest.mark.parametrize("keep", [False, True])
def test_the_load_generator_reads_a_response_however_its_bytes_are_cut(keep: bool) -> None:
    from bench.upstream import CHUNKS, END, HEAD

    pcm = b"".join(chunk.split(b"\r\n")[1] for chunk in CHUNKS)
    answer = HEAD + b"".join(CHUNKS) + b"5;ext=1\r\n\r\n\r\n\r\r\n" + END
    whole = _read([answer], keep)
    assert whole.done and whole.result.status == 200 and whole.result.bytes == len(pcm) + 5
    # Every cut in two, and the answer as its HTTP chunks (one read each, as in real time).
    cuts = [[answer[:at], answer[at:]] for at in range(1, len(answer))]
    reads = [HEAD, *CHUNKS, b"5;ext=1\r\n\r\n\r\n\r\r\n", END]
    for pieces in [*cuts, reads]:
        response = _read(pieces, keep)
        assert response.done, pieces[0][-20:]
        assert response.result.bytes == len(pcm) + 5
        if keep:
            assert bytes(response.body or b"") == pcm + b"\r\n\r\n\r"
    # One read per chunk: the time to the first body byte, then one gap per chunk.
    assert len(_read(reads, keep).result.gaps) == len(CHUNKS)
    sized = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"
    for at in range(1, len(sized)):
        response = _read([sized[:at], sized[at:]], keep)
        assert response.done and response.result.status == 404 and response.result.bytes == 4


# ------------------------------------------------------------------ the fault soak


async def start_faulty(plan: FaultPlan) -> tuple[asyncio.Task[None], int, FaultyUpstream]:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    upstream = FaultyUpstream(plan)
    ready = asyncio.Event()
    task = asyncio.create_task(serve("127.0.0.1", port, ready, protocol=upstream.protocol))
    await ready.wait()
    return task, port, upstream


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 10 s) for ``condition`` to hold."""
    assert await eventually(condition, 10.0), "the condition never held"


def synthesis_body(voice: str = "v", text: str = "Hello.", seconds: float = 0.2) -> bytes:
    extend = json.dumps({"BenchSeconds": seconds})
    return json.dumps(
        {"Text": text, "VoiceId": voice, "SampleRate": 24000, "ExtendData": extend}
    ).encode()


async def ask(port: int, request_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send one synthesis request (0.2 s of voice "v" saying "Hello.") on a new connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = synthesis_body()
    writer.write(
        b"POST /stream-audio HTTP/1.1\r\nHost: x\r\nX-Request-Id: %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (request_id.encode(), len(body), body)
    )
    return reader, writer


async def stalled_answer(port: int, upstream: FaultyUpstream, request_id: str) -> bytes:
    """Everything the upstream sends before it stalls: once it holds the stall, the client
    half-closes, the upstream closes, and the client reads all there was."""
    reader, writer = await ask(port, request_id)
    await until(lambda: upstream.ledger.stalls_open == 1)
    writer.write_eof()
    received = await reader.read()
    await until(lambda: upstream.ledger.stalls_open == 0)
    writer.close()
    return received


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The data of a chunked body, and whether its last chunk came."""
    data, pos = bytearray(), 0
    while (end := body.find(b"\r\n", pos)) >= 0:
        size = int(body[pos:end], 16)
        if size == 0:
            return bytes(data), True
        data += body[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(data), False


async def test_the_faulty_upstream_answers_in_full_by_content() -> None:
    task, port, upstream = await start_faulty(HEALTHY)
    try:
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"http://127.0.0.1:{port}/stream-audio", content=synthesis_body("v", "Hi.")
            )
    finally:
        task.cancel()
    assert answer.status_code == 200
    assert answer.headers["x-sample-rate"] == "24000"
    assert answer.content == expected_pcm("v", "Hi.", answer_samples(0.2, 24000))
    assert upstream.ledger.kinds == {"ok": 1}


async def test_the_faulty_upstream_answers_5xx_and_429_with_retry_after() -> None:
    task, port, upstream = await start_faulty(FaultPlan(error=1.0))
    try:
        async with httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{port}/stream-audio"
            errors = [(await client.post(url, content=synthesis_body())) for _ in range(20)]
            upstream.set_plan(FaultPlan(throttle=1.0, retry_after=2))
            throttled = await client.post(url, content=synthesis_body())
    finally:
        task.cancel()
    assert {a.status_code for a in errors} == {500, 502, 503}  # the draw picks each of them
    assert all(a.json()["error"]["message"] for a in errors)
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "2"
    assert upstream.ledger.kinds == {"throttle": 1}


async def test_the_faulty_upstream_resets_the_connection_before_the_first_byte() -> None:
    task, port, upstream = await start_faulty(FaultPlan(reset=1.0))
    try:
        reader, writer = await ask(port, "r-1")
        with pytest.raises(ConnectionResetError):  # an RST, not a clean end of stream
            await reader.read()
        writer.close()
    finally:
        task.cancel()
    assert upstream.ledger.kinds == {"reset": 1}


async def test_the_faulty_upstream_stalls_before_the_first_byte() -> None:
    task, port, upstream = await start_faulty(FaultPlan(stall_before=1.0))
    try:
        sent = [await stalled_answer(port, upstream, f"r-{n}") for n in range(8)]
    finally:
        task.cancel()
    assert upstream.ledger.kinds == {"stall_before": 8}
    nothing = [s for s in sent if s == b""]
    head_only = [s for s in sent if s.startswith(b"HTTP/1.1 200 OK\r\n")]
    assert nothing and head_only and len(nothing) + len(head_only) == 8
    assert all(s.endswith(b"\r\n\r\n") for s in head_only)  # the head, and no byte of audio


async def test_the_faulty_upstream_stalls_mid_answer() -> None:
    task, port, upstream = await start_faulty(FaultPlan(stall_mid=1.0))
    try:
        sent = [await stalled_answer(port, upstream, f"r-{n}") for n in range(4)]
    finally:
        task.cancel()
    assert upstream.ledger.kinds == {"stall_mid": 4}
    whole = expected_pcm("v", "Hello.", answer_samples(0.2, 24000))
    for answer in sent:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        audio, ended = dechunk(body)
        assert not ended
        assert 0 < len(audio) < len(whole) and whole.startswith(audio)


async def test_the_faulty_upstream_draws_the_same_faults_for_the_same_request_ids() -> None:
    plans = []
    for _ in range(2):
        upstream = FaultyUpstream(SOAK)
        plans.append([upstream.draw(f"soak-{n % 50}")[0] for n in range(200)])
    assert plans[0] == plans[1]
    assert set(plans[0]) == {"ok", "error", "reset", "stall_before", "stall_mid", "throttle"}
    assert 0.2 < plans[0].count("error") / 200 < 0.4  # roughly the plan's 30 %


# The integrity check, on crafted answers: voice "a" and voice "b" saying the same text.
WHOLE_A = expected_pcm("a", "Text (soak-1)", 9600)
WHOLE_B = expected_pcm("b", "Text (soak-1)", 9600)
CANDIDATES = {"a": WHOLE_A, "b": WHOLE_B}


def test_the_integrity_check_passes_a_whole_answer_of_either_voice_and_its_start() -> None:
    assert check(WHOLE_A, CANDIDATES) == Verdict("complete", "a")
    assert check(WHOLE_B, CANDIDATES) == Verdict("complete", "b")
    assert check(WHOLE_B[:6000], CANDIDATES) == Verdict("cut", "b")
    assert check(b"", CANDIDATES).kind == "empty"
    # Another text's answer by the same voice is not this one.
    assert check(expected_pcm("a", "Text (soak-2)", 9600), CANDIDATES).kind == "garbled"


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (WHOLE_A[:4000] + WHOLE_A[2000:], "duplicated"),  # a chunk sent twice
        (WHOLE_A + WHOLE_A[-960:], "duplicated"),  # the last chunk again, after the end
        (WHOLE_A[:2000] + WHOLE_A[4000:], "skipped"),  # a chunk lost
        (WHOLE_A[:2000] + WHOLE_B[2000:], "mixed"),  # failed over mid-answer
        (WHOLE_A[:2000] + WHOLE_B, "mixed"),  # the fallback from its start, after audio
        (WHOLE_A[:2001], "garbled"),  # not whole samples
        (WHOLE_A[:2000] + WHOLE_A[2001:4001], "garbled"),  # shifted by a byte
        (WHOLE_A[:2000] + bytes(2000), "garbled"),  # silence no voice sent
        (bytes(2000), "garbled"),
    ],
)
def test_the_integrity_check_catches_a_bad_answer(body: bytes, kind: str) -> None:
    verdict = check(body, CANDIDATES)
    assert verdict.kind == kind
    assert not verdict.sound


async def test_the_load_generator_checks_each_answer_by_content() -> None:
    task, port, upstream = await start_faulty(FaultPlan(stall_mid=0.5))
    try:
        data = await run(
            arguments(port, requests=20, concurrency=20, ids="t", expect="other,bench", timeout=2.0)
        )
    finally:
        task.cancel()
    results = {r["id"]: r for r in data["results"]}
    assert len(results) == 20
    for request_id, kinds in upstream.ledger.by_request.items():
        result = results[request_id]
        assert result["answer_voice"] == "bench"
        # A stalled answer is the start of the right audio; every other one is all of it.
        assert result["verdict"] == ("cut" if kinds == ["stall_mid"] else "complete")
    assert {"cut", "complete"} == {r["verdict"] for r in results.values()}


def test_a_small_fault_soak_runs_end_to_end(tmp_path: Path) -> None:
    size = SoakSize(
        requests=200,
        callers=20,
        outage_rounds=1,
        outage_requests=20,
        saturation_callers=100,
        saturation_requests=100,
        saturation_seconds=1.0,
    )
    figures = Soak(tmp_path, size).run()
    for key in ("breaker_on", "breaker_off"):
        faults = figures["faults"]["passes"][key]
        assert faults["requests"] == 200
        assert faults["complete"] + faults["hung_up"] + faults["cut_by_upstream_stall"] > 180
        assert faults["bad_audio"] == {"duplicated": 0, "skipped": 0, "mixed": 0, "garbled": 0}
    exposed = figures["faults"]["passes"]["breaker_off"]
    assert exposed["upstream_requests"]["exposed"] >= 200  # every request met the faults
    assert figures["faults"]["held_after"] == {"in_flight": 0, "queued": 0, "stalls_open": 0}
    assert figures["outage"]["breaker_before"] == "open"
    saturation = figures["saturation"]
    assert saturation["statuses"] == {"200": 100}
    assert saturation["complete"] == 100 and saturation["bad_audio"] == 0
    # 100 callers on 50 slots: the later half find them full past the queue wait.
    assert saturation["answered_by"]["overflow"] == saturation["overflow_metric"] >= 10
    assert figures["gateway_log"]["errors"] == 0
    judged = {t.figure: t for t in soak_report.targets(figures)}
    assert len(judged) == 9
    assert all(judged[name].ok for name in judged if "audio" in name or "held" in name)
    report = "\n".join(soak_report.render(figures))
    assert report.startswith("## (6) Fault soak") and "| **share served**" in report


def test_a_run_of_some_scenarios_keeps_the_other_figures(tmp_path: Path) -> None:
    saved = tmp_path / "benchmarks.json"
    saved.write_text(
        json.dumps({"meta": {"date": "then"}, "figures": {"one_stream": 1, "soak": 2}})
    )
    figures, meta = merged(saved, {"soak": 3}, {"date": "now", "command": "c"}, partial=True)
    assert figures == {"one_stream": 1, "soak": 3}
    assert meta == {
        "date": "then",
        "remeasured": [{"date": "now", "command": "c", "scenarios": ["soak"]}],
    }
    whole, _ = merged(saved, {"soak": 4}, {"date": "now"}, partial=False)
    assert whole == {"soak": 4}
    # A later run of some of an earlier run's scenarios: the earlier note keeps the others.
    saved.write_text(json.dumps({"meta": meta, "figures": figures}))
    _, meta = merged(saved, {"soak": 5, "cache": 1}, {"date": "later", "command": "d"}, True)
    saved.write_text(json.dumps({"meta": meta, "figures": figures}))
    _, meta = merged(saved, {"cache": 2}, {"date": "last", "command": "e"}, partial=True)
    assert meta["remeasured"] == [
        {"date": "later", "command": "d", "scenarios": ["soak"]},
        {"date": "last", "command": "e", "scenarios": ["cache"]},
    ]


def _realtime(streams: int, ttfb_p99: tuple[float, float], gap_p99: tuple[float, float]) -> Any:
    """Scenario (3)'s figures for ``streams``: (direct, gateway) TTFB and gap p99."""

    def target(ttfb: float, gap: float, share: float) -> dict[str, float]:
        return {
            "ttfb_p50": ttfb / 2,
            "ttfb_p99": ttfb,
            "gap_p50": 20.0,
            "gap_p99": gap,
            "errors": 0,
            "server_cpu_share": share,
            "upstream_cpu_share": 0.1,
            "client_cpu_share": 0.05,
            "server_cpu_ms_per_stream_s": share * 1000 / streams,
            "upstream_cpu_ms_per_stream_s": 0.25,
            "client_cpu_ms_per_stream_s": 0.125,
        }

    return {
        "direct": target(ttfb_p99[0], gap_p99[0], 0.1),
        "nginx": target(ttfb_p99[0] + 0.5, gap_p99[0], 0.1),
        "gateway": target(ttfb_p99[1], gap_p99[1], 0.2),
        "streams": streams,
        "load_before": 1.5,
        "load_after": 2.5,
    }


def _suite_figures(many: Any) -> dict[str, Any]:
    """Every figure of scenarios (1) to (5), the 600-stream run's ``many``."""
    one = {n: {"ttfb_p50": 0.2, "ttfb_p99": 1.0} for n in ("direct", "nginx", "gateway")}
    cpu = {
        n: {
            "server_cpu_ms_per_audio_s": 0.1,
            "upstream_cpu_ms_per_audio_s": 0.03,
            "client_cpu_ms_per_audio_s": 0.1,
            "audio_s_per_wall_s": 1000.0,
        }
        for n in ("direct", "nginx", "gateway")
    }
    slow = {
        "idle_rss_kib": 100 * 1024,
        "peak_rss_kib": 100 * 1024 + 333 * 40,
        "active_streams": 333,
        "completed": 333,
        "kib_per_stream": 40.0,
        "runs": 3,
        "kib_per_stream_runs": [38.5, 40.0, 47.25],
    }
    local = {"ttfb_p50": 55.0, "ttfb_p99": 70.0}
    return {
        "one_stream": one,
        "cpu_full_speed": cpu,
        "realtime_streams": _realtime(200, (1.0, 6.0), (21.0, 22.0)),
        "realtime_many": many,
        "realtime_burst": _realtime(200, (5.0, 40.0), (21.0, 23.0)),
        "memory": {
            "slow": {"same_rate": {**slow, "kib_per_stream": 20.0}, "resampled": slow},
            "warm_up": 20,
            "drop_requests": 100,
            "dropped": 20,
            "errors": 0,
            "rss_before_kib": 1024,
            "rss_after_kib": 1024,
            "upstream_connections_before": 600,
            "upstream_connections_after": 600,
        },
        "local_voice": {
            "one_sentence": local,
            "three_sentences": local,
            "rtf_one_core": {"rtf": 0.06, "audio_s": 16.0, "wall_s": 1.0},
        },
    }


META = {
    "date": "now",
    "command": "python -m bench.run",
    "cores": 2,
    "cpu": "x86_64",
    "python": "3.11",
    "load_before": "1",
    "load_after": "2",
    "repeats": 3,
}


def test_the_report_gives_the_streams_held_at_600_beside_the_target() -> None:
    report = render(_suite_figures(_realtime(600, (2.0, 15.0), (25.0, 31.0))), META)
    held = next(line for line in report.splitlines() if line.startswith("| concurrent real-time"))
    # Added TTFB p99 13 ms ≤ 20, added gap p99 6 ms ≤ 10, no error: 600 streams held.
    assert (
        "| 600 (at 600: TTFB p99 +13.0 ms, gap p99 +6.0 ms, 0 errors) | ≥ 600 streams | pass |"
        in held
    )
    section = report[report.index("## (3)") : report.index("## (4)")]
    assert "**200 streams** (load average 1.50" in section
    assert "**600 streams** (load average 1.50" in section
    # Beside the server's, the mock upstream's and the load generator's CPU.
    assert "| mock upstream CPU share | 0.10 | 0.10 | 0.10 |" in section
    assert "| load generator CPU per stream-second | 0.125 | 0.125 | 0.125 |" in section
    assert "| server CPU share | - | 0.10 | 0.20 |" in section
    # The CPU ratio to nginx at 200 streams, the burst, the resampled memory: each a target,
    # beside the scenario that gives it.
    assert (
        "| gateway CPU / nginx CPU per real-time audio-second (24→48 kHz), 200 streams | "
        "(3) real-time streams | 2.00 x | ≤ 2.5 x | pass |" in report
    )
    assert (
        "| 200 callers in the same instant: added TTFB p99 | (3) real-time streams | 35.00 ms | "
        "≤ 50 ms | pass |" in report
    )
    assert (
        "| memory per active resampled stream, 24→48 kHz, fresh gateway | (4) memory | "
        "40.00 KiB | ≤ 64 KiB | pass |" in report
    )
    table = report[report.index("## Targets") : report.index("## (1)")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "|---" not in line]
    scenarios = [row.split(" | ")[1] for row in rows[1:]]
    assert rows[0].startswith("| Figure | Scenario |") and len(scenarios) == 15
    assert scenarios.count("(1) one stream") == 2 and scenarios.count("(5) local voice") == 2
    # Each scenario's section is in the report under the name its targets give.
    assert all(f"## {name[:3]}" in report for name in scenarios)
    assert "The figures of (1) to (5) are medians of 3 runs" in report
    assert "Medians of 3 gateways each." in report
    assert "**40.0 KiB per stream** (the gateways': 38.5, 40.0, 47.2)." in report


def test_the_real_time_table_splits_the_servers_cpu_into_its_own_and_the_kernels() -> None:
    """Scenario (3)'s table gives the server's CPU per stream-second in user mode and in the
    kernel, and its busiest process's share of it, where the run measured them, and leaves the
    rows out for a run that did not."""
    many = _realtime(600, (2.0, 15.0), (25.0, 31.0))
    figures = _suite_figures(many)
    plain = render(figures, META)
    assert "(user mode)" not in plain and "(its system calls)" not in plain
    assert "| the server's busiest process's share" not in plain
    for name, (user, system, busiest) in {
        "nginx": (0.2, 0.7, 0.5),
        "gateway": (1.9, 0.8, 0.9),
    }.items():
        figures["realtime_streams"][name]["server_user_ms_per_stream_s"] = user
        figures["realtime_streams"][name]["server_system_ms_per_stream_s"] = system
        figures["realtime_streams"][name]["server_busiest_share"] = busiest
    split = render(figures, META).splitlines()
    assert "| of it in its own code (user mode) | - | 0.200 | 1.900 |" in split
    assert "| the server's busiest process's share of its CPU | - | 0.50 | 0.90 |" in split
    assert "| of it in the kernel (its system calls) | - | 0.700 | 0.800 |" in split
    # Only the 200-stream table has them: the 600-stream run did not measure them.
    assert sum(line.startswith("| of it in its own code") for line in split) == 1


def test_the_real_time_table_says_how_long_each_process_waited_for_a_core() -> None:
    """Scenario (3)'s table gives each process's wait for a core where the run measured it
    (the server's for nginx and the gateway only: direct's server is the upstream)."""
    figures = _suite_figures(_realtime(600, (2.0, 15.0), (25.0, 31.0)))
    rows = ("| server waiting", "| mock upstream waiting", "| load generator waiting")
    assert not any(line.startswith(rows) for line in render(figures, META).splitlines())
    for name, (server, upstream, client) in {
        "direct": (0.05, 0.05, 0.02),
        "nginx": (0.04, 0.06, 0.03),
        "gateway": (0.31, 0.09, 0.07),
    }.items():
        figures["realtime_many"][name].update(
            server_wait_share=server, upstream_wait_share=upstream, client_wait_share=client
        )
    lines = render(figures, META).splitlines()
    assert "| server waiting for a core (share) | - | 0.04 | 0.31 |" in lines
    assert "| mock upstream waiting for a core (share) | 0.05 | 0.06 | 0.09 |" in lines
    assert "| load generator waiting for a core (share) | 0.02 | 0.03 | 0.07 |" in lines
    # Only in the 600-stream table: the 200-stream run did not measure them.
    assert sum(line.startswith(rows) for line in lines) == 3


def test_streams_held_says_how_far_the_gateway_got() -> None:
    # At 600 the gap is 12 ms over direct's: held at 200 only.
    missed = streams_held(_suite_figures(_realtime(600, (2.0, 15.0), (25.0, 37.0))))
    assert not missed.ok and missed.value == 200
    assert missed.measured == "200 (at 600: TTFB p99 +13.0 ms, gap p99 +12.0 ms, 0 errors)"
    # An error at 600 is a miss too, however quick.
    erring = _realtime(600, (2.0, 3.0), (25.0, 26.0))
    erring["gateway"]["errors"] = 1
    assert streams_held(_suite_figures(erring)).value == 200
    # Not even 200: none held.
    figures = _suite_figures(_realtime(600, (2.0, 50.0), (25.0, 26.0)))
    figures["realtime_streams"] = _realtime(200, (1.0, 30.0), (21.0, 22.0))
    none = streams_held(figures)
    assert none.value == 0 and not none.ok and none.measured.startswith("< 200 (at 600: ")


def test_figures_are_medians_of_alternated_runs_and_errors_their_sum() -> None:
    server = {
        name: Server(name, cast(subprocess.Popen[bytes], None), port, Path("/dev/null"))
        for name, port in (("direct", 1), ("nginx", 2), ("gateway", 3))
    }
    bench = Bench(Path("."), quick=False, upstream=server["direct"], nginx=server["nginx"])
    bench.gateway = server["gateway"]
    calls: list[int] = []

    def measure(target: Server, rate: int) -> dict[str, float]:
        calls.append(target.port)
        return {"ttfb_p99": float(len(calls)), "errors": 1 if target.port == 3 else 0}

    found = bench.alternated(measure)
    assert calls == [1, 2, 3] * 3  # direct, nginx and the gateway in turn, three rounds
    assert found["direct"] == {"ttfb_p99": 4.0, "errors": 0}  # of 1, 4, 7
    assert found["gateway"] == {"ttfb_p99": 6.0, "errors": 3}  # of 3, 6, 9; one error a run


def test_latency_counts_errors_but_not_hang_ups() -> None:
    results = [
        {"status": 200, "error": "", "dropped": False, "ttfb": 1.0, "gaps": [20.0], "bytes": 9},
        {"status": 200, "error": "", "dropped": True, "ttfb": 1.0, "gaps": [], "bytes": 3},
        {"status": 503, "error": "", "dropped": False, "ttfb": 1.0, "gaps": [], "bytes": 0},
        {"status": 200, "error": "timeout", "dropped": False, "ttfb": 0, "gaps": [], "bytes": 5},
    ]
    figures = latency({"results": results, "wall": 1.0, "cpu": 0.5, "run_cpu": 0.25})
    assert figures["ok"] == 1 and figures["errors"] == 2
    assert figures["client_cpu"] == 0.25  # the run's, not the process's with its start


# ------------------------------------------------------------------ pipelined pieces


async def test_the_clip_upstream_answers_the_whole_clip_after_its_synthesis() -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    ready = asyncio.Event()
    task = asyncio.create_task(serve("127.0.0.1", port, ready, protocol=ClipProtocol))
    await ready.wait()
    text = "Thanks for calling the clinic."
    try:
        url = f"http://127.0.0.1:{port}/stream-audio"
        answers = [await listen(url, "any", text) for _ in range(2)]  # one connection, kept
    finally:
        task.cancel()
    for answer in answers:
        assert answer["bytes"] == clip_bytes(text) == 2 * round(len(text) * 60 * 24)
        # Nothing before the synthesis is over (a lower bound: a loaded machine only adds).
        assert answer["first_audio_ms"] >= SYNTHESIS_MS_PER_CHAR * len(text)
        assert answer["underrun_ms"] == 0  # each chunk holds far more audio than its spacing


def test_the_pieces_scenario_runs_end_to_end(tmp_path: Path) -> None:
    figures = run_pieces(tmp_path, runs=1)
    assert figures["pieced"]["bytes_ok"] and figures["unsplit"]["bytes_ok"]
    assert figures["pieces"][0] == len("Thanks for calling the clinic.")
    assert len(figures["pieces"]) > 2
    assert {t.figure for t in pieces_targets(figures)} == {
        "pipelined pieces: playback underrun at the caller (median)",
        "pipelined pieces: first audio vs the text unsplit",
    }
    report = "\n".join(render_pieces(figures))
    assert report.startswith("## (7) Pipelined pieces") and "| first audio |" in report


# ------------------------------------------------------------------ the phrase cache


def test_unique_texts_are_unique_and_cacheable() -> None:
    texts = [unique_text(n) for n in range(5000)]
    assert len(set(texts)) == 5000
    assert not any(c.isdigit() for t in texts for c in t)  # skip_digits would skip them
    assert max(len(t) for t in texts) <= 200  # the default max_text_chars


def test_a_small_cache_run_produces_its_figures(tmp_path: Path) -> None:
    try:
        redis_server()
    except RuntimeError:
        if os.environ.get("CI") == "true":
            raise  # the CI installs it: its absence is a broken runner
        pytest.skip("redis-server is not installed")
    size = CacheSize(repeats=1, hits=5, unique=2, cpu_hits=20, cpu_live=4, mix=40, mix_callers=10)
    figures = CacheBench(tmp_path, size, workers=1).run()
    assert figures["hit_memory"]["count"] == figures["hit_redis"]["count"] == 5
    assert figures["miss"]["count"] == figures["live"]["count"] == 2
    for key in ("hit_memory", "hit_redis", "miss", "live"):
        assert figures[key]["p50"] > 0
    assert figures["live"]["p50"] >= 100  # through the mock's 150 ms delay, not from a cache
    cpu = figures["cpu"]
    for key in ("hit_memory", "hit_memory_native", "hit_redis"):
        assert cpu[key]["hits"] == 20
    assert cpu["live"]["ok"] == 4 and cpu["live"]["hits"] == 0
    mix = figures["mix"]
    answers = mix["answers"]
    assert mix["ok"] == 40 and sum(answers.values()) == 40
    assert mix["lookups"] == {kind: float(count) for kind, count in answers.items()}
    assert mix["upstream_requests"] == answers["miss"]
    # Every character asked for was either sent upstream (billed) or saved by the cache.
    assert mix["characters_upstream"] + mix["characters_saved"] == mix["characters_requested"]
    assert mix["characters_saved"] > 0
    # The gateway with memory_mb: 0 kept nothing in process: every hit was read from Redis.
    redis = figures["redis_gateway"]
    assert redis["memory_entries"] == redis["memory_bytes"] == 0
    assert redis["hits"] == redis["redis_keyspace_hits"] >= 25
    assert len(cache_report.targets(figures)) == 3
    report = "\n".join(cache_report.render(figures))
    assert report.startswith("## (8) Phrase cache") and "| hit, from Redis" in report


def test_the_profile_summary_gives_each_sample_to_the_deepest_layer_on_its_stack() -> None:
    root = "<module> (gateway/cli.py:1);Runner.run (asyncio/runners.py:118)"
    pump = f"{root};Synthesis.pump (gateway/synthesis.py:234)"
    raw = "\n".join(
        [
            # numpy under the converter is the converter's; the converter under the pump too
            f"{pump};Converter.feed (gateway/audio.py:160);clip (numpy/_core/fromnumeric.py:2) 7",
            # the socket write under the door's send is the write's
            f"{pump};write (gateway/front/custom_tts.py:61);Exchange.send (gateway/http1/"
            "exchange.py:125);ConnectionIO.write (gateway/http1/io.py:117) 5",
            f"{pump} 2",
            f"{root} 3",  # in C under the loop: epoll, socket reads, timers
            "Thread.run (threading.py:975) 1",
        ]
    )
    assert dict(layers(raw)) == {
        "converter (gateway/audio.py, soxr, numpy)": 7,
        "http1 socket write (transport.write: the send syscall)": 5,
        "Synthesis.pump, budgets": 2,
        "event loop in C (uvloop: epoll, socket reads, timers, task steps)": 3,
        "other (event loop, interpreter)": 1,
    }


def bench_module(module: str, *args: str) -> str:
    """The last line ``python -m module args`` prints (from the project's root; it must exit
    0 within two minutes)."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_the_door_harness_measures_its_requests(concurrency: int) -> None:
    """``bench.door``: requests through the custom door answered 200 (the harness fails on
    any other answer), their CPU counted; one at a time, split at the first audio byte."""
    last = bench_module(
        "bench.door", "--concurrency", str(concurrency), "--requests", "8", "--runs", "1"
    )
    assert last.startswith("median ")
    figures = json.loads(last.split(": ", 1)[1].rsplit(" of ", 1)[0])
    assert figures["us_per_request"] > 0
    assert figures["us_collector"] >= 0
    if concurrency == 1:
        assert figures["us_to_first_byte"] > 0 and figures["us_after_first_byte"] > 0
        assert figures["us_to_first_byte"] + figures["us_after_first_byte"] <= (
            figures["us_per_request"] * 1.5  # medians of their own; the whole is the mean
        )
    else:
        assert "us_to_first_byte" not in figures


@pytest.mark.parametrize("rate", [24000, 48000])
def test_the_relay_step_bench_relays_every_chunk_in_one_write_a_turn(rate: int) -> None:
    """``bench.relay_step``: each stream's relay runs the compiled step (where it is built),
    and each of its chunks reaches the caller's transport in one write a turn."""
    last = bench_module(
        "bench.relay_step", "--streams", "3", "--rounds", "4", "--runs", "2", "--rate", str(rate)
    )
    figures = json.loads(last)
    assert figures["chunks"] == 3 * 4 * 2 == figures["caller_writes"]
    assert figures["compiled_steps"] == (3 if RELAY_STEP == "compiled" else 0)
    assert figures["us_per_chunk"] > 0


def test_the_first_byte_steps_are_split_per_request_in_order() -> None:
    """``bench.first_byte``: marks of requests one at a time become each request's steps (a
    step's first mark), and the report's rows the medians between consecutive steps."""
    marks: list[tuple[str, int, int]] = []
    for start in (0, 10_000_000):
        for i, label in enumerate(first_byte.ORDER):
            marks.append((label, start + i * 1000 * (i + 1), start + i * 1000))
            if label == "answered":  # a second read of the upstream's answer: not a new step
                marks.append((label, start + 999_999, start + 999_999))
    marks.append(("request", 20_000_000, 20_000_000))  # a request not answered yet: left out
    requests = first_byte.requests_of(marks)
    assert len(requests) == 2
    assert [label for label in requests[1]] == list(first_byte.ORDER)
    rows = first_byte.steps(requests)
    assert [(r["from"], r["to"]) for r in rows[:2]] == [("request", "app"), ("app", "parse")]
    assert rows[0]["wall_us_p50"] == 2.0 and rows[0]["cpu_us_p50"] == 1.0
    last = len(first_byte.ORDER) - 1
    assert rows[-1] == {
        "from": "request",
        "to": "written",
        "wall_us_p50": last * (last + 1),
        "cpu_us_p50": float(last),
    }


def test_the_callers_times_line_up_with_the_gateways_steps() -> None:
    """``bench.first_byte --timeline``: each request's send and first byte at the caller and
    its marks in the gateway, in the order sent, become the timeline's spans (medians)."""
    requests, times = [], []
    for n in (1, 2, 3):
        base = n * 10_000_000
        at = {"request": 40, "sent": 240, "answered": 440, "written": 540}
        requests.append({k: (base + v * 1000 * n, 0) for k, v in at.items()})
        times.append((base, base + 600 * 1000 * n))
    rows = {row["step"]: row["wall_us_p50"] for row in first_byte.timeline(requests, times)}
    assert list(rows) == [label for label, _, _ in first_byte.TIMELINE]
    assert list(rows.values()) == [80.0, 400.0, 400.0, 200.0, 120.0, 1200.0]
    with pytest.raises(RuntimeError, match="2 timed"):
        first_byte.timeline(requests, times[:2])


@pytest.mark.parametrize(("pause", "fresh"), [(0.0, False), (0.05, True)])
def test_the_first_byte_bench_marks_every_step_of_a_real_gateway(
    tmp_path: Path, pause: float, fresh: bool
) -> None:
    report = first_byte.run(12, "fast", tmp_path, pause, fresh)
    assert report["errors"] == 0 and report["requests"] == 12
    assert (report["pause"], report["fresh"]) == (pause, fresh)
    steps = [(row["from"], row["to"]) for row in report["steps"]]
    assert steps[:-1] == list(itertools.pairwise(first_byte.ORDER))
    whole = report["steps"][-1]
    assert whole["from"] == "request" and whole["to"] == "written"
    assert whole["cpu_us_p50"] > 0 and whole["wall_us_p50"] >= whole["cpu_us_p50"] * 0.9
    assert "timeline" not in report


def test_the_first_byte_bench_lines_up_a_socket_callers_times_with_a_real_gateways(
    tmp_path: Path,
) -> None:
    report = first_byte.run(12, "fast", tmp_path, timed=True)
    assert report["errors"] == 0 and report["requests"] == 12
    rows = report["timeline"]
    assert [row["step"] for row in rows] == [label for label, _, _ in first_byte.TIMELINE]
    assert all(row["wall_us_p50"] > 0 for row in rows)
    # The last row is the caller's time to first byte: the report's, from the same requests.
    assert rows[-1]["wall_us_p50"] == pytest.approx(report["ttfb_ms_p50"]["gateway"] * 1000, 0.01)
    assert report["ttfb_ms_p50"]["direct"] > 0
    assert "the caller's side lined up" in first_byte.show(report)
    assert report["ttfb_ms_p50"]["gateway"] > report["ttfb_ms_p50"]["direct"] > 0


def test_the_resampler_bench_times_a_whole_first_piece() -> None:
    report = resampler_bench.pieces_report(["24000:48000"], [0.25], rounds=1)
    row = report["24000:48000 piece 0.25 s"]
    for name in ("polyphase", "soxr_block"):
        assert row[name]["first_audio_cpu_us"] > 0
        assert row[name]["cpu_ms_per_audio_s"] > 0
    ratio = row["polyphase_over_block"]["cpu_ms_per_audio_s"]
    assert ratio == round(
        row["polyphase"]["cpu_ms_per_audio_s"] / row["soxr_block"]["cpu_ms_per_audio_s"], 2
    )


def test_bench_idle_times_a_step_after_each_pause() -> None:
    """``bench.idle`` times its step after each pause (slept, not skipped), one row a pause,
    the first the back-to-back baseline its others are read against."""
    started = time.perf_counter()
    found = idle.measure([0.0, 0.02], steps=5, warm=1)
    assert time.perf_counter() - started >= 5 * 0.02  # the second pause slept before each step
    assert [row["pause_s"] for row in found] == [0.0, 0.02]
    assert all(row["cpu_us_p50"] > 0 and row["cpu_us_max"] >= row["cpu_us_p50"] for row in found)
    assert found[0]["cpu_vs_first"] == 1.0
    assert found[1]["cpu_vs_first"] == found[1]["cpu_us_p50"] / found[0]["cpu_us_p50"]
    assert idle.step() == idle.ENTRIES
    table = idle.show(found).splitlines()
    assert len(table) == 4 and table[3].startswith("| 0.02 | ")
