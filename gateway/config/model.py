"""The routing file as the gateway uses it: frozen dataclasses, and the problems found in it.

The enum-like fields are ``Literal`` types, checked when the file is loaded against the same
types (:data:`UNKNOWN_VOICE_CHOICES` and its siblings), so no user of a loaded config needs a cast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from providers.base import ProviderConfig

#: What a VoiceId with no voice gets: the default voice, or a 404.
UnknownVoice = Literal["default", "reject"]
#: The gateway's log level.
LogLevel = Literal["debug", "info", "warning", "error"]
#: How the gateway's log lines are written: ``key=value`` text, or one JSON object per line.
LogFormat = Literal["text", "json"]
#: How the audio is resampled (see :attr:`ServerConfig.resampler`).
Resampler = Literal["auto", "low_latency", "block"]

UNKNOWN_VOICE_CHOICES: Final[tuple[UnknownVoice, ...]] = get_args(UnknownVoice)
LOG_LEVEL_CHOICES: Final[tuple[LogLevel, ...]] = get_args(LogLevel)
LOG_FORMAT_CHOICES: Final[tuple[LogFormat, ...]] = get_args(LogFormat)
RESAMPLER_CHOICES: Final[tuple[Resampler, ...]] = get_args(Resampler)

_GLOB_CHARS: Final = frozenset("*?[")
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


def is_pattern(key: str) -> bool:
    """Whether a voice key is an fnmatch pattern (contains ``*``, ``?`` or ``[``)."""
    return any(c in _GLOB_CHARS for c in key)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One mistake in a routing file: where it is and what is wrong."""

    source: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The routing file is unusable; :attr:`problems` lists every mistake found, and
    :attr:`warnings` what was found besides (see :attr:`GatewayConfig.warnings`)."""

    def __init__(
        self, problems: list[ConfigProblem], warnings: tuple[ConfigProblem, ...] = ()
    ) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
        self.warnings = warnings


@dataclass(frozen=True, slots=True)
class ClientTimeouts:
    """``server.timeouts``, seconds: the request head must arrive within ``header`` of the
    connection opening (or of its first byte after a keep-alive pause), the body within ``body``
    of the head; an idle keep-alive connection is closed after ``keep_alive``."""

    header: float = 5.0
    body: float = 10.0
    keep_alive: float = 5.0


@dataclass(frozen=True, slots=True)
class MetricsEndpoint:
    """``server.metrics``: ``/metrics`` on a port of its own (``port``; it is then not served
    on the main port), and/or only to a caller with a configured token (``token``, on the
    main port)."""

    port: int | None = None
    token: bool = False


@dataclass(frozen=True, slots=True)
class WarmPhrase:
    """One ``server.cache.warm`` entry: a phrase synthesized into the cache at start."""

    voice: str
    text: str
    sample_rate: int = 24000
    emotion: str | None = None


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """``server.cache``: the phrase cache (used by the voices that say ``cache: true``)."""

    memory_mb: float = 64.0
    """In-process LRU bound, in MiB of stored audio (0: no in-process cache)."""
    redis_url: str | None = None
    """Shared by every process and replica when set."""
    ttl: float = 86400.0
    """Seconds an entry lives."""
    max_text_chars: int = 200
    """Longer (shaped) texts are never cached."""
    skip_digits: bool = True
    """Texts with a digit (amounts, codes, numbers: often personal) are never cached."""
    warm: tuple[WarmPhrase, ...] = ()
    """Synthesized into the cache at start (and at each reload, when not already there)."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The ``server:`` block: the HTTP endpoint, its limits and how unknown VoiceIds are met."""

    path: str = "/stream-audio"
    content_type: str = "audio/pcm"
    tokens: tuple[str, ...] = ()
    token_names: tuple[str | None, ...] = ()
    """The name of each of :attr:`tokens` (same order; ``None`` where the file gives none):
    the tenant its requests and characters are counted under."""
    max_text_chars: int = 2000
    max_body_bytes: int = 65536
    max_concurrent_streams: int = 1000
    unknown_voice: UnknownVoice = "default"
    default_voice: str | None = None
    host: str = "0.0.0.0"
    port: int = 8080
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    drain_seconds: float = 10.0
    timeouts: ClientTimeouts = field(default_factory=ClientTimeouts)
    max_connections: int = 4096
    """Open client connections per process; beyond it a new connection gets 503 and is closed."""
    workers: int = 0
    """Processes serving the port; 0 is ``auto``: one per core."""
    watch: bool = True
    """Reload the routing file when it changes on disk."""
    metrics: MetricsEndpoint = field(default_factory=MetricsEndpoint)
    cache: CacheConfig = field(default_factory=CacheConfig)
    openai_api: bool = True
    """``POST /v1/audio/speech`` and ``GET /v1/models`` on the same routing."""
    playground: bool = False
    """``GET /playground``: the audition page."""
    resampler: Resampler = "auto"
    """``auto`` (by the first chunk), ``low_latency`` (every 20 ms chunk answered: a polyphase
    FIR for small rational ratios, 2.4-7 ms held back, ~1 KiB per stream; soxr's variable-rate
    filter for other ratios, 10-30 ms held back, about twice the CPU and ~50 KiB) or ``block``
    (soxr's default filter: about two thirds of the polyphase filter's CPU, ~70-140 KiB per
    stream, 20-40 ms held back)."""


@dataclass(frozen=True, slots=True)
class TextShaping:
    """A voice's ``text:`` block: how the caller's text is shaped before the provider (and the
    cache) sees it. Whitespace is always normalized when the block is given."""

    strip_markdown: bool = False
    """Emphasis, headings, backticks, links (their text kept), list markers, quotes, rules and
    table rules removed; fenced code blocks and emoji dropped (see :mod:`gateway.shaping`)."""
    lexicon: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    """Whole-word replacements, case-sensitive (``SQL: sequel``)."""


@dataclass(frozen=True, slots=True)
class VoiceConfig:
    """One ``voices:`` entry. ``key`` is the VoiceId, or a glob pattern matching VoiceIds."""

    key: str
    provider: str
    voice: str | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    emotions: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _EMPTY)
    fallback: tuple[str, ...] = ()
    line: int | None = None
    hedge_after: float | None = None
    """Seconds without audio before the next voice of the chain starts beside this one."""
    sticky_fallback: float | None = None
    """Seconds a call answered by a fallback keeps it for its later sentences."""
    cache: bool = False
    """Answers may come from, and go to, the phrase cache."""
    text: TextShaping | None = None
    """Shaping of the text before the provider sees it (``None``: sent as the caller wrote it)."""

    @property
    def is_pattern(self) -> bool:
        """Whether the key is an fnmatch pattern (contains ``*``, ``?`` or ``[``)."""
        return is_pattern(self.key)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """A whole routing file, validated. ``voices`` keeps file order (pattern priority)."""

    server: ServerConfig
    providers: Mapping[str, ProviderConfig]
    voices: Mapping[str, VoiceConfig]
    source: str
    warnings: tuple[ConfigProblem, ...] = ()
    """What does not make the file invalid but will make a provider fail (a missing optional
    dependency): from :meth:`providers.base.Provider.check_environment`."""


def default_config() -> GatewayConfig:
    """What the gateway runs without a routing file: the bundled Piper voice ``joe``.

    Built directly rather than parsed so that it needs no provider plugin to be importable."""
    # Piper's own defaults (PiperProvider.default_max_concurrency, .default_queue).
    local = ProviderConfig(name="local", type="piper", max_concurrency=2, queue=5.0)
    joe = VoiceConfig(key="joe", provider="local")
    return GatewayConfig(
        server=ServerConfig(default_voice="joe", unknown_voice="default"),
        providers=MappingProxyType({"local": local}),
        voices=MappingProxyType({"joe": joe}),
        source="<built-in default>",
    )
