"""The relay: get the first audio out of a voice chain, then hand over an open stream.

For each voice of the chain, in order: open the provider stream and read until the first
non-empty PCM exists, retrying retryable errors (tenacity, the provider's ``retry`` policy, any
``Retry-After``), all inside the provider's ``first_byte`` budget. Only when audio exists is the
caller answered; from then on nothing is retried or failed over, since that would repeat speech.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from providers.base import (
    Provider,
    ProviderError,
    ProviderNoAudio,
    ProviderTimeout,
    RetryPolicy,
    SynthesisJob,
)

from .admission import ProviderSlots
from .audio import AudioFormatError, Converter, ResamplerMode
from .errors import ProvidersFailed, ProvidersTimedOut
from .metrics import Metrics
from .request import TTSRequest
from .routing import ChainStep

log = logging.getLogger("gateway.relay")


@dataclass(slots=True)
class FailedAttempt:
    """Why one voice of the chain gave no audio."""

    voice: str
    provider: str
    error: ProviderError


@dataclass(slots=True)
class AudioStream:
    """An open provider stream whose first PCM chunk is already in hand.

    Iterate :meth:`chunks` for S16LE mono PCM at the requested rate; always :meth:`aclose`
    (closing is what releases the upstream connection and the provider slot)."""

    step: ChainStep
    provider: Provider
    first: bytes
    converter: Converter
    source: AsyncGenerator[bytes, None] | None
    slot: asyncio.Semaphore
    attempts: list[FailedAttempt] = field(default_factory=list)
    bytes_out: int = 0
    _closed: bool = False

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The first chunk, then the rest as it arrives, then the resampler's tail.

        A provider error after the first chunk propagates; the caller ends the stream."""
        self.bytes_out += len(self.first)
        yield self.first
        source = self.source
        if source is not None:
            feed = self.converter.feed
            async for native in source:
                pcm = feed(native)
                if pcm:
                    self.bytes_out += len(pcm)
                    yield pcm
            self.source = None
        tail = self.flush()
        if tail:
            yield tail

    def flush(self) -> bytes:
        """Drain the resampler (also after a provider error, so no buffered audio is lost)."""
        if self.converter.finished:
            return b""
        tail = self.converter.flush()
        self.bytes_out += len(tail)
        return tail

    async def aclose(self) -> None:
        """Close the provider stream (and so its upstream response) and free its slot."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.source is not None:
                await self.source.aclose()
        finally:
            self.source = None
            self.slot.release()


def build_job(step: ChainStep, request: TTSRequest, request_id: str) -> SynthesisJob:
    """The provider's job for one voice: options merged provider < voice < emotion override."""
    options: dict[str, Any] = dict(step.provider.options)
    options.update(step.voice.options)
    emotion = request.emotion
    override = step.voice.emotions.get(emotion) if emotion else None
    if override is not None:
        options.update(override)
        emotion = None  # the voice's override replaces the provider's built-in mapping
    return SynthesisJob(
        text=request.text,
        voice=step.provider_voice,
        sample_rate=request.sample_rate,
        options=options,
        emotion=emotion,
        request_id=request_id,
        extend_data=request.extend_data,
    )


def _wait_for(policy: RetryPolicy) -> Any:
    backoff = wait_exponential(multiplier=policy.backoff, max=policy.max_backoff) + wait_random(
        0, policy.backoff / 2
    )

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, ProviderError) and error.retry_after is not None:
            return error.retry_after
        return float(backoff(state))

    return wait


def _retryable(error: BaseException) -> bool:
    return isinstance(error, ProviderError) and error.retryable


