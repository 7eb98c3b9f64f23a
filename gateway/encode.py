"""Encode a stream of mono S16LE PCM into the OpenAI door's response formats while it streams,
with FFmpeg's encoders and muxers through PyAV.

::

    pcm   raw S16LE, as it comes                     audio/pcm
    wav   a RIFF header of unknown length, then PCM  audio/wav
    mp3   MPEG audio frames (libmp3lame)             audio/mpeg
    opus  Ogg Opus (libopus)                         audio/ogg
    aac   AAC in ADTS frames                         audio/aac
    flac  FLAC (its STREAMINFO without a length)     audio/flac

The muxer writes into an in-memory sink with no ``seek``: FFmpeg then writes what a stream can
carry (no length fields to patch at the end) and flushes its I/O buffer after every packet, so
whatever :meth:`StreamEncoder.encode` returns is every byte the encoder has produced so far.
An encoder holds back what its frame needs (an MP3 frame is 1152 samples, AAC 1024, Opus 20
ms, FLAC blocks here 960) and its look-ahead: the first bytes of audio leave with the first
full frame. Ogg pages are cut every :data:`OGG_PAGE_MICROSECONDS`, not FFmpeg's default
second, so that Opus does not wait for a second of audio either.

``speed`` other than 1 runs the audio through FFmpeg's ``atempo`` filter (tempo changed, pitch
kept); ``atempo`` takes 0.5-100, so a speed below 0.5 is two stages. At speed 1 there is no
filter, and ``pcm`` and ``wav`` cost nothing but the header.

A chunk is cut into slices of at most :data:`SLICE_SAMPLES` before encoding, so that the CPU
one call of :meth:`StreamEncoder.encode_slices` spends at a time stays small (see
``bench/openai_door.py`` for the figures) whatever size the provider's chunks are.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Final

import numpy as np

from .audio import wav_header

if TYPE_CHECKING:
    import av


def _pyav() -> ModuleType:
    """PyAV, imported when the first encoder is made (off the event loop): a process that
    never serves the OpenAI door does not hold FFmpeg's libraries (~15 MiB)."""
    import av
    import av.filter

    return av


__all__ = [
    "DEFAULT_FORMAT",
    "FORMATS",
    "MAX_SPEED",
    "MIN_SPEED",
    "OGG_PAGE_MICROSECONDS",
    "SLICE_SAMPLES",
    "ResponseFormat",
    "StreamEncoder",
]

#: ``speed`` bounds, as OpenAI's API has them.
MIN_SPEED: Final = 0.25
MAX_SPEED: Final = 4.0

#: The most samples encoded in one step (100 ms at 24 kHz).
SLICE_SAMPLES: Final = 2400

#: Ogg page length: one 20 ms Opus packet a page. The first audio leaves after 40 ms of PCM
#: (three packets a page: 120 ms), for about 7 kbit/s of page headers.
OGG_PAGE_MICROSECONDS: Final = 20_000


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """One ``response_format``: its media type, and the FFmpeg encoder and muxer that make it
    (``None`` for the raw formats)."""

    name: str
    content_type: str
    codec: str | None = None
    muxer: str | None = None
    bit_rate: int | None = None
    muxer_options: Mapping[str, str] = field(default_factory=dict)
    codec_options: Mapping[str, str] = field(default_factory=dict)

    def bytes_per_second(self, sample_rate: int) -> float:
        """About how many bytes one second of mono audio at ``sample_rate`` takes: raw PCM
        two a sample, a codec its bit rate, FLAC (whose size depends on the audio) half of
        PCM, its usual ratio on speech."""
        if self.bit_rate is not None:
            return self.bit_rate / 8
        return 2.0 * sample_rate if self.codec is None else float(sample_rate)


FORMATS: Final[Mapping[str, ResponseFormat]] = MappingProxyType(
    {
        # Bare MPEG frames, as a radio stream: no ID3 tag, no Xing header (its frame count
        # cannot be known up front).
        "mp3": ResponseFormat(
            "mp3",
            "audio/mpeg",
            "libmp3lame",
            "mp3",
            64_000,
            {"id3v2_version": "0", "write_xing": "0"},
        ),
        # RFC 7845's type for an Ogg Opus stream (browsers play it; "audio/opus" is RTP's).
        "opus": ResponseFormat(
            "opus",
            "audio/ogg",
            "libopus",
            "ogg",
            32_000,
            {"page_duration": str(OGG_PAGE_MICROSECONDS)},
        ),
        "aac": ResponseFormat("aac", "audio/aac", "aac", "adts", 64_000),
        # Blocks of 960 samples (40 ms at 24 kHz) rather than FFmpeg's ~100 ms: the first
        # audio leaves sooner, for a few per cent of size.
        "flac": ResponseFormat(
            "flac", "audio/flac", "flac", "flac", codec_options={"frame_size": "960"}
        ),
        "wav": ResponseFormat("wav", "audio/wav"),
        "pcm": ResponseFormat("pcm", "audio/pcm"),
    }
)

#: OpenAI's default.
DEFAULT_FORMAT: Final = "mp3"

#: Every muxer writes out each packet as it gets it (FFmpeg's default for a stream, made
#: sure); no padding in metadata headers (FLAC's is 8 KB), no FFmpeg version in the tags.
_MUXER_OPTIONS: Final = {
    "flush_packets": "1",
    "metadata_header_padding": "0",
    "fflags": "+bitexact",
}


