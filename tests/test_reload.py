"""SIGHUP reloads the routing file: a good file takes over for new requests while requests under
way finish on the old one; a bad file is refused with every error logged and the old one stays."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.app import create_app
from gateway.config import load_config
from gateway.metrics import Metrics
from gateway.runtime import Gateway
from providers.base import ProviderConfig, register
from tests.support import (
    Plan,
    ScriptedProvider,
    eventually,
    live_server,
    provider_block,
    raw_post,
    scripted_config,
    tone,
)

CHUNK = tone(440, 0.02, 24000)
BODY = {"Text": "Hello.", "SampleRate": 24000, "VoiceId": "a"}


async def test_sighup_swaps_the_routing_and_keeps_streams_under_way(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans.update(old=Plan([[CHUNK, release, CHUNK]]), new=Plan([[CHUNK * 2]]))
    path = tmp_path / "gateway.yaml"
    path.write_text(scripted_config({"a": {"provider": "old"}}, {"old": provider_block()}))
    app = create_app(config_path=str(path))
    gateway: Gateway = app.state.gateway
    async with live_server(app) as url, httpx.AsyncClient() as client:
        under_way = await raw_post(url, "/stream-audio", BODY)
        assert await under_way.read_chunk() == CHUNK

        path.write_text(scripted_config({"a": {"provider": "new"}}, {"new": provider_block()}))
        before = gateway.routing
        os.kill(os.getpid(), signal.SIGHUP)
        assert await eventually(lambda: gateway.routing is not before), "not reloaded"

        response = await client.post(url + "/stream-audio", json=BODY)
        assert response.content == CHUNK * 2  # the new provider answers new requests
        assert ScriptedProvider.plans["old"].shut_down == 0  # still streaming

        release.set()
        assert await under_way.read_all() == CHUNK  # the old stream finished on the old one
        under_way.close()
        assert await eventually(lambda: ScriptedProvider.plans["old"].shut_down)
        assert ScriptedProvider.plans["old"].shut_down == 1

        # A broken file is refused, every error logged, and the running routing stays.
        path.write_text(
            "providers: {new: {type: scripted, retyr: 1}}\nvoices: {a: {provider: nope}}\n"
        )
        current = gateway.routing
        with caplog.at_level(logging.ERROR, logger="gateway"):
            assert await gateway.reload() is False
        assert gateway.routing is current
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "providers.new.retyr" in logged and "voices.a.provider" in logged
        response = await client.post(url + "/stream-audio", json=BODY)
        assert response.status_code == 200 and response.content == CHUNK * 2
        metrics = (await client.get(url + "/metrics")).text
        assert 'tts_config_reloads_total{result="ok"} 1.0' in metrics
        assert 'tts_config_reloads_total{result="refused"} 1.0' in metrics


def test_the_reload_counters_start_at_zero_so_the_first_refusal_is_an_increase() -> None:
    # Prometheus' increase() counts from a sample before: a series that first shows up at 1
    # is no increase, so the first file refused after a start would never fire the alert
    # TTSGatewayReloadRefused (deploy/prometheus/alerts.yaml).
    metrics = Metrics().render().decode()
    assert 'tts_config_reloads_total{result="ok"} 0.0' in metrics
    assert 'tts_config_reloads_total{result="refused"} 0.0' in metrics


async def test_reload_without_a_file_keeps_the_default() -> None:
    gateway = Gateway(create_app().state.gateway.config)
    before = gateway.routing
    assert await gateway.reload() is False
    assert gateway.routing is before


# ---------------------------------------------------------------- hostile files on SIGHUP


def refused(gateway: Gateway) -> float:
    return (
        gateway.metrics.registry.get_sample_value("tts_config_reloads_total", {"result": "refused"})
        or 0.0
    )


def reloaded(gateway: Gateway) -> float:
    return (
        gateway.metrics.registry.get_sample_value("tts_config_reloads_total", {"result": "ok"})
        or 0.0
    )


class LoopWatch:
    """The longest stretch the event loop went without running a 10 ms ticker: how long
    anything on the loop (a request, ``/healthz``) would have waited."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopWatch:
        self._last = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        # A stall the ticker has not woken up from yet counts too.
        self.worst = max(self.worst, asyncio.get_running_loop().time() - self._last)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            self.worst = max(self.worst, now - self._last)
            self._last = now