class Relay:
    """Opens audio streams over voice chains, for one routing file's providers, taking each
    provider's slot (see :mod:`gateway.admission`) for as long as its stream is open."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        metrics: Metrics,
        slots: ProviderSlots,
        resampler: ResamplerMode = "auto",
    ) -> None:
        self.providers = providers
        self.metrics = metrics
        self.slots = slots
        self.resampler = resampler

    async def open(
        self, chain: Sequence[ChainStep], request: TTSRequest, request_id: str
    ) -> AudioStream:
        """The first voice of ``chain`` that yields audio, as an open stream.

        Raises ``ProvidersTimedOut`` if every voice timed out, ``ProvidersFailed`` otherwise.
        Cancellation (the caller hung up) propagates and leaves nothing open."""
        failures: list[FailedAttempt] = []
        for index, step in enumerate(chain):
            provider = self.providers[step.provider.name]
            job = build_job(step, request, request_id)
            try:
                stream = await self._open_voice(step, provider, job)
            except ProviderError as error:
                failures.append(FailedAttempt(step.voice.key, provider.name, error))
                log.warning(
                    "request_id=%s voice=%s provider=%s failed before audio: %s",
                    request_id,
                    step.voice.key,
                    provider.name,
                    provider.redact(error.reason),
                )
                continue
            stream.attempts = failures
            if index:
                self.metrics.fallbacks.labels(step.voice.key).inc()
            return stream
        # The caller learns which voices failed and how, not the upstreams' own words (they are
        # in the log, redacted).
        summary = "; ".join(f"{f.voice} ({f.provider}): {f.error.summary}" for f in failures)
        if failures and all(isinstance(f.error, ProviderTimeout) for f in failures):
            raise ProvidersTimedOut(f"every voice timed out: {summary}")
        raise ProvidersFailed(f"every voice failed: {summary}")

    async def _open_voice(
        self, step: ChainStep, provider: Provider, job: SynthesisJob
    ) -> AudioStream:
        """Attempts on one voice, all inside its first-byte budget."""
        policy = provider.config.retry
        budget = provider.config.timeout.first_byte
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts) | stop_before_delay(budget),
            wait=_wait_for(policy),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        try:
            async with asyncio.timeout(budget):
                async for attempt in retrying:
                    with attempt:
                        return await self._open_once(step, provider, job)
        except TimeoutError:
            self.metrics.attempts.labels(provider.name, "timeout").inc()
            raise ProviderTimeout(
                provider.name, f"no audio within the first-byte budget of {budget:g} s"
            ) from None
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _open_once(
        self, step: ChainStep, provider: Provider, job: SynthesisJob
    ) -> AudioStream:
        slot = self.slots[provider.name]
        # Waiting for a slot counts against the first-byte budget like any other wait.
        await slot.acquire()
        source: AsyncGenerator[bytes, None] | None = None
        try:
            try:
                converter = Converter(
                    provider.native_format(job), job.sample_rate, mode=self.resampler
                )
                self.metrics.characters.labels(provider.name).inc(provider.characters(job))
                source = provider.stream(job)
                async for native in source:
                    first = converter.feed(native)
                    if first:
                        self.metrics.attempts.labels(provider.name, "ok").inc()
                        return AudioStream(step, provider, first, converter, source, slot)
                first = converter.flush()
            except AudioFormatError as exc:
                raise ProviderError(
                    provider.name, f"undecodable audio: {exc}", retryable=False
                ) from exc
            except ProviderError:
                raise
            except Exception as exc:  # a provider bug must not take the whole chain down
                log.exception("provider %s raised an unexpected error", provider.name)
                raise ProviderError(
                    provider.name, f"internal error: {type(exc).__name__}", retryable=False
                ) from exc
            if first:
                self.metrics.attempts.labels(provider.name, "ok").inc()
                return AudioStream(step, provider, first, converter, None, slot)
            raise ProviderNoAudio(provider.name, "the stream ended without audio")
        except BaseException as error:
            if isinstance(error, ProviderError):
                self.metrics.attempts.labels(provider.name, _outcome(error)).inc()
            try:
                if source is not None:
                    await source.aclose()
            finally:
                # Even when closing is itself cancelled (budget over, caller gone).
                slot.release()
            raise


def _outcome(error: ProviderError) -> str:
    if isinstance(error, ProviderTimeout):
        return "timeout"
    if isinstance(error, ProviderNoAudio):
        return "no_audio"
    return "error"
