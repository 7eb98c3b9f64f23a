"""Admission and the retry budget over real loopback upstreams: a request finding its provider
full waits at most ``queue`` seconds, then its chain moves on; when every voice is full or open
the answer is 503 ``provider_busy`` with Retry-After (never 504); a caller hanging up while in
line leaks no slot; slots are handed over first come, first served; ElevenLabs' concurrency
signals are honoured; retries stay within the retry budget. The gate and the sliding window are
tested on their own at the end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.admission import ProviderGate
from gateway.config import parse_config
from gateway.window import ShareBudget
from tests.answering_upstream import (
    CHUNK,
    OTHER,
    Answer,
    AnsweringUpstream,
    caller,
    custom_block,
    line_of,
    metric,
    provider_states,
    scrape,
    serving,
    until,
    upstreams,
)
from tests.support import RawResponse, eventually, raw_post, scripted_config

BODY = {"Text": "Hello there.", "SampleRate": 24000, "VoiceId": "a", "ExtendData": ""}
DOWN = Answer(status=503)


def two_voices(up_a: AnsweringUpstream, up_b: AnsweringUpstream, **pa: Any) -> str:
    """Voice ``a`` on ``pa`` (``pa``'s settings over ``up_a``) falling back to voice ``b`` on
    ``pb`` over ``up_b``; voice ``solo`` on ``pa`` alone."""
    up_b.default = Answer(chunks=(OTHER,))
    return scripted_config(
        voices={
            "a": {"provider": "pa", "fallback": ["b"]},
            "b": {"provider": "pb"},
            "solo": {"provider": "pa"},
        },
        providers={"pa": custom_block(up_a.url, **pa), "pb": custom_block(up_b.url)},
    )


async def say(client: httpx.AsyncClient, url: str, **fields: Any) -> httpx.Response:
    return await client.post(url + "/stream-audio", json=dict(BODY, **fields))


async def in_line(client: httpx.AsyncClient, url: str, count: int) -> bool:
    """Whether ``count`` requests wait in line for a slot of ``pa``."""
    return await line_of(client, url, "pa") == count


@contextlib.asynccontextmanager
async def holding(
    url: str, upstream: AnsweringUpstream, headers: dict[str, str] | None = None, **fields: Any
) -> AsyncIterator[None]:
    """A request whose answer has begun (its first audio read) and stays open, holding its
    provider's slot, until the block ends; then it is read to its end. ``headers`` go with the
    upstream's answer."""
    release = asyncio.Event()
    upstream.script.append(Answer(after=release, headers=headers or {}))
    response: RawResponse = await raw_post(url, "/stream-audio", dict(BODY, **fields))
    try:
        assert response.status == 200
        assert await asyncio.wait_for(response.read_chunk(), 10) is not None
        yield
        release.set()
        await asyncio.wait_for(response.read_all(), 10)
    finally:
        response.close()


# ---------------------------------------------------------------- the queue, then the next voice


async def test_a_full_provider_is_waited_for_at_most_its_queue_then_the_fallback_answers() -> None:
    async with upstreams(2) as (up_a, up_b):
        yaml = two_voices(up_a, up_b, max_concurrency=1, queue=0.3)
        async with serving(yaml) as (url, client), holding(url, up_a, Text="first"):
            started = time.perf_counter()
            waiting = asyncio.create_task(say(client, url, Text="second"))
            assert await until(lambda: in_line(client, url, 1))
            response = await waiting
            waited = time.perf_counter() - started
            # Answered by the fallback while the first request still holds pa's only slot.
            assert waited >= 0.29  # the queue wait (asyncio may fire a hair early)
            assert response.status_code == 200
            assert response.headers["x-voice"] == "b" and response.content == OTHER
            assert [r.text for r in up_a.requests] == ["first"]
            page = await scrape(client, url)
    assert metric(page, "tts_overflow_total", voice="b") == 1
    assert metric(page, "tts_provider_rejections_total", provider="pa", reason="busy") == 1
    assert metric(page, "tts_breaker_state", provider="pa") == 0  # a full provider is not sick


async def test_the_queue_wait_is_not_taken_out_of_the_first_byte_budget() -> None:
    async with upstreams(2) as (up_a, up_b):
        # A second in line, in front of a first-byte budget of half that: the request that
        # waited still has its whole budget once it has a slot.
        timeout = {"connect": 2, "first_byte": 0.5, "total": 30, "stall": 30}
        yaml = two_voices(up_a, up_b, max_concurrency=1, queue=5, timeout=timeout)
        async with serving(yaml) as (url, client):
            async with holding(url, up_a, Text="first"):
                waiting = asyncio.create_task(say(client, url, Text="second"))
                assert await until(lambda: in_line(client, url, 1))
                await asyncio.sleep(1.0)  # longer in line than the first-byte budget
                assert await in_line(client, url, 1)
            response = await waiting
    assert response.status_code == 200
    assert response.headers["x-voice"] == "a" and response.content == CHUNK
    assert [r.text for r in up_a.requests] == ["first", "second"]


async def test_every_voice_full_answers_503_provider_busy_with_retry_after_never_504() -> None:
    async with upstreams(2) as (up_a, up_b):
        timeout = {"connect": 2, "first_byte": 0.3, "total": 30, "stall": 30}
        yaml = scripted_config(
            voices={"a": {"provider": "pa", "fallback": ["b"]}, "b": {"provider": "pb"}},
            providers={
                name: custom_block(up.url, max_concurrency=1, queue=0.6, timeout=timeout)
                for name, up in (("pa", up_a), ("pb", up_b))
            },
        )
        async with (
            serving(yaml) as (url, client),
            holding(url, up_a, Text="holds pa"),
            holding(url, up_b, Text="holds pb", VoiceId="b"),
        ):
            response = await say(client, url, Text="finds both full")
            page = await scrape(client, url)
            states = await provider_states(client, url)
    # Both waits (0.6 s each) were longer than the first-byte budget (0.3 s): still ours.
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "provider_busy"
    assert response.headers["retry-after"] == "1"
    assert (up_a.count, up_b.count) == (1, 1)
    assert metric(page, "tts_requests_total", status="503") == 1
    assert metric(page, "tts_requests_total", status="504") is None
    assert all(s["queue"] == 0 for s in states.values())


async def test_open_or_full_voices_answer_503_with_the_soonest_retry_after() -> None:
    async with upstreams(2) as (up_a, up_b):
        yaml = scripted_config(
            voices={"a": {"provider": "pa", "fallback": ["b"]}, "b": {"provider": "pb"}},
            providers={
                "pa": custom_block(
                    up_a.url, circuit_breaker={"failures": 1, "cooldown": 30, "max_cooldown": 60}
                ),
                "pb": custom_block(
                    up_b.url,
                    max_concurrency=1,
                    queue=0.1,
                    circuit_breaker={"failures": 1, "cooldown": 5, "max_cooldown": 60},
                ),
            },
        )
        async with serving(yaml) as (url, client):
            up_a.default = up_b.default = DOWN
            assert (await say(client, url)).status_code == 502  # both failed: both open now
            states = await provider_states(client, url)
            assert [states[p]["breaker"]["state"] for p in ("pa", "pb")] == ["open", "open"]
            both_open = await say(client, url)
            assert (up_a.count, up_b.count) == (1, 1)  # neither was asked again
            assert both_open.status_code == 503
            assert both_open.json()["error"]["code"] == "provider_busy"
            assert both_open.headers["retry-after"] == "5"  # pb's cooldown, the sooner one
    async with upstreams(2) as (up_a, up_b):
        yaml = scripted_config(
            voices={"a": {"provider": "pa", "fallback": ["b"]}, "b": {"provider": "pb"}},
            providers={
                "pa": custom_block(
                    up_a.url, circuit_breaker={"failures": 1, "cooldown": 30, "max_cooldown": 60}
                ),
                "pb": custom_block(up_b.url, max_concurrency=1, queue=0.1),
            },
        )
        async with serving(yaml) as (url, client):
            up_a.default = DOWN
            assert (await say(client, url)).headers["x-voice"] == "b"  # pa failed: open
            async with holding(url, up_b, VoiceId="b"):
                open_and_full = await say(client, url)
    assert open_and_full.status_code == 503
    assert open_and_full.json()["error"]["code"] == "provider_busy"
    assert open_and_full.headers["retry-after"] == "1"


# ---------------------------------------------------------------- the line


async def test_a_caller_hanging_up_in_line_leaks_no_slot() -> None:
    async with upstreams(2) as (up_a, up_b):
        yaml = two_voices(up_a, up_b, max_concurrency=1, queue=10)
        async with serving(yaml) as (url, client):
            async with holding(url, up_a, VoiceId="solo", Text="first"):
                for waiter in range(3):
                    async with caller(url, dict(BODY, VoiceId="solo", Text=f"gone {waiter}")):
                        assert await until(lambda: in_line(client, url, 1))
                    # Hung up while in line: the line is empty again at once.
                    assert await until(lambda: in_line(client, url, 0))
            states = await provider_states(client, url)
            assert (states["pa"]["in_flight"], states["pa"]["queue"]) == (0, 0)
            page = await scrape(client, url)
            assert metric(page, "tts_provider_in_flight", provider="pa") == 0
            assert metric(page, "tts_provider_queued", provider="pa") == 0
            started = time.perf_counter()
            response = await say(client, url, VoiceId="solo", Text="later")
            waited = time.perf_counter() - started
    assert response.status_code == 200 and response.content == CHUNK
    assert waited < 5  # the slot was free: a leaked one would have kept it in line for 10 s
    assert [r.text for r in up_a.requests] == ["first", "later"]  # the gone never got there
    assert up_b.count == 0


async def test_slots_are_handed_over_first_come_first_served() -> None:
    async with upstreams(2) as (up_a, up_b):
        yaml = two_voices(up_a, up_b, max_concurrency=1, queue=10)
        async with serving(yaml) as (url, client):
            async with holding(url, up_a, VoiceId="solo", Text="first"):
                line = []
                for n in range(1, 5):
                    line.append(asyncio.create_task(say(client, url, VoiceId="solo", Text=f"#{n}")))
                    # Each joins the line before the next is sent.
                    assert await until(lambda: in_line(client, url, n))  # noqa: B023
            responses = await asyncio.gather(*line)
    assert all(r.status_code == 200 and r.content == CHUNK for r in responses)
    assert [r.text for r in up_a.requests] == ["first", "#1", "#2", "#3", "#4"]
    assert up_a.peak == 1


async def test_queue_zero_moves_on_without_waiting() -> None:
    async with upstreams(2) as (up_a, up_b):
        yaml = two_voices(up_a, up_b, max_concurrency=1, queue=0)
        async with serving(yaml) as (url, client), holding(url, up_a, Text="first"):
            response = await say(client, url, Text="second")
            states = await provider_states(client, url)
            page = await scrape(client, url)
    assert response.headers["x-voice"] == "b" and response.content == OTHER
    assert states["pa"]["queue"] == 0
    assert metric(page, "tts_provider_rejections_total", provider="pa", reason="busy") == 1
    assert up_a.count == 1


def test_queue_zero_is_read_as_no_wait_and_the_default_is_a_quarter_second() -> None:
    yaml = scripted_config(
        voices={"a": {"provider": "p0"}, "b": {"provider": "pd"}},
        providers={
            "p0": custom_block("http://127.0.0.1:9/x", queue=0),
            "pd": custom_block("http://127.0.0.1:9/x"),
        },
    )
    config = parse_config(yaml)
    assert config.providers["p0"].queue == 0
    assert config.providers["pd"].queue == 0.25


async def test_a_gate_with_no_queue_refuses_without_suspending() -> None:
    gate = ProviderGate(1)
    assert gate.try_take()
    taking = gate.take(0)
    with pytest.raises(StopIteration) as finished:
        taking.send(None)  # runs to its end in one step: nothing was awaited
    assert finished.value.value is False
    assert gate.waiting == 0 and gate.in_flight == 1


# ---------------------------------------------------------------- max_concurrency's default


def test_an_http_provider_without_max_concurrency_takes_the_gateways_stream_limit() -> None:
    yaml = scripted_config(
        voices={"a": {"provider": "up"}, "b": {"provider": "el"}, "c": {"provider": "local"}},
        providers={
            "up": custom_block("http://127.0.0.1:9/x"),
            "el": {"type": "elevenlabs", "api_key": "k"},
            "set": custom_block("http://127.0.0.1:9/x", max_concurrency=7),
            "local": {"type": "piper"},
        },
        max_concurrent_streams=321,
    )
    providers = parse_config(yaml).providers
    assert providers["up"].max_concurrency == 321
    assert providers["el"].max_concurrency == 321
    assert providers["set"].max_concurrency == 7
    assert (providers["local"].max_concurrency, providers["local"].queue) == (2, 5)
    unset = scripted_config({"a": {"provider": "up"}}, {"up": custom_block("http://h:9/x")})
    assert parse_config(unset).providers["up"].max_concurrency == 1000  # the stream limit's own


async def test_by_default_an_http_provider_takes_as_many_streams_as_the_gateway() -> None:
    callers = 60
    async with upstreams(2) as (up_a, up_b):
        go = asyncio.Event()
        up_a.default = Answer(before=go)  # every answer waits until all have arrived
        yaml = scripted_config(
            voices={"a": {"provider": "pa", "fallback": ["b"]}, "b": {"provider": "pb"}},
            providers={"pa": custom_block(up_a.url), "pb": custom_block(up_b.url)},
            max_concurrent_streams=callers,
        )
        async with serving(yaml) as (url, client):
            posts = [asyncio.create_task(say(client, url)) for _ in range(callers)]
            # All of them reach the upstream at once: none waits in line for a slot.
            assert await eventually(lambda: up_a.active == callers, 20)
            go.set()
            responses = await asyncio.gather(*posts)
            states = await provider_states(client, url)
    assert all(r.status_code == 200 and r.headers["x-voice"] == "a" for r in responses)
    assert up_a.peak == callers and up_b.count == 0
    assert states["pa"]["max_concurrency"] == callers


# ---------------------------------------------------------------- ElevenLabs' concurrency signals

EL_KEY = "el-key-0123456789"
EL_VOICE = "21m00Tcm4TlvDq8ikWAM"


def el_limits(maximum: int, current: int) -> dict[str, str]:
    """The concurrency headers ElevenLabs sends with its answers."""
    return {
        "maximum-concurrent-requests": str(maximum),
        "current-concurrent-requests": str(current),
    }


def el_429(status: str, message: str) -> Answer:
    """ElevenLabs' 429: ``{"detail": {"status": ..., "message": ...}}``."""
    body = json.dumps({"detail": {"status": status, "message": message}}).encode()
    return Answer(status=429, body=body, headers=el_limits(2, 2))


TOO_MANY = el_429(
    "too_many_concurrent_requests",
    "You have too many concurrent requests. The current plan allows 2 concurrent requests.",
)
SYSTEM_BUSY = el_429(
    "system_busy",
    "Our services are experiencing high levels of traffic. Please try again later.",
)


@contextlib.asynccontextmanager
async def elevenlabs_first(
    **el: Any,
) -> AsyncIterator[tuple[str, httpx.AsyncClient, AnsweringUpstream, AnsweringUpstream]]:
    """Voice ``a`` on an ElevenLabs provider ``el`` over a loopback stand-in for its API,
    falling back to voice ``b`` (a custom upstream answering :data:`OTHER`)."""
    async with upstreams(2) as (up_el, up_b):
        up_b.default = Answer(chunks=(OTHER,))
        block: dict[str, Any] = {
            "type": "elevenlabs",
            "api_key": EL_KEY,
            "base_url": up_el.base_url,
            "retry": {"attempts": 3, "backoff": 0.01, "max_backoff": 0.02},
            "timeout": {"connect": 2, "first_byte": 10, "total": 30, "stall": 30},
            "circuit_breaker": {"failures": 1, "cooldown": 30, "max_cooldown": 60},
            "retry_budget": None,
        }
        block.update(el)
        yaml = scripted_config(
            voices={
                "a": {"provider": "el", "voice": EL_VOICE, "fallback": ["b"]},
                "b": {"provider": "pb"},
            },
            providers={"el": block, "pb": custom_block(up_b.url)},
        )
        async with serving(yaml) as (url, client):
            yield url, client, up_el, up_b


def asked_elevenlabs(up_el: AnsweringUpstream) -> bool:
    """Every request went where ElevenLabs' streaming endpoint is, with the key."""
    return all(
        r.path == f"/v1/text-to-speech/{EL_VOICE}/stream?output_format=pcm_24000"
        and r.headers["xi-api-key"] == EL_KEY
        and r.text == BODY["Text"]
        for r in up_el.requests
    )


async def test_elevenlabs_maximum_concurrent_requests_lowers_the_providers_capacity() -> None:
    async with elevenlabs_first(max_concurrency=10, queue=0.2) as (url, client, up_el, _):
        up_el.default = Answer(headers=el_limits(3, 1))
        assert (await provider_states(client, url))["el"]["max_concurrency"] == 10
        async with holding(url, up_el, headers=el_limits(1, 1)):
            assert (await provider_states(client, url))["el"]["max_concurrency"] == 1
            # The plan takes one request at a time: the second is not sent to be refused.
            response = await say(client, url)
            assert response.headers["x-voice"] == "b" and response.content == OTHER
            assert up_el.count == 1
        again = await say(client, url)
        states = await provider_states(client, url)
        page = await scrape(client, url)
    assert again.headers["x-voice"] == "a" and again.content == CHUNK
    assert states["el"]["max_concurrency"] == 3  # what the latest answer said
    assert up_el.count == 2 and up_el.peak == 1
    assert asked_elevenlabs(up_el)
    assert metric(page, "tts_provider_rejections_total", provider="el", reason="busy") == 1


async def test_elevenlabs_too_many_concurrent_requests_skips_to_the_fallback_at_once() -> None:
    async with elevenlabs_first() as (url, client, up_el, _):
        up_el.default = TOO_MANY
        for _ in range(3):
            response = await say(client, url)
            assert response.headers["x-voice"] == "b" and response.content == OTHER
        states = await provider_states(client, url)
        page = await scrape(client, url)
    # Each request asked once (three attempts allowed), and a breaker that opens on a single
    # failure stayed closed: a full plan is not an outage.
    assert up_el.count == 3 and asked_elevenlabs(up_el)
    breaker = states["el"]["breaker"]
    assert (breaker["state"], breaker["consecutive_failures"]) == ("closed", 0)
    assert states["el"]["max_concurrency"] == 2  # the 429 carried the plan's limit too
    assert "too_many_concurrent_requests" in states["el"]["last_error"]["summary"]
    assert metric(page, "tts_provider_rejections_total", provider="el", reason="saturated") == 3
    assert metric(page, "tts_overflow_total", voice="b") == 3
    assert metric(page, "tts_breaker_transitions_total", provider="el", state="open") is None


async def test_elevenlabs_system_busy_is_retried_and_counted_against_the_breaker() -> None:
    breaker = {"failures": 2, "cooldown": 30, "max_cooldown": 60}
    retry = {"attempts": 2, "backoff": 0.01, "max_backoff": 0.02}
    async with elevenlabs_first(circuit_breaker=breaker, retry=retry) as (url, client, up_el, _):
        up_el.script.extend([SYSTEM_BUSY, Answer()])
        retried = await say(client, url)
        assert retried.headers["x-voice"] == "a" and retried.content == CHUNK
        assert up_el.count == 2  # the busy answer was retried
        up_el.default = SYSTEM_BUSY
        failed = await say(client, url)
        assert failed.headers["x-voice"] == "b"
        assert up_el.count == 4
        assert (await provider_states(client, url))["el"]["breaker"]["state"] == "open"
        skipped = await say(client, url)
        page = await scrape(client, url)
    assert skipped.headers["x-voice"] == "b"
    assert up_el.count == 4 and asked_elevenlabs(up_el)
    assert metric(page, "tts_provider_rejections_total", provider="el", reason="open") == 1
    assert metric(page, "tts_provider_rejections_total", provider="el", reason="saturated") is None


# ---------------------------------------------------------------- the retry budget


async def test_retries_during_an_outage_stay_within_the_retry_budget() -> None:
    retry = {"attempts": 2, "backoff": 0.001, "max_backoff": 0.002}
    async with upstreams(2) as (up_a, up_b):
        yaml = two_voices(up_a, up_b, retry=retry, circuit_breaker=False, retry_budget=0.2)
        async with serving(yaml) as (url, client):
            up_a.default = DOWN
            # Each request would retry once. Retries may be max(3, 20 % of first attempts)
            # over the window: the first three retry, then one in five.
            for _ in range(5):
                assert (await say(client, url)).headers["x-voice"] == "b"
            assert up_a.count == 5 + 3
            for _ in range(25):
                assert (await say(client, url)).headers["x-voice"] == "b"
            page = await scrape(client, url)
            states = await provider_states(client, url)
    assert up_a.count == 30 + 6
    assert metric(page, "tts_retries_denied_total", provider="pa") == 24
    assert states["pa"]["retries"] == {"first_attempts": 30, "retries": 6}


async def test_without_a_retry_budget_every_failure_is_retried() -> None:
    retry = {"attempts": 2, "backoff": 0.001, "max_backoff": 0.002}
    async with upstreams(2) as (up_a, up_b):
        yaml = two_voices(up_a, up_b, retry=retry, circuit_breaker=False, retry_budget=None)
        async with serving(yaml) as (url, client):
            up_a.default = DOWN
            for _ in range(30):
                assert (await say(client, url)).headers["x-voice"] == "b"
            page = await scrape(client, url)
    assert up_a.count == 60
    assert metric(page, "tts_retries_denied_total", provider="pa") is None


# ---------------------------------------------------------------- the gate on its own


async def test_gate_hands_freed_slots_to_the_line_in_order_before_any_latecomer() -> None:
    gate = ProviderGate(1)
    assert gate.try_take()
    first = asyncio.create_task(gate.take(10))
    second = asyncio.create_task(gate.take(10))
    await asyncio.sleep(0)
    assert gate.waiting == 2
    gate.release()
    assert gate.in_flight == 1 and gate.waiting == 1
    assert not gate.try_take()  # a latecomer does not jump the line
    assert await first is True
    assert not second.done()
    gate.release()
    assert await second is True
    gate.release()
    assert (gate.in_flight, gate.waiting) == (0, 0)


async def test_gate_a_slot_freed_by_a_raised_capacity_goes_to_the_line_not_past_it() -> None:
    signalled: list[int | None] = [1]
    gate = ProviderGate(4, lambda: signalled[0])
    assert gate.try_take()
    waiting = asyncio.create_task(gate.take(10))
    await asyncio.sleep(0)
    signalled[0] = 2  # the provider now says it takes two at once: a slot is free
    latecomer = asyncio.create_task(gate.take(10))
    # The free slot goes to the one in line at once (not when its wait runs out), and the
    # latecomer lines up behind it instead of waiting with a slot free.
    assert await asyncio.wait_for(waiting, 5) is True
    assert (gate.in_flight, gate.waiting) == (2, 1)
    gate.release()
    assert await asyncio.wait_for(latecomer, 5) is True
    assert (gate.in_flight, gate.waiting) == (2, 0)


async def test_gate_a_slot_handed_to_a_waiter_that_is_cancelled_passes_on() -> None:
    gate = ProviderGate(1)
    assert gate.try_take()
    leaving = asyncio.create_task(gate.take(10))
    staying = asyncio.create_task(gate.take(10))
    await asyncio.sleep(0)
    gate.release()  # handed to `leaving`...
    leaving.cancel()  # ...whose caller hangs up before it runs again
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert await staying is True  # the slot went on to the next in line
    assert (gate.in_flight, gate.waiting) == (1, 0)
    gate.release()
    assert gate.in_flight == 0


async def test_gate_a_slot_handed_over_as_the_wait_runs_out_is_kept() -> None:
    gate = ProviderGate(1)
    assert gate.try_take()
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, gate.release)  # due just before the waiter's own deadline
    waiter = asyncio.create_task(gate.take(0.05))
    await asyncio.sleep(0)
    # Both deadlines pass while the loop is held, so both run in its next turn.
    time.sleep(0.1)  # noqa: ASYNC251
    assert await waiter is True
    assert (gate.in_flight, gate.waiting) == (1, 0)
    gate.release()
    assert gate.in_flight == 0


