"""The polyphase resampler's compiled kernel (gateway/_polyphase.c): the same bytes as numpy's
path at every ratio the resampler takes, however the stream is cut, in both of its builds
(AVX2 and the portable one), whether it runs a chunk a call (``run_s16``) or keeps the
stream's state itself (``Stream``), and on a CPU with AVX-512 VL and VNNI the kernels that
take every phase of an upsampling ratio at once against the one taking a phase a pass; its
arguments checked before it reads a sample. It is built wherever a C compiler was at hand at
install: CI installs one, so there it must be present."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from gateway import polyphase
from gateway.polyphase import MAX_FACTOR, PolyphaseResampler
from tests.deploy_support import REPO, in_ci, tool

RATIOS = [
    (up, down)
    for up in range(1, MAX_FACTOR + 1)
    for down in range(1, MAX_FACTOR + 1)
    if (up, down) != (1, 1) and math.gcd(up, down) == 1
]


def built() -> ModuleType:
    """The kernel the package was built with; missing, the test is skipped (fails in CI)."""
    try:
        from gateway import _polyphase
    except ImportError:
        message = "gateway._polyphase is not built (no C compiler at install)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    assert _polyphase.kernel() == polyphase.KERNEL
    assert _polyphase.integer_kernel() == polyphase.INTEGER_KERNEL
    return _polyphase


#: How a resampler runs S16LE: the kernel keeping the stream's state, the kernel a chunk a
#: call (the resampler keeping it), numpy.
PATHS = ("stream", "chunk", "numpy")


def pin(r: PolyphaseResampler, kernel: ModuleType | None, path: str) -> PolyphaseResampler:
    """``r`` running S16LE on ``path``, with ``kernel``'s build."""
    d = r._d
    r._kernel = None if path == "numpy" else kernel.run_s16 if kernel else None
    r._native = None
    if path == "stream":
        assert kernel is not None
        r._native = kernel.Stream(
            r._phases, r._up, r._down, d.taps, r._row_out, r._row_in, d.delay, d.lead
        )
    r.s16 = r.process_s16
    return r


