"""Hedged first byte (voice ``hedge_after``) over real loopback upstreams: the first voice with
audio wins alone, the other is cancelled and its upstream connection closed at once, its
characters still counted; the races around that moment; the bound on hedges."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.config import parse_config
from tests.scripted_upstream import HEAD, HOLD, Fail, ScriptedUpstream, Signal, Step, custom_block
from tests.support import (
    Plan,
    RawResponse,
    ScriptedProvider,
    eventually,
    live_server,
    log_line,
    provider_block,
    raw_post,
    scripted_config,
    tone,
)

RATE = 24000
# Each voice's audio is a tone of its own, so the caller's bytes show exactly whose they are.
A_CHUNKS = [tone(440, 0.02, RATE)] * 3
B_CHUNKS = [tone(660, 0.02, RATE)] * 3
C_CHUNKS = [tone(880, 0.02, RATE)] * 3
A_AUDIO, B_AUDIO, C_AUDIO = (b"".join(c) for c in (A_CHUNKS, B_CHUNKS, C_CHUNKS))
TEXT = "Hello there."  # 12 characters
BODY = {"Text": TEXT, "SampleRate": RATE, "VoiceId": "a", "ExtendData": ""}


def hedged_app(
    upstreams: Sequence[ScriptedUpstream],
    hedge_after: float = 0.2,
    **provider_overrides: Any,
) -> Starlette:
    """Voices a -> b (-> c) on providers pa, pb (, pc), one per upstream; ``a`` hedges after
    ``hedge_after`` seconds. Every breaker opens on a single counted failure, so that a
    cancellation counted as one would show."""
    names = "abc"[: len(upstreams)]
    voices: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(names):
        voices[name] = {"provider": f"p{name}"}
        if index + 1 < len(names):
            voices[name]["fallback"] = [names[index + 1]]
    voices["a"]["hedge_after"] = hedge_after
    overrides = {"circuit_breaker": {"failures": 1, "cooldown": 30}, **provider_overrides}
    providers = {
        f"p{name}": custom_block(upstream, **overrides)
        for name, upstream in zip(names, upstreams, strict=True)
    }
    return create_app(parse_config(scripted_config(voices, providers)))


def sample(app: Starlette, name: str, **labels: str) -> float:
    value = app.state.gateway.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def characters(app: Starlette, provider: str) -> float:
    return sample(app, "tts_provider_characters_total", provider=provider)


async def slots_free(app: Starlette) -> bool:
    """Whether every provider's slots all come back (the gate's in-flight count reaches 0)."""
    health = app.state.gateway.routing.health
    return await eventually(lambda: all(h.gate.in_flight == 0 for h in health.values()))


def breakers_untouched(app: Starlette) -> bool:
    """No provider's breaker counted a failure (each would be open after one)."""
    health = app.state.gateway.routing.health
    return all(h.breaker.state == "closed" and h.breaker.failures == 0 for h in health.values())


async def post(url: str, request_id: str, **fields: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=15) as client:
        return await client.post(
            url + "/stream-audio",
            json=dict(BODY, **fields),
            headers={"X-Request-Id": request_id},
        )


async def read_audio(response: RawResponse, size: int) -> bytes:
    """The first ``size`` bytes of a streamed answer."""
    audio = b""
    while len(audio) < size:
        chunk = await asyncio.wait_for(response.read_chunk(), 5)
        assert chunk is not None, f"the answer ended after {len(audio)} bytes"
        audio += chunk
    return audio


# ---------------------------------------------------------------- the hedge and its winner


@pytest.mark.parametrize(
    "primary",
    [[HEAD, HOLD], [HOLD]],
    ids=["head-sent-audio-late", "nothing-sent"],
)
async def test_a_late_primary_is_hedged_and_the_first_audio_wins_alone(
    primary: list[Step], caplog: pytest.LogCaptureFixture
) -> None:
    async with ScriptedUpstream(primary) as up_a, ScriptedUpstream(B_CHUNKS) as up_b:
        app = hedged_app([up_a, up_b], hedge_after=0.2)
        with caplog.at_level(logging.INFO, logger="gateway"):
            async with live_server(app) as url:
                sent = time.perf_counter()
                response = await post(url, "hedge-1")
                # The primary holds its connection open and silent: only the gateway closing
                # it ends it, long before its 30 s first-byte budget.
                assert await up_a.all_ended() == ["hung_up"]
                assert await up_b.all_ended() == ["complete"]
                line = await log_line(caplog, "hedge-1")
                assert await slots_free(app)
    assert response.status_code == 200
    assert response.headers["x-voice"] == "b"
    assert response.content == B_AUDIO  # the hedge's audio, and only it
    assert up_b.exchanges[0].started - sent >= 0.2  # the hedge waited hedge_after
    assert sample(app, "tts_hedges_total", voice="a") == 1
    assert sample(app, "tts_hedge_wins_total", voice="a", side="hedge") == 1
    assert sample(app, "tts_hedge_wins_total", voice="a", side="primary") == 0
    # Both were asked, so both bill the text.
    assert characters(app, "pa") == len(TEXT) and characters(app, "pb") == len(TEXT)
    assert breakers_untouched(app)  # the cancelled primary is no failure of its provider
    assert "tried=b:ok,a:hedge_lost" in line and "answered_by=b" in line


