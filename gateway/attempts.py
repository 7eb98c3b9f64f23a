"""One voice of a chain, up to its first audio: breaker, admission, attempts.

::

    breaker admits?  no ─► skipped "open"   (nothing sent, no budget spent)
    a slot within the provider's ``queue`` seconds?  no ─► skipped "busy"
    attempts, all inside ``timeout.first_byte`` from the slot on:
        open the provider stream, read until the first non-empty PCM
        a retryable failure counts against the breaker; another attempt only while the
        breaker is closed, the ``retry`` policy allows one and the retry budget has one,
        after an exponential backoff with jitter (or the provider's ``Retry-After``) that
        ends within the budget
    ─► an AudioStream holding the slot, or a ProviderError; given a FirstOut, its first
       audio written to the caller before it is handed up

The slot is held from the first attempt until the stream is closed, retries included, so a
provider's ``max_concurrency`` bounds what it is asked at once whatever the retries do.

The attempts are a plain loop rather than a ``tenacity.AsyncRetrying`` per request: nearly
every request is answered by its first attempt, and a retrying object built for each (with its
state and closures, garbage the collector has to find) cost more than the attempt's own
bookkeeping. The loop keeps the order tenacity has: the failure is noted, then whether to retry
is decided (which spends from the retry budget), then the pause is drawn (by tenacity's
``wait_exponential`` and ``wait_random``, made once per retry policy), then a pause that would
end past the first-byte budget stops the attempts with the last error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Mapping

from tenacity import RetryCallState, Retrying, wait_exponential, wait_random
from tenacity.wait import wait_base

from providers.base import (
    Provider,
    ProviderError,
    ProviderHTTPError,
    ProviderNoAudio,
    ProviderSaturated,
    ProviderTimeout,
    RetryPolicy,
    SynthesisJob,
)

from .admission import Lease
from .audio import AudioFormatError, Converter, ResamplerMode
from .breaker import Ticket
from .deadlines import deadline
from .health import ProviderHealth
from .metrics import Metrics
from .routing import ChainStep
from .spend import Bill
from .stream import AudioStream, FirstOut

log = logging.getLogger("gateway.relay")


class VoiceSkipped(Exception):
    """The voice was not asked: its breaker is open (``open``), no slot came within its
    queue wait (``busy``), or the provider said it is at its limit (``saturated``)."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


#: What a caller refused for a busy provider is told to wait before trying again.
BUSY_RETRY_AFTER = 1.0


#: What a tenacity retry state names as its retrying object (the loop below is the retrying).
_RETRYING = Retrying()


@functools.lru_cache(maxsize=256)
def _backoff(backoff: float, max_backoff: float) -> wait_base:
    """tenacity's exponential backoff with jitter for a retry policy (made once per policy)."""
    return wait_exponential(multiplier=backoff, max=max_backoff) + wait_random(0, backoff / 2)


