"""Structured logs (``server.log_format: json``): every line the process writes is one JSON
object, the request's line carries its fields typed, events carry their figures, and no secret
gets through, whatever JSON escaping does to it. The text format stays as it was."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import ConfigError, parse_config
from gateway.direct import RELAY_STEP
from gateway.logs import JsonFormatter, configure_logging
from gateway.metrics import Metrics
from gateway.polyphase import INTEGER_KERNEL, KERNEL
from gateway.runtime import Gateway
from gateway.stream import VoiceTry
from gateway.synthesis import Outcome
from providers.base import ProviderConfig, ProviderError, build_provider
from tests.support import (
    Plan,
    ScriptedProvider,
    Upstream,
    eventually,
    live_server,
    logging_at_debug,
    provider_block,
    raw_post,
    scripted_config,
    tone,
)

REPO = Path(__file__).resolve().parent.parent
CHUNK = tone(440, 0.02, 24000)
EXTEND = {"InstanceId": "i-1", "ChannelId": "c-1", "SentenceId": 7}
BODY: dict[str, Any] = {
    "Text": "Hello.",
    "SampleRate": 24000,
    "VoiceId": "a",
    "ExtendData": EXTEND,
}
#: RFC 3339, UTC, milliseconds.
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
#: Secrets JSON escaping would alter (a quote, a backslash, a non-ASCII letter): none of their
#: distinctive middles may appear in any line, in any encoding.
SECRET_A = 'tok"LEAKA\\9f8e7d6c5b4a'
SECRET_B = 'key\\LEAKB"ü-0123456789'
FRAGMENTS = ("LEAKA", "LEAKB")


def json_lines(written: str) -> list[dict[str, Any]]:
    """Every line of ``written``, each parsed as one JSON object with the common fields."""
    assert written.endswith("\n"), written[-200:]
    entries = []
    for line in written.split("\n")[:-1]:
        assert line.isascii(), line
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert TS.fullmatch(entry["ts"]), line
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        assert isinstance(entry["logger"], str) and isinstance(entry["msg"], str), line
        entries.append(entry)
    return entries


def events(entries: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("event") == event]


@pytest.fixture
def json_log(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    with logging_at_debug(capsys, "json") as read:
        yield read


async def request_line(read: Callable[[], str], request_id: str) -> dict[str, Any]:
    """The request's line (written once its answer has ended), every line checked on the way."""

    def find() -> dict[str, Any] | None:
        found = [e for e in events(json_lines(read()), "request") if e["request_id"] == request_id]
        return found[0] if found else None

    assert await eventually(lambda: find() is not None), f"no line for {request_id}"
    entry = find()
    assert entry is not None
    return entry


# ---------------------------------------------------------------- the formatter


def test_a_line_is_one_object_with_its_fields_typed_and_its_traceback_inside(
    json_log: Callable[[], str],
) -> None:
    log = logging.getLogger("gateway.test")
    log.info(
        "figures: %d",
        3,
        extra={"event": "x", "count": 3, "share": 0.5, "names": ["a", "b"], "none": None},
    )
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("it failed\nacross lines")
    log.warning("odd values", extra={"nan": float("nan"), "huge": 1 << 100, "obj": object()})
    first, failed, odd = json_lines(json_log())
    assert first["msg"] == "figures: 3" and first["logger"] == "gateway.test"
    assert first["level"] == "INFO"
    assert (first["event"], first["count"], first["share"]) == ("x", 3, 0.5)
    assert first["names"] == ["a", "b"] and first["none"] is None
    assert "color_message" not in first
    assert failed["level"] == "ERROR" and failed["msg"] == "it failed\nacross lines"
    assert failed["error"] == "RuntimeError: boom\nsecond line"
    assert failed["traceback"].startswith("Traceback (most recent call last):")
    assert failed["traceback"].endswith("RuntimeError: boom\nsecond line")
    assert (odd["nan"], odd["huge"]) == ("nan", "<integer of 101 bits>")
    assert odd["obj"].startswith("<object object at")
    unfit = logging.makeLogRecord({"msg": "%d arguments that do not fit", "args": ("x",)})
    assert json.loads(JsonFormatter().format(unfit))["msg"].startswith("%d arguments")


