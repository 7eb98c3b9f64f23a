"""The relay over a real uvicorn server on loopback: first bytes before the provider is done,
retries, fallback, failures after audio, caller disconnects, limits."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import httpx
import pytest

from gateway.app import create_app
from gateway.attempts import pause_before
from gateway.config import ConfigError, parse_config
from providers.base import ProviderConnectionError, ProviderHTTPError, RetryPolicy
from tests.support import (
    Plan,
    ScriptedProvider,
    Upstream,
    eventually,
    live_server,
    provider_block,
    raw_post,
    scripted_config,
    tone,
)

CHUNK = tone(440, 0.02, 24000)  # 20 ms at 24 kHz, the provider's native rate
BODY = {"Text": "Hello there.", "SampleRate": 24000, "VoiceId": "a", "ExtendData": ""}


def plans(**by_provider: Plan) -> None:
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans.update(by_provider)


def two_voice_app(**server: Any) -> Any:
    yaml = scripted_config(
        voices={"a": {"provider": "pa", "fallback": ["b"]}, "b": {"provider": "pb"}},
        providers={"pa": provider_block(), "pb": provider_block()},
        **server,
    )
    return create_app(parse_config(yaml))


async def test_first_bytes_arrive_before_the_provider_has_finished() -> None:
    release = asyncio.Event()
    plans(pa=Plan([[CHUNK, release, CHUNK * 3]]), pb=Plan([[CHUNK]]))
    async with live_server(two_voice_app()) as url:
        response = await raw_post(url, "/stream-audio", BODY)
        assert response.status == 200
        assert response.headers["x-sample-rate"] == "24000"
        first = await asyncio.wait_for(response.read_chunk(), 5)
        # The provider is still blocked on `release`: what arrived was sent while it runs.
        assert first == CHUNK
        assert ScriptedProvider.plans["pa"].finished == []
        release.set()
        rest = await asyncio.wait_for(response.read_all(), 5)
        response.close()
    assert first + rest == CHUNK * 4
    assert len(ScriptedProvider.plans["pa"].finished) == 1


async def test_retryable_error_is_retried_then_succeeds() -> None:
    plans(
        pa=Plan([[ProviderHTTPError("pa", 503, "overloaded")], [CHUNK, CHUNK]]),
        pb=Plan([[CHUNK]]),
    )
    async with live_server(two_voice_app()) as url, httpx.AsyncClient() as client:
        response = await client.post(url + "/stream-audio", json=BODY)
    assert response.status_code == 200
    assert response.content == CHUNK * 2
    assert response.headers["x-voice"] == "a"
    assert len(ScriptedProvider.plans["pa"].jobs) == 2
    assert ScriptedProvider.plans["pb"].jobs == []


async def test_non_retryable_error_goes_straight_to_the_fallback() -> None:
    plans(pa=Plan([[ProviderHTTPError("pa", 401, "bad key")]]), pb=Plan([[CHUNK]]))
    async with live_server(two_voice_app()) as url, httpx.AsyncClient() as client:
        response = await client.post(url + "/stream-audio", json=BODY)
    assert response.status_code == 200
    assert response.headers["x-voice"] == "b"
    assert response.content == CHUNK
    assert len(ScriptedProvider.plans["pa"].jobs) == 1  # a 401 is not retried
    assert len(ScriptedProvider.plans["pb"].jobs) == 1


async def test_failure_then_fallback_after_all_attempts() -> None:
    plans(pa=Plan([[ProviderConnectionError("pa", "refused")]]), pb=Plan([[CHUNK, CHUNK]]))
    async with live_server(two_voice_app()) as url, httpx.AsyncClient() as client:
        response = await client.post(url + "/stream-audio", json=BODY)
        metrics = (await client.get(url + "/metrics")).text
    assert response.status_code == 200
    assert response.content == CHUNK * 2
    assert response.headers["x-voice"] == "b"
    assert len(ScriptedProvider.plans["pa"].jobs) == 3  # retry.attempts
    assert 'tts_fallbacks_total{voice="b"} 1.0' in metrics
    assert 'tts_provider_characters_total{provider="pa"} 36.0' in metrics  # 3 x 12 chars


async def test_every_voice_failing_answers_502_with_json() -> None:
    plans(
        pa=Plan([[ProviderHTTPError("pa", 500, "boom")]]),
        pb=Plan([[ProviderHTTPError("pb", 400, "bad voice")]]),
    )
    async with live_server(two_voice_app()) as url, httpx.AsyncClient() as client:
        response = await client.post(url + "/stream-audio", json=BODY)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "provider_failed"
    assert "pa" in error["message"] and "pb" in error["message"]


async def test_every_voice_timing_out_answers_504() -> None:
    never = asyncio.Event()
    yaml = scripted_config(
        voices={"a": {"provider": "pa"}},
        providers={"pa": provider_block(timeout={"first_byte": 0.3, "total": 5})},
    )
    plans(pa=Plan([[never]]))
    async with live_server(create_app(parse_config(yaml))) as url, httpx.AsyncClient() as c:
        started = time.perf_counter()
        response = await c.post(url + "/stream-audio", json=BODY)
        waited = time.perf_counter() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "provider_timeout"
    assert waited >= 0.3
    assert ScriptedProvider.plans["pa"].closed  # the stalled stream was closed, not leaked


async def test_failure_after_audio_ends_the_stream_without_fallback() -> None:
    plans(
        pa=Plan([[CHUNK, CHUNK, ProviderConnectionError("pa", "reset mid-stream")]]),
        pb=Plan([[CHUNK * 10]]),
    )
    async with live_server(two_voice_app()) as url, httpx.AsyncClient() as client:
        response = await client.post(url + "/stream-audio", json=BODY)
        metrics = (await client.get(url + "/metrics")).text
    assert response.status_code == 200
    assert response.content == CHUNK * 2  # what was produced, nothing appended
    assert len(ScriptedProvider.plans["pa"].jobs) == 1  # no retry after audio
    assert ScriptedProvider.plans["pb"].jobs == []  # no fallback after audio
    assert 'tts_streams_ended_total{reason="provider_error"} 1.0' in metrics


async def test_stream_without_audio_is_retried() -> None:
    plans(pa=Plan([[b""], [CHUNK]]), pb=Plan([[CHUNK * 5]]))
    async with live_server(two_voice_app()) as url, httpx.AsyncClient() as client:
        response = await client.post(url + "/stream-audio", json=BODY)
    assert response.status_code == 200
    assert response.content == CHUNK
    assert len(ScriptedProvider.plans["pa"].jobs) == 2
    assert ScriptedProvider.plans["pb"].jobs == []


async def test_retry_after_is_honoured_when_the_breaker_is_off() -> None:
    plans(
        pa=Plan([[ProviderHTTPError("pa", 429, "slow down", retry_after=0.4)], [CHUNK]]),
        pb=Plan([[CHUNK]]),
    )
    yaml = scripted_config(
        voices={"a": {"provider": "pa", "fallback": ["b"]}, "b": {"provider": "pb"}},
        providers={"pa": provider_block(circuit_breaker=False), "pb": provider_block()},
    )
    app = create_app(parse_config(yaml))
    async with live_server(app) as url, httpx.AsyncClient() as client:
        response = await client.post(url + "/stream-audio", json=BODY)
    assert response.status_code == 200
    assert response.headers["x-voice"] == "a"
    started = ScriptedProvider.plans["pa"].started
    assert len(started) == 2
    assert started[1] - started[0] >= 0.4


async def test_a_retry_that_could_not_start_within_the_first_byte_budget_is_not_made() -> None:
    # The provider asks for 5 s of quiet; the voice's first-byte budget is 1 s: no retry is
    # waited for, and the caller hears the provider's own error at once (not a timeout).
    plans(pa=Plan([[ProviderHTTPError("pa", 503, "busy", retry_after=5.0)], [CHUNK]]))
    yaml = scripted_config(
        voices={"a": {"provider": "pa"}},
        providers={
            "pa": provider_block(circuit_breaker=False, timeout={"first_byte": 1, "total": 5})
        },
    )
    async with live_server(create_app(parse_config(yaml))) as url, httpx.AsyncClient() as c:
        started = time.perf_counter()
        response = await c.post(url + "/stream-audio", json=BODY)
        waited = time.perf_counter() - started
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "provider_failed"
    assert len(ScriptedProvider.plans["pa"].jobs) == 1
    assert waited < 1.0


async def test_retries_wait_their_backoff_between_attempts() -> None:
    # backoff 0.1 s doubling: at least 0.1 s before the second attempt, 0.2 before the third.
    failure = ProviderConnectionError("pa", "refused")
    plans(pa=Plan([[failure], [failure], [CHUNK]]))
    yaml = scripted_config(
        voices={"a": {"provider": "pa"}},
        providers={
            "pa": provider_block(
                circuit_breaker=False, retry={"attempts": 3, "backoff": 0.1, "max_backoff": 1}
            )
        },
    )
    async with live_server(create_app(parse_config(yaml))) as url, httpx.AsyncClient() as c:
        response = await c.post(url + "/stream-audio", json=BODY)
    assert response.status_code == 200
    assert response.content == CHUNK
    started = ScriptedProvider.plans["pa"].started
    assert len(started) == 3
    assert started[1] - started[0] >= 0.1
    assert started[2] - started[1] >= 0.2


def test_the_pause_between_attempts_doubles_up_to_its_bound_with_jitter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = RetryPolicy(attempts=100, backoff=0.2, max_backoff=1.0)
    error = ProviderConnectionError("pa", "refused")
    monkeypatch.setattr("random.random", lambda: 0.0)  # tenacity's jitter: none
    assert [pause_before(n, error, policy) for n in (1, 2, 3, 4, 99)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    monkeypatch.setattr("random.random", lambda: 1.0)  # the jitter's bound
    assert pause_before(1, error, policy) == pytest.approx(0.3)
    assert pause_before(5, error, policy) == pytest.approx(1.1)
    # The provider's Retry-After is the pause, whatever the policy says.
    asked = ProviderHTTPError("pa", 429, "slow down", retry_after=7.0)
    assert pause_before(3, asked, policy) == 7.0
    # No backoff at all: no pause.
    assert pause_before(1000, error, RetryPolicy(attempts=2000, backoff=0, max_backoff=0)) == 0


async def test_a_429_with_retry_after_opens_the_breaker_for_that_long() -> None:
    plans(
        pa=Plan([[ProviderHTTPError("pa", 429, "slow down", retry_after=0.6)], [CHUNK]]),
        pb=Plan([[CHUNK]]),
    )
    async with live_server(two_voice_app()) as url, httpx.AsyncClient() as client:
        first = await client.post(url + "/stream-audio", json=BODY)
        # Not retried: the provider asked for 0.6 s of quiet, and the fallback answers now.
        assert first.status_code == 200
        assert first.headers["x-voice"] == "b"
        assert len(ScriptedProvider.plans["pa"].jobs) == 1
        second = await client.post(url + "/stream-audio", json=BODY)
        assert second.headers["x-voice"] == "b"
        assert len(ScriptedProvider.plans["pa"].jobs) == 1  # skipped while open
        await asyncio.sleep(0.65)  # the provider's own Retry-After, the point of the test
        third = await client.post(url + "/stream-audio", json=BODY)
    assert third.status_code == 200
    assert third.headers["x-voice"] == "a"  # the probe got audio: closed again
    assert len(ScriptedProvider.plans["pa"].jobs) == 2


async def test_caller_disconnect_mid_stream_closes_the_provider_at_once() -> None:
    never = asyncio.Event()
    plans(pa=Plan([[CHUNK, never]]), pb=Plan([[CHUNK]]))
    async with live_server(two_voice_app()) as url:
        response = await raw_post(url, "/stream-audio", BODY)
        assert await response.read_chunk() == CHUNK
        hung_up = time.perf_counter()
        response.close()
        await eventually(lambda: ScriptedProvider.plans["pa"].closed)
    closed = ScriptedProvider.plans["pa"].closed
    assert closed, "the provider stream was never closed"
    assert closed[0] - hung_up < 0.1


async def test_caller_disconnect_before_first_byte_cancels_the_provider() -> None:
    never = asyncio.Event()
    plans(pa=Plan([[never]]), pb=Plan([[CHUNK]]))
    async with live_server(two_voice_app()) as url:
        host, port = url.removeprefix("http://").split(":")
        _reader, writer = await asyncio.open_connection(host, int(port))
        payload = b'{"Text": "Hi.", "SampleRate": 24000, "VoiceId": "a"}'
        writer.write(
            b"POST /stream-audio HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        await writer.drain()
        assert await eventually(lambda: ScriptedProvider.plans["pa"].jobs)
        hung_up = time.perf_counter()
        writer.close()
        await eventually(lambda: ScriptedProvider.plans["pa"].closed)
    closed = ScriptedProvider.plans["pa"].closed
    assert closed and closed[0] - hung_up < 0.1
    assert ScriptedProvider.plans["pb"].jobs == []  # a hang-up is not a provider failure


async def test_caller_disconnect_closes_the_upstream_connection_within_100ms() -> None:
    async with Upstream(chunks=[CHUNK] * 3, hold=True) as upstream:
        yaml = scripted_config(
            voices={"up": {"provider": "chain"}},
            providers={"chain": {"type": "custom", "url": upstream.url}},
        )
        async with live_server(create_app(parse_config(yaml))) as url:
            response = await raw_post(url, "/stream-audio", dict(BODY, VoiceId="up"))
            assert response.status == 200
            assert await response.read_chunk()
            hung_up = time.perf_counter()
            response.close()
            await eventually(lambda: upstream.closed_at)
    assert upstream.closed_at, "the upstream connection stayed open"
    assert upstream.closed_at[0] - hung_up < 0.1


async def test_gateway_stream_limit_answers_429_without_calling_the_provider() -> None:
    release = asyncio.Event()
    plans(pa=Plan([[CHUNK, release]]), pb=Plan([[CHUNK]]))
    async with live_server(two_voice_app(max_concurrent_streams=1)) as url:
        first = await raw_post(url, "/stream-audio", BODY)
        assert first.status == 200
        async with httpx.AsyncClient() as client:
            second = await client.post(url + "/stream-audio", json=BODY)
        assert second.status_code == 429
        assert second.headers["retry-after"] == "1"
        assert second.json()["error"]["code"] == "too_many_streams"
        assert len(ScriptedProvider.plans["pa"].jobs) == 1
        release.set()
        assert await first.read_all() == CHUNK  # the rest after the first chunk
        first.close()


async def test_a_request_finding_the_provider_full_waits_its_queue_time_for_a_slot() -> None:
    release = asyncio.Event()
    yaml = scripted_config(
        voices={"a": {"provider": "pa"}},
        providers={"pa": provider_block(max_concurrency=1, queue=5)},
    )
    plans(pa=Plan([[CHUNK, release, CHUNK], [CHUNK]]))
    app = create_app(parse_config(yaml))
    gate = app.state.gateway.routing.health["pa"].gate
    async with live_server(app) as url:
        first = await raw_post(url, "/stream-audio", BODY)
        assert await first.read_chunk() == CHUNK

        async def second() -> httpx.Response:
            async with httpx.AsyncClient() as client:
                return await client.post(url + "/stream-audio", json=BODY)

        waiting = asyncio.create_task(second())
        # The second request found the provider's only slot taken and is waiting for it.
        assert await eventually(lambda: gate.waiting == 1)
        assert len(ScriptedProvider.plans["pa"].jobs) == 1
        release.set()
        assert await first.read_all() == CHUNK
        first.close()
        response = await waiting
    assert response.status_code == 200
    assert response.content == CHUNK
    assert len(ScriptedProvider.plans["pa"].jobs) == 2


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
async def test_audio_is_resampled_to_the_requested_rate(rate: int) -> None:
    plans(pa=Plan([[tone(440, 0.5, 24000)]]), pb=Plan([[CHUNK]]))
    async with live_server(two_voice_app()) as url, httpx.AsyncClient() as client:
        response = await client.post(url + "/stream-audio", json=dict(BODY, SampleRate=rate))
    assert response.status_code == 200
    assert response.headers["x-sample-rate"] == str(rate)
    assert abs(len(response.content) // 2 - rate // 2) <= 1


class Gate(asyncio.Event):
    """A scripted provider's step that tells when the provider reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    async def wait(self) -> Literal[True]:
        self.waiting.set()
        return await super().wait()


