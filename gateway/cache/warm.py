"""Warming: phrases synthesized into the phrase cache before a caller asks for them
(``server.cache.warm`` at start and after each reload; ``tts-gateway warm FILE``).

Each phrase goes to its voice's own provider (not the fallbacks: a fallback's answer would be
stored under the fallback's key, not the voice's), through the same path as a request (breaker,
admission, retries), a few at a time. A phrase already cached costs one lookup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config.model import WarmPhrase
from ..request import TTSRequest

if TYPE_CHECKING:
    from ..runtime import LoadedRouting
    from .phrase import PhraseCache

log = logging.getLogger("gateway.cache")

#: Phrases synthesized at once while warming (the rest of the gateway keeps serving).
WARM_CONCURRENCY = 2


@dataclass(slots=True)
class WarmReport:
    """What warming did: phrases synthesized and stored, found already cached, not cacheable
    (the voice has no ``cache: true``, too long, digits), failed."""

    stored: int = 0
    cached: int = 0
    skipped: int = 0
    failed: int = 0


async def warm_one(routing: LoadedRouting, cache: PhraseCache, phrase: WarmPhrase) -> str:
    """Warm one phrase: ``stored``, ``cached``, ``skipped`` or ``failed``."""
    from ..relay import build_job  # the relay imports the cache

    extend = {"Emotion": phrase.emotion} if phrase.emotion else {}
    request = TTSRequest(phrase.text, phrase.sample_rate, phrase.voice, extend_data=extend)
    chain = routing.router.resolve(phrase.voice)
    if not chain:
        return "skipped"
    step = chain[0]
    text = step.shape(request.text)
    if not text or not cache.applies(step, text):
        return "skipped"
    job = build_job(step, request, "warm", text)
    key = cache.key_for(step, job, routing.relay.opener)
    if await cache.has(key):
        return "cached"
    try:
        stream = await cache.open(step, job, routing.relay.opener)
    except Exception as error:
        _failed(phrase, error)
        return "failed"
    if stream.cache == "hit":
        await stream.aclose()
        return "cached"
    try:
        # Read as a caller would, within the provider's total budget: an upstream that stalls
        # is given up on, as a caller's stream would be.
        async with asyncio.timeout(step.provider.timeout.total):
            async for _ in stream.chunks():
                pass
    except Exception as error:
        _failed(phrase, error)
        return "failed"
    finally:
        await stream.aclose()
    # The answer was stored as it completed (in memory at once, in Redis in the background).
    if cache.redis is not None:
        await cache.redis.settle()
    return "stored" if await cache.has(key) else "failed"


def _failed(phrase: WarmPhrase, error: BaseException) -> None:
    reason = "timed out" if isinstance(error, TimeoutError) else None
    log.warning(
        "warming a phrase of voice %s failed: %s",
        phrase.voice,
        reason or getattr(error, "summary", "") or type(error).__name__,
    )


async def warm_phrases(
    routing: LoadedRouting, cache: PhraseCache, phrases: Iterable[WarmPhrase]
) -> WarmReport:
    """Warm every phrase, :data:`WARM_CONCURRENCY` at a time; logs one line at the end."""
    report = WarmReport()
    started = time.perf_counter()
    queue = list(phrases)
    slots = asyncio.Semaphore(WARM_CONCURRENCY)

    async def one(phrase: WarmPhrase) -> None:
        async with slots:
            result = await warm_one(routing, cache, phrase)
        setattr(report, result, getattr(report, result) + 1)

    with routing.in_use():
        await asyncio.gather(*(one(p) for p in queue))
    if cache.redis is not None:
        await cache.redis.settle()
    log.info(
        "warmed the phrase cache: %d stored, %d already cached, %d not cacheable, %d failed "
        "in %.1f s",
        report.stored,
        report.cached,
        report.skipped,
        report.failed,
        time.perf_counter() - started,
        extra={
            "event": "cache_warmed",
            "stored": report.stored,
            "cached": report.cached,
            "skipped": report.skipped,
            "failed": report.failed,
        },
    )
    return report