def test_secrets_are_masked_before_json_escapes_them(json_log: Callable[[], str]) -> None:
    provider = build_provider(
        ProviderConfig(
            name="up",
            type="custom",
            settings={"url": "https://tts.upstream.test/stream-audio", "token": SECRET_A},
        )
    )
    escaped = json.dumps(SECRET_A)[1:-1]  # as an upstream's JSON error body echoes it
    log = logging.getLogger("gateway.test")
    log.warning("raw %s, JSON-escaped %s, repr %r", SECRET_A, escaped, SECRET_A)
    log.warning("fields", extra={"echo": SECRET_A, "list": [escaped], "map": {"k": SECRET_A}})
    try:
        raise RuntimeError(f"upstream said {SECRET_A}")
    except RuntimeError:
        log.exception("failed")
    written = json_log()
    assert "LEAKA" not in written
    raw, fields, failed = json_lines(written)
    assert raw["msg"] == "raw ***, JSON-escaped ***, repr '***'"
    assert (fields["echo"], fields["list"], fields["map"]) == ("***", ["***"], {"k": "***"})
    assert failed["error"] == "RuntimeError: upstream said ***"
    assert failed["traceback"].endswith("RuntimeError: upstream said ***")
    assert provider.secrets  # alive until here: its secrets are the ones masked


# ---------------------------------------------------------------- the request line, live


@pytest.fixture
def plans() -> dict[str, Plan]:
    ScriptedProvider.plans.clear()
    return ScriptedProvider.plans


def chain_app() -> Any:
    voices: dict[str, dict[str, Any]] = {
        "a": {"provider": "pa", "fallback": ["b"]},
        "b": {"provider": "pb"},
    }
    providers = {"pa": provider_block(), "pb": provider_block()}
    return create_app(parse_config(scripted_config(voices, providers)))


async def test_a_request_answered_by_its_fallback_lists_both_voices(
    json_log: Callable[[], str], plans: dict[str, Plan]
) -> None:
    plans["pa"] = Plan([[ProviderError("pa", "upstream says no", retryable=False)]])
    plans["pb"] = Plan([[CHUNK, CHUNK]])
    async with live_server(chain_app()) as url, httpx.AsyncClient() as client:
        response = await client.post(
            url + "/stream-audio", json=BODY, headers={"X-Request-Id": "fb-1"}
        )
        assert response.status_code == 200 and response.content == CHUNK * 2
        line = await request_line(json_log, "fb-1")
    assert line["level"] == "INFO" and line["logger"] == "gateway"
    assert {k: line[k] for k in ("VoiceId", "sample_rate", *EXTEND)} == {
        "VoiceId": "a",
        "sample_rate": 24000,
        **EXTEND,
    }
    assert (line["provider"], line["answered_by"]) == ("pb", "b")
    assert line["tried"] == [
        {"voice": "a", "provider": "pa", "outcome": "failed", "detail": "failed"},
        {"voice": "b", "provider": "pb", "outcome": "ok", "detail": ""},
    ]
    assert (line["status"], line["error"], line["end"]) == (200, None, "complete")
    assert line["bytes"] == len(CHUNK) * 2
    assert line["audio_ms"] == round(len(CHUNK) * 2 / 2 / 24000 * 1000)
    assert isinstance(line["ttfb_ms"], float) and isinstance(line["duration_ms"], float)
    assert 0 < line["ttfb_ms"] <= line["duration_ms"]
    assert "Hello" not in json_log()  # the text is never logged
    # The failure before audio was logged too, on a line that names the request.
    warned = [e for e in json_lines(json_log()) if "failed before audio" in e["msg"]]
    assert [(e["request_id"], e["voice"], e["provider"]) for e in warned] == [("fb-1", "a", "pa")]


