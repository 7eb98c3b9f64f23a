"""A streaming polyphase FIR resampler for small rational ratios (2, 3, 6, 1/2, 1/3, 3/2...).

Real-time providers trickle 20 ms chunks, and between the rates they speak and the rates
callers ask for (8, 16, 24, 48 kHz) the ratio is often ``up / down`` with both at most
:data:`MAX_FACTOR`. For those a polyphase FIR answers every chunk in full but for its group
delay (2.0 ms at 24 -> 48 kHz, 3.0 ms from 16 kHz, 6.1 ms from 8 kHz; soxr's variable-rate
filter holds 10, 15 and 30 ms), keeps only the last hundred or so input samples of a stream
(int16 input as it came: ~1 KiB per converter in all, against ~50 KiB for soxr's state), and
through the converter costs about half the CPU of the variable-rate filter per 20 ms chunk
(0.4 to 0.65 of it by ratio), its int16 conversions included (``python -m bench.resampler``).

The filter is equiripple, one per factor ``max(up, down)``, shipped as a table
(``polyphase_filters.json``, designed with scipy by :mod:`gateway.polyphase_design`): flat
within :data:`RIPPLE_DB` (0.002 dB) to :data:`PASSBAND` of the lower Nyquist frequency, like
soxr's HQ preset, and at least :data:`STOPBAND_DB` (96 dB) down from that Nyquist frequency on,
so nothing is aliased or imaged above -90 dB. (A Kaiser-windowed sinc that meets it is ~25 %
longer: a window's passband ripple is its stopband's, far below what the spec asks.)

Exact arithmetic makes the output independent of chunking. The coefficients are multiples of
2**-24; int16 input is taken as it is, float input rounded to a grid (a power of two) fine
enough that every product and every partial sum of an output is a multiple of one power of two
less than 2**53 times it: the sums are exact, whatever order BLAS adds them in, however the
stream was cut. Each output is that exact sum, rounded once to float32 (and for S16LE output
then to an integer, clipped).

A chunk costs a handful of numpy calls, none per sample or per phase: the held input and the
chunk joined as bytes, the overlapping rows of the product copied (as float64) into one matrix,
one matrix product with the ratio's bank, and the conversion to float32 or S16LE.

S16LE in and out (:meth:`PolyphaseResampler.process_s16`, the converter's common case) goes
through a compiled kernel when the package was built with it (``gateway/_polyphase.c``,
:data:`KERNEL`): the same exact sums, so the same bytes, in one call a chunk and without
numpy's calls around the product, whose cost grows when a chunk meets cold caches, as each
of a few hundred real-time streams' chunks does. The kernel keeps such a stream's state too
(its ``Stream``: the inputs held and counted, the next output), so that the converter's call
for a chunk goes straight to it (:attr:`PolyphaseResampler.s16`); the first float input hands
the state back to this module. A stream that only upsamples (24 -> 48 kHz, 16 -> 48, 8 -> 16...)
takes its sums there in 32-bit integer parts, exact too (the AVX2 build's ``Stream.integer``);
on a CPU with AVX-512 VL and VNNI, with every phase of a ratio of 2, 3 or 6 in one pass over
the taps, each input loaded once for all of them (``_polyphase.integer_kernel()``: the same
bytes for 0.77, 0.86 and 0.85 of the CPU a phase a pass takes at 24 -> 48, 16 -> 48 and
8 -> 48 kHz, ``python -m bench.resampler``).
Without the kernel, numpy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

#: The compiled kernel's ``run_s16(samples, coefficients, up, down, taps, start, n)``.
_Kernel = Callable[[bytes, bytes, int, int, int, int, int], bytes]

_kernel: _Kernel | None
_Stream: type[_polyphase.Stream] | None
try:
    from gateway import _polyphase
    from gateway._polyphase import Stream as _Stream
    from gateway._polyphase import kernel as _build
    from gateway._polyphase import run_s16 as _kernel
except ImportError:  # built without a C compiler: numpy does the same sums
    _kernel = _Stream = None

__all__ = [
    "INTEGER_KERNEL",
    "KERNEL",
    "MAX_FACTOR",
    "PASSBAND",
    "RIPPLE_DB",
    "STOPBAND_DB",
    "PolyphaseResampler",
    "integer_path",
    "polyphase_ratio",
]

#: What runs S16LE streams: the compiled kernel's build ("avx2", "portable") or "numpy".
KERNEL: Final[str] = "numpy" if _kernel is None else _build()

#: What takes an upsampling stream's sums in int32 parts (see above): "avx512vnni" (every
#: phase of a ratio of 2, 3 or 6 in one pass), "avx2" (a phase a pass), or "none".
INTEGER_KERNEL: Final[str] = "none" if _kernel is None else _polyphase.integer_kernel()

#: The largest up- or down-sampling factor (after reducing the ratio) handled here.
MAX_FACTOR: Final = 6

#: The passband edge, as a fraction of the lower of the two Nyquist frequencies.
PASSBAND: Final = 0.9

#: The largest deviation from unity gain in the passband (dB).
RIPPLE_DB: Final = 0.002

#: The least attenuation from the lower Nyquist frequency on (dB).
STOPBAND_DB: Final = 96.0

#: The filters: each factor's prototype (:mod:`gateway.polyphase_design` writes it).
FILTERS_FILE: Final = Path(__file__).with_name("polyphase_filters.json")

#: Coefficients are multiples of 2**-_COEF_BITS (their rounding is far below -120 dB).
_COEF_BITS: Final = 24

#: Outputs per row of the product (in frames of ``up`` outputs); big enough for one matrix
#: product to do the work of many dot products, small enough that the zeros of the banded
#: matrix cost little.
_ROW_OUTPUTS: Final = 32

#: A matrix product larger than this (rows x inner x columns) makes OpenBLAS start threads,
#: which a gateway already running a process per core does not want: larger chunks go in slices.
_MAX_PRODUCT: Final = 65536 * 4

_F32 = npt.NDArray[np.float32]
_F64 = npt.NDArray[np.float64]

_S16: Final = np.dtype("<i2")
_F64_DTYPE: Final = np.dtype(np.float64)
_S16_MAX: Final = np.array(32767.0, np.float32)  # 0-d arrays: quicker operands than scalars
_S16_MIN: Final = np.array(-32768.0, np.float32)


@lru_cache(maxsize=256)  # bounded: a WAV header (an upstream's bytes) may name any rate
def polyphase_ratio(in_rate: int, out_rate: int) -> tuple[int, int] | None:
    """``(up, down)`` with ``out_rate / in_rate == up / down`` reduced, if this resampler takes
    the pair; ``None`` for equal rates and for ratios with a factor over :data:`MAX_FACTOR`
    (22050 → 24000 is 160/147)."""
    if in_rate <= 0 or out_rate <= 0 or in_rate == out_rate:
        return None
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    if max(up, down) > MAX_FACTOR:
        return None
    return up, down


@cache  # bounded: at most MAX_FACTOR ** 2 ratios get past the first test
def integer_path(up: int, down: int) -> bool:
    """Whether the compiled kernel takes an S16LE stream of the reduced ratio ``up / down`` in
    integers (the AVX2 build, a ratio that only upsamples: ``Stream.integer``). Then the
    polyphase filter costs less per second of audio than soxr's block filter, even for a
    stream that comes fast."""
    if _Stream is None or not (1 <= up <= MAX_FACTOR and 1 <= down <= MAX_FACTOR):
        return False
    if math.gcd(up, down) != 1 or up == down:
        return False
    native = PolyphaseResampler(up, down, 32768.0)._native
    return native is not None and native.integer


@dataclass(frozen=True, slots=True)
class _Design:
    """One ratio's filter bank, shared by every stream of that ratio."""

    up: int
    down: int
    taps: int
    """Input samples each output depends on (filter length / ``up``, rounded up)."""
    delay: int
    """Group delay in output samples: the stream's first ``delay`` outputs are dropped."""
    frames: int
    """Frames (``down`` inputs → ``up`` outputs) per row of the product."""
    bank: _F64
    """(frames·down + taps - 1) x (frames·up), integer-valued: row r of a window times column
    c is output c of the row's frames, in units of 2**-_COEF_BITS."""
    column_sum: float
    """The largest sum of a column's absolute values (bounds every partial sum)."""
    lead: int
    """Zeros before the stream's first input in the first row that holds a kept output."""


