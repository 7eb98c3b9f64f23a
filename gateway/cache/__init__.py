"""The phrase cache: repeated phrases answered from stored native audio, identical requests in
flight sharing one synthesis. See :mod:`.phrase` (how the relay uses it), :mod:`.keys` (what an
entry is keyed by), :mod:`.store` (memory and Redis) and :mod:`.flight` (single flight)."""

from __future__ import annotations

from .keys import cache_key, cacheable
from .phrase import PhraseCache
from .store import Entry, MemoryStore, RedisStore

__all__ = ["Entry", "MemoryStore", "PhraseCache", "RedisStore", "cache_key", "cacheable"]
