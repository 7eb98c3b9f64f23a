"""The whole routing file checked: its top-level keys, then each section, then the
cross-checks, every problem collected before any is raised."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, TypeVar

from .fallbacks import check_fallbacks
from .messages import child
from .model import GatewayConfig
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

    if report.problems:
        raise report.fail()
    return GatewayConfig(
        server=_present(server),
        providers=MappingProxyType({k: _present(v) for k, v in providers.items()}),
        voices=MappingProxyType({k: _present(v) for k, v in voices.items()}),
        source=source,
        warnings=tuple(report.warnings),
    )


def _present(value: _T | None) -> _T:
    # Only reached when no problem was recorded, and every None above comes with a problem.
    assert value is not None
    return value
