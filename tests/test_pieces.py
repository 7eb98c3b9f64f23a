"""Pipelined pieces (``providers._pieces``): :func:`pipelined` against scripted piece streams
whose every step waits for an event the test sets, so that what was requested when is proven
by the order of events, never by timing; and :func:`whole_clip_pieces`'s cuts."""

# ruff: noqa: RUF001  (CJK text is written with its own full-width marks)

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from providers import _pieces
from providers._pieces import LOOKAHEAD, MIN_FIRST_PIECE, pipelined, whole_clip_pieces
from tests.answering_upstream import WholeClipUpstream, clip_of, custom_block
from tests.support import live_server, scripted_config

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float = 10.0) -> T:
    """A deadline on a wait that only a bug would make long."""
    return await asyncio.wait_for(awaitable, seconds)


# ------------------------------------------------------------------ scripted pieces


@dataclass
class Piece:
    """One piece's stream: each chunk is yielded once its gate is set (None: at once); then
    ``error`` is raised, if any. Everything it does is logged in the script's shared log."""

    name: str
    chunks: list[bytes]
    gates: list[asyncio.Event | None]
    error: Exception | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    asked: int = 0  # chunks asked for so far
    closed: bool = False


class Script:
    """Pieces named "1", "2", … and the log of what happened: ``request N``, ``chunk N.i``
    (yielded by the piece), ``closed N`` (its ``finally`` ran) and ``got N.i`` (the caller
    has it)."""

    def __init__(self) -> None:
        self.pieces: dict[str, Piece] = {}
        self.log: list[str] = []
        self._noted = asyncio.Event()

    def note(self, entry: str) -> None:
        self.log.append(entry)
        self._noted.set()

    async def logged(self, entry: str) -> None:
        """Once ``entry`` is in the log."""
        while entry not in self.log:
            self._noted.clear()
            await within(self._noted.wait())

    def piece(
        self,
        chunks: list[bytes],
        gates: list[asyncio.Event | None] | None = None,
        error: Exception | None = None,
    ) -> Piece:
        name = str(len(self.pieces) + 1)
        piece = Piece(name, chunks, gates or [None] * len(chunks), error)
        self.pieces[name] = piece
        return piece

    @property
    def names(self) -> list[str]:
        return list(self.pieces)

    async def fetch_of(self, name: str) -> AsyncGenerator[bytes, None]:
        piece = self.pieces[name]
        self.note(f"request {name}")
        piece.started.set()
        try:
            for index, (chunk, gate) in enumerate(zip(piece.chunks, piece.gates, strict=True)):
                if gate is not None:
                    await gate.wait()
                piece.asked += 1
                self.note(f"chunk {name}.{index}")
                yield chunk
            if piece.error is not None:
                raise piece.error
        finally:
            piece.closed = True
            self.note(f"closed {name}")
            piece.ended.set()

    def fetch(self, name: str) -> AsyncGenerator[bytes, None]:
        return self.fetch_of(name)

    def stream(self) -> AsyncGenerator[bytes, None]:
        return pipelined(self.names, self.fetch)

    async def read(self, stream: AsyncGenerator[bytes, None]) -> bytes:
        """One chunk of ``stream``, logged as received."""
        chunk = await within(anext(stream))
        self.note(f"got {chunk.decode()}")
        return chunk

    def position(self, entry: str) -> int:
        return self.log.index(entry)


def audio(name: str, count: int) -> list[bytes]:
    """``count`` chunks that say which piece and which chunk they are."""
    return [f"{name}.{i}".encode() for i in range(count)]


async def read_all(stream: AsyncGenerator[bytes, None]) -> bytes:
    return b"".join([chunk async for chunk in stream])


# ------------------------------------------------------------------ pipelined


async def test_the_audio_of_every_piece_in_order_and_exact() -> None:
    script = Script()
    # The later pieces are ready long before the first one ends: order is still the pieces'.
    first_done = asyncio.Event()
    script.piece(audio("1", 3), [None, first_done, None])
    script.piece(audio("2", 4))
    script.piece(audio("3", 1))
    script.piece([b"\x00\x01" * 5000, b"\xff" * 3])
    stream = script.stream()
    first = await script.read(stream)
    await within(script.pieces["2"].ended.wait())  # piece 2 is all in while piece 1 waits
    first_done.set()
    rest = await within(read_all(stream))
    expected = [c for p in script.pieces.values() for c in p.chunks]
    assert first + rest == b"".join(expected)
    assert all(piece.closed for piece in script.pieces.values())


