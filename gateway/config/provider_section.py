"""The ``providers:`` section: one block per provider, its plugin type, the common keys
(``max_concurrency``, ``timeout``, ``retry``, ``options``) and the plugin's own settings."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from providers.base import Provider, ProviderConfig, RetryPolicy, Timeouts

from .messages import child, control_message, first_control
from .plugin_checks import PluginChecks
from .readers import Reader
from .report import contains_invalid

_PROVIDER_COMMON_KEYS: Final = ("type", "max_concurrency", "timeout", "retry", "options")
_TIMEOUT_KEYS: Final = ("connect", "first_byte", "total")
_RETRY_KEYS: Final = ("attempts", "backoff", "max_backoff")


class ProviderSection:
    """Checks the provider blocks of one file, remembering each provider's plugin class (in
    :attr:`plugins`) for the voices' option checks."""

    def __init__(self, read: Reader, plugin_checks: PluginChecks) -> None:
        self.read = read
        self.report = read.report
        self.plugin_checks = plugin_checks
        self.plugins: dict[str, type[Provider]] = {}  # provider name -> its plugin class

    def check(self, name: str, value: Any, path: str) -> ProviderConfig | None:
        """The block of provider ``name`` as a :class:`ProviderConfig`, or None when it has a
        problem."""
        read, plugin_checks = self.read, self.plugin_checks
        block = read.entry(value, path, "type")
        if block is None:
            return None
        cls = plugin_checks.load_type(block, path)
        if cls is not None:
            self.plugins[name] = cls
        if cls is not None:
            allowed = (*_PROVIDER_COMMON_KEYS, *sorted(cls.settings_keys))
            read.check_keys(block, path, allowed, required=sorted(cls.required_settings))
        fields: dict[str, Any] = {}
        if "max_concurrency" in block:
            max_concurrency = read.integer(
                block["max_concurrency"], child(path, "max_concurrency"), 1
            )
            if max_concurrency is not None:
                fields["max_concurrency"] = max_concurrency
        if "timeout" in block:
            timeout = self.timeouts(block["timeout"], child(path, "timeout"))
            if timeout is not None:
                fields["timeout"] = timeout
        if "retry" in block:
            retry = self.retry(block["retry"], child(path, "retry"))
            if retry is not None:
                fields["retry"] = retry
        options = read.mapping(block.get("options"), child(path, "options"))
        if cls is None or not isinstance(block.get("type"), str):
            return None
        if options:
            plugin_checks.options(cls, options, child(path, "options"))
        settings = {k: v for k, v in block.items() if k in cls.settings_keys and v is not None}
        missing = cls.required_settings - settings.keys()
        clean = self.check_settings_text(settings, path)
        if not missing and clean and not contains_invalid(settings):
            plugin_checks.settings(cls, settings, path)
            plugin_checks.environment(cls, settings, path)
        return ProviderConfig(
            name=name,
            type=block["type"],
            settings=MappingProxyType(settings),
            options=MappingProxyType(options or {}),
            **fields,
        )

    def check_settings_text(self, settings: Mapping[str, Any], path: str) -> bool:
        """Settings are keys, URLs, regions, file names: they go into request headers and
        URLs, where a control character (an env value's trailing newline) breaks the request
        late and obscurely. Whether none has one. (Options may hold prose: not checked.)"""
        clean = True
        for key, value in settings.items():
            text = first_control(value)
            if text is not None:
                # The message names the character, never the value: it may be a secret.
                self.report.error(child(path, key), control_message(text))
                clean = False
        return clean

    def timeouts(self, value: Any, path: str) -> Timeouts | None:
        """``timeout``: seconds > 0, the first byte due no later than the total."""
        block = self.read.mapping(value, path)
        if block is None:
            return None if value is not None else Timeouts()
        self.read.check_keys(block, path, _TIMEOUT_KEYS)
        values: dict[str, float] = {}
        ok = True
        for key in _TIMEOUT_KEYS:
            if key in block:
                number = self.read.number(block[key], child(path, key), 0, strict=True)
                ok = ok and number is not None
                if number is not None:
                    values[key] = number
        timeout = Timeouts(**values)
        if ok and timeout.first_byte > timeout.total:
            target = "total" if "total" in values else "first_byte"
            self.report.error(
                child(path, target),
                f"first_byte ({timeout.first_byte:g}) must not exceed total ({timeout.total:g})",
            )
            return None
        return timeout if ok else None

    def retry(self, value: Any, path: str) -> RetryPolicy | None:
        """``retry``: at least one attempt, and a backoff no longer than its maximum."""
        block = self.read.mapping(value, path)
        if block is None:
            return None if value is not None else RetryPolicy()
        self.read.check_keys(block, path, _RETRY_KEYS)
        ok = True
        values: dict[str, Any] = {}
        if "attempts" in block:
            attempts = self.read.integer(block["attempts"], child(path, "attempts"), 1)
            ok = attempts is not None
            if attempts is not None:
                values["attempts"] = attempts
        for key in ("backoff", "max_backoff"):
            if key in block:
                number = self.read.number(block[key], child(path, key), 0)
                ok = ok and number is not None
                if number is not None:
                    values[key] = number
        policy = RetryPolicy(**values)
        if ok and policy.max_backoff < policy.backoff:
            target = "max_backoff" if "max_backoff" in values else "backoff"
            self.report.error(
                child(path, target),
                f"max_backoff ({policy.max_backoff:g}) must be at least "
                f"backoff ({policy.backoff:g})",
            )
            return None
        return policy if ok else None
