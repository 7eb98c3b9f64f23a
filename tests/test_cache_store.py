"""The phrase cache's parts on their own: an entry as Redis keeps it (and what a hostile value
under its key becomes), the in-process LRU (bytes, recency, expiry) and a shared synthesis that
settles as soon as its answer is complete."""

from __future__ import annotations

import asyncio
import math
import os
import struct
import time
from collections.abc import AsyncGenerator
from typing import cast

import pytest

from gateway.admission import Lease
from gateway.audio import Converter
from gateway.cache.flight import Flight
from gateway.cache.phrase import PhraseCache
from gateway.cache.store import CHUNK_OVERHEAD, ENTRY_OVERHEAD, Entry, MemoryStore
from gateway.config.model import CacheConfig
from gateway.metrics import Metrics
from gateway.routing import ChainStep
from gateway.stream import AudioStream
from providers.base import AudioFormat, ProviderConfig
from tests.support import FakeProvider

ENTRY = Entry((b"\x01\x00" * 300, b"\x02\x00" * 100, b"\x03\x00" * 7), 0.0338, 12)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_survives_its_encoding() -> None:
    assert Entry.decode(ENTRY.encode()) == ENTRY


def test_every_truncation_and_extension_of_an_entry_is_no_entry() -> None:
    blob = ENTRY.encode()
    for end in range(len(blob)):
        assert Entry.decode(blob[:end]) is None
    assert Entry.decode(blob + b"\x00") is None


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not an entry at all", id="text"),
        pytest.param(
            struct.pack("<5sIdI", b"TTSC2", 1, 0.1, 1) + b"\x02\x00\x00\x00ab", id="magic"
        ),
        pytest.param(
            struct.pack("<5sIdI", b"TTSC1", 1, math.nan, 1) + b"\x02\x00\x00\x00ab", id="nan"
        ),
        pytest.param(
            struct.pack("<5sIdI", b"TTSC1", 1, -1.0, 1) + b"\x02\x00\x00\x00ab", id="negative"
        ),
        pytest.param(struct.pack("<5sIdI", b"TTSC1", 1, 0.1, 0), id="no-chunks"),
        pytest.param(
            struct.pack("<5sIdI", b"TTSC1", 1, 0.1, 0xFFFFFFFF) + b"\xff" * 64, id="count"
        ),
        pytest.param(
            struct.pack("<5sIdI", b"TTSC1", 1, 0.1, 2) + struct.pack("<2I", 0xFFFFFFFF, 1) + b"a",
            id="sizes",
        ),
    ],
)
def test_a_malformed_value_is_no_entry(blob: bytes) -> None:
    assert Entry.decode(blob) is None


def test_a_value_of_countless_empty_chunks_is_no_entry() -> None:
    # Well framed, but no stored entry looks so: replayed, it would be a million empty chunks.
    count = 1_000_000
    blob = struct.pack("<5sIdI", b"TTSC1", 1, 0.1, count) + bytes(4 * count)
    assert Entry.decode(blob) is None


def test_hostile_values_decode_in_linear_time_without_raising() -> None:
    started = time.perf_counter()
    for _ in range(50):
        noise = os.urandom(65536)
        assert Entry.decode(noise) is None
        head = struct.pack("<5sIdI", b"TTSC1", 1, 0.1, 16384)
        assert Entry.decode(head + noise) is None
    assert time.perf_counter() - started < 2.0  # 100 values of 64 KB; quadratic took minutes


def test_the_memory_store_is_bounded_by_bytes_and_evicts_the_least_recently_used() -> None:
    one = Entry((b"\x00" * 1000,), 0.02, 3)
    cost = 1000 + CHUNK_OVERHEAD + ENTRY_OVERHEAD
    store = MemoryStore(2 * cost + 10, 60)
    assert store.put("a", one) and store.put("b", one)
    assert store.get("a") is one  # "a" is now the more recent
    assert store.put("c", one)
    assert (store.get("a"), store.get("b"), store.get("c")) == (one, None, one)
    assert (len(store), store.bytes) == (2, 2 * cost)
    assert not store.put("huge", Entry((b"\x00" * 3 * cost,), 1.0, 3))  # never fits
    store.resize(cost, 60)  # "c" was read last
    assert (len(store), store.get("a"), store.get("c")) == (1, None, one)


def test_a_memory_entry_expires_after_the_ttl() -> None:
    clock = Clock()
    store = MemoryStore(1 << 20, 10, clock)
    store.put("a", ENTRY)
    clock.now += 9.9
    assert store.get("a") is ENTRY
    clock.now += 0.2
    assert store.get("a") is None
    assert (len(store), store.bytes) == (0, 0)


async def test_an_expired_entry_leaves_the_entries_and_bytes_gauges() -> None:
    metrics = Metrics()
    cache = PhraseCache(CacheConfig(ttl=10), metrics)
    clock = Clock()
    cache.memory.clock = clock
    cache.store("k", ENTRY, "p")
    assert metrics.cache_entries._value.get() == 1
    clock.now += 11
    assert await cache.lookup("k") is None
    assert metrics.cache_entries._value.get() == 0
    assert metrics.cache_bytes._value.get() == 0


class _SlowToClose:
    """A provider stream whose close (a connection being shut) waits for the test."""

    def __init__(self, chunks: list[bytes], closing: asyncio.Event) -> None:
        self.chunks = chunks
        self.closing = closing

    def __aiter__(self) -> _SlowToClose:
        return self

    async def __anext__(self) -> bytes:
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)

    async def aclose(self) -> None:
        await self.closing.wait()


async def test_a_flight_settles_as_its_answer_completes_not_once_its_upstream_has_closed() -> None:
    # Were it stored only once the upstream is closed, a request in between would miss it and
    # synthesize the phrase again.
    closing = asyncio.Event()
    settled: list[bool] = []
    source = _SlowToClose([b"\x01\x00" * 10, b"\x02\x00" * 10], closing)

    async def run() -> AudioStream:
        provider = FakeProvider(ProviderConfig(name="p", type="fake", settings={"api_key": "k"}))
        converter = Converter(AudioFormat(24000), 24000)
        upstream = cast(AsyncGenerator[bytes, None], source)
        return AudioStream(
            cast(ChainStep, None), provider, b"\x00\x00", converter, upstream, Lease(None)
        )

    flight = Flight("k")
    flight.start(run, lambda f: settled.append(f.complete))
    reader: AsyncGenerator[bytes, None] = flight.read()
    assert [chunk async for chunk in reader] == [b"\x01\x00" * 10, b"\x02\x00" * 10]
    assert settled == [True]
    assert flight.task is not None and not flight.task.done()  # still closing its upstream
    closing.set()
    await flight.task
    assert settled == [True]  # once only
