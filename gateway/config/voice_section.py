"""The ``voices:`` section: one entry per VoiceId or pattern, its provider, options, emotions and
fallbacks (whose targets are checked once every voice is known: :mod:`.fallbacks`)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from providers.base import EMOTIONS, Provider

from .limits import MAX_CHAIN
from .messages import child, item, some, suggest
from .model import TextShaping, VoiceConfig
from .plugin_checks import PluginChecks
from .readers import Reader

_VOICE_KEYS: Final = (
    "provider",
    "voice",
    "options",
    "emotions",
    "fallback",
    "hedge_after",
    "sticky_fallback",
    "cache",
    "text",
)
_TEXT_KEYS: Final = ("strip_markdown", "lexicon")
#: Entries of one voice's lexicon, and characters of one word or phrase in it.
MAX_LEXICON: Final = 10_000
MAX_LEXICON_WORD: Final = 200
#: The longest ``hedge_after`` and ``sticky_fallback`` (a day).
_MAX_SECONDS: Final = 86_400.0


class VoiceSection:
    """Checks the voice entries of one file, collecting their fallback references in
    :attr:`fallback_refs` for the cross-checks."""

    def __init__(
        self, read: Reader, plugins: Mapping[str, type[Provider]], plugin_checks: PluginChecks
    ) -> None:
        self.read = read
        self.report = read.report
        self.plugins = plugins
        self.plugin_checks = plugin_checks
        # Per voice key: (path, target) of every well-typed fallback entry, for the later
        # cross-checks, which need every voice key first.
        self.fallback_refs: dict[str, list[tuple[str, str]]] = {}

    def check(
        self, key: str, value: Any, path: str, providers: Mapping[str, Any]
    ) -> VoiceConfig | None:
        """The entry of voice ``key`` as a :class:`VoiceConfig`, or None when it has a problem.
        ``providers`` are the provider blocks it may name."""
        read = self.read
        line = self.report.line_of(path, key=True)
        if not key.strip():
            # An empty VoiceId always means the default voice; an entry for it could never match.
            self.report.error(path, "a voice key must not be empty", key=True)
        block = read.entry(value, path, "provider")
        if block is None:
            return None
        read.check_keys(block, path, _VOICE_KEYS, required=("provider",))
        provider = read.name(block.get("provider"), child(path, "provider"))
        if provider is not None and provider not in providers:
            # A hint compares the name with every provider: only worth it for a listed problem.
            hint = "" if self.report.full else suggest(provider, providers)
            hint = hint or f"; providers: {some(providers)}"
            self.report.error(child(path, "provider"), f"unknown provider {provider!r}{hint}")
        voice = read.name(block.get("voice"), child(path, "voice"))
        options = read.mapping(block.get("options"), child(path, "options"))
        emotions = self.emotions(block.get("emotions"), child(path, "emotions"))
        fallback_path = child(path, "fallback")
        fallback = read.strings(block.get("fallback"), fallback_path)
        if fallback is not None and len(fallback) >= MAX_CHAIN:
            self.report.error(
                fallback_path, f"at most {MAX_CHAIN - 1} fallbacks, got {len(fallback)}"
            )
            fallback = None
        single = not isinstance(block.get("fallback"), list)
        self.fallback_refs[key] = [
            (fallback_path if single else item(fallback_path, i), name)
            for i, name in fallback or ()
        ]
        timing: dict[str, float] = {}
        for name in ("hedge_after", "sticky_fallback"):
            if block.get(name) is not None:
                seconds = read.number(block[name], child(path, name), 0, strict=True)
                if seconds is not None and seconds > _MAX_SECONDS:
                    self.report.error(
                        child(path, name), f"must be at most {_MAX_SECONDS:g} seconds"
                    )
                elif seconds is not None:
                    timing[name] = seconds
        if timing and not fallback:
            for name in timing:
                # Both act on the next voice of the chain: without one they could do nothing.
                where = child(path, name)
                message = "has no effect: the voice has no fallback"
                self.report.warn(where, message, self.report.line_of(where, key=True))
        cache = False
        if block.get("cache") is not None:
            if isinstance(block["cache"], bool):
                cache = block["cache"]
            else:
                self.report.error(child(path, "cache"), "expected true or false")
        text = self.text(block.get("text"), child(path, "text"))
        if provider is None:
            return None
        cls = self.plugins.get(provider)
        if cls is not None:
            if options:
                self.plugin_checks.options(cls, options, child(path, "options"))
            for emotion, emotion_options in (emotions or {}).items():
                if emotion_options:
                    self.plugin_checks.options(
                        cls, dict(emotion_options), child(child(path, "emotions"), emotion)
                    )
        return VoiceConfig(
            key=key,
            provider=provider,
            voice=voice,
            options=MappingProxyType(options or {}),
            emotions=MappingProxyType(emotions or {}),
            fallback=tuple(name for _, name in fallback or ()),
            line=line,
            hedge_after=timing.get("hedge_after"),
            sticky_fallback=timing.get("sticky_fallback"),
            cache=cache,
            text=text,
        )

    def text(self, value: Any, path: str) -> TextShaping | None:
        """``text``: ``strip_markdown`` (true/false) and ``lexicon`` (word: replacement)."""
        read = self.read
        block = read.mapping(value, path)
        if block is None:
            return None
        read.check_keys(block, path, _TEXT_KEYS)
        strip = block.get("strip_markdown")
        if strip is not None and not isinstance(strip, bool):
            self.report.error(child(path, "strip_markdown"), "expected true or false")
            strip = None
        lexicon: dict[str, str] = {}
        lexicon_path = child(path, "lexicon")
        entries = read.mapping(block.get("lexicon"), lexicon_path)
        if entries is not None and len(entries) > MAX_LEXICON:
            message = f"at most {MAX_LEXICON} entries, got {len(entries)}"
            self.report.error(lexicon_path, message, key=True)
            entries = None
        for word, replacement in (entries or {}).items():
            where = child(lexicon_path, word)
            if not str(word).strip():
                self.report.error(where, "a lexicon word must not be empty", key=True)
                continue
            if len(str(word)) > MAX_LEXICON_WORD:
                self.report.error(where, f"longer than {MAX_LEXICON_WORD} characters", key=True)
                continue
            said = read.name(replacement, where, non_empty=False, limit=MAX_LEXICON_WORD)
            if said is not None:
                lexicon[str(word)] = said
        return TextShaping(strip_markdown=bool(strip), lexicon=MappingProxyType(lexicon))

    def emotions(self, value: Any, path: str) -> dict[str, Mapping[str, Any]] | None:
        """``emotions``: options per emotion the interface defines, keyed in lower case."""
        block = self.read.mapping(value, path)
        if block is None:
            return None
        result: dict[str, Mapping[str, Any]] = {}
        for name, options in block.items():
            emotion_path = child(path, name)
            # The request side lower-cases ExtendData.Emotion, so keys must match that form.
            emotion = name.strip().lower()
            if emotion not in EMOTIONS:
                self.report.error(
                    emotion_path,
                    f"unknown emotion {name!r}{suggest(emotion, EMOTIONS)}; "
                    f"the interface defines {', '.join(EMOTIONS)}",
                    key=True,
                )
                continue
            if emotion in result:
                self.report.error(emotion_path, f"emotion {emotion!r} is given twice", key=True)
                continue
            parsed = self.read.mapping(options, emotion_path)
            if parsed is not None or options is None:
                result[emotion] = MappingProxyType(parsed or {})
        return result
