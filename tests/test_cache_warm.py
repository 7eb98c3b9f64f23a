"""Warming: ``server.cache.warm`` phrases synthesized at start, and ``tts-gateway warm FILE``
storing a list of phrases into the shared Redis for every gateway to answer from."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import parse_config
from tests.cache_support import PHRASE, PhraseUpstream, ask, body, routing
from tests.redis_support import RedisServer
from tests.support import eventually, live_server

REPO = Path(__file__).resolve().parent.parent
WHOLE = b"".join(PHRASE)


def _warmed(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "cache_warmed"]


async def test_warm_phrases_are_stored_at_start(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.cache")
    async with PhraseUpstream() as upstream:
        warm = [{"voice": "v", "text": "Hello there."}, {"voice": "v", "text": "Goodbye."}]
        app = create_app(parse_config(routing(upstream.url, cache={"warm": warm})))
        async with live_server(app) as url:
            assert await eventually(lambda: _warmed(caplog), 20)
            (record,) = _warmed(caplog)
            assert (record.stored, record.failed) == (2, 0)  # type: ignore[attr-defined]
            assert upstream.count == 2
            for text in ("Hello there.", "Goodbye."):
                answer = await ask(url, body(text, rate=8000))
                assert (answer.status, answer.cache) == (200, "hit")
            assert upstream.count == 2


async def test_a_warm_phrase_whose_upstream_stalls_fails_within_the_total_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Warming reads as a caller would, within the provider's total budget; it waited for as
    # long as the upstream held its answer open.
    caplog.set_level(logging.INFO, "gateway.cache")
    never = asyncio.Event()
    async with PhraseUpstream(steps=(PHRASE[0], never)) as upstream:
        yaml = routing(
            upstream.url,
            provider={"timeout": {"first_byte": 1, "total": 1, "stall": 60}},
            cache={"warm": [{"voice": "v", "text": "Hello there."}]},
        )
        async with live_server(create_app(parse_config(yaml))):
            assert await eventually(lambda: _warmed(caplog), 20)
            (record,) = _warmed(caplog)
            assert (record.stored, record.failed) == (0, 1)  # type: ignore[attr-defined]
            assert await eventually(lambda: upstream.hung_up == 1)


async def _cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TTS_GATEWAY_CONFIG"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _files(tmp_path: Path, yaml: str, phrases: str, name: str = "phrases.txt") -> list[str]:
    (tmp_path / "gateway.yaml").write_text(yaml)
    (tmp_path / name).write_text(phrases)
    return [str(tmp_path / name), "--config", str(tmp_path / "gateway.yaml")]


async def test_the_warm_command_stores_phrases_a_separate_gateway_then_answers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with PhraseUpstream() as upstream:
        yaml = routing(upstream.url, cache={"redis_url": redis_server.url})
        phrases = "# greetings\nHello there.\n\n  Goodbye.  \nYour code is 4711.\n"
        code, out, err = await _cli("warm", *_files(tmp_path, yaml, phrases))
        assert code == 0, err
        assert "3 phrases: 2 stored, 0 already cached, 1 not cacheable, 0 failed" in out
        assert upstream.count == 2
        assert [r.body["SampleRate"] for r in upstream.requests] == [24000, 24000]

        async with live_server(create_app(parse_config(yaml))) as url:
            for text in ("Hello there.", "Goodbye."):
                answer = await ask(url, body(text, rate=8000))
                assert (answer.status, answer.cache) == (200, "hit")
        assert upstream.count == 2

        # Run again: nothing to synthesize.
        code, out, _ = await _cli("warm", *_files(tmp_path, yaml, phrases))
        assert (code, upstream.count) == (0, 2)
        assert "0 stored, 2 already cached" in out


async def test_the_warm_command_reads_a_yaml_list_of_phrases(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with PhraseUpstream() as upstream:
        yaml = routing(upstream.url, cache={"redis_url": redis_server.url})
        listed: list[dict[str, Any]] = [
            {"voice": "v", "text": "Hello there.", "emotion": "happy"},
            {"voice": "v", "text": "Goodbye.", "sample_rate": 8000},
        ]
        files = _files(tmp_path, yaml, json.dumps(listed), "phrases.yaml")
        code, out, err = await _cli("warm", *files)
        assert code == 0, err
        assert "2 stored" in out
        sent = {r.text: json.loads(r.body["ExtendData"]) for r in upstream.requests}
        assert sent == {"Hello there.": {"Emotion": "happy"}, "Goodbye.": {}}
        async with live_server(create_app(parse_config(yaml))) as url:
            assert (await ask(url, body("Hello there.", Emotion="happy"))).cache == "hit"
            assert (await ask(url, body("Goodbye."))).cache == "hit"


async def test_the_warm_command_needs_redis(tmp_path: Path) -> None:
    yaml = routing("http://127.0.0.1:9/stream-audio")
    code, _, err = await _cli("warm", *_files(tmp_path, yaml, "Hello there.\n"))
    assert code == 2
    assert "server.cache.redis_url is not set" in err


async def test_the_warm_command_names_the_phrase_files_problems(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    yaml = routing("http://127.0.0.1:9/stream-audio", cache={"redis_url": redis_server.url})
    listed = [{"voice": "live", "text": "x"}, {"voice": "v", "text": "y", "sample_rate": 7}]
    code, _, err = await _cli("warm", *_files(tmp_path, yaml, json.dumps(listed), "p.yml"))
    assert code == 2
    assert "[0].voice: voice 'live' has no 'cache: true'" in err
    assert "[1].sample_rate: must be one of" in err
    assert "Traceback" not in err


async def test_the_warm_command_exits_1_when_a_phrase_fails(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with PhraseUpstream(status=503) as upstream:
        yaml = routing(upstream.url, cache={"redis_url": redis_server.url})
        code, out, _ = await _cli("warm", *_files(tmp_path, yaml, "Hello there.\n"))
        assert code == 1
        assert "0 stored, 0 already cached, 0 not cacheable, 1 failed" in out
