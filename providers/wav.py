"""RIFF/WAVE headers: read off the front of a stream fed in pieces of any size, stripped off a
chunk that carries one of its own, and written.

One walker serves both readers. The gateway's converter reads the header of a stream declared
as WAV and must learn its format from it, so it reads *strictly*: a chunk id that is not text,
a fmt chunk of implausible size, data before fmt or an encoding other than 16-bit PCM and
32-bit float is an error. A provider whose audio chunks may start with a header of their own
only wants the samples after it (:func:`strip_riff`): it walks to the data chunk whatever the
rest of the header says. Either way a chunk is walked over as its bytes arrive, never buffered
whole, so a header costs time and memory linear in its size.
"""

from __future__ import annotations

import struct
from typing import Final

from .base import AudioFormat, Encoding

__all__ = ["STREAMING_DATA_BYTES", "WavFormatError", "WavHeaderReader", "strip_riff", "wav_header"]

#: The ``data_bytes`` that makes :func:`wav_header` announce a stream of unknown length: the
#: RIFF size (36 + data bytes) is then the largest 32-bit value.
STREAMING_DATA_BYTES: Final[int] = 0xFFFFFFFF - 36

_TAG_PCM: Final = 0x0001
_TAG_FLOAT: Final = 0x0003
_TAG_EXTENSIBLE: Final = 0xFFFE
# WAVE_FORMAT_EXTENSIBLE sub-format GUIDs are KSDATAFORMAT_SUBTYPE_*: the format tag in the first
# two bytes, then this fixed tail.
_GUID_TAIL: Final = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_TAG_NAMES: Final = {
    0x0002: "MS ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MP3",
}
# A real fmt chunk is 16, 18 or 40 bytes; a bound keeps a corrupt size from making us buffer
# the whole stream as "header".
_MAX_FMT_BYTES: Final = 1024

# Stages of the header reader.
_RIFF, _CHUNK, _SKIP, _FMT, _DONE = range(5)


class WavFormatError(ValueError):
    """A WAV header that cannot be read, or declares a format that cannot be converted."""


class WavHeaderReader:
    """Reads one RIFF/WAVE header off the front of a stream, fed in pieces of any size.

    :meth:`feed` returns ``None`` while the header is incomplete, then the audio bytes that
    followed the data chunk's header (maybe ``b""``); the stream's later bytes are audio and
    need no reader. The data chunk's size is ignored: streamed WAVs write 0 or 0xFFFFFFFF
    there, so the data runs to the end of the stream.

    ``strict`` (the default) reads the header of a stream declared as WAV, whose
    :attr:`format` is needed: anything unusable raises :class:`WavFormatError`. Not strict, it
    only walks to the data chunk: neither chunk ids nor the fmt chunk are looked at.
    """

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict
        self._stage = _RIFF
        self._buffer = bytearray()
        self._skip = 0
        self._fmt_size = 0
        self._format: AudioFormat | None = None

    @property
    def format(self) -> AudioFormat | None:
        """The format the fmt chunk declares (container ``"wav"``), once it has been read;
        always ``None`` when not strict."""
        return self._format

    def feed(self, data: bytes) -> bytes | None:
        """Consume header bytes; once the data chunk starts, the audio bytes that followed it
        in ``data`` (``None`` while the header is incomplete)."""
        if self._stage == _DONE:
            return data
        if self._stage == _SKIP:
            # Skipped chunk bodies are dropped as they arrive instead of being buffered.
            drop = min(self._skip, len(data))
            self._skip -= drop
            data = data[drop:]
            if self._skip:
                return None
            self._stage = _CHUNK
        buf = self._buffer
        buf += data
        while True:
            if self._stage == _RIFF:
                head = bytes(buf[:4])
                if not (b"RIFF".startswith(head) or b"RF64".startswith(head)):
                    raise WavFormatError(f"not a WAV stream: starts with {head!r}, not RIFF")
                if len(buf) < 12:
                    return None
                if buf[8:12] != b"WAVE":
                    raise WavFormatError(f"RIFF stream of type {bytes(buf[8:12])!r}, not WAVE")
                del buf[:12]
                self._stage = _CHUNK
            elif self._stage == _CHUNK:
                if len(buf) < 8:
                    return None
                cid, size = struct.unpack_from("<4sI", buf)
                if self.strict and not all(0x20 <= c < 0x7F for c in cid):
                    raise WavFormatError(f"corrupt WAV header: chunk id {cid!r}")
                del buf[:8]
                if cid == b"data":
                    return self._start_data()
                if cid == b"fmt " and self.strict:
                    if not 16 <= size <= _MAX_FMT_BYTES:
                        raise WavFormatError(f"WAV fmt chunk of implausible size {size}")
                    self._fmt_size = size
                    self._stage = _FMT
                else:
                    # RIFF chunks are word-aligned: an odd-sized body has a pad byte.
                    self._skip = size + (size & 1)
                    self._stage = _SKIP
            elif self._stage == _SKIP:
                drop = min(self._skip, len(buf))
                del buf[:drop]
                self._skip -= drop
                if self._skip:
                    return None
                self._stage = _CHUNK
            else:  # _FMT
                need = self._fmt_size + (self._fmt_size & 1)
                if len(buf) < need:
                    return None
                self._format = _parse_fmt(bytes(buf[: self._fmt_size]))
                del buf[:need]
                self._stage = _CHUNK

    def _start_data(self) -> bytes:
        if self.strict and self._format is None:
            raise WavFormatError("WAV data chunk before the fmt chunk")
        self._stage = _DONE
        audio = bytes(self._buffer)
        self._buffer = bytearray()
        return audio


