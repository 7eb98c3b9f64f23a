"""The command line, run as a new user would: the installed ``tts-gateway`` script."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import trustme

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "deploy" / "gateway.example.yaml"


def cli() -> list[str]:
    script = shutil.which("tts-gateway", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "gateway.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli(), *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_check_config_passes_on_the_example_file() -> None:
    result = run("check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "remote-*" in result.stdout and "joe" in result.stdout


def test_check_config_lists_every_error_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "server:\n  default_voice: joe\n  prot: 80\n"
        "providers:\n  local: {type: piper}\n"
        "voices:\n  joe: {provider: locl}\n  amy: {provider: local, fallback: [nobody]}\n"
    )
    result = run("check-config", str(bad))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for fragment in ("server.prot", "voices.joe.provider", "voices.amy.fallback[0]", "bad.yaml:3"):
        assert fragment in result.stderr, result.stderr


def test_voices_prints_the_default_table() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TTS_GATEWAY_CONFIG"}
    result = run("voices", env=env)
    assert result.returncode == 0
    assert "joe *" in result.stdout and "piper" in result.stdout


def test_say_in_process_writes_a_wav_of_speech(tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    result = run("say", "Hello from the gateway.", "--sample-rate", "16000", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "first byte after" in result.stdout
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == 16000
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        frames = wav.readframes(wav.getnframes())
    x = np.frombuffer(frames, dtype="<i2").astype(float) / 32768
    assert len(x) / 16000 > 0.8
    assert np.sqrt(np.mean(x**2)) > 0.02


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(
    process: subprocess.Popen[str], url: str, verify: ssl.SSLContext | bool = True
) -> None:
    """Poll /readyz until the gateway subprocess answers 200 (or fail if it exits)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the gateway did not become ready (exit status {process.poll()})")


@pytest.fixture
def tls_gateway(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``tts-gateway serve`` with a self-signed certificate, as a subprocess."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "TTS_GATEWAY_CONFIG"}
    process = subprocess.Popen(
        [
            *cli(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ssl-certfile",
            str(certfile),
            "--ssl-keyfile",
            str(keyfile),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        wait_ready(process, url, ssl.create_default_context(cafile=str(cafile)))
        yield url, cafile
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout:
            process.stdout.close()


def test_serve_over_tls_with_a_self_signed_certificate(tls_gateway: tuple[str, Path]) -> None:
    url, cafile = tls_gateway
    response = httpx.post(
        url + "/stream-audio",
        json={"Text": "Secure hello.", "SampleRate": 24000, "ExtendData": ""},
        verify=ssl.create_default_context(cafile=str(cafile)),
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["x-sample-rate"] == "24000"
    assert len(response.content) / 2 / 24000 > 0.5
    # Plain HTTP to the TLS port does not get audio.
    with pytest.raises(httpx.HTTPError):
        httpx.post(url.replace("https", "http") + "/stream-audio", json={}, timeout=5)


def test_say_through_a_running_gateway(tls_gateway: tuple[str, Path], tmp_path: Path) -> None:
    url, cafile = tls_gateway
    out = tmp_path / "remote.wav"
    result = run(
        "say",
        "Through the network.",
        "--url",
        url + "/stream-audio",
        "--cacert",
        str(cafile),
        "--sample-rate",
        "8000",
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == 8000
        assert wav.getnframes() / 8000 > 0.5


def test_sighup_without_a_routing_file_does_not_kill_the_gateway() -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "TTS_GATEWAY_CONFIG"}
    process = subprocess.Popen(
        [*cli(), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url)
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert process.poll() is None, "SIGHUP ended the process"
        assert httpx.get(url + "/readyz").status_code == 200
        process.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells it.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        _, err = process.communicate(timeout=30)
    assert "built-in default" in err  # the refusal to reload is logged
    assert "Application shutdown complete" in err