def pause_before(attempt: int, error: ProviderError, policy: RetryPolicy) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (from 1) before the next: the
    provider's ``Retry-After`` when it gave one, else ``backoff`` doubled per attempt, at most
    ``max_backoff``, plus a random jitter of up to half ``backoff`` (tenacity's
    ``wait_exponential`` and ``wait_random``, asked only when there is a retry to make)."""
    if error.retry_after is not None:
        return error.retry_after
    state = RetryCallState(_RETRYING, None, (), {})
    state.attempt_number = attempt
    return max(0.0, float(_backoff(policy.backoff, policy.max_backoff)(state)))


class VoiceOpener:
    """Opens one voice of a chain (see the module docstring)."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        health: Mapping[str, ProviderHealth],
        metrics: Metrics,
        resampler: ResamplerMode,
    ) -> None:
        self.providers = providers
        self.health = health
        self.metrics = metrics
        self.resampler = resampler

    async def open(
        self,
        step: ChainStep,
        job: SynthesisJob,
        *,
        out_rate: int | None = None,
        keep_native: bool = False,
        bill: Bill | None = None,
        first_out: FirstOut | None = None,
    ) -> AudioStream:
        """The voice's stream with its first audio in hand. Raises :class:`VoiceSkipped` or a
        :class:`ProviderError`; cancellation leaves nothing open and no verdict behind.

        ``out_rate``: convert to this rate rather than the job's; ``keep_native``: keep the
        provider's chunks read before the first audio in :attr:`AudioStream.native_head` (a
        shared synthesis relays the native chunks, not the converted ones); ``bill``: add the
        characters each attempt sends to it; ``first_out``: write the first audio to the
        caller as soon as an attempt has it (:class:`~gateway.stream.FirstOut`), before the
        stream is made and handed up."""
        provider = self.providers[step.provider.name]
        health = self.health[provider.name]
        ticket = health.breaker.admit()
        if ticket is None:
            self.metrics.rejections.labels(provider.name, "open").inc()
            raise VoiceSkipped("open", health.breaker.retry_after())
        try:
            if not await health.gate.take(provider.config.queue):
                self.metrics.rejections.labels(provider.name, "busy").inc()
                raise VoiceSkipped("busy", BUSY_RETRY_AFTER)
            lease = Lease(health.gate)
            try:
                return await self._attempts(
                    step,
                    provider,
                    job,
                    health,
                    ticket,
                    lease,
                    out_rate,
                    keep_native,
                    bill,
                    first_out,
                )
            except BaseException:
                lease.release()
                raise
        finally:
            # No-op after a verdict; frees the probe of a request that ended without one.
            health.breaker.released(ticket)

    async def _attempts(
        self,
        step: ChainStep,
        provider: Provider,
        job: SynthesisJob,
        health: ProviderHealth,
        ticket: Ticket,
        lease: Lease,
        out_rate: int | None,
        keep_native: bool,
        bill: Bill | None,
        first_out: FirstOut | None,
    ) -> AudioStream:
        budget = provider.config.timeout.first_byte
        breaker, metrics = health.breaker, self.metrics
        health.retries.note()
        started = time.monotonic()
        attempt = 1
        # Left set when the budget's cancellation ends an attempt, which passes through here
        # on its way to the TimeoutError below.
        attempting = False
        try:
            async with deadline(budget):
                while True:
                    attempting = True
                    try:
                        stream = await self._open_once(
                            step,
                            provider,
                            job,
                            lease,
                            health,
                            out_rate,
                            keep_native,
                            bill,
                            first_out,
                        )
                    except ProviderSaturated as error:
                        attempting = False
                        health.noted(error)
                        metrics.rejections.labels(provider.name, "saturated").inc()
                        raise VoiceSkipped("saturated", error.retry_after or 0.0) from error
                    except ProviderError as error:
                        attempting = False
                        health.noted(error)
                        if error.retryable:
                            breaker.failed(ticket, _asked_to_wait(error))
                        pause = self._retry_pause(
                            provider, health, ticket, error, attempt, time.monotonic() - started
                        )
                        if pause is None:
                            raise
                    else:
                        attempting = False
                        breaker.succeeded(ticket)
                        return stream
                    await asyncio.sleep(pause)
                    attempt += 1
        except TimeoutError:
            metrics.attempts.labels(provider.name, "timeout").inc()
            timeout = ProviderTimeout(
                provider.name, f"no audio within the first-byte budget of {budget:g} s"
            )
            health.noted(timeout)
            if attempting:  # the budget ended an attempt (not a backoff between two)
                breaker.failed(ticket)
            raise timeout from None

    def _retry_pause(
        self,
        provider: Provider,
        health: ProviderHealth,
        ticket: Ticket,
        error: ProviderError,
        attempt: int,
        elapsed: float,
    ) -> float | None:
        """The pause before another attempt after ``error`` ended attempt number ``attempt``,
        ``elapsed`` seconds into the first-byte budget; None: no other attempt. Another is
        made for a retryable error while the breaker is closed (a probe is one attempt), the
        ``retry`` policy has one left, the retry budget grants one (asked only then: asking
        spends it) and the pause would end within the first-byte budget."""
        if not error.retryable:
            return None
        if ticket.probe or not health.breaker.allows_retry:
            return None
        policy = provider.config.retry
        if attempt >= policy.attempts:
            return None
        if not health.retries.spend():
            self.metrics.retries_denied.labels(provider.name).inc()
            return None
        pause = pause_before(attempt, error, policy)
        if elapsed + pause >= provider.config.timeout.first_byte:
            return None  # the next attempt could not start within the budget
        return pause

    async def _open_once(
        self,
        step: ChainStep,
        provider: Provider,
        job: SynthesisJob,
        lease: Lease,
        health: ProviderHealth,
        out_rate: int | None = None,
        keep_native: bool = False,
        bill: Bill | None = None,
        first_out: FirstOut | None = None,
    ) -> AudioStream:
        source: AsyncGenerator[bytes, None] | None = None
        head: list[bytes] = []
        try:
            try:
                converter = Converter(
                    provider.native_format(job), out_rate or job.sample_rate, mode=self.resampler
                )
                if first_out is not None:
                    first_out.ahead(step, converter)
                characters = provider.characters(job)
                self.metrics.characters.labels(provider.name).inc(characters)
                if bill is not None:
                    bill.characters += characters
                source = provider.stream(job)
                first, ended = b"", True
                rest: bytes | memoryview = b""
                async for native in source:
                    if keep_native:
                        head.append(native)
                        first = converter.feed(native)
                    else:
                        # A long first piece: its first audio converted (and so sent) first.
                        first, rest = converter.feed_first(native)
                    if first:
                        ended = False
                        break
                if ended:  # the answer ended before any audio came out: the filter's tail
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
            if not first:
                raise ProviderNoAudio(provider.name, "the stream ended without audio")
            self.metrics.attempts.labels(provider.name, "ok").inc()
            # The first audio goes to the caller now, where the front door writes it as soon
            # as it exists; the stream is made and handed up after.
            sent_at = None if first_out is None else first_out(step, first)
            return AudioStream(
                step,
                provider,
                first,
                converter,
                None if ended else source,
                lease,
                health,
                characters=characters,
                native_head=head,
                rest=rest,
                sent_at=sent_at,
                bytes_out=0 if sent_at is None else len(first),
            )
        except BaseException as error:
            if isinstance(error, ProviderError):
                self.metrics.attempts.labels(provider.name, _outcome(error)).inc()
            if source is not None:
                await source.aclose()
            raise


def _asked_to_wait(error: ProviderError) -> float | None:
    """A 429's ``Retry-After``: the provider asked to be left alone that long."""
    if isinstance(error, ProviderHTTPError) and error.status == 429:
        return error.retry_after
    return None


def _outcome(error: ProviderError) -> str:
    if isinstance(error, ProviderTimeout):
        return "timeout"
    if isinstance(error, ProviderNoAudio):
        return "no_audio"
    return "error"
