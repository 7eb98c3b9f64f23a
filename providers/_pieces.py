"""Pipelined pieces: a text sent as several requests, the next one asked for while the current one
streams, so that the pieces follow each other with no gap.

A text is cut into pieces for two reasons:

- the provider takes only so much text per request (``max_text``);
- the provider answers only whole clips (Google's REST reply, an upstream that sends a whole
  file): nothing can be played until the clip for the whole piece has been synthesized, so the
  first sentence goes alone and its audio leaves after one sentence's synthesis, not the whole
  text's. The pieces after it grow (each at most twice the one before, cut between sentences,
  or between the clauses of a sentence too long for that): a piece takes longer to synthesize
  than the one before it takes to play only if the provider is slower than half real time, and
  a long text still costs few requests.

:func:`pipelined` requests the first piece at once and, as soon as it has its first audio, the
next :data:`LOOKAHEAD` piece(s) beside it; each piece's audio is held (up to
:data:`PIECE_BUFFER` bytes, then its upstream is read no further until its turn) and relayed in
order as soon as the pieces before it are done. Closing the stream (the caller hung up) cancels
every piece requested ahead and closes its upstream. An error in a piece surfaces when its turn
comes: the pieces before it are delivered whole.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Final

from .sentences import clauses, sentences, split_to_limit

#: Pieces requested ahead of the one being relayed.
LOOKAHEAD: Final = 1
#: Audio held for a piece requested ahead before its upstream is read no further (8 MiB: about
#: three minutes of 24 kHz audio, more than any one piece).
PIECE_BUFFER: Final = 8 << 20
#: A first sentence shorter than this (characters) takes the next one along: a clip of "Hi."
#: alone would cost a request for a fraction of a second of audio.
MIN_FIRST_PIECE: Final = 12


def whole_clip_pieces(
    text: str, limit: int | None = None, size: Callable[[str], int] = len
) -> list[str]:
    """``text`` cut for a whole-clip provider: the first sentence alone (with the next ones while
    it is shorter than :data:`MIN_FIRST_PIECE`), then pieces of whole sentences, each at most
    twice as long as the one before (a sentence too long for that is cut between clauses, if it
    has any), and each within ``limit`` as ``size`` measures it. Every cut is made at whitespace
    (or after a CJK mark), which is left out; a text of one sentence is the one piece as is."""
    parts: deque[tuple[str, str]] = deque()
    for sentence, after in sentences(text):
        if limit is not None and size(sentence) > limit:
            finer = split_to_limit(sentence, limit, size)
            glue = " " if any(c.isspace() for c in sentence) else ""
            parts.extend((part, glue) for part in finer[:-1])
            parts.append((finer[-1], after))
        else:
            parts.append((sentence, after))
    if len(parts) <= 1:
        return [text]
    pieces: list[str] = []
    while parts:
        piece, gap = parts.popleft()
        budget = 2 * len(pieces[-1]) + 1 if pieces else None  # twice, and the space between
        if budget is not None and len(piece) > budget:
            piece, gap = _head_within(piece, gap, budget, parts)
        while parts:
            joined = piece + gap + parts[0][0]
            if limit is not None and size(joined) > limit:
                break
            if len(piece) >= MIN_FIRST_PIECE if budget is None else len(joined) > budget:
                break
            piece, gap = joined, parts.popleft()[1]
        pieces.append(piece)
    return pieces


def _head_within(
    sentence: str, after: str, budget: int, parts: deque[tuple[str, str]]
) -> tuple[str, str]:
    """The longest run of ``sentence``'s first clauses within ``budget`` characters (the first
    clause if none fits), and what followed it; the rest of the sentence is put back in front
    of ``parts``."""
    pieces = clauses(sentence)
    head, gap = pieces[0]
    taken = 1
    while taken < len(pieces) and len(head + gap + pieces[taken][0]) <= budget:
        head, gap = head + gap + pieces[taken][0], pieces[taken][1]
        taken += 1
    if taken < len(pieces):
        rest = "".join(part + space for part, space in pieces[taken:])
        parts.appendleft((rest, after))
        return head, gap
    return head, after


class _Ahead:
    """One piece requested ahead: its audio read into a bounded buffer by a task of its own."""

    def __init__(self, source: AsyncGenerator[bytes, None]) -> None:
        self._source = source
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self._done = False
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for chunk in self._source:
                self._chunks.append(chunk)
                self._held += len(chunk)
                self._changed.set()
                if self._held > PIECE_BUFFER:
                    self._room.clear()
                    await self._room.wait()
        except BaseException as error:  # handed to the reader at the piece's turn
            self._error = error
        finally:
            self._done = True
            self._changed.set()
            with contextlib.suppress(BaseException):
                await self._source.aclose()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._held -= len(chunk)
                if self._held <= PIECE_BUFFER:
                    self._room.set()
                yield chunk
            if self._done:
                if self._error is not None and not isinstance(self._error, asyncio.CancelledError):
                    raise self._error
                return
            self._changed.clear()
            await self._changed.wait()

    def stop(self) -> None:
        """Stop reading: the piece's stream is closed (its upstream with it)."""
        self._task.cancel()

    async def stopped(self) -> None:
        """Once the piece's stream is closed."""
        await asyncio.gather(self._task, return_exceptions=True)


async def pipelined(
    pieces: Sequence[str], fetch: Callable[[str], AsyncGenerator[bytes, None]]
) -> AsyncGenerator[bytes, None]:
    """The audio of every piece in order, each piece fetched by ``fetch`` (see the module
    docstring). With one piece, ``fetch``'s own stream. Every piece's stream is closed by the
    time this one's ``aclose`` returns."""
    if len(pieces) == 1:
        async with contextlib.aclosing(fetch(pieces[0])) as only:
            async for chunk in only:
                yield chunk
        return
    ahead: deque[_Ahead] = deque()
    current: _Ahead | None = None
    following = 1

    def request_ahead() -> None:
        nonlocal following
        while len(ahead) < LOOKAHEAD and following < len(pieces):
            ahead.append(_Ahead(fetch(pieces[following])))
            following += 1

    try:
        async with contextlib.aclosing(fetch(pieces[0])) as first:
            async for chunk in first:
                request_ahead()
                yield chunk
        request_ahead()  # a first piece with no audio still leads to the next
        while ahead:
            current = ahead.popleft()
            async with contextlib.aclosing(current.chunks()) as audio:
                async for chunk in audio:
                    request_ahead()
                    yield chunk
            current = None
            request_ahead()
    finally:
        # Every piece is told to stop before any is waited for: a second cancellation of
        # this task during the waits leaves none of them running.
        unfinished = [piece for piece in (current, *ahead) if piece is not None]
        for piece in unfinished:
            piece.stop()
        for piece in unfinished:
            await piece.stopped()