class _Sink:
    """Where the muxer writes: bytes collected until taken. No ``seek``: a stream."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _tempo_stages(speed: float) -> list[float]:
    """``atempo`` factors whose product is ``speed``, each within the filter's 0.5-100."""
    if speed >= 0.5:
        return [speed]
    root = math.sqrt(speed)  # 0.25-0.5 → two stages of 0.5-0.71
    return [root, root]


class _Tempo:
    """FFmpeg's ``atempo`` over S16 mono frames."""

    def __init__(self, sample_rate: int, speed: float) -> None:
        self.av = pyav = _pyav()
        self.graph = pyav.filter.Graph()
        nodes = [self.graph.add_abuffer(sample_rate=sample_rate, format="s16", layout="mono")]
        nodes += [self.graph.add("atempo", f"{stage:.6f}") for stage in _tempo_stages(speed)]
        nodes.append(self.graph.add("abuffersink"))
        self.graph.link_nodes(*nodes).configure()

    def run(self, frame: av.AudioFrame | None) -> Iterator[av.AudioFrame]:
        """Push ``frame`` (``None``: the end) and pull every frame the filter has ready."""
        pyav = self.av
        self.graph.push(frame)
        while True:
            try:
                out = self.graph.pull()
            except (pyav.BlockingIOError, pyav.EOFError):
                return
            assert isinstance(out, pyav.AudioFrame)
            yield out


class StreamEncoder:
    """Turns one stream of mono S16LE PCM at ``sample_rate`` into ``response_format`` at
    ``speed``, chunk by chunk. Feed chunks to :meth:`encode` (or :meth:`encode_slices`), send
    what comes back as it comes, call :meth:`finish` once at the end; :meth:`close` releases
    the encoder (also when the stream is cut short; idempotent)."""

    def __init__(self, response_format: str, sample_rate: int, speed: float = 1.0) -> None:
        self._av = pyav = _pyav()
        self.format = FORMATS[response_format]
        self.sample_rate = sample_rate
        self._time_base = Fraction(1, sample_rate)
        self._pts = 0
        self._header = wav_header(sample_rate) if self.format.name == "wav" else b""
        self._tempo = _Tempo(sample_rate, speed) if speed != 1.0 else None
        self._sink = _Sink()
        self._container: av.container.OutputContainer | None = None
        self._stream: av.AudioStream | None = None
        if self.format.codec is not None:
            assert self.format.muxer is not None
            self._container = pyav.open(
                self._sink,
                mode="w",
                format=self.format.muxer,
                container_options={**_MUXER_OPTIONS, **self.format.muxer_options},
            )
            stream = self._container.add_stream(
                self.format.codec, rate=sample_rate, options=dict(self.format.codec_options)
            )
            assert isinstance(stream, pyav.AudioStream)
            stream.layout = "mono"
            if self.format.bit_rate is not None:
                stream.bit_rate = self.format.bit_rate
            self._stream = stream
            # Open the encoder and write the header now, not on the first chunk: this is the
            # costly part (a few ms), which the door runs off the event loop.
            self._container.start_encoding()
        self._slice_bytes = 2 * max(SLICE_SAMPLES // 8, round(SLICE_SAMPLES * min(1.0, speed)))

    @property
    def content_type(self) -> str:
        return self.format.content_type

    def encode(self, pcm: bytes) -> bytes:
        """The bytes of the response that ``pcm`` (whole samples) completes."""
        return b"".join(self.encode_slices(pcm))

    def encode_slices(self, pcm: bytes) -> Iterator[bytes]:
        """As :meth:`encode`, one piece per slice of at most :data:`SLICE_SAMPLES` samples
        (fewer below speed 1, which stretches them): each ``next()`` is one bounded step of
        work (pieces may be empty)."""
        if self._tempo is None and self._container is None:  # pcm, wav at speed 1
            yield self._take_header() + pcm
            return
        step = self._slice_bytes
        for start in range(0, len(pcm), step):
            piece = pcm[start : start + step]
            samples = np.frombuffer(piece, dtype="<i2").reshape(1, -1)
            frame = self._av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.time_base = self._time_base
            frame.pts = self._pts
            self._pts += samples.shape[1]
            yield self._take_header() + self._through(frame)

    def finish(self) -> bytes:
        """The rest of the response: what the filter and the encoder held back, and the
        muxer's trailer. The encoder is closed after."""
        try:
            out = self._take_header() + self._through(None)
            if self._container is not None:
                self._container.close()
                self._container = None
                out += self._sink.take()
            return out
        finally:
            self.close()

    def close(self) -> None:
        """Release the encoder and the filter (what they hold is dropped)."""
        if self._container is not None:
            container, self._container = self._container, None
            # A stream cut short: nothing of it is wanted any more.
            with contextlib.suppress(self._av.FFmpegError, ValueError):
                container.close()
        self._tempo = None

    def _take_header(self) -> bytes:
        header, self._header = self._header, b""
        return header

    def _through(self, frame: av.AudioFrame | None) -> bytes:
        """``frame`` (``None``: the end) through the filter and the encoder."""
        frames: Iterator[av.AudioFrame | None]
        if self._tempo is None:
            frames = iter((frame,))
        elif frame is None:
            frames = _then_none(self._tempo.run(None))
        else:
            frames = self._tempo.run(frame)
        if self._stream is None:  # raw PCM after the tempo filter
            return b"".join(_s16(out) for out in frames if out is not None)
        assert self._container is not None
        for out in frames:
            self._container.mux(self._stream.encode(out))
        return self._sink.take()


def _then_none(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame | None]:
    yield from frames
    yield None


def _s16(frame: av.AudioFrame) -> bytes:
    """A filter's S16 mono frame as bytes."""
    return bytes(frame.to_ndarray().astype("<i2", copy=False).tobytes())