def through(
    r: PolyphaseResampler,
    kernel: ModuleType | None,
    data: bytes,
    cuts: list[int],
    path: str = "stream",
) -> bytes:
    """``data`` through ``r`` cut at ``cuts`` (sample positions), then its flush, with
    ``kernel``'s build on ``path``."""
    pin(r, kernel, path)
    out, pos = [], 0
    for cut in [*cuts, len(data) // 2]:
        out.append(r.process_s16(data[2 * pos : 2 * cut]))
        pos = cut
    out.append(r.flush_s16())
    return b"".join(out)


def signal(rng: np.random.Generator, n: int) -> bytes:
    """Noise at a random level with stretches at full scale (the filter overshoots them: the
    outputs clip) and of silence."""
    x = rng.normal(0, rng.choice([30.0, 3000.0, 20000.0]), n).clip(-32768, 32767)
    for _ in range(3):
        start = int(rng.integers(0, n))
        x[start : start + int(rng.integers(1, 200))] = rng.choice([32767, -32768, 0])
    return x.astype("<i2").tobytes()


def same_as_numpy(kernel: ModuleType, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for up, down in RATIOS:
        for _ in range(6):
            n = int(rng.integers(1, 6000))
            data = signal(rng, n)
            cuts = sorted(int(c) for c in rng.integers(0, n + 1, int(rng.integers(0, 25))))
            if rng.random() < 0.3:
                cuts = list(range(1, min(n, 300)))  # a sample at a time, for a while
            expected = through(PolyphaseResampler(up, down, 32768.0), None, data, cuts, "numpy")
            for path in PATHS[:2]:
                got = through(PolyphaseResampler(up, down, 32768.0), kernel, data, cuts, path)
                assert got == expected, (path, up, down, n, cuts)
            assert len(expected) // 2 == -(-n * up // down)


def test_the_kernel_gives_numpy_s_bytes_at_every_ratio() -> None:
    same_as_numpy(built(), seed=1)


def build(tmp_path: Path, define: str) -> ModuleType:
    """The kernel compiled here with ``define`` set (as the package's build would be on a
    machine without the features it leaves out), loaded beside the one in use."""
    compiler = tool("gcc", "apt-get install gcc")
    built()
    target = tmp_path / f"_polyphase{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    subprocess.run(
        [
            *(compiler, "-O2", "-shared", "-fPIC", f"-D{define}"),
            *(f"-I{include}", str(REPO / "gateway" / "_polyphase.c"), "-o", str(target)),
        ],
        check=True,
        capture_output=True,
    )
    spec = importlib.util.spec_from_file_location("_polyphase", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_portable_build_gives_the_same_bytes(tmp_path: Path) -> None:
    # The baseline build (no AVX2).
    portable = build(tmp_path, "GATEWAY_POLYPHASE_PORTABLE")
    assert portable.kernel() == "portable"
    assert portable.integer_kernel() == "none"
    same_as_numpy(portable, seed=2)


def cpu_flags() -> set[str]:
    """This machine's CPU flags (``/proc/cpuinfo``)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_the_phases_at_once_give_a_phase_a_pass_s_bytes(tmp_path: Path) -> None:
    # On a CPU with AVX-512 VL and VNNI, an up == 2, 3 or 6 stream takes all its phases in one
    # pass (run_intn); the build without it takes a phase a pass
    # (run_int_avx2). Both are checked against numpy above and here; here also against each
    # other on streams whose first output is not the first of a group of `up` (delays that
    # are not multiples of it), which the resampler's own streams never start on.
    kernel = built()
    flags = cpu_flags()
    avx2 = kernel.kernel() == "avx2"
    at_once = avx2 and {"avx512vl", "avx512_vnni"} <= flags
    assert kernel.integer_kernel() == ("avx512vnni" if at_once else "avx2" if avx2 else "none")
    a_phase_a_pass = build(tmp_path, "GATEWAY_POLYPHASE_NO_AVX512")
    assert a_phase_a_pass.integer_kernel() == ("avx2" if avx2 else "none")
    same_as_numpy(a_phase_a_pass, seed=3)
    rng = np.random.default_rng(5)
    for up in (2, 3, 6):
        r = PolyphaseResampler(up, 1, 32768.0)
        taps, lead = r._d.taps, r._d.lead
        for delay in (r._d.delay, r._d.delay - 1, 1, up + 1):
            for _ in range(3):
                n = int(rng.integers(1, 3000))
                data = signal(rng, n)
                cuts = sorted(int(c) for c in rng.integers(0, n + 1, int(rng.integers(0, 12))))
                outs = []
                for module in (kernel, a_phase_a_pass):
                    stream = module.Stream(
                        r._phases, up, 1, taps, r._row_out, r._row_in, delay, lead
                    )
                    assert stream.integer == avx2
                    pieces, pos = [], 0
                    for cut in [*cuts, n]:
                        pieces.append(stream.process(data[2 * pos : 2 * cut]))
                        pos = cut
                    pieces.append(stream.flush())
                    outs.append(b"".join(pieces))
                assert outs[0] == outs[1], (up, delay, n, cuts)
                # up * n outputs: the first `delay` held back as the filter's, then flushed.
                assert len(outs[0]) == 2 * up * n, (up, delay, n)


def test_a_stream_keeps_the_kernel_it_started_with_through_float_input() -> None:
    # Float input moves the resampler to numpy's float path for good; S16LE after it is the
    # same stream as numpy's throughout.
    kernel = built()
    rng = np.random.default_rng(3)
    x = rng.integers(-20000, 20000, 3000).astype("<i2")
    outs = []
    for path in PATHS:
        r = pin(PolyphaseResampler(2, 3, 32768.0), kernel, path)
        a = r.process_s16(x[:1000].tobytes())
        b = r.process(x[1000:2000].astype(np.float32))
        c = r.process_s16(x[2000:].tobytes())
        outs.append((a, b.tobytes(), c, r.flush_s16()))
    assert outs[0] == outs[1] == outs[2]


def test_a_stream_left_to_the_kernel_is_the_resampler_s_default() -> None:
    # The converter's call (``s16``) goes straight to the kernel's Stream, and a stream of
    # int16 arrays through process() (the resampler keeping the state) gives the same.
    kernel = built()
    rng = np.random.default_rng(4)
    x = rng.integers(-20000, 20000, 4000).astype("<i2")
    r = PolyphaseResampler(1, 2, 32768.0)
    assert isinstance(r._native, kernel.Stream) and r.s16 == r._native.process
    whole = b"".join(r.s16(x[i : i + 480].tobytes()) for i in range(0, 4000, 480))
    whole += r.flush_s16()
    arrays = PolyphaseResampler(1, 2, 32768.0)
    parts = [arrays.process(x[i : i + 700]) for i in range(0, 4000, 700)]
    parts.append(arrays.flush())
    assert arrays._native is None  # handed back at the first process()
    assert whole == np.rint(np.concatenate(parts)).astype("<i2").tobytes()
    assert len(whole) // 2 == 2000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((64, 2, 1, 4, 32, 16, 3, 4), "wrong size"),  # 2 phases x 4 taps are 64 bytes
        ((64, 7, 1, 4, 32, 16, 3, 4), "out of range"),  # a factor past MAX_FACTOR
        ((64, 2, 0, 4, 32, 16, 3, 4), "out of range"),
        ((64, 2, 1, 4, 0, 16, 3, 4), "out of range"),
        ((64, 2, 1, 4, 32, 0, 3, 4), "out of range"),
        ((64, 2, 1, 4, 32, 16, -1, 4), "out of range"),
        ((64, 2, 1, 4, 32, 16, 3, 21), "out of range"),  # more lead than a row's window
    ],
)
def test_a_kernel_stream_checks_its_arguments(args: tuple[int, ...], message: str) -> None:
    kernel = built()
    size, *rest = args
    coefficients = bytes(size if message != "wrong size" else size - 1)
    with pytest.raises(ValueError, match=message):
        kernel.Stream(coefficients, *rest)


def test_an_upsampling_stream_runs_the_integer_path_where_it_is_exact() -> None:
    # In the AVX2 build a stream that only upsamples (down == 1) takes its sums in int32 parts
    # (the ratios' bytes checked against numpy's above); other ratios, and coefficients that
    # are not integers below 2**24 or whose sums could leave an int32, keep float64.
    kernel = built()
    avx2 = kernel.kernel() == "avx2"
    for up, down in RATIOS:
        r = PolyphaseResampler(up, down, 32768.0)
        assert r._native is not None and r._native.integer == (avx2 and down == 1), (up, down)
    cases = [
        (np.array([[1, 2, 3, 4], [-5, 6, 7, 8]]) * 2.0**20, avx2),
        (np.array([[1, 2, 3, 4], [5, 6, 7, 2**24]]), False),  # a coefficient too large
        (np.array([[1, 2, 3, 4], [5, 6, 7.5, 8]]), False),  # not an integer
        (np.zeros((2, 4)), avx2),
    ]
    for coefficients, integer in cases:
        stream = kernel.Stream(coefficients.tobytes(), 2, 1, 4, 32, 16, 3, 4)
        assert stream.integer == integer, coefficients
    # 512 = 1 * 2**10 - 512: the low part's sum of |part| over 127 taps is 65024, times 2**15
    # just within an int32; over 128, 2**31, past it.
    for taps, integer in ((127, avx2), (128, False)):
        c = np.full((2, taps), 512.0)
        stream = kernel.Stream(c.tobytes(), 2, 1, taps, 32, 16, 0, 0)
        assert stream.integer == integer, taps
        # At the limit, full scale: the integer path's bytes are the float64 path's.
        x = np.full(3 * taps, -32768, "<i2")
        x[::7] = 32767
        got = stream.process(x.tobytes()) + stream.flush()
        n = 2 * x.size
        window = np.concatenate([x, np.zeros(taps, "<i2")]).tobytes()
        assert got == kernel.run_s16(window, c.tobytes(), 2, 1, taps, 0, n)
        assert len(got) == 2 * n


def test_a_kernel_stream_takes_whole_samples_and_refuses_use_unmade() -> None:
    kernel = built()
    stream = kernel.Stream(bytes(64), 2, 1, 4, 32, 16, 3, 4)
    with pytest.raises(ValueError, match="whole samples"):
        stream.process(b"\0\0\0")
    assert stream.state() == (bytes(8), 0, 3)  # the lead's zeros held, nothing counted
    unmade = kernel.Stream.__new__(kernel.Stream)
    for call in (lambda: unmade.process(b""), unmade.flush, unmade.state):
        with pytest.raises(RuntimeError, match="not initialised"):
            call()


@pytest.mark.parametrize(
    ("samples", "coefficients", "up", "down", "taps", "start", "n", "message"),
    [
        (10, 63, 2, 1, 4, 0, 1, "wrong size"),  # 2 phases x 4 taps are 64 bytes
        (9, 64, 2, 1, 4, 0, 1, "wrong size"),  # half a sample
        (10, 64, 2, 1, 4, 0, 5, "end before the last window"),  # output 4 reads inputs 2 .. 5
        (10, 64, 7, 1, 4, 0, 1, "out of range"),  # a factor past MAX_FACTOR
        (10, 64, 2, 0, 4, 0, 1, "out of range"),
        (10, 64, 2, 1, 0, 0, 1, "out of range"),
        (10, 64, 2, 1, 4, -1, 1, "out of range"),
        (10, 64, 2, 1, 4, 0, -1, "out of range"),
        (10, 64, 2, 1, 4, 2**62, 1, "out of range"),
    ],
)
def test_the_kernel_checks_its_arguments_before_reading(
    samples: int, coefficients: int, up: int, down: int, taps: int, start: int, n: int, message: str
) -> None:
    kernel = built()
    with pytest.raises(ValueError, match=message):
        kernel.run_s16(bytes(samples), bytes(coefficients), up, down, taps, start, n)


def test_the_kernel_reads_a_window_exactly_as_long_as_needed() -> None:
    # Outputs 0 .. 3 at 2/1 with 4 taps read inputs 0 .. 4 (output j: from j // 2 on): five
    # samples are enough, four are not; the sums are those of the formula.
    kernel = built()
    g = np.array([[1, 2, 3, 4], [10, 20, 30, 40]], np.float64) * 2.0**24
    x = np.array([1, 2, 3, 4, 5], "<i2")
    got = np.frombuffer(kernel.run_s16(x.tobytes(), g.tobytes(), 2, 1, 4, 0, 4), "<i2")
    expected = [
        sum(int(x[j // 2 + k]) * int(g[j % 2][k] / 2**24) for k in range(4)) for j in range(4)
    ]
    assert got.tolist() == expected
    with pytest.raises(ValueError):
        kernel.run_s16(x[:4].tobytes(), g.tobytes(), 2, 1, 4, 0, 4)