@cache
def _prototypes() -> dict[int, _F64]:
    """Each factor's (``max(up, down)``) unit-gain lowpass from the shipped table, at that
    factor times the lower of the two rates: odd length, symmetric about its centre (the table
    holds the first half and the centre)."""
    with FILTERS_FILE.open(encoding="utf-8") as f:
        filters: dict[str, list[float]] = json.load(f)["filters"]
    prototypes = {}
    for factor, first in filters.items():
        half = np.array(first, dtype=np.float64)
        prototype = np.concatenate([half, half[-2::-1]])
        prototype.flags.writeable = False
        prototypes[int(factor)] = prototype
    return prototypes


@cache
def _design(up: int, down: int) -> _Design:
    # The prototype runs at up x the input rate, with the gain up that the zeros between the
    # inputs take away. Centre it on a whole number of output samples (down up-rate samples
    # each), zeros added at both ends, so that dropping the first `delay` outputs compensates
    # its group delay exactly.
    prototype = _prototypes()[max(up, down)]
    half = prototype.size // 2
    delay = math.ceil(half / down)
    pad = np.zeros(delay * down - half)
    h = np.concatenate([pad, prototype * up, pad])
    taps = -(-h.size // up)
    h = np.rint(np.concatenate([h, np.zeros(taps * up - h.size)]) * 2.0**_COEF_BITS)

    # Output j of the stream: input i0 = (j·down) // up, phase p = (j·down) % up,
    # y[j] = sum over t < taps of x[i0 - t] · h[p + t·up]. A row holds `frames` frames of
    # `down` inputs, preceded by the taps - 1 inputs before them.
    frames = max(1, _ROW_OUTPUTS // up)
    bank = np.zeros((frames * down + taps - 1, frames * up))
    for col in range(frames * up):
        i0, phase = divmod(col * down, up)
        for t in range(taps):
            bank[taps - 1 + i0 - t, col] = h[phase + t * up]
    column_sum = float(np.abs(bank).sum(axis=0).max())
    bank.flags.writeable = False
    lead = taps - 1 - (delay // (frames * up)) * frames * down
    assert lead >= 0  # the delay is about half the filter, never more than all of it
    return _Design(up, down, taps, delay, frames, bank, column_sum, lead)


@cache
def _phases(up: int, down: int) -> bytes:
    """The kernel's coefficients: for each phase p, the taps of output columns of phase p
    in the order they meet the window's inputs (float64, in units of 2**-_COEF_BITS)."""
    d = _design(up, down)
    phases = np.zeros((up, d.taps))
    for p in range(up):
        # A column c of the bank with phase p reads rows i0 .. i0 + taps - 1 of its window.
        column = next(c for c in range(d.frames * up) if c * down % up == p)
        i0 = column * down // up
        phases[p] = d.bank[i0 : i0 + d.taps, column]
    return phases.tobytes()


@cache
def _scaled_bank(up: int, down: int, bits: int) -> _F64:
    """The bank times 2**-bits (exact, a power of two): bits = _COEF_BITS gives the
    coefficients themselves."""
    bank: _F64 = _design(up, down).bank * 2.0**-bits
    bank.flags.writeable = False
    return bank


class PolyphaseResampler:
    """Resamples one mono stream by ``up / down`` (see :func:`polyphase_ratio`).

    :meth:`process` returns every output sample whose input has arrived, less the filter's
    group delay (:attr:`delay` samples, held back until more input or :meth:`flush`);
    :meth:`flush` returns the rest. Over the whole stream ``ceil(n_in · up / down)`` samples
    come out, the same ones however the input was cut. ``peak`` bounds the input's magnitude
    (the caller keeps it within: past it the sums could stop being exact) and sets the grid
    float input is rounded to, about 2**-40 of ``peak``, far below anything audible; integer
    input is taken as it is. :meth:`process_s16` and :meth:`flush_s16` do the same for S16LE
    bytes in and out, in fewer steps: the samples of :meth:`process`, rounded and clipped.
    """

    def __init__(self, up: int, down: int, peak: float) -> None:
        if not (1 <= up <= MAX_FACTOR and 1 <= down <= MAX_FACTOR) or math.gcd(up, down) != 1:
            raise ValueError(f"unsupported ratio {up}/{down}")
        if not peak > 0:
            raise ValueError(f"peak must be positive, got {peak}")
        self._d = d = _design(up, down)
        self._up = up
        self._down = down
        # Grid for float input: every partial sum, at most peak · 2**in_bits · column_sum (in
        # units of the coefficients), stays below 2**52, so float64 adds it exactly.
        self._in_bits = math.floor(52 - math.log2(peak) - math.log2(d.column_sum))
        self._in_scale = 2.0**self._in_bits
        # The inputs from the first input of the next output's row on, as the raw bytes of
        # self._dtype: int16 samples as they came while every input so far was int16 (the
        # converter's case), else float64 multiples of the grid. At first the `lead` zeros
        # before the stream.
        self._dtype: np.dtype[np.int16] | np.dtype[np.float64] = _S16
        self._hist = bytes(_S16.itemsize * d.lead)
        # The coefficients in the units that make each output the products' sum itself.
        self._bank = _scaled_bank(up, down, _COEF_BITS)
        self._row_out = d.frames * up
        self._row_in = d.frames * down
        self._width = self._row_in + d.taps - 1
        self._rows_per_product = max(1, _MAX_PRODUCT // d.bank.size)
        self._n_in = 0
        # The filter's next output to compute, counted from its first (the first `delay` of
        # them are dropped).
        self._first = d.delay
        # The compiled kernel, if built (for S16LE in and out), and each phase's coefficients.
        self._kernel = _kernel
        self._phases = _phases(up, down) if _kernel is not None else b""
        # While every input is S16LE, the whole stream in the kernel: the inputs held, those
        # counted and the next output kept there, a chunk one call (handed back by _unwind()).
        self._native: _polyphase.Stream | None = None
        if _Stream is not None:
            self._native = _Stream(
                self._phases, up, down, d.taps, self._row_out, self._row_in, d.delay, d.lead
            )
        #: S16LE in, S16LE out: :meth:`process_s16`, or the kernel's own when it has the stream.
        self.s16 = self.process_s16 if self._native is None else self._native.process

    def compiled_s16(self) -> bool:
        """Whether :attr:`s16` is the compiled kernel's own (it has the stream's state)."""
        return self._native is not None and self.s16 == self._native.process

    @property
    def delay(self) -> int:
        """The filter's group delay, in output samples."""
        return self._d.delay

    def process(self, x: npt.NDArray[np.number]) -> _F32:
        """Feed input samples (within ``±peak``); returns the output samples they complete."""
        self._unwind()
        self._n_in += x.size
        data = x.tobytes() if x.dtype == _S16 and self._dtype is _S16 else self._quantize(x)
        s = self._run(data, -(-self._n_in * self._up // self._down))
        return np.zeros(0, np.float32) if s is None else s.astype(np.float32)

    def flush(self) -> _F32:
        """End of stream: the last outputs, as if zeros followed the input."""
        self._unwind()
        s = self._run(b"", -(-self._n_in * self._up // self._down) + self._d.delay)
        return np.zeros(0, np.float32) if s is None else s.astype(np.float32)

    def process_s16(self, data: bytes) -> bytes:
        """:meth:`process` for S16LE bytes (whole samples), returning S16LE bytes: the samples
        :meth:`process` returns, rounded to the nearest integer and clipped."""
        if self._native is not None:
            return self._native.process(data)
        if len(data) & 1:
            raise ValueError("S16LE data must hold whole samples")
        self._n_in += len(data) >> 1
        end = -(-self._n_in * self._up // self._down)
        if self._dtype is not _S16:
            return _s16(self._run(self._quantize(np.frombuffer(data, _S16)), end))
        if self._kernel is not None:
            return self._run_native(data, end)
        return _s16(self._run(data, end))

    def flush_s16(self) -> bytes:
        """:meth:`flush` as S16LE bytes, like :meth:`process_s16`."""
        if self._native is not None:
            return self._native.flush()
        end = -(-self._n_in * self._up // self._down) + self._d.delay
        if self._dtype is _S16 and self._kernel is not None:
            return self._run_native(b"", end)
        return _s16(self._run(b"", end))

    def _unwind(self) -> None:
        """Take the stream's state back from the kernel's :class:`Stream`, if it has it (the
        kernel then runs one chunk a call, as :meth:`_run_native`)."""
        native = self._native
        if native is not None:
            self._native = None
            self.s16 = self.process_s16
            self._hist, self._n_in, self._first = native.state()

    def _run_native(self, data: bytes, end: int) -> bytes:
        """:meth:`_run` and :func:`_s16` in the compiled kernel: the same window of int16
        inputs, the same outputs, as S16LE."""
        window = self._window(data, end)
        if window is None:
            return b""
        buf, _rows, start, count = window
        kernel = self._kernel
        assert kernel is not None
        return kernel(buf, self._phases, self._up, self._down, self._d.taps, start, count)

    def _run(self, data: bytes, end: int) -> _F64 | None:
        """Appends ``data`` (raw ``self._dtype``) to the inputs and returns the filter's
        outputs before ``end`` not yet returned (``None`` if none); keeps what later outputs
        need of the inputs."""
        window = self._window(data, end)
        if window is None:
            return None
        buf, rows, start, count = window
        size = self._dtype.itemsize
        row_out = self._row_out
        # The rows overlap (by taps - 1 inputs): copied, as float64, into one matrix for BLAS.
        windows = np.ndarray((rows, self._width), self._dtype, buf, 0, (self._row_in * size, size))
        step = self._rows_per_product
        if rows <= step:
            out: _F64 = np.dot(windows.astype(np.float64), self._bank)
        else:
            out = np.empty((rows, row_out))
            for r in range(0, rows, step):
                n = min(step, rows - r)
                np.dot(windows[r : r + n].astype(np.float64), self._bank, out=out[r : r + n])
        return out.reshape(-1)[start : start + count]

    def _window(self, data: bytes, end: int) -> tuple[bytes, int, int, int] | None:
        """Appends ``data`` (raw ``self._dtype``) to the inputs; for the outputs before ``end``
        not yet returned (``None`` if none), the inputs they read (from the first input of
        the row holding the first of them on), the rows they are in, the first one's place in
        those rows' outputs, and their count. Keeps what later outputs need of the inputs."""
        first = self._first
        if end <= first:
            if data:
                self._hist += data
            return None
        row_out = self._row_out
        row_in = self._row_in
        size = self._dtype.itemsize
        # The rows holding outputs first .. end - 1; row q reads the inputs from
        # q·row_in - (taps - 1) on, and the buffer starts at the first row's first input.
        q0 = first // row_out
        rows = -(-end // row_out) - q0
        hist = self._hist
        arrived = len(hist) + len(data)
        # Inputs past the stream's end meet zero coefficients in every output kept (or are the
        # zeros that flush() promises): zeros.
        missing = ((rows - 1) * row_in + self._width) * size - arrived
        buf = hist + data + bytes(missing) if missing > 0 else hist + data
        self._first = end
        # Keep the inputs from the next output's row on (those that have arrived).
        self._hist = buf[(end // row_out - q0) * row_in * size : arrived]
        return buf, rows, first - q0 * row_out, end - first

    def _quantize(self, x: npt.NDArray[np.number]) -> bytes:
        """``x`` on the grid, as raw float64; the first time, the inputs held too."""
        if self._dtype is _S16:
            held = np.frombuffer(self._hist, _S16)
            self._hist = np.multiply(held, self._in_scale, dtype=np.float64).tobytes()
            self._dtype = _F64_DTYPE
            self._bank = _scaled_bank(self._up, self._down, _COEF_BITS + self._in_bits)
        q: _F64 = np.multiply(x, self._in_scale, dtype=np.float64)
        if x.dtype.kind == "f":  # integers times a power of two are on the grid already
            np.rint(q, out=q)
        return q.tobytes()


def _s16(s: _F64 | None) -> bytes:
    """Output samples as S16LE: rounded to float32 (as :meth:`PolyphaseResampler.process`
    returns them), then to integers, clipped."""
    if s is None:
        return b""
    y = s.astype(np.float32)
    np.rint(y, out=y)
    np.minimum(y, _S16_MAX, out=y)  # the filter's ringing can overshoot full scale
    np.maximum(y, _S16_MIN, out=y)
    return y.astype(_S16).tobytes()