def laughs(levels: int = 7, width: int = 9) -> str:
    lines = ["laughs:", f"  l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return GOOD + "\n".join(lines) + "\n"


# In block style, so that hostile YAML can follow it.
GOOD = yaml.safe_dump(
    json.loads(scripted_config({"a": {"provider": "old"}}, {"old": provider_block()}))
)


def write_hostile(path: Path, kind: str) -> str:
    """Replace the routing file with a hostile one; the message its refusal must log."""
    if kind == "billion laughs":
        path.write_text(laughs())  # 9 ** 7 values in a few hundred bytes
        return "the file expands to more than 100000 values"
    if kind == "deep flow":
        path.write_text(GOOD + "deep: " + "[" * 10_000 + "]" * 10_000 + "\n")
        return "the file nests deeper than 64 levels"
    if kind == "deep block":
        path.write_text(GOOD + "deep:\n" + "".join(" " * i + "k:\n" for i in range(1, 1000)))
        return "the file nests deeper than 64 levels"
    if kind == "huge":
        path.write_text(GOOD + "# " + "x" * (2 << 20) + "\n")
        return "the file is larger than 1 MiB"
    assert kind == "fifo"
    path.unlink()
    os.mkfifo(path)
    return "not a regular file (a FIFO)"


@contextlib.contextmanager
def fifo_unblocked_after(path: Path, seconds: float) -> Iterator[None]:
    """If a reader blocks opening the FIFO at ``path`` (the plain way), let it go after
    ``seconds``, so that such a regression fails the test instead of hanging it."""

    def release() -> None:
        with contextlib.suppress(OSError):  # no reader: nothing to release
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    timer = threading.Timer(seconds, release)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.mark.parametrize("kind", ["billion laughs", "deep flow", "deep block", "huge", "fifo"])
async def test_a_hostile_file_on_sighup_is_refused_while_the_loop_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans.update(old=Plan([[CHUNK]]))
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD)
    app = create_app(config_path=str(path))
    gateway: Gateway = app.state.gateway
    async with live_server(app) as url, httpx.AsyncClient() as client:
        expected = write_hostile(path, kind)
        before = gateway.routing
        with (
            fifo_unblocked_after(path, 20),
            caplog.at_level(logging.ERROR, logger="gateway"),
        ):
            async with LoopWatch() as watch:
                os.kill(os.getpid(), signal.SIGHUP)
                assert await eventually(lambda: refused(gateway) == 1, seconds=60), "not refused"
        assert gateway.routing is before
        response = await client.post(url + "/stream-audio", json=BODY)
        assert response.status_code == 200 and response.content == CHUNK
        assert (await client.get(url + "/healthz")).status_code == 200
    # Loading ran beside the loop, not on it: the loop never stalled for long (it did for
    # ~8 s on the billion laughs when the file was loaded on it).
    assert watch.worst < 1.0, f"the event loop stalled for {watch.worst:.1f} s"
    assert expected in caplog.text
    assert "Traceback" not in caplog.text


async def test_healthz_answers_while_a_reload_is_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proof that loading runs off the loop: ``/healthz`` is answered while a load is
    known to be in progress (held in the middle until the answer has come)."""
    import gateway.runtime as app_module

    ScriptedProvider.plans.clear()
    ScriptedProvider.plans.update(old=Plan([[CHUNK]]))
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD)
    loading = threading.Event()
    may_finish = threading.Event()
    held_up: list[bool] = []
    real_load = load_config

    def held_load(*args: Any, **kwargs: Any) -> Any:
        loading.set()
        # On the loop, this would stall everything (and time out) rather than be released.
        held_up.append(not may_finish.wait(10))
        return real_load(*args, **kwargs)

    app = create_app(config_path=str(path))
    gateway: Gateway = app.state.gateway
    monkeypatch.setattr(app_module, "load_config", held_load)
    async with live_server(app) as url, httpx.AsyncClient() as client:
        path.write_text(laughs())
        os.kill(os.getpid(), signal.SIGHUP)
        assert await asyncio.to_thread(loading.wait, 10), "no reload started"
        health = await client.get(url + "/healthz", timeout=5)
        may_finish.set()
        assert health.status_code == 200
        assert await eventually(lambda: refused(gateway) == 1, seconds=30)
    assert held_up == [False], "the load held the loop until it timed out"


async def test_sighups_during_a_reload_queue_one_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.runtime as app_module

    ScriptedProvider.plans.clear()
    ScriptedProvider.plans.update(old=Plan([[CHUNK]]), new=Plan([[CHUNK * 2]]))
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD)
    first_loading = threading.Event()
    may_finish = threading.Event()
    lock = threading.Lock()
    running = 0
    most = 0
    loads = 0
    real_load = load_config

    def counted_load(*args: Any, **kwargs: Any) -> Any:
        nonlocal running, most, loads
        with lock:
            running += 1
            loads += 1
            most = max(most, running)
            first = loads == 1
        try:
            if first:
                first_loading.set()
                may_finish.wait(10)
            return real_load(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    app = create_app(config_path=str(path))
    gateway: Gateway = app.state.gateway
    monkeypatch.setattr(app_module, "load_config", counted_load)
    async with live_server(app) as url, httpx.AsyncClient() as client:
        os.kill(os.getpid(), signal.SIGHUP)
        assert await asyncio.to_thread(first_loading.wait, 10)
        # The file changes after the running reload read it; three more SIGHUPs come in.
        path.write_text(scripted_config({"a": {"provider": "new"}}, {"new": provider_block()}))
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0)  # let the signal handlers run
        may_finish.set()
        reloader = app.state.reloader
        assert reloader.task is not None
        await asyncio.wait_for(asyncio.shield(reloader.task), 30)
        assert (loads, most) == (2, 1)  # one more reload, never two at once
        assert reloaded(gateway) == 2
        response = await client.post(url + "/stream-audio", json=BODY)
        assert response.content == CHUNK * 2  # the queued reload read the changed file


class BrittleProvider(ScriptedProvider):
    """A plugin whose construction fails (as Google's did on a malformed key file)."""

    type_name = "brittle"

    def __init__(self, config: ProviderConfig) -> None:
        raise ValueError("could not build")


register("brittle", BrittleProvider)


async def test_a_provider_that_cannot_be_built_refuses_the_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD)
    gateway = create_app(config_path=str(path)).state.gateway
    before = gateway.routing
    path.write_text(scripted_config({"a": {"provider": "b"}}, {"b": {"type": "brittle"}}))
    with caplog.at_level(logging.ERROR, logger="gateway"):
        assert await gateway.reload() is False
    assert gateway.routing is before
    assert refused(gateway) == 1
    assert "the providers could not be built (ValueError: could not build)" in caplog.text


