"""Cutting text at sentence and clause boundaries, for the two reasons a provider cuts it.

- :func:`split_to_limit`: a cloud API takes so much text per request; longer text goes out as
  consecutive requests, each as full as the limit allows, cut where a speaker would pause.
- :func:`split_for_speech`: a local voice speaks piece by piece, so that its first audio waits
  only for the first clause (Piper runs its front, text encoder to flow, on a whole piece before
  the first window of audio) and a hang-up stops the work at the next piece.

Both cut after the same marks: ``. ! ?`` (and their full-width CJK forms) end a sentence,
``, ; :`` (and theirs) end a clause, with whitespace after them. Where the two differ, the
difference is spelled out in :func:`_cut_after`'s arguments below: a request may be cut after a
CJK mark with no space (CJK text has none, and a long request must be cut somewhere), while
speech is also cut after an ellipsis, a closing quote or bracket and a dash, the pauses a
speaker makes inside English text.
"""

from __future__ import annotations

import re
from collections.abc import Callable

SENTENCE_MARKS = ".!?"
CJK_SENTENCE_MARKS = "\u3002\uff01\uff1f"
CLAUSE_MARKS = ",;:"
CJK_CLAUSE_MARKS = "\uff0c\uff1b\uff1a"
ELLIPSIS = "\u2026"
DASHES = "\u2014\u2013"
#: What may follow a sentence's last mark before the space: ``He said "stop." Then…``.
CLOSERS = "\"'\u201d\u2019)]"
#: The same after a CJK mark: ``「你好。」``.
CJK_CLOSERS = "\u300d\u300f\uff09\u3011\u300b\u201d\u2019"


def _cut_after(marks: str, *, closers: str = "", unspaced: str = "") -> re.Pattern[str]:
    """The whitespace after one of ``marks`` (maybe followed by one of ``closers``), and after
    one of ``unspaced`` whitespace or none: where text may be cut (the match is dropped)."""
    end = f"[{re.escape(marks)}]"
    after = f"(?:(?<={end})|(?<={end}[{re.escape(closers)}]))" if closers else f"(?<={end})"
    pattern = after + r"\s+"
    if unspaced:
        pattern += rf"|(?<=[{re.escape(unspaced)}])\s*"
    return re.compile(pattern)


_REQUEST_SENTENCE = _cut_after(SENTENCE_MARKS, unspaced=CJK_SENTENCE_MARKS)
_REQUEST_CLAUSE = _cut_after(CLAUSE_MARKS, unspaced=CJK_CLAUSE_MARKS)
_SPEECH_SENTENCE = _cut_after(SENTENCE_MARKS + ELLIPSIS + CJK_SENTENCE_MARKS, closers=CLOSERS)
_SPEECH_CLAUSE = _cut_after(CLAUSE_MARKS + CJK_CLAUSE_MARKS + DASHES)
_WORD = re.compile(r"\s+")
#: Between two sentences, for a text cut in sentences kept whole: whitespace after a mark (and a
#: closer), and after a CJK mark (and a closer) whitespace or none, unless more marks follow.
_SENTENCE_BREAK = re.compile(
    rf"(?:(?<=[{re.escape(SENTENCE_MARKS)}])|(?<=[{re.escape(SENTENCE_MARKS)}]"
    rf"[{re.escape(CLOSERS)}]))\s+"
    rf"|(?<=[{re.escape(CJK_SENTENCE_MARKS + CJK_CLOSERS)}])"
    rf"(?<![^{re.escape(CJK_SENTENCE_MARKS)}][{re.escape(CJK_CLOSERS)}])"
    rf"(?![{re.escape(CJK_SENTENCE_MARKS + CJK_CLOSERS)}])\s*"
)
#: Between two clauses of a sentence, likewise.
_CLAUSE_BREAK = re.compile(
    rf"(?<=[{re.escape(CLAUSE_MARKS + DASHES)}])\s+"
    rf"|(?<=[{re.escape(CJK_CLAUSE_MARKS)}])(?![{re.escape(CJK_CLAUSE_MARKS)}])\s*"
)


