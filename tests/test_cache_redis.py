"""The phrase cache shared through a real Redis (a redis-server of the test's own): gateways
share entries; an outage degrades to memory-only with one warning and never fails a
synthesis, and Redis is used again once it is back; a hostile value under a key is a miss."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from gateway.app import create_app
from gateway.cache import store
from gateway.cache.keys import KEY_PREFIX
from gateway.config import parse_config
from tests.answering_upstream import metric, scrape
from tests.cache_support import PHRASE, PhraseUpstream, ask, body, routing
from tests.redis_support import RedisServer
from tests.support import eventually, live_server

WHOLE = b"".join(PHRASE)


def _keys(redis_server: RedisServer) -> list[bytes]:
    with redis_server.client() as client:
        return sorted(client.keys(KEY_PREFIX + "*"))


def _records(caplog: pytest.LogCaptureFixture, text: str) -> Callable[[], list[str]]:
    def found() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if r.name == "gateway.cache"]
        return [line for line in lines if text in line]

    return found


async def test_a_second_gateway_answers_from_what_the_first_stored(
    redis_server: RedisServer,
) -> None:
    async with PhraseUpstream() as upstream:
        yaml = routing(upstream.url, cache={"redis_url": redis_server.url})
        first, second = create_app(parse_config(yaml)), create_app(parse_config(yaml))
        async with live_server(first) as one, live_server(second) as two:
            assert (await ask(one, body())).cache == "miss"
            assert await eventually(lambda: len(_keys(redis_server)) == 1, 10)
            answer = await ask(two, body(rate=16000))
            assert (answer.status, answer.cache) == (200, "hit")
            assert upstream.count == 1
            live = await ask(two, body(rate=16000, voice="live"))
            assert answer.audio == live.audio


async def test_a_redis_outage_is_memory_only_with_one_warning_and_redis_is_used_again(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, "gateway.cache")
    monkeypatch.setattr(store, "REDIS_RETRY_AFTER", 0.0)  # every call tries Redis again
    async with PhraseUpstream() as upstream:
        yaml = routing(upstream.url, cache={"redis_url": redis_server.url})
        app = create_app(parse_config(yaml))
        async with live_server(app) as url, httpx.AsyncClient() as client:
            assert (await ask(url, body("One."))).cache == "miss"
            assert await eventually(lambda: len(_keys(redis_server)) == 1, 10)

            redis_server.stop()
            for text in ("Two.", "Three.", "Four."):
                answer = await ask(url, body(text))
                assert (answer.status, answer.cache, answer.audio) == (200, "miss", WHOLE)
            again = await ask(url, body("Two."))  # memory still serves
            assert (again.status, again.cache) == (200, "hit")
            failed = _records(caplog, "Redis failed")
            assert await eventually(lambda: len(failed()) >= 1)
            page = await scrape(client, url)
            errors = metric(page, "tts_cache_redis_errors_total", op="get") or 0
            assert errors >= 3
            assert len(failed()) == 1  # one warning for the whole outage

            redis_server.start()  # empty: it kept nothing
            assert (await ask(url, body("Five."))).cache == "miss"
            assert await eventually(lambda: len(_keys(redis_server)) == 1, 10)
            assert _records(caplog, "answers again")()
            assert len(failed()) == 1


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"garbage", id="garbage"),
        pytest.param(b"TTSC1" + b"\xff" * 4096, id="huge-count"),
        pytest.param(b"\x00" * 100_000, id="zeros"),
    ],
)
async def test_a_hostile_value_under_a_key_is_a_miss(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, value: bytes
) -> None:
    async with PhraseUpstream() as upstream:
        yaml = routing(upstream.url, cache={"redis_url": redis_server.url})
        async with live_server(create_app(parse_config(yaml))) as one:
            assert (await ask(one, body())).cache == "miss"
            assert await eventually(lambda: len(_keys(redis_server)) == 1, 10)
        (key,) = _keys(redis_server)
        with redis_server.client() as client:
            client.set(key, value)
        async with live_server(create_app(parse_config(yaml))) as two:
            answer = await ask(two, body())
            assert (answer.status, answer.cache, answer.audio) == (200, "miss", WHOLE)
            assert upstream.count == 2
            assert _records(caplog, "malformed")()
            # The good answer replaced the hostile value.
            assert await eventually(lambda: _value(redis_server, key) != value, 10)


def _value(redis_server: RedisServer, key: bytes) -> bytes | None:
    with redis_server.client() as client:
        found = client.get(key)
    return bytes(found) if found is not None else None


def test_the_fixtures_redis_keeps_nothing_on_disk(redis_server: RedisServer) -> None:
    with redis_server.client() as client:
        assert client.ping()
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}


async def test_a_value_larger_than_any_entry_is_read_no_further_than_one_byte_past_it(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A value planted under a key (Redis takes up to 512 MB) must not be read whole: the bound
    # is lowered here so that a small value is over it, and what the gateway read is counted.
    monkeypatch.setattr(store, "MAX_VALUE_BYTES", 1000)
    reads: list[int] = []

    async with PhraseUpstream() as upstream:
        yaml = routing(upstream.url, cache={"redis_url": redis_server.url, "memory_mb": 0})
        async with live_server(create_app(parse_config(yaml))) as one:
            assert (await ask(one, body())).cache == "miss"
            assert await eventually(lambda: len(_keys(redis_server)) == 1, 10)
        (key,) = _keys(redis_server)
        with redis_server.client() as client:
            client.set(key, b"\0" * 100_000)
        app = create_app(parse_config(yaml))
        cache = app.state.gateway.cache
        assert cache.redis is not None
        client = cache.redis.client
        real = client.getrange

        async def counted(name: str, start: int, end: int) -> bytes:
            value: bytes = await real(name, start, end)
            reads.append(len(value))
            return value

        monkeypatch.setattr(client, "getrange", counted)
        async with live_server(app) as two:
            answer = await ask(two, body())
        assert (answer.status, answer.cache, answer.audio) == (200, "miss", WHOLE)
        assert reads == [1001]  # one byte past the bound, not the 100 000 stored
        assert _records(caplog, "too large")()