async def test_a_primary_with_audio_before_hedge_after_starts_no_hedge() -> None:
    async with ScriptedUpstream(A_CHUNKS) as up_a, ScriptedUpstream(B_CHUNKS) as up_b:
        # hedge_after is far beyond the primary's loopback answer, even on a loaded machine.
        app = hedged_app([up_a, up_b], hedge_after=2.0)
        async with live_server(app) as url:
            response = await post(url, "direct-1")
    assert response.status_code == 200
    assert response.headers["x-voice"] == "a"
    assert response.content == A_AUDIO
    # The race was over with the primary's first audio: no hedge could start after it.
    assert up_b.exchanges == []
    assert sample(app, "tts_hedges_total", voice="a") == 0
    assert characters(app, "pb") == 0


async def test_a_cancelled_hedge_never_counts_against_its_breaker() -> None:
    # The primary's audio comes after the hedge started; the hedge never has audio.
    b_asked = asyncio.Event()
    async with (
        ScriptedUpstream([HEAD, b_asked, *A_CHUNKS]) as up_a,
        ScriptedUpstream([HEAD, Signal(b_asked), HOLD], B_CHUNKS) as up_b,
    ):
        app = hedged_app([up_a, up_b], hedge_after=0.1)
        async with live_server(app) as url:
            response = await post(url, "primary-wins")
            assert await up_b.all_ended() == ["hung_up"]
            assert await slots_free(app)
            # pb would be open (one failure opens it) had the cancelled hedge counted: asked
            # straight, it answers.
            direct = await post(url, "b-direct", VoiceId="b")
    assert response.status_code == 200
    assert response.headers["x-voice"] == "a"
    assert response.content == A_AUDIO
    assert sample(app, "tts_hedge_wins_total", voice="a", side="primary") == 1
    assert characters(app, "pb") == 2 * len(TEXT)  # the cancelled hedge's text is billed
    assert breakers_untouched(app)
    assert direct.status_code == 200 and direct.content == B_AUDIO


# ---------------------------------------------------------------- races


@pytest.mark.parametrize("lag", [None, 0.0, 0.01, 0.05], ids=lambda lag: f"lag={lag}")
async def test_two_sides_with_audio_at_once_or_a_moment_apart_give_one_voice_and_leak_nothing(
    lag: float | None,
) -> None:
    """``lag=None``: both upstreams send their audio in the same instant; otherwise the
    primary sends its own ``lag`` seconds after the hedge. Either may win: the caller hears
    exactly one of them, and the loser's slot and connection are given back."""
    go = asyncio.Event()
    if lag is None:
        script_a: list[Step] = [HEAD, go, *A_CHUNKS, HOLD]
        script_b: list[Step] = [HEAD, go, *B_CHUNKS, HOLD]
    else:
        script_a = [HEAD, go, lag, *A_CHUNKS, HOLD]
        script_b = [Signal(go), *B_CHUNKS, HOLD]
    async with ScriptedUpstream(script_a) as up_a, ScriptedUpstream(script_b) as up_b:
        app = hedged_app([up_a, up_b], hedge_after=0.1)
        async with live_server(app) as url:
            posting = asyncio.create_task(raw_post(url, "/stream-audio", BODY))
            if lag is None:
                assert await eventually(lambda: up_b.exchanges)  # the hedge is under way
                go.set()
            response = await asyncio.wait_for(posting, 5)
            assert response.status == 200
            voice = response.headers["x-voice"]
            audio = await read_audio(response, len(A_AUDIO))
            # The loser was closed by the gateway; the winner holds on until the caller goes.
            loser = up_b if voice == "a" else up_a
            assert await loser.all_ended() == ["hung_up"]
            response.close()
            assert await up_a.all_ended() == ["hung_up"]
            assert await up_b.all_ended() == ["hung_up"]
            assert await slots_free(app)
    assert voice in ("a", "b")
    assert audio == (A_AUDIO if voice == "a" else B_AUDIO)  # never a mix of the two
    side = "primary" if voice == "a" else "hedge"
    assert sample(app, "tts_hedge_wins_total", voice="a", side=side) == 1
    assert characters(app, "pa") == len(TEXT) and characters(app, "pb") == len(TEXT)
    assert breakers_untouched(app)


