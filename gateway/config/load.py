"""The entry points: a routing file's text, or its path, in; a :class:`GatewayConfig` out, or a
:class:`ConfigError` listing every problem.

Only a regular file is read (a FIFO would block, a device never end), and at most
:data:`MAX_FILE_BYTES` of it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from .limits import MAX_FILE_BYTES
from .model import ConfigError, ConfigProblem, GatewayConfig
from .schema import check_file


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Validate a routing file's text; ``${VAR}`` is expanded from ``env`` (default: the
    process environment). Raises :class:`ConfigError` listing every problem."""
    try:
        return check_file(text, source, os.environ if env is None else env)
    except (RecursionError, MemoryError) as exc:  # a last line of defence behind the bounds
        message = f"the file is too complex to check ({type(exc).__name__})"
        raise ConfigError([ConfigProblem(source, "", message)]) from None


def load_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read and validate the routing file at ``path``; see :func:`parse_config`.

    Only a regular file is read (a FIFO would block, a device never end), and at most
    :data:`MAX_FILE_BYTES` of it."""
    source = os.fspath(path)
    return parse_config(_read_text(source), source, env)


def _read_text(source: str) -> str:
    def refuse(message: str) -> ConfigError:
        return ConfigError([ConfigProblem(source, "", message)])

    try:
        # Non-blocking, so that opening a FIFO without a writer returns at once (and is refused
        # below); regular files ignore the flag.
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise refuse(f"cannot read file: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise refuse(f"cannot read file: not a regular file ({_file_kind(mode)})")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES and (chunk := os.read(fd, MAX_FILE_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise refuse(f"cannot read file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_FILE_BYTES:
        raise refuse(f"the file is larger than {MAX_FILE_BYTES / (1 << 20):g} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"file is not UTF-8: {exc}") from None


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")
