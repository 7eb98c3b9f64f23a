"""The phrase cache as the relay uses it: one voice of a chain, answered from the cache, from an
identical request's synthesis in flight, or by a synthesis of its own that is stored once it is
complete.

::

    voice has ``cache: true`` and the shaped text is cacheable (length, digits)?  no ─► live
    key (provider instance, voice, options, emotion, instructions, text, native format)
    memory ─► Redis ─► hit: replay the native chunks through a converter at the caller's rate
    a flight for the key?  ─► read it from its start ("shared")
    else start one ("miss"): it stores the answer when the upstream ends without an error

A hit costs no provider call, no slot, no breaker ticket and no retry budget. What is replayed
is what the provider sent, so a hit converts (and is chunked) exactly as a live answer would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterable
from typing import TYPE_CHECKING

from providers.base import AudioFormat, Provider, ProviderError, ProviderNoAudio, SynthesisJob

from ..admission import Lease
from ..audio import AudioFormatError, Converter, ResamplerMode
from ..config.model import CacheConfig
from ..metrics import Metrics
from ..routing import ChainStep
from ..spend import Bill
from ..stream import AudioStream
from .flight import Flight
from .keys import cache_key, cacheable
from .store import Entry, MemoryStore, RedisStore, entry_of

if TYPE_CHECKING:
    from ..attempts import VoiceOpener

log = logging.getLogger("gateway.cache")

_MIB = 1 << 20


class PhraseCache:
    """The gateway's phrase cache (one per process, kept across reloads: its keys hold
    everything a reload could change)."""

    def __init__(self, config: CacheConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.memory = MemoryStore(int(config.memory_mb * _MIB), config.ttl)
        self.redis = RedisStore(config.redis_url, config.ttl, metrics) if config.redis_url else None
        self.flights: dict[str, Flight] = {}
        self._retired: set[asyncio.Task[None]] = set()

    def reconfigure(self, config: CacheConfig) -> None:
        """A reload's ``server.cache``: the memory bound and TTL applied, Redis reconnected if
        its URL changed (the old client closed in the background)."""
        self.config = config
        self.memory.resize(int(config.memory_mb * _MIB), config.ttl)
        self._gauges()
        old = self.redis
        if old is not None and old.url == config.redis_url:
            old.ttl = config.ttl
            return
        self.redis = (
            RedisStore(config.redis_url, config.ttl, self.metrics) if config.redis_url else None
        )
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.aclose())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def aclose(self) -> None:
        for flight in list(self.flights.values()):
            if flight.task is not None:
                flight.task.cancel()
        if self.redis is not None:
            await self.redis.aclose()

    def applies(self, step: ChainStep, text: str) -> bool:
        """Whether this voice's answer to ``text`` (shaped) may come from or go to the cache."""
        return step.voice.cache and cacheable(text, self.config)

    # -- lookups and stores --------------------------------------------------------------------

    async def lookup(self, key: str) -> Entry | None:
        held = len(self.memory)
        entry = self.memory.get(key)
        if len(self.memory) != held:  # it had expired
            self._gauges()
        if entry is None and self.redis is not None:
            entry = await self.redis.get(key)
            if entry is not None and self.memory.put(key, entry):
                self._gauges()
        return entry

    def store(self, key: str, entry: Entry, provider: str) -> None:
        self.metrics.cache_stored.labels(provider).inc()
        if self.memory.put(key, entry):
            self._gauges()
        if self.redis is not None:
            self.redis.put(key, entry)

    def _gauges(self) -> None:
        self.metrics.cache_bytes.set(self.memory.bytes)
        self.metrics.cache_entries.set(len(self.memory))

    # -- the relay's side ----------------------------------------------------------------------

    def key_for(self, step: ChainStep, job: SynthesisJob, opener: VoiceOpener) -> str:
        """The key ``job`` is cached under on ``step``'s provider."""
        provider = opener.providers[step.provider.name]
        return cache_key(provider, job, provider.native_format(job))

    async def open(
        self, step: ChainStep, job: SynthesisJob, opener: VoiceOpener, bill: Bill | None = None
    ) -> AudioStream:
        """One voice of the chain through the cache (see the module docstring). Raises what
        :meth:`VoiceOpener.open` raises. A miss adds what its synthesis sends to ``bill``."""
        provider = opener.providers[step.provider.name]
        native = provider.native_format(job)
        key = cache_key(provider, job, native)
        entry = await self.lookup(key)
        name = provider.name
        if entry is not None:
            self.metrics.cache_lookups.labels(name, "hit").inc()
            self.metrics.cache_characters_saved.labels(name).inc(entry.characters)
            return await self._converted(
                step, provider, native, job, _replay(entry.chunks), "hit", opener.resampler
            )
        flight = self.flights.get(key)
        if flight is not None and flight.joinable:
            self.metrics.cache_lookups.labels(name, "shared").inc()
            self.metrics.cache_characters_saved.labels(name).inc(provider.characters(job))
            stream = await self._converted(
                step, provider, native, job, flight.read(), "shared", opener.resampler
            )
            stream.on_failed = flight.failed
            return stream
        self.metrics.cache_lookups.labels(name, "miss").inc()
        flight = Flight(key)
        self.flights[key] = flight
        characters = provider.characters(job)

        async def run() -> AudioStream:
            return await opener.open(
                step, job, out_rate=native.sample_rate, keep_native=True, bill=bill
            )

        def settle(flight: Flight) -> None:
            if self.flights.get(key) is flight:
                del self.flights[key]
            if flight.complete and flight.storing:
                fmt = flight.stream.converter.input_format if flight.stream else None
                seconds = _seconds(flight.size, fmt or native)
                entry = entry_of([c for c in flight.chunks if c is not None], seconds, characters)
                if entry is not None:
                    self.store(key, entry, name)

        flight.start(run, settle)
        stream = await self._converted(
            step, provider, native, job, flight.read(), "miss", opener.resampler
        )
        stream.on_failed = flight.failed
        stream.characters = characters
        return stream

    async def _converted(
        self,
        step: ChainStep,
        provider: Provider,
        native: AudioFormat,
        job: SynthesisJob,
        source: AsyncGenerator[bytes, None],
        origin: str,
        resampler: ResamplerMode,
    ) -> AudioStream:
        """A stream over native chunks from ``source``, converted to the job's rate (as the
        opener converts a live answer: ``server.resampler``'s mode), with its first audio in
        hand."""
        try:
            converter = Converter(native, job.sample_rate, mode=resampler)
            async for chunk in source:
                # A long first piece (a fast provider's burst, stored as it came): its first
                # audio converted, and so sent, first, as on a live answer.
                first, rest = converter.feed_first(chunk)
                if first:
                    return AudioStream(
                        step,
                        provider,
                        first,
                        converter,
                        source,
                        Lease(None),
                        cache=origin,
                        rest=rest,
                    )
            first = converter.flush()
            if first:
                await source.aclose()
                return AudioStream(
                    step, provider, first, converter, None, Lease(None), cache=origin
                )
            raise ProviderNoAudio(provider.name, "the cached answer holds no audio")
        except AudioFormatError as error:
            await source.aclose()
            raise ProviderError(
                provider.name, f"undecodable audio: {error}", retryable=False
            ) from error
        except BaseException:
            await source.aclose()
            raise

    # -- warming -------------------------------------------------------------------------------

    async def has(self, key: str) -> bool:
        return await self.lookup(key) is not None


async def _replay(chunks: Iterable[bytes]) -> AsyncGenerator[bytes, None]:
    for chunk in chunks:
        yield chunk


def _seconds(size: int, fmt: AudioFormat) -> float:
    """Seconds of audio in ``size`` native bytes (a WAV header's few bytes counted as audio)."""
    return size / fmt.frame_bytes / fmt.sample_rate