@pytest.mark.parametrize("resampler", ["auto", "block"])
async def test_resampler_setting_decides_whether_the_first_chunk_is_answered_at_once(
    resampler: str,
) -> None:
    gate = Gate()
    plans(pa=Plan([[CHUNK, gate, CHUNK, CHUNK]]), pb=Plan([[CHUNK]]))
    app = two_voice_app(resampler=resampler)
    gateway = app.state.gateway
    async with live_server(app) as url:
        posting = asyncio.create_task(raw_post(url, "/stream-audio", dict(BODY, SampleRate=48000)))
        if resampler == "auto":
            # A real-time trickle: the low-latency filter answers the first 20 ms chunk.
            response = await asyncio.wait_for(posting, 2)
            assert await asyncio.wait_for(response.read_chunk(), 2)
        else:
            # The block filter holds the first 20 ms back: no audio, so no answer yet. The
            # provider is asked for its next chunk (waits for the gate) only once the first
            # has been taken in; an answer to the first would have started before that.
            await asyncio.wait_for(gate.waiting.wait(), 5)
            answered = gateway.metrics.registry.get_sample_value(
                "tts_requests_total", {"status": "200"}
            )
            assert answered is None and not posting.done()
        gate.set()
        response = await asyncio.wait_for(posting, 5)
        assert response.status == 200
        rest = await asyncio.wait_for(response.read_all(), 5)
        response.close()
    assert rest


def test_unknown_resampler_setting_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            scripted_config({"a": {"provider": "pa"}}, {"pa": provider_block()}, resampler="fast")
        )
    assert "server.resampler" in str(caught.value)
