"""Tests of the stream converter: lengths, spectra, chunking invariance, WAV parsing."""

from __future__ import annotations

import itertools
import struct
import wave
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest

from gateway.audio import FIRST_OUT, AudioFormatError, Converter, write_wav
from gateway.polyphase import KERNEL, integer_path, polyphase_ratio
from providers.base import AudioFormat, Encoding
from providers.wav import strip_riff, wav_header

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int16]

ODD_SIZES = (1, 3, 7, 333, 1001)
# The sub-format GUID of WAVE_FORMAT_EXTENSIBLE without its leading 2-byte format tag.
KSDATAFORMAT_TAIL = bytes.fromhex("000000001000800000aa00389b71")


# -- helpers --------------------------------------------------------------------------------------


def sine(freq: float, rate: int, n: int, amp: float = 0.5) -> FloatArray:
    return amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)


def encode(x: FloatArray, encoding: Encoding) -> bytes:
    """Samples in [-1, 1] (interleaved if 2-D [frame, channel]) as raw bytes."""
    if encoding == "s16le":
        return np.round(x * 32767).astype("<i2").tobytes()
    return x.astype("<f4").tobytes()


def pieces(data: bytes, sizes: Sequence[int]) -> Iterator[bytes]:
    pos = 0
    for size in itertools.cycle(sizes):
        if pos >= len(data):
            return
        yield data[pos : pos + size]
        pos += size


def convert(conv: Converter, data: bytes, sizes: Sequence[int] | None = None) -> IntArray:
    """Everything through ``conv`` (in one piece or cut into ``sizes``), checking every chunk."""
    chunks = [conv.feed(p) for p in (pieces(data, sizes) if sizes else [data])]
    chunks.append(conv.flush())
    assert all(len(c) % 2 == 0 for c in chunks)
    out = b"".join(chunks)
    assert conv.frames_out == len(out) // 2
    return np.frombuffer(out, "<i2")


def fmt_chunk(tag: int, channels: int, rate: int, bits: int) -> bytes:
    align = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


def extensible_fmt(sub_tag: int, channels: int, rate: int, bits: int) -> bytes:
    guid = struct.pack("<H", sub_tag) + KSDATAFORMAT_TAIL
    mask = (1 << channels) - 1
    return fmt_chunk(0xFFFE, channels, rate, bits) + struct.pack("<HHI", 22, bits, mask) + guid


def build_wav(
    fmt: bytes,
    audio: bytes,
    extra: Sequence[tuple[bytes, bytes]] = (),
    data_size: int | None = None,
) -> bytes:
    """A RIFF/WAVE file: fmt chunk, the ``extra`` chunks (padded to even size), data chunk."""
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    for cid, payload in extra:
        body += cid + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1)
    size = len(audio) if data_size is None else data_size
    body += b"data" + struct.pack("<I", size) + audio
    return b"RIFF" + struct.pack("<I", min(len(body), 0xFFFFFFFF)) + body


def peak_frequency(x: IntArray, rate: int) -> tuple[float, float]:
    """(frequency of the FFT peak, bin width) of ``x``."""
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * rate / len(x), rate / len(x)


def rms(x: npt.NDArray[np.generic]) -> float:
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))


# -- lengths and spectra --------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["s16le", "f32le"])
@pytest.mark.parametrize(
    ("in_rate", "out_rate"),
    [(22050, 8000), (22050, 48000), (24000, 16000), (44100, 48000), (16000, 48000), (24000, 24000)],
)
def test_output_length_matches_rate_ratio(encoding: Encoding, in_rate: int, out_rate: int) -> None:
    n_in = in_rate + 1234  # not a whole number of output periods
    conv = Converter(AudioFormat(in_rate, encoding), out_rate)
    out = convert(conv, encode(sine(300, in_rate, n_in), encoding), ODD_SIZES)
    assert abs(len(out) - n_in * out_rate / in_rate) <= 1
    assert conv.frames_in == n_in


