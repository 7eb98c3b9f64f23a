"""The converter's three resamplers side by side, on real-time 20 ms chunks.

    python -m bench.resampler                  # every ratio, 5 alternations
    python -m bench.resampler --rounds 9 --ratios 24000:48000
    python -m bench.resampler --piece 1 --piece 5   # a fast provider's whole answer instead
    python -m bench.resampler --against ../old --rounds 7   # this code against another copy

For each ratio: the polyphase filter (``low_latency`` for a small rational ratio), soxr's
variable-rate filter (what ``low_latency`` used before it) and soxr's block filter, each
through :class:`gateway.audio.Converter` on mono S16LE. CPU is ``time.process_time()`` per
second of audio fed in 20 ms chunks, the variants alternating round by round (medians shown);
latency is the audio held back after the first chunk and after one second; memory is
tracemalloc's count per converter after five chunks (N converters alive at once) and the RSS
growth per converter of a fresh process holding N of them; quality is the worst alias or image
of 40 tones across the band (dB below the tone) and the gain at 0.5 and 0.9 of the lower
Nyquist frequency.

``--piece SECONDS`` (repeatable) times a stream whose first piece is that much audio at once,
as a provider that answers faster than real time sends it: :meth:`Converter.feed_first`, the
rest, the flush (the front door's steps). Per ratio, for the polyphase filter and soxr's block
filter, alternating: the CPU until the first audio comes out (the part of it a caller's first
byte waits for) and the CPU of the whole stream per second of audio; medians over the rounds.

``--against DIR`` times only the converter as the gateway uses it (``low_latency``: the
polyphase filter, or the pass-through for equal rates), this checkout's and that of another
checkout of the project (``git archive`` of an older commit, say) alternating: each round a
fresh process per checkout, which times every spec three times (the median kept); medians over
the rounds shown. A spec ``rate:out_rate:f32le`` feeds float samples instead of S16LE.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np

from gateway import audio
from gateway.audio import Converter
from providers.base import AudioFormat

Variant = Literal["polyphase", "soxr_vr", "soxr_block"]
VARIANTS: tuple[Variant, ...] = ("polyphase", "soxr_vr", "soxr_block")
RATIOS = [
    (24000, 48000),
    (16000, 48000),
    (8000, 48000),
    (16000, 24000),
    (24000, 16000),
    (24000, 8000),
    (48000, 24000),
]
#: For --against: the ratios, the pass-through (same rate) and float input at 24 -> 48 kHz too
#: (a spec is ``rate:out_rate`` or ``rate:out_rate:f32le``).
AB_RATIOS = [*(f"{a}:{b}" for a, b in RATIOS), "24000:24000", "24000:48000:f32le"]


@contextmanager
def variant(name: Variant) -> Iterator[audio.ResamplerMode]:
    """The converter mode for ``name``; soxr_vr is low_latency with the polyphase filter off."""
    if name != "soxr_vr":
        yield "block" if name == "soxr_block" else "low_latency"
        return
    saved = audio.polyphase_ratio  # type: ignore[attr-defined]
    setattr(audio, "polyphase_ratio", lambda in_rate, out_rate: None)  # noqa: B010
    try:
        yield "low_latency"
    finally:
        setattr(audio, "polyphase_ratio", saved)  # noqa: B010


def chunks(rate: int, seconds: float) -> list[bytes]:
    n = rate // 50
    x = np.random.default_rng(1).standard_normal(int(rate * seconds)) * 3000
    pcm = np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()
    return [pcm[i : i + 2 * n] for i in range(0, len(pcm), 2 * n)]


def cpu_ms_per_audio_s(name: Variant, rate: int, out_rate: int, seconds: float = 10.0) -> float:
    pieces = chunks(rate, seconds)
    with variant(name) as mode:
        conv = Converter(AudioFormat(rate), out_rate, mode=mode)
        start = time.process_time()
        for piece in pieces:
            conv.feed(piece)
        conv.flush()
        return (time.process_time() - start) / seconds * 1000


def held_back_ms(name: Variant, rate: int, out_rate: int) -> tuple[float, float]:
    """(audio held back after the first 20 ms chunk, after one second), in ms."""
    pieces = chunks(rate, 1.0)
    with variant(name) as mode:
        conv = Converter(AudioFormat(rate), out_rate, mode=mode)
        first = len(conv.feed(pieces[0])) // 2
        out = first + sum(len(conv.feed(p)) // 2 for p in pieces[1:])
    return 20.0 - first / out_rate * 1000, 1000.0 - out / out_rate * 1000


def traced_bytes_per_converter(name: Variant, rate: int, out_rate: int, n: int = 200) -> float:
    pieces = chunks(rate, 0.1)
    with variant(name) as mode:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        convs = [Converter(AudioFormat(rate), out_rate, mode=mode) for _ in range(n)]
        for conv in convs:
            for piece in pieces:
                conv.feed(piece)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    return (after - before) / n


def rss_bytes_per_converter(name: Variant, rate: int, out_rate: int, n: int = 1000) -> float:
    """Measured in a fresh process, so that earlier variants' freed memory is not reused."""
    code = (
        "import sys; from bench.resampler import _rss_child; "
        f"print(_rss_child({name!r}, {rate}, {out_rate}, {n}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _rss_child(name: Variant, rate: int, out_rate: int, n: int) -> float:
    pieces = chunks(rate, 0.1)
    with variant(name) as mode:
        # One converter first, so that the filter design and the libraries' first allocations
        # are not counted as the first stream's.
        warm = Converter(AudioFormat(rate), out_rate, mode=mode)
        for piece in pieces:
            warm.feed(piece)
        before = _rss_kib()
        convs = [Converter(AudioFormat(rate), out_rate, mode=mode) for _ in range(n)]
        for conv in convs:
            for piece in pieces:
                conv.feed(piece)
        return (_rss_kib() - before) * 1024 / n


def quality(name: Variant, rate: int, out_rate: int) -> dict[str, float]:
    """Worst spurious component (alias or image) over tones up to 0.95 of the lower Nyquist
    frequency, and the gain at 0.5 and 0.9 of it, in dB."""
    nyquist = min(rate, out_rate) / 2
    worst = -300.0
    gains: dict[str, float] = {}
    for frac in [*np.linspace(0.02, 0.95, 40), 0.5, 0.9]:
        f = float(frac) * nyquist
        x = 0.5 * np.sin(2 * np.pi * f * np.arange(2 * rate) / rate)
        data = np.rint(x * 32767).astype("<i2").tobytes()
        with variant(name) as mode:
            conv = Converter(AudioFormat(rate), out_rate, mode=mode)
            step = rate // 50 * 2
            out = b"".join(conv.feed(data[i : i + step]) for i in range(0, len(data), step))
            y = np.frombuffer(out + conv.flush(), "<i2").astype(np.float64)
        y = y[len(y) // 4 : 3 * len(y) // 4]
        t = np.arange(y.size) / out_rate
        basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], axis=1)
        coef = np.linalg.lstsq(basis, y, rcond=None)[0]
        gain = 20 * np.log10(np.hypot(*coef) / (0.5 * 32767))
        residual = y - basis @ coef
        w = np.kaiser(y.size, 20)
        spectrum = np.abs(np.fft.rfft(residual * w)) / (w.sum() / 2) / (0.5 * 32767)
        worst = max(worst, 20 * np.log10(spectrum.max()))
        if frac in (0.5, 0.9):
            gains[f"gain_{frac:g}"] = round(float(gain), 3)
    return {"worst_spurious_db": round(worst, 1), **gains}


