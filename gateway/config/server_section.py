"""The ``server:`` section: the endpoint, its limits, TLS, client timeouts and the default voice."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

from providers.base import EMOTIONS, SAMPLE_RATES

from .messages import child, item, shown, suggest
from .model import (
    LOG_FORMAT_CHOICES,
    LOG_LEVEL_CHOICES,
    RESAMPLER_CHOICES,
    UNKNOWN_VOICE_CHOICES,
    CacheConfig,
    ClientTimeouts,
    MetricsEndpoint,
    ServerConfig,
    WarmPhrase,
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
    "cache",
    "openai_api",
    "playground",
)
_METRICS_KEYS: Final = ("port", "token")
_CACHE_KEYS: Final = ("memory_mb", "redis_url", "ttl", "max_text_chars", "skip_digits", "warm")
_WARM_KEYS: Final = ("voice", "text", "sample_rate", "emotion")
_TOKEN_KEYS: Final = ("name", "token")
#: The most warm phrases (each is one synthesis at start).
MAX_WARM: Final = 10_000
#: The largest in-process cache, in MiB.
MAX_CACHE_MB: Final = 1 << 20
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
        if "tokens" in block:
            tokens = self.tokens(block["tokens"], child(path, "tokens"))
            if tokens is not None:
                fields["tokens"] = tuple(token for token, _ in tokens)
                if any(name is not None for _, name in tokens):
                    fields["token_names"] = tuple(name for _, name in tokens)
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
        put("cache", self.cache)
        put("openai_api", self.boolean)
        put("playground", self.boolean)

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

    def tokens(self, value: Any, path: str) -> list[tuple[str, str | None]] | None:
        """``server.tokens``: one token or a list, each a string or ``{name, token}`` (the
        name is the tenant its requests are counted under); empty tokens are dropped."""
        if isinstance(value, list) and any(isinstance(entry, dict) for entry in value):
            result: list[tuple[str, str | None]] = []
            names: dict[str, str] = {}  # each name given, and where
            for i, entry in enumerate(value):
                where = item(path, i)
                if not isinstance(entry, dict):
                    found = self.read.strings(entry, where, allow_empty=True, limit=None)
                    result.extend((token, None) for _, token in found or () if token)
                    continue
                self.read.check_keys(entry, where, _TOKEN_KEYS, required=("name", "token"))
                name = self.read.name(entry.get("name"), child(where, "name"), limit=64)
                token = self.read.name(
                    entry.get("token"), child(where, "token"), non_empty=False, limit=None
                )
                if name is not None and name in names:
                    self.report.error(child(where, "name"), f"name {name!r} is given twice")
                elif name is not None:
                    names[name] = child(where, "name")
                if name is not None and token:
                    result.append((token, name))
            for position, (_, name) in enumerate(result, 1):
                # An unnamed token is counted as token-N: a name that is the same would merge
                # two tenants' counts.
                taken = f"token-{position}"
                if name is None and taken in names:
                    self.report.error(
                        names[taken],
                        f"name {taken!r} is what the unnamed token in place {position} is "
                        "counted under; name that token, or choose another name",
                    )
            return result
        items = self.read.strings(value, path, allow_empty=True, limit=None)
        if items is None:
            return None
        # "${TTS_GATEWAY_TOKEN:-}" expands to "" when unset: that means "no such token".
        return [(token, None) for _, token in items if token]

    def cache(self, value: Any, path: str) -> CacheConfig | None:
        """``server.cache``: the phrase cache's bounds, its Redis and its warm phrases."""
        read = self.read
        block = read.mapping(value, path)
        if block is None:
            return None
        read.check_keys(block, path, _CACHE_KEYS)
        fields: dict[str, Any] = {}
        if block.get("memory_mb") is not None:
            fields["memory_mb"] = read.number(block["memory_mb"], child(path, "memory_mb"), 0)
            if fields["memory_mb"] is not None and fields["memory_mb"] > MAX_CACHE_MB:
                self.report.error(child(path, "memory_mb"), f"must be at most {MAX_CACHE_MB}")
        if block.get("redis_url") is not None:
            url = read.string(block["redis_url"], child(path, "redis_url"))
            if url is not None and url.strip():
                if not url.startswith(("redis://", "rediss://", "unix://")):
                    self.report.error(
                        child(path, "redis_url"),
                        "must be a redis://, rediss:// or unix:// URL (or empty: no Redis)",
                    )
                else:
                    fields["redis_url"] = url.strip()
        if block.get("ttl") is not None:
            fields["ttl"] = read.number(block["ttl"], child(path, "ttl"), 0, strict=True)
        if block.get("max_text_chars") is not None:
            fields["max_text_chars"] = read.integer(
                block["max_text_chars"], child(path, "max_text_chars"), 1, 100_000
            )
        if block.get("skip_digits") is not None:
            fields["skip_digits"] = self.boolean(block["skip_digits"], child(path, "skip_digits"))
        if block.get("warm") is not None:
            fields["warm"] = self.warm(block["warm"], child(path, "warm"))
        if any(v is None for v in fields.values()):
            return None
        return CacheConfig(**fields)

    def warm(self, value: Any, path: str) -> tuple[WarmPhrase, ...] | None:
        """``server.cache.warm``: a list of ``{voice, text, sample_rate?, emotion?}``."""
        read = self.read
        if not isinstance(value, list):
            self.report.error(path, "expected a list of {voice, text} entries")
            return None
        if len(value) > MAX_WARM:
            self.report.error(path, f"at most {MAX_WARM} phrases, got {len(value)}")
            return None
        phrases: list[WarmPhrase] = []
        for i, entry in enumerate(value):
            where = item(path, i)
            block = read.entry(entry, where, "voice")
            if block is None:
                continue
            read.check_keys(block, where, _WARM_KEYS, required=("voice", "text"))
            voice = read.name(block.get("voice"), child(where, "voice"))
            text = read.string(block.get("text"), child(where, "text"), non_empty=True)
            rate = 24000
            if block.get("sample_rate") is not None:
                rate = read.integer(block["sample_rate"], child(where, "sample_rate"), 1) or 0
                if rate and rate not in SAMPLE_RATES:
                    allowed = ", ".join(map(str, SAMPLE_RATES))
                    self.report.error(child(where, "sample_rate"), f"must be one of {allowed}")
            emotion = None
            if block.get("emotion") is not None:
                emotion = read.choice(block["emotion"], child(where, "emotion"), EMOTIONS)
            if voice is not None and text is not None and rate:
                phrases.append(WarmPhrase(voice, text, rate, emotion))
        return tuple(phrases)

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