async def test_an_error_answer_is_one_line_with_every_voice_tried(
    json_log: Callable[[], str], plans: dict[str, Plan]
) -> None:
    plans["pa"] = Plan([[ProviderError("pa", "no", retryable=False)]])
    plans["pb"] = Plan([[ProviderError("pb", "no either", code=42, retryable=False)]])
    async with live_server(chain_app()) as url, httpx.AsyncClient() as client:
        response = await client.post(
            url + "/stream-audio", json=BODY, headers={"X-Request-Id": "err-1"}
        )
        assert response.status_code == 502
        line = await request_line(json_log, "err-1")
    assert (line["status"], line["error"]) == (502, "provider_failed")
    assert [(t["voice"], t["outcome"], t["detail"]) for t in line["tried"]] == [
        ("a", "failed", "failed"),
        ("b", "failed", "error 42"),
    ]
    assert line["provider"] is None and line["answered_by"] is None
    assert line["ttfb_ms"] is None and line["bytes"] is None and line["end"] is None


async def test_a_request_refused_before_its_voice_is_read_has_its_line_too(
    json_log: Callable[[], str], plans: dict[str, Plan]
) -> None:
    async with live_server(chain_app()) as url, httpx.AsyncClient() as client:
        response = await client.post(
            url + "/stream-audio", content=b"{", headers={"X-Request-Id": "bad-1"}
        )
        assert response.status_code == 400
        line = await request_line(json_log, "bad-1")
    assert (line["status"], line["error"], line["VoiceId"], line["tried"]) == (
        400,
        "malformed_body",
        None,
        [],
    )


async def test_a_stream_the_caller_hung_up_on_counts_what_went_out(
    json_log: Callable[[], str], plans: dict[str, Plan]
) -> None:
    never = asyncio.Event()
    plans["pa"] = Plan([[CHUNK, never]])
    async with live_server(chain_app()) as url:
        response = await raw_post(url, "/stream-audio", BODY)
        assert response.status == 200
        assert await asyncio.wait_for(response.read_chunk(), 5) == CHUNK
        request_id = response.headers["x-request-id"]
        response.close()
        line = await request_line(json_log, request_id)
    assert (line["status"], line["end"], line["answered_by"]) == (200, "client_disconnect", "a")
    assert line["bytes"] == len(CHUNK)
    assert line["audio_ms"] == round(len(CHUNK) / 2 / 24000 * 1000)
    assert isinstance(line["ttfb_ms"], float)


async def test_a_provider_bug_mid_stream_is_a_traceback_inside_one_line(
    json_log: Callable[[], str], plans: dict[str, Plan]
) -> None:
    plans["pa"] = Plan([[CHUNK, RuntimeError("provider bug")]])
    async with live_server(chain_app()) as url, httpx.AsyncClient() as client:
        response = await client.post(
            url + "/stream-audio", json=BODY, headers={"X-Request-Id": "bug-1"}
        )
        assert response.content == CHUNK
        line = await request_line(json_log, "bug-1")
    assert (line["end"], line["error"]) == ("provider_error", "RuntimeError")
    entries = json_lines(json_log())
    failed = [e for e in entries if "traceback" in e]
    assert len(failed) == 1
    assert failed[0]["msg"] == "request_id=bug-1 provider pa failed mid-stream"
    assert (failed[0]["request_id"], failed[0]["error"]) == ("bug-1", "RuntimeError: provider bug")
    assert failed[0]["traceback"].endswith("RuntimeError: provider bug")


async def test_uvicorns_own_lines_are_json(
    json_log: Callable[[], str], plans: dict[str, Plan]
) -> None:
    async with live_server(chain_app(), server_log="info"):
        pass
    entries = json_lines(json_log())
    server = [e["msg"] for e in entries if e["logger"] == "uvicorn.error"]
    assert "Application startup complete." in server and "Shutting down" in server
    assert [e["msg"] for e in events(entries, "ready")] == [
        "ready: 2 providers, 2 voices, config <string>"
    ]
    assert events(entries, "stop")


