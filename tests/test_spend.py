"""Spend accounting over real loopback upstreams and a live gateway: characters billed against
characters whose audio reached the caller, audio generated against audio delivered (a
barge-in's waste), the hedge's overhead, the cache's savings, and requests and characters per
tenant (named tokens) — in one process and summed over worker processes."""

from __future__ import annotations

import asyncio
import glob
import logging
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from gateway.admission import Lease
from gateway.app import create_app
from gateway.audio import Converter
from gateway.config import parse_config
from gateway.metrics import Metrics
from gateway.routing import Router
from gateway.spend import SpeakingPace, SpendMeter
from gateway.stream import AudioStream
from providers.base import AudioFormat, build_provider
from tests.scripted_upstream import HEAD, HOLD, ScriptedUpstream, custom_block
from tests.served import BURST, GatedUpstream, burst_answers, requests_by_process, serving
from tests.served import sample as page_sample
from tests.support import (
    eventually,
    leaked,
    live_server,
    logging_at_debug,
    raw_post,
    scripted_config,
    tone,
)

RATE = 24000
CHUNK = tone(440, 0.02, RATE)  # 20 ms
CHUNK_SECONDS = 0.02
SHORT = "Hello there."  # 12 characters
LONG = "A long answer that the caller will interrupt after its first half second. " * 3
ACME, GLOBEX, PLAIN = "acme-secret-0f3a9c", "globex-secret-77d1e2", "plain-secret-5b8c41"


def sample(app: Starlette, name: str, **labels: str) -> float:
    value = app.state.gateway.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def spend(app: Starlette, provider: str) -> dict[str, float]:
    """Every spend figure of ``provider``."""
    names = {
        "billed": "tts_provider_characters_total",
        "delivered": "tts_provider_characters_delivered_total",
        "generated_s": "tts_audio_generated_seconds_total",
        "delivered_s": "tts_audio_seconds_total",
        "hedge": "tts_hedge_characters_total",
        "saved": "tts_cache_characters_saved_total",
        "saved_s": "tts_cache_audio_seconds_saved_total",
    }
    return {key: sample(app, name, provider=provider) for key, name in names.items()}


def app_for(
    voices: dict[str, dict[str, Any]], providers: dict[str, dict[str, Any]], **server: Any
) -> Starlette:
    return create_app(parse_config(scripted_config(voices, providers, **server)))


def body(text: str = SHORT, voice: str = "v", rate: int = RATE, **extra: Any) -> dict[str, Any]:
    return {"Text": text, "VoiceId": voice, "SampleRate": rate, "ExtendData": "", **extra}


async def post(url: str, **fields: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=15) as client:
        return await client.post(url + "/stream-audio", json=body(**fields))


async def streams_ended(app: Starlette, reason: str, count: int) -> bool:
    """Whether ``count`` streams have ended for ``reason`` (each is settled by then)."""
    return await eventually(
        lambda: sample(app, "tts_streams_ended_total", reason=reason) == count, 5.0
    )


# ---------------------------------------------------------------- billed against delivered


async def test_a_complete_answer_delivers_every_character_and_every_second_it_generated() -> None:
    # The provider answers at 24 kHz, the caller asks for 8 kHz: generated seconds are the
    # provider's samples, delivered ones the caller's.
    async with ScriptedUpstream([CHUNK] * 12) as upstream:
        app = app_for({"v": {"provider": "p"}}, {"p": custom_block(upstream, sample_rates=[RATE])})
        async with live_server(app) as url:
            response = await post(url, rate=8000)
            assert await streams_ended(app, "complete", 1)
    assert response.status_code == 200
    assert len(response.content) == 2 * round(12 * CHUNK_SECONDS * 8000)
    figures = spend(app, "p")
    assert figures["billed"] == figures["delivered"] == len(SHORT)
    assert figures["generated_s"] == pytest.approx(12 * CHUNK_SECONDS, abs=1e-9)
    assert figures["delivered_s"] == pytest.approx(figures["generated_s"], abs=1 / 8000)
    assert figures["hedge"] == figures["saved"] == figures["saved_s"] == 0


