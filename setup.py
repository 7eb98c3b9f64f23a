"""The one compiled part: the polyphase resampler's S16LE kernel (gateway/_polyphase.c).

It is optional: where no C compiler is at hand the package installs without it and the
resampler runs the same arithmetic through numpy (``gateway.polyphase.KERNEL`` says which).
Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway._polyphase",
            sources=["gateway/_polyphase.c"],
            optional=True,
        )
    ]
)
