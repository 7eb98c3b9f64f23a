"""Single flight: identical requests in flight at the same time share one upstream synthesis,
and only a complete, successful answer is stored. Each reader of a shared synthesis is on its
own: one hanging up does not cut the others; the upstream is closed when the last one leaves;
an upstream error, a stall or the drain leaves nothing in the cache."""

from __future__ import annotations

import asyncio
import json

import httpx

from gateway.app import create_app
from gateway.config import parse_config
from gateway.runtime import Gateway
from tests.answering_upstream import caller, metric, scrape
from tests.cache_support import (
    CUT,
    PHRASE,
    PhraseUpstream,
    ask,
    body,
    read_answer,
    routing,
)
from tests.support import (
    Plan,
    ScriptedProvider,
    eventually,
    live_server,
    provider_block,
    raw_post,
    tone,
)

WHOLE = b"".join(PHRASE)


def _gateway(app: object) -> Gateway:
    gateway = app.state.gateway  # type: ignore[attr-defined]
    assert isinstance(gateway, Gateway)
    return gateway


async def test_identical_concurrent_requests_share_one_upstream_request() -> None:
    release = asyncio.Event()
    async with PhraseUpstream(steps=(PHRASE[0], release, *PHRASE[1:])) as upstream:
        app = create_app(parse_config(routing(upstream.url)))
        async with live_server(app) as url, httpx.AsyncClient() as client:
            # Every caller has its answer's head (the first chunk) while the upstream still
            # holds the rest back: they are all in flight at once.
            callers = await asyncio.gather(
                *(raw_post(url, "/stream-audio", body()) for _ in range(6))
            )
            assert sorted(c.headers["x-cache"] for c in callers) == ["miss"] + ["shared"] * 5
            release.set()
            answers = await asyncio.gather(*(read_answer(c) for c in callers))
            assert all(a.status == 200 and a.audio == WHOLE for a in answers)
            assert upstream.count == 1

            # Stored: the next one is a hit.
            assert (await ask(url, body())).cache == "hit"
            assert upstream.count == 1
            page = await scrape(client, url)
            assert metric(page, "tts_cache_lookups_total", provider="up", result="miss") == 1
            assert metric(page, "tts_cache_lookups_total", provider="up", result="shared") == 5
            assert metric(page, "tts_cache_lookups_total", provider="up", result="hit") == 1


async def test_the_first_caller_hanging_up_does_not_cut_the_others_and_the_answer_is_stored() -> (
    None
):
    release = asyncio.Event()
    async with PhraseUpstream(steps=(PHRASE[0], release, *PHRASE[1:])) as upstream:
        app = create_app(parse_config(routing(upstream.url)))
        gateway = _gateway(app)
        async with live_server(app) as url:
            first = await raw_post(url, "/stream-audio", body())
            assert first.headers["x-cache"] == "miss"
            others = [await raw_post(url, "/stream-audio", body()) for _ in range(2)]
            assert [o.headers["x-cache"] for o in others] == ["shared", "shared"]
            (flight,) = gateway.cache.flights.values()
            assert await first.read_chunk() == PHRASE[0]
            first.close()  # the one whose request started the synthesis hangs up
            assert await eventually(lambda: len(flight._readers) == 2)
            release.set()
            answers = await asyncio.gather(*(read_answer(o) for o in others))
            assert [a.audio for a in answers] == [WHOLE, WHOLE]
            assert upstream.hung_up == 0

            assert (await ask(url, body())).cache == "hit"
            assert upstream.count == 1


async def test_every_caller_hanging_up_closes_the_upstream_and_stores_nothing() -> None:
    release = asyncio.Event()
    async with PhraseUpstream(steps=(PHRASE[0], release, *PHRASE[1:])) as upstream:
        app = create_app(parse_config(routing(upstream.url)))
        gateway = _gateway(app)
        async with live_server(app) as url:
            callers = [await raw_post(url, "/stream-audio", body()) for _ in range(3)]
            for caller in callers:
                assert await caller.read_chunk() == PHRASE[0]
                caller.close()
            assert await eventually(lambda: upstream.hung_up == 1, 10)
            assert await eventually(lambda: not gateway.cache.flights)
            assert len(gateway.cache.memory) == 0

            upstream.steps = PHRASE
            again = await ask(url, body())
            assert (again.status, again.cache, again.audio) == (200, "miss", WHOLE)
            assert upstream.count == 2