async def test_a_barge_in_delivers_the_share_of_characters_the_caller_heard() -> None:
    """The first answer is complete: it teaches the provider's speaking pace (seconds per
    character). The second is cut after half a second: its characters are billed in full,
    the characters delivered are what half a second is at that pace, and the whole answer
    the provider produced counts as generated."""
    heard = 25  # chunks the caller gets before hanging up
    async with ScriptedUpstream([CHUNK] * 12, [*[CHUNK] * heard, HOLD]) as upstream:
        app = app_for({"v": {"provider": "p"}}, {"p": custom_block(upstream)})
        async with live_server(app) as url:
            complete = await post(url)
            assert complete.status_code == 200
            assert await streams_ended(app, "complete", 1)
            pace = spend(app, "p")["generated_s"] / len(SHORT)  # 0.02 s per character
            before = spend(app, "p")

            response = await raw_post(url, "/stream-audio", body(LONG))
            assert response.status == 200
            audio = b""
            while len(audio) < heard * len(CHUNK):
                chunk = await asyncio.wait_for(response.read_chunk(), 5)
                assert chunk is not None
                audio += chunk
            response.close()  # the caller barges in
            assert await streams_ended(app, "client_disconnect", 1)
            assert await upstream.all_ended() == ["complete", "hung_up"]
    assert pace == pytest.approx(12 * CHUNK_SECONDS / len(SHORT))
    cut = {key: value - before[key] for key, value in spend(app, "p").items()}
    heard_seconds = heard * CHUNK_SECONDS
    assert cut["billed"] == len(LONG)
    assert cut["delivered_s"] == pytest.approx(heard_seconds)  # all the gateway had
    assert cut["delivered"] == pytest.approx(heard_seconds / pace)  # 25 of 228 characters
    assert cut["delivered"] < cut["billed"]
    assert cut["generated_s"] == pytest.approx(len(LONG) * pace)  # the whole answer
    assert cut["delivered_s"] < cut["generated_s"]
    # The share of the characters delivered is the share of the audio delivered.
    assert cut["delivered"] / cut["billed"] == pytest.approx(
        cut["delivered_s"] / cut["generated_s"]
    )


# ---------------------------------------------------------------- the hedge's overhead


def hedged(up_a: ScriptedUpstream, up_b: ScriptedUpstream, **a_overrides: Any) -> Starlette:
    """Voice ``a`` on ``pa`` hedging after 0.2 s to ``b`` on ``pb``; voice ``x``, also on
    ``pa``, without a hedge."""
    return app_for(
        {
            "a": {"provider": "pa", "fallback": ["b"], "hedge_after": 0.2},
            "b": {"provider": "pb"},
            "x": {"provider": "pa"},
        },
        {"pa": custom_block(up_a, **a_overrides), "pb": custom_block(up_b)},
    )


async def losers_closed(app: Starlette) -> bool:
    """Whether every hedge loser has been closed (and its spend counted)."""
    relay = app.state.gateway.routing.relay
    return await eventually(lambda: not relay.disposing, 5.0)


async def test_a_hedge_loser_that_had_sent_its_text_counts_as_hedge_overhead() -> None:
    async with ScriptedUpstream([HEAD, HOLD]) as up_a, ScriptedUpstream([CHUNK] * 3) as up_b:
        app = hedged(up_a, up_b)
        async with live_server(app) as url:
            response = await post(url, voice="a")
            assert await up_a.all_ended() == ["hung_up"]
            assert await losers_closed(app)
    assert response.status_code == 200 and response.headers["x-voice"] == "b"
    assert response.content == CHUNK * 3
    slow, fast = spend(app, "pa"), spend(app, "pb")
    assert slow["billed"] == slow["hedge"] == len(SHORT)  # billed, and nobody heard it
    assert slow["delivered"] == 0
    assert fast["billed"] == fast["delivered"] == len(SHORT) and fast["hedge"] == 0


