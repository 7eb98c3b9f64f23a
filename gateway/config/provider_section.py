"""The ``providers:`` section: one block per provider, its plugin type, the common keys
(``max_concurrency``, ``queue``, ``timeout``, ``retry``, ``circuit_breaker``, ``retry_budget``,
``options``) and the plugin's own settings."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from providers.base import BreakerPolicy, Provider, ProviderConfig, RetryPolicy, Timeouts

from .messages import child, control_message, first_control
from .plugin_checks import PluginChecks
from .readers import Reader
from .report import contains_invalid

_PROVIDER_COMMON_KEYS: Final = (
    "type",
    "max_concurrency",
    "queue",
    "timeout",
    "retry",
    "circuit_breaker",
    "retry_budget",
    "options",
)
_TIMEOUT_KEYS: Final = ("connect", "first_byte", "total", "stall")
_RETRY_KEYS: Final = ("attempts", "backoff", "max_backoff")
_BREAKER_KEYS: Final = ("failures", "cooldown", "max_cooldown")
#: The longest wait any of these seconds may name (a day): a typo of a few zeros must not
#: park a provider, or a request, for a year.
MAX_SECONDS: Final = 86_400.0


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
        if cls is not None:
            fields["queue"] = cls.default_queue
        if block.get("queue") is not None:
            queue = self.seconds(block["queue"], child(path, "queue"), strict=False)
            if queue is not None:
                fields["queue"] = queue
        if "circuit_breaker" in block:
            fields["circuit_breaker"] = self.breaker(
                block["circuit_breaker"], child(path, "circuit_breaker")
            )
        if "retry_budget" in block and block["retry_budget"] is not None:
            share = read.number(block["retry_budget"], child(path, "retry_budget"), 0)
            if share is not None and share > 1:
                self.report.error(
                    child(path, "retry_budget"), f"must be a share from 0 to 1, got {share:g}"
                )
                share = None
            fields["retry_budget"] = share
        elif "retry_budget" in block:
            fields["retry_budget"] = None  # `retry_budget: null`: retries unbounded
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

    def seconds(self, value: Any, path: str, *, strict: bool = True) -> float | None:
        """Seconds, ``> 0`` (``>= 0`` unless ``strict``) and at most :data:`MAX_SECONDS`."""
        number = self.read.number(value, path, 0, strict=strict)
        if number is not None and number > MAX_SECONDS:
            self.report.error(path, f"must be at most {MAX_SECONDS:g} seconds, got {number:g}")
            return None
        return number

    def breaker(self, value: Any, path: str) -> BreakerPolicy | None:
        """``circuit_breaker``: ``false`` (or ``off``) turns it off, ``true`` or ``null`` keeps
        the defaults; else ``failures`` >= 1 and a cooldown no longer than its maximum."""
        if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "false")):
            return None
        if (
            value is None
            or value is True
            or (isinstance(value, str) and value.strip().lower() in ("on", "true"))
        ):
            return BreakerPolicy()
        block = self.read.mapping(value, path)
        if block is None:
            return BreakerPolicy()
        self.read.check_keys(block, path, _BREAKER_KEYS)
        values: dict[str, Any] = {}
        if "failures" in block:
            failures = self.read.integer(block["failures"], child(path, "failures"), 1, 1_000_000)
            if failures is not None:
                values["failures"] = failures
        for key in ("cooldown", "max_cooldown"):
            if key in block:
                number = self.seconds(block[key], child(path, key))
                if number is not None:
                    values[key] = number
        policy = BreakerPolicy(**values)
        if policy.max_cooldown < policy.cooldown:
            target = "max_cooldown" if "max_cooldown" in values else "cooldown"
            self.report.error(
                child(path, target),
                f"max_cooldown ({policy.max_cooldown:g}) must be at least "
                f"cooldown ({policy.cooldown:g})",
            )
        return policy

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
                number = self.seconds(block[key], child(path, key))
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
