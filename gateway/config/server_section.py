"""The ``server:`` section: the endpoint, its limits, TLS, client timeouts and the default voice."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

from .messages import child, shown, suggest
from .model import (
    LOG_FORMAT_CHOICES,
    LOG_LEVEL_CHOICES,
    RESAMPLER_CHOICES,
    UNKNOWN_VOICE_CHOICES,
    ClientTimeouts,
    MetricsEndpoint,
    ServerConfig,
    is_pattern,
)
from .readers import Reader

_SERVER_KEYS: Final = (
    "path",
    "content_type",
    "tokens",
    "max_text_chars",
    "max_body_bytes",
    "max_concurrent_streams",
    "unknown_voice",
    "default_voice",
    "host",
    "port",
    "ssl_certfile",
    "ssl_keyfile",
    "log_level",
    "log_format",
    "drain_seconds",
    "resampler",
    "timeouts",
    "max_connections",
    "workers",
    "watch",
    "metrics",
)
_METRICS_KEYS: Final = ("port", "token")
#: The most worker processes a routing file may ask for.
MAX_WORKERS: Final = 256
_CLIENT_TIMEOUT_KEYS: Final = ("header", "body", "keep_alive")


class ServerSection:
    """Checks the ``server:`` block of one file; every key is optional."""

    def __init__(self, read: Reader) -> None:
        self.read = read
        self.report = read.report

    def check(self, value: Any, voice_keys: Collection[str]) -> ServerConfig | None:
        """The block as a :class:`ServerConfig` (defaults where a key is absent or wrong: the
        problem is reported). ``voice_keys`` are the voices the default voice may name."""
        path = "server"
        read = self.read
        block = read.mapping(value, path) or {}
        read.check_keys(block, path, _SERVER_KEYS)
        fields: dict[str, Any] = {}

        def put(name: str, reader: Callable[[Any, str], Any]) -> None:
            if name in block:
                parsed = reader(block[name], child(path, name))
                if parsed is not None:
                    fields[name] = parsed

        put("path", self.server_path)
        put("content_type", lambda v, p: read.string(v, p, non_empty=True))
        put("tokens", self.tokens)
        put("max_text_chars", lambda v, p: read.integer(v, p, 1))
        # Bodies are parsed on the event loop: 1 MiB bounds that at tens of milliseconds.
        put("max_body_bytes", lambda v, p: read.integer(v, p, 1024, 1 << 20))
        put("max_concurrent_streams", lambda v, p: read.integer(v, p, 1))
        put("unknown_voice", lambda v, p: read.choice(v, p, UNKNOWN_VOICE_CHOICES))
        put("default_voice", read.name)
        put("host", lambda v, p: read.string(v, p, non_empty=True))
        put("port", lambda v, p: read.integer(v, p, 0, 65535))
        put("ssl_certfile", lambda v, p: read.string(v, p, non_empty=True))
        put("ssl_keyfile", lambda v, p: read.string(v, p, non_empty=True))
        put("log_level", lambda v, p: read.choice(v, p, LOG_LEVEL_CHOICES))
        put("log_format", lambda v, p: read.choice(v, p, LOG_FORMAT_CHOICES))
        put("resampler", lambda v, p: read.choice(v, p, RESAMPLER_CHOICES))
        put("drain_seconds", lambda v, p: read.number(v, p, 0))
        put("timeouts", self.client_timeouts)
        put("max_connections", lambda v, p: read.integer(v, p, 1))
        put("workers", self.workers)
        put("watch", self.boolean)
        put("metrics", self.metrics)

        pair = ("ssl_certfile", "ssl_keyfile")
        # A value that failed its own check is already reported; don't also call it missing.
        settled = all(block.get(k) is None or k in fields for k in pair)
        if settled and ("ssl_certfile" in fields) != ("ssl_keyfile" in fields):
            given, other = pair if "ssl_certfile" in fields else pair[::-1]
            self.report.error(
                child(path, given), f"{given} needs {other} too (give both or neither)"
            )

        metrics = fields.get("metrics")
        tokens_read = block.get("tokens") is None or "tokens" in fields
        if metrics is not None and metrics.token and tokens_read and not fields.get("tokens"):
            # Without a token to ask for, every caller would be let in: not what was asked.
            self.report.error(
                child(child(path, "metrics"), "token"),
                "needs server.tokens (a token the scraper sends); without one /metrics "
                "would be open to every caller",
            )

        self.check_default_voice(block, fields, voice_keys)
        return ServerConfig(**fields)

    def workers(self, value: Any, path: str) -> int | None:
        """``server.workers``: ``auto`` (0: one per core) or a number of processes."""
        if isinstance(value, str) and value.strip().lower() == "auto":
            return 0
        if isinstance(value, str) and not value.strip().isdigit():
            self.report.error(path, f"expected 'auto' or an integer >= 1, got {shown(value)}")
            return None
        return self.read.integer(value, path, 1, MAX_WORKERS)

    def boolean(self, value: Any, path: str) -> bool | None:
        """A yes/no (``true``/``false``; from the environment also ``1``/``0``, ``on``/``off``)."""
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            if word in ("true", "1", "yes", "on"):
                return True
            if word in ("false", "0", "no", "off"):
                return False
        self.report.error(path, f"expected true or false, got {shown(str(value))}")
        return None

    def metrics(self, value: Any, path: str) -> MetricsEndpoint | None:
        """``server.metrics``: ``port`` (serve ``/metrics`` there instead, or null) and
        ``token`` (require a configured token on ``/metrics``)."""
        block = self.read.mapping(value, path)
        if block is None:
            return None
        self.read.check_keys(block, path, _METRICS_KEYS)
        fields: dict[str, Any] = {}
        if block.get("port") is not None:
            port = self.read.integer(block["port"], child(path, "port"), 1, 65535)
            if port is None:
                return None
            fields["port"] = port
        if block.get("token") is not None:
            token = self.boolean(block["token"], child(path, "token"))
            if token is None:
                return None
            fields["token"] = token
        return MetricsEndpoint(**fields)

    def client_timeouts(self, value: Any, path: str) -> ClientTimeouts | None:
        """``server.timeouts``: each one a number of seconds > 0."""
        block = self.read.mapping(value, path)
        if block is None:
            return None
        self.read.check_keys(block, path, _CLIENT_TIMEOUT_KEYS)
        values: dict[str, float] = {}
        for key in _CLIENT_TIMEOUT_KEYS:
            if key in block:
                number = self.read.number(block[key], child(path, key), 0, strict=True)
                if number is None:
                    return None
                values[key] = number
        return ClientTimeouts(**values)

    def server_path(self, value: Any, path: str) -> str | None:
        """``server.path``: the endpoint's URL path."""
        text = self.read.string(value, path)
        if text is not None and not text.startswith("/"):
            self.report.error(path, f"must start with '/', got {shown(text)}")
            return None
        return text

    def tokens(self, value: Any, path: str) -> tuple[str, ...] | None:
        """``server.tokens``: one token or a list; empty ones are dropped."""
        items = self.read.strings(value, path, allow_empty=True, limit=None)
        if items is None:
            return None
        # "${TTS_GATEWAY_TOKEN:-}" expands to "" when unset: that means "no such token".
        return tuple(token for _, token in items if token)

    def check_default_voice(
        self, block: Mapping[str, Any], fields: Mapping[str, Any], voice_keys: Collection[str]
    ) -> None:
        """The default voice is required when unknown VoiceIds get it, and names an exact
        voice of the file."""
        path = child("server", "default_voice")
        if not voice_keys:
            return  # no usable voices section: that problem is reported, this would be noise
        if any(
            block.get(k) is not None and k not in fields for k in ("default_voice", "unknown_voice")
        ):
            return  # a bad value there is already reported
        default = fields.get("default_voice")
        if default is None:
            if fields.get("unknown_voice", "default") == "default":
                self.report.error(
                    path,
                    "required when unknown_voice is 'default' "
                    "(name an exact voice, or set unknown_voice: reject)",
                    line=self.report.line_of(path, key=True)
                    or self.report.line_of("server", key=True),
                )
            return
        if default not in voice_keys:
            exact = [k for k in voice_keys if not is_pattern(k)]
            self.report.error(path, f"unknown voice {default!r}{suggest(default, exact)}")
        elif is_pattern(default):
            self.report.error(path, f"must name an exact voice, not the pattern {default!r}")
