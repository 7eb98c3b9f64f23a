"""Pipelined pieces: a five-sentence text through a mock upstream that answers only whole clips,
once per request, after a synthesis time proportional to the text's length. The same text is
asked for through two voices of one gateway: one on a ``custom`` provider with
``whole_clip: true`` (the first sentence alone, the next piece asked for while the current one
plays) and one with ``whole_clip: false`` (the text unsplit, one clip).

Figures (medians of several runs, one request at a time): the caller's first audio, the
largest wall-time gap between two chunks at the caller, and the playback underrun: the caller
plays in real time from its first byte, and every chunk is due when the audio before it has
played; the underrun is how late the latest chunk arrived against that (0: playback never
waited). Target: no underrun beyond the mock's own chunk spacing.

    python -m bench.run --only pieces     # the scenario, its figures in docs/benchmarks.*
    python -m bench.pieces --port 8700    # the mock upstream alone
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import PY, Server, Target, free_port, start
from bench.upstream import UpstreamProtocol, run_fast, serve
from providers._pieces import whole_clip_pieces

RATE = 24000
#: The mock's synthesis time per character of text (a 30-character sentence: 240 ms).
SYNTHESIS_MS_PER_CHAR = 8.0
#: Audio per character (about 16 characters a second of speech): synthesis at 0.13 real time.
AUDIO_MS_PER_CHAR = 60.0
#: A clip leaves in this many chunks, this far apart: the mock's own chunk spacing.
CLIP_CHUNKS = 4
SPACING_MS = 20.0
FIVE_SENTENCES = (
    "Thanks for calling the clinic. Our office opens at nine in the morning and closes at "
    "five. You can book an appointment online or over the phone. Please bring your card and "
    "a list of your medicines. Is there anything else I can help you with today?"
)
RUNS = 7
QUICK_RUNS = 2


def clip_bytes(text: str) -> int:
    """The size of the mock's clip for ``text`` (S16LE, whole samples)."""
    return 2 * round(len(text) * AUDIO_MS_PER_CHAR * RATE / 1000)


