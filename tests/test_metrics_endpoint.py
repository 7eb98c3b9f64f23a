"""``server.metrics``: ``/metrics`` on a port of its own (then not on the main port), from one
process or summed over a supervisor's workers; or on the main port for a caller with a
configured token only."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.config import ConfigError, load_config
from tests.served import (
    CHUNK,
    PATIENCE,
    GatedUpstream,
    free_port,
    listening_on,
    open_stream,
    post,
    routing_file,
    sample,
    serving,
    start,
)
from tests.support import Plan, ScriptedProvider, live_server, provider_block, scripted_config

BODY = {"Text": "Hello.", "SampleRate": 24000, "VoiceId": "a"}


def scripted(tmp_path: Path, **server: object) -> str:
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans.update(p=Plan([[CHUNK]]))
    path = tmp_path / "gateway.yaml"
    path.write_text(scripted_config({"a": {"provider": "p"}}, {"p": provider_block()}, **server))
    return str(path)


async def refused(url: str) -> bool:
    """Whether nothing listens at ``url`` any more."""
    try:
        async with httpx.AsyncClient() as client:
            await client.get(url)
    except httpx.ConnectError:
        return True
    return False


async def test_one_process_serves_metrics_on_their_own_port_only(tmp_path: Path) -> None:
    port = free_port()
    app = create_app(config_path=scripted(tmp_path, host="127.0.0.1", metrics={"port": port}))
    scrape = f"http://127.0.0.1:{port}/metrics"
    async with live_server(app) as url, httpx.AsyncClient() as client:
        assert (await client.post(url + "/stream-audio", json=BODY)).content == CHUNK
        main = await client.get(url + "/metrics")
        assert main.status_code == 404
        assert main.json()["error"]["code"] == "not_found"
        assert str(port) in main.json()["error"]["message"]
        response = await client.get(scrape)
        assert response.status_code == 200
        assert sample(response.text, "tts_requests_total", status="200") == 1
        # The app's own registry, the providers' live state read at scrape time included.
        assert sample(response.text, "tts_breaker_state", provider="p") == 0
        assert "tts_breaker_state{" in response.text
    assert await refused(scrape)  # stopped with the app


async def test_a_metrics_token_guards_metrics_on_the_main_port(tmp_path: Path) -> None:
    app = create_app(config_path=scripted(tmp_path, tokens=["s3cret"], metrics={"token": True}))
    async with live_server(app) as url, httpx.AsyncClient() as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = await client.get(url + "/metrics", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["field"] == "Authorization"
            assert "tts_requests_total" not in response.text
        response = await client.get(url + "/metrics", headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 200
        assert "# TYPE tts_requests_total counter" in response.text


def test_a_metrics_token_without_any_configured_token_is_refused(tmp_path: Path) -> None:
    # /metrics would be open to every caller: the file says otherwise, so it is refused.
    path = tmp_path / "gateway.yaml"
    path.write_text(
        json.dumps(
            {
                "server": {"default_voice": "a", "metrics": {"token": True}},
                "providers": {"p": {"type": "scripted"}},
                "voices": {"a": {"provider": "p"}},
            }
        )
    )
    with pytest.raises(ConfigError, match=r"server\.metrics\.token.*server\.tokens"):
        load_config(str(path))


async def test_a_supervisor_serves_the_sum_of_its_workers_on_the_metrics_port(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with GatedUpstream() as upstream:
        config = tmp_path / "gateway.yaml"
        routing_file(config, {"a": upstream.url}, "a", metrics={"port": port})
        scrape = f"http://127.0.0.1:{port}"
        async with serving("--config", str(config), "--workers", "2", workers=2) as served:
            for _ in range(8):  # new connections: both workers answer some
                assert (await post(served.url)).status_code == 200
            async with httpx.AsyncClient(headers={"Connection": "close"}) as client:
                for _ in range(4):
                    assert (await client.get(served.url + "/metrics")).status_code == 404
            text = await served.metrics(scrape)
            assert listening_on(port) == {"127.0.0.1"}  # serve --host, as the main port
            assert sample(text, "tts_requests_total", status="200") == 8
            assert sample(text, "tts_first_byte_seconds_count", provider="a") == 8
            upstream.hold()
            stream = await open_stream(served.url)
            try:
                assert sample(await served.metrics(scrape), "tts_streams_active") == 1
            finally:
                upstream.open()
                stream.close()
            code = await served.stop()
            assert code == 0, served.log
        assert await asyncio.wait_for(refused(scrape + "/metrics"), PATIENCE)


async def test_one_process_serves_its_metrics_port_on_the_host_it_was_told(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with GatedUpstream() as upstream:
        config = tmp_path / "gateway.yaml"
        # The file says every interface; `serve --host 127.0.0.1` says this machine only.
        routing_file(config, {"a": upstream.url}, "a", host="0.0.0.0", metrics={"port": port})
        async with serving("--config", str(config), "--workers", "1") as served:
            assert (await post(served.url)).status_code == 200
            text = await served.metrics(f"http://127.0.0.1:{port}")
            assert sample(text, "tts_requests_total", status="200") == 1
            assert listening_on(port) == {"127.0.0.1"}
            assert listening_on(served.port) == {"127.0.0.1"}


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_metrics_port_in_use_is_one_line_and_no_start(tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "gateway.yaml"
        routing_file(config, {"a": "http://127.0.0.1:9/"}, "a", metrics={"port": port})
        served = await start("--config", str(config), "--workers", workers)
        try:
            assert await asyncio.wait_for(served.process.wait(), PATIENCE) == 1
            await served.stop()
        finally:
            await served.kill_all()
    [line] = [line for line in served.lines if "INFO" not in line]
    assert line == (
        f"error: cannot listen on 127.0.0.1:{port} (server.metrics.port): Address already in use\n"
    )