async def test_the_next_piece_is_requested_at_the_first_audio_and_no_further() -> None:
    script = Script()
    hold_1, hold_2 = asyncio.Event(), asyncio.Event()
    script.piece(audio("1", 2), [None, hold_1])
    script.piece(audio("2", 2), [None, hold_2])
    script.piece(audio("3", 2))
    script.piece(audio("4", 1))
    stream = script.stream()
    assert await script.read(stream) == b"1.0"
    # Piece 2 was asked for as soon as piece 1 had audio, before the caller had any.
    assert script.position("chunk 1.0") < script.position("request 2")
    assert script.position("request 2") < script.position("got 1.0")
    # Piece 2 has sent what it has; still, no more than LOOKAHEAD pieces are asked for ahead.
    await script.logged("chunk 2.0")
    assert LOOKAHEAD == 1 and "request 3" not in script.log
    hold_1.set()
    assert await script.read(stream) == b"1.1"
    assert await script.read(stream) == b"2.0"
    # Piece 2 is the one relayed now: piece 3 was asked for when its first audio went out.
    assert script.position("got 1.1") < script.position("request 3")
    assert script.position("request 3") < script.position("got 2.0")
    await within(script.pieces["3"].ended.wait())  # piece 3 all in, piece 2 still waits
    assert "request 4" not in script.log
    hold_2.set()
    assert await within(read_all(stream)) == b"2.13.03.14.0"


async def test_a_first_piece_without_audio_still_leads_to_the_next() -> None:
    script = Script()
    script.piece([])
    script.piece(audio("2", 2))
    script.piece([])
    script.piece(audio("4", 1))
    assert await within(read_all(script.stream())) == b"2.02.14.0"
    assert [e for e in script.log if e.startswith("request")] == [
        "request 1",
        "request 2",
        "request 3",
        "request 4",
    ]


async def test_hanging_up_closes_every_piece_requested_ahead() -> None:
    script = Script()
    never = asyncio.Event()
    script.piece(audio("1", 2), [None, never])
    script.piece(audio("2", 2), [None, never])
    script.piece(audio("3", 1))
    stream = script.stream()
    await script.read(stream)
    await script.logged("chunk 2.0")  # piece 2 is streaming ahead
    await stream.aclose()  # no wait in between: closed by the time it returns
    # Both closed by the time aclose returned (their upstreams with them); nothing more asked.
    assert script.pieces["1"].closed and script.pieces["2"].closed
    assert "request 3" not in script.log


async def test_hanging_up_during_a_later_piece_closes_it_and_the_one_ahead() -> None:
    script = Script()
    never = asyncio.Event()
    script.piece(audio("1", 1))
    script.piece(audio("2", 2), [None, never])
    script.piece(audio("3", 2), [None, never])
    script.piece(audio("4", 1))
    stream = script.stream()
    assert await script.read(stream) == b"1.0"
    assert await script.read(stream) == b"2.0"
    await script.logged("chunk 3.0")
    await stream.aclose()  # no wait in between: closed by the time it returns
    assert all(script.pieces[name].closed for name in "123")
    assert "request 4" not in script.log


async def test_hanging_up_on_a_single_piece_closes_it_at_once() -> None:
    script = Script()
    script.piece(audio("1", 2), [None, asyncio.Event()])
    stream = script.stream()
    await script.read(stream)
    await stream.aclose()  # no wait in between: closed by the time it returns
    assert script.pieces["1"].closed


async def test_a_cancelled_caller_closes_the_pieces_ahead() -> None:
    script = Script()
    never = asyncio.Event()
    script.piece(audio("1", 2), [None, never])
    script.piece(audio("2", 2), [None, never])

    async def relay() -> None:
        async for _ in script.stream():
            pass

    task = asyncio.create_task(relay())
    await script.logged("chunk 2.0")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(task)
    assert script.pieces["1"].closed and script.pieces["2"].closed


async def test_an_error_in_piece_three_surfaces_after_pieces_one_and_two_whole() -> None:
    script = Script()
    hold_2 = asyncio.Event()
    script.piece(audio("1", 2))
    script.piece(audio("2", 3), [None, hold_2, None])
    script.piece([], error=RuntimeError("piece 3 refused"))
    script.piece(audio("4", 1))
    stream = script.stream()
    received = [await script.read(stream) for _ in range(3)]  # 1.0 1.1 2.0
    await within(script.pieces["3"].ended.wait())  # piece 3 has failed already
    hold_2.set()
    with pytest.raises(RuntimeError, match="piece 3 refused"):
        while True:
            received.append(await script.read(stream))
    assert b"".join(received) == b"1.01.12.02.12.2"
    assert "request 4" not in script.log


