"""A real Redis for the phrase-cache tests: Debian's ``redis-server`` on a free loopback port,
with no persistence, started and stopped by the test (and killed and started again on the same
port, to play an outage). In CI (``CI=true``) a missing ``redis-server`` fails the test, since
CI installs it; elsewhere the test is skipped."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

#: Where Debian's package puts it; else whatever ``redis-server`` the PATH finds.
REDIS_SERVER = "/usr/bin/redis-server"
#: Seconds a starting redis-server gets to answer PING (a loaded machine is slow).
START_PATIENCE = 20.0


def redis_binary() -> str:
    """The redis-server to run; fails (in CI) or skips the test when there is none."""
    found = REDIS_SERVER if Path(REDIS_SERVER).is_file() else shutil.which("redis-server")
    if found:
        return found
    message = "redis-server is not installed (apt-get install redis-server)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1:``port``; :meth:`stop` and :meth:`start` again
    keep the port (an outage and a recovery as clients see them)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--save",
                "",
                "--appendonly",
                "no",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_PATIENCE
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.exceptions.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within {START_PATIENCE} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill it (as an outage does) and wait until it is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=START_PATIENCE)
        self.process = None

    def client(self) -> redis.Redis:
        """A plain (blocking) client, for the test's own looks at what is stored."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
