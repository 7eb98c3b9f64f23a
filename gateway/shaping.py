"""Text shaping per voice (a voice's ``text:`` block): what an LLM writes, made fit to be spoken.

Applied to the caller's text before it is split, cached or sent, in this order:

1. ``strip_markdown``:

   - fenced code blocks are dropped whole (code is for reading, not for hearing); a fence
     that is never closed loses only its own line, in case the text was cut mid-reply;
   - headings, list markers (``-``, ``*``, ``+``, ``•``, ``1.``, task boxes), block quotes,
     rules and table rules go; a heading, list item, table row or line of bold text that
     ends without punctuation gets a full stop, so that it is spoken as a phrase of its own
     rather than run into the next line; table cells are read separated by commas;
   - links and images keep their text (an image its alt text), the address is dropped;
     ``<https://…>`` keeps the address;
   - emphasis marks (``*``, ``_``, ``~~``) and backticks go, except where they are not
     markup: ``2 * 3``, ``2*3``, ``2**10``, ``SELECT * FROM``, ``snake_case``, and
     anything inside an inline code span or a bare URL; ``\\*`` is a literal ``*``;
   - emoji are dropped, with everything that builds them (skin tones, ZWJ sequences, flags,
     variation selectors, tags); a keycap keeps its digit (``1️⃣`` → ``1``).

2. ``lexicon``: whole-word replacements, case-sensitive, longest match first (``SQL`` →
   ``sequel`` leaves ``SQLite`` and ``MySQL`` alone; ``Dr.`` → ``Doctor``). A key of several
   words matches them across any whitespace. Replacements are not searched again. Text in
   scripts written without spaces (Chinese, Japanese, Korean) counts as a word boundary, so
   ``OpenAI`` is found in ``我用OpenAI的模型``.
3. Whitespace normalized: every run of spaces, tabs and line breaks becomes one space, the
   invisible zero-width space, word joiner, BOM and soft hyphen are dropped; the ends are
   trimmed.

Provider-specific escaping (SSML's ``&`` and ``<``) stays in the providers: shaping works on
plain text. Every step runs in time linear in the text: each pattern either is anchored to a
line start and consumes its line without backtracking (possessive quantifiers), or starts at
a mark and stops at the next one, and the lexicon is one pattern compiled from a trie of its
words, so a position is tried against the words sharing its first characters, not all of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from .config.model import TextShaping

__all__ = ["TextShaper", "flatten", "lexicon_pattern", "strip_markdown"]

#: A fence line: three or more backticks or tildes, then the info string.
_FENCE: Final = re.compile(r"^[ \t]*+(`{3,}+|~{3,}+)([^\n]*+)$", re.MULTILINE)
_QUOTE: Final = re.compile(r"^[ \t]*+(?:>[ \t]?+)++", re.MULTILINE)
#: A line of rule and table-rule characters only (``---``, ``* * *``, ``|:--|--:|``).
_RULE: Final = re.compile(r"^[ \t]*+[-*_=|:][-*_=|: \t]*+$", re.MULTILINE)
_LINK_DEFINITION: Final = re.compile(r"^[ \t]*+\[[^\[\]\n]{1,200}+\]:[^\n]*+$", re.MULTILINE)
_HEADING: Final = re.compile(r"^[ \t]*+#{1,6}+(?:[ \t]++([^\n]*+))?+$", re.MULTILINE)
_LIST_ITEM: Final = re.compile(
    r"^[ \t]*+(?:[-*+•]|\d{1,9}+[.)])[ \t]++(?:\[[ xX]\][ \t]++)?+([^\n]*+)$", re.MULTILINE
)
_TABLE_ROW: Final = re.compile(r"^[ \t]*+\|([^\n]*+)$", re.MULTILINE)
_BOLD_LINE: Final = re.compile(r"^[ \t]*+(?:\*\*|__)[^\n]*+$", re.MULTILINE)
# Neither a link's text nor its address may hold a bracket, so a scan started at one ``[``
# stops before the next: every character is scanned a bounded number of times. An address
# may hold one level of parentheses (Wikipedia's ``Python_(programming_language)``).
_LINK: Final = re.compile(
    r"!?\[([^\[\]\n]{0,500}+)\]"
    r"(?:\((?:[^()\[\]\s]|\([^()\[\]\s]{0,500}+\)){0,2000}+(?:[ \t]++\"[^\"\n]{0,500}+\")?+\)"
    r"|\[[^\[\]\n]{0,200}+\])"
)
_AUTOLINK: Final = re.compile(
    r"<(?:mailto:)?+((?:https?:[^<>\s]{1,2000}+)|[^<>\s@:]{1,64}+@[^<>\s@]{1,255}+)>"
)
#: What emphasis stripping must leave alone: an inline code span (its content is kept, the
#: backticks go), a backslash escape (the character is kept), a bare URL. Each branch starts
#: with its mark, so the search skips plain text at C speed.
_PROTECTED: Final = re.compile(
    r"`(?<!``)(`?+)(?!`)([^`\n]{1,1000}+)`\1(?!`)"
    r"|\\([!-/:-@\[-`{-~])"
    r"|(https?://[^\s<>]++)"
)
#: A placeholder for a protected piece while the marks around it are stripped.
_HOLE: Final = "\x00"
# The two patterns below match the first mark of a run and then look back two characters
# (the one before the run, and the mark) rather than starting with a look-behind, so that the
# search can skip to the next mark instead of testing every position.
#: ``*`` runs that are markup: not between spaces (``2 * 3``), not between digits (``2*3``).
_STARS: Final = re.compile(
    r"\*(?<!\*\*)(?:(?<!\S\*)\**+(?=\S)|(?<=\d\*)\**+(?!\d)|(?<=[^\s\d]\*)\**+)"
)
#: ``_`` runs that are markup: not inside a word (``snake_case``), not between spaces.
_UNDERSCORES: Final = re.compile(
    r"_(?<!__)(?:(?<!\S_)_*+(?=\S)|(?<=[^\W_]_)_*+(?![^\W_])|(?<=[^\w\s]_)_*+)"
)
_MARKS: Final = re.compile(r"~~|`++")
_BREAK_TAG: Final = re.compile(r"<br[ \t]*+/?>", re.IGNORECASE)
_KEYCAP_SYMBOL: Final = re.compile("[#*]\ufe0f?+\u20e3")
#: ``1️⃣ Pack`` at the start of a line: an item of a numbered list.
_KEYCAP_ITEM: Final = re.compile("^([ \t]*+[0-9])\ufe0f?+\u20e3[ \t]*+", re.MULTILINE)
_WHITESPACE: Final = re.compile(r"\s+")
_INVISIBLE: Final = re.compile("[\u200b\u2060\ufeff\u00ad]+")
_LINE_BREAKS: Final = re.compile(r"[\t\n]+")

#: Emoji and the marks that build emoji sequences: pictographs, dingbats and symbols, regional
#: indicators (flags), skin tones, variation selectors, the zero-width joiner, the keycap
#: mark, tags.
_EMOJI_CLASS: Final = (
    "["
    "\U0001f000-\U0001faff"  # mahjong to symbols-and-pictographs extended-A (flags, tones)
    "\u2600-\u27bf"  # miscellaneous symbols, dingbats
    "\u2b00-\u2bff"  # arrows and stars (⭐, ⬆)
    "\u2300-\u23ff"  # technical (⌚, ⏰)
    "\u2190-\u21ff"  # arrows
    "\u25a0-\u25ff"  # geometric shapes (▶, ◼)
    "\u203c\u2049\u2139\u24c2\u2934\u2935"  # !!, ?!, information, circled M, curved arrows
    "\u3030\u303d\u3297\u3299"
    "\ufe0e\ufe0f\u200d\u20e3"
    "\U000e0020-\U000e007f"
    "]"
)
#: Emoji between two letters separate them (``great😀news``); elsewhere they go with the
#: spaces before them (``pack 🎒:`` → ``pack:``).
_EMOJI_INSIDE: Final = re.compile(rf"(?<=\w){_EMOJI_CLASS}++(?=\w)")
# Only from the start of a run of spaces: a run tried from each of its spaces is quadratic.
_EMOJI: Final = re.compile(rf"(?<![ \t])[ \t]*+{_EMOJI_CLASS}++")

#: Punctuation that already ends a phrase, and what may follow it (closing marks, quotes).
_STOPS: Final = ".!?,;:\u3002\uff01\uff1f\uff0c\uff1b\uff1a\u3001\u2026"
_CLOSERS: Final = "*_~`)]}\"'\u201d\u2019\u00bb\u300d\u300f\uff09\u3011 \t"
#: Scripts written without spaces between words; their characters end a Latin word too.
_CJK: Final = "\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
_CJK_CHAR: Final = re.compile(f"[{_CJK}]")


def _phrase(text: str) -> str:
    """A heading's, list item's or table row's text, ended as a phrase when it has no
    punctuation of its own (a Chinese full stop after Chinese)."""
    text = text.strip()
    core = text.rstrip(_CLOSERS)
    if not core or core[-1] in _STOPS:
        return text
    return text + ("\u3002" if _CJK_CHAR.match(core[-1]) else ".")


def _heading(match: re.Match[str]) -> str:
    text = (match.group(1) or "").rstrip()
    # A closing run of ``#`` counts only after a space: ``# C#`` is about C#.
    bare = text.rstrip("#")
    if not bare or bare[-1] in " \t":
        text = bare
    return _phrase(text)


def _list_item(match: re.Match[str]) -> str:
    return _phrase(match.group(1))


def _table_row(match: re.Match[str]) -> str:
    cells = [cell.strip() for cell in match.group(1).split("|")]
    return _phrase(", ".join(cell for cell in cells if cell))


def _bold_line(match: re.Match[str]) -> str:
    line = match.group(0).strip()
    if len(line) > 4 and line.endswith(line[:2]):
        return _phrase(line)
    return match.group(0)


def _rule(match: re.Match[str]) -> str:
    line = match.group(0)
    marks = line.count("-") + line.count("*") + line.count("_") + line.count("=")
    return "" if marks >= 3 else line


def _drop_code_blocks(text: str) -> str:
    """``text`` without its fenced code blocks (a fence closes with a fence of the same
    character, at least as long, with no info string)."""
    pieces: list[str] = []
    start = 0
    opening: re.Match[str] | None = None
    for fence in _FENCE.finditer(text):
        mark, info = fence.group(1), fence.group(2)
        if mark[0] == "`" and "`" in info:
            continue  # ```like this``` on one line is inline code, not a fence
        if opening is None:
            opening = fence
        elif (
            mark[0] == opening.group(1)[0]
            and len(mark) >= len(opening.group(1))
            and not info.strip()
        ):
            pieces.append(text[start : opening.start()])
            start, opening = fence.end(), None
    if opening is not None:
        pieces.append(text[start : opening.start()])
        start = opening.end()
    pieces.append(text[start:])
    return "".join(pieces)


def _strip_marks(text: str) -> str:
    """``text`` without emphasis marks and backticks, leaving code spans, escapes and bare
    URLs as written (code spans lose their backticks)."""
    text = text.replace(_HOLE, "")
    plain: list[str] = []
    kept: list[str] = []
    start = 0
    for match in _PROTECTED.finditer(text):
        plain.append(text[start : match.start()])
        kept.append(match.group(2) or match.group(3) or match.group(4))
        start = match.end()
    plain.append(text[start:])
    # Stripped as one text so that a mark sees its real neighbours (a hole is neither a space
    # nor a letter: ``**`code`**`` loses its stars).
    marked = _HOLE.join(plain)
    marked = _STARS.sub("", marked)
    marked = _UNDERSCORES.sub("", marked)
    marked = _MARKS.sub("", marked)
    if not kept:
        return marked
    pieces = marked.split(_HOLE)
    out = [pieces[0]]
    for piece, protected in zip(pieces[1:], kept, strict=True):
        out.append(protected)
        out.append(piece)
    return "".join(out)


def strip_markdown(text: str) -> str:
    """``text`` without Markdown's marks and without emoji (see the module docstring)."""
    text = _QUOTE.sub("", text)  # first: a quote may hold a code block, a list, a heading
    text = _drop_code_blocks(text)
    text = _KEYCAP_SYMBOL.sub("", text)
    text = _KEYCAP_ITEM.sub(r"\1. ", text)
    text = _EMOJI_INSIDE.sub(" ", text)
    text = _EMOJI.sub("", text)
    text = _RULE.sub(_rule, text)
    text = _LINK_DEFINITION.sub("", text)
    text = _HEADING.sub(_heading, text)
    text = _LIST_ITEM.sub(_list_item, text)
    text = _TABLE_ROW.sub(_table_row, text)
    text = _BOLD_LINE.sub(_bold_line, text)
    text = _LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _BREAK_TAG.sub(" ", text)
    return _strip_marks(text)


