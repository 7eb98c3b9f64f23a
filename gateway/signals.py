"""The signals a served gateway answers, for every gateway of the process."""

from __future__ import annotations

import asyncio
import signal
import threading
from types import FrameType
from typing import Any

from .runtime import Gateway, Reloader


class ProcessSignals:
    """The signals a served gateway answers: SIGHUP reloads its routing file; SIGTERM and
    SIGINT start its drain clock (the server's own handler, which runs next, stops accepting
    and waits for the connections). One set of handlers serves every gateway of the process
    (tests serve several at once): installed with the first, removed with the last, and a
    handler is put back only if it is still ours."""

    def __init__(self) -> None:
        self._members: dict[Gateway, tuple[Reloader, asyncio.AbstractEventLoop]] = {}
        self._previous: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, gateway: Gateway, reloader: Reloader) -> bool:
        """Hook ``gateway`` up; False where signals cannot be handled (not the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        loop = asyncio.get_running_loop()
        if not self._members:
            self._loop = loop
            loop.add_signal_handler(signal.SIGHUP, self._reload)
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous = signal.getsignal(signum)
                if callable(previous):  # a server handles it: run before it
                    self._previous[signum] = previous
                    signal.signal(signum, self._drain)
        self._members[gateway] = (reloader, loop)
        return True

    def remove(self, gateway: Gateway) -> None:
        self._members.pop(gateway, None)
        if self._members:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_signal_handler(signal.SIGHUP)
        self._loop = None
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._drain:
                signal.signal(signum, previous)
        self._previous.clear()

    def _reload(self) -> None:
        for reloader, _ in list(self._members.values()):
            reloader.request()

    def _drain(self, number: int, frame: FrameType | None) -> None:
        for gateway, (_, loop) in list(self._members.items()):
            if not loop.is_closed():
                loop.call_soon_threadsafe(gateway.begin_drain)
        previous = self._previous.get(number)
        if callable(previous):
            previous(number, frame)