async def test_a_hedge_loser_still_waiting_for_a_slot_sent_nothing_and_costs_nothing() -> None:
    """``pa`` has one slot, held by a stream on voice ``x``: voice ``a``'s attempt waits in
    line for it, the hedge answers meanwhile, and the waiting attempt is cancelled before its
    text was ever sent."""
    async with (
        ScriptedUpstream([CHUNK, HOLD]) as up_a,
        ScriptedUpstream([CHUNK] * 3) as up_b,
    ):
        app = hedged(up_a, up_b, max_concurrency=1, queue=30)
        async with live_server(app) as url:
            holder = await raw_post(url, "/stream-audio", body(voice="x"))
            assert holder.status == 200
            assert await asyncio.wait_for(holder.read_chunk(), 5) == CHUNK
            response = await post(url, voice="a")
            assert await losers_closed(app)
            holder.close()
            assert await up_a.all_ended() == ["hung_up"]
    assert response.status_code == 200 and response.headers["x-voice"] == "b"
    assert sample(app, "tts_hedges_total", voice="a") == 1
    assert len(up_a.exchanges) == 1  # only the holder's: the loser never reached pa
    assert spend(app, "pa")["billed"] == len(SHORT)  # the holder's text
    assert spend(app, "pa")["hedge"] == 0


# ---------------------------------------------------------------- the cache's savings


async def test_a_cache_hit_bills_nothing_and_counts_what_it_saved() -> None:
    async with ScriptedUpstream([CHUNK] * 5) as upstream:
        provider = custom_block(upstream, sample_rates=[RATE])
        app = app_for({"v": {"provider": "p", "cache": True}}, {"p": provider})
        async with live_server(app) as url:
            first = await post(url)
            assert await eventually(lambda: sample(app, "tts_cache_stored_total", provider="p"))
            second = await post(url, rate=16000)  # one entry serves every rate
            assert await streams_ended(app, "complete", 2)
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
    assert len(upstream.exchanges) == 1
    figures = spend(app, "p")
    assert figures["billed"] == figures["delivered"] == len(SHORT)  # the miss alone
    assert figures["generated_s"] == pytest.approx(5 * CHUNK_SECONDS)
    assert figures["saved"] == len(SHORT)
    hit_seconds = len(second.content) / 2 / 16000
    assert figures["saved_s"] == pytest.approx(hit_seconds)
    # Every second sent counts as delivered; the cache's share of it as saved.
    assert figures["delivered_s"] == pytest.approx(5 * CHUNK_SECONDS + hit_seconds)
    assert sample(app, "tts_cache_lookups_total", provider="p", result="hit") == 1


# ---------------------------------------------------------------- tenants


TENANT_TOKENS = [{"name": "acme", "token": ACME}, {"name": "globex", "token": GLOBEX}, PLAIN]


