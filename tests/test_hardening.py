"""Hostile input and awkward timing: each case once produced a 500, a leak or a lie in the log."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.runtime import Gateway
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

CHUNK = tone(440, 0.02, 24000)
BODY: dict[str, Any] = {"Text": "Hello.", "SampleRate": 24000, "VoiceId": "a"}


def one_voice(**block: Any) -> Any:
    return create_app(
        parse_config(scripted_config({"a": {"provider": "pa"}}, {"pa": provider_block(**block)}))
    )


@pytest.fixture
def plan() -> Plan:
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans["pa"] = Plan([[CHUNK]])
    return ScriptedProvider.plans["pa"]


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 5000 + b"]" * 5000,  # nesting deep enough to overflow the parser
        b'{"Text": "Hi.", "SampleRate": ' + b"9" * 5000 + b"}",  # an int too long to read
    ],
)
def test_hostile_json_answers_400(plan: Plan, raw: bytes) -> None:
    with TestClient(one_voice()) as client:
        response = client.post(
            "/stream-audio", content=raw, headers={"Content-Type": "application/json"}
        )
    assert response.status_code in (400, 413)
    assert "error" in response.json()
    assert plan.jobs == []


@pytest.mark.parametrize(
    "extend",
    [
        '{"SentenceId": "--3"}',
        '{"SentenceId": "\u00b2"}',
        '{"SentenceId": "' + "7" * 5000 + '"}',
        '{"InstanceId": ' + "1" * 5000 + "}",
        "{'InstanceId': b'bytes', 'ChannelId': {1, 2}}",
        "{[1]: 2}",
        "[" * 3000,
    ],
)
def test_hostile_extend_data_never_fails_the_synthesis(plan: Plan, extend: str) -> None:
    with TestClient(one_voice()) as client:
        response = client.post("/stream-audio", json=dict(BODY, ExtendData=extend))
    assert response.status_code == 200
    assert response.content == CHUNK
    json.dumps(dict(plan.jobs[0].extend_data))  # what reaches a provider is plain JSON


@pytest.mark.parametrize("text", ["?!", "...", " — ", "🙂🙂"])
def test_text_with_nothing_to_speak_is_a_400_not_a_provider_failure(plan: Plan, text: str) -> None:
    with TestClient(one_voice()) as client:
        response = client.post("/stream-audio", json=dict(BODY, Text=text))
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "Text"
    assert plan.jobs == []


def test_lone_surrogates_are_rejected_not_crashed_on(plan: Plan) -> None:
    yaml = scripted_config({"a": {"provider": "pa"}}, {"pa": provider_block()}, tokens=["t0k3n"])
    with TestClient(create_app(parse_config(yaml))) as client:
        raw = b'{"Text": "Hi \\ud800", "SampleRate": 24000, "Token": "t0k3n"}'
        bad_text = client.post(
            "/stream-audio", content=raw, headers={"Content-Type": "application/json"}
        )
        raw = b'{"Text": "Hi.", "SampleRate": 24000, "Token": "\\ud800"}'
        bad_token = client.post(
            "/stream-audio", content=raw, headers={"Content-Type": "application/json"}
        )
    assert bad_text.status_code == 400 and bad_text.json()["error"]["field"] == "Text"
    assert bad_token.status_code == 401
    assert plan.jobs == []


def test_a_missing_token_is_not_the_string_none(plan: Plan) -> None:
    yaml = scripted_config({"a": {"provider": "pa"}}, {"pa": provider_block()}, tokens=["None"])
    with TestClient(create_app(parse_config(yaml))) as client:
        assert client.post("/stream-audio", json=BODY).status_code == 401
        lower = {"text": "Hi.", "sampleRate": 24000, "token": "None"}
        assert client.post("/stream-audio", json=lower).status_code == 200
    assert len(plan.jobs) == 1


def test_odd_request_ids_are_replaced(plan: Plan) -> None:
    with TestClient(one_voice()) as client:
        response = client.post(
            "/stream-audio", json=BODY, headers=[(b"X-Request-Id", b"caf\xe9 id;evil=1")]
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"].isalnum()
    assert "evil" not in response.headers["x-request-id"].lower()


def test_log_values_cannot_forge_log_lines(plan: Plan, caplog: pytest.LogCaptureFixture) -> None:
    extend = {"InstanceId": "i-1\nINFO gateway status=200 forged=1", "ChannelId": "c 1"}
    with caplog.at_level(logging.INFO, logger="gateway"), TestClient(one_voice()) as client:
        client.post("/stream-audio", json=dict(BODY, ExtendData=extend))
    line = next(r.getMessage() for r in caplog.records if "status=200" in r.getMessage())
    assert "\n" not in line
    # The newline shows as an escape: written by log_fields, and escaped again by the line's
    # own quoting (one backslash or two, the value stays one field of one line).
    assert re.search(r"InstanceId='i-1\\{1,2}nINFO gateway status=200 forged=1' ", line)
    assert "ChannelId='c 1'" in line


async def test_slot_is_released_when_closing_the_stream_is_cut_short(plan: Plan) -> None:
    """The provider sends bytes that are not the WAV it announced; closing its stream then
    takes longer than what is left of the first-byte budget."""
    ScriptedProvider.plans["pa"] = Plan([[b"not a WAV header at all", CHUNK]], container="wav")
    ScriptedProvider.plans["pa"].close_delay = 0.5
    app = one_voice(max_concurrency=1, timeout={"first_byte": 0.2, "total": 5})
    async with live_server(app) as url, httpx.AsyncClient() as client:
        first = await client.post(url + "/stream-audio", json=BODY)
        assert first.status_code == 504  # the close ran past the budget
        ScriptedProvider.plans["pa"] = Plan([[CHUNK]])
        second = await client.post(url + "/stream-audio", json=BODY)
    assert second.status_code == 200  # the one slot came back
    assert second.content == CHUNK


async def test_total_timeout_frees_the_provider_even_if_the_caller_stops_reading(
    plan: Plan,
) -> None:
    big = b"\x00\x01" * 500_000  # 1 MB: the socket buffers fill at once
    ScriptedProvider.plans["pa"] = Plan([[big] * 200, [CHUNK]])
    app = one_voice(max_concurrency=1, timeout={"first_byte": 0.5, "total": 0.5})
    async with live_server(app) as url:
        stalled = await raw_post(url, "/stream-audio", BODY)  # never read
        assert stalled.status == 200
        assert await eventually(lambda: ScriptedProvider.plans["pa"].closed, 3.0)
        async with httpx.AsyncClient() as client:
            response = await client.post(url + "/stream-audio", json=BODY)
        stalled.close()
    assert response.status_code == 200 and response.content == CHUNK


async def test_unexpected_provider_exception_after_audio_ends_the_stream_cleanly(
    plan: Plan,
) -> None:
    ScriptedProvider.plans["pa"] = Plan([[CHUNK, RuntimeError("provider bug")]])
    async with live_server(one_voice()) as url, httpx.AsyncClient() as client:
        response = await client.post(url + "/stream-audio", json=BODY)
        metrics = (await client.get(url + "/metrics")).text
    assert response.status_code == 200
    assert response.content == CHUNK  # a complete chunked body, audio only
    assert 'tts_streams_ended_total{reason="provider_error"} 1.0' in metrics


async def test_provider_bug_before_audio_falls_back_instead_of_500() -> None:
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans.update(
        pa=Plan([[CHUNK]], rate=0),  # an impossible native format
        pb=Plan([[CHUNK]]),
    )
    yaml = scripted_config(
        {"a": {"provider": "pa", "fallback": ["b"]}, "b": {"provider": "pb"}},
        {"pa": provider_block(), "pb": provider_block()},
    )
    async with live_server(create_app(parse_config(yaml))) as url, httpx.AsyncClient() as c:
        response = await c.post(url + "/stream-audio", json=BODY)
    assert response.status_code == 200
    assert response.headers["x-voice"] == "b"


async def test_upstream_error_text_never_reaches_the_caller_and_secrets_are_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    echo = b'{"detail": [{"msg": "bad", "input": {"Token": "UPSTREAM-SECRET-123"}}]}'
    async with Upstream(status=422, error_body=echo) as upstream:
        yaml = scripted_config(
            {"a": {"provider": "up"}},
            {"up": {"type": "custom", "url": upstream.url, "token": "UPSTREAM-SECRET-123"}},
        )
        with caplog.at_level(logging.INFO):
            async with (
                live_server(create_app(parse_config(yaml))) as url,
                httpx.AsyncClient() as client,
            ):
                response = await client.post(url + "/stream-audio", json=BODY)
    assert response.status_code == 502
    assert "UPSTREAM-SECRET-123" not in response.text
    assert "HTTP 422" in response.json()["error"]["message"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "HTTP 422" in logged
    assert "UPSTREAM-SECRET-123" not in logged


async def test_stopping_closes_a_routing_still_being_retired(tmp_path: Path) -> None:
    ScriptedProvider.plans.clear()
    release = asyncio.Event()
    ScriptedProvider.plans.update(old=Plan([[CHUNK, release]]), new=Plan([[CHUNK]]))
    path = tmp_path / "gateway.yaml"
    path.write_text(scripted_config({"a": {"provider": "old"}}, {"old": provider_block()}))
    app = create_app(config_path=str(path))
    gateway: Gateway = app.state.gateway
    async with live_server(app) as url:
        under_way = await raw_post(url, "/stream-audio", BODY)
        assert await under_way.read_chunk() == CHUNK
        path.write_text(scripted_config({"a": {"provider": "new"}}, {"new": provider_block()}))
        assert await gateway.reload()
        under_way.close()
    # The server stopped while the old routing waited for its stream: it was closed all the same.
    assert ScriptedProvider.plans["old"].shut_down == 1
    assert ScriptedProvider.plans["new"].shut_down == 1


def test_x_voice_never_carries_raw_caller_bytes(plan: Plan) -> None:
    yaml = scripted_config({"*": {"provider": "pa"}}, {"pa": provider_block()}, default_voice=None)
    yaml = yaml.replace('"default_voice": null', '"unknown_voice": "reject"')
    with TestClient(create_app(parse_config(yaml))) as client:
        response = client.post("/stream-audio", json=dict(BODY, VoiceId="晓晓 x%41"))
    assert response.status_code == 200
    # Visible ASCII as it is; UTF-8, spaces and '%' percent-encoded: one safe header token.
    assert response.headers["x-voice"] == "%E6%99%93%E6%99%93%20x%2541"
    assert plan.jobs[0].voice == "晓晓 x%41"


def test_an_empty_body_token_does_not_hide_a_valid_bearer(plan: Plan) -> None:
    yaml = scripted_config({"a": {"provider": "pa"}}, {"pa": provider_block()}, tokens=["s3cret"])
    with TestClient(create_app(parse_config(yaml))) as client:
        bearer = {"Authorization": "Bearer s3cret"}
        accepted = client.post("/stream-audio", json=dict(BODY, Token=""), headers=bearer)
        # A non-empty body token still wins over the header (it is the interface's own field).
        refused = client.post("/stream-audio", json=dict(BODY, Token="wrong"), headers=bearer)
    assert accepted.status_code == 200
    assert refused.status_code == 401
    assert len(plan.jobs) == 1


@pytest.fixture
def small_send_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A send buffer like a long-distance connection's, instead of loopback's megabytes, so
    that a stream meets its caller's pace within a second of audio."""
    import socket

    from gateway.http1 import HTTPProtocol

    original = HTTPProtocol.connection_made

    def connection_made(self: HTTPProtocol, transport: asyncio.BaseTransport) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        original(self, transport)

    monkeypatch.setattr(HTTPProtocol, "connection_made", connection_made)


