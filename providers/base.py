"""The provider interface: what a voice plugin is, what it is given and what it may raise.

A provider is built from one ``providers:`` block of the routing file. For each synthesis job it
declares the *native* audio format it will produce (:meth:`Provider.native_format`) and then
streams bytes in exactly that format (:meth:`Provider.stream`). It never resamples, never retries
and never falls back: the gateway's converter and relay do that, once, for every provider.

Errors raised by providers form one tree; ``retryable`` tells the relay whether another attempt
(or the next voice in the chain) may succeed::

    ProviderError                 retryable unless stated
    ├── ProviderTimeout           yes: connect / first byte / read timed out
    ├── ProviderConnectionError   yes: refused, reset, DNS, TLS
    ├── ProviderNoAudio           yes: the stream ended without a single audio byte
    ├── ProviderSaturated         no: the provider is at its concurrency limit (the chain
    │                             moves on; not a failure for the circuit breaker)
    ├── ProviderProtocolError     no unless stated: an answer the API never sends (not audio
    │                             where audio was due, a malformed frame, over its size bound)
    └── ProviderHTTPError         408, 429, 5xx yes; any other status no; an error code inside a
                                  success answer as the provider classes it

What the caller is told of an error is its :attr:`ProviderError.summary`: a status, a timeout or
the provider's own error code, never the upstream's text (which may echo a secret); the reason,
with every secret masked (:meth:`Provider.redact`), goes to the log.
"""

from __future__ import annotations

import importlib
import json
import re
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal
from urllib.parse import quote

Encoding = Literal["s16le", "f32le"]
Container = Literal["raw", "wav"]

#: The sample rates the custom TTS interface allows a caller to ask for.
SAMPLE_RATES: tuple[int, ...] = (8000, 16000, 24000, 48000)