async def test_requests_and_characters_are_counted_per_named_token_and_never_the_token(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    async with ScriptedUpstream([CHUNK] * 2) as upstream:
        app = app_for(
            {"v": {"provider": "p"}},
            {"p": custom_block(upstream)},
            tokens=TENANT_TOKENS,
            unknown_voice="reject",
            metrics={"token": True},
        )
        with logging_at_debug(capsys) as written, caplog.at_level(logging.DEBUG):
            async with live_server(app) as url:
                statuses = [
                    (await post(url, Token=token, voice=voice, text=text)).status_code
                    for token, voice, text in [
                        (ACME, "v", SHORT),
                        (ACME, "v", "Hi."),
                        (GLOBEX, "v", SHORT),
                        (GLOBEX, "nobody", SHORT),  # 404: counted, but no characters
                        (PLAIN, "v", SHORT),
                        ("not-a-token", "v", SHORT),  # 401: nobody's
                        (ACME[:-1], "v", SHORT),  # 401
                    ]
                ]
                assert await eventually(
                    lambda: sample(app, "tts_requests_total", status="401") == 2
                )
                async with httpx.AsyncClient() as client:
                    page = await client.get(
                        url + "/metrics", headers={"Authorization": f"Bearer {ACME}"}
                    )
            log = written()
    assert statuses == [200, 200, 200, 404, 200, 401, 401]
    requests = {
        (tenant, status): sample(app, "tts_tenant_requests_total", tenant=tenant, status=status)
        for tenant in ("acme", "globex", "token-3")
        for status in ("200", "404", "401")
    }
    assert {key: n for key, n in requests.items() if n} == {
        ("acme", "200"): 2,
        ("globex", "200"): 1,
        ("globex", "404"): 1,
        ("token-3", "200"): 1,
    }
    assert sample(app, "tts_tenant_characters_total", tenant="acme") == len(SHORT) + len("Hi.")
    assert sample(app, "tts_tenant_characters_total", tenant="globex") == len(SHORT)
    assert sample(app, "tts_tenant_characters_total", tenant="token-3") == len(SHORT)
    text = page.text
    assert page.status_code == 200 and 'tenant="acme"' in text and 'tenant="token-3"' in text
    assert 'status="401"' not in text.split("tts_tenant_requests_total", 1)[1]
    secrets = [ACME, GLOBEX, PLAIN, "not-a-token", ACME[:-1]]
    assert [s for s in secrets if s in text] == []
    assert leaked(secrets, log, caplog.records) == []
    assert "tenant=acme" in log and "tenant=token-3" in log  # the request lines name them


# ---------------------------------------------------------------- several worker processes


async def test_spend_and_tenant_counters_are_summed_over_worker_processes(
    tmp_path: Path,
) -> None:
    async with GatedUpstream() as upstream:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            scripted_config(
                {"v": {"provider": "a"}},
                {"a": {"type": "custom", "url": upstream.url, "retry": {"attempts": 1}}},
                tokens=[{"name": "acme", "token": ACME}],
                watch=False,
                log_level="info",
            )
        )
        env = {"TMPDIR": str(tmp_path)}
        async with serving("--config", str(config), "--workers", "2", env=env, workers=2) as s:
            [metrics_dir] = glob.glob(str(tmp_path / "tts-gateway-metrics-*"))
            sent = 0
            # Bursts of new callers until both workers have answered (requests one after
            # another all reach the first worker while it is light).
            while sent < 5 * BURST and (
                sum(n > 0 for n in requests_by_process(metrics_dir).values()) < 2
            ):
                sent += len(await burst_answers(s.url, body(Token=ACME, text=SHORT), 15))
            assert sorted(n > 0 for n in requests_by_process(metrics_dir).values()) == [True] * 2
            page = await s.metrics()
    audio = 3 * CHUNK_SECONDS  # what the upstream answers, whole
    assert page_sample(page, "tts_tenant_requests_total", tenant="acme", status="200") == sent
    assert page_sample(page, "tts_tenant_characters_total", tenant="acme") == sent * len(SHORT)
    assert page_sample(page, "tts_provider_characters_total", provider="a") == sent * len(SHORT)
    delivered = page_sample(page, "tts_provider_characters_delivered_total", provider="a")
    assert delivered == sent * len(SHORT)
    generated = page_sample(page, "tts_audio_generated_seconds_total", provider="a")
    assert generated == pytest.approx(sent * audio)
    assert page_sample(page, "tts_audio_seconds_total", provider="a") == pytest.approx(generated)
    assert ACME not in page


# ---------------------------------------------------------------- the meter itself


async def _native(chunks: Sequence[bytes]) -> AsyncGenerator[bytes, None]:
    for chunk in chunks:
        yield chunk


