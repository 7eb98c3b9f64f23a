"""SIGHUP reloads the routing file: a good file takes over for new requests while requests under
way finish on the old one; a bad file is refused with every error logged and the old one stays."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import httpx
import pytest

from gateway.app import Gateway, create_app
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


async def test_reload_without_a_file_keeps_the_default() -> None:
    gateway = Gateway(create_app().state.gateway.config)
    before = gateway.routing
    assert await gateway.reload() is False
    assert gateway.routing is before