def flatten(text: str) -> str:
    """The caller's text for a voice without shaping: each run of tabs and line breaks one
    space, as the text always reached the providers."""
    return _LINE_BREAKS.sub(" ", text)


def _normal_word(word: str) -> str:
    """A lexicon key as matched: its words joined by one space."""
    return " ".join(word.split())


def lexicon_pattern(words: Mapping[str, str]) -> re.Pattern[str] | None:
    """One pattern matching any of ``words`` as a whole word (not inside a longer word),
    compiled from a trie so that matching costs the length of the longest word per position.
    A space in a word matches any run of whitespace."""
    if not words:
        return None
    trie: dict[str, dict] = {}  # type: ignore[type-arg]
    for word in filter(None, map(_normal_word, words)):
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}
    if not trie:
        return None

    def pattern(node: dict) -> str:  # type: ignore[type-arg]
        ends = "" in node
        branches = [
            (r"\s++" if char == " " else re.escape(char)) + pattern(child)
            for char, child in node.items()
            if char
        ]
        if not branches:
            return ""
        # Longer words first: a trie branch is tried before the end of a shorter word.
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if ends:
            return f"(?:{body})?"
        return body

    # A word boundary: not next to a letter, digit or underscore of a script that puts
    # spaces between its words.
    edge = rf"[^\W{_CJK}]"
    return re.compile(rf"(?<!{edge})(?:{pattern(trie)})(?!{edge})")


class TextShaper:
    """A voice's ``text:`` block, compiled once per routing file."""

    def __init__(self, shaping: TextShaping) -> None:
        self.strip_markdown = shaping.strip_markdown
        self.lexicon = {_normal_word(word): said for word, said in shaping.lexicon.items()}
        self._lexicon = lexicon_pattern(self.lexicon)

    def __call__(self, text: str) -> str:
        """``text`` shaped (maybe empty: the caller's text had nothing to speak)."""
        if self.strip_markdown:
            text = strip_markdown(text)
        if self._lexicon is not None:
            text = self._lexicon.sub(self._replace, text)
        text = _INVISIBLE.sub("", text)
        return _WHITESPACE.sub(" ", text).strip()

    def _replace(self, match: re.Match[str]) -> str:
        word = match.group(0)
        return self.lexicon.get(_normal_word(word), word)
