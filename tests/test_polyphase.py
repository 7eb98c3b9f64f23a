"""Tests of the polyphase resampler: lengths, chunking invariance, spectrum, latency, the tail."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
import soxr

from gateway.audio import Converter
from gateway.polyphase import (
    FILTERS_FILE,
    MAX_FACTOR,
    PASSBAND,
    RIPPLE_DB,
    STOPBAND_DB,
    PolyphaseResampler,
    _prototypes,
    polyphase_ratio,
)
from gateway.polyphase_design import design, equiripple, meets_spec
from providers.base import AudioFormat

RATES = (8000, 16000, 24000, 48000)
PAIRS = [(a, b) for a in RATES for b in RATES if a != b]
CHUNKINGS: list[Sequence[int]] = [[1], [3, 7, 333, 1001], [160], [2, 1, 4096]]

FloatArray = npt.NDArray[np.float64]


def run(
    r: PolyphaseResampler, x: npt.NDArray[np.number], sizes: Sequence[int] | None
) -> FloatArray:
    """Everything through ``r``, in one piece or cut into ``sizes``, then the flush."""
    parts = []
    pos = 0
    for size in itertools.cycle(sizes or [max(1, x.size)]):
        if pos >= x.size:
            break
        parts.append(r.process(x[pos : pos + size]))
        pos += size
    parts.append(r.flush())
    assert all(p.dtype == np.float32 for p in parts)
    return np.concatenate(parts).astype(np.float64)


def make(in_rate: int, out_rate: int, peak: float = 32768.0) -> PolyphaseResampler:
    ratio = polyphase_ratio(in_rate, out_rate)
    assert ratio is not None
    return PolyphaseResampler(*ratio, peak)


def tone(freq: float, rate: int, n: int, amp: float = 16000.0) -> FloatArray:
    return amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)


def amplitude_and_spurious(y: FloatArray, rate: int, freq: float) -> tuple[float, float]:
    """The amplitude of ``freq`` in the middle of ``y`` (least squares) and the largest other
    component of what is left, both as amplitudes."""
    y = y[y.size // 4 : 3 * y.size // 4]
    t = np.arange(y.size) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef = np.linalg.lstsq(basis, y, rcond=None)[0]
    window = np.kaiser(y.size, 20)
    rest = np.abs(np.fft.rfft((y - basis @ coef) * window)) / (window.sum() / 2)
    return float(np.hypot(*coef)), float(rest.max())


def test_ratios_taken() -> None:
    assert polyphase_ratio(24000, 48000) == (2, 1)
    assert polyphase_ratio(8000, 48000) == (6, 1)
    assert polyphase_ratio(48000, 16000) == (1, 3)
    assert polyphase_ratio(24000, 16000) == (2, 3)
    assert polyphase_ratio(22050, 24000) is None  # 160/147: soxr's
    assert polyphase_ratio(44100, 48000) is None
    assert polyphase_ratio(24000, 24000) is None
    with pytest.raises(ValueError):
        PolyphaseResampler(7, 1, 1.0)
    with pytest.raises(ValueError):
        PolyphaseResampler(2, 2, 1.0)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_exact_length_and_chunking_invariance(in_rate: int, out_rate: int) -> None:
    # Non-integer input on a float scale, and an odd length: not a whole number of frames.
    x = np.random.default_rng(in_rate + out_rate).uniform(-1, 1, in_rate // 10 + 7)
    x = x.astype(np.float32)
    up, down = polyphase_ratio(in_rate, out_rate) or (0, 0)
    whole = run(make(in_rate, out_rate, 64.0), x, None)
    assert whole.size == math.ceil(x.size * up / down)
    for sizes in CHUNKINGS:
        np.testing.assert_array_equal(run(make(in_rate, out_rate, 64.0), x, sizes), whole)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 50])
def test_short_streams_have_exact_length(n: int) -> None:
    x = np.full(n, 1000, np.int16)
    for in_rate, out_rate in [(24000, 48000), (48000, 8000), (24000, 16000)]:
        up, down = polyphase_ratio(in_rate, out_rate) or (0, 0)
        assert run(make(in_rate, out_rate), x, [1]).size == math.ceil(n * up / down)


def test_int16_input_is_taken_as_is() -> None:
    x = np.random.default_rng(3).integers(-32768, 32768, 4801).astype(np.int16)
    as_int = run(make(24000, 48000), x, [480])
    as_float = run(make(24000, 48000), x.astype(np.float32), [7])
    np.testing.assert_array_equal(as_int, as_float)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_tone_keeps_frequency_and_level(in_rate: int, out_rate: int) -> None:
    nyquist = min(in_rate, out_rate) / 2
    for frac in (0.05, 0.5, PASSBAND):
        freq = frac * nyquist
        y = run(make(in_rate, out_rate), tone(freq, in_rate, in_rate), [in_rate // 50])
        spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
        assert abs(np.argmax(spectrum) * out_rate / y.size - freq) <= out_rate / y.size
        amp, _ = amplitude_and_spurious(y, out_rate, freq)
        assert 20 * np.log10(amp / 16000.0) == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_images_and_aliases_are_suppressed(in_rate: int, out_rate: int) -> None:
    """Up: a tone near the input's Nyquist frequency has no image above it. Down: tones above
    the output's Nyquist frequency do not fold back. Both at least 75 dB down."""
    nyquist = min(in_rate, out_rate) / 2
    if in_rate < out_rate:
        freqs = [0.3 * nyquist, 0.85 * nyquist, 0.95 * nyquist]
    else:
        freqs = [0.3 * nyquist, 0.85 * nyquist, 1.02 * nyquist, 1.3 * nyquist]
    for freq in freqs:
        if freq >= in_rate / 2:
            continue
        y = run(make(in_rate, out_rate), tone(freq, in_rate, in_rate), [in_rate // 50])
        if freq < nyquist:
            _, spurious = amplitude_and_spurious(y, out_rate, freq)
        else:
            _, spurious = amplitude_and_spurious(y, out_rate, out_rate - freq)
            spurious = max(spurious, float(np.abs(y[y.size // 4 : -y.size // 4]).max()) / 100)
        assert 20 * np.log10(spurious / 16000.0) < -75, freq


@pytest.mark.parametrize(("in_rate", "out_rate"), [(24000, 48000), (48000, 16000), (16000, 24000)])
def test_matches_soxr_on_band_limited_noise(in_rate: int, out_rate: int) -> None:
    # Noise limited to 0.8 of the lower Nyquist frequency, where both filters are flat: the two
    # outputs agree sample for sample (same delay compensation) to within -70 dB.
    rng = np.random.default_rng(5)
    spectrum = rng.standard_normal(in_rate + 1) + 1j * rng.standard_normal(in_rate + 1)
    freqs = np.fft.rfftfreq(2 * in_rate, 1 / in_rate)
    spectrum[freqs > 0.8 * min(in_rate, out_rate) / 2] = 0
    x = np.fft.irfft(spectrum)
    x *= 10000 / np.sqrt(np.mean(x**2))
    ours = run(make(in_rate, out_rate), x, [in_rate // 50])
    ref = soxr.resample(x, in_rate, out_rate, quality="VHQ")
    assert abs(ours.size - ref.size) <= 1
    n = min(ours.size, ref.size)
    middle = slice(n // 10, n - n // 10)  # the edges ring differently in either filter
    error = ours[middle] - ref[middle]
    assert 20 * np.log10(np.sqrt(np.mean(error**2)) / 10000) < -70


def test_flush_returns_the_delayed_tail() -> None:
    r = make(24000, 48000)
    x = tone(1000, 24000, 480)
    head = r.process(x)
    assert r.delay > 0
    assert head.size == 960 - r.delay  # all but the group delay, at once
    tail = r.flush()
    assert tail.size == r.delay
    # The tail continues the tone (delayed by r.delay outputs) and then rings down to silence.
    expected = tone(1000, 48000, 960)[-r.delay :]
    assert np.abs(tail[: r.delay // 2] - expected[: r.delay // 2]).max() < 50
    assert r.flush().size == 0


def test_impulse_lands_on_its_own_time() -> None:
    # Delay compensation: input sample k maps to output sample k * up / down exactly.
    for in_rate, out_rate in [(8000, 48000), (48000, 8000), (16000, 24000), (24000, 16000)]:
        x = np.zeros(in_rate // 10)
        k = in_rate // 20 // 6 * 6  # a whole number of frames: on an output sample
        x[k] = 20000
        y = run(make(in_rate, out_rate), x, [7])
        assert int(np.argmax(y)) == k * out_rate // in_rate


def s16_expected(y: FloatArray) -> bytes:
    """What S16LE output of float32 samples ``y`` must be: rounded, then clipped."""
    return np.clip(np.rint(y), -32768, 32767).astype("<i2").tobytes()


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_s16_bytes_are_the_float_output_rounded_and_clipped(in_rate: int, out_rate: int) -> None:
    # Full-scale noise and a square wave overshoot full scale after filtering: clipped, not
    # wrapped.
    rng = np.random.default_rng(in_rate * 7 + out_rate)
    noise = rng.integers(-32768, 32768, in_rate // 20)
    square = np.where(np.arange(in_rate // 20) // 7 % 2, 32767, -32768)
    x = np.concatenate([noise, square]).astype(np.int16)
    expected = s16_expected(run(make(in_rate, out_rate), x, None))
    data = x.tobytes()
    for sizes in CHUNKINGS:
        r = make(in_rate, out_rate)
        out, pos = [], 0
        for size in itertools.cycle(sizes):
            if pos >= x.size:
                break
            out.append(r.process_s16(data[2 * pos : 2 * (pos + size)]))
            pos += size
        out.append(r.flush_s16())
        assert b"".join(out) == expected
    y = np.frombuffer(expected, "<i2")
    assert y.max() == 32767 and y.min() == -32768


def test_int16_then_float_input_is_one_stream() -> None:
    # The resampler holds int16 input as it came until a float sample arrives: the stream is
    # the same as if every sample had been float from the start.
    x = np.random.default_rng(9).integers(-30000, 30000, 2401).astype(np.int16)
    f = x.astype(np.float32)
    mixed = make(24000, 16000)
    a = mixed.process(x[:480])  # int16, held as it came
    b = mixed.process_s16(x[480:960].tobytes())
    c = mixed.process(f[960:1500])  # float: from here on every input is on the float grid
    d = mixed.process(x[1500:])
    e = mixed.flush()
    floats = run(make(24000, 16000), f, [480])
    np.testing.assert_array_equal(a, floats[: a.size])
    assert b == s16_expected(floats[a.size : a.size + len(b) // 2])
    np.testing.assert_array_equal(np.concatenate([c, d, e]), floats[a.size + len(b) // 2 :])


def test_s16_rejects_half_samples() -> None:
    with pytest.raises(ValueError):
        make(24000, 48000).process_s16(b"\0\0\0")


# -- through the converter --------------------------------------------------------------------


def s16(x: FloatArray) -> bytes:
    return np.rint(x).astype("<i2").tobytes()


@pytest.mark.parametrize(("in_rate", "out_rate"), [(24000, 48000), (16000, 48000), (48000, 24000)])
def test_converter_answers_the_first_chunk_almost_whole(in_rate: int, out_rate: int) -> None:
    """The low-latency filter for an integer ratio holds back only its group delay (a few ms),
    where soxr's variable-rate filter held 5 to 15 ms of the first 20 ms."""
    conv = Converter(AudioFormat(in_rate), out_rate, mode="low_latency")
    first = conv.feed(s16(tone(440, in_rate, in_rate // 50)))
    held_back_ms = 20 - len(first) / 2 / out_rate * 1000
    assert held_back_ms < 4
    second = conv.feed(s16(tone(440, in_rate, in_rate // 50)))
    assert len(second) == 2 * out_rate // 50  # then every chunk in full


def test_converter_auto_picks_polyphase_for_a_trickle() -> None:
    conv = Converter(AudioFormat(24000), 48000)
    first = conv.feed(s16(tone(440, 24000, 480)))
    assert conv.mode == "low_latency"
    assert len(first) // 2 >= 960 - 3 * 48  # all but the filter's ~2 ms delay


@pytest.mark.parametrize(("in_rate", "out_rate"), [(24000, 48000), (48000, 8000), (16000, 24000)])
def test_converter_no_clicks_at_chunk_seams(in_rate: int, out_rate: int) -> None:
    freq, amp = 50.0, 0.8 * 32767
    conv = Converter(AudioFormat(in_rate), out_rate, mode="low_latency")
    data = s16(tone(freq, in_rate, in_rate, amp))
    sizes = itertools.cycle([2, 6, 14, 666, 2002])  # bytes: whole samples
    out, pos = [], 0
    for size in sizes:
        if pos >= len(data):
            break
        out.append(conv.feed(data[pos : pos + size]))
        pos += size
    y = np.frombuffer(b"".join(out) + conv.flush(), "<i2").astype(np.int32)
    assert y.size == out_rate
    steepest = 2 * np.pi * freq * amp / out_rate
    jumps = np.abs(np.diff(y[out_rate // 100 : -out_rate // 100]))
    assert jumps.max() <= steepest * 1.05 + 2


def test_converter_float_and_stereo_input() -> None:
    x = tone(440, 16000, 8000) / 32768
    stereo = np.stack([x, x], axis=1).astype("<f4").tobytes()
    mono = x.astype("<f4").tobytes()
    a = Converter(AudioFormat(16000, "f32le", 2), 48000, mode="low_latency")
    b = Converter(AudioFormat(16000, "f32le", 1), 48000, mode="low_latency")
    out_a = a.feed(stereo[:1234]) + a.feed(stereo[1234:]) + a.flush()
    out_b = b.feed(mono) + b.flush()
    assert out_a == out_b
    assert len(out_a) == 2 * 24000


def test_converter_s16_mono_is_independent_of_how_bytes_arrive() -> None:
    """Whole samples as bytes take the converter's short path; odd cuts (a byte carried),
    bytearray and memoryview the general one: the same output, counted the same."""
    data = s16(tone(440, 24000, 24000, 30000) + np.random.default_rng(4).normal(0, 3000, 24000))
    whole = Converter(AudioFormat(24000), 48000, mode="low_latency")
    expected = whole.feed(data) + whole.flush()
    assert len(expected) == 4 * 24000
    conv = Converter(AudioFormat(24000), 48000, mode="low_latency")
    kinds = itertools.cycle([bytes, bytearray, memoryview, bytes])
    out, pos = [], 0
    for size in itertools.cycle([960, 7, 961, 2, 1, 1, 4000]):
        if pos >= len(data):
            break
        out.append(conv.feed(next(kinds)(data[pos : pos + size])))
        pos += size
    out.append(conv.flush())
    assert all(type(c) is bytes and len(c) % 2 == 0 for c in out)
    assert b"".join(out) == expected
    assert conv.frames_in == 24000 and conv.frames_out == 2 * 24000


def test_converter_s16_stereo_of_identical_channels_is_mono() -> None:
    # Stereo goes through the float path, mono through the S16LE one: the same samples.
    x = s16(tone(440, 16000, 8000, 32000))
    pcm = np.frombuffer(x, "<i2")
    stereo = np.stack([pcm, pcm], axis=1).astype("<i2").tobytes()
    a = Converter(AudioFormat(16000, "s16le", 2), 48000, mode="low_latency")
    b = Converter(AudioFormat(16000), 48000, mode="low_latency")
    assert a.feed(stereo[:1284]) + a.feed(stereo[1284:]) + a.flush() == b.feed(x) + b.flush()


# ---------------------------------------------------------------------------- the filters


def response_db(prototype: FloatArray, freqs: FloatArray) -> FloatArray:
    """The gain of a symmetric odd-length filter at ``freqs`` (cycles per sample), in dB, from
    its cosine sum (not the FFT that :func:`gateway.polyphase_design.measure` uses)."""
    centre = prototype.size // 2
    k = np.arange(1, centre + 1)
    gain = prototype[centre] + 2 * np.cos(2 * np.pi * np.outer(freqs, k)) @ prototype[centre + 1 :]
    db: FloatArray = 20 * np.log10(np.abs(gain))
    return db


@pytest.mark.parametrize("factor", range(2, MAX_FACTOR + 1))
def test_each_shipped_filter_meets_the_spec(factor: int) -> None:
    """Flat within RIPPLE_DB to PASSBAND of the lower Nyquist frequency, at least STOPBAND_DB
    down from it to half the prototype's rate: measured on 20000 frequencies each."""
    prototype = _prototypes()[factor]
    assert prototype.size % 2 == 1
    np.testing.assert_array_equal(prototype, prototype[::-1])
    nyquist = 0.5 / factor
    passband = response_db(prototype, np.linspace(0, PASSBAND * nyquist, 20000))
    assert np.abs(passband).max() <= RIPPLE_DB
    stopband = response_db(prototype, np.linspace(nyquist, 0.5, 20000))
    assert stopband.max() <= -STOPBAND_DB
    # And the resampler of a ratio of that factor holds back about half the prototype.
    assert PolyphaseResampler(factor, 1, 32768.0).delay == prototype.size // 2


def test_the_shipped_filters_are_the_shortest_designs() -> None:
    """The table is what ``python -m gateway.polyphase_design`` writes with this spec, and each
    filter is the shortest that meets it: two taps fewer, the same design does not."""
    data = json.loads(FILTERS_FILE.read_text())
    spec = {"passband": PASSBAND, "ripple_db": RIPPLE_DB, "stopband_db": STOPBAND_DB}
    assert data["spec"] == spec
    for factor in range(2, MAX_FACTOR + 1):
        shipped = _prototypes()[factor]
        fresh = design(factor)
        assert fresh.size == shipped.size, factor
        np.testing.assert_allclose(shipped, fresh, rtol=0, atol=1e-9)
        shorter = equiripple(shipped.size - 2, factor)  # None: no filter at that length
        assert shorter is None or not meets_spec(shorter, factor), factor