#: The emotions the custom TTS interface defines (``ExtendData.Emotion``).
EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad")


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """What a provider's bytes are.

    With ``container="wav"`` the stream starts with a RIFF/WAVE header and the converter takes
    rate, channels and encoding from it; the values here are then only the expectation.
    """

    sample_rate: int
    encoding: Encoding = "s16le"
    channels: int = 1
    container: Container = "raw"

    @property
    def frame_bytes(self) -> int:
        """Bytes per frame (one sample of every channel)."""
        return self.channels * (2 if self.encoding == "s16le" else 4)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. ``first_byte`` bounds everything before the first audio byte of one voice once
    it has a slot (connect, every retry and backoff); ``stall`` the silence of an upstream in the
    middle of an answer (no byte for that long ends the stream, end reason ``stall``); ``total``
    bounds one stream."""

    connect: float = 3.0
    first_byte: float = 5.0
    total: float = 60.0
    stall: float = 5.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts per voice (1 = no retry) and exponential backoff bounds, in seconds."""

    attempts: int = 3
    backoff: float = 0.2
    max_backoff: float = 2.0


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """``circuit_breaker``: after ``failures`` consecutive retryable failures the provider is
    skipped for ``cooldown`` seconds, doubled after each failed probe up to ``max_cooldown``."""

    failures: int = 5
    cooldown: float = 10.0
    max_cooldown: float = 120.0


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One ``providers:`` block, validated. ``settings`` holds the plugin's own keys (those it
    lists in :attr:`Provider.settings_keys`, such as ``api_key`` or ``model``), env-expanded."""

    name: str
    type: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    timeout: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_concurrency: int = 1000
    """Upstream syntheses in flight at once on this provider (by default the plugin's own
    bound, else ``server.max_concurrent_streams``)."""
    queue: float = 0.25
    """Seconds a request may wait for a free slot before its chain moves on."""
    circuit_breaker: BreakerPolicy | None = field(default_factory=BreakerPolicy)
    """``None``: never skipped however it fails."""
    retry_budget: float | None = 0.2
    """Retries at most this share of first attempts over a sliding window (``None``: unbounded)."""


@dataclass(frozen=True, slots=True)
class SynthesisJob:
    """One piece of text for one provider.

    ``options`` are the provider's options with the voice's options (and the voice's emotion
    override, if any) merged over them. ``emotion`` is the emotion the provider should render
    with its *built-in* mapping; it is ``None`` when there is none, or when the voice's
    ``emotions:`` block already supplied the options for it.
    """

    text: str
    voice: str
    sample_rate: int
    options: Mapping[str, Any] = field(default_factory=dict)
    emotion: str | None = None
    request_id: str = ""
    extend_data: Mapping[str, Any] = field(default_factory=dict)
    instructions: str | None = None
    """How to speak, in words (the OpenAI door's ``instructions``): for providers that take
    such a prompt; the others ignore it."""


class ProviderError(Exception):
    """A provider could not produce audio. The message never contains secrets."""

    retryable: bool = True

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        code: str | int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.reason = message
        #: The provider's own error code, if it gave one that looks like a code.
        self.code = safe_code(code)
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after

    @property
    def summary(self) -> str:
        """A few words for the caller: never the upstream's own text, which may echo secrets;
        the provider's error code where there is one."""
        return f"error {self.code}" if self.code else "failed"


class ProviderTimeout(ProviderError):
    """Connect, first byte or read timed out."""

    summary = "timed out"


class ProviderConnectionError(ProviderError):
    """The connection could not be made or broke."""

    summary = "connection failed"


class ProviderNoAudio(ProviderError):
    """The provider answered success but sent no audio (counts as a failure, retryable)."""

    summary = "no audio"


class ProviderProtocolError(ProviderError):
    """The answer is not one the provider's API sends: an error page or document where audio
    was due, a malformed or oversized frame. Usually a proxy, an outage page or a changed API,
    so not retried unless the raiser says otherwise; the next voice is tried as usual."""

    retryable = False
    summary = "unexpected answer"


class ProviderHTTPError(ProviderError):
    """The provider answered an error status, or reported an error inside a success answer:
    then ``code`` is its own error code (``1008``, ``Throttling.RateQuota``), which the caller
    is shown instead of the status."""

    def __init__(
        self,
        provider: str,
        status: int,
        message: str,
        *,
        code: str | int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        if retryable is None:
            retryable = is_retryable_status(status)
        self.status = status
        super().__init__(provider, message, code=code, retryable=retryable, retry_after=retry_after)
        self.reason = f"{self.summary}: {message}"
        self.args = (f"{provider}: {self.reason}",)

    @property
    def summary(self) -> str:
        return f"error {self.code}" if self.code else f"HTTP {self.status}"


class ProviderSaturated(ProviderHTTPError):
    """The provider refused the job because it is at its concurrency limit (ElevenLabs'
    ``too_many_concurrent_requests``): a wait for a slot, not an outage. The chain moves on at
    once; it is neither retried nor counted against the circuit breaker."""

    def __init__(self, provider: str, status: int, message: str, **kwargs: Any) -> None:
        kwargs["retryable"] = False
        super().__init__(provider, status, message, **kwargs)


def safe_code(code: object) -> str | None:
    """A provider's error code if it looks like one (a short word of letters, digits and
    ``._:-``), else None: the code is shown to callers, and an upstream could send anything."""
    text = str(code) if code is not None else ""
    return text if _ERROR_CODE.fullmatch(text) else None


_ERROR_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,47}")


def closest_rate(wanted: int, offered: tuple[int, ...]) -> int:
    """The offered rate nearest to ``wanted``, preferring the higher one on a tie so that no
    bandwidth the caller asked for is thrown away."""
    return min(offered, key=lambda rate: (abs(rate - wanted), -rate))


def is_retryable_status(status: int) -> bool:
    """408 Request Timeout, 429 Too Many Requests and every 5xx may succeed on another try."""
    return status in (408, 429) or status >= 500


class Provider(ABC):
    """Base class of every provider plugin.

    Subclasses set :attr:`type_name` and :attr:`settings_keys` (the keys of their config block
    besides the common ``type``, ``options``, ``timeout``, ``retry`` and ``max_concurrency``),
    and implement :meth:`native_format` and :meth:`stream`. :meth:`start` and :meth:`aclose`
    bracket the provider's life in the running gateway (open clients, load models).
    """

    type_name: ClassVar[str]
    settings_keys: ClassVar[frozenset[str]] = frozenset()
    required_settings: ClassVar[frozenset[str]] = frozenset()
    #: ``max_concurrency`` when the routing file gives none: ``None`` means the gateway's own
    #: stream limit (an HTTP API is bounded by the plan, not by this machine); a plugin whose
    #: work runs on this machine bounds it.
    default_max_concurrency: ClassVar[int | None] = None
    #: ``queue`` when the routing file gives none.
    default_queue: ClassVar[float] = 0.25

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.name = config.name
        #: The most syntheses in flight the upstream says it takes (a plugin sets it from
        #: what the API signals, such as ElevenLabs' ``maximum-concurrent-requests``); the
        #: admission honours it under ``max_concurrency``.
        self.signalled_concurrency: int | None = None
        self._secrets: list[str] = []
        for key, value in config.settings.items():
            if is_secret_name(key) and isinstance(value, str | int):
                self.add_secret(str(value))
        with _LIVE_LOCK:  # a reload builds providers in a worker thread
            _LIVE.add(self)

    def add_secret(self, value: str) -> None:
        """Mask ``value`` wherever this provider's text is logged (and in every log line):
        for secrets that are not a setting of their own, such as a header value or a token
        fetched at run time. Values under 4 characters are not secrets worth the noise.

        Masked as sent, as it reads in a URL, and as it reads escaped inside JSON or a Python
        ``repr`` (an upstream's JSON error body echoing it, a value logged with ``%r``): a
        quote, a backslash or a non-ASCII character changes how a secret is written there."""
        forms = {
            value,
            quote(value, safe=""),
            json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1],
            repr(value)[1:-1],
        }
        for form in forms:
            if len(form) >= 4 and form not in self._secrets:
                self._secrets.append(form)
        self._secrets.sort(key=len, reverse=True)  # a secret inside another is masked whole

    @property
    def secrets(self) -> tuple[str, ...]:
        """This provider's secrets, longest first."""
        return tuple(self._secrets)

    def redact(self, text: str) -> str:
        """``text`` with this provider's secrets (keys, tokens) masked: for anything logged
        that came from upstream, which may echo what it was sent."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Plugin-specific checks of the config block: a list of (key, problem).

        The routing-file loader already rejects unknown and missing required keys; override
        this for value checks (types, ranges, files that must exist)."""
        return []

    @classmethod
    def check_environment(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Warnings about this machine for a valid config block: a list of (key, message).

        For what does not make the routing file wrong but will make this provider fail here,
        such as a missing optional dependency. ``check-config`` prints them and the gateway
        logs them; the file still loads. ``key`` may be empty (the block as a whole)."""
        return []

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Checks of an ``options`` block (the provider's, a voice's or an emotion override's):
        a list of (key, problem). Cloud plugins usually pass options through to the API and
        accept what they do not know; a plugin that interprets them checks them here."""
        return []

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections, load models. Called once before the first job."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`start` acquired."""

    @abstractmethod
    def native_format(self, job: SynthesisJob) -> AudioFormat:
        """The format :meth:`stream` will produce for this job; pick the native rate closest
        to ``job.sample_rate`` so that the converter has as little to do as possible."""

    @abstractmethod
    def stream(self, job: SynthesisJob) -> AsyncGenerator[bytes, None]:
        """Yield audio bytes in :meth:`native_format` as they arrive.

        Implemented as an async generator. Raise :class:`ProviderError` subclasses only. The
        generator may be closed (``aclose``) at any await point when the caller hangs up: hold
        upstream resources in ``async with`` / ``try``-``finally`` so they are released then."""

    def characters(self, job: SynthesisJob) -> int:
        """Characters this job bills at the provider (default: the text's length)."""
        return len(job.text)

    def cache_facets(self, job: SynthesisJob) -> Mapping[str, Any]:
        """What else of ``job`` this provider's audio depends on, besides its settings, the
        voice, the options, the emotion, the instructions, the text and the native format
        (which the phrase cache's key holds already): a plugin that forwards more of the
        request to its upstream names it here, so that no cached answer is replayed for a
        request it was not made for."""
        return {}


#: Names of settings (and of headers) whose values are secrets, masked wherever text is logged.
_SECRET_KEY = re.compile(
    r"key|token|secret|password|credential|auth|cookie|signature", re.IGNORECASE
)

#: Every provider built in this process and not yet collected: the log masks their secrets.
_LIVE: weakref.WeakSet[Provider] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def is_secret_name(name: str) -> bool:
    """Whether a setting or header called ``name`` holds a secret (``api_key``,
    ``Authorization``, ``X-Api-Access-Key``…)."""
    return bool(_SECRET_KEY.search(name))


def live_secrets() -> list[str]:
    """The secrets of every provider alive in this process, longest first."""
    with _LIVE_LOCK:
        providers = list(_LIVE)
    found = {secret for provider in providers for secret in list(provider.secrets)}
    return sorted(found, key=len, reverse=True)


#: Built-in plugins, imported on first use so that an unused one costs nothing.
_BUILTIN: dict[str, str] = {
    "piper": "providers.piper:PiperProvider",
    "custom": "providers.custom:CustomProvider",
    "openai": "providers.openai:OpenAIProvider",
    "elevenlabs": "providers.elevenlabs:ElevenLabsProvider",
    "cartesia": "providers.cartesia:CartesiaProvider",
    "deepgram": "providers.deepgram:DeepgramProvider",
    "fish": "providers.fish:FishProvider",
    "azure": "providers.azure:AzureProvider",
    "minimax": "providers.minimax:MiniMaxProvider",
    "qwen": "providers.qwen:QwenProvider",
    "volcengine": "providers.volcengine:VolcengineProvider",
    "google": "providers.google:GoogleProvider",
    "polly": "providers.polly:PollyProvider",
    "cosyvoice": "providers.cosyvoice:CosyVoiceProvider",
}
_REGISTERED: dict[str, type[Provider]] = {}


def register(type_name: str, cls: type[Provider]) -> None:
    """Make ``type: <type_name>`` in a routing file build ``cls`` (tests, third-party code).

    Third-party packages can also declare an entry point in the ``tts_gateway.providers``
    group, named by the type, pointing at the class."""
    _REGISTERED[type_name] = cls


def provider_types() -> list[str]:
    """Every type name a routing file may use."""
    names = set(_BUILTIN) | set(_REGISTERED)
    names.update(ep.name for ep in entry_points(group="tts_gateway.providers"))
    return sorted(names)


def provider_class(type_name: str) -> type[Provider]:
    """The plugin class for a ``type:`` value; ``KeyError`` if there is none."""
    if type_name in _REGISTERED:
        return _REGISTERED[type_name]
    target = _BUILTIN.get(type_name)
    if target is None:
        for ep in entry_points(group="tts_gateway.providers"):
            if ep.name == type_name:
                cls = ep.load()
                break
        else:
            raise KeyError(type_name)
    else:
        module_name, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise KeyError(type_name)
    _REGISTERED[type_name] = cls
    return cls


def build_provider(config: ProviderConfig) -> Provider:
    """Instantiate the plugin named by ``config.type``."""
    return provider_class(config.type)(config)
