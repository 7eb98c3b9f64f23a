"""Admission: how much work the gateway takes on at once.

Two limits, each in one place:

- :class:`StreamLimit` — the gateway-wide number of streams in progress
  (``server.max_concurrent_streams``); a request beyond it is answered 429 with ``Retry-After``.
- :class:`ProviderSlots` — per provider instance, the upstream syntheses in flight at once
  (the provider's ``max_concurrency``); a request finding its provider full waits for a slot,
  inside that voice's first-byte budget (see :mod:`gateway.relay`).

The resilience work (queues, overflow to the next voice, breakers) extends these.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping

from prometheus_client import Gauge

from providers.base import Provider

from .errors import TooManyStreams


class StreamLimit:
    """Streams in progress across the gateway (every routing file it has loaded), with the
    ``tts_streams_active`` gauge kept beside the count."""

    def __init__(self, gauge: Gauge) -> None:
        self.active = 0
        self._gauge = gauge

    @contextlib.contextmanager
    def admit(self, limit: int) -> Iterator[None]:
        """Hold one stream for the block; ``TooManyStreams`` (429) if ``limit`` are in progress."""
        if self.active >= limit:
            raise TooManyStreams(f"{limit} streams are in progress", headers={"Retry-After": "1"})
        self.active += 1
        self._gauge.inc()
        try:
            yield
        finally:
            self.active -= 1
            self._gauge.dec()


class ProviderSlots:
    """One semaphore per provider instance of a routing file, sized by its ``max_concurrency``."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._slots = {
            name: asyncio.Semaphore(provider.config.max_concurrency)
            for name, provider in providers.items()
        }

    def __getitem__(self, provider: str) -> asyncio.Semaphore:
        return self._slots[provider]
