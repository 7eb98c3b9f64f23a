"""Text shaping per voice (a voice's ``text:`` block): what an LLM writes, made fit to be spoken.

Applied to the caller's text before it is split, cached or sent, in this order:

1. ``strip_markdown``: code fences and backticks, headings, block quotes, rules, table rules,
   list markers, emphasis (``*``, ``_``, ``~~``), images and links (their text kept, the URL
   dropped) are removed; emoji are dropped. A heading or list item that ends without
   punctuation gets a full stop, so that it is spoken as a phrase of its own rather than run
   into the next line.
2. ``lexicon``: whole-word replacements, case-sensitive, longest match first (``SQL`` →
   ``sequel`` leaves ``SQLite`` alone; ``Dr.`` → ``Doctor``).
3. Whitespace normalized: every run of spaces, tabs and line breaks becomes one space; the
   ends are trimmed.

Provider-specific escaping (SSML's ``&`` and ``<``) stays in the providers: shaping works on
plain text. Every step runs in time linear in the text: the patterns below have no nested
quantifiers that could backtrack, and the lexicon is one pattern compiled from a trie of its
words, so a position is tried against the words sharing its first characters, not all of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from .config.model import TextShaping

__all__ = ["TextShaper", "lexicon_pattern"]

_FENCE: Final = re.compile(r"^[ \t]{0,3}(?:`{3,}|~{3,})[^\n]*$", re.MULTILINE)
_HEADING: Final = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+([^\n]*?)[ \t#]*$", re.MULTILINE)
_QUOTE: Final = re.compile(r"^[ \t]{0,3}(?:>[ \t]?)+", re.MULTILINE)
_RULE: Final = re.compile(r"^[ \t]{0,3}(?:[-*_][ \t]*){3,}$", re.MULTILINE)
_TABLE_RULE: Final = re.compile(r"^[ \t]*\|?[ \t:]*-{3,}[-| \t:]*$", re.MULTILINE)
_LIST_ITEM: Final = re.compile(r"^[ \t]*(?:[-*+•]|\d{1,9}[.)])[ \t]+([^\n]*)$", re.MULTILINE)
# Neither the text nor the target may hold its own opening mark, so a scan started at one mark
# stops at the next: every character is scanned a bounded number of times.
_IMAGE: Final = re.compile(r"!\[([^\[\]\n]{0,500})\]\([^()\s]{0,2000}\)")
_LINK: Final = re.compile(r"\[([^\[\]\n]{0,500})\](?:\([^()\s]{0,2000}\)|\[[^\[\]\n]{0,200}\])")
_AUTOLINK: Final = re.compile(r"<((?:https?|mailto):[^<>\s]{1,2000})>")
_BACKTICKS: Final = re.compile(r"`+")
_STARS: Final = re.compile(r"(?<!\s)\*+|\*+(?!\s)")
_UNDERSCORES: Final = re.compile(r"(?<![^\W_])_+|_+(?![^\W_])")
_STRIKE: Final = re.compile(r"~~")
_TABLE_PIPE: Final = re.compile(r"[ \t]*\|[ \t]*")
_WHITESPACE: Final = re.compile(r"\s+")
_ENDS_SPOKEN: Final = re.compile(r"[.!?,;:\u3002\uff01\uff1f\u2026]\W*$")

#: Emoji and the marks that build emoji sequences: pictographs, dingbats and symbols, regional
#: indicators (flags), skin tones, variation selector 16, the zero-width joiner, keycaps, tags.
_EMOJI: Final = re.compile(
    "["
    "\U0001f000-\U0001faff"  # mahjong to symbols-and-pictographs extended-A (flags, tones)
    "\u2600-\u27bf"  # miscellaneous symbols, dingbats
    "\u2b00-\u2bff"  # arrows and stars (⭐, ⬆)
    "\u2300-\u23ff"  # technical (⌚, ⏰)
    "\u2190-\u21ff"  # arrows
    "\u3030\u303d\u3297\u3299"
    "\ufe0e\ufe0f\u200d\u20e3"
    "\U000e0020-\U000e007f"
    "]+"
)


def _sentence(match: re.Match[str]) -> str:
    """A heading or list item's text, ended as a phrase when it has no punctuation of its own."""
    text = match.group(1).strip()
    if not text or _ENDS_SPOKEN.search(text):
        return text
    return f"{text}."


def strip_markdown(text: str) -> str:
    """``text`` without Markdown's marks and without emoji (see the module docstring)."""
    text = _FENCE.sub("", text)
    text = _RULE.sub("", text)
    text = _TABLE_RULE.sub("", text)
    text = _QUOTE.sub("", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _BACKTICKS.sub("", text)
    text = _EMOJI.sub("", text)
    text = _STRIKE.sub("", text)
    # Headings and list items once their markers' neighbours are clean, so a phrase ending in
    # emphasis or an emoji still gets its full stop.
    text = _STARS.sub("", text)
    text = _UNDERSCORES.sub("", text)
    text = _HEADING.sub(_sentence, text)
    text = _LIST_ITEM.sub(_sentence, text)
    return _TABLE_PIPE.sub(" ", text)


def lexicon_pattern(words: Mapping[str, str]) -> re.Pattern[str] | None:
    """One pattern matching any of ``words`` as a whole word (not inside a longer word),
    compiled from a trie so that matching costs the length of the longest word per position."""
    if not words:
        return None
    trie: dict[str, dict] = {}  # type: ignore[type-arg]
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def pattern(node: dict) -> str:  # type: ignore[type-arg]
        ends = "" in node
        branches = [re.escape(char) + pattern(child) for char, child in node.items() if char]
        if not branches:
            return ""
        # Longer words first: a trie branch is tried before the end of a shorter word.
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if ends:
            return f"(?:{body})?"
        return body

    return re.compile(r"(?<!\w)(?:" + pattern(trie) + r")(?!\w)")


class TextShaper:
    """A voice's ``text:`` block, compiled once per routing file."""

    def __init__(self, shaping: TextShaping) -> None:
        self.strip_markdown = shaping.strip_markdown
        self.lexicon = dict(shaping.lexicon)
        self._lexicon = lexicon_pattern(self.lexicon)

    def __call__(self, text: str) -> str:
        """``text`` shaped (maybe empty: the caller's text had nothing to speak)."""
        if self.strip_markdown:
            text = strip_markdown(text)
        if self._lexicon is not None:
            text = self._lexicon.sub(self._replace, text)
        return _WHITESPACE.sub(" ", text).strip()

    def _replace(self, match: re.Match[str]) -> str:
        return self.lexicon.get(match.group(0), match.group(0))
