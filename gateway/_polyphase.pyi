"""The polyphase resampler's S16LE kernel (``gateway/_polyphase.c``)."""

def run_s16(
    samples: bytes, coefficients: bytes, up: int, down: int, taps: int, start: int, n: int, /
) -> bytes: ...
def kernel() -> str: ...
def integer_kernel() -> str: ...

class Stream:
    """One S16LE stream through the filter: its state kept here, a chunk one call."""

    def __init__(
        self,
        coefficients: bytes,
        up: int,
        down: int,
        taps: int,
        row_out: int,
        row_in: int,
        delay: int,
        lead: int,
    ) -> None: ...
    @property
    def integer(self) -> bool: ...
    def process(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...
    def state(self) -> tuple[bytes, int, int]: ...