class ClipProtocol(UpstreamProtocol):
    """The custom TTS interface answering whole clips: nothing is sent until the text's
    synthesis time has passed, then the clip (silence) in :data:`CLIP_CHUNKS` chunks."""

    async def respond(self, head: bytes, body: bytes) -> None:
        try:
            text = str(json.loads(body).get("Text", ""))
        except (ValueError, AttributeError):
            text = ""
        await asyncio.sleep(SYNTHESIS_MS_PER_CHAR * len(text) / 1000)
        transport = self.transport
        if transport is None:
            return
        size = clip_bytes(text)
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % size
        )
        step = -(-size // CLIP_CHUNKS) // 2 * 2
        chunks = [bytes(min(step, size - at)) for at in range(0, size, step)]
        if await self.send_paced(chunks, SPACING_MS / 1000):
            self.finished()


def gateway_conf(workdir: Path, upstream: int) -> Path:
    conf = workdir / "pieces-gateway.yaml"
    provider = textwrap.dedent(f"""\
        type: custom
        url: http://127.0.0.1:{upstream}/stream-audio
        sample_rates: [{RATE}]
        timeout: {{connect: 5, first_byte: 30, total: 120}}
        retry: {{attempts: 1}}""")
    conf.write_text(
        "server:\n  default_voice: pieced\n  log_level: warning\nproviders:\n"
        + "  clips:\n"
        + textwrap.indent(provider + "\nwhole_clip: true\n", "    ")
        + "  whole:\n"
        + textwrap.indent(provider + "\nwhole_clip: false\n", "    ")
        + "voices:\n  pieced: {provider: clips}\n  unsplit: {provider: whole}\n"
    )
    return conf


async def listen(url: str, voice: str, text: str) -> dict[str, float]:
    """One answer, timed chunk by chunk as the caller receives it."""
    bytes_per_ms = RATE * 2 / 1000
    async with httpx.AsyncClient(timeout=60) as client:
        started = time.perf_counter()
        arrivals: list[tuple[float, int]] = []
        async with client.stream(
            "POST", url, json={"Text": text, "SampleRate": RATE, "VoiceId": voice}
        ) as response:
            if response.status_code != 200:
                raise RuntimeError(f"{voice}: status {response.status_code}")
            async for chunk in response.aiter_raw():
                arrivals.append(((time.perf_counter() - started) * 1000, len(chunk)))
    first = arrivals[0][0]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    played = 0
    underrun = 0.0
    for at, size in arrivals:
        underrun = max(underrun, at - (first + played / bytes_per_ms))
        played += size
    return {
        "first_audio_ms": first,
        "total_ms": arrivals[-1][0],
        "largest_gap_ms": max(gaps, default=0.0),
        "underrun_ms": underrun,
        "bytes": played,
    }


def run_pieces(workdir: Path, runs: int = RUNS) -> dict[str, Any]:
    """Run the scenario (its own mock upstream and gateway, on loopback); its figures."""
    servers: list[Server] = []
    try:
        up = free_port()
        servers.append(start("clips", [PY, "-m", "bench.pieces", "--port", str(up)], up, workdir))
        gw = free_port()
        args = [PY, "-m", "gateway.cli", "serve", "--config", str(gateway_conf(workdir, up))]
        args += ["--host", "127.0.0.1", "--port", str(gw), "--workers", "1"]
        servers.append(start("pieces-gateway", args, gw, workdir))
        url = f"http://127.0.0.1:{gw}/stream-audio"
        measured: dict[str, list[dict[str, float]]] = {"pieced": [], "unsplit": []}

        async def measure() -> None:
            await listen(url, "pieced", "Warm up.")  # the connection pool, the first import
            for _ in range(runs):
                for voice, answers in measured.items():
                    answers.append(await listen(url, voice, FIVE_SENTENCES))

        asyncio.run(asyncio.wait_for(measure(), 60 + 30 * runs))
    finally:
        for server in reversed(servers):
            server.stop()
    pieces = whole_clip_pieces(FIVE_SENTENCES)
    figures: dict[str, Any] = {
        "runs": runs,
        "text_chars": len(FIVE_SENTENCES),
        "pieces": [len(piece) for piece in pieces],
        "synthesis_ms_per_char": SYNTHESIS_MS_PER_CHAR,
        "audio_ms_per_char": AUDIO_MS_PER_CHAR,
        "chunk_spacing_ms": SPACING_MS,
        "expected_bytes": {
            "pieced": sum(clip_bytes(piece) for piece in pieces),
            "unsplit": clip_bytes(FIVE_SENTENCES),
        },
    }
    for voice, answers in measured.items():
        figures[voice] = {
            key: statistics.median(answer[key] for answer in answers) for key in answers[0]
        }
        figures[voice]["worst_underrun_ms"] = max(answer["underrun_ms"] for answer in answers)
        figures[voice]["bytes_ok"] = all(
            answer["bytes"] == figures["expected_bytes"][voice] for answer in answers
        )
    return figures


def targets(f: dict[str, Any]) -> list[Target]:
    return [
        Target(
            "pipelined pieces: playback underrun at the caller (median)",
            f["pieced"]["underrun_ms"],
            f["chunk_spacing_ms"],
            "ms",
        ),
        Target(
            "pipelined pieces: first audio vs the text unsplit",
            f["pieced"]["first_audio_ms"] / f["unsplit"]["first_audio_ms"],
            0.5,
            "x",
        ),
    ]


def render(f: dict[str, Any]) -> list[str]:
    pieced, unsplit = f["pieced"], f["unsplit"]
    verdict = "met" if pieced["underrun_ms"] <= f["chunk_spacing_ms"] else "NOT met"
    rows = (
        ("first audio", "first_audio_ms"),
        ("whole answer", "total_ms"),
        ("largest gap between chunks (wall time)", "largest_gap_ms"),
        ("playback underrun (median)", "underrun_ms"),
        ("playback underrun (worst run)", "worst_underrun_ms"),
    )
    return [
        "## (7) Pipelined pieces (whole-clip upstream, ms)",
        "",
        f"A {f['text_chars']}-character, five-sentence text through a mock upstream that "
        f"answers whole clips only: {f['synthesis_ms_per_char']:g} ms of synthesis per "
        f"character, {f['audio_ms_per_char']:g} ms of audio per character, each clip sent in "
        f"{CLIP_CHUNKS} chunks {f['chunk_spacing_ms']:g} ms apart. `whole_clip: true` cuts it "
        f"into pieces of {', '.join(map(str, f['pieces']))} characters; `whole_clip: false` "
        f"sends it whole. Medians of {f['runs']} runs, one request at a time; the caller plays "
        "in real time from its first byte, and the underrun is how late the latest chunk came "
        "against its turn to play.",
        "",
        "| | whole_clip: true | whole_clip: false |",
        "|---|---|---|",
        *(f"| {label} | {pieced[key]:.1f} | {unsplit[key]:.1f} |" for label, key in rows),
        f"| every byte of every answer | {pieced['bytes_ok']} | {unsplit['bytes_ok']} |",
        "",
        f"Target, no underrun beyond the mock's own chunk spacing ({f['chunk_spacing_ms']:g} ms): "
        f"**{verdict}**. The wall-time gap between pieces is the next piece's synthesis; the "
        "caller is still playing the piece before it then. Measured alone with "
        "`python -m bench.run --only pieces` (about 30 s).",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="the whole-clip mock upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run_fast(serve(args.host, args.port, protocol=ClipProtocol))


if __name__ == "__main__":
    main()