@pytest.mark.parametrize("freq", [440, 1000])
@pytest.mark.parametrize("out_rate", [8000, 48000])
def test_sine_keeps_frequency_and_level(freq: int, out_rate: int) -> None:
    x = sine(freq, 22050, 22050)  # one second: whole cycles, 1 Hz bins
    out = convert(Converter(AudioFormat(22050), out_rate), encode(x, "s16le"), [4096])
    found, bin_width = peak_frequency(out, out_rate)
    assert abs(found - freq) <= bin_width
    middle = out[out_rate // 10 : -out_rate // 10]
    assert rms(middle) == pytest.approx(rms(x * 32767), rel=0.02)


def test_full_scale_overshoot_is_clipped_not_wrapped() -> None:
    square = np.where(sine(1000, 22050, 22050) >= 0, 1.0, -1.0)
    out = convert(Converter(AudioFormat(22050), 48000), encode(square, "s16le"))
    assert out.max() == 32767
    assert out.min() == -32768
    # A wrapped overshoot would jump by almost 65536 between neighbours.
    assert np.abs(np.diff(out.astype(np.int32))).max() < 50000


# -- chunking -------------------------------------------------------------------------------------

CHUNKING_CASES = [
    ("s16 mono", AudioFormat(22050, "s16le", 1), 16000),
    ("f32 mono", AudioFormat(24000, "f32le", 1), 8000),
    ("s16 stereo", AudioFormat(44100, "s16le", 2), 48000),
    ("f32 stereo", AudioFormat(22050, "f32le", 2), 16000),
    ("s16 stereo same rate", AudioFormat(16000, "s16le", 2), 16000),
    ("f32 mono same rate", AudioFormat(24000, "f32le", 1), 24000),
    ("s16 mono same rate", AudioFormat(16000, "s16le", 1), 16000),
    ("wav s16 mono", AudioFormat(22050, "s16le", 1, "wav"), 16000),
    ("wav f32 stereo", AudioFormat(22050, "f32le", 2, "wav"), 48000),
]


def stream_bytes(fmt: AudioFormat, seconds: float, freq: float = 440.0) -> bytes:
    n = int(fmt.sample_rate * seconds)
    x = sine(freq, fmt.sample_rate, n, 0.8)
    frames = np.stack([x * (0.5 + 0.5 * c / fmt.channels) for c in range(fmt.channels)], axis=1)
    audio = encode(frames, fmt.encoding)
    if fmt.container == "wav":
        bits = 16 if fmt.encoding == "s16le" else 32
        return wav_header(fmt.sample_rate, fmt.channels, bits) + audio
    return audio


@pytest.mark.parametrize("mode", ["block", "low_latency"])
@pytest.mark.parametrize(
    ("fmt", "out_rate"), [c[1:] for c in CHUNKING_CASES], ids=[c[0] for c in CHUNKING_CASES]
)
def test_output_is_independent_of_chunking(
    fmt: AudioFormat, out_rate: int, mode: Literal["block", "low_latency"]
) -> None:
    data = stream_bytes(fmt, 0.4)
    whole = convert(Converter(fmt, out_rate, mode=mode), data)
    cut = convert(Converter(fmt, out_rate, mode=mode), data, ODD_SIZES)
    assert len(whole) > 0
    # soxr is run in float32, whose streamed output is bit-identical to one-piece output.
    np.testing.assert_array_equal(cut, whole)


@pytest.mark.parametrize("out_rate", [8000, 48000])
def test_no_clicks_at_chunk_boundaries(out_rate: int) -> None:
    freq, amp = 50.0, 0.8
    data = encode(sine(freq, 22050, 22050, amp), "s16le")
    out = convert(Converter(AudioFormat(22050), out_rate), data, ODD_SIZES)
    # The steepest step of the sine itself, plus rounding; a click would be far larger. The
    # first and last 10 ms are left out: the sine's abrupt start and end ring in any resampler.
    steepest = 2 * np.pi * freq * amp * 32767 / out_rate
    jumps = np.abs(np.diff(out[out_rate // 100 : -out_rate // 100].astype(np.int32)))
    assert jumps.max() <= steepest * 1.05 + 2


def test_passthrough_returns_input_unchanged() -> None:
    conv = Converter(AudioFormat(16000), 16000)
    chunk = encode(sine(440, 16000, 1000), "s16le")
    assert conv.feed(chunk) is chunk  # hot path: no copy for whole-sample chunks
    assert conv.frames_in == conv.frames_out == 1000


def test_odd_byte_carry_one_byte_at_a_time() -> None:
    data = encode(sine(440, 16000, 500), "s16le") + b"\x7f"  # a dangling half sample at the end
    conv = Converter(AudioFormat(16000), 16000)
    chunks = [conv.feed(data[i : i + 1]) for i in range(len(data))]
    assert all(len(c) % 2 == 0 for c in chunks)
    assert chunks[0] == b""
    assert b"".join(chunks) + conv.flush() == data[:-1]


def test_odd_byte_carry_across_frames_with_resampling() -> None:
    fmt = AudioFormat(22050, "f32le", 2)
    data = stream_bytes(fmt, 0.2)
    whole = convert(Converter(fmt, 16000), data)
    one_by_one = convert(Converter(fmt, 16000), data, [1])
    np.testing.assert_array_equal(one_by_one, whole)


# -- sample conversion ----------------------------------------------------------------------------


def test_float_input_is_clipped_and_scaled() -> None:
    values = [0.0, 1.0, -1.0, 2.0, -2.0, 0.25, -0.5, float("inf"), float("-inf"), float("nan")]
    conv = Converter(AudioFormat(24000, "f32le"), 24000)
    out = np.frombuffer(conv.feed(np.array(values, "<f4").tobytes()) + conv.flush(), "<i2")
    # 0.25 * 32767 = 8191.75 rounds to 8192; -0.5 * 32767 = -16383.5 rounds half to even.
    expected = [0, 32767, -32767, 32767, -32767, 8192, -16384, 32767, -32767, 0]
    assert out.tolist() == expected


def test_non_finite_float_input_does_not_poison_the_resampler() -> None:
    x = sine(440, 24000, 24000)
    bad = x.copy()
    bad[[2400, 12000, 20000]] = [np.inf, -np.inf, np.nan]
    fmt = AudioFormat(24000, "f32le")
    out = convert(Converter(fmt, 16000, mode="block"), encode(bad, "f32le"), ODD_SIZES)
    ref = convert(Converter(fmt, 16000, mode="block"), encode(x, "f32le"))
    assert len(out) == len(ref)
    # Each bad sample disturbs only the resampler's filter span around it, not the rest.
    differs = np.flatnonzero(out != ref)
    assert differs.size > 0
    for index in differs:
        assert min(abs(index - t * 16000 / 24000) for t in (2400, 12000, 20000)) < 400


@pytest.mark.parametrize("out_rate", [16000, 22050])
def test_bytes_that_are_not_floats_do_not_crash(out_rate: int) -> None:
    # Random bytes read as float32 hold NaNs and values near 3e38; pytest turns any numpy
    # overflow or invalid-cast warning into an error here.
    junk = np.random.default_rng(7).integers(0, 256, 40001, dtype=np.uint8).tobytes()
    conv = Converter(AudioFormat(22050, "f32le", 2), out_rate)
    out = convert(conv, junk, ODD_SIZES)
    assert conv.frames_in == 5000  # 8-byte frames; the odd last byte is dropped
    assert abs(len(out) - 5000 * out_rate / 22050) <= 1


@pytest.mark.parametrize("encoding", ["s16le", "f32le"])
@pytest.mark.parametrize("out_rate", [16000, 24000])
def test_stereo_downmix(encoding: Encoding, out_rate: int) -> None:
    x = sine(440, 16000, 8000)
    mono = convert(
        Converter(AudioFormat(16000, encoding), out_rate, mode="block"), encode(x, encoding)
    )

    same = encode(np.stack([x, x], axis=1), encoding)
    out = convert(
        Converter(AudioFormat(16000, encoding, 2), out_rate, mode="block"), same, ODD_SIZES
    )
    np.testing.assert_array_equal(out, mono)
    assert rms(out) > 0.3 * 32767

    opposite = encode(np.stack([x, -x], axis=1), encoding)
    out = convert(Converter(AudioFormat(16000, encoding, 2), out_rate), opposite, ODD_SIZES)
    assert len(out) == len(mono)
    assert not out.any()


def test_six_channels_average() -> None:
    frame = np.array([[600, -600, 300, 300, 0, 1200]], "<i2")
    conv = Converter(AudioFormat(8000, "s16le", 6), 8000)
    out = np.frombuffer(conv.feed(np.repeat(frame, 10, axis=0).tobytes()), "<i2")
    assert out.tolist() == [300] * 10


# -- WAV parsing ----------------------------------------------------------------------------------


def test_wav_header_split_at_every_byte() -> None:
    audio = encode(sine(440, 16000, 40), "s16le")
    extra = [(b"LIST", b"INFOx"), (b"fact", struct.pack("<I", 40))]  # odd LIST: pad byte
    data = build_wav(fmt_chunk(1, 1, 16000, 16), audio, extra)
    for split in range(len(data) + 1):
        conv = Converter(AudioFormat(8000, container="wav"), 16000)
        first = conv.feed(data[:split])
        assert (conv.input_format is None) == (split < len(data) - len(audio))
        out = first + conv.feed(data[split:]) + conv.flush()
        assert out == audio, split
    assert conv.input_format == AudioFormat(16000, "s16le", 1, "wav")

    conv = Converter(AudioFormat(8000, container="wav"), 16000)
    assert np.frombuffer(audio, "<i2").tolist() == convert(conv, data, [1]).tolist()


def test_wav_list_chunk_before_data_and_unknown_chunks_skipped() -> None:
    audio = encode(sine(440, 22050, 2205), "s16le")
    extra = [(b"LIST", b"INFOISFT\x0e\x00\x00\x00Lavf60.16.100\x00" * 50), (b"junk", b"\x01" * 7)]
    data = build_wav(fmt_chunk(1, 1, 22050, 16), audio, extra)
    conv = Converter(AudioFormat(16000, container="wav"), 22050)
    assert convert(conv, data, ODD_SIZES).tobytes() == audio


@pytest.mark.parametrize("sub_tag", [1, 3])
def test_wave_format_extensible(sub_tag: int) -> None:
    x = np.stack([sine(440, 24000, 2400), sine(440, 24000, 2400)], axis=1)
    encoding: Encoding = "s16le" if sub_tag == 1 else "f32le"
    bits = 16 if sub_tag == 1 else 32
    data = build_wav(extensible_fmt(sub_tag, 2, 24000, bits), encode(x, encoding))
    conv = Converter(AudioFormat(16000, container="wav"), 24000)
    out = convert(conv, data, ODD_SIZES)
    assert conv.input_format == AudioFormat(24000, encoding, 2, "wav")
    left = x[:, 0] if encoding == "s16le" else x[:, 0].astype(np.float32)
    np.testing.assert_array_equal(out, np.rint(left * np.float32(32767)).astype(np.int16))


def test_float_wav_is_resampled_from_header_rate() -> None:
    x = sine(1000, 44100, 44100)
    data = build_wav(fmt_chunk(3, 1, 44100, 32), encode(x, "f32le"))
    conv = Converter(AudioFormat(16000, "s16le", 1, "wav"), 16000)  # header overrides these
    out = convert(conv, data, ODD_SIZES)
    assert conv.input_format == AudioFormat(44100, "f32le", 1, "wav")
    assert abs(len(out) - 16000) <= 1
    found, bin_width = peak_frequency(out, 16000)
    assert abs(found - 1000) <= bin_width


@pytest.mark.parametrize("data_size", [0, 0xFFFFFFFF, 6])
def test_wav_data_size_is_ignored(data_size: int) -> None:
    audio = encode(sine(440, 16000, 1600), "s16le")
    data = build_wav(fmt_chunk(1, 1, 16000, 16), audio, data_size=data_size)
    out = convert(Converter(AudioFormat(16000, container="wav"), 16000), data, ODD_SIZES)
    assert out.tobytes() == audio


def test_rf64_stream() -> None:
    # RF64 puts the real sizes in a ds64 chunk, which the parser skips like any other.
    audio = encode(sine(440, 16000, 1600), "s16le")
    ds64 = struct.pack("<QQQI", 0, len(audio), 0, 0)
    fmt = fmt_chunk(1, 1, 16000, 16)
    data = b"RF64\xff\xff\xff\xffWAVE"
    data += b"ds64" + struct.pack("<I", len(ds64)) + ds64
    data += b"fmt " + struct.pack("<I", len(fmt)) + fmt
    data += b"data\xff\xff\xff\xff" + audio
    out = convert(Converter(AudioFormat(16000, container="wav"), 16000), data, ODD_SIZES)
    assert out.tobytes() == audio


def test_wav_header_helper_round_trip() -> None:
    audio = encode(sine(440, 8000, 800), "s16le")
    for header in (wav_header(8000), wav_header(8000, data_bytes=len(audio))):
        assert len(header) == 44
        out = convert(Converter(AudioFormat(8000, container="wav"), 8000), header + audio)
        assert out.tobytes() == audio
    with pytest.raises(ValueError):
        wav_header(8000, bits=24)


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        (fmt_chunk(6, 1, 8000, 8), "A-law"),
        (fmt_chunk(7, 1, 8000, 8), "mu-law"),
        (fmt_chunk(1, 1, 16000, 24), "24 bits"),
        (fmt_chunk(3, 1, 16000, 64), "64 bits"),
        (extensible_fmt(6, 1, 8000, 8), "A-law"),
        (fmt_chunk(1, 0, 16000, 16), "0 channels"),
    ],
)
def test_unsupported_wav_format(fmt: bytes, message: str) -> None:
    data = build_wav(fmt, b"\0" * 100)
    conv = Converter(AudioFormat(16000, container="wav"), 16000)
    with pytest.raises(AudioFormatError, match=message):
        conv.feed(data)


def test_extensible_with_unknown_guid() -> None:
    fmt = extensible_fmt(1, 1, 16000, 16)[:-14] + b"\x11" * 14
    conv = Converter(AudioFormat(16000, container="wav"), 16000)
    with pytest.raises(AudioFormatError, match="sub-format"):
        conv.feed(build_wav(fmt, b"\0" * 100))


@pytest.mark.parametrize(
    "data",
    [
        b"ID3\x04\x00" + b"\0" * 100,  # an MP3
        b"RIFX" + b"\0" * 40,
        b"RIFF\x24\x00\x00\x00AVI " + b"\0" * 40,
        b"RIFF\xff\xff\xff\xffWAVE\x00\x01\x02\x03" + b"\0" * 40,  # binary chunk id
        b"RIFF\xff\xff\xff\xffWAVEdata\x00\x00\x00\x00" + b"\0" * 40,  # data before fmt
        b"RIFF\xff\xff\xff\xffWAVEfmt \x04\x00\x00\x00" + b"\0" * 40,  # fmt too short
    ],
)
def test_garbage_is_rejected(data: bytes) -> None:
    conv = Converter(AudioFormat(16000, container="wav"), 16000)
    with pytest.raises(AudioFormatError):
        for piece in pieces(data, [3]):
            conv.feed(piece)


def test_not_riff_fails_as_soon_as_a_byte_differs() -> None:
    conv = Converter(AudioFormat(16000, container="wav"), 16000)
    with pytest.raises(AudioFormatError, match="not a WAV"):
        conv.feed(b"{")
    conv = Converter(AudioFormat(16000, container="wav"), 16000)
    assert conv.feed(b"R") == b""
    with pytest.raises(AudioFormatError, match="not a WAV"):
        conv.feed(b"X")


def test_repeated_riff_header_does_not_crash() -> None:
    # Some providers start several chunks with a fresh header; the provider strips them, and
    # here they only turn into a few samples of noise.
    audio = encode(sine(440, 16000, 1600), "s16le")
    chunk = wav_header(16000) + audio
    conv = Converter(AudioFormat(16000, container="wav"), 16000)
    out = convert(conv, chunk * 3, ODD_SIZES)
    assert len(out) == (3 * len(chunk) - 44) // 2


def test_truncated_wav_header_yields_no_audio() -> None:
    conv = Converter(AudioFormat(16000, container="wav"), 16000)
    assert conv.feed(wav_header(16000)[:30]) == b""
    assert conv.input_format is None
    assert conv.flush() == b""


# -- life cycle -----------------------------------------------------------------------------------


def test_strip_riff_walks_to_the_data_chunk() -> None:
    header = wav_header(24000, data_bytes=4)
    with_list = header[:36] + b"LIST\x04\x00\x00\x00INFO" + header[36:]
    with_list = b"RIFF" + (len(with_list) - 8 + 4).to_bytes(4, "little") + with_list[8:]
    assert strip_riff(with_list + b"\x01\x00\x02\x00") == b"\x01\x00\x02\x00"
    assert strip_riff(b"\x05\x00") == b"\x05\x00"


@pytest.mark.parametrize(
    ("chunk", "samples"),
    [
        (wav_header(16000)[:30], b""),  # the header ends before the data chunk: no samples
        (b"RIFF\x00\x00\x00\x00WAVEdata\x00\x00\x00\x00\x03\x00", b"\x03\x00"),  # no fmt
        # a chunk id that is not text, skipped like any other
        (b"RIFF\0\0\0\0WAVE\x01\x02\x03\x04\0\0\0\0data\0\0\0\0\x04", b"\x04"),
        (b"RF64\xff\xff\xff\xffWAVE\x06\x00", b"RF64\xff\xff\xff\xffWAVE\x06\x00"),  # as is
    ],
)
def test_strip_riff_only_walks_to_the_data_chunk(chunk: bytes, samples: bytes) -> None:
    # A chunk that may carry a header of its own is not a stream declared as WAV: what the
    # header says of the format is not looked at, only where the samples start.
    assert strip_riff(chunk) == samples


@pytest.mark.parametrize("out_rate", [16000, 48000])
def test_feed_after_flush_raises(out_rate: int) -> None:
    conv = Converter(AudioFormat(16000), out_rate)
    conv.feed(encode(sine(440, 16000, 1600), "s16le"))
    assert not conv.finished
    conv.flush()
    assert conv.finished
    assert conv.flush() == b""
    with pytest.raises(RuntimeError):
        conv.feed(b"\0\0")


def test_flush_returns_resampler_tail() -> None:
    conv = Converter(AudioFormat(22050), 8000)
    head = conv.feed(encode(sine(440, 22050, 2205), "s16le"))
    tail = conv.flush()
    assert len(tail) > 0
    assert abs((len(head) + len(tail)) // 2 - 800) <= 1


def test_empty_stream() -> None:
    conv = Converter(AudioFormat(22050), 8000)
    assert conv.feed(b"") == b""
    assert conv.flush() == b""


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="quality"):
        Converter(AudioFormat(16000), 8000, quality="best")
    with pytest.raises(ValueError):
        Converter(AudioFormat(16000), 0)
    with pytest.raises(AudioFormatError):
        Converter(AudioFormat(16000, channels=0), 8000)


@pytest.mark.parametrize("quality", ["QQ", "LQ", "MQ", "VHQ"])
def test_other_qualities(quality: str) -> None:
    conv = Converter(AudioFormat(22050), 16000, quality=quality)
    out = convert(conv, encode(sine(1000, 22050, 22050), "s16le"), ODD_SIZES)
    assert abs(len(out) - 16000) <= 1
    found, bin_width = peak_frequency(out, 16000)
    assert abs(found - 1000) <= bin_width


def test_write_wav(tmp_path: Path) -> None:
    pcm = encode(sine(440, 24000, 2400), "s16le")
    path = tmp_path / "out.wav"
    write_wav(path, pcm, 24000)
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        assert w.readframes(w.getnframes()) == pcm
    with pytest.raises(ValueError):
        write_wav(path, b"\0", 24000)


def test_first_chunk_picks_the_resampler() -> None:
    """A trickle (real-time provider) gets the low-latency filter, which answers the very first
    20 ms chunk; a large first piece gets the cheap block filter, unless the compiled kernel
    takes its ratio in integers (24 -> 48 kHz upsamples): then the polyphase filter is the
    cheaper one too."""
    twenty_ms = encode(sine(440, 24000, 480), "s16le")
    trickle = Converter(AudioFormat(24000), 48000)
    first = trickle.feed(twenty_ms)
    assert trickle.mode == "low_latency"
    assert len(first) > 0  # audio out after the first chunk already
    burst = Converter(AudioFormat(48000), 24000)
    burst.feed(encode(sine(440, 48000, 48000), "s16le"))
    assert burst.mode == "block" and not integer_path(1, 2)
    upsampled = Converter(AudioFormat(24000), 48000)
    out = upsampled.feed(encode(sine(440, 24000, 24000), "s16le")) + upsampled.flush()
    assert len(out) == 2 * 48000
    assert integer_path(2, 1) == (KERNEL == "avx2")
    assert upsampled.mode == ("low_latency" if integer_path(2, 1) else "block")
    block = Converter(AudioFormat(24000), 48000, mode="block")
    assert block.feed(twenty_ms) == b""  # the block filter waits for ~40 ms of input


@pytest.mark.parametrize("seconds", [0.2, 1.0])
@pytest.mark.parametrize(("in_rate", "out_rate"), [(24000, 48000), (22050, 8000), (44100, 16000)])
def test_a_long_first_piece_is_converted_in_two_steps(
    seconds: float, in_rate: int, out_rate: int
) -> None:
    """feed_first() converts the first FIRST_OUT of a long first piece and hands back the rest:
    the same resampler the whole piece picks, the same samples as feeding it whole."""
    piece = encode(sine(440, in_rate, int(in_rate * seconds)), "s16le")
    whole = Converter(AudioFormat(in_rate), out_rate)
    expected = whole.feed(piece) + whole.flush()
    split = Converter(AudioFormat(in_rate), out_rate)
    first, rest = split.feed_first(piece)
    ratio = polyphase_ratio(in_rate, out_rate)
    fast = ratio is not None and integer_path(*ratio)  # the polyphase filter at any length
    assert split.mode == whole.mode == ("block" if seconds >= 0.25 and not fast else "low_latency")
    assert len(first) > 0 and len(rest) > 0
    if split.mode == "low_latency":
        assert len(rest) == len(piece) - 2 * int(FIRST_OUT * in_rate)
        assert len(first) <= 2 * FIRST_OUT * out_rate
    else:
        assert len(first) < len(expected) / 4
    assert first + split.feed(rest) + split.flush() == expected


@pytest.mark.parametrize("seconds", [0.02, 1.0])
@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(24000, 48000), (8000, 16000), (48000, 24000), (22050, 8000)]
)
@pytest.mark.parametrize("mode", ["auto", "low_latency", "block"])
def test_a_resampler_made_ahead_converts_as_the_one_the_first_piece_would_make(
    seconds: float, in_rate: int, out_rate: int, mode: Literal["auto", "low_latency", "block"]
) -> None:
    """prepare() makes the resampler before the first piece only where the piece's length
    would not change the choice; the stream converts to the same bytes, its long first piece
    still in two steps, whether it was made ahead or not."""
    piece = encode(sine(440, in_rate, int(in_rate * seconds)), "s16le")
    after = encode(sine(440, in_rate, in_rate // 10), "s16le")
    outputs = []
    for ahead in (False, True):
        converter = Converter(AudioFormat(in_rate), out_rate, mode=mode)
        if ahead:
            converter.prepare()
            ratio = polyphase_ratio(in_rate, out_rate)
            made = ratio is not None and (
                mode == "low_latency" or (mode == "auto" and integer_path(*ratio))
            )
            assert (converter._resampler is not None) == made
            assert converter.frames_in == converter.frames_out == 0
        first, rest = converter.feed_first(piece)
        whole = first + converter.feed(rest) + converter.feed(after) + converter.flush()
        outputs.append((first, rest, converter.mode, whole))
    assert outputs[0] == outputs[1]
    first, rest, chosen, whole = outputs[1]
    assert abs(len(whole) // 2 - (len(piece) + len(after)) // 2 * out_rate // in_rate) <= 2
    if chosen == "low_latency" and seconds == 1.0:
        assert len(first) > 0 and len(rest) > 0  # still in two steps


def test_a_short_or_unresampled_first_piece_is_converted_whole() -> None:
    short = encode(sine(440, 24000, int(24000 * 2 * FIRST_OUT)), "s16le")
    converter = Converter(AudioFormat(24000), 48000)
    first, rest = converter.feed_first(short)
    assert rest == b"" and len(first) > 0
    long = encode(sine(440, 24000, 24000), "s16le")
    assert Converter(AudioFormat(24000), 24000).feed_first(long) == (long, b"")


@pytest.mark.parametrize("mode", ["block", "low_latency"])
@pytest.mark.parametrize(("in_rate", "out_rate"), [(24000, 48000), (22050, 8000), (44100, 16000)])
def test_both_resamplers_keep_length_and_frequency(
    mode: Literal["block", "low_latency"], in_rate: int, out_rate: int
) -> None:
    n = in_rate
    out = convert(
        Converter(AudioFormat(in_rate), out_rate, mode=mode),
        encode(sine(1000, in_rate, n, 0.5), "s16le"),
        [in_rate // 50],  # 20 ms chunks, as a real-time provider sends them
    )
    assert abs(len(out) - n * out_rate / in_rate) <= 1
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64) * np.hanning(len(out))))
    assert abs(np.argmax(spectrum) * out_rate / len(out) - 1000) <= out_rate / len(out)
