"""Every bound on what a routing file may cost to read and check.

A routing file may be crafted: a "billion laughs" file is a few hundred bytes, and 10 000 nested
brackets exhaust Python's stack. Each bound here is reported as a problem like any other mistake.
"""

from __future__ import annotations

from typing import Final

#: The largest routing file read (1 MiB); a longer one is refused without reading on.
MAX_FILE_BYTES: Final = 1 << 20
#: Nesting levels of YAML collections (a routing file needs fewer than ten).
MAX_DEPTH: Final = 64
#: Values in the file (mapping keys not counted), and again once its aliases are expanded.
MAX_VALUES: Final = 100_000
#: Characters of a mapping key, and of a name (provider, voice, fallback, default voice).
MAX_NAME: Final = 256
#: Characters of a key path (``voices.alloy.options...``): bounds what every value costs.
MAX_PATH: Final = 512
#: Voices in one flattened fallback chain, the voice itself included.
MAX_CHAIN: Final = 16
#: Problems listed; beyond this only their number is given.
MAX_PROBLEMS: Final = 100
#: Above this many candidates a did-you-mean hint is not worth its cost (and would be a guess).
MAX_SUGGEST: Final = 1000
