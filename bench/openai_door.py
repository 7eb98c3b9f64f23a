"""The OpenAI door's cost (``python -m bench.run --only openai``): time to the first body byte
per ``response_format`` against the custom door at the same 24 kHz, through the same gateway
and mock upstream, one request at a time, the doors interleaved request by request so that a
change in the machine's load falls on all of them alike; medians and p90. Beside it, the
gateway's CPU per second of audio for each format (a batch each), the CPU one encoding step
takes (:meth:`gateway.encode.StreamEncoder.encode_slices`, in this process, p99 and max per
20 ms chunk), and how much PCM each encoder needs before its first audio byte, which a
real-time upstream makes a wait (MP3 and AAC frames; Ogg pages).

The mock upstream answers as fast as the socket takes it (the OpenAI body has no field to ask
it for pacing): the added TTFB is the door's own work (parse, encoder set-up, first frame),
not the wait for audio a real-time upstream adds.
"""

from __future__ import annotations

import http.client
import io
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import av

from bench.harness import cpu_seconds, pct
from gateway.encode import FORMATS, StreamEncoder

RATE = 24000
TEXT = "Thanks for calling the clinic, how can I help you today?"
CHUNK_SAMPLES = 480  # the mock upstream's 20 ms chunks


def _first_byte(
    connection: http.client.HTTPConnection, path: str, body: dict[str, Any]
) -> tuple[float, int]:
    """(ms to the first body byte, body bytes) of one POST, read to its end."""
    payload = json.dumps(body).encode()
    started = time.perf_counter()
    connection.request("POST", path, payload, {"Content-Type": "application/json"})
    response = connection.getresponse()
    first = response.read(1)
    ttfb = (time.perf_counter() - started) * 1000
    if response.status != 200 or not first:
        raise RuntimeError(f"{path}: {response.status} {response.read()[:200]!r}")
    return ttfb, 1 + len(response.read())


def _custom_body() -> dict[str, Any]:
    return {"Text": TEXT, "SampleRate": RATE, "VoiceId": "bench", "ExtendData": ""}


def _speech_body(response_format: str) -> dict[str, Any]:
    return {"model": "tts-1", "voice": "bench", "input": TEXT, "response_format": response_format}


def door_ttfb(port: int, rounds: int) -> dict[str, dict[str, float]]:
    """TTFB p50/p90 (ms) of the custom door and of each format, interleaved, and each
    format's added p50 over the custom door's."""
    custom = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    speech = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    samples: dict[str, list[float]] = {"custom": [], **{name: [] for name in FORMATS}}
    for _ in range(3):  # warm: connections, the encoders' libraries, the thread pool
        _first_byte(custom, "/stream-audio", _custom_body())
        for name in FORMATS:
            _first_byte(speech, "/v1/audio/speech", _speech_body(name))
    for _ in range(rounds):
        samples["custom"].append(_first_byte(custom, "/stream-audio", _custom_body())[0])
        for name in FORMATS:
            ttfb, _ = _first_byte(speech, "/v1/audio/speech", _speech_body(name))
            samples[name].append(ttfb)
    custom.close()
    speech.close()
    base = statistics.median(samples["custom"])
    return {
        name: {
            "ttfb_p50": statistics.median(values),
            "ttfb_p90": pct(values, 0.9),
            "added_p50": statistics.median(values) - base,
        }
        for name, values in samples.items()
    }


def door_cpu(port: int, gateway_pid: int, requests: int) -> dict[str, float]:
    """The gateway's CPU (ms) per second of audio delivered, per door and format (one second
    of audio per request, the mock's default)."""
    result: dict[str, float] = {}
    targets: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        ("custom", "/stream-audio", _custom_body),
        *((name, "/v1/audio/speech", lambda n=name: _speech_body(n)) for name in FORMATS),
    ]
    for name, path, body in targets:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        before = cpu_seconds(gateway_pid)
        for _ in range(requests):
            _first_byte(connection, path, body())
        result[name] = (cpu_seconds(gateway_pid) - before) * 1000 / requests
        connection.close()
    return result


def encoder_steps(seconds: float = 3.0) -> dict[str, dict[str, float]]:
    """Per format, in this process: CPU (ms, ``time.thread_time``) of opening the encoder and
    of each 20 ms chunk's encoding step (p99, max), and the ms of PCM fed before what has
    come out decodes to some audio (a container's header alone does not)."""
    import numpy as np

    t = np.arange(int(seconds * RATE)) / RATE
    pcm = (np.sin(2 * np.pi * 440 * t) * 0.4 * 32767).astype("<i2").tobytes()
    step = CHUNK_SAMPLES * 2
    result: dict[str, dict[str, float]] = {}
    for name in FORMATS:
        opens: list[float] = []
        steps: list[float] = []
        first_audio_ms = 0.0
        for repeat in range(10):
            clock = time.thread_time()
            encoder = StreamEncoder(name, RATE)
            opens.append(time.thread_time() - clock)
            sent = b""
            for i in range(0, len(pcm), step):
                clock = time.thread_time()
                out = encoder.encode(pcm[i : i + step])
                steps.append(time.thread_time() - clock)
                if repeat == 0 and not first_audio_ms:
                    sent += out
                    if _decodes_audio(sent, name):
                        first_audio_ms = (i + step) / 2 / RATE * 1000
            encoder.finish()
        result[name] = {
            "open_ms": statistics.median(opens) * 1000,
            "step_p99_ms": pct(steps, 0.99) * 1000,
            "step_max_ms": max(steps) * 1000,
            "pcm_before_first_audio_ms": first_audio_ms,
        }
    return result


def _decodes_audio(data: bytes, response_format: str) -> bool:
    """Whether the start of an answer holds audio an FFmpeg decoder gets out of it."""
    if response_format == "pcm":
        return bool(data)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            return any(f.samples for f in container.decode(container.streams.audio[0]))
    except (av.FFmpegError, IndexError, ValueError):
        return False


def run_openai(port: int, gateway_pid: int, quick: bool) -> dict[str, Any]:
    """Every figure of the scenario."""
    return {
        "ttfb": door_ttfb(port, 20 if quick else 100),
        "cpu_ms_per_request": door_cpu(port, gateway_pid, 20 if quick else 100),
        "encoder": encoder_steps(),
    }


def render(figures: dict[str, Any]) -> list[str]:
    """The scenario's section of the report."""
    ttfb, cpu, enc = figures["ttfb"], figures["cpu_ms_per_request"], figures["encoder"]
    lines = [
        "## (9) OpenAI door: added time to first byte per response format",
        "",
        "One request at a time (1 s of a 24 kHz tone from the mock upstream, as fast as it "
        "goes), the custom door and each format interleaved; ms.",
        "",
        "| | TTFB p50 | TTFB p90 | added p50 vs custom | gateway CPU per request | "
        "encoder open | encode step p99 / max (20 ms chunk) | PCM before first audio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("custom", *FORMATS):
        t = ttfb[name]
        e = enc.get(name)
        extra = (
            f"{e['open_ms']:.2f} | {e['step_p99_ms']:.3f} / {e['step_max_ms']:.3f} | "
            f"{e['pcm_before_first_audio_ms']:.0f}"
            if e
            else "- | - | -"
        )
        lines.append(
            f"| {name} | {t['ttfb_p50']:.2f} | {t['ttfb_p90']:.2f} | {t['added_p50']:+.2f} | "
            f"{cpu[name]:.2f} | {extra} |"
        )
    return [*lines, ""]
