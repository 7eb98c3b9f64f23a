"""The relay: the first audio of a voice chain, as an open stream.

The chain is walked in order (a call that failed over before starts at its sticky fallback:
:mod:`gateway.sticky`). Each voice is opened by :class:`~gateway.attempts.VoiceOpener`
(breaker, admission, retries inside the first-byte budget); a voice that is skipped or fails
passes the request on to the next. A voice with ``hedge_after`` that has no audio after that
many seconds has the next voice started beside it: the first to produce audio wins, the other
is cancelled and its upstream closed (whatever text it had sent stays counted: it is billed,
and it is the hedge's overhead, ``tts_hedge_characters``). Hedges
are bounded to :data:`HEDGE_SHARE` of the voice's requests over a sliding window, so a slow
provider cannot double the spend.

Only when audio exists is the caller answered; from then on nothing is retried or failed over,
since that would repeat speech. When no voice gives audio, the answer says why: 503
``provider_busy`` when every voice was skipped (breaker open, at its concurrency limit), 504
when every voice asked timed out, 502 otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from providers.base import Provider, ProviderError, ProviderTimeout, SynthesisJob

from .attempts import VoiceOpener, VoiceSkipped
from .audio import ResamplerMode
from .cache import PhraseCache
from .errors import GatewayError, ProvidersBusy, ProvidersFailed, ProvidersTimedOut
from .health import ProviderHealth
from .metrics import Metrics
from .request import TTSRequest
from .routing import ChainStep
from .spend import Bill
from .sticky import StickyCalls, call_ids
from .stream import AudioStream, FirstOut, VoiceTry
from .window import ShareBudget

log = logging.getLogger("gateway.relay")

#: At most this share of a voice's requests over the window start a hedge…
HEDGE_SHARE = 0.2
#: …or this many, whichever is more (a quiet voice may still hedge now and then).
HEDGE_FLOOR = 2
#: The outcomes of a voice that was not asked.
SKIPPED = frozenset({"open", "busy", "saturated"})
_SKIP_DETAIL = {
    "open": "circuit open",
    "busy": "at its concurrency limit (queue wait over)",
    "saturated": "at its concurrency limit (said the provider)",
}


def build_job(
    step: ChainStep, request: TTSRequest, request_id: str, text: str | None = None
) -> SynthesisJob:
    """The provider's job for one voice: options merged provider < voice < emotion override;
    the text as the voice shapes it (``text``: already shaped)."""
    options: dict[str, Any] = dict(step.provider.options)
    options.update(step.voice.options)
    emotion = request.emotion
    override = step.voice.emotions.get(emotion) if emotion else None
    if override is not None:
        options.update(override)
        emotion = None  # the voice's override replaces the provider's built-in mapping
    return SynthesisJob(
        text=step.shape(request.text) if text is None else text,
        voice=step.provider_voice,
        sample_rate=request.sample_rate,
        options=options,
        emotion=emotion,
        request_id=request_id,
        extend_data=request.extend_data,
        instructions=request.instructions,
    )


class Relay:
    """Opens audio streams over voice chains, for one routing file's providers."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        health: Mapping[str, ProviderHealth],
        metrics: Metrics,
        resampler: ResamplerMode = "auto",
        sticky: StickyCalls | None = None,
        cache: PhraseCache | None = None,
    ) -> None:
        self.providers = providers
        self.cache = cache
        self.health = health
        self.metrics = metrics
        self.opener = VoiceOpener(providers, health, metrics, resampler)
        self.sticky = sticky if sticky is not None else StickyCalls()
        self._hedges: dict[str, ShareBudget] = {}
        self.disposing: set[asyncio.Task[None]] = set()
        """The closers of hedge losers still running."""

    async def open(
        self,
        chain: Sequence[ChainStep],
        request: TTSRequest,
        request_id: str,
        tried: list[VoiceTry] | None = None,
        shaped: str | None = None,
        first_out: FirstOut | None = None,
    ) -> AudioStream:
        """The first voice of ``chain`` that yields audio, as an open stream; every voice
        tried is appended to ``tried`` as it is settled. ``shaped``: the text as the chain's
        first voice shapes it, when the caller has it already. ``first_out``: writes the
        first audio as soon as a voice asked alone (not in a hedge race, not through the
        phrase cache) has it; a stream it wrote has :attr:`AudioStream.sent_at` set. Raises
        ``ProvidersBusy``, ``ProvidersTimedOut`` or ``ProvidersFailed``. Cancellation (the
        caller hung up) propagates and leaves nothing open."""
        tried = [] if tried is None else tried
        call = call_ids(request.extend_data)
        ordered, sticky = self.sticky.order(chain, call)
        if sticky:
            self.metrics.sticky_hits.labels(chain[0].voice.key).inc()
        walk = _Walk(self, ordered, request, request_id, tried, first_out)
        if shaped is not None:
            walk.shaped[id(chain[0])] = shaped
        stream = await walk.run()
        stream.tried = tried
        answered = stream.step.voice.key
        self.sticky.answered(chain, call, answered)
        if stream.step is not chain[0]:
            self.metrics.fallbacks.labels(answered).inc()
            if any(t.outcome in SKIPPED for t in tried):
                self.metrics.overflow.labels(answered).inc()
        return stream

    def hedge_budget(self, voice: str) -> ShareBudget:
        budget = self._hedges.get(voice)
        if budget is None:
            budget = self._hedges[voice] = ShareBudget(HEDGE_SHARE, HEDGE_FLOOR)
        return budget

    def dispose(self, task: asyncio.Task[AudioStream], bill: Bill) -> None:
        """Cancel an attempt that lost a hedge race and close whatever it opened, in the
        background (the winner's audio does not wait for it). Once it has stopped, what its
        attempts sent (``bill``: nothing if it never got a slot) is counted as the hedge's
        overhead, and the audio it had received as generated."""
        task.cancel()
        closer = asyncio.get_running_loop().create_task(self._close(task, bill))
        self.disposing.add(closer)
        closer.add_done_callback(self.disposing.discard)

    async def _close(self, task: asyncio.Task[AudioStream], bill: Bill) -> None:
        done = await asyncio.gather(task, return_exceptions=True)
        if isinstance(done[0], AudioStream):
            stream = done[0]
            await stream.aclose()
            if stream.cache not in ("hit", "shared"):
                self.metrics.audio_generated.labels(stream.provider.name).inc(
                    stream.audio_generated
                )
        if bill.characters:
            self.metrics.hedge_characters.labels(bill.provider).inc(bill.characters)