async def test_a_piece_far_ahead_pauses_at_the_buffer_bound_and_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_pieces, "PIECE_BUFFER", 40)
    script = Script()
    hold_1 = asyncio.Event()
    script.piece(audio("1", 2), [None, hold_1])
    # Piece 2's chunks come without a wait: unbounded, it would be read to its end in one go.
    ahead = script.piece([bytes([i]) * 10 for i in range(100)])
    stream = script.stream()
    await script.read(stream)
    # The reader of piece 2 has run (it started the piece) and given the loop back: it only
    # does so once paused, having held just over the bound.
    await within(ahead.started.wait())
    assert ahead.asked == 5 and not ahead.ended.is_set()
    hold_1.set()
    rest = await within(read_all(stream))
    assert rest == b"1.1" + b"".join(ahead.chunks)  # resumed, every byte in order


# ------------------------------------------------------------------ whole_clip_pieces

SENTENCES = [
    "Thanks for calling the clinic.",
    "Our office opens at nine in the morning and closes at five.",
    "We are closed on weekends and on public holidays.",
    "You can also book an appointment on our website.",
    "Is there anything else I can help you with today?",
    "Goodbye.",
]
TEXT = " ".join(SENTENCES)


def covers(text: str, pieces: list[str]) -> bool:
    """The pieces are the text in order, cut at whitespace (or none), nothing else dropped."""
    position = 0
    for piece in pieces:
        if not piece or piece != piece.strip():
            return False
        found = text.find(piece, position)
        if found < 0 or text[position:found].strip():
            return False
        position = found + len(piece)
    return not text[position:].strip()


def test_the_first_sentence_goes_alone() -> None:
    pieces = whole_clip_pieces(TEXT)
    assert pieces[0] == SENTENCES[0]
    assert " ".join(pieces) == TEXT
    assert len(pieces) > 2


def test_a_tiny_first_sentence_takes_the_next_along() -> None:
    pieces = whole_clip_pieces("Hi. " + TEXT)
    assert len("Hi.") < MIN_FIRST_PIECE
    assert pieces[0] == "Hi. " + SENTENCES[0]
    assert " ".join(pieces) == "Hi. " + TEXT


def test_pieces_at_most_double() -> None:
    text = " ".join(SENTENCES * 6)
    pieces = whole_clip_pieces(text)
    assert " ".join(pieces) == text
    assert all(len(b) <= 2 * len(a) + 1 for a, b in itertools.pairwise(pieces))
    assert len(pieces[-2]) > 4 * len(pieces[0])  # they do grow: few requests for a long text


def test_a_sentence_too_long_to_double_is_cut_between_clauses() -> None:
    long = (
        "Before you come, please bring your card, a list of your medicines, the letter from "
        "your doctor, and any scans you had done elsewhere, so that we can see you on time."
    )
    text = f"{SENTENCES[0]} {long} {SENTENCES[1]}"
    pieces = whole_clip_pieces(text)
    assert pieces[0] == SENTENCES[0]
    assert pieces[1].endswith(",") and len(pieces[1]) <= 2 * len(pieces[0]) + 1
    assert " ".join(pieces) == text


@pytest.mark.parametrize("limit", [40, 80, 200])
def test_every_piece_within_the_limit_as_size_measures(limit: int) -> None:
    text = "Ünïcödé " + " ".join(SENTENCES * 4)

    def size(piece: str) -> int:
        return len(piece.encode())

    pieces = whole_clip_pieces(text, limit, size)
    assert all(size(piece) <= limit for piece in pieces)
    assert " ".join(pieces) == text
    assert size(pieces[0]) <= limit < size(text)


def test_a_cjk_text_is_cut_after_its_marks_and_joins_with_nothing() -> None:
    sentences = [
        "感谢您致电我们的诊所，请问有什么可以帮您？",
        "我们的办公室早上九点开门，下午五点关门。",
        "周末和公共假期我们不营业。",
        "您也可以在我们的网站上预约。",
    ]
    text = "".join(sentences)
    pieces = whole_clip_pieces(text)
    assert pieces[0] == sentences[0]
    assert "".join(pieces) == text
    assert len(pieces) > 2


def test_whitespace_between_sentences_is_kept_inside_a_piece() -> None:
    text = "Thanks for calling the clinic.\n\nOur office opens at nine.  It closes at five."
    pieces = whole_clip_pieces(text)
    assert pieces == [
        "Thanks for calling the clinic.",
        "Our office opens at nine.  It closes at five.",
    ]
    assert covers(text, pieces)


def test_a_text_with_no_sentence_marks_is_one_piece() -> None:
    text = "thanks for calling the clinic how can I help you today"
    assert whole_clip_pieces(text) == [text]
    # Unless the limit says otherwise: then cut at words, within it.
    pieces = whole_clip_pieces(text, 20)
    assert len(pieces) > 1 and all(len(p) <= 20 for p in pieces)
    assert " ".join(pieces) == text


