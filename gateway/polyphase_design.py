"""The polyphase resampler's lowpass filters (:mod:`gateway.polyphase`): their design, their
measurement, and the table of them the package ships (``polyphase_filters.json``).

One prototype per factor ``M = max(up, down)`` (2 to :data:`~gateway.polyphase.MAX_FACTOR`),
at unit gain, at ``M`` times the lower of the two rates: equiripple, from the Parks-McClellan
exchange (``scipy.signal.remez``), the shortest odd length that holds the spec when measured
on a fine grid (:func:`measure`): within :data:`~gateway.polyphase.RIPPLE_DB` of unity up to
:data:`~gateway.polyphase.PASSBAND` of the lower Nyquist frequency, at least
:data:`~gateway.polyphase.STOPBAND_DB` down from that Nyquist frequency on. A Kaiser-windowed
sinc with the same stopband is ~25 % longer, since its passband is far flatter than the spec
asks (its ripple equals its stopband's); an equiripple filter spends the spec's passband ripple
to shorten the filter, so each output takes fewer multiply-adds and the stream holds back less.

The gateway reads the table and needs nothing else; scipy is needed only to write it::

    python -m gateway.polyphase_design          # rewrite gateway/polyphase_filters.json

``tests/test_polyphase.py`` measures every shipped filter against the spec and checks that the
table is what this design gives.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .polyphase import FILTERS_FILE, MAX_FACTOR, PASSBAND, RIPPLE_DB, STOPBAND_DB

#: Frequency points of the measurement (from 0 to half the prototype's rate).
GRID: int = 1 << 17

#: The spec, as the table records it.
SPEC: dict[str, float] = {"passband": PASSBAND, "ripple_db": RIPPLE_DB, "stopband_db": STOPBAND_DB}

#: The spec's largest errors of the gain: above or below unity in the passband, in the stopband.
_PASSBAND_ERROR = 10 ** (RIPPLE_DB / 20) - 1
_STOPBAND_ERROR = 10 ** (-STOPBAND_DB / 20)


def measure(h: npt.NDArray[np.float64], factor: int) -> tuple[float, float]:
    """``(ripple, stopband)`` of the unit-gain prototype ``h`` for ``factor``, in dB: the largest
    deviation of its gain from 0 dB up to :data:`PASSBAND` of the lower Nyquist frequency, and
    its largest gain from that Nyquist frequency on (negative: how far down)."""
    nyquist = 0.5 / factor
    gain = np.abs(np.fft.rfft(h, 2 * GRID))
    freqs = np.arange(gain.size) / (2 * GRID)
    with np.errstate(divide="ignore"):
        db = 20 * np.log10(gain)
    ripple = float(np.abs(db[freqs <= PASSBAND * nyquist]).max())
    stopband = float(db[freqs >= nyquist].max())
    return ripple, stopband


def meets_spec(h: npt.NDArray[np.float64], factor: int) -> bool:
    """Whether the prototype ``h`` for ``factor`` measures within the spec."""
    ripple, stopband = measure(h, factor)
    return ripple <= RIPPLE_DB and stopband <= -STOPBAND_DB


def equiripple(length: int, factor: int) -> npt.NDArray[np.float64] | None:
    """The Parks-McClellan lowpass of ``length`` taps for ``factor``, its errors weighted as the
    spec's (passband ripple against stopband attenuation); None where the exchange does not
    converge at that length."""
    from scipy.signal import remez  # only to write the table: not a dependency of the gateway

    nyquist = 0.5 / factor
    try:
        with warnings.catch_warnings():
            # remez warns when the exchange did not converge: no filter at that length.
            warnings.simplefilter("error", RuntimeWarning)
            h = remez(
                length,
                [0, PASSBAND * nyquist, nyquist, 0.5],
                [1, 0],
                weight=[1, _PASSBAND_ERROR / _STOPBAND_ERROR],
                fs=1.0,
                maxiter=200,
            )
    except (ValueError, RuntimeWarning):
        return None
    return np.asarray(h, dtype=np.float64)


def design(factor: int) -> npt.NDArray[np.float64]:
    """The shortest odd-length equiripple prototype for ``factor`` that meets the spec."""
    # Below Kaiser's estimate of an equiripple filter's length for these errors (their
    # geometric mean, the transition width): every length from there up is tried in turn.
    transition = (1 - PASSBAND) * 0.5 / factor
    estimate = (-20 * math.log10(math.sqrt(_PASSBAND_ERROR * _STOPBAND_ERROR)) - 13) / (
        14.6 * transition
    )
    length = int(0.9 * estimate) | 1
    while True:
        h = equiripple(length, factor)
        if h is not None and meets_spec(h, factor):
            return h
        length += 2
        if length > 4 * estimate:
            raise RuntimeError(f"no filter for factor {factor} up to {length} taps")


def table() -> dict[str, Any]:
    """The shipped table: the spec, and each factor's prototype as its first half and centre
    (the rest is their mirror image)."""
    import scipy

    filters = {}
    for factor in range(2, MAX_FACTOR + 1):
        h = design(factor)
        filters[str(factor)] = [float(c) for c in h[: h.size // 2 + 1]]
    return {
        "spec": SPEC,
        "designed_with": f"scipy.signal.remez (scipy {scipy.__version__})",
        "filters": filters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=FILTERS_FILE, help="where to write it")
    args = parser.parse_args()
    data = table()
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    lengths = {factor: 2 * len(half) - 1 for factor, half in data["filters"].items()}
    print(f"wrote {args.out}: taps by factor {lengths}")


if __name__ == "__main__":
    main()
