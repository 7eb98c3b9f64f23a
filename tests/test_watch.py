"""``server.watch``: the routing file is watched on disk and reloaded when it changes — an edit,
or a Kubernetes ConfigMap update (a symlink swapped to a new directory) — in one process and
in every worker of a supervisor; a half-written or bad file is refused and the old one stays;
with ``watch: false`` only a SIGHUP reloads."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from gateway.app import create_app
from gateway.config import load_config
from gateway.runtime import Gateway
from gateway.watch import FileWatch
from tests.served import (
    PATIENCE,
    ConfigMapDir,
    GatedUpstream,
    Served,
    post,
    routing_file,
    routing_text,
    sample,
    serving,
)
from tests.support import (
    Plan,
    ScriptedProvider,
    eventually,
    live_server,
    provider_block,
    scripted_config,
    tone,
)

CHUNK = tone(440, 0.02, 24000)
BODY = {"Text": "Hello.", "SampleRate": 24000, "VoiceId": "a"}

# ---------------------------------------------------------------- FileWatch


def test_a_change_is_reported_once_it_has_stayed_the_same_for_one_look(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("one")
    watch = FileWatch(str(path))
    assert watch.poll() is False  # nothing changed
    path.write_text("two, longer")
    assert watch.poll() is False  # changed: seen, not yet settled
    assert watch.poll() is True  # the same as last look: acted on
    assert watch.poll() is False  # once


def test_a_file_still_being_written_is_reported_only_once_it_settles(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("one")
    watch = FileWatch(str(path))
    with path.open("a") as f:
        for piece in ("half ", "more ", "the rest"):
            f.write(piece)
            f.flush()
            assert watch.poll() is False  # different at every look
    assert watch.poll() is True


def test_a_missing_file_is_not_a_change_until_it_is_back(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("one")
    watch = FileWatch(str(path))
    path.unlink()
    assert [watch.poll() for _ in range(3)] == [False, False, False]
    path.write_text("two, longer")
    assert watch.poll() is False
    assert watch.poll() is True


def test_a_configmap_update_is_a_change_even_of_the_same_size(tmp_path: Path) -> None:
    mounted = ConfigMapDir(tmp_path, "voices: {a: 1}")
    watch = FileWatch(str(mounted.path))
    assert watch.poll() is False
    mounted.publish("voices: {b: 2}")  # same size; a new file behind the same path
    assert watch.poll() is False
    assert watch.poll() is True
    assert watch.poll() is False


# ---------------------------------------------------------------- one process


def reloads(gateway: Gateway, result: str) -> float:
    sample = gateway.metrics.registry.get_sample_value(
        "tts_config_reloads_total", {"result": result}
    )
    return sample or 0.0


def two_providers(voice_to: str, **server: object) -> str:
    return scripted_config(
        {"a": {"provider": voice_to}},
        {"old": provider_block(), "new": provider_block()},
        **server,
    )


@pytest.fixture
def plans() -> None:
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans.update(old=Plan([[CHUNK]]), new=Plan([[CHUNK * 2]]))


@pytest.mark.usefixtures("plans")
async def test_one_process_reloads_an_edited_file_and_refuses_a_half_written_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(two_providers("old"))
    app = create_app(config_path=str(path))
    gateway: Gateway = app.state.gateway
    caplog.set_level(logging.INFO, logger="gateway")
    async with live_server(app) as url, httpx.AsyncClient() as client:
        assert (await client.post(url + "/stream-audio", json=BODY)).content == CHUNK

        path.write_text(two_providers("new"))  # in place, as an editor saves it
        assert await eventually(lambda: reloads(gateway, "ok") == 1, PATIENCE)
        assert (await client.post(url + "/stream-audio", json=BODY)).content == CHUNK * 2

        # A writer that stalls halfway: the half it left is refused, the running file stays.
        text = two_providers("old")
        with path.open("w") as f:
            f.write(text[: len(text) // 2])
            f.flush()
            assert await eventually(lambda: reloads(gateway, "refused") == 1, PATIENCE)
            assert (await client.post(url + "/stream-audio", json=BODY)).content == CHUNK * 2
            f.write(text[len(text) // 2 :])
        assert await eventually(lambda: reloads(gateway, "ok") == 2, PATIENCE)
        assert (await client.post(url + "/stream-audio", json=BODY)).content == CHUNK
    logged = [r.getMessage() for r in caplog.records]
    assert sum("changed on disk: reloading" in line for line in logged) == 3
    [refusal] = [line for line in logged if line.startswith("reload refused")]
    assert str(path) in refusal


@pytest.mark.usefixtures("plans")
async def test_one_process_reloads_on_a_configmap_update(tmp_path: Path) -> None:
    mounted = ConfigMapDir(tmp_path, two_providers("old"))
    app = create_app(config_path=str(mounted.path))
    gateway: Gateway = app.state.gateway
    async with live_server(app) as url, httpx.AsyncClient() as client:
        assert (await client.post(url + "/stream-audio", json=BODY)).content == CHUNK
        mounted.publish(two_providers("new"))
        assert await eventually(lambda: reloads(gateway, "ok") == 1, PATIENCE)
        assert (await client.post(url + "/stream-audio", json=BODY)).content == CHUNK * 2
        mounted.publish("voices: {a: {provider: nobody}}\n")
        assert await eventually(lambda: reloads(gateway, "refused") == 1, PATIENCE)
        assert (await client.post(url + "/stream-audio", json=BODY)).content == CHUNK * 2


@pytest.mark.usefixtures("plans")
async def test_with_watch_off_only_a_sighup_reloads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(two_providers("old", watch=False))
    unwatched = create_app(config_path=str(path))
    # The control: the same file, watched, started after the unwatched one. Its watch looks
    # at the file as often, and later in each round, than one the unwatched gateway would run
    # by mistake: once the control has reloaded, such a watch would have, too.
    config = load_config(str(path))
    watched = create_app(
        dataclasses.replace(config, server=dataclasses.replace(config.server, watch=True)),
        str(path),
    )
    caplog.set_level(logging.INFO, logger="gateway")
    async with live_server(unwatched), live_server(watched):
        path.write_text(two_providers("new", watch=False))
        assert await eventually(lambda: reloads(watched.state.gateway, "ok") == 1, PATIENCE)
        os.kill(os.getpid(), signal.SIGHUP)
        assert await eventually(lambda: reloads(watched.state.gateway, "ok") == 2, PATIENCE)
        assert await eventually(lambda: reloads(unwatched.state.gateway, "ok") >= 1, PATIENCE)
    assert reloads(unwatched.state.gateway, "ok") == 1  # the SIGHUP's reload, and no other
    logged = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("reloaded ") for line in logged) == 3  # 2 watched, 1 not
    assert sum("changed on disk" in line for line in logged) == 1  # the control's


# ---------------------------------------------------------------- a supervisor


@dataclass
class Mounted:
    served: Served
    a: GatedUpstream
    b: GatedUpstream
    mounted: ConfigMapDir


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mounted(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mounted]:
    """Two workers serving a routing file mounted from a ConfigMap, watched (the default)."""
    tmp = tmp_path_factory.mktemp("configmap")
    async with GatedUpstream() as a, GatedUpstream() as b:
        files = ConfigMapDir(tmp, routing_text({"a": a.url, "b": b.url}, "a"))
        async with serving("--config", str(files.path), "--workers", "2", workers=2) as served:
            yield Mounted(served, a, b, files)


async def answered_by(served: Served, upstream: GatedUpstream, requests: int = 6) -> None:
    """``requests`` requests, each on a connection of its own (so both workers answer some),
    all answered by ``upstream``."""
    before = len(upstream.requests)
    for _ in range(requests):
        assert (await post(served.url)).status_code == 200
    assert len(upstream.requests) - before == requests


@pytest.mark.asyncio(loop_scope="module")
async def test_every_worker_reloads_on_a_configmap_update(mounted: Mounted) -> None:
    served = mounted.served
    workers = served.workers()
    await answered_by(served, mounted.a)
    reloaded = served.count("reloaded ")
    mounted.mounted.publish(routing_text({"a": mounted.a.url, "b": mounted.b.url}, "b"))
    await served.wait_for("reloaded ", times=reloaded + 2)
    assert served.count("changed on disk: reloading every worker") == 1
    await answered_by(served, mounted.b)
    assert served.workers() == workers  # in place: no worker restarted


@pytest.mark.asyncio(loop_scope="module")
async def test_every_worker_refuses_a_bad_configmap_update_and_keeps_serving(
    mounted: Mounted,
) -> None:
    served = mounted.served
    await answered_by(served, mounted.b)
    before = sample(await served.metrics(), "tts_config_reloads_total", result="refused")
    mounted.mounted.publish(
        "providers: {b: {type: custom, url: 'ftp://x', retyr: 1}}\nvoices: {v: {provider: c}}\n"
    )
    await served.wait_for("reload refused", times=2)
    # Every error, by each worker.
    for error in ("providers.b.retyr", "providers.b.url", "voices.v.provider"):
        await served.wait_for(error, times=2)
    after = sample(await served.metrics(), "tts_config_reloads_total", result="refused")
    assert after - before == 2  # one refusal per worker
    await answered_by(served, mounted.b)  # the running routing stays
    reloaded = served.count("reloaded ")
    mounted.mounted.publish(routing_text({"a": mounted.a.url, "b": mounted.b.url}, "a"))
    await served.wait_for("reloaded ", times=reloaded + 2)
    await answered_by(served, mounted.a)


async def test_every_worker_reloads_a_file_edited_in_place(tmp_path: Path) -> None:
    async with GatedUpstream() as a, GatedUpstream() as b:
        path = tmp_path / "gateway.yaml"
        routing_file(path, {"a": a.url, "b": b.url}, "a")
        async with serving("--config", str(path), "--workers", "2", workers=2) as served:
            await answered_by(served, a)
            path.write_text(routing_text({"a": a.url, "b": b.url}, "b"))
            await served.wait_for("reloaded ", times=2)
            await answered_by(served, b)
