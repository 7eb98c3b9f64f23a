"""SIGHUP to a supervisor reloads every worker in place: no worker restarts, streams under way
finish on the routing they started with, new requests take the new one; a bad file is refused
by each worker with every error logged, and the old routing keeps serving. With
``server.watch: false`` a change on disk reloads nothing until the SIGHUP."""

from __future__ import annotations

import asyncio
import glob
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.supervisor import TICK_SECONDS
from gateway.watch import POLL_SECONDS, FileWatch
from tests.served import (
    BURST,
    CHUNK,
    PATIENCE,
    GatedUpstream,
    Served,
    burst_answers,
    open_stream,
    open_streams,
    post,
    requests_by_process,
    routing_file,
    sample,
    serving,
    settled,
    streams_by_process,
)
from tests.support import RawResponse

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Pair:
    served: Served
    a: GatedUpstream
    b: GatedUpstream
    config: Path
    metrics_dir: str

    def route_to(self, provider: str) -> None:
        """Write the routing file with the voice on ``provider``."""
        routing_file(self.config, {"a": self.a.url, "b": self.b.url}, provider, watch=False)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pair(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    """Two workers, the file not watched; the voice on the upstream ``a``."""
    tmp = tmp_path_factory.mktemp("sighup")
    async with GatedUpstream() as a, GatedUpstream() as b:
        config = tmp / "gateway.yaml"
        routing_file(config, {"a": a.url, "b": b.url}, "a", watch=False)
        env = {"TMPDIR": str(tmp)}
        async with serving("--config", str(config), "--workers", "2", env=env, workers=2) as s:
            [metrics_dir] = glob.glob(str(tmp / "tts-gateway-metrics-*"))
            yield Pair(s, a, b, config, metrics_dir)


async def sighup(served: Served) -> None:
    """SIGHUP the supervisor and wait until both workers have reloaded."""
    reloaded = served.count("reloaded ")
    served.signal(signal.SIGHUP)
    await served.wait_for("reloaded ", times=reloaded + 2)


async def test_sighup_reloads_every_worker_in_place(pair: Pair) -> None:
    served, a, b = pair.served, pair.a, pair.b
    workers = served.workers()
    a.hold()
    streams: list[RawResponse] = []

    def streaming() -> set[int]:
        return {pid for pid, n in streams_by_process(pair.metrics_dir).items() if n}

    try:
        # Streams under way on each worker (opened at one instant: a burst reaches both).
        streams += await open_streams(served.url, 48)
        assert streaming() == workers
        pair.route_to("b")
        await sighup(served)

        # New requests go to the new upstream, whichever worker takes them.
        answered = requests_by_process(pair.metrics_dir)
        sent = 0
        while sent < 5 * BURST and not all(
            requests_by_process(pair.metrics_dir)[pid] > answered[pid] for pid in workers
        ):
            for answer in await burst_answers(served.url):
                assert answer == CHUNK * 3
                sent += 1
        assert all(requests_by_process(pair.metrics_dir)[pid] > answered[pid] for pid in workers)
        assert len(b.requests) == sent
        assert len(a.requests) == len(streams)  # only the streams from before the reload

        # The streams under way finish, whole, on the routing they started with.
        a.open()
        for stream in streams:
            assert await asyncio.wait_for(stream.read_all(), PATIENCE) == CHUNK * 2
    finally:
        a.open()
        for stream in streams:
            stream.close()
    assert served.workers() == workers  # in place: no worker restarted
    assert served.count("exited with") == 0, served.log


async def test_a_bad_file_on_sighup_is_refused_by_every_worker(pair: Pair) -> None:
    served = pair.served
    pair.route_to("b")
    await sighup(served)
    before = sample(await served.metrics(), "tts_config_reloads_total", result="refused")
    refused = served.count("reload refused")
    pair.config.write_text(
        "providers: {b: {type: custom, url: 'ftp://x', retyr: 1}}\nvoices: {v: {provider: c}}\n"
    )
    served.signal(signal.SIGHUP)
    await served.wait_for("reload refused", times=refused + 2)
    for error in ("providers.b.retyr", "providers.b.url", "voices.v.provider"):
        await served.wait_for(error, times=2)  # every error, by each worker
    after = sample(await served.metrics(), "tts_config_reloads_total", result="refused")
    assert after - before == 2
    # The running routing stays.
    answered = len(pair.b.requests)
    for _ in range(6):
        assert (await post(served.url)).status_code == 200
    assert len(pair.b.requests) - answered == 6


async def test_with_watch_off_a_changed_file_waits_for_the_sighup(pair: Pair) -> None:
    served = pair.served
    pair.route_to("b")
    await sighup(served)
    reloaded = served.count("reloaded ")
    # The control: a watch of the file that looks at it no more often than the supervisor's
    # would. Once it has seen the change settle and looked once more, a watch the supervisor
    # ran by mistake would have acted on it (and logged it) by now.
    control = FileWatch(str(pair.config))
    pair.route_to("a")
    look = POLL_SECONDS + TICK_SECONDS
    for _ in range(int(PATIENCE / look)):
        await asyncio.sleep(look)
        if control.poll():
            break
    await asyncio.sleep(look)
    served.signal(signal.SIGHUP)
    await served.wait_for("reloaded ", times=reloaded + 2)
    # The SIGHUP's reloads, and no other (the supervisor logs a change it acts on first).
    assert served.count("changed on disk") == 0, served.log
    assert served.count("reloaded ") == reloaded + 2, served.log
    answered = len(pair.a.requests)
    for _ in range(4):
        assert (await post(served.url)).status_code == 200
    assert len(pair.a.requests) - answered == 4


async def test_a_provider_gone_with_a_reload_leaves_no_live_gauge_behind(pair: Pair) -> None:
    served, a = pair.served, pair.a
    pair.route_to("a")
    await sighup(served)
    a.hold()
    stream = await open_stream(served.url)
    try:
        # Each worker writes its providers' live state into the shared files once a second.
        assert await settled(served, "tts_provider_in_flight", 1, provider="a") == 1
        # A file without the provider: the stream under way goes on with it, then ends.
        routing_file(pair.config, {"b": pair.b.url}, "b", watch=False)
        await sighup(served)
        a.open()
        assert await asyncio.wait_for(stream.read_all(), PATIENCE) == CHUNK * 2
    finally:
        a.open()
        stream.close()
    # Nothing is in flight any more: a series of the provider's must not say otherwise (nor,
    # for its breaker, keep an alert firing) for as long as the workers live.
    assert await settled(served, "tts_provider_in_flight", 0, provider="a") == 0
    assert sample(await served.metrics(), "tts_breaker_state", provider="a") == 0