async def test_no_secret_reaches_any_line_at_debug(json_log: Callable[[], str]) -> None:
    # The first upstream refuses, echoing its token inside an error body of its own shape.
    echo = json.dumps({"fault": f"token {SECRET_A} refused"}).encode()
    async with (
        Upstream(status=401, error_body=echo) as refusing,
        Upstream(chunks=[CHUNK]) as answering,
    ):
        config = {
            "server": {"default_voice": "a", "log_level": "debug"},
            "providers": {
                "pa": {"type": "custom", "url": refusing.url, "token": SECRET_A},
                "pb": {"type": "custom", "url": answering.url, "token": SECRET_B},
            },
            "voices": {"a": {"provider": "pa", "fallback": ["b"]}, "b": {"provider": "pb"}},
        }
        app = create_app(parse_config(json.dumps(config)))
        async with live_server(app, server_log="debug") as url, httpx.AsyncClient() as client:
            response = await client.post(
                url + "/stream-audio", json=BODY, headers={"X-Request-Id": "sec-1"}
            )
            assert response.status_code == 200 and response.content == CHUNK
            line = await request_line(json_log, "sec-1")
        assert refusing.requests[0]["Token"] == SECRET_A  # sent, so its echo is real
    assert [(t["voice"], t["outcome"]) for t in line["tried"]] == [("a", "failed"), ("b", "ok")]
    written = json_log()
    assert "DEBUG" in written and "failed before audio" in written  # verbose, and it was said
    assert not [f for f in FRAGMENTS if f in written]


# ---------------------------------------------------------------- text, unchanged


def test_the_text_line_is_as_it_was() -> None:
    outcome = Outcome(Metrics(), "r-1")
    outcome.voice_id, outcome.sample_rate = "alloy", 8000
    outcome.call = {"InstanceId": "i-1", "ChannelId": "c 1"}
    outcome.provider, outcome.answered_by = "pb", "joe"
    outcome.tried = [VoiceTry("alloy", "pa", "open", "cooling down"), VoiceTry("joe", "pb", "ok")]
    outcome.status, outcome.ttfb, outcome.end = 200, 0.1234, "complete"
    outcome.audio_seconds, outcome.duration, outcome.bytes_sent = 1.5, 2.0, 24000
    assert outcome.log_line() == (
        "request_id=r-1 voice=alloy sample_rate=8000 InstanceId=i-1 ChannelId='c 1' "
        "provider=pb answered_by=joe tried=alloy:open,joe:ok status=200 ttfb_ms=123.4 "
        "end=complete audio_ms=1500 duration_ms=2000.0"
    )
    assert outcome.fields()["tried"][0] == {
        "voice": "alloy",
        "provider": "pa",
        "outcome": "open",
        "detail": "cooling down",
    }


async def test_in_text_the_request_line_is_key_value(
    capsys: pytest.CaptureFixture[str], plans: dict[str, Plan]
) -> None:
    plans["pa"] = Plan([[CHUNK]])
    with logging_at_debug(capsys) as read:
        async with live_server(chain_app()) as url, httpx.AsyncClient() as client:
            response = await client.post(
                url + "/stream-audio", json=BODY, headers={"X-Request-Id": "txt-1"}
            )
            assert response.status_code == 200
            assert await eventually(lambda: "request_id=txt-1 " in read())
    line = next(x for x in read().splitlines() if "request_id=txt-1 " in x)
    assert re.fullmatch(
        r"\S+ \S+ INFO gateway request_id=txt-1 voice=a sample_rate=24000 InstanceId=i-1 "
        r"ChannelId=c-1 SentenceId=7 provider=pa answered_by=a status=200 ttfb_ms=[\d.]+ "
        r"end=complete audio_ms=20 duration_ms=[\d.]+",
        line,
    ), line


# ---------------------------------------------------------------- the setting


