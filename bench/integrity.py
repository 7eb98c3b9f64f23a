"""Audio integrity by content: what each answer of the fault soak must hold, and the check of
what a caller received.

Every answer of the soak's upstreams is a sample sequence derived from the voice that speaks it
and the text it speaks (each request's text is unique): noise from a generator seeded with a
hash of the two. The caller asks for the upstream's own rate, so the gateway passes the audio
through unresampled, and what arrives can be compared byte for byte with what each voice of the
chain would have said. A repeated chunk, a lost one, a shifted byte or a stream that switches
voices midway cannot go unnoticed: each leaves a byte sequence no voice would have sent.

Verdicts (:class:`Verdict`):

- ``complete``: exactly one voice's whole answer;
- ``cut``: the start of one voice's answer, nothing else (the caller hung up, or the upstream
  went silent mid-answer and the stream was ended early);
- ``empty``: no audio;
- ``duplicated``: one voice's answer, then audio it had already sent;
- ``skipped``: one voice's answer with audio missing in the middle;
- ``mixed``: one voice's answer, then another voice's audio;
- ``garbled``: anything else (an odd byte count, bytes no voice sent).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: Verdicts of audio that is one voice's answer, or the start of it.
SOUND = frozenset({"complete", "cut", "empty"})
#: How much of the audio after a divergence is looked for elsewhere (32 samples of noise:
#: no accidental match).
_PROBE_BYTES = 64


def answer_samples(seconds: float, rate: int, chunk_ms: int = 20) -> int:
    """Samples in an answer of ``seconds`` at ``rate``: whole ``chunk_ms`` chunks, at least one."""
    chunks = max(1, round(seconds * 1000 / chunk_ms))
    return chunks * rate * chunk_ms // 1000


def expected_pcm(voice: str, text: str, samples: int) -> bytes:
    """The S16LE answer of ``voice`` speaking ``text``: ``samples`` samples of noise seeded by
    both (deterministic; a different voice or text gives unrelated audio)."""
    seed = int.from_bytes(
        hashlib.blake2b(f"{voice}\0{text}".encode(), digest_size=8).digest(), "little"
    )
    noise = np.random.default_rng(seed).integers(-16000, 16000, samples, dtype=np.int16)
    return noise.astype("<i2").tobytes()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an answer was: ``kind`` (see the module docstring), the voice it started as (None
    when it matches none) and, for a bad answer, where it went wrong."""

    kind: str
    voice: str | None = None
    detail: str = ""

    @property
    def sound(self) -> bool:
        """Whether the audio is one voice's answer or its start, and nothing else."""
        return self.kind in SOUND


def _common_prefix(a: bytes, b: bytes) -> int:
    """Bytes ``a`` and ``b`` share from their start, in whole samples."""
    n = min(len(a), len(b)) // 2
    if n == 0:
        return 0
    x = np.frombuffer(a, dtype=np.int16, count=n)
    y = np.frombuffer(b, dtype=np.int16, count=n)
    differ = np.flatnonzero(x != y)
    return 2 * (int(differ[0]) if differ.size else n)


def _find_samples(haystack: bytes, probe: bytes) -> int:
    """Where ``probe`` occurs in ``haystack`` at a sample boundary (-1: nowhere)."""
    at = haystack.find(probe)
    while at >= 0 and at % 2:
        at = haystack.find(probe, at + 1)
    return at


def check(body: bytes, expected: Mapping[str, bytes]) -> Verdict:
    """The verdict on ``body`` given the whole answer each candidate voice would have sent."""
    if len(body) % 2:
        return Verdict("garbled", None, f"{len(body)} bytes: not whole samples")
    if not body:
        return Verdict("empty")
    shared = {voice: _common_prefix(body, pcm) for voice, pcm in expected.items()}
    for voice, pcm in expected.items():
        if shared[voice] == len(body):
            return Verdict("complete" if len(body) == len(pcm) else "cut", voice)
    started = max(shared, key=lambda v: shared[v]) if shared else None
    if started is None or shared[started] == 0:
        return Verdict("garbled", None, "the first sample is no voice's")
    voice, at = started, shared[started]
    probe = body[at : at + _PROBE_BYTES]
    own = expected[voice]
    where = f"after {at // 2} samples of {voice}"
    found = _find_samples(own, probe)
    if 0 <= found < at:
        return Verdict("duplicated", voice, f"{where}, audio from sample {found // 2} again")
    if found > at:
        return Verdict("skipped", voice, f"{where}, {(found - at) // 2} samples missing")
    for other, pcm in expected.items():
        if other != voice and (found := _find_samples(pcm, probe)) >= 0:
            return Verdict("mixed", voice, f"{where}, {other}'s audio from sample {found // 2}")
    if at == len(own):
        return Verdict("garbled", voice, f"{len(body) - at} bytes after the whole answer")
    return Verdict("garbled", voice, f"{where}, bytes no voice sent")