def received_stream(chunks: int, *, whole: bool, cache: str | None = None) -> AudioStream:
    """A stream of ``p`` (a custom provider) that has received ``chunks`` chunks of its
    answer: the whole answer, or the start of a longer one (its source not yet ended)."""
    config = parse_config(
        scripted_config({"v": {"provider": "p"}}, {"p": {"type": "custom", "url": "http://x"}})
    )
    chain = Router(config).resolve("v")
    assert chain is not None
    [step] = chain
    converter = Converter(AudioFormat(RATE), RATE)
    first = b"".join(converter.feed(CHUNK) for _ in range(chunks))
    source = None if whole else _native([CHUNK])
    stream = AudioStream(
        step, build_provider(config.providers["p"]), first, converter, source, Lease(None)
    )
    stream.characters = 0 if cache in ("hit", "shared") else len(LONG)
    stream.cache = cache
    return stream


def meter_figures(meter: SpendMeter) -> dict[str, float]:
    registry = meter.metrics.registry
    names = {
        "delivered": "tts_provider_characters_delivered_total",
        "generated_s": "tts_audio_generated_seconds_total",
        "saved_s": "tts_cache_audio_seconds_saved_total",
    }
    return {
        key: float(registry.get_sample_value(name, {"provider": "p"}) or 0.0)
        for key, name in names.items()
    }


@pytest.mark.parametrize("end", ["client_disconnect", "caller_too_slow", "drain"])
async def test_a_cut_answer_received_whole_is_measured_not_estimated(end: str) -> None:
    """10 chunks received, the whole answer: 4 of them delivered is 40 % of its characters,
    whatever the speaking pace (here the default, by which the answer would be far longer)."""
    meter = SpendMeter(Metrics())
    meter.settle(received_stream(10, whole=True), 4 * CHUNK_SECONDS, end)
    figures = meter_figures(meter)
    assert figures["generated_s"] == pytest.approx(10 * CHUNK_SECONDS)
    assert figures["delivered"] == pytest.approx(0.4 * len(LONG))


async def test_a_cut_answer_not_received_whole_is_measured_against_its_expected_length() -> None:
    meter = SpendMeter(Metrics())
    meter.pace.learn("p", 1.0, 50)  # 0.02 s a character
    meter.settle(received_stream(10, whole=False), 4 * CHUNK_SECONDS, "client_disconnect")
    figures = meter_figures(meter)
    assert figures["generated_s"] == pytest.approx(0.02 * len(LONG))
    assert figures["delivered"] == pytest.approx(4 * CHUNK_SECONDS / 0.02)


async def test_an_answer_the_provider_broke_off_generated_only_what_was_received() -> None:
    meter = SpendMeter(Metrics())
    meter.pace.learn("p", 1.0, 50)
    meter.settle(received_stream(10, whole=False), 4 * CHUNK_SECONDS, "provider_error")
    figures = meter_figures(meter)
    assert figures["generated_s"] == pytest.approx(10 * CHUNK_SECONDS)
    assert figures["delivered"] == pytest.approx(4 * CHUNK_SECONDS / 0.02)


@pytest.mark.parametrize("origin", ["hit", "shared"])
async def test_audio_from_the_cache_is_saved_not_generated(origin: str) -> None:
    meter = SpendMeter(Metrics())
    meter.settle(received_stream(10, whole=False, cache=origin), 4 * CHUNK_SECONDS, "drain")
    assert meter_figures(meter) == {
        "delivered": 0.0,
        "generated_s": 0.0,
        "saved_s": pytest.approx(4 * CHUNK_SECONDS),
    }


def test_the_speaking_pace_is_learned_per_provider_and_per_gateway() -> None:
    one, other = SpendMeter(Metrics()), SpendMeter(Metrics())
    one.pace.learn("p", 2.0, 100)
    assert one.pace.seconds("p", 10) == pytest.approx(0.2)
    assert one.pace.seconds("q", 10) == pytest.approx(10 * SpeakingPace.DEFAULT)
    assert other.pace.seconds("p", 10) == pytest.approx(10 * SpeakingPace.DEFAULT)
    one.pace.learn("p", 4.0, 100)  # an average, moving a tenth of the way each time
    assert one.pace.seconds("p", 100) == pytest.approx(2.0 + 0.1 * 2.0)