def piece_cpu(
    name: Variant, rate: int, out_rate: int, pcm: bytes, repeat: int
) -> tuple[float, float]:
    """(CPU µs to the first audio, CPU ms per audio-second of the whole stream) of a stream
    whose first piece is ``pcm``: medians of ``repeat`` conversions (``time.thread_time``)."""
    seconds = len(pcm) / 2 / rate
    firsts: list[float] = []
    wholes: list[float] = []
    with variant(name) as mode:
        for _ in range(repeat):
            start = time.thread_time()
            conv = Converter(AudioFormat(rate), out_rate, mode=mode)
            first, rest = conv.feed_first(pcm)
            assert first, "no audio from the first piece"
            mid = time.thread_time()
            conv.feed(rest)
            conv.flush()
            end = time.thread_time()
            firsts.append((mid - start) * 1e6)
            wholes.append((end - start) / seconds * 1000)
    return statistics.median(firsts), statistics.median(wholes)


def pieces_report(specs: list[str], piece_seconds: list[float], rounds: int) -> dict[str, Any]:
    """The polyphase filter and soxr's block filter on a fast provider's whole answer (see the
    module docstring): medians over ``rounds`` alternations."""
    names: tuple[Variant, ...] = ("polyphase", "soxr_block")
    report: dict[str, Any] = {}
    for spec in specs:
        rate, out_rate = (int(v) for v in spec.split(":"))
        for seconds in piece_seconds:
            pcm = b"".join(chunks(rate, seconds))
            repeat = max(3, round(2 / seconds))
            for name in names:  # the filter designed, the libraries warm
                piece_cpu(name, rate, out_rate, pcm, 1)
            runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    runs[name].append(piece_cpu(name, rate, out_rate, pcm, repeat))
            row: dict[str, Any] = {}
            for name in names:
                row[name] = {
                    "first_audio_cpu_us": round(statistics.median(f for f, _ in runs[name]), 1),
                    "cpu_ms_per_audio_s": round(statistics.median(w for _, w in runs[name]), 3),
                }
            row["polyphase_over_block"] = {
                key: round(row["polyphase"][key] / row["soxr_block"][key], 2)
                for key in ("first_audio_cpu_us", "cpu_ms_per_audio_s")
            }
            key = f"{spec} piece {seconds:g} s"
            report[key] = row
            print(json.dumps({key: row}), flush=True)
    return report