def strip_riff(chunk: bytes) -> bytes:
    """The samples of a chunk that carries its own RIFF/WAVE header (walking to ``data``,
    ``b""`` if the chunk ends before it); a chunk without such a header, as it is."""
    if not chunk.startswith(b"RIFF") or chunk[8:12] != b"WAVE":
        return chunk
    audio = WavHeaderReader(strict=False).feed(chunk)
    return audio if audio is not None else b""


def _parse_fmt(body: bytes) -> AudioFormat:
    """The format a fmt chunk body declares; WavFormatError if it is one we cannot convert."""
    tag, channels, rate, _byte_rate, _block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _TAG_EXTENSIBLE:
        if len(body) < 40:
            raise WavFormatError(f"WAVE_FORMAT_EXTENSIBLE fmt chunk too short ({len(body)} B)")
        sub_tag = struct.unpack_from("<H", body, 24)[0]
        if body[26:40] != _GUID_TAIL:
            raise WavFormatError(f"WAVE_FORMAT_EXTENSIBLE with unknown sub-format {body[24:40]!r}")
        tag = sub_tag
    if tag == _TAG_PCM and bits == 16:
        encoding: Encoding = "s16le"
    elif tag == _TAG_FLOAT and bits == 32:
        encoding = "f32le"
    else:
        name = _TAG_NAMES.get(tag, {_TAG_PCM: "PCM", _TAG_FLOAT: "float"}.get(tag, ""))
        label = f"format tag 0x{tag:04X}" + (f" ({name})" if name else "")
        raise WavFormatError(
            f"unsupported WAV {label}, {bits} bits; only 16-bit PCM and 32-bit float are handled"
        )
    if channels < 1:
        raise WavFormatError("WAV header declares 0 channels")
    if rate <= 0:
        raise WavFormatError("WAV header declares a sample rate of 0")
    return AudioFormat(rate, encoding, channels, "wav")


def wav_header(
    sample_rate: int, channels: int = 1, bits: int = 16, data_bytes: int = STREAMING_DATA_BYTES
) -> bytes:
    """A 44-byte canonical RIFF/WAVE header: 16-bit PCM (``bits=16``) or 32-bit IEEE float
    (``bits=32``). The default ``data_bytes`` announces a stream of unknown length."""
    if bits == 16:
        tag = _TAG_PCM
    elif bits == 32:
        tag = _TAG_FLOAT
    else:
        raise ValueError(f"bits must be 16 (PCM) or 32 (float), got {bits}")
    if sample_rate <= 0 or channels < 1 or not 0 <= data_bytes <= 0xFFFFFFFF:
        raise ValueError("sample_rate and channels must be positive, data_bytes a 32-bit size")
    block_align = channels * bits // 8
    riff_size = min(36 + data_bytes, 0xFFFFFFFF)
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        riff_size,
        b"WAVE",
        b"fmt ",
        16,
        tag,
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        bits,
        b"data",
        data_bytes,
    )
