"""The whole routing file checked: its top-level keys, then each section, then the
cross-checks, every problem collected before any is raised."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Final, TypeVar

from providers.base import ProviderConfig

from .fallbacks import check_fallbacks
from .messages import child, item
from .model import GatewayConfig, ServerConfig, VoiceConfig, WarmPhrase, is_pattern
from .plugin_checks import PluginChecks
from .provider_section import ProviderSection
from .readers import Reader
from .report import Report
from .server_section import ServerSection
from .voice_section import VoiceSection
from .yaml_reader import read_document

_TOP_KEYS: Final = ("server", "providers", "voices")

_T = TypeVar("_T")


def check_file(text: str, source: str, env: Mapping[str, str]) -> GatewayConfig:
    """The routing file ``text`` (named ``source`` in problems), validated, with ``${VAR}``
    expanded from ``env``. Raises :class:`ConfigError` listing every problem."""
    report = Report(source)
    document = read_document(text, report, env)
    root = document.root
    if not isinstance(root, dict):
        report.error("", f"the file must be a mapping of {', '.join(_TOP_KEYS)}")
        raise report.fail()
    read = Reader(report, document.raw)
    read.check_keys(root, "", _TOP_KEYS, required=("providers", "voices"))

    plugin_checks = PluginChecks(read)
    provider_section = ProviderSection(read, plugin_checks)
    voice_section = VoiceSection(read, provider_section.plugins, plugin_checks)
    provider_blocks = read.section(root, "providers")
    voice_blocks = read.section(root, "voices")
    providers = {
        name: provider_section.check(name, block, child("providers", name))
        for name, block in provider_blocks.items()
    }
    voices = {
        key: voice_section.check(key, block, child("voices", key), provider_blocks)
        for key, block in voice_blocks.items()
    }
    check_fallbacks(report, voice_section.fallback_refs, list(voice_blocks))
    server = ServerSection(read).check(root.get("server"), set(voice_blocks))
    if server is not None:
        _check_warm(report, server, voices)

    if report.problems:
        raise report.fail()
    server = _present(server)
    return GatewayConfig(
        server=server,
        providers=MappingProxyType(
            {
                name: _concurrency(_present(pc), provider_blocks[name], provider_section, server)
                for name, pc in providers.items()
            }
        ),
        voices=MappingProxyType({k: _present(v) for k, v in voices.items()}),
        source=source,
        warnings=tuple(report.warnings),
    )


def _check_warm(
    report: Report, server: ServerConfig, voices: Mapping[str, VoiceConfig | None]
) -> None:
    """Each warm phrase names an exact voice whose answers go to the cache."""
    _check_phrases(report, server.cache.warm, voices, child(child("server", "cache"), "warm"))


def check_phrase_list(
    text: str, source: str, voices: Mapping[str, VoiceConfig]
) -> tuple[WarmPhrase, ...]:
    """A YAML list of phrases to warm (``{voice, text, sample_rate?, emotion?}``, as
    ``server.cache.warm`` has them), each checked against the routing file's ``voices``.
    Raises :class:`ConfigError` listing every problem."""
    report = Report(source)
    document = read_document(text, report, {})
    phrases = ServerSection(Reader(report, document.raw)).warm(document.root, "")
    if phrases is not None:
        _check_phrases(report, phrases, voices, "")
    if report.problems or phrases is None:
        raise report.fail()
    return phrases


def _check_phrases(
    report: Report,
    phrases: Sequence[WarmPhrase],
    voices: Mapping[str, VoiceConfig | None],
    path: str,
) -> None:
    for i, phrase in enumerate(phrases):
        where = child(item(path, i), "voice")
        if phrase.voice not in voices:
            report.error(where, f"unknown voice {phrase.voice!r}")
        elif is_pattern(phrase.voice):
            report.error(where, f"must name an exact voice, not the pattern {phrase.voice!r}")
        else:
            voice = voices[phrase.voice]
            if voice is not None and not voice.cache:
                report.error(
                    where, f"voice {phrase.voice!r} has no 'cache: true': the phrase would be lost"
                )


def _concurrency(
    config: ProviderConfig, block: Any, section: ProviderSection, server: ServerConfig
) -> ProviderConfig:
    """``max_concurrency`` as given, else the plugin's own bound, else the gateway's stream
    limit: an HTTP API's limit is the plan's, which the gateway cannot know, and a default
    under the stream limit would queue callers the provider could serve."""
    if isinstance(block, dict) and block.get("max_concurrency") is not None:
        return config
    plugin = section.plugins.get(config.name)
    default = plugin.default_max_concurrency if plugin is not None else None
    return replace(config, max_concurrency=default or server.max_concurrent_streams)


def _present(value: _T | None) -> _T:
    # Only reached when no problem was recorded, and every None above comes with a problem.
    assert value is not None
    return value
