"""``tts-gateway stats`` against a live gateway (the figures it prints are the gateway's own
metrics), its ways of finding ``/metrics`` (a URL, a routing file's metrics port, a token), and
against pages that are broken or hostile: every one ends in one clear line, in bounded time
and memory."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.cli import main
from gateway.config import parse_config
from gateway.stats import MAX_LINE_CHARS, MAX_PAGE_BYTES, MAX_SAMPLE_CHARS
from tests.scripted_upstream import ScriptedUpstream, custom_block
from tests.served import free_port
from tests.served import sample as page_sample
from tests.support import LoopbackServer, live_server, read_request, scripted_config, tone

CHUNK = tone(440, 0.02, 24000)
TEXT = "Hello there."
ACME, PLAIN = "acme-secret-9d2e71", "plain-secret-c4a0b3"
MARK = "# TYPE tts_provider_characters counter\n"


async def stats(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``tts-gateway stats *args`` as a user runs it (its own event loop, in a thread beside
    the test's): its exit code, standard output and standard error."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["stats", *args])
    out, err = capsys.readouterr()
    return code, out, err


def gateway_app(upstream: ScriptedUpstream, **server: Any) -> Starlette:
    """Voice ``v`` on provider ``p``, voice ``c`` on provider ``q`` through the phrase cache;
    a named token and an unnamed one."""
    routing = scripted_config(
        {"v": {"provider": "p"}, "c": {"provider": "q", "cache": True}},
        {"p": custom_block(upstream), "q": custom_block(upstream)},
        tokens=[{"name": "acme", "token": ACME}, PLAIN],
        **server,
    )
    return create_app(parse_config(routing))


async def traffic(url: str) -> list[int]:
    """A few requests: two answers of ``p`` for acme, a miss and a hit of ``q`` for the
    unnamed token, and one refused token. Their statuses."""
    statuses = []
    async with httpx.AsyncClient(timeout=15) as client:
        for token, voice in [(ACME, "v"), (ACME, "v"), (PLAIN, "c"), (PLAIN, "c"), ("x", "v")]:
            response = await client.post(
                url + "/stream-audio",
                json={"Text": TEXT, "VoiceId": voice, "SampleRate": 24000, "Token": token},
            )
            statuses.append(response.status_code)
            if voice == "c":  # the next one hits once the answer is stored
                await _stored(client, url)
    return statuses


async def _stored(client: httpx.AsyncClient, url: str) -> None:
    for _ in range(500):
        page = (await client.get(url + "/metrics")).text
        if page_sample(page, "tts_cache_stored_total", provider="q"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the answer was never stored")


async def test_stats_prints_what_the_gateways_metrics_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with ScriptedUpstream([CHUNK] * 5) as upstream:
        app = gateway_app(upstream)
        async with live_server(app) as url:
            assert await traffic(url) == [200, 200, 200, 200, 401]
            async with httpx.AsyncClient() as client:
                page = (await client.get(url + "/metrics")).text
            code, out, err = await stats(capsys, "--url", url, "--json")
            text_code, text, _ = await stats(capsys, "--url", url + "/metrics")
    assert (code, err, text_code) == (0, "", 0)
    report = json.loads(out)
    assert report["url"] == url + "/metrics"

    def metric(name: str, **labels: str) -> float:
        return page_sample(page, name, **labels)

    p, q = report["providers"]["p"], report["providers"]["q"]
    assert p["characters_billed"] == metric("tts_provider_characters_total", provider="p") == 24
    assert p["characters_delivered"] == 24 and p["waste_percent"] == 0
    assert p["audio_generated_seconds"] == metric("tts_audio_generated_seconds_total", provider="p")
    assert p["audio_delivered_seconds"] == pytest.approx(0.2)  # two answers of 0.1 s
    assert p["cache_lookups"] == {} and p["cache_hit_ratio"] is None
    assert q["characters_billed"] == 12  # the miss; the hit billed nothing
    assert q["cache_characters_saved"] == metric("tts_cache_characters_saved_total", provider="q")
    assert q["cache_characters_saved"] == 12
    assert q["cache_audio_seconds_saved"] == pytest.approx(0.1)
    assert q["audio_delivered_seconds"] == pytest.approx(0.1)  # the miss's own audio
    assert q["cache_lookups"] == {"hit": 1, "miss": 1} and q["cache_hit_ratio"] == 0.5
    assert report["tenants"] == {
        "acme": {"requests": {"200": 2}, "characters": 24},
        "token-2": {"requests": {"200": 2}, "characters": 24},
    }
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    # PROVIDER BILLED DELIVERED WASTE GENERATED s DELIVERED s HEDGE SAVED SAVED-AUDIO s HITS
    assert rows["p"] == [
        "p", "24", "24", "0.0%", "0.20", "s", "0.20", "s", "0", "0", "0.00", "s", "-"
    ]  # fmt: skip
    assert rows["q"] == [
        "q", "12", "12", "0.0%", "0.10", "s", "0.10", "s", "0", "12", "0.10", "s", "50.0%"
    ]  # fmt: skip
    assert rows["acme"] == ["acme", "2", "200:2", "24"]
    assert rows["token-2"] == ["token-2", "2", "200:2", "24"]
    assert ACME not in out + text and PLAIN not in out + text


async def test_a_guarded_metrics_page_needs_the_token_and_never_shows_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ScriptedUpstream([CHUNK]) as upstream:
        app = gateway_app(upstream, metrics={"token": True})
        async with live_server(app) as url:
            monkeypatch.delenv("TTS_GATEWAY_TOKEN", raising=False)
            refused = await stats(capsys, "--url", url)
            given = await stats(capsys, "--url", url, "--token", PLAIN)
            monkeypatch.setenv("TTS_GATEWAY_TOKEN", ACME)
            from_env = await stats(capsys, "--url", url, "--json")
    code, out, err = refused
    assert code == 1 and out == ""
    assert err == f"error: {url}/metrics: 401, /metrics asks for a token (--token, or " + (
        "$TTS_GATEWAY_TOKEN)\n"
    )
    assert given[0] == 0 and "no provider has been asked yet" in given[1]
    assert from_env[0] == 0 and json.loads(from_env[1])["providers"] == {}
    everything = "".join([*refused[1:], *given[1:], *from_env[1:]])
    assert ACME not in everything and PLAIN not in everything


async def test_with_a_routing_file_stats_reads_its_metrics_port(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    async with ScriptedUpstream([CHUNK]) as upstream:
        routing = scripted_config(
            {"v": {"provider": "p"}},
            {"p": custom_block(upstream)},
            host="127.0.0.1",
            port=free_port(),  # not where the gateway below listens: the metrics port is read
            metrics={"port": port},
        )
        path = tmp_path / "gateway.yaml"
        path.write_text(routing)
        app = create_app(config_path=str(path))
        async with live_server(app) as url, httpx.AsyncClient() as client:
            response = await client.post(
                url + "/stream-audio", json={"Text": TEXT, "VoiceId": "v", "SampleRate": 24000}
            )
            assert response.status_code == 200
            code, out, err = await stats(capsys, "--config", str(path), "--json")
            monkeypatch.setenv("TTS_GATEWAY_CONFIG", str(path))
            from_env = await stats(capsys, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["url"] == f"http://127.0.0.1:{port}/metrics"
    assert report["providers"]["p"]["characters_billed"] == len(TEXT)
    assert report["tenants"] == {"anonymous": {"requests": {"200": 1}, "characters": 12}}
    assert from_env[0] == 0 and json.loads(from_env[1]) == report


async def test_a_gateway_that_cannot_be_reached_is_one_line_and_a_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await stats(capsys, "--url", url)
    assert code == 1 and out == ""
    assert err.startswith(f"error: cannot read {url}/metrics: ConnectError: ")
    assert err.count("\n") == 1
    code, _, err = await stats(capsys, "--url", "ftp://example/metrics")
    assert code == 1 and err == "error: --url must be an http:// or https:// URL, got " + (
        "'ftp://example/metrics'\n"
    )


# ---------------------------------------------------------------- hostile pages


class HostilePage(LoopbackServer):
    """Answers every request with ``head`` (status line and headers), then the blocks
    ``body`` yields, each after ``gap`` seconds; stops at the first one the client does not
    take (it hung up)."""

    def __init__(
        self, head: bytes, body: Callable[[], Any], gap: float = 0.0, limit: int = 64 << 20
    ) -> None:
        self.head = head
        self.body = body
        self.gap = gap
        self.limit = limit  # a hostile server of a test stops by itself too
        self.sent = 0

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        await read_request(reader)
        writer.write(self.head)
        for block in self.body():
            if self.sent > self.limit:
                break
            if self.gap:
                await asyncio.sleep(self.gap)
            writer.write(block)
            await writer.drain()
            self.sent += len(block)
        return False


def head(extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{extra}Connection: close\r\n\r\n".encode()
    )


def once(text: str | bytes) -> Callable[[], Any]:
    data = text.encode() if isinstance(text, str) else text
    return lambda: [data]


def endless(block: bytes) -> Callable[[], Any]:
    def blocks() -> Any:
        while True:
            yield block

    return blocks


async def hostile(
    capsys: pytest.CaptureFixture[str], server: HostilePage, *args: str
) -> tuple[int, str, str, float, int]:
    """``stats`` against ``server``: exit code, output, error, seconds taken and the peak of
    memory allocated meanwhile."""
    async with server:
        tracemalloc.start()
        started = time.perf_counter()
        try:
            code, out, err = await stats(capsys, "--url", f"http://127.0.0.1:{server.port}", *args)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return code, out, err, time.perf_counter() - started, peak


async def test_an_endless_page_is_cut_at_its_bound(capsys: pytest.CaptureFixture[str]) -> None:
    server = HostilePage(head(), endless(MARK.encode() * 2000))
    code, out, err, seconds, peak = await hostile(capsys, server)
    assert code == 1 and out == ""
    assert err.endswith(f"/metrics: the page is larger than {MAX_PAGE_BYTES >> 20} MiB\n")
    assert server.sent < server.limit  # it hung up, rather than read on
    assert peak < 4 * MAX_PAGE_BYTES and seconds < 20


async def test_a_page_announcing_more_than_the_bound_is_refused_unread(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = HostilePage(head("Content-Length: 1073741824\r\n"), endless(b"#" * 65536))
    code, _, err, _, peak = await hostile(capsys, server)
    assert code == 1 and err.endswith(f"the page is larger than {MAX_PAGE_BYTES >> 20} MiB\n")
    assert peak < MAX_PAGE_BYTES


async def test_a_page_that_drips_ends_at_the_deadline(capsys: pytest.CaptureFixture[str]) -> None:
    server = HostilePage(head(), endless(b"#"), gap=0.05)
    code, _, err, seconds, _ = await hostile(capsys, server, "--timeout", "1")
    assert code == 1 and err.endswith("/metrics: no complete answer within 1 s\n")
    assert seconds < 15


@pytest.mark.parametrize(
    ("page", "error"),
    [
        ("<html><body>hello</body></html>", "the page has no TTS gateway metrics"),
        (
            MARK + 'tts_provider_characters_total{provider="p" 12\n',
            "the page is not in the Prometheus text format: ",
        ),
        (MARK + 'tts_provider_characters_total{provider="p"} NaN\n', "is not a finite number"),
        (
            MARK + "tts_tenant_requests_total{" + 'a="",' * 200_000 + "} 1\n",
            f"line 2 of the page is over {MAX_LINE_CHARS} characters",
        ),
        (
            # Lines each within bounds, but too many of them to parse.
            MARK + ('tts_tenant_requests_total{tenant="' + '\\"' * 200 + '"} 1\n') * 4000,
            f"the page holds over {MAX_SAMPLE_CHARS / (1 << 20):g} MiB of spend samples",
        ),
        (b"\xff\xfe" + MARK.encode(), "the page is not UTF-8 text"),
    ],
    ids=["not-metrics", "malformed", "nan", "long-line", "too-many-samples", "not-utf8"],
)
async def test_a_broken_or_hostile_page_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], page: str | bytes, error: str
) -> None:
    code, out, err, seconds, _ = await hostile(capsys, HostilePage(head(), once(page)))
    assert code == 1 and out == ""
    assert err.startswith("error: ") and error in err and err.count("\n") == 1
    assert seconds < 10  # checked before the parser's costly part


async def test_a_compressed_page_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    packer = zlib.compressobj(wbits=31)  # gzip: 64 MiB of newlines in about 64 KB
    bomb = packer.compress(MARK.encode())
    for _ in range(64):
        bomb += packer.compress(b"\n" * (1 << 20))
    bomb += packer.flush()
    server = HostilePage(head("Content-Encoding: gzip\r\n"), once(bomb))
    code, _, err, _, peak = await hostile(capsys, server)
    assert code == 1 and err.endswith("the page came 'gzip'-encoded, though none was asked for\n")
    assert peak < MAX_PAGE_BYTES


async def test_names_on_the_page_cannot_drive_the_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    page = MARK + 'tts_tenant_characters_total{tenant="evil\x1b[2J\x07"} 3\n'
    _, text, *_ = await hostile(capsys, HostilePage(head(), once(page)))
    _, as_json, *_ = await hostile(capsys, HostilePage(head(), once(page)), "--json")
    assert "\x1b" not in text and "\x07" not in text
    assert "evil\ufffd[2J\ufffd" in text
    assert "\x1b" not in as_json and json.loads(as_json)["tenants"] == {
        "evil\x1b[2J\x07": {"requests": {}, "characters": 3}
    }
