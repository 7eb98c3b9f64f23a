"""Turn a provider's native audio stream into mono S16LE PCM at the caller's rate, chunk by chunk.

Providers deliver bytes in whatever format they speak (:class:`providers.base.AudioFormat`):
16-bit or float samples, any channel count, any rate, optionally behind a RIFF/WAVE header, in
chunks cut at arbitrary byte positions. One :class:`Converter` per request turns that stream into
what the custom TTS interface sends: mono S16LE at 8/16/24/48 kHz, as soon as it arrives.

Resampling runs in one of two modes, picked per stream from its first chunk (``mode="auto"``).
A provider that trickles audio in real time (small first chunk) gets the low-latency mode,
since every millisecond of waiting is heard: for a small rational ratio (24 -> 48, 16 -> 48,
8 -> 48, 48 -> 24, 24 -> 16 kHz...) :class:`gateway.polyphase.PolyphaseResampler`, which
answers every chunk in full but for its 2.4-7 ms group delay, for ~1 KiB per stream and about
half the CPU of soxr's variable-rate filter, which takes any other ratio (22050 -> 24000...),
holds 10-30 ms back and ~50 KiB. One that delivers a large first piece (a whole
clause, a whole file) is already ahead of real time and gets soxr's block (DFT) filter, the
cheapest per second of audio in a fast stream (measured in the gateway: ``bench/changes.md``)
but which collects ~40 ms of input before its first output and then answers every other 20 ms
chunk; unless the polyphase filter's compiled kernel takes the ratio in integers (mono S16LE
that only upsamples, 24 -> 48, 16 -> 48, 8 -> 16 kHz..., on a machine with AVX2:
:func:`gateway.polyphase.integer_path`), which makes it the cheaper of the two there too: such
a stream gets the polyphase filter at any pace.
All are ~90 dB or more from ideal. The mode never changes within a stream, so there is no seam.
Mono S16LE input, the common case, goes to the polyphase filter (or, at the caller's rate,
straight back out) as bytes, in one call per chunk.

soxr runs in float32. Its int16 mode adds
TPDF dither to its output, so the same audio cut into different chunks comes out differing by up
to 2 LSB; float32 output is bit-identical however the input is chunked, and the extra int16 <->
float32 conversions cost less than the resampling itself. The output of a stream therefore does
not depend on how the network happened to split it.
"""

from __future__ import annotations

import asyncio
import os
import wave
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Literal, cast

import numpy as np
import numpy.typing as npt
import soxr

from gateway.polyphase import PolyphaseResampler, integer_path, polyphase_ratio
from providers.base import AudioFormat
from providers.wav import STREAMING_DATA_BYTES, WavFormatError, WavHeaderReader, wav_header

__all__ = [
    "QUALITIES",
    "STREAMING_DATA_BYTES",
    "AudioFormatError",
    "Converter",
    "ResamplerMode",
    "wav_header",
    "write_wav",
]

ResamplerMode = Literal["auto", "block", "low_latency"]

#: A first chunk shorter than this (seconds of audio) picks the low-latency resampler.
LOW_LATENCY_FIRST_CHUNK: Final = 0.25

#: A stream's first piece holding more than twice this (seconds of the provider's audio) that
#: needs resampling is converted in two steps (:meth:`Converter.feed_first`): this much first,
#: sent at once, then the rest. Its first byte then waits for ~40 ms of audio to be resampled
#: rather than for all the audio a fast provider sent at once (a second of it at 24 -> 48 kHz
#: is ~0.5 ms of CPU, and making soxr's block filter more).
FIRST_OUT: Final = 0.04

#: soxr quality presets, from quickest to best.
QUALITIES: Final[frozenset[str]] = frozenset({"QQ", "LQ", "MQ", "HQ", "VHQ"})

# The presets the polyphase filter (85 dB or more from ideal) stands in for; VHQ asks for more.
_POLYPHASE_QUALITIES: Final = frozenset({"QQ", "LQ", "MQ", "HQ"})

_F32 = npt.NDArray[np.float32]

_S16: Final = np.dtype("<i2")
_F32LE: Final = np.dtype("<f4")

# Float input is limited to this (36 dB above full scale) before mixing and resampling: real
# audio never gets near it, and it keeps garbage from overflowing float32 sums.
_FLOAT_LIMIT: Final = np.float32(64.0)