def test_log_format_is_a_server_setting() -> None:
    providers = {"pa": provider_block()}
    voices = {"a": {"provider": "pa"}}
    assert parse_config(scripted_config(voices, providers)).server.log_format == "text"
    config = parse_config(scripted_config(voices, providers, log_format="JSON"))
    assert config.server.log_format == "json"
    with pytest.raises(ConfigError) as refused:
        parse_config(scripted_config(voices, providers, log_format="jsonl"))
    assert "server.log_format: must be one of 'text', 'json', got 'jsonl'" in str(refused.value)
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("info", "yaml")


async def test_a_reload_that_changes_the_format_or_level_takes_effect_at_once(
    capsys: pytest.CaptureFixture[str], plans: dict[str, Plan], tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"
    voices: dict[str, dict[str, Any]] = {"a": {"provider": "pa"}}
    path.write_text(scripted_config(voices, {"pa": provider_block()}, log_level="debug"))
    with logging_at_debug(capsys) as read:
        gateway = Gateway(parse_config(path.read_text(), str(path)), str(path))
        try:
            path.write_text(
                scripted_config(
                    voices, {"pa": provider_block()}, log_level="info", log_format="json"
                )
            )
            assert await gateway.reload()
            assert logging.getLogger().level == logging.INFO
            assert logging.getLogger("uvicorn.error").level == logging.INFO  # the server's too
            logging.getLogger("gateway.test").debug("not at info")
            logging.getLogger("gateway.test").info("after")
        finally:
            await gateway.stop()
        written = read()
    reloaded = written[written.index("{") :]  # from the line that announced the reload
    entries = json_lines(reloaded)
    assert entries[0]["event"] == "reload" and entries[0]["voices"] == 1
    assert [e["msg"] for e in entries if e["logger"] == "gateway.test"] == ["after"]


async def test_a_gateway_without_the_resampler_s_kernel_says_so_when_ready(
    json_log: Callable[[], str], plans: dict[str, Plan], monkeypatch: pytest.MonkeyPatch
) -> None:
    voices: dict[str, dict[str, Any]] = {"a": {"provider": "pa"}}
    config = parse_config(scripted_config(voices, {"pa": provider_block()}))
    for kernel in ("avx2", "numpy"):
        monkeypatch.setattr("gateway.runtime.KERNEL", kernel)
        gateway = Gateway(config)
        await gateway.start()
        await gateway.stop()
    entries = json_lines(json_log())
    assert [e["resampler_kernel"] for e in events(entries, "ready")] == ["avx2", "numpy"]
    (warning,) = events(entries, "resampler_kernel")
    assert warning["level"] == "WARNING" and "not built" in warning["msg"]


# ---------------------------------------------------------------- the whole process


def test_warnings_and_an_uncaught_exception_are_json_lines() -> None:
    script = (
        "import warnings\n"
        "from gateway.logs import JsonFormatter, configure_logging\n"
        "configure_logging('info', 'json')\n"
        "warnings.warn('a library complains')\n"
        "raise RuntimeError('the end\\nof it')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    warned, crashed = json_lines(result.stderr)
    assert warned["logger"] == "py.warnings" and "a library complains" in warned["msg"]
    assert crashed["level"] == "CRITICAL" and crashed["error"] == "RuntimeError: the end\nof it"
    assert crashed["traceback"].startswith("Traceback")


class StderrLines:
    """A subprocess's stderr, line by line as it comes, for a test to wait on."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode())

    async def wait_for(self, fragment: str) -> str:
        """The first line holding ``fragment``, once it is written."""

        def seen() -> str | None:
            return next((line for line in self.lines if fragment in line), None)

        assert await eventually(lambda: seen() is not None, 60), "".join(self.lines)[-3000:]
        line = seen()
        assert line is not None
        return line

    async def wait_for_event(self, event: str) -> None:
        await self.wait_for(f'"event":"{event}"')

    async def close(self) -> str:
        await asyncio.wait_for(self._task, 30)
        return "".join(self.lines)


def _serve_config(refusing: Upstream, answering: Upstream, *extra_voices: str) -> str:
    voices: dict[str, Any] = {"a": {"provider": "pa", "fallback": ["b"]}, "b": {"provider": "pb"}}
    voices.update({name: {"provider": "pb"} for name in extra_voices})
    return json.dumps(
        {
            "server": {
                "default_voice": "a",
                "log_format": "json",
                "log_level": "debug",
                "drain_seconds": 1,
            },
            "providers": {
                "pa": {"type": "custom", "url": refusing.url, "token": SECRET_A},
                "pb": {"type": "custom", "url": answering.url, "token": SECRET_B},
            },
            "voices": voices,
        }
    )


async def test_serve_writes_nothing_but_json_lines(tmp_path: Path) -> None:
    echo = json.dumps({"fault": f"token {SECRET_A} refused"}).encode()
    async with (
        Upstream(status=401, error_body=echo) as refusing,
        Upstream(chunks=[CHUNK, CHUNK]) as answering,
    ):
        config = tmp_path / "gateway.yaml"
        config.write_text(_serve_config(refusing, answering))
        env = {k: v for k, v in os.environ.items() if k != "TTS_GATEWAY_CONFIG"}
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            # One process: the events below are one gateway's (a supervisor's workers each
            # write their own).
            *["--host", "127.0.0.1", "--port", "0", "--workers", "1"],
            env=env,
            cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stderr is not None
        stderr = StderrLines(process.stderr)
        try:
            # The port the system chose, as the server says it once it listens.
            running = await stderr.wait_for("Uvicorn running on")
            port = int(re.findall(r":(\d+)", json.loads(running)["msg"])[-1])
            async with httpx.AsyncClient() as client:
                response = await client.post(
                    f"http://127.0.0.1:{port}/stream-audio",
                    json=BODY,
                    headers={"X-Request-Id": "srv-1"},
                )
            assert response.status_code == 200 and response.content == CHUNK * 2
            await stderr.wait_for_event("request")
            config.write_text(_serve_config(refusing, answering, "c"))
            process.send_signal(signal.SIGHUP)
            await stderr.wait_for_event("reload")
            config.write_text("server: {port: nope, drain_seconds: -1}\nproviders: {}\n")
            process.send_signal(signal.SIGHUP)
            await stderr.wait_for_event("reload_refused")
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 60) in (0, -signal.SIGTERM)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        written = await stderr.close()
    entries = json_lines(written)
    assert not [f for f in FRAGMENTS if f in written]
    (request,) = events(entries, "request")
    assert (request["request_id"], request["status"], request["bytes"]) == (
        "srv-1",
        200,
        len(CHUNK) * 2,
    )
    assert [t["outcome"] for t in request["tried"]] == ["failed", "ok"]
    (start,) = events(entries, "start")
    (ready,) = events(entries, "ready")
    assert (start["pid"], start["providers"], start["voices"]) == (process.pid, 2, 2)
    assert (ready["config"], ready["voices"]) == (str(config), 2)
    assert isinstance(ready["start_ms"], float)
    assert ready["resampler_kernel"] == KERNEL
    assert ready["resampler_integer_kernel"] == INTEGER_KERNEL
    assert ready["relay_step"] == RELAY_STEP
    (reload,) = events(entries, "reload")
    assert reload["voices"] == 3
    (refused,) = events(entries, "reload_refused")
    assert refused["level"] == "ERROR" and len(refused["errors"]) >= 3
    assert any("server.port" in e for e in refused["errors"])
    assert any("server.drain_seconds" in e for e in refused["errors"])
    assert any("voices" in e for e in refused["errors"])
    (drain,) = events(entries, "drain")
    assert (drain["streams"], drain["drain_seconds"]) == (0, 1)
    assert events(entries, "stop")
    server = [e["msg"] for e in entries if e["logger"] == "uvicorn.error"]
    assert any(m.startswith("Started server process") for m in server)
    assert "Shutting down" in server
    assert {e["level"] for e in entries} >= {"INFO", "WARNING", "ERROR"}
