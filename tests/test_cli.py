"""The command line, run as a new user would: the installed ``tts-gateway`` script."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import trustme

from gateway.cli import GC_YOUNG_OBJECTS, tune_gc

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
    # Tokens guard a served gateway; in-process there is no caller to warn about.
    assert "token" not in result.stderr.lower()
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
    log = LogWatch(process)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url)
        process.send_signal(signal.SIGHUP)
        # The refusal is logged after the signal was handled: a SIGHUP that killed the process
        # (or was never handled) never gets this far.
        assert log.wait_for("reload asked, but the gateway runs on the built-in default"), log.text
        assert process.poll() is None, "SIGHUP ended the process"
        assert httpx.get(url + "/readyz").status_code == 200
        process.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells it.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        log.close()
    assert "Application shutdown complete" in log.text


class LogWatch:
    """Reads a subprocess's stderr line by line in a thread, so that a test can wait for a
    line (with a deadline) instead of sleeping and hoping."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        self._stream = process.stderr
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._lines.append("")  # end of the stream
            self._changed.notify_all()

    def close(self) -> None:
        """After the process ended: read to the end, then close the stream."""
        self._thread.join(30)
        self._stream.close()

    @property
    def text(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, fragment: str, seconds: float = 30) -> bool:
        """Whether a line with ``fragment`` arrives within ``seconds`` (False at the end of the
        stream or the deadline)."""
        deadline = time.monotonic() + seconds
        with self._changed:
            while True:
                if any(fragment in line for line in self._lines):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or (self._lines and self._lines[-1] == ""):
                    return False
                self._changed.wait(left)


# ---------------------------------------------------------------- check-config on hostile files


@dataclass
class Finished:
    """A CLI run: its exit code, output, wall time and peak memory."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float


#: The CLI runs with its address space capped at 1 GiB: a regression fails with MemoryError
#: instead of eating the machine's memory (the billion laughs once took 1 GB).
CAPPED_CLI = (
    "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
    "from gateway.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run_measured(*args: str, seconds: float = 60) -> Finished:
    """Run the CLI (killed after ``seconds``), measuring that child's own peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-c", CAPPED_CLI, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        killer = threading.Timer(seconds, process.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        elapsed = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return Finished(
            process.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            elapsed,
            usage.ru_maxrss / 1024,  # KiB on Linux
        )


HEAD = "server: {default_voice: joe}\nproviders: {p: {type: piper}}\nvoices: {joe: {provider: p}}\n"