async def test_an_upstream_cut_mid_answer_stores_nothing() -> None:
    async with PhraseUpstream(steps=PHRASE) as upstream:
        upstream.script.append((PHRASE[0], CUT))
        app = create_app(parse_config(routing(upstream.url)))
        gateway = _gateway(app)
        async with live_server(app) as url:
            cut = await ask(url, body())
            assert cut.status == 200
            assert cut.audio == PHRASE[0]  # what came before the cut, then the end
            assert len(gateway.cache.memory) == 0

            again = await ask(url, body())
            assert (again.cache, again.audio) == ("miss", WHOLE)
            assert upstream.count == 2


async def test_a_stall_mid_answer_stores_nothing() -> None:
    never = asyncio.Event()
    async with PhraseUpstream(steps=PHRASE) as upstream:
        upstream.script.append((PHRASE[0], never))
        yaml = routing(upstream.url, provider={"timeout": {"first_byte": 10, "stall": 0.3}})
        app = create_app(parse_config(yaml))
        gateway = _gateway(app)
        async with live_server(app) as url:
            stalled = await ask(url, body())
            assert stalled.audio == PHRASE[0]
            assert await eventually(lambda: upstream.hung_up == 1, 10)
            assert len(gateway.cache.memory) == 0

            again = await ask(url, body())
            assert (again.cache, again.audio) == ("miss", WHOLE)
            assert upstream.count == 2


async def test_a_stream_cut_by_the_drain_stores_nothing() -> None:
    never = asyncio.Event()
    async with PhraseUpstream(steps=(PHRASE[0], never, *PHRASE[1:])) as upstream:
        app = create_app(parse_config(routing(upstream.url, drain_seconds=0.2)))
        gateway = _gateway(app)
        async with live_server(app) as url:
            under_way = await raw_post(url, "/stream-audio", body())
            assert await under_way.read_chunk() == PHRASE[0]
            gateway.begin_drain()
            cut = await read_answer(under_way)
            assert cut.audio == b""  # the rest: nothing, the drain ended it
            assert await eventually(lambda: upstream.hung_up == 1, 10)
            assert await eventually(lambda: not gateway.cache.flights)
            assert len(gateway.cache.memory) == 0
            assert gateway.metrics.cache_stored.labels("up")._value.get() == 0


async def test_an_upstream_error_before_audio_is_the_providers_failure_for_every_reader() -> None:
    # Readers of a shared synthesis each get a copy of its error: the provider's error, as
    # for a voice without the cache (it was a TypeError, so a 500).
    release = asyncio.Event()
    async with PhraseUpstream(steps=(release, CUT)) as upstream:
        app = create_app(parse_config(routing(upstream.url)))
        async with live_server(app) as url:
            first = asyncio.ensure_future(ask(url, body()))
            assert await eventually(lambda: upstream.count == 1)
            gateway = _gateway(app)
            (flight,) = gateway.cache.flights.values()
            second = asyncio.ensure_future(ask(url, body()))
            assert await eventually(lambda: len(flight._readers) == 2)
            release.set()
            for answer in await asyncio.gather(first, second):
                assert answer.status == 502
                assert json.loads(answer.audio)["error"]["code"] == "provider_failed"
            assert upstream.count == 1


async def test_a_request_after_the_last_reader_left_starts_a_synthesis_of_its_own() -> None:
    # The upstream of a flight whose readers have all gone takes a while to close; a request
    # for the same phrase meanwhile must not join it (it would get its cancellation).
    never = asyncio.Event()
    ScriptedProvider.plans["up"] = Plan([[never], [tone(440, 0.05, 24000)]], close_delay=5.0)
    yaml = json.dumps(
        {
            "server": {"default_voice": "v"},
            "providers": {"up": provider_block()},
            "voices": {"v": {"provider": "up", "cache": True}},
        }
    )
    app = create_app(parse_config(yaml))
    gateway = _gateway(app)
    async with live_server(app) as url:
        async with caller(url, body()):  # hangs up at the end of the block, before any audio
            assert await eventually(lambda: len(ScriptedProvider.plans["up"].jobs) == 1)
            (flight,) = gateway.cache.flights.values()
        assert await eventually(lambda: flight.task is not None and flight.task.cancelling() > 0)
        answer = await ask(url, body())
        assert (answer.status, answer.cache) == (200, "miss")
        assert answer.audio == tone(440, 0.05, 24000)
    ScriptedProvider.plans.clear()