async def test_audio_in_the_same_instant_goes_to_the_earlier_voice_and_the_other_is_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With scripted providers both streams produce their first audio in the same turn of the
    event loop, so the relay sees both finished together, deterministically."""
    go = asyncio.Event()
    chunk_a, chunk_b = A_CHUNKS[0], B_CHUNKS[0]
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans.update(
        pa=Plan([[go, chunk_a, chunk_a]]), pb=Plan([[go, chunk_b, chunk_b]])
    )
    yaml = scripted_config(
        voices={
            "a": {"provider": "pa", "fallback": ["b"], "hedge_after": 0.1},
            "b": {"provider": "pb"},
        },
        providers={"pa": provider_block(), "pb": provider_block()},
    )
    app = create_app(parse_config(yaml))
    pb = ScriptedProvider.plans["pb"]
    with caplog.at_level(logging.INFO, logger="gateway"):
        async with live_server(app) as url:
            posting = asyncio.create_task(post(url, "together"))
            assert await eventually(lambda: pb.jobs)  # the hedge is under way
            go.set()
            response = await asyncio.wait_for(posting, 5)
            assert await eventually(lambda: pb.closed)
            line = await log_line(caplog, "together")
            assert await slots_free(app)
    assert response.status_code == 200
    assert response.headers["x-voice"] == "a"
    assert response.content == chunk_a * 2
    assert pb.finished == []  # closed after its first chunk, never read to its end
    assert sample(app, "tts_hedge_wins_total", voice="a", side="primary") == 1
    assert characters(app, "pb") == len(TEXT)
    assert "tried=a:ok,b:hedge_lost" in line


async def test_the_primary_failing_after_the_hedge_started_serves_the_hedge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fail_a, send_b = asyncio.Event(), asyncio.Event()
    async with (
        ScriptedUpstream([fail_a, Fail(500)]) as up_a,
        ScriptedUpstream([HEAD, send_b, *B_CHUNKS]) as up_b,
    ):
        app = hedged_app([up_a, up_b], hedge_after=0.1)
        with caplog.at_level(logging.INFO, logger="gateway"):
            async with live_server(app) as url:
                posting = asyncio.create_task(post(url, "primary-fails"))
                assert await eventually(lambda: up_b.exchanges)  # the hedge is under way
                fail_a.set()
                # The gateway has taken in the primary's failure before the hedge has audio.
                assert await eventually(
                    lambda: sample(
                        app, "tts_provider_attempts_total", provider="pa", outcome="error"
                    )
                )
                send_b.set()
                response = await asyncio.wait_for(posting, 5)
                line = await log_line(caplog, "primary-fails")
                assert await slots_free(app)
    assert response.status_code == 200
    assert response.headers["x-voice"] == "b"
    assert response.content == B_AUDIO
    assert len(up_a.exchanges) == 1 and len(up_b.exchanges) == 1
    assert sample(app, "tts_hedge_wins_total", voice="a", side="hedge") == 1
    assert "tried=a:failed,b:ok" in line


async def test_both_sides_failing_go_on_to_the_next_voice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    b_failed = asyncio.Event()
    async with (
        ScriptedUpstream([b_failed, Fail(500)]) as up_a,
        ScriptedUpstream([Signal(b_failed), Fail(503)]) as up_b,
        ScriptedUpstream(C_CHUNKS) as up_c,
    ):
        app = hedged_app([up_a, up_b, up_c], hedge_after=0.1)
        with caplog.at_level(logging.INFO, logger="gateway"):
            async with live_server(app) as url:
                response = await post(url, "both-fail")
                line = await log_line(caplog, "both-fail")
                assert await slots_free(app)
    assert response.status_code == 200
    assert response.headers["x-voice"] == "c"
    assert response.content == C_AUDIO
    assert [len(u.exchanges) for u in (up_a, up_b, up_c)] == [1, 1, 1]
    assert sample(app, "tts_hedges_total", voice="a") == 1
    tried = line.split("tried=")[1].split()[0].split(",")
    assert sorted(tried[:2]) == ["a:failed", "b:failed"] and tried[2:] == ["c:ok"]


@pytest.mark.parametrize(
    ("script_a", "script_b", "status", "code"),
    [
        ([0.3, Fail(500)], [Fail(500)], 502, "provider_failed"),
        ([HEAD, HOLD], [HEAD, HOLD], 504, "provider_timeout"),
    ],
    ids=["both-fail", "both-time-out"],
)
async def test_both_sides_failing_at_the_end_of_the_chain_answer_the_right_status(
    script_a: list[Step], script_b: list[Step], status: int, code: str
) -> None:
    async with ScriptedUpstream(script_a) as up_a, ScriptedUpstream(script_b) as up_b:
        app = hedged_app(
            [up_a, up_b],
            hedge_after=0.1,
            timeout={"connect": 2, "first_byte": 0.6, "total": 60},
            circuit_breaker=False,
        )
        async with live_server(app) as url:
            response = await post(url, "no-audio")
            ends = [*await up_a.all_ended(), *await up_b.all_ended()]
            assert await slots_free(app)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert sample(app, "tts_hedges_total", voice="a") == 1
    assert ends == (["failed", "failed"] if status == 502 else ["hung_up", "hung_up"])


async def test_a_caller_hanging_up_during_a_race_closes_both_upstreams(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        ScriptedUpstream([HEAD, HOLD]) as up_a,
        ScriptedUpstream([HEAD, HOLD], B_CHUNKS) as up_b,
    ):
        app = hedged_app([up_a, up_b], hedge_after=0.1)
        with caplog.at_level(logging.INFO, logger="gateway"):
            async with live_server(app) as url:
                host, port = url.removeprefix("http://").split(":")
                _reader, writer = await asyncio.open_connection(host, int(port))
                payload = b'{"Text": "Hello there.", "SampleRate": 24000, "VoiceId": "a"}'
                writer.write(
                    b"POST /stream-audio HTTP/1.1\r\nHost: x\r\nX-Request-Id: hang-up\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(payload), payload)
                )
                await writer.drain()
                assert await eventually(lambda: up_b.exchanges)  # the hedge is under way
                writer.close()
                assert await up_a.all_ended() == ["hung_up"]
                assert await up_b.all_ended() == ["hung_up"]
                line = await log_line(caplog, "hang-up")
                assert await slots_free(app)
                # Neither breaker counted the hang-up: pb, asked straight, answers.
                direct = await post(url, "b-direct", VoiceId="b")
    assert breakers_untouched(app)
    assert direct.status_code == 200 and direct.content == B_AUDIO
    assert "tried=a:cancelled,b:cancelled" in line and "status=499" in line


# ---------------------------------------------------------------- the bound


async def test_hedges_are_bounded_to_a_fifth_of_the_voices_requests() -> None:
    """30 requests while the primary is slow: at most 20 % of them (6) start a hedge. Every
    request decides before its primary's audio (which comes a second after being asked, while
    hedge_after is 0.1 s), so the count is exact whatever the arrival order: each hedge
    decision sees at least as many requests as decisions made so far."""
    async with (
        ScriptedUpstream([HEAD, 1.0, *A_CHUNKS]) as up_a,
        ScriptedUpstream(B_CHUNKS) as up_b,
    ):
        app = hedged_app([up_a, up_b], hedge_after=0.1)
        async with live_server(app) as url, httpx.AsyncClient(timeout=15) as client:
            responses = await asyncio.gather(
                *(client.post(url + "/stream-audio", json=BODY) for _ in range(30))
            )
            ends = await up_a.all_ended()
            assert await slots_free(app)
    voices = [r.headers["x-voice"] for r in responses]
    assert all(r.status_code == 200 for r in responses)
    assert voices.count("b") == 6 and voices.count("a") == 24
    assert all(
        r.content == (A_AUDIO if v == "a" else B_AUDIO)
        for r, v in zip(responses, voices, strict=True)
    )
    assert sample(app, "tts_hedges_total", voice="a") == 6
    assert sample(app, "tts_hedge_wins_total", voice="a", side="hedge") == 6
    assert len(up_a.exchanges) == 30 and len(up_b.exchanges) == 6
    assert sorted(ends) == ["complete"] * 24 + ["hung_up"] * 6  # the hedged primaries closed
