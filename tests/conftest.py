"""Every test: provider clients reach loopback hosts only (see ``tests.support.LoopbackOnly``).
The ``redis_server`` fixture: a real redis-server of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from providers import _http
from providers._pool import StreamingTransport
from tests.redis_support import RedisServer, redis_binary
from tests.support import LoopbackOnly


@pytest.fixture(autouse=True)
def upstreams_on_loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def guarded(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
        return LoopbackOnly(StreamingTransport(limits=limits))

    monkeypatch.setattr(_http, "transport_factory", guarded)
    LoopbackOnly.refused.clear()
    yield
    assert not LoopbackOnly.refused, f"a test tried to reach the network: {LoopbackOnly.refused}"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own on loopback (see :mod:`tests.redis_support`)."""
    server = RedisServer(redis_binary(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