def laughs(levels: int, width: int) -> str:
    lines = ["laughs:", f"  l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return HEAD + "\n".join(lines) + "\n"


def merges(levels: int) -> str:
    lines = ["laughs:", "  m0: &m0 {a: 1}"]
    lines += [f"  m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}" for i in range(1, levels)]
    return HEAD + "\n".join(lines) + "\n"


def chain(length: int) -> str:
    voices = "".join(f"  v{i}: {{provider: p, fallback: v{i + 1}}}\n" for i in range(length - 1))
    return (
        "server: {default_voice: v0}\nproviders: {p: {type: piper}}\nvoices:\n"
        + voices
        + f"  v{length - 1}: {{provider: p}}\n"
    )


EXPANDS = "the file expands to more than 100000 values (through YAML aliases)"
DEEP = "the file nests deeper than 64 levels"

#: name -> (file content, or a special kind; the one problem expected, with its line)
HOSTILE: dict[str, tuple[str, str]] = {
    "laughs-7x9": (laughs(7, 9), f"10: {EXPANDS}"),  # ~500 bytes; 1 GB and 8 s before
    "laughs-9x9": (laughs(9, 9), f"10: {EXPANDS}"),
    "laughs-40x2": (laughs(40, 2), f"19: {EXPANDS}"),
    "merges-40": (merges(40), f"20: {EXPANDS}"),
    "deep-flow": (HEAD + "deep: " + "[" * 10_000 + "]" * 10_000 + "\n", f"4: {DEEP}"),
    "deep-block": (
        HEAD + "deep:\n" + "".join(" " * i + "k:\n" for i in range(1, 1000)),
        f"67: {DEEP}",
    ),
    "deep-compact": (HEAD + "deep:\n" + "- " * 10_000 + "x\n", f"5: {DEEP}"),
    "many-values": (
        HEAD + "big: [" + "0," * 100_001 + "]\n",
        "4: the file has more than 100000 values",
    ),
    "huge": (HEAD + "#" + "x" * (2 << 20) + "\n", " the file is larger than 1 MiB"),
    "fifo": ("fifo", " cannot read file: not a regular file (a FIFO)"),
    "dev-zero": ("/dev/zero", " cannot read file: not a regular file (a character device)"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_check_config_on_a_hostile_file_fails_fast_and_small(tmp_path: Path, name: str) -> None:
    content, problem = HOSTILE[name]
    path = tmp_path / "hostile.yaml"
    if content == "fifo":
        os.mkfifo(path)
    elif content == "/dev/zero":
        path = Path(content)
    else:
        path.write_text(content)
    result = run_measured("check-config", str(path))
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr == f"invalid routing file:\n{path}:{problem}\n"
    # Bounds with wide headroom for a loaded machine; the file took 8 s and 1 GB before.
    assert result.seconds < 20, f"{result.seconds:.1f} s"
    assert result.peak_rss_mb < 300, f"{result.peak_rss_mb:.0f} MB"


def test_check_config_on_a_chain_of_thousands_of_fallbacks(tmp_path: Path) -> None:
    path = tmp_path / "chain.yaml"
    path.write_text(chain(5000))
    result = run_measured("check-config", str(path))
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "invalid routing file:"
    assert lines[1] == (
        f"{path}:4: voices.v0.fallback: the fallback chain of 'v0' "
        "(fallbacks of fallbacks included) has more than 16 voices"
    )
    assert lines[-1] == f"{path}: ... and 4884 more problems (fix these first)"
    assert len(lines) == 102


# ---------------------------------------------------------------- environment warnings


def test_check_config_warns_about_polly_without_botocore(tmp_path: Path) -> None:
    path = tmp_path / "polly.yaml"
    path.write_text(
        "server: {default_voice: Joanna}\n"
        "providers:\n"
        "  aws: {type: polly, region: eu-west-1, access_key_id: A, secret_access_key: S}\n"
        "voices: {Joanna: {provider: aws}}\n"
    )
    hide_botocore = (
        "import sys; sys.modules['botocore.credentials'] = None; "  # as if not installed
        "from gateway.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_botocore, "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"warning: {path}:3: providers.aws: type polly needs botocore: "
        "pip install 'tts-gateway[polly]'\n"
    )
    assert f"{path}: OK (1 providers, 1 voices)" in result.stdout
    result = subprocess.run(
        [sys.executable, "-c", hide_botocore, "voices", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and "Joanna" in result.stdout
    assert result.stderr.startswith(f"warning: {path}:3: providers.aws: type polly needs")
    # With botocore there, nothing to warn about.
    result = run("check-config", str(path))
    assert result.returncode == 0 and result.stderr == ""


# ---------------------------------------------------------------- TLS files checked before serving


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    ca = trustme.CA()
    cert, other = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    files = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "other", "junk", "enc")}
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    other.private_key_pem.write_to_path(str(files["other"]))
    files["junk"].write_text("this is not PEM\n")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files["enc"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return files


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("cert", "other", "TLS key {other} does not match the certificate {cert}"),
        ("junk", "key", "TLS certificate {junk}: not a PEM certificate"),
        ("key", "key", "TLS certificate {key}: not a PEM certificate"),
        ("cert", "junk", "TLS key {junk}: not a PEM private key"),
        ("cert", "cert", "TLS key {cert}: not a PEM private key"),
        ("cert", "enc", "TLS key {enc}: encrypted with a passphrase; give the key unencrypted"),
    ],
    ids=["mismatch", "cert-junk", "cert-is-a-key", "key-junk", "key-is-a-cert", "encrypted"],
)
def test_serve_refuses_unusable_tls_files_in_one_line(
    tls_files: dict[str, Path], cert: str, key: str, message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TTS_GATEWAY_CONFIG"}
    # Its own session: no terminal to prompt for a passphrase on.
    result = subprocess.run(
        [
            *cli(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(_free_port()),
            "--ssl-certfile",
            str(tls_files[cert]),
            "--ssl-keyfile",
            str(tls_files[key]),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        start_new_session=True,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == "error: " + message.format(**tls_files) + "\n"


def test_say_in_process_applies_the_servers_text_checks(tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    for text in ("!!!", ""):
        result = run("say", text, "-o", str(out))
        assert result.returncode == 1
        assert "400 empty_text" in result.stderr
    assert not out.exists()


def test_say_to_an_unwritable_path_says_so_in_one_line(tmp_path: Path) -> None:
    result = run("say", "Hello.", "-o", str(tmp_path / "missing" / "x.wav"))
    assert result.returncode == 1
    assert "error: cannot write" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_serving_process_collects_its_young_objects_less_often() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG_OBJECTS, before[1], before[2])
        assert before[0] < GC_YOUNG_OBJECTS
    finally:
        gc.set_threshold(*before)
