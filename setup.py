"""The compiled parts, both optional: where no C compiler is at hand the package installs
without them and the same work is done in Python.

- ``gateway._polyphase``: the polyphase resampler's S16LE kernel (``gateway/_polyphase.c``;
  without it the resampler runs the same arithmetic through numpy, and
  ``gateway.polyphase.KERNEL`` says which);
- ``providers._relay``: a relayed stream's chunk step (``providers/_relay.c``; without it,
  ``gateway.direct``'s Python step).

Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("gateway._polyphase", sources=["gateway/_polyphase.c"], optional=True),
        Extension("providers._relay", sources=["providers/_relay.c"], optional=True),
    ]
)
