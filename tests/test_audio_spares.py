"""soxr resamplers made ahead: a stream's first piece takes a spare instead of making one on
its first-byte path, the audio is what a resampler made then gives, and the spares are few."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soxr

import gateway.audio as audio
from gateway.audio import SPARE_KINDS, SPARES, SPARES_PER_KIND, Converter
from providers.base import AudioFormat


@pytest.fixture(autouse=True)
def _no_spares() -> None:
    SPARES.clear()


def _made(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, str, bool]]:
    """Every soxr resampler made from now on, by kind."""
    made: list[tuple[int, int, str, bool]] = []
    make = audio._make_soxr

    def counting(kind: tuple[int, int, str, bool]) -> soxr.ResampleStream:
        made.append(kind)
        return make(kind)

    monkeypatch.setattr(audio, "_make_soxr", counting)
    return made


def _speech(seconds: float, rate: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 3100 * t)
    return np.round(x * 32767).astype("<i2").tobytes()


#: A whole clip of the local voice's rate, asked for at 48 kHz: soxr's block filter (a ratio
#: the polyphase filter does not take, 320/147).
RATE, OUT = 22050, 48000
KIND = (RATE, OUT, "HQ", False)


def _whole(converter: Converter, data: bytes) -> bytes:
    first, rest = converter.feed_first(data)
    return first + converter.feed(rest) + converter.flush()


async def test_a_first_piece_takes_a_spare_and_one_is_made_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = _made(monkeypatch)
    clip = _speech(1.0, RATE)  # a whole clip at once: soxr's block filter
    kind = KIND
    first = Converter(AudioFormat(RATE), OUT)
    first_audio = _whole(first, clip)
    assert made == [kind]  # none held yet: made on the spot
    assert SPARES.held(*kind) == 0
    await asyncio.sleep(0)  # the loop comes round
    assert made == [kind, kind] and SPARES.held(*kind) == 1
    second = Converter(AudioFormat(RATE), OUT)
    second_first, rest = second.feed_first(clip)
    assert len(made) == 2  # the spare taken: nothing made for the first audio
    assert second_first
    assert second_first + second.feed(rest) + second.flush() == first_audio
    await asyncio.sleep(0)
    assert len(made) == 3 and SPARES.held(*kind) == 1


async def test_spares_are_few(monkeypatch: pytest.MonkeyPatch) -> None:
    made = _made(monkeypatch)
    clip = _speech(0.5, RATE)
    for _ in range(3):  # several streams of one kind in one turn: one spare made after
        _whole(Converter(AudioFormat(RATE), OUT), clip)
    await asyncio.sleep(0)
    assert len(made) == 4 and SPARES.held(*KIND) == 1
    for _ in range(2 * SPARES_PER_KIND):
        _whole(Converter(AudioFormat(RATE), OUT), clip)
        await asyncio.sleep(0)
    assert SPARES.held(*KIND) <= SPARES_PER_KIND
    # Rates whose whole clips take soxr's block filter to 24 kHz (none of them a ratio the
    # kernel upsamples in integers).
    rates = [7350, 11025, 14700, 16000, 22050, 32000, 44100, 48000, 96000]
    for rate in rates[: SPARE_KINDS + 1]:  # one kind more than are kept
        _whole(Converter(AudioFormat(rate), 24000), _speech(0.5, rate))
        await asyncio.sleep(0)
    kinds = [(rate, 24000, "HQ", False) for rate in rates[: SPARE_KINDS + 1]]
    assert len(made) == 4 + 2 * SPARES_PER_KIND + 2 * len(kinds)  # each: one now, one after
    assert SPARES.held(*KIND) == 0  # the least recently asked for: gone
    assert [SPARES.held(*kind) for kind in kinds[1:]] == [1] * SPARE_KINDS


def test_off_the_event_loop_nothing_is_made_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    made = _made(monkeypatch)
    clip = _speech(1.0, RATE)
    for _ in range(2):
        _whole(Converter(AudioFormat(RATE), OUT), clip)
    assert len(made) == 2 and SPARES.held(*KIND) == 0


def test_a_loop_that_stopped_before_making_its_spare_holds_up_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = _made(monkeypatch)
    clip = _speech(1.0, RATE)
    kind = KIND

    def one_stream() -> None:
        _whole(Converter(AudioFormat(RATE), OUT), clip)

    first = asyncio.new_event_loop()

    def take_and_stop() -> None:  # the loop's last turn: its spare is never made
        one_stream()
        first.stop()

    first.call_soon(take_and_stop)
    first.run_forever()
    first.close()
    assert made == [kind] and SPARES.held(*kind) == 0

    async def then() -> int:
        one_stream()
        await asyncio.sleep(0)
        return SPARES.held(*kind)

    assert asyncio.run(then()) == 1  # another loop makes one
    assert made == [kind, kind, kind]
