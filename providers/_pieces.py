"""Pipelined pieces: a text sent as several requests, the next one asked for while the current one
streams, so that the pieces follow each other with no gap.

A text is cut into pieces for two reasons:

- the provider takes only so much text per request (``max_text``);
- the provider answers only whole clips (Google's REST reply, an upstream that sends a whole
  file): nothing can be played until the clip for the whole piece has been synthesized, so the
  first sentence goes alone and its audio leaves after one sentence's synthesis, not the whole
  text's. The pieces after it grow (each at most twice the one before, cut at sentence
  boundaries): a piece takes about twice as long to synthesize as the one before it takes to
  play only if the provider is slower than half real time, and a long text still costs few
  requests.

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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Final

from .sentences import split_for_speech, split_to_limit

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
    """``text`` cut for a whole-clip provider: the first sentence alone, then pieces that at
    most double, each within ``limit`` (as ``size`` measures)."""
    sentences = split_for_speech(text)
    if limit is not None:
        sentences = [part for s in sentences for part in split_to_limit(s, limit, size)]
    if len(sentences) <= 1:
        return sentences or [text]
    pieces: list[str] = []
    current = ""
    budget = 0
    for sentence in sentences:
        if not current:
            current = sentence
            continue
        joined = f"{current} {sentence}"
        if limit is None or size(joined) <= limit:
            first_too_short = not pieces and len(current) < MIN_FIRST_PIECE
            if first_too_short or (pieces and len(joined) <= budget):
                current = joined
                continue
        pieces.append(current)
        budget = 2 * len(current) + 1  # twice as long, with the space between
        current = sentence
    if current:
        pieces.append(current)
    return pieces


class _Ahead:
    """One piece requested ahead: its audio read into a bounded buffer by a task of its own."""

    def __init__(self, source: AsyncIterator[bytes]) -> None:
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
            closer = getattr(self._source, "aclose", None)
            if closer is not None:
                with contextlib.suppress(BaseException):
                    await closer()

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

    async def cancel(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def pipelined(
    pieces: Sequence[str], fetch: Callable[[str], AsyncIterator[bytes]]
) -> AsyncGenerator[bytes, None]:
    """The audio of every piece in order, each piece fetched by ``fetch`` (see the module
    docstring). With one piece, ``fetch``'s own stream, untouched."""
    if len(pieces) == 1:
        async for chunk in fetch(pieces[0]):
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
        first = fetch(pieces[0])
        try:
            async for chunk in first:
                request_ahead()
                yield chunk
        finally:
            closer = getattr(first, "aclose", None)
            if closer is not None:
                await closer()
        request_ahead()  # a first piece with no audio still leads to the next
        while ahead:
            current = ahead.popleft()
            async for chunk in current.chunks():
                request_ahead()
                yield chunk
            current = None
            request_ahead()
    finally:
        for piece in (current, *ahead):
            if piece is not None:
                await piece.cancel()
