"""The phrase cache in a real gateway over a loopback upstream: a repeat is answered from the
cache with no upstream request, with the live answer's bytes and chunking, at every sample rate
from one entry; whatever shapes the audio is in the key, so a routing change never replays
stale audio; what may not be cached never is; a hit does not depend on the provider's breaker."""

from __future__ import annotations

import asyncio

import pytest

from gateway.app import create_app
from gateway.config import parse_config
from tests.cache_support import PHRASE, PhraseUpstream, ask, body, routing
from tests.support import live_server, raw_post, tone


async def test_a_repeat_is_a_hit_with_no_upstream_request_and_the_live_answers_chunks() -> None:
    release = [asyncio.Event() for _ in PHRASE]
    steps = [part for chunk, gate in zip(PHRASE, release, strict=True) for part in (chunk, gate)]
    async with PhraseUpstream(steps=steps) as upstream:
        app = create_app(parse_config(routing(upstream.url)))
        async with live_server(app) as url:
            # The live answer, read chunk by chunk: each chunk leaves the upstream only once the
            # caller has the one before, so the caller's chunking is the upstream's.
            response = await raw_post(url, "/stream-audio", body())
            assert response.status == 200
            assert response.headers["x-cache"] == "miss"
            live = []
            for gate in release:
                chunk = await response.read_chunk()
                assert chunk is not None
                live.append(chunk)
                gate.set()
            assert await response.read_chunk() is None
            response.close()
            assert live == list(PHRASE)

            again = await ask(url, body())
            assert again.status == 200
            assert again.cache == "hit"
            assert again.chunks == live  # same bytes, same chunk count and sizes
            assert upstream.count == 1


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
async def test_one_entry_serves_every_rate_as_a_live_answer_at_that_rate_would(rate: int) -> None:
    # The provider answers at 24 kHz only: the entry is its native audio, converted on the way
    # out, so a hit at another rate is what a live answer at that rate is.
    async with PhraseUpstream(steps=(tone(440, 0.1, 24000),)) as upstream:
        app = create_app(parse_config(routing(upstream.url)))
        async with live_server(app) as url:
            first = await ask(url, body(rate=24000))
            assert (first.status, first.cache) == (200, "miss")
            hit = await ask(url, body(rate=rate))
            assert (hit.status, hit.cache) == (200, "hit")
            assert upstream.count == 1
            live = await ask(url, body(rate=rate, voice="live"))
            assert (live.status, live.cache) == (200, None)
            assert upstream.count == 2
            assert upstream.requests[1].body["SampleRate"] == 24000
            assert hit.audio == live.audio
            assert len(hit.audio) == pytest.approx(0.1 * rate * 2, abs=4)


async def test_a_hit_resamples_with_the_servers_resampler_mode() -> None:
    # server.resampler picks how a live answer is resampled (here the block filter, where "auto"
    # would pick the low-latency one for a short first chunk); a hit is resampled the same way.
    async with PhraseUpstream(steps=(tone(440, 0.2, 24000),)) as upstream:
        app = create_app(parse_config(routing(upstream.url, resampler="block")))
        async with live_server(app) as url:
            assert (await ask(url, body(rate=24000))).cache == "miss"
            hit = await ask(url, body(rate=8000))
            live = await ask(url, body(rate=8000, voice="live"))
            assert hit.cache == "hit"
            assert hit.audio == live.audio
