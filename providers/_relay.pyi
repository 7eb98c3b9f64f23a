"""A relayed stream's chunk step in C (``providers/_relay.c``)."""

from collections.abc import Callable
from typing import Any

class Tap:
    """One relayed stream's chunk step: a piece of the upstream's body marked, converted,
    counted, framed and held for the caller, in the common case (the module's comment)."""

    active: bool
    paused: bool
    @property
    def on_slow(self) -> bool: ...
    @property
    def pieces(self) -> int: ...
    @property
    def pending(self) -> int: ...
    def send(self) -> None: ...
    def __init__(
        self,
        process: Callable[[bytes], bytes] | None,
        conn: Any,
        exchange: Any,
        stall: Any,
        clock: Callable[[], float],
        held: list[bytes],
        slow: Callable[[bytes], None],
        fail: Callable[[BaseException], None],
        batch: Batch,
        call_soon: Callable[..., Any],
        high_water: int,
    ) -> None: ...
    def __call__(self, piece: bytes, /) -> None: ...
    def counts(self) -> tuple[int, int, int]: ...
    def close(self) -> None: ...

class Body:
    """A response parser's body callback: pieces kept in ``chunks``, or handed to ``tap``."""

    @property
    def chunks(self) -> list[bytes]: ...
    buffered: int
    complete: bool
    tap: Tap | None
    def __init__(self, chunks: list[bytes]) -> None: ...
    def __call__(self, piece: bytes, /) -> None: ...

class Batch:
    """The chunks the taps of one event loop hold, sent by :meth:`flush` at its turn's end."""

    @property
    def scheduled(self) -> bool: ...
    def flush(self) -> None: ...