# Bounds as 0-d arrays: quicker ufunc operands than scalars (np.clip costs several times more).
_FLOAT_MAX: Final = np.array(_FLOAT_LIMIT)
_FLOAT_MIN: Final = np.array(-_FLOAT_LIMIT)
_ONE: Final = np.array(1.0, np.float32)
_MINUS_ONE: Final = np.array(-1.0, np.float32)
_S16_MAX: Final = np.array(32767.0, np.float32)
_S16_MIN: Final = np.array(-32768.0, np.float32)


def _unchanged(data: bytes) -> bytes:
    return data


class AudioFormatError(ValueError):
    """The audio cannot be decoded: not a WAV, an unsupported WAV format, or a bad source."""


#: soxr resamplers kept made ahead, per (input rate, output rate, quality, mode)…
SPARES_PER_KIND: Final = 2
#: …for this many kinds, the most recently used (each resampler holds ~50-90 KiB).
SPARE_KINDS: Final = 8


class SoxrSpares:
    """soxr resamplers made ahead of the streams that will take them. Making one designs its
    filter (~40 µs of CPU for the block filter, more on cold caches): on a stream's first-byte
    path otherwise, since the resampler is picked by the stream's first piece. A stream takes
    a spare of its kind when there is one, and one is made in its place once the event loop
    comes round (after the stream's first audio has gone out). A spare has never been fed:
    it is what making one at that moment would give. Kinds never asked for are never made;
    at most :data:`SPARES_PER_KIND` of the :data:`SPARE_KINDS` last kinds asked for are kept."""

    def __init__(self) -> None:
        self._spares: OrderedDict[tuple[int, int, str, bool], list[soxr.ResampleStream]] = (
            OrderedDict()
        )
        # The kinds a spare is to be made for, with the loop that will make it.
        self._refilling: dict[tuple[int, int, str, bool], asyncio.AbstractEventLoop] = {}

    def take(self, rate: int, out_rate: int, quality: str, vr: bool) -> soxr.ResampleStream:
        """A resampler of that kind, never fed: a spare, or made now."""
        kind = (rate, out_rate, quality, vr)
        spares = self._spares.get(kind)
        if spares is None:
            spares = self._spares[kind] = []
            while len(self._spares) > SPARE_KINDS:
                old, _ = self._spares.popitem(last=False)
                self._refilling.pop(old, None)
        else:
            self._spares.move_to_end(kind)
        resampler = spares.pop() if spares else _make_soxr(kind)
        due = self._refilling.get(kind)
        if due is None or not due.is_running():  # none to come (a loop that stopped makes none)
            loop = asyncio._get_running_loop()
            if loop is not None:  # on the event loop: another made once it comes round
                self._refilling[kind] = loop
                loop.call_soon(self._refill, kind)
        return resampler

    def held(self, rate: int, out_rate: int, quality: str, vr: bool) -> int:
        """How many spares of that kind are ready."""
        return len(self._spares.get((rate, out_rate, quality, vr), ()))

    def _refill(self, kind: tuple[int, int, str, bool]) -> None:
        self._refilling.pop(kind, None)
        spares = self._spares.get(kind)
        if spares is not None and len(spares) < SPARES_PER_KIND:
            spares.append(_make_soxr(kind))

    def clear(self) -> None:
        self._spares.clear()
        self._refilling.clear()


def _make_soxr(kind: tuple[int, int, str, bool]) -> soxr.ResampleStream:
    rate, out_rate, quality, vr = kind
    return soxr.ResampleStream(rate, out_rate, 1, dtype="float32", quality=quality, vr=vr)


#: The process's spare soxr resamplers (see :class:`SoxrSpares`).
SPARES: Final = SoxrSpares()