async def read_at_pace(
    url: str, body: dict[str, Any], bytes_per_second: float, stop: asyncio.Event
) -> bytes:
    """POST ``body`` and take the answer at a set pace, as a player would; everything read."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /stream-audio HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(payload), payload)
    )
    got = bytearray()
    step = 0.05
    try:
        while not stop.is_set():
            piece = await reader.read(int(bytes_per_second * step))
            if not piece:
                break
            got += piece
            await asyncio.sleep(step)
    finally:
        writer.transport.abort()
    return bytes(got)


async def test_a_caller_far_slower_than_real_time_releases_the_provider(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, small_send_window: None
) -> None:
    import gateway.budgets

    monkeypatch.setattr(gateway.budgets, "SLOW_CALLER_GRACE_SECONDS", 0.5)
    monkeypatch.setattr(gateway.budgets, "LAST_SEND_SECONDS", 0.5)
    ScriptedProvider.plans.clear()
    plan = ScriptedProvider.plans["pa"] = Plan([[CHUNK] * 3000])  # 60 s of audio, at once
    caplog.set_level(logging.INFO, logger="gateway")
    stop = asyncio.Event()
    async with live_server(one_voice()) as url:
        # A fifth of real time at 48 kHz.
        reading = asyncio.create_task(
            read_at_pace(url, dict(BODY, SampleRate=48000), 96000 / 5, stop)
        )
        assert await eventually(lambda: bool(plan.closed), 30)
        assert not plan.finished  # cut short, not run to its end
        stop.set()
        await reading
    assert await eventually(lambda: any("end=" in r.getMessage() for r in caplog.records), 10)
    line = next(r.getMessage() for r in caplog.records if "end=" in r.getMessage())
    assert "end=caller_too_slow" in line


async def test_a_caller_taking_audio_in_real_time_is_never_cut(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, small_send_window: None
) -> None:
    import gateway.budgets

    monkeypatch.setattr(gateway.budgets, "SLOW_CALLER_GRACE_SECONDS", 0.5)
    ScriptedProvider.plans.clear()
    # 5 s of audio at once (a burst, as the local voice gives it), taken at 1.25x real time:
    # the sends wait for the caller all along, and that is no reason to cut it.
    plan = ScriptedProvider.plans["pa"] = Plan([[CHUNK] * 250])
    caplog.set_level(logging.INFO, logger="gateway")
    async with live_server(one_voice()) as url:
        got = await read_at_pace(url, dict(BODY, SampleRate=48000), 96000 * 1.25, asyncio.Event())
    assert plan.finished
    head, _, chunked = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert chunked.endswith(b"0\r\n\r\n")  # the whole answer, properly ended
    assert await eventually(lambda: any("end=" in r.getMessage() for r in caplog.records), 10)
    line = next(r.getMessage() for r in caplog.records if "end=" in r.getMessage())
    assert "end=complete" in line and "audio_ms=5000" in line
