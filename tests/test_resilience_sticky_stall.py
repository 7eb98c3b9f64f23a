"""Sticky fallback per call (voice ``sticky_fallback``), stalls after the first byte
(``timeout.stall``) and the request's log line naming every voice tried, over real loopback
upstreams; and :class:`~gateway.sticky.StickyCalls`' bounds on their own."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.config import parse_config
from gateway.routing import ChainStep, Router
from gateway.sticky import StickyCalls
from tests.scripted_upstream import HEAD, HOLD, Fail, ScriptedUpstream, Step, custom_block
from tests.support import live_server, log_line, raw_post, scripted_config, tone

RATE = 24000
A_CHUNKS = [tone(440, 0.02, RATE)] * 3
B_CHUNKS = [tone(660, 0.02, RATE)] * 3
C_CHUNKS = [tone(880, 0.02, RATE)] * 3
A_AUDIO, B_AUDIO, C_AUDIO = (b"".join(c) for c in (A_CHUNKS, B_CHUNKS, C_CHUNKS))
BODY = {"Text": "Hello there.", "SampleRate": RATE, "VoiceId": "a", "ExtendData": ""}


def extend(**ids: str) -> str:
    """ExtendData as the interface documents it: a string holding a JSON object."""
    return json.dumps(ids)


CALL = extend(InstanceId="inst-1", ChannelId="chan-1")
OTHER_CALL = extend(InstanceId="inst-1", ChannelId="chan-2")


def chain_app(upstreams: list[ScriptedUpstream], **voice_a: Any) -> Starlette:
    """Voices a -> b (-> c) on providers pa, pb (, pc), one per upstream; ``voice_a`` adds
    keys to voice a."""
    names = "abc"[: len(upstreams)]
    voices: dict[str, dict[str, Any]] = {name: {"provider": f"p{name}"} for name in names}
    voices["a"].update(fallback=list(names[1:]), **voice_a)
    providers = {f"p{n}": custom_block(u) for n, u in zip(names, upstreams, strict=True)}
    return create_app(parse_config(scripted_config(voices, providers)))


def sample(app: Starlette, name: str, **labels: str) -> float:
    value = app.state.gateway.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- sticky fallback, live


async def test_a_call_answered_by_its_fallback_keeps_it_for_sticky_fallback_seconds() -> None:
    async with (
        ScriptedUpstream([Fail(500)], A_CHUNKS) as up_a,  # fails once, then healthy again
        ScriptedUpstream(B_CHUNKS) as up_b,
    ):
        app = chain_app([up_a, up_b], sticky_fallback=300)
        clock = Clock()
        app.state.gateway.routing.relay.sticky = StickyCalls(clock=clock)
        async with live_server(app) as url, httpx.AsyncClient(timeout=10) as client:

            async def voice_for(extend_data: str) -> str:
                body = dict(BODY, ExtendData=extend_data)
                response = await client.post(url + "/stream-audio", json=body)
                assert response.status_code == 200
                voice = response.headers["x-voice"]
                assert response.content == (A_AUDIO if voice == "a" else B_AUDIO)
                return str(voice)

            assert await voice_for(CALL) == "b"  # a failed: the call failed over
            assert len(up_a.exchanges) == 1
            # The call's next sentences go to its fallback: a, healthy again, is not asked.
            assert await voice_for(CALL) == "b"
            assert len(up_a.exchanges) == 1
            assert sample(app, "tts_sticky_hits_total", voice="a") == 1
            # Another call of the same instance is not affected.
            assert await voice_for(OTHER_CALL) == "a"
            assert len(up_a.exchanges) == 2
            clock.now += 299.5
            assert await voice_for(CALL) == "b"
            assert len(up_a.exchanges) == 2
            clock.now += 0.5  # sticky_fallback has passed since the failover
            assert await voice_for(CALL) == "a"
            assert len(up_a.exchanges) == 3
    assert sample(app, "tts_sticky_hits_total", voice="a") == 2
    assert len(up_b.exchanges) == 3


@pytest.mark.parametrize(
    "extend_data",
    [
        "",
        extend(InstanceId="inst-1"),
        extend(ChannelId="chan-1"),
        extend(InstanceId="", ChannelId="chan-1"),
    ],
    ids=["none", "instance-only", "channel-only", "empty-instance"],
)
async def test_a_request_without_both_call_ids_never_sticks(extend_data: str) -> None:
    async with (
        ScriptedUpstream([Fail(500)], A_CHUNKS) as up_a,
        ScriptedUpstream(B_CHUNKS) as up_b,
    ):
        app = chain_app([up_a, up_b], sticky_fallback=300)
        body = dict(BODY, ExtendData=extend_data)
        async with live_server(app) as url, httpx.AsyncClient(timeout=10) as client:
            first = await client.post(url + "/stream-audio", json=body)
            second = await client.post(url + "/stream-audio", json=body)
    assert first.headers["x-voice"] == "b"
    assert second.headers["x-voice"] == "a" and second.content == A_AUDIO
    assert len(up_a.exchanges) == 2 and len(up_b.exchanges) == 1
    assert len(app.state.gateway.routing.relay.sticky) == 0
    assert sample(app, "tts_sticky_hits_total", voice="a") == 0


async def test_a_failing_sticky_fallback_hands_the_call_to_the_rest_of_the_chain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        ScriptedUpstream([Fail(500)]) as up_a,  # always failing
        ScriptedUpstream([Fail(503)], B_CHUNKS) as up_b,  # fails once, then healthy
        ScriptedUpstream(C_CHUNKS, [Fail(500)]) as up_c,  # answers once, then fails
    ):
        app = chain_app([up_a, up_b, up_c], sticky_fallback=300)
        with caplog.at_level(logging.INFO, logger="gateway"):
            async with live_server(app) as url, httpx.AsyncClient(timeout=10) as client:
                body = dict(BODY, ExtendData=CALL)
                headers = {"X-Request-Id": "sticky-1"}
                first = await client.post(url + "/stream-audio", json=body, headers=headers)
                headers = {"X-Request-Id": "sticky-2"}
                second = await client.post(url + "/stream-audio", json=body, headers=headers)
                first_line = await log_line(caplog, "sticky-1")
                second_line = await log_line(caplog, "sticky-2")
    assert first.headers["x-voice"] == "c" and first.content == C_AUDIO
    # The sticky voice c first; when it fails, the chain from its start: a (the primary
    # included), then b.
    assert second.status_code == 200
    assert second.headers["x-voice"] == "b" and second.content == B_AUDIO
    assert "tried=a:failed,b:failed,c:ok" in first_line
    assert "tried=c:failed,a:failed,b:ok" in second_line
    assert "InstanceId=inst-1" in second_line and "ChannelId=chan-1" in second_line
    assert [len(u.exchanges) for u in (up_a, up_b, up_c)] == [2, 2, 2]
    assert sample(app, "tts_sticky_hits_total", voice="a") == 1


# ---------------------------------------------------------------- StickyCalls on its own


def chain(sticky_fallback: float | None = 10) -> list[ChainStep]:
    voices: dict[str, dict[str, Any]] = {
        "a": {"provider": "p", "fallback": ["b", "c"]},
        "b": {"provider": "p"},
        "c": {"provider": "p"},
    }
    if sticky_fallback is not None:
        voices["a"]["sticky_fallback"] = sticky_fallback
    steps = Router(parse_config(scripted_config(voices, {"p": {"type": "scripted"}}))).resolve("a")
    assert steps is not None
    return steps


def voice_keys(steps: Sequence[ChainStep]) -> list[str]:
    return [step.voice.key for step in steps]


def test_a_sticky_call_goes_to_its_fallback_first_until_its_time_is_up() -> None:
    clock, steps = Clock(), chain(sticky_fallback=10)
    calls = StickyCalls(clock=clock)
    calls.answered(steps, ("i", "c"), "c")
    assert voice_keys(calls.order(steps, ("i", "c"))[0]) == ["c", "a", "b"]
    assert calls.order(steps, ("i", "c"))[1] is True
    assert calls.order(steps, ("i", "other"))[1] is False
    clock.now += 5
    calls.answered(steps, ("i", "c"), "c")  # again by it: the time counts from the failover
    clock.now += 4.5
    assert calls.order(steps, ("i", "c"))[1] is True
    clock.now += 0.5
    assert voice_keys(calls.order(steps, ("i", "c"))[0]) == ["a", "b", "c"]
    assert len(calls) == 0  # the expired entry is dropped when looked at


def test_a_call_answered_by_its_own_voice_again_is_forgotten() -> None:
    steps = chain()
    calls = StickyCalls(clock=Clock())
    calls.answered(steps, ("i", "c"), "b")
    calls.answered(steps, ("i", "c"), "a")
    assert len(calls) == 0
    assert calls.order(steps, ("i", "c"))[1] is False


def test_nothing_sticks_without_call_ids_or_sticky_fallback() -> None:
    calls = StickyCalls(clock=Clock())
    calls.answered(chain(), None, "b")
    calls.answered(chain(sticky_fallback=None), ("i", "c"), "b")
    assert len(calls) == 0


def test_the_least_recently_used_call_is_forgotten_first() -> None:
    steps = chain()
    calls = StickyCalls(max_calls=2, clock=Clock())
    calls.answered(steps, ("i", "1"), "b")
    calls.answered(steps, ("i", "2"), "b")
    assert calls.order(steps, ("i", "1"))[1] is True  # call 1 is in use: 2 is the older
    calls.answered(steps, ("i", "3"), "c")
    assert len(calls) == 2
    assert calls.order(steps, ("i", "2"))[1] is False
    assert calls.order(steps, ("i", "1"))[1] is True
    assert calls.order(steps, ("i", "3"))[1] is True
    for n in range(1000):  # however many calls fail over, two are kept
        calls.answered(steps, ("i", f"x{n}"), "b")
    assert len(calls) == 2


# ---------------------------------------------------------------- stalls after the first byte


def stall_app(upstream: ScriptedUpstream, stall: float = 0.3, first_byte: float = 2) -> Starlette:
    timeout = {"connect": 2, "first_byte": first_byte, "total": 60, "stall": stall}
    yaml = scripted_config(
        voices={"a": {"provider": "pa"}}, providers={"pa": custom_block(upstream, timeout=timeout)}
    )
    return create_app(parse_config(yaml))


async def test_an_upstream_silent_mid_answer_ends_as_stall_after_the_audio_it_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with ScriptedUpstream([A_CHUNKS[0], A_CHUNKS[1], HOLD]) as upstream:
        app = stall_app(upstream, stall=0.3, first_byte=2)
        with caplog.at_level(logging.INFO, logger="gateway"):
            async with live_server(app) as url, httpx.AsyncClient(timeout=10) as client:
                headers = {"X-Request-Id": "stalled"}
                response = await client.post(url + "/stream-audio", json=BODY, headers=headers)
                assert await upstream.all_ended() == ["hung_up"]
                line = await log_line(caplog, "stalled")
    # What came before the silence, in a cleanly ended answer (httpx read it to its end).
    assert response.status_code == 200
    assert response.content == A_CHUNKS[0] + A_CHUNKS[1]
    assert sample(app, "tts_streams_ended_total", reason="stall") == 1
    assert sample(app, "tts_streams_ended_total", reason="complete") == 0
    assert "end=stall" in line
    exchange = upstream.exchanges[0]
    assert exchange.ended_at is not None and exchange.last_audio_at is not None
    assert exchange.ended_at - exchange.last_audio_at >= 0.3  # closed for its silence


@pytest.mark.parametrize(
    ("script", "audio", "end"),
    [
        ([HEAD, 1.0, *A_CHUNKS], A_AUDIO, "complete"),
        ([A_CHUNKS[0], 1.0, A_CHUNKS[1]], A_CHUNKS[0], "stall"),
    ],
    ids=["slow-first-byte", "gap-mid-answer"],
)
async def test_the_stall_gap_is_not_the_first_byte_budget(
    script: list[Step], audio: bytes, end: str, caplog: pytest.LogCaptureFixture
) -> None:
    """stall 0.3 s, first_byte 2 s: a first byte 1 s late is in time; a gap of 1 s after it
    is a stall."""
    async with ScriptedUpstream(script) as upstream:
        app = stall_app(upstream, stall=0.3, first_byte=2)
        with caplog.at_level(logging.INFO, logger="gateway"):
            async with live_server(app) as url, httpx.AsyncClient(timeout=10) as client:
                headers = {"X-Request-Id": "gap"}
                response = await client.post(url + "/stream-audio", json=BODY, headers=headers)
                line = await log_line(caplog, "gap")
    assert response.status_code == 200
    assert response.content == audio
    assert sample(app, "tts_streams_ended_total", reason=end) == 1
    assert f"end={end} " in line


async def test_a_caller_not_reading_is_not_taken_for_a_stalled_upstream() -> None:
    # Far more audio than the socket buffers between upstream and caller hold: while the
    # caller does not read, the gateway waits on it, and the upstream waits on the gateway.
    chunk = tone(440, 0.2, RATE)
    script: list[Step] = [chunk] * 3000  # 600 s of audio, 29 MB
    async with ScriptedUpstream(script) as upstream:
        app = stall_app(upstream, stall=0.3, first_byte=2)
        async with live_server(app) as url:
            response = await raw_post(url, "/stream-audio", BODY)
            assert response.status == 200
            first = await asyncio.wait_for(response.read_chunk(), 5)
            assert first
            await asyncio.sleep(1.0)  # the caller takes nothing for over three stall gaps
            # The upstream was held back the whole time: the gateway did not read it.
            assert upstream.exchanges[0].end is None
            rest = await asyncio.wait_for(response.read_all(), 30)
            response.close()
            assert await upstream.all_ended() == ["complete"]
    assert first + rest == chunk * 3000  # every byte, in order
    assert sample(app, "tts_streams_ended_total", reason="complete") == 1
    assert sample(app, "tts_streams_ended_total", reason="stall") == 0


# ---------------------------------------------------------------- visibility


async def test_the_log_line_names_every_voice_tried_and_why_it_was_passed_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        ScriptedUpstream([Fail(500)]) as up_a,
        ScriptedUpstream([B_CHUNKS[0], HOLD]) as up_b,
        ScriptedUpstream(C_CHUNKS) as up_c,
    ):
        voices: dict[str, dict[str, Any]] = {
            "a": {"provider": "pa", "fallback": ["b", "c"]},
            "b": {"provider": "pb"},
            "c": {"provider": "pc"},
        }
        providers = {
            # One failure opens pa; pb has one slot and no queue.
            "pa": custom_block(up_a, circuit_breaker={"failures": 1, "cooldown": 30}),
            "pb": custom_block(up_b, max_concurrency=1, queue=0),
            "pc": custom_block(up_c),
        }
        app = create_app(parse_config(scripted_config(voices, providers)))
        with caplog.at_level(logging.INFO, logger="gateway"):
            async with live_server(app) as url, httpx.AsyncClient(timeout=10) as client:
                holder = await raw_post(url, "/stream-audio", dict(BODY, VoiceId="b"))
                assert await asyncio.wait_for(holder.read_chunk(), 5)  # pb's one slot taken
                lines = []
                for request_id in ("first", "second"):
                    headers = {"X-Request-Id": request_id}
                    response = await client.post(url + "/stream-audio", json=BODY, headers=headers)
                    assert response.status_code == 200 and response.content == C_AUDIO
                    lines.append(await log_line(caplog, request_id))
                holder.close()
                assert await up_b.all_ended() == ["hung_up"]
    # The first request asked a (which failed and opened its breaker), found b full, got c.
    assert "tried=a:failed,b:busy,c:ok" in lines[0]
    # The second skipped a (open) and b (busy) without asking them.
    assert "tried=a:open,b:busy,c:ok" in lines[1]
    assert "answered_by=c" in lines[1]
    assert len(up_a.exchanges) == 1 and len(up_b.exchanges) == 1
    warnings = [r.getMessage() for r in caplog.records if "failed before audio" in r.getMessage()]
    assert any("voice=a provider=pa" in w and "upstream says no" in w for w in warnings)