#: What a fresh process runs for --against: only the converter's public interface, so that
#: any checkout can be timed. Mono 20 ms chunks of noise, 10 s of audio per timing, the
#: median of ``repeat`` timings per spec, the first conversion (a filter designed) discarded.
_AGAINST_CHILD = """
import json, statistics, sys, time
import numpy as np
from gateway.audio import Converter
from providers.base import AudioFormat

def pieces(rate, encoding):
    x = np.random.default_rng(1).standard_normal(rate * 10) * 3000
    if encoding == "s16le":
        pcm = np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()
    else:
        pcm = (x / 32768).astype("<f4").tobytes()
    step = rate // 50 * (2 if encoding == "s16le" else 4)
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]

def cpu(rate, out_rate, encoding, chunks):
    conv = Converter(AudioFormat(rate, encoding), out_rate, mode="low_latency")
    start = time.process_time()
    for chunk in chunks:
        conv.feed(chunk)
    conv.flush()
    return (time.process_time() - start) / 10 * 1000

specs, repeat = json.loads(sys.argv[1]), int(sys.argv[2])
data = {(rate, encoding): pieces(rate, encoding) for rate, _, encoding in specs}
cpu(24000, 48000, "s16le", data.get((24000, "s16le")) or pieces(24000, "s16le"))
result = []
for rate, out_rate, encoding in specs:
    chunks = data[rate, encoding]
    result.append(statistics.median(cpu(rate, out_rate, encoding, chunks) for _ in range(repeat)))
print(json.dumps(result))
"""

Spec = tuple[int, int, str]


def _timed_in(tree: str, specs: list[Spec], repeat: int) -> list[float]:
    """CPU ms per audio-second of the low-latency converter for each spec, in a fresh process
    running the code of ``tree``."""
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run(
        [sys.executable, "-c", _AGAINST_CHILD, json.dumps(specs), str(repeat)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
        env=env,
    )
    return [float(v) for v in json.loads(out.stdout)]


def against(other: str, specs: list[Spec], rounds: int, repeat: int = 3) -> dict[str, Any]:
    """This checkout's converter against ``other``'s, alternating (who goes first swaps each
    round): medians over rounds, spreads and their ratio per spec."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this": here, "other": os.path.abspath(other)}
    ms: dict[str, list[list[float]]] = {"this": [], "other": []}
    for r in range(rounds):
        for name in ("this", "other") if r % 2 == 0 else ("other", "this"):
            ms[name].append(_timed_in(trees[name], specs, repeat))
    report: dict[str, Any] = {}
    for i, (rate, out_rate, encoding) in enumerate(specs):
        row: dict[str, Any] = {}
        for name in ("other", "this"):
            values = [run[i] for run in ms[name]]
            median = statistics.median(values)
            row[name] = {
                "cpu_ms_per_audio_s": round(median, 4),
                "us_per_20ms_chunk": round(median * 20, 2),
                "cpu_spread": [round(min(values), 4), round(max(values), 4)],
            }
        row["this_over_other"] = round(
            row["this"]["cpu_ms_per_audio_s"] / row["other"]["cpu_ms_per_audio_s"], 3
        )
        key = f"{rate}:{out_rate}" + ("" if encoding == "s16le" else f" {encoding}")
        report[key] = row
        print(json.dumps({key: row}), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ratios", nargs="*", default=None, help="rate:out_rate[:f32le] ...")
    parser.add_argument("--against", metavar="DIR", help="another checkout to time against")
    parser.add_argument(
        "--piece", type=float, action="append", metavar="SECONDS", help="a whole first piece"
    )
    args = parser.parse_args()
    if args.piece:
        pieces_report(args.ratios or [f"{a}:{b}" for a, b in RATIOS], args.piece, args.rounds)
        return
    if args.against:
        specs: list[Spec] = []
        for spec in args.ratios or AB_RATIOS:
            rate, out_rate, *encoding = spec.split(":")
            specs.append((int(rate), int(out_rate), encoding[0] if encoding else "s16le"))
        against(args.against, specs, args.rounds)
        return
    report: dict[str, Any] = {}
    for spec in args.ratios or [f"{a}:{b}" for a, b in RATIOS]:
        rate, out_rate = (int(v) for v in spec.split(":"))
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for name in VARIANTS:
                cpu[name].append(cpu_ms_per_audio_s(name, rate, out_rate))
        row: dict[str, Any] = {}
        for name in VARIANTS:
            first, steady = held_back_ms(name, rate, out_rate)
            row[name] = {
                "cpu_ms_per_audio_s": round(statistics.median(cpu[name]), 3),
                "us_per_20ms_chunk": round(statistics.median(cpu[name]) * 20, 1),
                "cpu_spread": [round(min(cpu[name]), 3), round(max(cpu[name]), 3)],
                "held_back_first_chunk_ms": round(first, 2),
                "held_back_after_1s_ms": round(steady, 2),
                "traced_kib": round(traced_bytes_per_converter(name, rate, out_rate) / 1024, 1),
                "rss_kib": round(rss_bytes_per_converter(name, rate, out_rate) / 1024, 1),
                **quality(name, rate, out_rate),
            }
        report[spec] = row
        print(json.dumps({spec: row}), flush=True)


if __name__ == "__main__":
    main()
