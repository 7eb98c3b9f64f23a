"""Sticky fallback: a call that failed over keeps its fallback voice for a while.

A voice with ``sticky_fallback: S`` remembers, per call (``InstanceId`` + ``ChannelId`` from
ExtendData), the fallback that answered it; for ``S`` seconds from then, the call's later
sentences go to that fallback first (the rest of the chain behind it), so the caller does not
hear the voice flip back and forth. A request without both ids is routed as usual. Memory is
bounded: at most :data:`MAX_CALLS` calls are remembered, the least recently used (failed over,
or routed to its fallback) forgotten first, so that a call still speaking keeps its voice
however many others fail over meanwhile; an expired entry is dropped when it is next looked at.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from .routing import ChainStep

#: Calls remembered at once, across every voice.
MAX_CALLS: Final = 50_000
#: Characters of an id kept in a key (ExtendData is the caller's).
_ID_CHARS: Final = 128

CallKey = tuple[str, str, str]  # voice key, InstanceId, ChannelId


def call_ids(extend_data: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(InstanceId, ChannelId)`` when ExtendData has both (strings or numbers)."""
    instance = extend_data.get("InstanceId")
    channel = extend_data.get("ChannelId")
    if not isinstance(instance, str | int) or not isinstance(channel, str | int):
        return None
    if isinstance(instance, bool) or isinstance(channel, bool):
        return None
    instance_id, channel_id = str(instance)[:_ID_CHARS], str(channel)[:_ID_CHARS]
    if not instance_id or not channel_id:
        return None
    return instance_id, channel_id


class StickyCalls:
    """The calls that failed over, and to which voice, until when."""

    def __init__(self, max_calls: int = MAX_CALLS, clock: Callable[[], float] = time.monotonic):
        self._calls: OrderedDict[CallKey, tuple[str, float]] = OrderedDict()
        self._max = max_calls
        self._clock = clock

    def __len__(self) -> int:
        return len(self._calls)

    def order(
        self, chain: Sequence[ChainStep], call: tuple[str, str] | None
    ) -> tuple[Sequence[ChainStep], bool]:
        """``chain`` with the call's sticky fallback first, and whether there was one."""
        if call is None or not chain or chain[0].voice.sticky_fallback is None:
            return chain, False
        key = (chain[0].voice.key, *call)
        entry = self._calls.get(key)
        if entry is None:
            return chain, False
        target, until = entry
        if self._clock() >= until:
            del self._calls[key]
            return chain, False
        for index, step in enumerate(chain):
            if index and step.voice.key == target:
                self._calls.move_to_end(key)  # in use: the last to be forgotten
                return [step, *chain[:index], *chain[index + 1 :]], True
        return chain, False  # the fallback is no longer in the chain (a reload)

    def answered(
        self, chain: Sequence[ChainStep], call: tuple[str, str] | None, voice: str
    ) -> None:
        """Note that ``voice`` answered the call's request for ``chain``'s first voice."""
        if call is None or not chain:
            return
        first = chain[0].voice
        seconds = first.sticky_fallback
        if seconds is None:
            return
        key = (first.key, *call)
        if voice == first.key:
            self._calls.pop(key, None)  # back on its own voice: nothing to stick to
            return
        if key in self._calls and self._calls[key][0] == voice:
            return  # already sticky to it: the time counts from the failover
        self._calls[key] = (voice, self._clock() + seconds)
        self._calls.move_to_end(key)
        while len(self._calls) > self._max:
            self._calls.popitem(last=False)