async def test_a_malformed_service_account_file_refuses_the_reload_on_sighup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans.update(old=Plan([[CHUNK]]))
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD)
    key_file = tmp_path / "sa.json"
    key_file.write_text('{"type": "service_account", "private_key": "oops"}')
    app = create_app(config_path=str(path))
    gateway: Gateway = app.state.gateway
    async with live_server(app) as url, httpx.AsyncClient() as client:
        path.write_text(
            scripted_config(
                {"a": {"provider": "g"}},
                {"g": {"type": "google", "credentials_file": str(key_file)}},
            )
        )
        with caplog.at_level(logging.ERROR, logger="gateway"):
            os.kill(os.getpid(), signal.SIGHUP)
            assert await eventually(lambda: refused(gateway) == 1, seconds=30), "not refused"
        response = await client.post(url + "/stream-audio", json=BODY)
        assert response.content == CHUNK
    assert "providers.g.credentials_file" in caplog.text
    assert "lacks client_email, token_uri" in caplog.text


POLLY_ROUTING = scripted_config(
    {"a": {"provider": "old"}, "b": {"provider": "aws"}},
    {
        "old": provider_block(),
        "aws": {
            "type": "polly",
            "region": "eu-west-1",
            "access_key_id": "AKID",
            "secret_access_key": "SECRET",
        },
    },
)
WARNING = "providers.aws: type polly needs botocore: pip install 'tts-gateway[polly]'"


async def test_the_files_warnings_are_logged_at_start_and_on_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "botocore.credentials", None)  # as if not installed
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans.update(old=Plan([[CHUNK]]))
    path = tmp_path / "gateway.yaml"
    path.write_text(POLLY_ROUTING)
    app = create_app(config_path=str(path))
    gateway: Gateway = app.state.gateway
    with caplog.at_level(logging.WARNING, logger="gateway"):
        async with live_server(app):
            assert [r.getMessage() for r in caplog.records if WARNING in r.getMessage()] == [
                f"{path}:1: {WARNING}"
            ]
            assert await gateway.reload() is True
    warned = [r for r in caplog.records if WARNING in r.getMessage()]
    assert [r.levelname for r in warned] == ["WARNING", "WARNING"]  # at start, then reload


def test_a_worker_started_on_a_broken_file_says_why_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.app import app_from_env

    broken = tmp_path / "gateway.yaml"
    broken.write_text("providers: {}\nvoices: {}\nserver: {bogus: 1}\n")
    monkeypatch.setenv("TTS_GATEWAY_CONFIG", str(broken))
    with pytest.raises(SystemExit) as exited:
        app_from_env()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "invalid routing file" in err
    assert "server.bogus" in err
    assert "Traceback" not in err


async def test_sighup_still_reloads_a_gateway_after_another_in_the_process_stopped(
    tmp_path: Path,
) -> None:
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans.update(a=Plan([[CHUNK]]))
    path = tmp_path / "gateway.yaml"
    path.write_text(scripted_config({"a": {"provider": "a"}}, {"a": provider_block()}))
    outer = create_app(config_path=str(path))
    inner = create_app(config_path=str(path))
    async with live_server(outer):
        async with live_server(inner):
            pass
        # The inner gateway is gone; the outer one must still hear SIGHUP (not die of it).
        os.kill(os.getpid(), signal.SIGHUP)
        assert await eventually(lambda: reloaded(outer.state.gateway) == 1.0)
    assert reloaded(inner.state.gateway) == 0.0
