"""The circuit breaker over real loopback upstreams: a failing upstream is skipped once open
(no request reaches it, no retry, no first-byte budget spent), probed once after its cooldown,
closed by a good probe and reopened for longer by a bad one; a 429 with Retry-After opens it
for that long; what the caller did never counts; its state shows in the metrics and in
``GET /providers``. The state machine itself is tested with an injected clock at the end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from gateway.breaker import CircuitBreaker, State, Ticket
from providers.base import BreakerPolicy
from tests.answering_upstream import (
    CHUNK,
    OTHER,
    Answer,
    AnsweringUpstream,
    caller,
    custom_block,
    metric,
    provider_states,
    scrape,
    serving,
    upstreams,
)
from tests.support import eventually, raw_post, scripted_config

BODY = {"Text": "Hello there.", "SampleRate": 24000, "VoiceId": "a", "ExtendData": ""}
DOWN = Answer(status=503)
#: A first-byte budget no test may come near: a request that spent it would be seen.
FIRST_BYTE = 10.0


def primary_block(url: str, **overrides: Any) -> dict[str, Any]:
    block = custom_block(
        url,
        timeout={"connect": 2, "first_byte": FIRST_BYTE, "total": 30},
        circuit_breaker={"failures": 1, "cooldown": 0.3, "max_cooldown": 1},
        retry_budget=None,
    )
    block.update(overrides)
    return block


@asynccontextmanager
async def gateway(
    primary: dict[str, Any], **server: Any
) -> AsyncIterator[tuple[str, httpx.AsyncClient, AnsweringUpstream, AnsweringUpstream]]:
    """Voice ``a`` on provider ``pa`` (``primary``'s settings over an upstream of its own),
    falling back to voice ``b`` on ``pb``, a healthy upstream answering :data:`OTHER`.
    Yields (gateway URL, client, pa's upstream, pb's upstream)."""
    async with upstreams(2) as (up_a, up_b):
        up_b.default = Answer(chunks=(OTHER,))
        yaml = scripted_config(
            voices={"a": {"provider": "pa", "fallback": ["b"]}, "b": {"provider": "pb"}},
            providers={"pa": primary_block(up_a.url, **primary), "pb": custom_block(up_b.url)},
            **server,
        )
        async with serving(yaml) as (url, client):
            yield url, client, up_a, up_b


async def say(client: httpx.AsyncClient, url: str, **fields: Any) -> httpx.Response:
    return await client.post(url + "/stream-audio", json=dict(BODY, **fields))


def answered_by_fallback(response: httpx.Response) -> bool:
    return (
        response.status_code == 200
        and response.headers["x-voice"] == "b"
        and response.content == OTHER
    )


def answered_by_primary(response: httpx.Response) -> bool:
    return (
        response.status_code == 200
        and response.headers["x-voice"] == "a"
        and response.content == CHUNK
    )


async def state_of(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    breaker: dict[str, Any] = (await provider_states(client, url))["pa"]["breaker"]
    return breaker


async def wait_out(client: httpx.AsyncClient, url: str) -> None:
    """Sleep out pa's cooldown (as /providers reports it): the point of the tests that call it."""
    await asyncio.sleep((await state_of(client, url))["retry_in"] + 0.05)


# ---------------------------------------------------------------- opening and skipping


async def test_consecutive_failures_open_it_and_an_open_breaker_stops_the_retries_at_once() -> None:
    primary = {
        "retry": {"attempts": 2, "backoff": 0.01, "max_backoff": 0.02},
        "circuit_breaker": {"failures": 3, "cooldown": 60, "max_cooldown": 120},
    }
    async with gateway(primary) as (url, client, up_a, _up_b):
        up_a.default = DOWN
        first = await say(client, url)
        assert answered_by_fallback(first)
        assert up_a.count == 2  # one attempt and its retry: two failures, still closed
        assert (await state_of(client, url))["state"] == "closed"
        second = await say(client, url)
        assert answered_by_fallback(second)
        # The third failure opened the breaker: the retry the policy allows was not made.
        assert up_a.count == 3
        breaker = await state_of(client, url)
        assert breaker["state"] == "open"
        assert 55 < breaker["retry_in"] <= 60


async def test_while_open_no_request_reaches_the_upstream_and_no_budget_is_spent() -> None:
    async with gateway(
        {"circuit_breaker": {"failures": 2, "cooldown": 60, "max_cooldown": 60}}
    ) as (
        url,
        client,
        up_a,
        up_b,
    ):
        up_a.default = DOWN
        for _ in range(2):
            assert answered_by_fallback(await say(client, url))
        assert up_a.count == 2
        # From now on an asked upstream would sit on the request for the whole first-byte
        # budget: a request that reached it could not be answered in time.
        up_a.default = Answer(before=asyncio.Event())
        for _ in range(5):
            started = time.perf_counter()
            response = await say(client, url)
            assert answered_by_fallback(response)
            assert time.perf_counter() - started < FIRST_BYTE / 2
        assert up_a.count == 2
        assert up_b.count == 7
        page = await scrape(client, url)
    assert metric(page, "tts_provider_rejections_total", provider="pa", reason="open") == 5
    assert metric(page, "tts_breaker_state", provider="pa") == 2
    assert metric(page, "tts_breaker_transitions_total", provider="pa", state="open") == 1
    assert metric(page, "tts_overflow_total", voice="b") == 5  # skipped, not failed


async def test_after_the_cooldown_one_probe_goes_the_others_skip_and_its_audio_closes_it() -> None:
    async with gateway({}) as (url, client, up_a, up_b):
        up_a.default = DOWN
        assert answered_by_fallback(await say(client, url))
        assert (await state_of(client, url))["state"] == "open"
        await wait_out(client, url)
        thinking = asyncio.Event()
        up_a.default = Answer(before=thinking)
        probe = asyncio.create_task(say(client, url, Text="the probe"))
        assert await eventually(lambda: up_a.count == 2)
        assert (await state_of(client, url))["state"] == "half_open"
        # While the probe is out, everyone else still skips the provider at once.
        others = await asyncio.gather(*(say(client, url, Text=f"other {i}") for i in range(3)))
        assert all(answered_by_fallback(r) for r in others)
        assert up_a.count == 2
        assert [r.text for r in up_a.requests] == ["Hello there.", "the probe"]
        thinking.set()
        assert answered_by_primary(await probe)
        assert (await state_of(client, url))["state"] == "closed"
        # Closed again: the next request goes to the upstream as before.
        assert answered_by_primary(await say(client, url))
        assert up_a.count == 3
        assert up_b.count == 4
        page = await scrape(client, url)
    for state in ("open", "half_open", "closed"):
        assert metric(page, "tts_breaker_transitions_total", provider="pa", state=state) == 1
    assert metric(page, "tts_breaker_state", provider="pa") == 0
    assert metric(page, "tts_provider_rejections_total", provider="pa", reason="open") == 3


async def test_probes_racing_for_a_half_open_provider_send_exactly_one_request() -> None:
    async with gateway({}) as (url, client, up_a, _up_b):
        up_a.default = DOWN
        assert answered_by_fallback(await say(client, url))
        await wait_out(client, url)
        thinking = asyncio.Event()
        up_a.default = Answer(before=thinking)
        # Eight requests at once, on eight connections: exactly one of them is the probe.
        racing = [asyncio.create_task(say(client, url, Text=f"racer {i}")) for i in range(8)]
        done, _ = await asyncio.wait(racing, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        assert done
        assert await eventually(lambda: sum(t.done() for t in racing) == 7, 20)
        assert up_a.count == 2
        probe = next(t for t in racing if not t.done())
        assert up_a.requests[1].text == f"racer {racing.index(probe)}"
        assert all(answered_by_fallback(t.result()) for t in racing if t is not probe)
        thinking.set()
        assert answered_by_primary(await probe)
        assert up_a.count == 2


async def test_a_failed_probe_reopens_it_with_the_cooldown_doubled_up_to_its_maximum() -> None:
    breaker = {"failures": 1, "cooldown": 0.2, "max_cooldown": 0.5}
    async with gateway({"circuit_breaker": breaker}) as (url, client, up_a, _up_b):
        up_a.default = DOWN
        assert answered_by_fallback(await say(client, url))
        cooldowns = [(await state_of(client, url))["cooldown"]]
        for probes in range(1, 4):
            await wait_out(client, url)
            assert answered_by_fallback(await say(client, url))  # the probe, failed
            assert up_a.count == 1 + probes
            state = await state_of(client, url)
            assert state["state"] == "open"
            cooldowns.append(state["cooldown"])
            assert state["retry_in"] > 0.1  # reopened at once, for the new cooldown
            # Right after the failed probe the provider is skipped again.
            assert answered_by_fallback(await say(client, url))
            assert up_a.count == 1 + probes
        assert cooldowns == [0.2, 0.4, 0.5, 0.5]
        # A good probe closes it, and the cooldown starts from its first value again.
        await wait_out(client, url)
        up_a.default = Answer()
        assert answered_by_primary(await say(client, url))
        state = await state_of(client, url)
        assert (state["state"], state["cooldown"]) == ("closed", 0.2)


async def test_an_upstream_silent_past_the_first_byte_budget_counts_as_a_failure() -> None:
    # Connected, then silent: the failure the first-byte budget exists for. Each such request
    # costs its caller the whole budget, so they must open the breaker like any other failure.
    primary = {
        "timeout": {"connect": 2, "first_byte": 0.3, "total": 30},
        "circuit_breaker": {"failures": 2, "cooldown": 0.3, "max_cooldown": 5},
    }
    async with gateway(primary) as (url, client, up_a, _up_b):
        up_a.default = Answer(before=asyncio.Event())  # never a byte
        for _ in range(2):
            assert answered_by_fallback(await say(client, url))
        state = await state_of(client, url)
        assert state["state"] == "open"
        assert answered_by_fallback(await say(client, url))
        assert up_a.count == 2  # skipped: no third wait for the budget
        # A probe that times out is a failed probe: open again, for twice as long.
        await wait_out(client, url)
        assert answered_by_fallback(await say(client, url))
        assert up_a.count == 3
        state = await state_of(client, url)
        assert (state["state"], state["cooldown"]) == ("open", 0.6)
        assert up_a.hung_up == 3  # every silent request was closed at the budget's end


@pytest.mark.parametrize(("retry_after", "expected"), [("1", 1.0), ("3600", 1.5)])
async def test_a_429_with_retry_after_opens_it_for_that_long_capped_at_max_cooldown(
    retry_after: str, expected: float
) -> None:
    primary = {
        "retry": {"attempts": 3, "backoff": 0.01, "max_backoff": 0.02},
        "circuit_breaker": {"failures": 5, "cooldown": 0.2, "max_cooldown": 1.5},
    }
    async with gateway(primary) as (url, client, up_a, _up_b):
        up_a.script.append(Answer(status=429, headers={"Retry-After": retry_after}))
        assert answered_by_fallback(await say(client, url))
        assert up_a.count == 1  # asked for quiet: not retried, though three attempts are allowed
        state = await state_of(client, url)
        assert state["state"] == "open"
        # Open for what the upstream asked (capped), not for the configured cooldown of 0.2 s.
        assert expected - 0.5 < state["retry_in"] <= expected
        assert answered_by_fallback(await say(client, url))
        assert up_a.count == 1
        await wait_out(client, url)
        assert answered_by_primary(await say(client, url))  # the probe: healthy again
        assert up_a.count == 2
        assert (await state_of(client, url))["state"] == "closed"


async def test_without_a_breaker_a_failing_upstream_is_asked_every_time() -> None:
    async with gateway({"circuit_breaker": False}) as (url, client, up_a, _up_b):
        up_a.default = DOWN
        for _ in range(8):
            assert answered_by_fallback(await say(client, url))
        assert up_a.count == 8
        state = await state_of(client, url)
        page = await scrape(client, url)
    assert state["state"] == "closed" and state["enabled"] is False
    assert metric(page, "tts_breaker_state", provider="pa") == 0
    assert metric(page, "tts_breaker_transitions_total", provider="pa", state="open") is None


# ---------------------------------------------------------------- what never counts


async def test_a_caller_hanging_up_mid_attempt_is_no_failure() -> None:
    async with gateway({}) as (url, client, up_a, _up_b):
        for calls in range(1, 4):
            up_a.script.append(Answer(before=asyncio.Event()))  # never answers
            # (The conditions are polled within the iteration: the loop variable is current.)
            async with caller(url, BODY):
                assert await eventually(lambda: up_a.count == calls)  # noqa: B023
            # The gateway closes the upstream request as the caller goes.
            assert await eventually(lambda: up_a.hung_up == calls)  # noqa: B023
        state = await state_of(client, url)
        assert (state["state"], state["consecutive_failures"]) == ("closed", 0)
        assert answered_by_primary(await say(client, url))
        assert up_a.count == 4


async def test_a_caller_hanging_up_mid_answer_is_no_failure() -> None:
    async with gateway({}) as (url, client, up_a, _up_b):
        for calls in range(1, 4):
            up_a.script.append(Answer(after=asyncio.Event()))  # audio, then an open stream
            response = await raw_post(url, "/stream-audio", BODY)
            assert response.status == 200
            assert await response.read_chunk() == CHUNK
            response.close()
            assert await eventually(lambda: up_a.hung_up == calls)  # noqa: B023
        state = await state_of(client, url)
        assert (state["state"], state["consecutive_failures"]) == ("closed", 0)
        assert answered_by_primary(await say(client, url))
        assert up_a.count == 4


async def test_a_probe_whose_caller_hangs_up_leaves_the_next_request_to_probe() -> None:
    async with gateway({}) as (url, client, up_a, _up_b):
        up_a.default = DOWN
        assert answered_by_fallback(await say(client, url))
        await wait_out(client, url)
        up_a.default = Answer(before=asyncio.Event())  # the probe's upstream never answers
        async with caller(url, dict(BODY, Text="the probe")):
            assert await eventually(lambda: up_a.count == 2)
        assert await eventually(lambda: up_a.hung_up == 1)
        assert (await state_of(client, url))["state"] == "half_open"
        up_a.default = Answer()
        assert answered_by_primary(await say(client, url))  # the next request probes
        assert (await state_of(client, url))["state"] == "closed"
        assert up_a.count == 3


async def test_bad_input_is_answered_400_before_any_provider_is_asked() -> None:
    async with gateway({}) as (url, client, up_a, up_b):
        for fields in ({"SampleRate": 12345}, {"Text": ""}, {"SampleRate": "fast"}):
            response = await say(client, url, **fields)
            assert response.status_code == 400
            assert response.json()["error"]["code"]
        assert (up_a.count, up_b.count) == (0, 0)
        assert (await state_of(client, url))["state"] == "closed"
        assert answered_by_primary(await say(client, url))


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_non_retryable_errors_do_not_open_it(status: int) -> None:
    async with gateway({}) as (url, client, up_a, _up_b):
        up_a.default = Answer(status=status)
        for _ in range(4):
            assert answered_by_fallback(await say(client, url))
        assert up_a.count == 4  # asked every time: a refusal of this request is no outage
        state = await state_of(client, url)
        assert (state["state"], state["consecutive_failures"]) == ("closed", 0)
        last = (await provider_states(client, url))["pa"]["last_error"]
        assert last is not None and f"HTTP {status}" in last["summary"]


async def test_a_success_between_failures_starts_the_count_again() -> None:
    async with gateway({"circuit_breaker": {"failures": 2, "cooldown": 60}}) as (
        url,
        client,
        up_a,
        _up_b,
    ):
        up_a.script.extend([DOWN, Answer(), DOWN])
        assert answered_by_fallback(await say(client, url))
        assert answered_by_primary(await say(client, url))
        assert answered_by_fallback(await say(client, url))
        state = await state_of(client, url)
        assert (state["state"], state["consecutive_failures"]) == ("closed", 1)


# ---------------------------------------------------------------- visibility


async def test_providers_route_is_token_guarded_and_shows_the_breaker() -> None:
    async with gateway({}, tokens=["sesame"]) as (url, client, up_a, _up_b):
        up_a.default = DOWN
        denied = await client.get(url + "/providers")
        assert denied.status_code == 401
        assert denied.json()["error"]["code"]
        wrong = await client.get(url + "/providers", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        response = await say(client, url, Token="sesame")
        assert answered_by_fallback(response)
        states = await provider_states(client, url, token="sesame")
    pa, pb = states["pa"], states["pb"]
    assert pa["type"] == "custom"
    assert pa["breaker"]["state"] == "open" and pa["breaker"]["enabled"] is True
    assert 0 < pa["breaker"]["retry_in"] <= 0.3
    assert pa["in_flight"] == 0 and pa["queue"] == 0
    assert "HTTP 503" in pa["last_error"]["summary"]
    assert pb["breaker"]["state"] == "closed" and pb["last_error"] is None


# ---------------------------------------------------------------- the state machine


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def machine(
    failures: int = 2, cooldown: float = 10, max_cooldown: float = 35
) -> tuple[CircuitBreaker, Clock, list[tuple[State, State]]]:
    clock, changes = Clock(), []
    breaker = CircuitBreaker(
        BreakerPolicy(failures, cooldown, max_cooldown),
        lambda old, new: changes.append((old, new)),
        clock,
    )
    return breaker, clock, changes


def state(breaker: CircuitBreaker) -> State:
    """The state, read afresh (an assert on ``breaker.state`` would narrow its type)."""
    return breaker.state


def open_it(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.policy.failures if breaker.policy else 0):
        breaker.failed(Ticket.NORMAL)


def test_machine_opens_after_failures_and_admits_one_probe_after_the_cooldown() -> None:
    breaker, clock, changes = machine()
    breaker.failed(Ticket.NORMAL)
    assert breaker.admit() is Ticket.NORMAL
    breaker.failed(Ticket.NORMAL)
    assert state(breaker) == "open" and breaker.admit() is None
    assert breaker.retry_after() == 10
    clock.now += 9.99
    assert breaker.admit() is None
    clock.now += 0.01
    probe = breaker.admit()
    assert probe is not None and probe.probe
    assert state(breaker) == "half_open"
    assert breaker.admit() is None and breaker.admit() is None  # one probe at a time
    assert not breaker.allows_retry
    breaker.succeeded(probe)
    assert state(breaker) == "closed" and breaker.admit() is Ticket.NORMAL
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_machine_doubles_the_cooldown_on_each_failed_probe_up_to_the_maximum() -> None:
    breaker, clock, _ = machine()
    open_it(breaker)
    seen = []
    for _ in range(4):
        clock.now += breaker.retry_after()
        ticket = breaker.admit()
        assert ticket is not None and ticket.probe
        breaker.failed(ticket)
        seen.append(breaker.retry_after())
    assert seen == [20, 35, 35, 35]
    clock.now += 35
    probe = breaker.admit()
    assert probe is not None and probe.probe
    breaker.succeeded(probe)
    open_it(breaker)
    assert breaker.retry_after() == 10  # a good probe put the cooldown back to its start


def test_machine_ignores_what_is_no_verdict_on_the_provider() -> None:
    breaker, clock, _ = machine(failures=2)
    breaker.failed(Ticket.NORMAL)
    breaker.released(Ticket.NORMAL)  # the caller hung up: neither counted nor a reset
    assert breaker.failures == 1
    breaker.failed(Ticket.NORMAL)
    assert state(breaker) == "open"
    clock.now += 10
    probe = breaker.admit()
    assert probe is not None and probe.probe
    breaker.released(probe)  # the probe's caller hung up
    assert state(breaker) == "half_open"
    again = breaker.admit()  # the next request probes
    assert again is not None and again.probe and again is not probe


def test_machine_a_late_verdict_of_a_normal_request_does_not_settle_a_probe() -> None:
    breaker, clock, _ = machine(failures=1)
    early = breaker.admit()  # admitted while closed, answers late
    assert early is Ticket.NORMAL
    breaker.failed(Ticket.NORMAL)  # another request opened it
    clock.now += 10
    probe = breaker.admit()
    assert probe is not None and probe.probe
    breaker.succeeded(early)  # not the probe: no verdict on the half-open provider
    assert state(breaker) == "half_open" and breaker.admit() is None
    breaker.failed(early)
    assert state(breaker) == "half_open" and breaker.admit() is None
    breaker.succeeded(probe)
    assert state(breaker) == "closed"


def test_machine_retry_after_opens_it_for_that_long_but_never_shortens_an_opening() -> None:
    breaker, _, _ = machine(failures=5, cooldown=10, max_cooldown=60)
    breaker.failed(Ticket.NORMAL, retry_after=30)
    assert state(breaker) == "open" and breaker.retry_after() == 30
    breaker.failed(Ticket.NORMAL, retry_after=5)
    assert breaker.retry_after() == 30
    breaker.failed(Ticket.NORMAL, retry_after=3600)
    assert breaker.retry_after() == 60  # capped at max_cooldown


def test_machine_without_a_policy_never_opens() -> None:
    breaker = CircuitBreaker(None)
    for _ in range(100):
        assert breaker.admit() is Ticket.NORMAL
        breaker.failed(Ticket.NORMAL, retry_after=30)
    assert state(breaker) == "closed" and breaker.allows_retry


def test_machine_a_late_word_of_an_earlier_probe_does_not_settle_the_next_one() -> None:
    breaker, clock, _ = machine(failures=1)
    breaker.failed(Ticket.NORMAL)
    clock.now += 10
    first = breaker.admit()
    assert first is not None and first.probe
    breaker.failed(first)  # the probe failed: open again, for twice as long
    clock.now += breaker.retry_after()
    second = breaker.admit()
    assert second is not None and second.probe
    breaker.released(first)  # the first probe's request ends late: no word on the second
    assert breaker.admit() is None  # still one probe at a time
    breaker.succeeded(first)
    assert state(breaker) == "half_open"
    breaker.succeeded(second)
    assert state(breaker) == "closed"
