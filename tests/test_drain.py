"""Shutdown as ops run it: ``tts-gateway serve`` gets SIGTERM while a stream is under way."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import httpx

from tests.support import Upstream, raw_post, tone

REPO = Path(__file__).resolve().parent.parent
CHUNK = tone(440, 0.02, 24000)
BODY = {"Text": "A long answer.", "SampleRate": 24000, "VoiceId": "up"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve(config: Path, port: int) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k != "TTS_GATEWAY_CONFIG"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return process
            except httpx.TransportError:
                pass
            if process.returncode is not None:
                break
            await asyncio.sleep(0.1)
    process.kill()
    raise RuntimeError("the gateway did not become ready")


async def test_sigterm_lets_a_stream_run_until_drain_seconds_then_ends_it_cleanly(
    tmp_path: Path,
) -> None:
    # 200 chunks, 50 ms apart: ten seconds of stream, far longer than the drain.
    async with Upstream(chunks=[CHUNK] * 200, gap=0.05) as upstream:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            json.dumps(
                {
                    "server": {"default_voice": "up", "drain_seconds": 1, "log_level": "info"},
                    "providers": {"up": {"type": "custom", "url": upstream.url}},
                    "voices": {"up": {"provider": "up"}},
                }
            )
        )
        port = _free_port()
        process = await _serve(config, port)
        try:
            response = await raw_post(f"http://127.0.0.1:{port}", "/stream-audio", BODY)
            assert response.status == 200
            first = await response.read_chunk()
            assert first
            # A request pipelined behind the stream, on the same connection.
            response.writer.write(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
            process.send_signal(signal.SIGTERM)
            # The stream goes on during the drain, then ends with a proper last chunk: the
            # caller's reader finishes instead of hitting a reset.
            rest = await asyncio.wait_for(response.read_all(), 30)
            audio = len(first) + len(rest)
            assert audio % 2 == 0
            assert len(CHUNK) * 3 < audio < len(CHUNK) * 200
            # The request that waited is answered, 503 (draining), and the connection closes.
            after = await asyncio.wait_for(response.reader.read(), 30)
            assert after.startswith(b"HTTP/1.1 503"), after
            assert b"connection: close" in after.lower()
            response.close()
            # The server re-raises the signal once it has shut down, as a service manager expects.
            assert await asyncio.wait_for(process.wait(), 30) in (0, -signal.SIGTERM)
            # New connections are refused once the gateway has stopped listening.
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                pass
            else:
                writer.close()
                raise AssertionError("the gateway still accepts connections after exiting")
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.stderr is not None
        log = (await process.stderr.read()).decode()
    assert "end=drain" in log, log
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    assert upstream.closed_at  # the upstream stream was closed when the drain ended it
