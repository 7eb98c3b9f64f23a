"""``tts-gateway serve`` with several worker processes, run as ops run it (a subprocess on
loopback, a loopback upstream): the workers share the port, ``/metrics`` sums them whichever
answers, the live gauges are live sums, the stream limit is split between them, a worker that
dies is replaced without losing its counts, and SIGTERM drains every one of them."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.served import (
    BODY,
    CHUNK,
    PATIENCE,
    GatedUpstream,
    Served,
    alive,
    open_stream,
    open_streams,
    post,
    requests_by_process,
    requests_counted,
    routing_file,
    sample,
    serving,
    settled,
    start,
    streams_by_process,
    until,
)
from tests.support import RawResponse, raw_post

pytestmark = pytest.mark.asyncio(loop_scope="module")

ANSWER = CHUNK * 3  # what the upstream answers, whole


@dataclass
class TwoWorkers:
    served: Served
    upstream: GatedUpstream
    config: Path
    metrics_dir: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def two(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TwoWorkers]:
    """One supervisor with two workers for the tests of this module that leave it serving."""
    tmp = tmp_path_factory.mktemp("two-workers")
    async with GatedUpstream() as upstream:
        config = tmp / "gateway.yaml"
        # Two streams for the whole gateway: one per worker.
        routing_file(config, {"a": upstream.url}, "a", max_concurrent_streams=2, watch=False)
        env = {"TMPDIR": str(tmp)}
        async with serving("--config", str(config), "--workers", "2", env=env, workers=2) as s:
            [metrics_dir] = glob.glob(str(tmp / "tts-gateway-metrics-*"))
            yield TwoWorkers(s, upstream, config, metrics_dir)


async def test_two_workers_serve_the_port_and_metrics_sum_over_them(two: TwoWorkers) -> None:
    served = two.served
    workers = served.workers()
    assert len(workers) == 2 and served.pid not in workers
    counted_before = requests_by_process(two.metrics_dir)
    before = await served.metrics()
    # A stream held fills the worker it reached (its share of max_concurrent_streams: 2 is
    # one): new connections go to the other once that worker's load is published (a few tens
    # of ms; a request that reaches the full one before is refused, as a full gateway does).
    upstream = two.upstream
    upstream.hold()
    held = await open_stream(served.url)
    upstream.holding = False  # the held answer stays held, the next ones are not
    sent = refused = 0
    try:
        while sent < 5 and sent + refused < 200:
            response = await post(served.url)
            if response.status_code == 429:
                refused += 1
                continue
            assert response.status_code == 200
            assert response.content == ANSWER
            sent += 1
        upstream.open()
        assert await asyncio.wait_for(held.read_all(), PATIENCE) == CHUNK * 2
        sent += 1
    finally:
        upstream.open()
        held.close()
    await requests_counted(two.metrics_dir, counted_before, sent + refused)
    by_worker = requests_by_process(two.metrics_dir)
    assert set(by_worker) == workers and all(by_worker.values()), by_worker
    for _ in range(6):  # each scrape on a new connection: either worker may answer it
        after = await served.metrics()

        def grown(name: str, text: str = after, **labels: str) -> float:
            return sample(text, name, **labels) - sample(before, name, **labels)

        assert grown("tts_requests_total", status="200") == sent
        assert grown("tts_requests_total", status="429") == refused
        answered = sum(sample(after, "tts_requests_total", status=s) for s in ("200", "429"))
        assert answered == sum(by_worker.values())
        assert grown("tts_first_byte_seconds_count", provider="a") == sent
        assert grown("tts_first_byte_seconds_bucket", provider="a", le="+Inf") == sent
        assert grown("tts_streams_ended_total", reason="complete") == sent
        assert grown("tts_audio_seconds_total", provider="a") == pytest.approx(sent * 0.06)
        assert sample(after, "tts_streams_active") == 0
        # A gauge of a whole routing file: the largest over the workers, not their sum.
        assert sample(after, "tts_config_voices", source=str(two.config)) == 1


async def test_new_connections_fill_one_worker_while_it_is_light(two: TwoWorkers) -> None:
    # Requests one after another, each on a new connection: the workers fill in order, so one
    # worker, light, takes them (gateway.http1.accept.LoadBoard), where the kernel alone would
    # hand each to whichever worker woke first. Another takes one only when the first has not
    # come round to it within the overflow wait (a millisecond: a busy machine, where with two
    # busy loops taking both cores 4 of 20 went to the second). Split by who wakes first, 30 or
    # more of 40 on one worker would come about twice in a thousand runs.
    before = requests_by_process(two.metrics_dir)
    for _ in range(40):
        response = await post(two.served.url)
        assert response.status_code == 200
    taken = await requests_counted(two.metrics_dir, before, 40)
    assert max(taken.values()) >= 30, taken


async def test_a_full_worker_sheds_a_callers_kept_connection_to_the_other(
    two: TwoWorkers,
) -> None:
    # A caller's keep-alive connection reached a worker while it was light; a stream held there
    # then fills that worker (its share of the stream limit, one stream). Its answers to the
    # caller are refusals until it sheds the connection (gateway.http1.accept.SHEDDING: an
    # answer saying Connection: close); the caller's next connection goes to the other worker,
    # which serves it. Without shedding, the caller would be refused for as long as the stream
    # is held, with a worker free beside.
    served, upstream, metrics_dir = two.served, two.upstream, two.metrics_dir
    url = served.url + "/stream-audio"
    limits = httpx.Limits(max_connections=1)

    def holding() -> list[int]:
        return [pid for pid, n in streams_by_process(metrics_dir).items() if n]

    async with httpx.AsyncClient(timeout=PATIENCE, limits=limits) as caller:
        # The caller's connection and the held stream on one worker: both reach the first
        # worker while it is light, but on a busy machine either may overflow to the other.
        for _ in range(20):
            before = requests_by_process(metrics_dir)
            assert (await caller.post(url, json=BODY)).status_code == 200
            [kept] = await requests_counted(metrics_dir, before, 1)
            upstream.hold()
            held = await open_stream(served.url)
            upstream.holding = False
            assert await until(holding)
            [full] = holding()
            if full == kept:
                break
            upstream.open()
            assert await asyncio.wait_for(held.read_all(), PATIENCE) == CHUNK * 2
            held.close()
            assert await until(lambda: not holding())  # its end counted before the next try
        assert full == kept
        try:
            refusals: list[str | None] = []
            before = requests_by_process(metrics_dir)
            while len(refusals) < 500:
                response = await caller.post(url, json=BODY)
                if response.status_code == 200:
                    break
                assert response.status_code == 429
                refusals.append(response.headers.get("connection"))
            assert response.status_code == 200 and response.content == ANSWER, refusals
            # Refused on the full worker until a refusal closed the connection (the full one
            # may take the next connection too if the other is slow to come round to it, and
            # shed it again); then served by the other.
            assert refusals and refusals[-1] == "close", refusals
            counted = await requests_counted(metrics_dir, before, len(refusals) + 1)
            assert counted[full] == len(refusals)
        finally:
            upstream.open()
            assert await asyncio.wait_for(held.read_all(), PATIENCE) == CHUNK * 2
            held.close()


async def test_active_streams_are_a_live_sum_and_the_stream_limit_is_split(
    two: TwoWorkers,
) -> None:
    served, upstream = two.served, two.upstream
    upstream.hold()
    before = await served.metrics()
    held: list[RawResponse] = []
    refused = 0
    try:
        # max_concurrent_streams: 2 over two workers is one stream each. Which worker takes a
        # connection is the kernel's choice: open streams until two are held, then every
        # further one must be refused, whichever worker it reaches.
        for _ in range(200):
            if len(held) == 2 and refused >= 6:
                break
            response = await raw_post(served.url, "/stream-audio", BODY)
            if response.status == 200:
                assert len(held) < 2, "a third stream was admitted"
                assert await asyncio.wait_for(response.read_chunk(), PATIENCE) == CHUNK
                held.append(response)
            else:
                assert response.status == 429
                assert response.headers["retry-after"] == "1"
                refused += 1
                response.close()
        assert len(held) == 2 and refused >= 6
        assert sorted(streams_by_process(two.metrics_dir).values()) == [1, 1]
        assert await settled(served, "tts_streams_active", 2) == 2
        after = await served.metrics()
        assert (
            sample(after, "tts_requests_total", status="429")
            - sample(before, "tts_requests_total", status="429")
            == refused
        )
        upstream.open()
        for response in held:
            assert await asyncio.wait_for(response.read_all(), PATIENCE) == CHUNK * 2
        assert await settled(served, "tts_streams_active", 0) == 0
    finally:
        upstream.open()
        for response in held:
            response.close()


async def test_a_killed_worker_is_replaced_and_its_counts_stay_in_the_sum(
    two: TwoWorkers,
) -> None:
    served, upstream = two.served, two.upstream
    upstream.hold()
    stream = await open_stream(served.url)
    try:
        assert await settled(served, "tts_streams_active", 1) == 1
        [victim] = [pid for pid, n in streams_by_process(two.metrics_dir).items() if n == 1]
        upstream.holding = False  # later requests are answered whole; the held one stays held
        total = sample(await served.metrics(), "tts_requests_total", status="200")
        assert requests_by_process(two.metrics_dir)[victim] >= 1  # the held stream's 200

        os.kill(victim, signal.SIGKILL)
        with contextlib.suppress(ValueError, ConnectionError, asyncio.IncompleteReadError):
            await asyncio.wait_for(stream.read_all(), PATIENCE)  # cut off with its worker
        await served.wait_for(f"(pid {victim}) exited with -9")
        assert await until(lambda: len(served.workers()) == 2 and victim not in served.workers()), (
            served.log
        )
        # The gateway answers all along (the other worker, then the new one too).
        assert (await post(served.url)).status_code == 200
        # The dead worker's requests stay counted; its live stream is gone from the gauge.
        assert sample(await served.metrics(), "tts_requests_total", status="200") == total + 1
        assert await settled(served, "tts_streams_active", 0) == 0
        assert victim in requests_by_process(two.metrics_dir)
    finally:
        upstream.open()
        stream.close()
    await served.wait_for("Application startup complete", times=3)


async def test_a_worker_that_dies_at_start_is_started_again_after_a_pause(
    two: TwoWorkers,
) -> None:
    served = two.served
    good = two.config.read_text()
    # A file that went bad after the gateway started: a new worker cannot load it.
    two.config.write_text('{"providers": {}, "voices": {"v": {"provider": "gone"}}}')
    try:
        [victim, *_] = sorted(served.workers())
        os.kill(victim, signal.SIGKILL)
        await served.wait_for("exited with 1; starting another in")
        # It says why, on the log, without a traceback.
        await served.wait_for("voices.v.provider: unknown provider 'gone'")
        assert "invalid routing file" in served.log
        # A SIGHUP while that worker waits to be started again: the live worker refuses the
        # bad file and keeps serving; the supervisor goes on.
        refused = served.count("reload refused")
        served.signal(signal.SIGHUP)
        await served.wait_for("reload refused", times=refused + 1)
        assert (await post(served.url)).status_code == 200
    finally:
        two.config.write_text(good)
    reloaded = served.count("reloaded ")
    served.signal(signal.SIGHUP)
    await served.wait_for("reloaded ", times=reloaded + 1)
    # The worker is started again once its pause is over, on the file as it is now.
    assert await until(lambda: len(served.workers()) == 2)
    await served.wait_ready(2)
    assert served.process.returncode is None
    assert "Traceback" not in served.log, served.log
    for _ in range(4):
        assert (await post(served.url)).status_code == 200


async def test_a_sighup_while_the_workers_start_reaches_them_once_they_can_reload(
    tmp_path: Path,
) -> None:
    async with GatedUpstream() as upstream:
        config = tmp_path / "gateway.yaml"
        routing_file(config, {"a": upstream.url}, "a", watch=False)
        served = await start("--config", str(config), "--workers", "2")
        try:
            assert await until(lambda: len(served.workers()) == 2)
            first = served.workers()
            served.signal(signal.SIGHUP)  # while they are still starting
            await served.wait_ready(2)
            # Each worker reloads once it can; none died of it, none was restarted.
            await served.wait_for("reloaded ", times=2)
            assert served.workers() == first
            assert served.count("exited with") == 0, served.log
        finally:
            await served.kill_all()


async def test_sigterm_drains_every_worker_and_leaves_nothing_behind(tmp_path: Path) -> None:
    async with GatedUpstream() as upstream:
        config = tmp_path / "gateway.yaml"
        routing_file(config, {"a": upstream.url}, "a", drain_seconds=1)
        served = await start(
            "--config", str(config), "--workers", "2", env={"TMPDIR": str(tmp_path)}
        )
        streams: list[RawResponse] = []
        try:
            await served.wait_ready(2)
            workers = served.workers()
            [metrics_dir] = glob.glob(str(tmp_path / "tts-gateway-metrics-*"))
            upstream.hold()

            def streaming() -> set[int]:
                return {pid for pid, n in streams_by_process(metrics_dir).items() if n}

            # Opened at one instant: a burst reaches both workers.
            streams += await open_streams(served.url, 48)
            assert streaming() == workers  # both workers stream
            served.signal(signal.SIGTERM)
            await served.wait_for("draining:", times=2)
            # Half the streams go on during the drain and finish whole; the others run past
            # drain_seconds and are ended then, with a proper last chunk.
            finishing = len(streams) // 2
            upstream.release(finishing)
            rests = [await asyncio.wait_for(stream.read_all(), PATIENCE) for stream in streams]
            assert sorted(rests) == [b""] * (len(streams) - finishing) + [CHUNK * 2] * finishing
            assert await asyncio.wait_for(served.process.wait(), PATIENCE) == 0
            await served.stop()
        finally:
            upstream.open()
            for stream in streams:
                stream.close()
            await served.kill_all()
    assert served.count("end=drain") == len(streams) - finishing, served.log
    assert served.count("end=complete") == finishing, served.log
    assert not any(alive(pid) for pid in workers)
    assert not glob.glob(str(tmp_path / "tts-gateway-metrics-*"))  # its directory is removed
    assert "Traceback" not in served.log and " ERROR " not in served.log, served.log
    with pytest.raises(OSError):  # nothing listens any more
        await asyncio.open_connection("127.0.0.1", served.port)


async def test_workers_drain_and_exit_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    async with GatedUpstream() as upstream:
        config = tmp_path / "gateway.yaml"
        routing_file(config, {"a": upstream.url}, "a", drain_seconds=1)
        # Killed, the supervisor leaves its metrics directory behind: here, not in /tmp.
        env = {"TMPDIR": str(tmp_path)}
        served = await start("--config", str(config), "--workers", "2", env=env)
        workers: set[int] = set()
        try:
            await served.wait_ready(2)
            workers = served.workers()
            os.kill(served.pid, signal.SIGKILL)  # it can pass nothing on
            # Orphans would go on serving the port with nobody to replace or reload them.
            assert await until(lambda: not any(alive(pid) for pid in workers)), served.log
            await served.wait_for("the supervisor is gone", times=2)
            await served.wait_for("Application shutdown complete", times=2)
        finally:
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await served.kill_all()


async def test_serve_with_no_routing_file_runs_a_worker_per_core_offline() -> None:
    cores = len(os.sched_getaffinity(0))
    # Any attempt to reach the network goes to a closed port.
    dead = "http://127.0.0.1:9"
    env = {"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead}
    async with serving(env=env, workers=cores if cores > 1 else 0) as served:
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            response = await client.post(
                served.url + "/stream-audio", json={"Text": "Hello there.", "SampleRate": 16000}
            )
        assert response.status_code == 200
        assert len(response.content) / 2 / 16000 > 0.3
        if cores > 1:
            assert f"with {cores} worker processes" in served.log


async def test_workers_1_is_one_process_with_its_own_registry(tmp_path: Path) -> None:
    async with GatedUpstream() as upstream:
        config = tmp_path / "gateway.yaml"
        routing_file(config, {"a": upstream.url}, "a")
        async with serving("--config", str(config), "--workers", "1") as served:
            assert served.workers() == set()
            assert (await post(served.url)).content == ANSWER
            metrics = await served.metrics()
            assert sample(metrics, "tts_requests_total", status="200") == 1
            # Read from the providers' live state at scrape time (one process only).
            assert "tts_breaker_state{provider=" in metrics
            served.signal(signal.SIGHUP)
            await served.wait_for("reloaded ")
            assert served.process.returncode is None


def stale_counts(directory: Path) -> None:
    """Leave in ``directory`` what a process of an earlier run counted: 1000 requests."""
    program = (
        "from prometheus_client import Counter\n"
        "Counter('tts_requests', 'x', ['status']).labels('200').inc(1000)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", program], env=env, check=True, timeout=60)
    assert glob.glob(str(directory / "counter_*.db"))


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_an_operators_metrics_directory_is_used_and_an_earlier_runs_counts_cleared(
    tmp_path: Path, workers: str
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    stale_counts(directory)
    async with GatedUpstream() as upstream:
        config = tmp_path / "gateway.yaml"
        routing_file(config, {"a": upstream.url}, "a")
        env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
        async with serving("--config", str(config), "--workers", workers, env=env) as served:
            assert (await post(served.url)).status_code == 200
            assert sample(await served.metrics(), "tts_requests_total", status="200") == 1
            used = set(requests_by_process(str(directory)))
            assert used and used <= {served.pid, *served.workers()}


async def test_an_operators_metrics_directory_that_does_not_exist_yet_is_made(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "run" / "prometheus"
    async with GatedUpstream() as upstream:
        config = tmp_path / "gateway.yaml"
        routing_file(config, {"a": upstream.url}, "a")
        env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
        async with serving("--config", str(config), "--workers", "2", env=env) as served:
            assert (await post(served.url)).status_code == 200
            assert sample(await served.metrics(), "tts_requests_total", status="200") == 1


async def test_a_metrics_directory_that_cannot_be_made_is_one_line_and_no_start(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    served = await start(env={"PROMETHEUS_MULTIPROC_DIR": str(blocker / "prometheus")})
    try:
        assert await asyncio.wait_for(served.process.wait(), PATIENCE) == 2
        await served.stop()
    finally:
        await served.kill_all()
    assert served.lines == [
        f"error: PROMETHEUS_MULTIPROC_DIR {blocker}/prometheus: Not a directory\n"
    ]
