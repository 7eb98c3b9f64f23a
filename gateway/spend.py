"""Spend: what each provider billed against what reached the caller.

Characters are counted as billed when an attempt sends its text (``tts_provider_characters``,
:mod:`gateway.attempts`). Every stream that reached a caller is settled once, when it stops
(:meth:`SpendMeter.settle`):

- a complete answer: all its characters were delivered, its audio was all generated and all
  delivered; its seconds per character teach the provider's speaking pace;
- an answer cut short by our side (the caller hung up, was too slow, a budget or the drain
  ended it): the provider was billed for, and produced, the whole answer, of which the caller
  got a share. The whole answer's length is what was received when the upstream had sent it
  all, or else the provider's learned pace times the characters; the characters delivered
  are that share of the characters billed;
- an answer the provider broke off (an error, a stall mid-answer): only what was received was
  generated; the characters delivered are estimated the same way;
- a cache hit or a shared synthesis: nothing billed, and the audio it delivered is counted as
  saved.

Hedge losers never reach a caller: what they billed is the hedge's overhead
(``tts_hedge_characters``), counted by the relay from the :class:`Bill` of their attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

from .metrics import Metrics
from .stream import AudioStream

#: Ends of a stream where the provider stopped producing audio itself.
_PROVIDER_ENDS = frozenset({"provider_error", "stall"})


@dataclass(slots=True)
class Bill:
    """Characters one voice's attempts sent to its provider (each retry sends them again)."""

    provider: str
    characters: int = 0


class SpeakingPace:
    """Seconds of audio per billed character, per provider, learned from complete answers
    (an exponential average): what tells how long the whole of a cut answer would have been."""

    #: About 15 characters a second, ordinary speech, until a provider's own is known.
    DEFAULT = 0.065
    #: Weight of each new answer in the average.
    WEIGHT = 0.1

    def __init__(self) -> None:
        self._pace: dict[str, float] = {}

    def learn(self, provider: str, seconds: float, characters: int) -> None:
        """A complete answer of ``seconds`` to ``characters`` billed characters."""
        if seconds <= 0 or characters <= 0:
            return
        pace = seconds / characters
        known = self._pace.get(provider)
        self._pace[provider] = pace if known is None else known + self.WEIGHT * (pace - known)

    def seconds(self, provider: str, characters: int) -> float:
        """The expected length of an answer to ``characters`` billed characters."""
        return self._pace.get(provider, self.DEFAULT) * characters


class SpendMeter:
    """Settles the spend of each stream that reached a caller (see the module docstring). One
    per gateway: the speaking pace it learns is its own."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.pace = SpeakingPace()

    def settle(self, stream: AudioStream, delivered: float, end: str) -> None:
        """``stream`` stopped with ``end`` (``complete``, or why it was cut) after
        ``delivered`` seconds of audio went to the caller."""
        metrics, name = self.metrics, stream.provider.name
        if stream.cache in ("hit", "shared"):
            metrics.cache_audio_saved.labels(name).inc(delivered)
            return
        received = stream.audio_generated
        characters = stream.characters
        if end == "complete":
            self.pace.learn(name, received, characters)
            metrics.audio_generated.labels(name).inc(received)
            metrics.characters_delivered.labels(name).inc(characters)
            return
        if stream.received_all:
            whole = received
        else:
            whole = max(received, self.pace.seconds(name, characters))
        # A provider that broke off produced no more than was received.
        metrics.audio_generated.labels(name).inc(received if end in _PROVIDER_ENDS else whole)
        if characters and whole > 0:
            metrics.characters_delivered.labels(name).inc(characters * min(1.0, delivered / whole))


__all__ = ["Bill", "SpeakingPace", "SpendMeter"]