class Converter:
    """Converts one stream of native audio to mono S16LE PCM at ``out_rate``.

    Feed the provider's chunks to :meth:`feed` as they arrive and send what it returns (possibly
    ``b""`` while the resampler or the WAV header parser needs more input); at the end call
    :meth:`flush` once for the resampler's tail. Every returned chunk holds whole samples.

    ``source`` is the provider's declared format. With ``container="wav"`` the rate, channels and
    encoding come from the stream's own header instead; :attr:`input_format` tells which format
    was actually found. Channels are down-mixed by averaging; float samples are clipped to
    [-1, 1] and scaled by 32767.
    """

    frames_in: int
    """Whole input frames consumed so far (a frame holds one sample of every channel)."""
    frames_out: int
    """Output samples returned so far."""

    def __init__(
        self,
        source: AudioFormat,
        out_rate: int,
        *,
        quality: str = "HQ",
        mode: ResamplerMode = "auto",
    ) -> None:
        if mode not in ("auto", "block", "low_latency"):
            raise ValueError(f"unknown resampling mode {mode!r}")
        self.mode = mode
        if out_rate <= 0:
            raise ValueError(f"output sample rate must be positive, got {out_rate}")
        if quality not in QUALITIES:
            raise ValueError(f"unknown soxr quality {quality!r}; one of {sorted(QUALITIES)}")
        if source.container not in ("raw", "wav"):
            raise AudioFormatError(f"unsupported container {source.container!r}")
        self.out_rate = out_rate
        self.quality = quality
        self.frames_in = 0
        self.frames_out = 0
        self._finished = False
        self._carry = b""
        self._resampler: soxr.ResampleStream | PolyphaseResampler | None = None
        self._resampling = False
        self._format: AudioFormat | None = None
        # Set from the actual format by _set_format(); placeholders until a WAV header is read.
        self._frame_bytes = 2
        self._channels = 1
        self._float = False
        # S16LE mono in, S16LE out in one call: the pass-through, or the polyphase filter once
        # it is made (None for every other conversion, and after flush()).
        self._s16: Callable[[bytes], bytes] | None = None
        # The header reader of a container="wav" stream, until its data chunk starts.
        self._wav: WavHeaderReader | None = None
        if source.container == "raw":
            self._set_format(source)
        else:
            self._wav = WavHeaderReader()

    @property
    def input_format(self) -> AudioFormat | None:
        """The format being converted: ``source``, or for a WAV stream the format its header
        declares (``None`` until the header up to the data chunk has arrived)."""
        return self._format

    @property
    def finished(self) -> bool:
        """True once :meth:`flush` was called."""
        return self._finished

    def compiled_step(self) -> tuple[bool, Callable[[bytes], bytes] | None]:
        """What a relay's compiled step (``providers._relay.Tap``) may convert this stream's
        next chunks with, doing what :meth:`feed`'s common case does: ``(True, None)`` for
        the pass-through (mono S16LE at the caller's rate), ``(True, process)`` for the
        compiled polyphase kernel's own ``Stream.process`` (mono S16LE, the stream's state
        in the kernel), with nothing carried from a chunk before; ``(False, None)`` for every
        other conversion. The step counts what it converts itself, and gives the counts to
        :meth:`counted` when it is done."""
        s16 = self._s16
        if s16 is None or self._carry or self._finished or self._wav is not None:
            return False, None
        if s16 is _unchanged:
            return True, None
        resampler = self._resampler
        if isinstance(resampler, PolyphaseResampler) and resampler.compiled_s16():
            return True, s16
        return False, None

    def counted(self, frames_in: int, frames_out: int) -> None:
        """Frames a compiled step converted (see :meth:`compiled_step`)."""
        self.frames_in += frames_in
        self.frames_out += frames_out

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Convert one chunk of the stream; returns S16LE mono PCM at ``out_rate`` (maybe empty).

        Raises :class:`AudioFormatError` when a WAV header turns out unusable, and
        :class:`RuntimeError` after :meth:`flush`."""
        s16 = self._s16
        if s16 is not None and type(data) is bytes and not len(data) & 1 and not self._carry:
            # The common case, in a few steps: mono S16LE, whole samples, nothing carried.
            n = len(data) >> 1
            self.frames_in += n
            if s16 is _unchanged:
                self.frames_out += n
                return data
            out = s16(data)
            self.frames_out += len(out) >> 1
            return out
        if self._finished:
            raise RuntimeError("Converter.feed() after flush()")
        if type(data) is not bytes:
            data = bytes(data)  # bytearray/memoryview: the pass-through must return bytes
        if self._wav is not None:
            data = self._read_header(data)
            if self._wav is not None:
                return b""
        if self._carry:
            data = self._carry + data
            self._carry = b""
        frame_bytes = self._frame_bytes
        frames = len(data) // frame_bytes
        used = frames * frame_bytes
        if used != len(data):
            self._carry = data[used:]
        if not frames:
            return b""
        self.frames_in += frames
        if self._resampling and self._resampler is None and self._channels == 1:
            self._start_mono_resampler(frames)
        if self._s16 is not None:
            out = self._s16(data if used == len(data) else data[:used])
            self.frames_out += len(out) >> 1
            return out
        return self._emit(self._convert(data, frames))

    def feed_first(self, data: bytes) -> tuple[bytes, bytes | memoryview]:
        """:meth:`feed` for a stream's first piece, returning ``(pcm, rest)``: when the piece
        holds more than twice :data:`FIRST_OUT` of mono audio to resample, only its first
        :data:`FIRST_OUT` is converted (or, when the block filter answers nothing for it, the
        least doubling of it that gives audio), and ``rest`` is the rest of its bytes (a view
        of the piece: no copy on the first audio's way), to :meth:`feed` next. The resampler
        is chosen for the whole piece (its length picks the mode), so the output is what
        :meth:`feed` of the whole piece gives, cut in two."""
        fmt = self._format
        if (
            fmt is not None
            and self._resampling
            and not self.frames_in
            and self._channels == 1
            and not self._carry
            and type(data) is bytes
        ):
            head = int(FIRST_OUT * fmt.sample_rate) * self._frame_bytes
            if len(data) > 2 * head:
                if self._resampler is None:  # not made ahead (prepare())
                    self._start_mono_resampler(len(data) // self._frame_bytes)
                out, at = self.feed(data[:head]), head
                # The block filter answers in blocks of ~35 ms, and only after more input
                # when it downsamples a lot: twice the input, until it does.
                while not out and at < len(data):
                    out, at = self.feed(data[at : 2 * at]), 2 * at
                return out, memoryview(data)[at:]
        return self.feed(data), b""

    def prepare(self) -> None:
        """Make the resampler now, before the first piece, where its choice does not wait for
        the piece's length (the polyphase filter for mono S16LE input at a ratio whose
        upsampling the kernel does in integers, or the ``low_latency`` mode's): made while the
        upstream works, it is not made on the first audio's way. Otherwise nothing."""
        fmt = self._format
        if (
            fmt is None
            or not self._resampling
            or self._resampler is not None
            or self.frames_in
            or self._finished
            or self._channels != 1
            or self.quality not in _POLYPHASE_QUALITIES
        ):
            return
        ratio = polyphase_ratio(fmt.sample_rate, self.out_rate)
        if ratio is None:
            return
        if self.mode == "low_latency" or (
            self.mode == "auto" and not self._float and integer_path(*ratio)
        ):
            self._start_mono_resampler(0)

    def flush(self) -> bytes:
        """End of stream: the resampler's remaining output. The converter is finished after.

        A trailing partial frame is dropped. Never raises for the audio's sake (the relay
        drains converters after provider errors too); a second call returns ``b""``."""
        if self._finished:
            return b""
        self._finished = True
        self._carry = b""
        self._wav = None
        s16, self._s16 = self._s16, None
        resampler, self._resampler = self._resampler, None
        if resampler is None:
            return b""  # nothing was ever fed to it
        if not isinstance(resampler, PolyphaseResampler):
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            return self._emit(cast(_F32, tail))
        if s16 is None:
            return self._emit(resampler.flush())
        out = resampler.flush_s16()
        self.frames_out += len(out) >> 1
        return out

    # -- conversion ---------------------------------------------------------------------------

    def _set_format(self, fmt: AudioFormat) -> None:
        if fmt.encoding not in ("s16le", "f32le"):
            raise AudioFormatError(f"unsupported sample encoding {fmt.encoding!r}")
        if fmt.channels < 1:
            raise AudioFormatError(f"channel count must be at least 1, got {fmt.channels}")
        if fmt.sample_rate <= 0:
            raise AudioFormatError(f"sample rate must be positive, got {fmt.sample_rate}")
        self._format = fmt
        self._frame_bytes = fmt.frame_bytes
        self._channels = fmt.channels
        self._float = fmt.encoding == "f32le"
        # The resampler itself is made at the first chunk, whose length picks its mode.
        self._resampling = fmt.sample_rate != self.out_rate
        if not self._float and fmt.channels == 1 and not self._resampling:
            self._s16 = _unchanged  # the pass-through

    def _start_mono_resampler(self, first_frames: int) -> None:
        """The resampler of a mono stream, chosen by its first piece's length; the polyphase
        filter on S16LE input takes the samples as they are (the short path of :meth:`feed`)."""
        self._resampler = self._make_resampler(first_frames)
        if not self._float and isinstance(self._resampler, PolyphaseResampler):
            self._s16 = self._resampler.s16

    def _make_resampler(self, first_frames: int) -> soxr.ResampleStream | PolyphaseResampler:
        assert self._format is not None
        rate = self._format.sample_rate
        ratio = polyphase_ratio(rate, self.out_rate)
        if self.quality not in _POLYPHASE_QUALITIES:
            ratio = None
        low_latency = self.mode == "low_latency" or (
            self.mode == "auto"
            and (
                first_frames < LOW_LATENCY_FIRST_CHUNK * rate
                # A large first piece too, when the kernel takes the ratio in integers: then
                # the polyphase filter is the cheaper one as well (mono S16LE only).
                or (
                    ratio is not None
                    and not self._float
                    and self._channels == 1
                    and integer_path(*ratio)
                )
            )
        )
        self.mode = "low_latency" if low_latency else "block"
        if low_latency and ratio is not None:
            peak = float(_FLOAT_LIMIT) if self._float else 32768.0
            return PolyphaseResampler(*ratio, peak)
        return SPARES.take(rate, self.out_rate, self.quality, low_latency)

    def _convert(self, data: bytes, frames: int) -> _F32:
        """Whole frames of ``data`` as mono float32 at the output rate (int16 units for s16le
        input, [-1, 1] units for f32le), ready for :meth:`_emit`."""
        count = frames * self._channels
        if self._float:
            # NaN, inf and absurd values (bytes that are not really float32) would overflow the
            # down-mix or the resampler's sums and poison its filter state for good.
            x = np.minimum(np.frombuffer(data, _F32LE, count), _FLOAT_MAX)
            np.maximum(x, _FLOAT_MIN, out=x)
            np.copyto(x, 0.0, where=np.isnan(x))  # np.nan_to_num costs ten times more
            if self._channels > 1:
                x = x.reshape(frames, self._channels).mean(axis=1, dtype=np.float32)
        else:
            s = np.frombuffer(data, _S16, count)
            if self._channels > 1:
                x = s.reshape(frames, self._channels).mean(axis=1, dtype=np.float32)
            else:  # mono S16LE through soxr (the polyphase filter takes the bytes in feed)
                x = s.astype(np.float32)
        if self._resampling:
            if self._resampler is None:
                self._resampler = self._make_resampler(frames)
            x = self._resample(x)
        return x

    def _resample(self, x: _F32) -> _F32:
        resampler = self._resampler
        assert resampler is not None
        if isinstance(resampler, PolyphaseResampler):
            return resampler.process(x)
        return cast(_F32, resampler.resample_chunk(x, last=False))

    def _emit(self, y: _F32) -> bytes:
        if not y.size:
            return b""
        if not y.flags.writeable:
            y = y.copy()
        if self._float:
            np.minimum(y, _ONE, out=y)
            np.maximum(y, _MINUS_ONE, out=y)
            y *= 32767.0
            np.rint(y, out=y)
        else:
            # The resampler's ringing can overshoot full scale.
            np.rint(y, out=y)
            np.minimum(y, _S16_MAX, out=y)
            np.maximum(y, _S16_MIN, out=y)
        self.frames_out += y.size
        return y.astype(_S16).tobytes()

    # -- WAV header ---------------------------------------------------------------------------

    def _read_header(self, data: bytes) -> bytes:
        """Feed the WAV header reader; once the data chunk starts, set the format it declares
        and return the audio bytes that followed the header in ``data``."""
        assert self._wav is not None
        try:
            audio = self._wav.feed(data)
        except WavFormatError as exc:
            raise AudioFormatError(str(exc)) from None
        if audio is None:
            return b""
        assert self._wav.format is not None  # a strict reader has read the fmt chunk
        self._set_format(self._wav.format)
        self._wav = None
        return audio


def write_wav(path: str | os.PathLike[str], pcm_s16le: bytes, sample_rate: int) -> None:
    """Write mono S16LE PCM to ``path`` as a WAV file."""
    if len(pcm_s16le) % 2:
        raise ValueError("S16LE PCM must have an even number of bytes")
    # The file is opened here, not by wave.open: if that open fails, wave's half-built writer
    # complains again when it is collected.
    with open(os.fspath(path), "wb") as f, wave.open(f, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm_s16le)
