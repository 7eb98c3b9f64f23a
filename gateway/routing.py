"""VoiceId -> voice chain: which voices, on which providers, to try for one request, in order.

A VoiceId is looked up as an exact voice key first, then against the glob patterns in file order,
then (when ``server.unknown_voice`` is ``default``) falls back to the default voice. The chain is
the matched voice followed by its fallbacks, flattened: each fallback brings its own fallbacks
right after itself, and a voice that appears twice is only tried the first time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from providers.base import ProviderConfig

from .config import GatewayConfig, VoiceConfig
from .shaping import TextShaper, flatten

__all__ = ["ChainStep", "Router"]


@dataclass(frozen=True, slots=True)
class ChainStep:
    """One step of a chain: the voice, its provider, and the voice name to send the provider."""

    voice: VoiceConfig
    provider: ProviderConfig
    provider_voice: str
    shaper: TextShaper | None = None
    """The voice's ``text:`` shaping, compiled (``None``: the text goes as written)."""

    def shape(self, text: str) -> str:
        """``text`` as this voice speaks it (maybe empty: nothing left to speak). Without a
        ``text:`` block that is the caller's text with its line breaks as spaces; with one, the
        shaper sees the lines (Markdown is line-based)."""
        return flatten(text) if self.shaper is None else self.shaper(text)

    def answering_voice(self, voice_id: str) -> str:
        """The routing file's name for this voice when it answers a request for ``voice_id``
        (the VoiceId itself when a pattern matched it)."""
        return voice_id if self.voice.is_pattern else self.voice.key


class Router:
    """Resolves VoiceIds against one routing file. Everything that does not depend on the
    VoiceId is computed here, once, so that :meth:`resolve` is a dict lookup or a pattern scan.

    ``config`` is expected to come from :func:`gateway.config.parse_config`; a hand-built config
    that names unknown voices or providers raises :class:`ValueError` here rather than on the
    first request.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._exact: dict[str, VoiceConfig] = {}
        self._patterns: list[VoiceConfig] = []
        self._shapers: dict[str, TextShaper] = {
            key: TextShaper(voice.text)
            for key, voice in config.voices.items()
            if voice.text is not None
        }
        for voice in config.voices.values():
            if voice.is_pattern:
                self._patterns.append(voice)
            else:
                self._exact[voice.key] = voice
        # Fallback routes never depend on the VoiceId: precompute them for every voice.
        self._fallbacks: dict[str, tuple[ChainStep, ...]] = {
            key: tuple(self._route(v, v.key) for v in self._flatten(voice)[1:])
            for key, voice in config.voices.items()
        }
        self._chains: dict[str, tuple[ChainStep, ...]] = {
            key: self._chain(voice, key) for key, voice in self._exact.items()
        }
        default = config.server.default_voice
        self._default: tuple[ChainStep, ...] | None = None
        if default is not None:
            if default not in self._exact:
                raise ValueError(f"default voice {default!r} is not an exact voice")
            self._default = self._chains[default]

    def resolve(self, voice_id: str) -> list[ChainStep] | None:
        """The chain for ``voice_id``; ``None`` when it is unknown and unknown VoiceIds are
        rejected (or, for an empty VoiceId, when there is no default voice)."""
        if not voice_id:
            return self._copy(self._default)
        chain = self._chains.get(voice_id)
        if chain is not None:
            return list(chain)
        for pattern in self._patterns:
            if fnmatchcase(voice_id, pattern.key):
                return list(self._chain(pattern, voice_id))
        if self.config.server.unknown_voice == "default":
            return self._copy(self._default)
        return None

    def names(self, voice_id: str) -> bool:
        """Whether ``voice_id`` names a voice of the file: an exact voice or a pattern's match
        (not merely the default voice an unknown VoiceId falls back to)."""
        if voice_id in self._chains:
            return True
        return any(fnmatchcase(voice_id, pattern.key) for pattern in self._patterns)

    def table(self) -> list[dict[str, Any]]:
        """The routing table, one JSON-ready row per voice in file order."""
        default = self.config.server.default_voice
        return [
            {
                "voice": key,
                "pattern": voice.is_pattern,
                "provider": voice.provider,
                "type": self._provider(voice).type,
                "provider_voice": voice.voice,
                "fallback": [route.voice.key for route in self._fallbacks[key]],
                "hedge_after": voice.hedge_after,
                "sticky_fallback": voice.sticky_fallback,
                "cache": voice.cache,
                "default": key == default,
            }
            for key, voice in self.config.voices.items()
        ]

    # ---------------------------------------------------------------------------- internals

    @staticmethod
    def _copy(chain: tuple[ChainStep, ...] | None) -> list[ChainStep] | None:
        return None if chain is None else list(chain)

    def _chain(self, voice: VoiceConfig, requested: str) -> tuple[ChainStep, ...]:
        return (self._route(voice, requested), *self._fallbacks[voice.key])

    def _route(self, voice: VoiceConfig, requested: str) -> ChainStep:
        # Without an explicit provider voice the provider gets the name that was asked for:
        # the VoiceId itself for exact and pattern matches, the voice key otherwise.
        return ChainStep(
            voice, self._provider(voice), voice.voice or requested, self._shapers.get(voice.key)
        )

    def _provider(self, voice: VoiceConfig) -> ProviderConfig:
        try:
            return self.config.providers[voice.provider]
        except KeyError:
            raise ValueError(
                f"voice {voice.key!r} uses unknown provider {voice.provider!r}"
            ) from None

    def _flatten(self, voice: VoiceConfig) -> list[VoiceConfig]:
        """``voice``, then each fallback followed by its own flattened fallbacks, each voice
        once (first occurrence kept). Cycles are rejected by the loader; the seen-set also
        keeps a hand-built cyclic config from looping here."""
        order: list[VoiceConfig] = []
        seen: set[str] = set()

        def walk(names: Iterable[str], owner: str) -> None:
            for name in names:
                if name in seen:
                    continue
                target = self._exact.get(name)
                if target is None:
                    raise ValueError(f"voice {owner!r} falls back to unknown voice {name!r}")
                seen.add(name)
                order.append(target)
                walk(target.fallback, name)

        seen.add(voice.key)
        order.append(voice)
        walk(voice.fallback, voice.key)
        return order