@pytest.mark.parametrize("text", ["", "   ", "One sentence.", "  One sentence, padded.  "])
def test_an_empty_or_single_sentence_text_is_one_piece_as_is(text: str) -> None:
    assert whole_clip_pieces(text) == [text]


@pytest.mark.parametrize(
    "text",
    [
        TEXT,
        'He said "stop." Then he left! Why? Nobody knows... The end.',
        "「你好。」他说。今天天气很好！我们去公园吧？",
        "Mixed text. 中文句子。English again!\tTabs\tinside.",
        "Numbers like 3.5 and 2.0 stay whole. So do e.g. these. " * 5,
    ],
)
def test_the_pieces_are_the_text_in_order(text: str) -> None:
    pieces = whole_clip_pieces(text)
    assert covers(text, pieces)
    assert re.sub(r"\s+", "", "".join(pieces)) == re.sub(r"\s+", "", text)


def test_a_long_hostile_text_is_cut_quickly() -> None:
    import time

    text = ("a" * 50 + ", ") * 2000 + "." + " x." * 20000
    started = time.perf_counter()
    pieces = whole_clip_pieces(text, 5000)
    assert time.perf_counter() - started < 2.0  # seconds if the cut were quadratic
    assert all(len(p) <= 5000 for p in pieces)


# ------------------------------------------------------------------ end to end

FIVE = (
    "Thanks for calling the clinic. Our office opens at nine in the morning. It closes at "
    "five in the afternoon, every weekday. On weekends you can leave us a message. We call "
    "every message back on the next working day."
)


def whole_clip_gateway(upstream: WholeClipUpstream, whole_clip: bool = True) -> str:
    return scripted_config(
        voices={"clinic": {"provider": "clips"}},
        providers={
            "clips": custom_block(upstream.url, sample_rates=[24000], whole_clip=whole_clip)
        },
    )


async def test_the_first_piece_plays_while_the_last_is_still_being_synthesized() -> None:
    pieces = whole_clip_pieces(FIVE)
    assert pieces[0] == "Thanks for calling the clinic." and len(pieces) >= 3
    async with WholeClipUpstream(seconds_per_char=0.001) as upstream:
        last = len(pieces) - 1
        # The last piece's answer waits for the caller's first audio: a gateway that waited
        # for the whole text (or did not cut it) would deliver nothing, ever.
        upstream.holds[last] = first_audio = asyncio.Event()
        async with (
            live_server(create_app(parse_config(whole_clip_gateway(upstream)))) as url,
            httpx.AsyncClient(timeout=30) as client,
            client.stream(
                "POST",
                url + "/stream-audio",
                json={"Text": FIVE, "SampleRate": 24000, "VoiceId": "clinic"},
            ) as response,
        ):
            assert response.status_code == 200
            received = bytearray()
            async for chunk in response.aiter_bytes():
                if not received:
                    upstream.note("caller's first audio")
                    first_audio.set()
                received += chunk
            upstream.note("caller has it all")
    log = upstream.log
    assert log.index("received 1") < log.index("caller has it all")
    assert log.index("caller's first audio") < log.index(f"answered {last}")
    assert upstream.texts == pieces
    assert bytes(received) == b"".join(clip_of(piece) for piece in pieces)


async def test_unsplit_without_whole_clip() -> None:
    async with WholeClipUpstream() as upstream:
        app = create_app(parse_config(whole_clip_gateway(upstream, whole_clip=False)))
        async with live_server(app) as url, httpx.AsyncClient(timeout=30) as client:
            response = await client.post(
                url + "/stream-audio",
                json={"Text": FIVE, "SampleRate": 24000, "VoiceId": "clinic"},
            )
    assert upstream.texts == [FIVE]
    assert response.content == clip_of(FIVE)


async def test_a_caller_hanging_up_closes_the_piece_requested_ahead() -> None:
    async with WholeClipUpstream() as upstream:
        upstream.holds[1] = asyncio.Event()  # the second piece is never done
        async with (
            live_server(create_app(parse_config(whole_clip_gateway(upstream)))) as url,
            httpx.AsyncClient(timeout=30) as client,
        ):
            async with client.stream(
                "POST",
                url + "/stream-audio",
                json={"Text": FIVE, "SampleRate": 24000, "VoiceId": "clinic"},
            ) as response:
                async for _chunk in response.aiter_bytes():
                    break  # the first audio is in
                await upstream.logged("received 1")
            # The caller has hung up: the gateway closes the request it made ahead.
            await upstream.logged("hung up 1")
            assert "answered 1" not in upstream.log
            assert upstream.texts == whole_clip_pieces(FIVE)[:2]  # and asks for no more
