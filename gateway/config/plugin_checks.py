"""What each provider plugin checks itself: its type loaded on demand, its settings, its
options, and its warnings about this machine.

A plugin's code is not the gateway's: a plugin that fails to import, or whose check raises, is
one problem (or, for the environment check, one warning) among the rest, never a crash that
hides the rest of the report.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from providers.base import Provider, provider_class, provider_types

from .limits import MAX_NAME
from .messages import child, suggest
from .readers import Reader
from .report import contains_invalid


class PluginChecks:
    """Runs the plugins' own checks for one file, reporting what they find at its key path."""

    def __init__(self, read: Reader) -> None:
        self.read = read
        self.report = read.report
        self._known_types: list[str] | None = None

    def load_type(self, block: dict[str, Any], path: str) -> type[Provider] | None:
        """The plugin class named by ``type``. Only this type's plugin is imported, so a broken
        or heavy plugin that the file does not use costs nothing."""
        if block.get("type") is None:
            self.report.error(path, "missing required key 'type'", key=True)
            return None
        type_name = self.read.string(
            block["type"], child(path, "type"), non_empty=True, limit=MAX_NAME
        )
        if type_name is None:
            return None
        if self._known_types is None:
            # Listing the types scans every installed package's entry points (milliseconds):
            # once per file, not once per provider block.
            self._known_types = provider_types()
        known = self._known_types
        if type_name not in known:
            self.report.error(
                child(path, "type"),
                f"unknown provider type {type_name!r}{suggest(type_name, known)}; "
                f"known types: {', '.join(known)}",
            )
            return None
        try:
            return provider_class(type_name)
        except Exception as exc:  # a plugin's import error must become a problem, not a crash
            self.report.error(
                child(path, "type"),
                f"provider type {type_name!r} cannot be loaded: {type(exc).__name__}: {exc}",
            )
            return None

    def settings(self, cls: type[Provider], settings: dict[str, Any], path: str) -> None:
        """The plugin's check of a provider block's settings."""
        try:
            found = cls.validate_settings(MappingProxyType(settings))
        except Exception as exc:  # a plugin bug must not hide the rest of the report
            self.report.error(path, f"settings check failed: {type(exc).__name__}: {exc}", key=True)
            return
        for key, problem in found:
            target = child(path, key) if key else path
            line = self.report.line_of(target) or self.report.line_of(path, key=True)
            self.report.error(target, problem, line=line)

    def environment(self, cls: type[Provider], settings: dict[str, Any], path: str) -> None:
        """The plugin's warnings about this machine (a missing optional dependency)."""
        try:
            found = cls.check_environment(MappingProxyType(settings))
        except Exception as exc:  # a plugin bug must not fail a valid file
            found = [("", f"environment check failed: {type(exc).__name__}: {exc}")]
        for key, message in found:
            target = child(path, key) if key else path
            line = self.report.line_of(target) or self.report.line_of(path, key=True)
            self.report.warn(target, message, line)

    def options(self, cls: type[Provider], options: dict[str, Any], path: str) -> None:
        """The plugin's own check of an ``options`` block (provider, voice or emotion)."""
        if contains_invalid(options):
            return
        try:
            found = cls.validate_options(MappingProxyType(options))
        except Exception as exc:  # a plugin bug must not hide the rest of the report
            self.report.error(path, f"options check failed: {type(exc).__name__}: {exc}")
            return
        for key, problem in found:
            target = child(path, key) if key else path
            self.report.error(
                target, problem, line=self.report.line_of(target) or self.report.line_of(path)
            )