def split_to_limit(text: str, limit: int, size: Callable[[str], int] = len) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` (as ``size`` measures), at sentence
    boundaries where possible, then clauses, then words, then characters."""
    if size(text) <= limit:
        return [text]
    parts, glue = _parts(text)
    pieces: list[str] = []
    current = ""
    for part in parts:
        joined = f"{current}{glue}{part}" if current else part
        if size(joined) <= limit:
            current = joined
            continue
        if current:
            pieces.append(current)
        if size(part) <= limit:
            current = part
        else:  # one part alone is too long: cut it finer
            finer = split_to_limit(part, limit, size)
            pieces.extend(finer[:-1])
            current = finer[-1]
    if current:
        pieces.append(current)
    return pieces


def _parts(text: str) -> tuple[list[str], str]:
    """The coarsest cut of ``text`` into more than one part, and what joins parts again."""
    for pattern in (_REQUEST_SENTENCE, _REQUEST_CLAUSE, _WORD):
        parts = [p for p in pattern.split(text) if p]
        if len(parts) > 1:
            return parts, " " if _WORD.search(text) else ""
    return list(text), ""


#: The first clause is cut off only if it has at least this many words (shorter pieces sound
#: clipped and gain nothing: their front takes a few milliseconds either way).
_MIN_FIRST_CLAUSE_WORDS = 3
#: A sentence longer than this is spoken clause by clause (in pieces of at least
#: ``_LONG_PIECE_WORDS``): a front's run cannot be interrupted, so pieces bound the work a
#: hang-up leaves running and the time before the piece's first audio.
_LONG_SENTENCE_WORDS = 40
_LONG_PIECE_WORDS = 12


def split_for_speech(text: str) -> list[str]:
    """Cut text into pieces to synthesize one after another: the first clause of the first
    sentence alone (when it has a few words and more follows), then whole sentences, long
    ones by groups of clauses."""
    sentences = [s.strip() for s in _SPEECH_SENTENCE.split(text.strip()) if s.strip()]
    if not sentences:
        return []
    pieces: list[str] = []
    clauses = [c for c in _SPEECH_CLAUSE.split(sentences[0]) if c.strip()]
    head_words = 0
    for index, clause in enumerate(clauses[:-1]):
        head_words += len(clause.split())
        if head_words >= _MIN_FIRST_CLAUSE_WORDS:
            pieces.append(" ".join(clauses[: index + 1]))
            sentences[0] = " ".join(clauses[index + 1 :])
            break
    for sentence in sentences:
        pieces.extend(_group_clauses(sentence))
    return pieces


def _group_clauses(sentence: str) -> list[str]:
    if len(sentence.split()) <= _LONG_SENTENCE_WORDS:
        return [sentence]
    groups: list[str] = []
    current: list[str] = []
    for clause in _SPEECH_CLAUSE.split(sentence):
        current.append(clause)
        if len(" ".join(current).split()) >= _LONG_PIECE_WORDS:
            groups.append(" ".join(current))
            current = []
    if current:
        groups.append(" ".join(current))
    return groups


def sentences(text: str) -> list[tuple[str, str]]:
    """``text`` (its outer whitespace dropped) cut between sentences, each sentence with the
    whitespace that followed it ("" after the last, and between CJK sentences): joined again,
    they are the text exactly."""
    return _breaks(text.strip(), _SENTENCE_BREAK)


def clauses(sentence: str) -> list[tuple[str, str]]:
    """A sentence cut between clauses, as :func:`sentences` cuts a text."""
    return _breaks(sentence, _CLAUSE_BREAK)


def _breaks(text: str, pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    parts: list[tuple[str, str]] = []
    start = 0
    for cut in pattern.finditer(text):
        if cut.start() > start and cut.end() < len(text):
            parts.append((text[start : cut.start()], cut.group()))
            start = cut.end()
    if start < len(text):
        parts.append((text[start:], ""))
    return parts