class _Walk:
    """One request's walk down its chain."""

    def __init__(
        self,
        relay: Relay,
        chain: Sequence[ChainStep],
        request: TTSRequest,
        request_id: str,
        tried: list[VoiceTry],
        first_out: FirstOut | None = None,
    ) -> None:
        self.relay = relay
        self.chain = chain
        self.request = request
        self.request_id = request_id
        self.tried = tried
        self.first_out = first_out
        self.hedged = False
        #: Texts already shaped, by the id of their step (each voice shapes once).
        self.shaped: dict[int, str] = {}

    async def run(self) -> AudioStream:
        index, chain = 0, self.chain
        while index < len(chain):
            step = chain[index]
            if step.voice.hedge_after is None or self.hedged or index + 1 >= len(chain):
                index += 1
                stream = await self._direct(step)
            else:
                stream, index = await self._race(index, step.voice.hedge_after)
            if stream is not None:
                return stream
        raise self._verdict()

    async def _attempt(
        self, step: ChainStep, bill: Bill | None = None, first_out: FirstOut | None = None
    ) -> AudioStream:
        """One voice's stream; what its attempts send is added to ``bill``; ``first_out``
        writes its first audio (not when the phrase cache answers)."""
        text = self.shaped.get(id(step))
        if text is None:
            text = self.shaped[id(step)] = step.shape(self.request.text)
        if not text:
            raise ProviderError(
                step.provider.name,
                "nothing left to speak once the voice shaped the text",
                retryable=False,
            )
        job = build_job(step, self.request, self.request_id, text)
        cache = self.relay.cache
        if cache is not None and cache.applies(step, text):
            return await cache.open(step, job, self.relay.opener, bill)
        return await self.relay.opener.open(step, job, bill=bill, first_out=first_out)

    async def _direct(self, step: ChainStep) -> AudioStream | None:
        try:
            stream = await self._attempt(step, first_out=self.first_out)
        except (VoiceSkipped, ProviderError) as error:
            self._failed(step, error)
            return None
        except BaseException:
            self._note(step, "cancelled")
            raise
        self._note(step, "ok")
        return stream

    async def _race(self, index: int, hedge_after: float) -> tuple[AudioStream | None, int]:
        """The voice at ``index`` and, once it is ``hedge_after`` seconds late, the next one
        beside it: (the winner or None, the index to go on from)."""
        relay, chain = self.relay, self.chain
        lead = chain[index]
        budget = relay.hedge_budget(lead.voice.key)
        budget.note()
        racers: dict[asyncio.Task[AudioStream], tuple[ChainStep, str, Bill]] = {}

        def start(step: ChainStep, side: str) -> asyncio.Task[AudioStream]:
            bill = Bill(step.provider.name)
            task = asyncio.get_running_loop().create_task(self._attempt(step, bill))
            racers[task] = (step, side, bill)
            return task

        primary = start(lead, "primary")
        following = index + 1
        hedge_due = asyncio.get_running_loop().time() + hedge_after
        considered = False
        winner: AudioStream | None = None
        try:
            while racers and winner is None:
                timeout = None
                if not considered and primary in racers:
                    timeout = max(0.0, hedge_due - asyncio.get_running_loop().time())
                done, _ = await asyncio.wait(
                    racers, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    considered = True
                    if budget.spend():
                        self.hedged = True
                        step = chain[following]
                        following += 1
                        relay.metrics.hedges.labels(lead.voice.key).inc()
                        start(step, "hedge")
                    continue
                # Of two that finished together, the earlier voice of the chain wins.
                for task in sorted(done, key=lambda t: racers[t][1] != "primary"):
                    step, side, bill = racers.pop(task)
                    error = task.exception()
                    if error is not None:
                        if not isinstance(error, VoiceSkipped | ProviderError):
                            raise error
                        self._failed(step, error)
                    elif winner is None:
                        winner = task.result()
                        self._note(step, "ok")
                        if self.hedged:
                            relay.metrics.hedge_wins.labels(lead.voice.key, side).inc()
                    else:
                        self._note(step, "hedge_lost")
                        relay.dispose(task, bill)
            return winner, following
        finally:
            if winner is not None:
                for task, (step, _side, bill) in racers.items():
                    self._note(step, "hedge_lost")
                    relay.dispose(task, bill)
            elif racers:  # the caller hung up, or a bug: close everything before going on
                for task, (step, _side, _bill) in racers.items():
                    self._note(step, "cancelled")
                    task.cancel()
                results = await asyncio.gather(*racers, return_exceptions=True)
                for result in results:
                    if isinstance(result, AudioStream):
                        await result.aclose()

    def _note(
        self,
        step: ChainStep,
        outcome: str,
        detail: str = "",
        retry_after: float | None = None,
    ) -> None:
        # What was tried, not the error itself: its traceback holds the frames of the attempt,
        # which hold this list (a cycle per failed attempt, with all the attempt held).
        self.tried.append(
            VoiceTry(step.voice.key, step.provider.name, outcome, detail, retry_after)
        )

    def _failed(self, step: ChainStep, error: VoiceSkipped | ProviderError) -> None:
        if isinstance(error, VoiceSkipped):
            self._note(step, error.reason, _SKIP_DETAIL[error.reason], error.retry_after)
            return
        provider = self.relay.providers[step.provider.name]
        outcome = "timeout" if isinstance(error, ProviderTimeout) else "failed"
        self._note(step, outcome, error.summary)
        log.warning(
            "request_id=%s voice=%s provider=%s failed before audio: %s",
            self.request_id,
            step.voice.key,
            provider.name,
            provider.redact(error.reason),
            extra={
                "request_id": self.request_id,
                "voice": step.voice.key,
                "provider": provider.name,
            },
        )

    def _verdict(self) -> GatewayError:
        """Why no voice gave audio, as the caller's answer."""
        settled = [t for t in self.tried if t.outcome not in ("hedge_lost", "cancelled")]
        summary = "; ".join(f"{t.voice} ({t.provider}): {t.detail}" for t in settled)
        asked = [t for t in settled if t.outcome not in SKIPPED]
        if settled and not asked:
            wait = min((t.retry_after or 0.0) for t in settled)
            seconds = max(1, math.ceil(wait))
            return ProvidersBusy(
                f"every voice is busy or cooling down: {summary}",
                headers={"Retry-After": str(seconds)},
            )
        if asked and all(t.outcome == "timeout" for t in asked):
            return ProvidersTimedOut(f"every voice timed out: {summary}")
        return ProvidersFailed(f"every voice failed: {summary}")
