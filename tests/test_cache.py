"""The phrase cache in a real gateway over a loopback upstream: a repeat is answered from the
cache with no upstream request, with the live answer's bytes and chunking, at every sample rate
from one entry; whatever shapes the audio is in the key, so a routing change never replays
stale audio; what may not be cached never is; a hit does not depend on the provider's breaker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.audio import FIRST_OUT, Converter
from gateway.config import parse_config
from gateway.runtime import Gateway
from providers.base import AudioFormat
from tests.answering_upstream import metric, scrape
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


@pytest.mark.parametrize("rate", [48000, 16000])
async def test_a_long_first_piece_sends_its_first_audio_first_on_a_miss_and_a_hit(
    rate: int,
) -> None:
    # A provider that sends a second of audio at once: the miss, the hit that replays it and
    # the live answer each send at most FIRST_OUT of it first, then the rest; all three are
    # what converting the second in one go gives.
    second = tone(440, 1.0, 24000)
    async with PhraseUpstream(steps=(second,)) as upstream:
        app = create_app(parse_config(routing(upstream.url)))
        async with live_server(app) as url:
            miss = await ask(url, body(rate=rate))
            hit = await ask(url, body(rate=rate))
            live = await ask(url, body(rate=rate, voice="live"))
            assert upstream.count == 2
    converter = Converter(AudioFormat(24000), rate)
    whole = converter.feed(second) + converter.flush()
    for answer, origin in ((miss, "miss"), (hit, "hit"), (live, None)):
        assert (answer.status, answer.cache) == (200, origin)
        assert answer.audio == whole
        assert 0 < len(answer.chunks[0]) <= 2 * FIRST_OUT * rate
        assert len(answer.chunks) >= 2


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


WHOLE = b"".join(PHRASE)


@asynccontextmanager
async def reloadable(
    tmp_path: Path, upstream: PhraseUpstream, **routing_args: Any
) -> AsyncIterator[tuple[str, Gateway, Callable[..., Any]]]:
    """A gateway on a routing file it can reload: yields its URL, itself, and ``rewrite``
    (``await rewrite(**routing_args)`` writes the file anew and reloads it)."""
    path = tmp_path / "gateway.yaml"
    path.write_text(routing(upstream.url, **routing_args))
    app = create_app(config_path=str(path))
    gateway: Gateway = app.state.gateway

    async def rewrite(**changed: Any) -> None:
        path.write_text(routing(upstream.url, **changed))
        assert await gateway.reload()

    async with live_server(app) as url:
        yield url, gateway, rewrite


async def _stored(url: str, upstream: PhraseUpstream) -> None:
    """The phrase is asked once (a miss) and once more (a hit)."""
    assert (await ask(url, body())).cache == "miss"
    assert (await ask(url, body())).cache == "hit"


async def test_a_reload_that_changes_the_options_never_replays_the_old_audio(
    tmp_path: Path,
) -> None:
    async with (
        PhraseUpstream() as upstream,
        reloadable(tmp_path, upstream, voice={"options": {"speed": 1.0}}) as (url, _, rewrite),
    ):
        await _stored(url, upstream)
        upstream.steps = (tone(660, 0.05, 24000),)  # what the provider says at the new speed
        await rewrite(voice={"options": {"speed": 1.2}})
        answer = await ask(url, body())
        assert (answer.cache, answer.audio) == ("miss", tone(660, 0.05, 24000))
        assert upstream.count == 2
        assert upstream.requests[1].body["speed"] == 1.2
        assert (await ask(url, body())).audio == tone(660, 0.05, 24000)  # the new entry


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"provider": {"options": {"model": "b"}}}, id="provider-options"),
        pytest.param({"provider": {"headers": {"X-Model": "b"}}}, id="provider-setting"),
        pytest.param({"voice": {"voice": "other"}}, id="provider-voice"),
        pytest.param({"voice": {"emotions": {"happy": {"pitch": 2}}}}, id="emotion-mapping"),
    ],
)
async def test_a_routing_change_of_what_shapes_the_audio_is_a_miss(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    before: dict[str, Any] = {
        "provider": {"options": {"model": "a"}, "headers": {"X-Model": "a"}},
        "voice": {"voice": "one"},
    }
    after = {key: {**before.get(key, {}), **value} for key, value in change.items()}
    async with (
        PhraseUpstream() as upstream,
        reloadable(tmp_path, upstream, **before) as (url, _, rewrite),
    ):
        assert (await ask(url, body(Emotion="happy"))).cache == "miss"
        assert (await ask(url, body(Emotion="happy"))).cache == "hit"
        await rewrite(**{**before, **after})
        assert (await ask(url, body(Emotion="happy"))).cache == "miss"
        assert upstream.count == 2


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param({"token": "second"}, id="token"),
        pytest.param({"headers": {"X-Api-Key": "second"}}, id="header"),
    ],
)
async def test_a_rotated_key_keeps_the_hits(tmp_path: Path, secret: dict[str, Any]) -> None:
    first = {k: ({"X-Api-Key": "first"} if k == "headers" else "first") for k in secret}
    async with (
        PhraseUpstream() as upstream,
        reloadable(tmp_path, upstream, provider=first) as (url, _, rewrite),
    ):
        await _stored(url, upstream)
        await rewrite(provider=secret)
        assert (await ask(url, body())).cache == "hit"
        assert upstream.count == 1


async def test_another_text_voice_or_emotion_is_a_miss() -> None:
    async with PhraseUpstream() as upstream:
        yaml = routing(upstream.url)
        doc = json.loads(yaml)
        doc["voices"]["w"] = {"provider": "up", "voice": "w", "cache": True}
        async with live_server(create_app(parse_config(json.dumps(doc)))) as url:
            await _stored(url, upstream)
            for request in (
                body(text="Hello there!"),
                body(voice="w"),
                body(Emotion="sad"),
            ):
                assert (await ask(url, request)).cache == "miss"
            assert upstream.count == 4
            # The call's own fields (which call, which sentence) are not what the audio is.
            again = await ask(url, body(InstanceId="call-2", SentenceId="7"))
            assert again.cache == "hit"
            assert upstream.count == 4


@pytest.mark.parametrize(
    ("cache", "text"),
    [
        pytest.param({}, "Your code is 4711.", id="digits"),
        pytest.param({"max_text_chars": 10}, "Hello there, caller.", id="too-long"),
    ],
)
async def test_what_may_not_be_cached_never_is(cache: dict[str, Any], text: str) -> None:
    async with PhraseUpstream() as upstream:
        app = create_app(parse_config(routing(upstream.url, cache=cache)))
        async with live_server(app) as url:
            for _ in range(2):
                answer = await ask(url, body(text=text))
                assert (answer.status, answer.cache, answer.audio) == (200, None, WHOLE)
            assert upstream.count == 2


async def test_digits_are_cached_when_skip_digits_is_off() -> None:
    async with PhraseUpstream() as upstream:
        yaml = routing(upstream.url, cache={"skip_digits": False})
        async with live_server(create_app(parse_config(yaml))) as url:
            assert (await ask(url, body(text="Press 1."))).cache == "miss"
            assert (await ask(url, body(text="Press 1."))).cache == "hit"
            assert upstream.count == 1


async def test_a_voice_without_cache_true_never_uses_it() -> None:
    async with PhraseUpstream() as upstream:
        app = create_app(parse_config(routing(upstream.url)))
        async with live_server(app) as url:
            for _ in range(2):
                assert (await ask(url, body(voice="live"))).cache is None
            assert upstream.count == 2


async def test_the_metrics_count_lookups_bytes_entries_and_what_was_saved() -> None:
    async with PhraseUpstream() as upstream:
        app = create_app(parse_config(routing(upstream.url)))
        async with live_server(app) as url, httpx.AsyncClient() as client:
            page = await scrape(client, url)
            assert metric(page, "tts_cache_entries") == 0
            assert (await ask(url, body())).cache == "miss"
            page = await scrape(client, url)
            assert metric(page, "tts_cache_lookups_total", provider="up", result="miss") == 1
            assert metric(page, "tts_cache_stored_total", provider="up") == 1
            assert metric(page, "tts_cache_entries") == 1
            assert (metric(page, "tts_cache_bytes") or 0) >= len(WHOLE)
            assert metric(page, "tts_cache_characters_saved_total", provider="up") in (None, 0)

            for _ in range(2):
                assert (await ask(url, body(rate=8000))).cache == "hit"
            page = await scrape(client, url)
            assert metric(page, "tts_cache_lookups_total", provider="up", result="hit") == 2
            saved = len("Hello there.") * 2
            assert metric(page, "tts_cache_characters_saved_total", provider="up") == saved
            seconds = metric(page, "tts_cache_audio_seconds_saved_total", provider="up")
            assert seconds == pytest.approx(2 * len(WHOLE) / 2 / 24000)
            assert metric(page, "tts_cache_entries") == 1
            # What the provider billed: the one miss only.
            assert metric(page, "tts_provider_characters_total", provider="up") == len(
                "Hello there."
            )


async def test_a_cached_phrase_is_answered_while_the_providers_breaker_is_open() -> None:
    # The breaker guards the provider; a stored answer needs no provider, so it is served
    # (without touching the breaker or a slot), while anything else is refused.
    async with PhraseUpstream() as upstream:
        yaml = routing(
            upstream.url,
            provider={"circuit_breaker": {"failures": 1, "cooldown": 300, "max_cooldown": 300}},
        )
        app = create_app(parse_config(yaml))
        async with live_server(app) as url, httpx.AsyncClient() as client:
            assert (await ask(url, body())).cache == "miss"
            upstream.status = 503
            failed = await ask(url, body(text="Something else."))
            assert failed.status == 502
            state = (await client.get(url + "/providers")).json()["providers"][0]
            assert state["breaker"]["state"] == "open"
            refused = await ask(url, body(text="A third thing."))
            assert refused.status == 503
            assert json.loads(refused.audio)["error"]["code"] == "provider_busy"
            count = upstream.count

            hit = await ask(url, body())
            assert (hit.status, hit.cache, hit.audio) == (200, "hit", WHOLE)
            assert upstream.count == count
            state = (await client.get(url + "/providers")).json()["providers"][0]
            assert state["breaker"]["state"] == "open"
            assert state["in_flight"] == 0


async def test_the_memory_cache_is_bounded_by_bytes_and_evicts_the_least_recently_used() -> None:
    # Each phrase is 100 ms at 24 kHz (4800 bytes, plus its bookkeeping): two fit, not three.
    phrase = tone(440, 0.1, 24000)
    async with PhraseUpstream(steps=(phrase,)) as upstream:
        yaml = routing(upstream.url, cache={"memory_mb": 11000 / (1 << 20)})
        app = create_app(parse_config(yaml))
        async with live_server(app) as url:
            for text in ("One.", "Two."):
                assert (await ask(url, body(text=text))).cache == "miss"
            assert (await ask(url, body(text="One."))).cache == "hit"  # now the most recent
            assert (await ask(url, body(text="Three."))).cache == "miss"  # evicts "Two."
            assert (await ask(url, body(text="One."))).cache == "hit"
            assert (await ask(url, body(text="Two."))).cache == "miss"
            assert upstream.count == 4