async def test_gate_a_waiter_whose_wait_runs_out_leaves_the_line() -> None:
    gate = ProviderGate(1)
    assert gate.try_take()
    assert await gate.take(0.01) is False
    assert (gate.in_flight, gate.waiting) == (1, 0)
    gate.release()
    assert gate.try_take()


def test_gate_capacity_is_the_lower_of_its_limit_and_the_signalled_one() -> None:
    signalled: list[int | None] = [None]
    gate = ProviderGate(4, lambda: signalled[0])
    assert gate.capacity == 4
    signalled[0] = 2
    assert gate.capacity == 2
    assert gate.try_take() and gate.try_take() and not gate.try_take()
    signalled[0] = 10
    assert gate.capacity == 4 and gate.try_take()


# ---------------------------------------------------------------- the sliding window


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def test_budget_allows_its_share_of_the_window_or_its_floor() -> None:
    clock = Clock()
    budget = ShareBudget(0.2, 3, clock=clock)
    for _ in range(5):
        budget.note()
    assert [budget.spend() for _ in range(4)] == [True, True, True, False]
    for _ in range(25):
        budget.note()
    assert [budget.spend() for _ in range(4)] == [True, True, True, False]  # 6 of 30
    assert budget.counts == (30, 6)


def test_budget_forgets_what_slid_out_of_the_window() -> None:
    clock = Clock()
    budget = ShareBudget(0.2, 3, clock=clock)
    for _ in range(30):
        budget.note()
    assert sum(budget.spend() for _ in range(10)) == 6
    clock.now += 5
    for _ in range(10):
        budget.note()
    assert sum(budget.spend() for _ in range(10)) == 2  # 20 % of 40 is 8: two more
    clock.now += 5.5  # the first 30 and their 6 retries are out of the window now
    assert budget.counts == (10, 2)
    assert sum(budget.spend() for _ in range(10)) == 1  # the floor of 3 (20 % of 10 is 2)
    clock.now += 100
    assert budget.counts == (0, 0)


def test_budget_without_a_share_is_unbounded() -> None:
    budget = ShareBudget(None, 3, clock=Clock())
    assert all(budget.spend() for _ in range(1000))
