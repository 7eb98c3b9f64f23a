"""Where phrase-cache entries live: an in-process LRU bounded by bytes, and Redis when
``server.cache.redis_url`` is set (shared by every process and replica).

An entry is the provider's **native** answer, exactly as its plugin yielded it, chunk by chunk
(so a hit replays in the chunking of a live answer and is converted to the caller's rate on the
way out, like a live answer). Lookups go to memory first, then Redis; a Redis hit is copied into
memory. Redis is a help, never a dependency: every Redis call has a deadline, and a failure
marks Redis down for a while (one warning, then one line when it is back) during which the
cache is memory-only; a synthesis never fails for it. What Redis returns is parsed as the
untrusted bytes it might be: a malformed entry is a miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger("gateway.cache")

#: What a stored entry costs besides its audio bytes (Python objects, the key), per chunk and
#: per entry: the memory bound counts it so a phrase of many tiny chunks is not under-counted.
CHUNK_OVERHEAD: Final = 40
ENTRY_OVERHEAD: Final = 300

#: A Redis call (connect included) gets this long before the cache goes on without it.
REDIS_DEADLINE: Final = 0.25
#: After a Redis failure, it is left alone this long before being tried again.
REDIS_RETRY_AFTER: Final = 5.0
#: Writes to Redis in flight at once; beyond it a write is dropped (the entry stays in memory).
MAX_PENDING_WRITES: Final = 64
#: The largest entry stored (bytes of audio); longer answers are served, not stored.
MAX_ENTRY_BYTES: Final = 32 << 20
#: The most chunks an entry has (a provider that sends its audio in crumbs is not stored).
MAX_ENTRY_CHUNKS: Final = 1 << 16

_MAGIC: Final = b"TTSC1"
_HEAD: Final = struct.Struct("<5sIdI")  # magic, characters, audio seconds, chunk count
#: The largest Redis value an entry can be (its head, its chunk sizes, its audio).
MAX_VALUE_BYTES: Final = _HEAD.size + 4 * MAX_ENTRY_CHUNKS + MAX_ENTRY_BYTES


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached answer: the native chunks, and what it saves each time it is replayed."""

    chunks: tuple[bytes, ...]
    audio_seconds: float
    characters: int

    @property
    def audio_bytes(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def cost(self) -> int:
        """Bytes this entry is counted as in memory."""
        return self.audio_bytes + CHUNK_OVERHEAD * len(self.chunks) + ENTRY_OVERHEAD

    def encode(self) -> bytes:
        """The entry as one Redis value."""
        sizes = struct.pack(f"<{len(self.chunks)}I", *(len(c) for c in self.chunks))
        head = _HEAD.pack(_MAGIC, self.characters, self.audio_seconds, len(self.chunks))
        return b"".join((head, sizes, *self.chunks))

    @classmethod
    def decode(cls, blob: bytes) -> Entry | None:
        """An entry from a Redis value, or None when it is not one (any corruption)."""
        if len(blob) < _HEAD.size:
            return None
        magic, characters, seconds, count = _HEAD.unpack_from(blob)
        sizes_end = _HEAD.size + 4 * count
        if magic != _MAGIC or not 0 < count <= MAX_ENTRY_CHUNKS or sizes_end > len(blob):
            return None
        if not (seconds >= 0 and seconds < 1e7):  # also false for NaN
            return None
        sizes = struct.unpack_from(f"<{count}I", blob, _HEAD.size)
        # No empty chunk (none is ever stored) and no more audio than an entry may hold.
        if not all(sizes) or sizes_end + sum(sizes) != len(blob):
            return None
        if len(blob) - sizes_end > MAX_ENTRY_BYTES:
            return None
        chunks, at = [], sizes_end
        view = memoryview(blob)
        for size in sizes:
            chunks.append(bytes(view[at : at + size]))
            at += size
        return cls(tuple(chunks), seconds, characters)


class MemoryStore:
    """An LRU of entries bounded by :attr:`Entry.cost`, each with an expiry."""

    def __init__(
        self, capacity: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self.clock = clock
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[float, Entry]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Entry | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, entry = found
        if expires <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry, ttl: float | None = None) -> bool:
        """Store ``entry`` (evicting the least recently used); False if it can never fit."""
        cost = entry.cost
        if cost > self.capacity:
            return False
        if key in self._entries:
            self._drop(key)
        while self.bytes + cost > self.capacity and self._entries:
            self._drop(next(iter(self._entries)))
        self._entries[key] = (self.clock() + (ttl or self.ttl), entry)
        self.bytes += cost
        return True

    def resize(self, capacity: int, ttl: float) -> None:
        """New bounds (a reload): entries over the new capacity are evicted, oldest first."""
        self.capacity, self.ttl = capacity, ttl
        while self.bytes > capacity and self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _expires, entry = self._entries.pop(key)
        self.bytes -= entry.cost


class RedisStore:
    """Entries in Redis, with a deadline on every call and a pause after a failure."""

    def __init__(self, url: str, ttl: float, metrics: Metrics | None = None) -> None:
        import redis.asyncio as aioredis  # the dependency is only paid for when used

        self.url = url
        self.ttl = ttl
        self.metrics = metrics
        self.client: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=REDIS_DEADLINE,
            socket_connect_timeout=REDIS_DEADLINE,
            retry_on_timeout=False,
            health_check_interval=30,
        )
        self._down_until = 0.0
        self._down = False
        self.failures = 0
        """Calls that failed since this store was made (the warm command reports them)."""
        self._writes: set[asyncio.Task[None]] = set()

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def get(self, key: str) -> Entry | None:
        if not self.available:
            return None
        try:
            async with asyncio.timeout(REDIS_DEADLINE):
                # At most one byte more than an entry can be: a value planted in Redis (up to
                # its 512 MB) is never read whole. A missing key reads as empty.
                blob = await self.client.getrange(key, 0, MAX_VALUE_BYTES)
        except Exception as error:
            self._failed("get", error)
            return None
        self._ok()
        if not blob:
            return None
        if len(blob) > MAX_VALUE_BYTES:
            log.warning("the phrase cache's Redis entry %s… is too large: ignored", key[-16:])
            return None
        entry = Entry.decode(bytes(blob))
        if entry is None:
            log.warning("the phrase cache's Redis entry %s… is malformed: ignored", key[-16:])
        return entry

    def put(self, key: str, entry: Entry) -> None:
        """Store in the background (a write never holds up an answer)."""
        if not self.available or len(self._writes) >= MAX_PENDING_WRITES:
            return
        task = asyncio.get_running_loop().create_task(self._put(key, entry.encode()))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _put(self, key: str, blob: bytes) -> None:
        try:
            async with asyncio.timeout(REDIS_DEADLINE * 4):
                await self.client.set(key, blob, px=max(1, int(self.ttl * 1000)))
        except Exception as error:
            self._failed("set", error)
            return
        self._ok()

    async def settle(self) -> None:
        """Wait for the writes in flight (tests, the warm command, shutdown)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def aclose(self) -> None:
        await self.settle()
        with contextlib.suppress(Exception):
            await self.client.aclose()

    def _failed(self, op: str, error: BaseException) -> None:
        self.failures += 1
        self._down_until = time.monotonic() + REDIS_RETRY_AFTER
        if self.metrics is not None:
            self.metrics.cache_redis_errors.labels(op).inc()
        if not self._down:
            self._down = True
            log.warning(
                "the phrase cache's Redis failed (%s: %s): memory-only for now, retried every %g s",
                op,
                type(error).__name__,
                REDIS_RETRY_AFTER,
            )

    def _ok(self) -> None:
        if self._down:
            self._down = False
            log.warning("the phrase cache's Redis answers again")


def entry_of(chunks: Sequence[bytes], audio_seconds: float, characters: int) -> Entry | None:
    """An entry for a complete answer, or None when it is too large to keep."""
    if not chunks or len(chunks) > MAX_ENTRY_CHUNKS or sum(map(len, chunks)) > MAX_ENTRY_BYTES:
        return None
    return Entry(tuple(chunks), audio_seconds, characters)
