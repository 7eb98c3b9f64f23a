"""Every test: provider clients reach loopback hosts only (see ``tests.support.LoopbackOnly``)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from providers import _http
from providers._pool import StreamingTransport
from tests.support import LoopbackOnly


@pytest.fixture(autouse=True)
def upstreams_on_loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def guarded(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
        return LoopbackOnly(StreamingTransport(limits=limits))

    monkeypatch.setattr(_http, "transport_factory", guarded)
    LoopbackOnly.refused.clear()
    yield
    assert not LoopbackOnly.refused, f"a test tried to reach the network: {LoopbackOnly.refused}"
