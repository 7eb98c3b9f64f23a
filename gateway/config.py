"""The routing file: YAML in, frozen dataclasses out, every mistake reported at once.

Ops write this file by hand, so the loader is strict and talkative: unknown keys, duplicate keys,
wrong types, dangling references and fallback cycles are all errors, each naming the file, the
key path (``voices.alloy.fallback[0]``) and the line. Nothing stops at the first problem; the
whole file is checked and :class:`ConfigError` carries every problem found.

The file is composed into YAML nodes rather than loaded with ``yaml.safe_load`` because the loader
needs the nodes: they carry the line of every key and value, and they reveal duplicate keys, which
PyYAML's constructor silently collapses to the last one.

A routing file may be crafted, so reading it is bounded: at most :data:`MAX_FILE_BYTES` are read,
and only from a regular file; nesting is limited, and so is the number of values once YAML aliases
are expanded (a "billion laughs" file is a few hundred bytes). Every such limit is reported as a
problem like any other mistake.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from providers.base import (
    EMOTIONS,
    Provider,
    ProviderConfig,
    RetryPolicy,
    Timeouts,
    provider_class,
    provider_types,
)

__all__ = [
    "MAX_FILE_BYTES",
    "ClientTimeouts",
    "ConfigError",
    "ConfigProblem",
    "GatewayConfig",
    "ServerConfig",
    "VoiceConfig",
    "default_config",
    "load_config",
    "parse_config",
]

_GLOB_CHARS: Final = frozenset("*?[")
_LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_UNKNOWN_VOICE: Final = ("default", "reject")
_RESAMPLERS: Final = ("auto", "low_latency", "block")

_TOP_KEYS: Final = ("server", "providers", "voices")
_SERVER_KEYS: Final = (
    "path",
    "content_type",
    "tokens",
    "max_text_chars",
    "max_body_bytes",
    "max_concurrent_streams",
    "unknown_voice",
    "default_voice",
    "host",
    "port",
    "ssl_certfile",
    "ssl_keyfile",
    "log_level",
    "drain_seconds",
    "resampler",
    "timeouts",
    "max_connections",
)
_PROVIDER_COMMON_KEYS: Final = ("type", "max_concurrency", "timeout", "retry", "options")
_TIMEOUT_KEYS: Final = ("connect", "first_byte", "total")
_RETRY_KEYS: Final = ("attempts", "backoff", "max_backoff")
_VOICE_KEYS: Final = ("provider", "voice", "options", "emotions", "fallback")
_CLIENT_TIMEOUT_KEYS: Final = ("header", "body", "keep_alive")

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})

#: The largest routing file read (1 MiB); a longer one is refused without reading on.
MAX_FILE_BYTES: Final = 1 << 20
#: Nesting levels of YAML collections (a routing file needs fewer than ten).
_MAX_DEPTH: Final = 64
#: Values in the file (mapping keys not counted), and again once its aliases are expanded.
_MAX_VALUES: Final = 100_000
#: Characters of a mapping key, and of a name (provider, voice, fallback, default voice).
_MAX_NAME: Final = 256
#: Characters of a key path (``voices.alloy.options...``): bounds what every value costs.
_MAX_PATH: Final = 512
#: Voices in one flattened fallback chain, the voice itself included.
_MAX_CHAIN: Final = 16
#: Problems listed; beyond this only their number is given.
_MAX_PROBLEMS: Final = 100

# What must never be in a name: it would end up in a response header or a log line. C0 and C1
# controls, DEL, and the Unicode line and paragraph separators.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

_T = TypeVar("_T")


# ------------------------------------------------------------------------------ public types


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One mistake in a routing file: where it is and what is wrong."""

    source: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The routing file is unusable; :attr:`problems` lists every mistake found, and
    :attr:`warnings` what was found besides (see :attr:`GatewayConfig.warnings`)."""

    def __init__(
        self, problems: list[ConfigProblem], warnings: tuple[ConfigProblem, ...] = ()
    ) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
        self.warnings = warnings


@dataclass(frozen=True, slots=True)
class ClientTimeouts:
    """``server.timeouts``, seconds: the request head must arrive within ``header`` of the
    connection opening (or of its first byte after a keep-alive pause), the body within ``body``
    of the head; an idle keep-alive connection is closed after ``keep_alive``."""

    header: float = 5.0
    body: float = 10.0
    keep_alive: float = 5.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The ``server:`` block: the HTTP endpoint, its limits and how unknown VoiceIds are met."""

    path: str = "/stream-audio"
    content_type: str = "audio/pcm"
    tokens: tuple[str, ...] = ()
    max_text_chars: int = 2000
    max_body_bytes: int = 65536
    max_concurrent_streams: int = 1000
    unknown_voice: str = "default"
    default_voice: str | None = None
    host: str = "0.0.0.0"
    port: int = 8080
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    log_level: str = "info"
    drain_seconds: float = 10.0
    timeouts: ClientTimeouts = field(default_factory=ClientTimeouts)
    max_connections: int = 4096
    """Open client connections per process; beyond it a new connection gets 503 and is closed."""
    resampler: str = "auto"
    """``auto`` (by the first chunk), ``low_latency`` (soxr variable-rate: first 20 ms chunk
    answered, ~0.85 ms CPU and ~120 KiB per stream) or ``block`` (soxr's default filter:
    ~0.1 ms CPU and ~54 KiB per stream, ~40 ms held back)."""


@dataclass(frozen=True, slots=True)
class VoiceConfig:
    """One ``voices:`` entry. ``key`` is the VoiceId, or a glob pattern matching VoiceIds."""

    key: str
    provider: str
    voice: str | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    emotions: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _EMPTY)
    fallback: tuple[str, ...] = ()
    line: int | None = None

    @property
    def is_pattern(self) -> bool:
        """Whether the key is an fnmatch pattern (contains ``*``, ``?`` or ``[``)."""
        return _is_pattern(self.key)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """A whole routing file, validated. ``voices`` keeps file order (pattern priority)."""

    server: ServerConfig
    providers: Mapping[str, ProviderConfig]
    voices: Mapping[str, VoiceConfig]
    source: str
    warnings: tuple[ConfigProblem, ...] = ()
    """What does not make the file invalid but will make a provider fail (a missing optional
    dependency): from :meth:`providers.base.Provider.check_environment`."""


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Validate a routing file's text; ``${VAR}`` is expanded from ``env`` (default: the
    process environment). Raises :class:`ConfigError` listing every problem."""
    try:
        return _Parser(source, os.environ if env is None else env).parse(text)
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


def default_config() -> GatewayConfig:
    """What the gateway runs without a routing file: the bundled Piper voice ``joe``.

    Built directly rather than parsed so that it needs no provider plugin to be importable."""
    local = ProviderConfig(name="local", type="piper", max_concurrency=2)
    joe = VoiceConfig(key="joe", provider="local")
    return GatewayConfig(
        server=ServerConfig(default_voice="joe", unknown_voice="default"),
        providers=MappingProxyType({"local": local}),
        voices=MappingProxyType({"joe": joe}),
        source="<built-in default>",
    )


# ------------------------------------------------------------------------------ helpers


def _is_pattern(key: str) -> bool:
    return any(c in _GLOB_CHARS for c in key)


class _Invalid:
    """Stands in for a value that already produced a problem, so that later checks stay quiet
    about it instead of piling a second, confusing error on the same spot."""

    def __repr__(self) -> str:
        return "<invalid>"


_INVALID: Final = _Invalid()


def _first_control(value: Any) -> str | None:
    """The first string in ``value`` (a string, or lists and mappings of them) that holds a
    control character."""
    if isinstance(value, str):
        return value if _CONTROL.search(value) else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        found = _first_control(item)
        if found is not None:
            return found
    return None


def _contains_invalid(value: Any) -> bool:
    if value is _INVALID:
        return True
    if isinstance(value, dict):
        return any(_contains_invalid(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_invalid(v) for v in value)
    return False


def _child(path: str, key: str) -> str:
    # Keys that would make the path ambiguous are quoted; globs like en-US-* stay readable.
    # Control characters are escaped: paths go into log lines.
    if not key or any(c in key for c in ".[]\"' \t") or not key.isprintable():
        key = '"' + _escape(key.replace('"', '\\"')) + '"'
        return f"{path}[{key}]" if path else f"[{key}]"
    return f"{path}.{key}" if path else key


def _escape(text: str) -> str:
    """``text`` with every unprintable character written as its Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _shown(text: str, limit: int = 40) -> str:
    """``repr(text)``, shortened: values from the file go into messages, which must stay short."""
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


def _item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


#: Above this many candidates a did-you-mean hint is not worth its cost (and would be a guess).
_MAX_SUGGEST: Final = 1000


def _suggest(word: str, choices: Collection[str]) -> str:
    if len(choices) > _MAX_SUGGEST or len(word) > _MAX_NAME:
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _quoted_list(items: Collection[str]) -> str:
    return ", ".join(repr(i) for i in items)


def _some(names: Collection[str], limit: int = 10) -> str:
    """The first ``limit`` names, comma-separated, and how many there are in all if more."""
    shown = [_escape(name) for _, name in zip(range(limit), names, strict=False)]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(shown) + more


# A reference is ${NAME} or ${NAME:-default}; $$ is a literal dollar. Anything else after a
# dollar sign is left alone so that values like passwords with a lone "$" survive.
_ENV_BODY: Final = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.S)

_TIMESTAMP_TAG: Final = "tag:yaml.org,2002:timestamp"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_MAP_TAG: Final = "tag:yaml.org,2002:map"


def _substitute(text: str, replace: Callable[[str, str | None], str]) -> str:
    """``text`` with every ``$$``, ``${body}`` and unclosed ``${`` replaced by
    ``replace(whole, body)`` (``body`` is None for ``$$`` and an unclosed ``${``).

    One pass, linear in the text: a regex with ``[^}]*`` would scan the rest of the text
    again at every unclosed ``${``, quadratic on a value of many of them."""
    out: list[str] = []
    start = 0
    may_close = True  # False once no "}" is left after the last unclosed "${"
    while (dollar := text.find("$", start)) >= 0:
        out.append(text[start:dollar])
        follower = text[dollar + 1 : dollar + 2]
        if follower == "$":
            out.append(replace("$$", None))
            start = dollar + 2
        elif follower == "{":
            close = text.find("}", dollar + 2) if may_close else -1
            if close < 0:
                may_close = False
                out.append(replace("${", None))
                start = dollar + 2
            else:
                out.append(replace(text[dollar : close + 1], text[dollar + 2 : close]))
                start = close + 1
        else:
            out.append("$")
            start = dollar + 1
    out.append(text[start:])
    return "".join(out)


def _control_message(text: str) -> str:
    found = _CONTROL.search(text)
    char = found.group() if found else ""
    return f"must not contain control characters or line breaks (found {char!r})"


# ------------------------------------------------------------------------------ YAML in bounds


class _TooLarge(Exception):
    """A limit of :class:`_BoundedLoader` or of the value budget was reached."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader (the pure-Python one, so that messages stay PyYAML's), composing
    within bounds: its composer recurses once per nesting level, so 10 000 nested brackets end
    in a ``RecursionError``, and a file of a million tiny values takes seconds to compose."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        is_key = isinstance(parent, MappingNode) and index is None  # how PyYAML composes keys
        if not isinstance(event, AliasEvent) and not is_key:
            self._nodes += 1
            if self._nodes > _MAX_VALUES:
                raise _TooLarge(f"the file has more than {_MAX_VALUES} values", line)
        if self._depth >= _MAX_DEPTH:
            raise _TooLarge(f"the file nests deeper than {_MAX_DEPTH} levels", line)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose(text: str) -> Node | None:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


# ------------------------------------------------------------------------------ the parser


class _Parser:
    """One parse: turns nodes into plain values (remembering the line of every path), then
    checks those values section by section, collecting problems."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.problems: list[ConfigProblem] = []
        self.unlisted = 0  # problems beyond _MAX_PROBLEMS, only counted
        self.warnings: list[ConfigProblem] = []
        self.built = 0  # values built, aliases expanded: bounded by _MAX_VALUES
        self._seen: set[int] = set()  # the nodes built at least once
        self._copying = 0  # > 0 while building an alias's copy of a node built before
        self._origin = 0  # the line of the last node built for the first time outside a copy
        self.key_lines: dict[str, int] = {}
        self.value_lines: dict[str, int] = {}
        self._scalars = SafeConstructor()
        self._building: set[int] = set()
        # The text as written of every scalar that YAML turned into a non-string (1234, yes,
        # 0123), for fields that are names: there the text, not the number, is what was meant.
        self.raw: dict[str, str] = {}
        # Per voice key: (path, target) of every well-typed fallback entry, for the later
        # cross-checks, which need every voice key first.
        self.fallback_refs: dict[str, list[tuple[str, str]]] = {}
        self.plugins: dict[str, type[Provider]] = {}  # provider name -> its plugin class
        self._known_types: list[str] | None = None

    # -------------------------------------------------------------- problems and lines

    def line_of(self, path: str, *, key: bool = False) -> int | None:
        """The line of a path's value, or of its key when ``key`` (or when it has no value)."""
        if key:
            return self.key_lines.get(path, self.value_lines.get(path))
        return self.value_lines.get(path, self.key_lines.get(path))

    def error(self, path: str, message: str, *, key: bool = False, line: int | None = None) -> None:
        if len(self.problems) >= _MAX_PROBLEMS:
            self.unlisted += 1
            return
        if line is None:
            line = self.line_of(path, key=key)
        self.problems.append(ConfigProblem(self.source, path, message, line))

    def fail(self) -> ConfigError:
        """The error listing every problem so far, in line order."""
        problems = sorted(self.problems, key=lambda p: p.line if p.line is not None else math.inf)
        if self.unlisted:
            more = f"... and {self.unlisted} more problems (fix these first)"
            problems.append(ConfigProblem(self.source, "", more))
        return ConfigError(problems, tuple(self.warnings))

    # -------------------------------------------------------------- nodes -> values

    def build(self, node: Node, path: str) -> Any:
        """The plain value of ``node`` with env references expanded in every string."""
        line = node.start_mark.line + 1
        # Aliases let a tiny file name a huge tree (a "billion laughs"): every value built
        # counts, whichever anchor it came from. A node built before is an alias's copy; the
        # limit is reported at the line that asked for the copies, not at the anchor.
        again = id(node) in self._seen
        if not again:
            self._seen.add(id(node))
            if not self._copying:
                self._origin = line
        self.built += 1
        if self.built > _MAX_VALUES:
            raise _TooLarge(
                f"the file expands to more than {_MAX_VALUES} values (through YAML aliases)",
                self._origin,
            )
        if len(path) > _MAX_PATH:
            self.error(path[:_MAX_PATH] + "...", "nested too deeply (key path too long)", line=line)
            return _INVALID
        self.value_lines.setdefault(path, line)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        # An alias may point back at a node that contains it; following it would never end.
        if id(node) in self._building:
            self.error(path, "recursive YAML alias")
            return _INVALID
        self._building.add(id(node))
        self._copying += again
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ_TAG:
                    self.error(path, f"unsupported YAML tag {node.tag!r}")
                    return _INVALID
                return [self.build(item, _item(path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                if node.tag != _MAP_TAG:
                    self.error(path, f"unsupported YAML tag {node.tag!r}")
                    return _INVALID
                return self._mapping(node, path)
        finally:
            self._building.discard(id(node))
            self._copying -= again
        self.error(path, "unsupported YAML node")
        return _INVALID

    def _scalar(self, node: ScalarNode, path: str) -> Any:
        if node.tag == _TIMESTAMP_TAG:
            # Nothing in this file is a date; "2024-08-06" is far more likely a model version.
            return node.value
        try:
            value = self._scalars.construct_object(node)
        except ConstructorError as exc:
            self.error(path, f"invalid YAML value: {exc.problem}")
            return _INVALID
        except (ValueError, TypeError) as exc:  # e.g. "!!int abc"
            self.error(path, f"invalid YAML value: {exc}")
            return _INVALID
        if isinstance(value, str):
            return self._expand(value, path)
        if value is not None:
            self.raw[path] = str(node.value)
        return value

    def _mapping(self, node: MappingNode, path: str) -> Any:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merges: list[tuple[Node, str]] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE_TAG:
                merges.append((value_node, path))
                continue
            if not isinstance(key_node, ScalarNode):
                self.error(path, "mapping keys must be plain strings", line=key_line)
                continue
            # Keys are names (VoiceIds, provider names), so their text is taken as written:
            # "1234" stays a string and "yes" does not turn into True.
            key = str(key_node.value)
            if len(key) > _MAX_NAME:
                shown = _child(path, key[:40] + "...")
                self.error(shown, f"key longer than {_MAX_NAME} characters", line=key_line)
                continue
            child = _child(path, key)
            if _CONTROL.search(key):
                self.error(child, _control_message(key), line=key_line)
                continue
            if key in first_line:
                self.error(
                    child, f"duplicate key {key!r} (first at line {first_line[key]})", line=key_line
                )
                continue
            first_line[key] = key_line
            self.key_lines[child] = key_line
            result[key] = self.build(value_node, child)
        for value_node, merge_path in merges:
            for source in self._merge_sources(value_node, merge_path):
                merged = self.build(source, merge_path)
                if isinstance(merged, dict):
                    # Explicit keys win over merged ones, and earlier merges over later ones.
                    for key, value in merged.items():
                        result.setdefault(key, value)
        return result

    def _merge_sources(self, node: Node, path: str) -> Iterator[Node]:
        if isinstance(node, MappingNode):
            yield node
        elif isinstance(node, SequenceNode) and all(isinstance(n, MappingNode) for n in node.value):
            yield from node.value
        else:
            self.error(path, "a '<<' merge needs a mapping or a list of mappings", key=True)

    def _expand(self, text: str, path: str) -> Any:
        if "$" not in text:
            return text
        missing: list[str] = []
        malformed: list[str] = []

        def replace(whole: str, body: str | None) -> str:
            if whole == "$$":
                return "$"
            parsed = _ENV_BODY.fullmatch(body) if body is not None else None
            if parsed is None:
                malformed.append(whole)
                return whole
            name, default = parsed.group("name"), parsed.group("default")
            value = self.env.get(name)
            if default is not None:
                # As in the shell, ":-" also covers a variable that is set but empty.
                return value if value else default
            if value is None:
                missing.append(name)
                return whole
            return value

        expanded = _substitute(text, replace)
        for name in missing:
            self.error(path, f"environment variable {_shown(name)} is not set (and has no default)")
        for ref in malformed:
            self.error(
                path, f"malformed reference {_shown(ref)}; use ${{NAME}} or ${{NAME:-default}}"
            )
        return _INVALID if missing or malformed else expanded

    # -------------------------------------------------------------- typed readers

    def check_keys(
        self,
        block: Mapping[str, Any],
        path: str,
        allowed: Collection[str],
        required: Collection[str] = (),
    ) -> None:
        """Report unknown keys (with a did-you-mean hint) and missing required ones."""
        for key in block:
            if key not in allowed:
                hint = _suggest(key, allowed) or f" (allowed: {', '.join(sorted(allowed))})"
                self.error(_child(path, key), f"unknown key {key!r}{hint}", key=True)
        for key in required:
            # "key:" with nothing after it is null, which everywhere in this file means unset.
            if block.get(key) is None:
                self.error(path, f"missing required key {key!r}", key=True)

    def mapping(self, value: Any, path: str) -> dict[str, Any] | None:
        """A mapping, or None (null counts as absent); wrong types are reported."""
        if value is None or value is _INVALID:
            return None
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {_describe(value)}")
            return None
        return value

    def string(
        self, value: Any, path: str, *, non_empty: bool = False, limit: int | None = None
    ) -> str | None:
        """A string: every string read this way is a name, a path or a header value, so
        control characters (which would reach a response header or a log line) are refused."""
        if value is None or value is _INVALID:
            return None
        if not isinstance(value, str):
            hint = "; quote it if meant" if isinstance(value, bool | int | float) else ""
            self.error(path, f"expected a string, got {_describe(value)}{hint}")
            return None
        if non_empty and not value.strip():
            self.error(path, "must not be empty")
            return None
        if limit is not None and len(value) > limit:
            self.error(path, f"longer than {limit} characters")
            return None
        if _CONTROL.search(value):
            self.error(path, _control_message(value))
            return None
        return value

    def name(
        self, value: Any, path: str, *, non_empty: bool = True, limit: int | None = _MAX_NAME
    ) -> str | None:
        """A name (voice, provider, token): a string, or any other scalar taken as written."""
        if value is not None and value is not _INVALID and path in self.raw:
            value = self.raw[path]
        return self.string(value, path, non_empty=non_empty, limit=limit)

    def choice(self, value: Any, path: str, choices: Collection[str]) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if text.lower() not in choices:
            hint = _suggest(text.lower(), choices)
            self.error(path, f"must be one of {_quoted_list(choices)}, got {_shown(text)}{hint}")
            return None
        return text.lower()

    def integer(
        self, value: Any, path: str, minimum: int, maximum: int | None = None
    ) -> int | None:
        if value is None or value is _INVALID:
            return None
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            # Env expansion yields strings; "${PORT:-8080}" must still be a port.
            try:
                number = int(value.strip())
            except ValueError:
                number = None
        bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        if number is None:
            self.error(path, f"expected an integer {bounds}, got {_describe(value)}")
            return None
        if number < minimum or (maximum is not None and number > maximum):
            self.error(path, f"must be an integer {bounds}, got {number}")
            return None
        return number

    def number(
        self, value: Any, path: str, minimum: float, *, strict: bool = False
    ) -> float | None:
        """A finite number ``>= minimum`` (``> minimum`` when ``strict``)."""
        if value is None or value is _INVALID:
            return None
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        if number is None or not math.isfinite(number):
            self.error(path, f"expected a number {bound}, got {_describe(value)}")
            return None
        if number < minimum or (strict and number == minimum):
            self.error(path, f"must be a number {bound}, got {number:g}")
            return None
        return number

    def strings(
        self, value: Any, path: str, *, allow_empty: bool = False, limit: int | None = _MAX_NAME
    ) -> list[tuple[int, str]] | None:
        """A list of names (a single one counts as a list of one), with their indexes."""
        if value is None or value is _INVALID:
            return None
        if isinstance(value, str) or path in self.raw:
            text = self.name(value, path, non_empty=not allow_empty, limit=limit)
            return [] if text is None else [(0, text)]
        if not isinstance(value, list):
            self.error(path, f"expected a list of strings, got {_describe(value)}")
            return None
        result: list[tuple[int, str]] = []
        for i, item in enumerate(value):
            text = self.name(item, _item(path, i), non_empty=not allow_empty, limit=limit)
            if text is not None:
                result.append((i, text))
        return result

    # -------------------------------------------------------------- the whole file

    def parse(self, text: str) -> GatewayConfig:
        try:
            return self.check(text)
        except _TooLarge as exc:
            # Nothing after a limit is worth reporting: it would be about a file cut short.
            raise ConfigError([ConfigProblem(self.source, "", exc.message, exc.line)]) from None

    def check(self, text: str) -> GatewayConfig:
        try:
            root_node = _compose(text)
        except ReaderError as exc:
            where = text.count("\n", 0, exc.position) + 1
            message = f"invalid YAML: unacceptable character #x{exc.character:04x} ({exc.reason})"
            raise ConfigError([ConfigProblem(self.source, "", message, where)]) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            context = exc.context
            if context and exc.context_mark is not None and exc.context_mark is not mark:
                # The problem is often found far from its cause (an unclosed bracket is only
                # noticed at the end of the file), so say where the construct began.
                context = f"{context} (line {exc.context_mark.line + 1})"
            parts = [p for p in (context, exc.problem) if p]
            message = "invalid YAML: " + (", ".join(parts) or str(exc))
            raise ConfigError([ConfigProblem(self.source, "", message, line)]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([ConfigProblem(self.source, "", f"invalid YAML: {exc}")]) from None
        if root_node is None:
            raise ConfigError([ConfigProblem(self.source, "", "the file is empty", None)])
        root = self.build(root_node, "")
        # Problems about the file as a whole have no better line than none at all.
        self.value_lines.pop("", None)
        if not isinstance(root, dict):
            self.error("", f"the file must be a mapping of {', '.join(_TOP_KEYS)}")
            raise self.fail()
        self.check_keys(root, "", _TOP_KEYS, required=("providers", "voices"))

        provider_blocks = self.section(root, "providers")
        voice_blocks = self.section(root, "voices")
        providers = {
            name: self.provider(name, block, _child("providers", name))
            for name, block in provider_blocks.items()
        }
        voices = {
            key: self.voice(key, block, _child("voices", key), provider_blocks)
            for key, block in voice_blocks.items()
        }
        self.check_fallbacks(list(voice_blocks))
        server = self.server(root.get("server"), set(voice_blocks))

        if self.problems:
            raise self.fail()
        return GatewayConfig(
            server=_present(server),
            providers=MappingProxyType({k: _present(v) for k, v in providers.items()}),
            voices=MappingProxyType({k: _present(v) for k, v in voices.items()}),
            source=self.source,
            warnings=tuple(self.warnings),
        )

    def section(self, root: Mapping[str, Any], name: str) -> dict[str, Any]:
        """``providers`` or ``voices``: a required, non-empty mapping."""
        value = root.get(name)
        if value is None or value is _INVALID:
            return {}  # already reported, as missing or as invalid
        if not isinstance(value, dict) or not value:
            self.error(name, f"expected a non-empty mapping, got {_describe(value)}")
            return {}
        return value

    # -------------------------------------------------------------- server

    def server(self, value: Any, voice_keys: Collection[str]) -> ServerConfig | None:
        path = "server"
        block = self.mapping(value, path) or {}
        self.check_keys(block, path, _SERVER_KEYS)
        fields: dict[str, Any] = {}

        def put(name: str, reader: Callable[[Any, str], Any]) -> None:
            if name in block:
                parsed = reader(block[name], _child(path, name))
                if parsed is not None:
                    fields[name] = parsed

        put("path", self.server_path)
        put("content_type", lambda v, p: self.string(v, p, non_empty=True))
        put("tokens", self.tokens)
        put("max_text_chars", lambda v, p: self.integer(v, p, 1))
        # Bodies are parsed on the event loop: 1 MiB bounds that at tens of milliseconds.
        put("max_body_bytes", lambda v, p: self.integer(v, p, 1024, 1 << 20))
        put("max_concurrent_streams", lambda v, p: self.integer(v, p, 1))
        put("unknown_voice", lambda v, p: self.choice(v, p, _UNKNOWN_VOICE))
        put("default_voice", self.name)
        put("host", lambda v, p: self.string(v, p, non_empty=True))
        put("port", lambda v, p: self.integer(v, p, 0, 65535))
        put("ssl_certfile", lambda v, p: self.string(v, p, non_empty=True))
        put("ssl_keyfile", lambda v, p: self.string(v, p, non_empty=True))
        put("log_level", lambda v, p: self.choice(v, p, _LOG_LEVELS))
        put("resampler", lambda v, p: self.choice(v, p, _RESAMPLERS))
        put("drain_seconds", lambda v, p: self.number(v, p, 0))
        put("timeouts", self.client_timeouts)
        put("max_connections", lambda v, p: self.integer(v, p, 1))

        pair = ("ssl_certfile", "ssl_keyfile")
        # A value that failed its own check is already reported; don't also call it missing.
        settled = all(block.get(k) is None or k in fields for k in pair)
        if settled and ("ssl_certfile" in fields) != ("ssl_keyfile" in fields):
            given, other = pair if "ssl_certfile" in fields else pair[::-1]
            self.error(_child(path, given), f"{given} needs {other} too (give both or neither)")

        self.check_default_voice(block, fields, voice_keys)
        return ServerConfig(**fields)

    def client_timeouts(self, value: Any, path: str) -> ClientTimeouts | None:
        block = self.mapping(value, path)
        if block is None:
            return None
        self.check_keys(block, path, _CLIENT_TIMEOUT_KEYS)
        values: dict[str, float] = {}
        for key in _CLIENT_TIMEOUT_KEYS:
            if key in block:
                number = self.number(block[key], _child(path, key), 0, strict=True)
                if number is None:
                    return None
                values[key] = number
        return ClientTimeouts(**values)

    def server_path(self, value: Any, path: str) -> str | None:
        text = self.string(value, path)
        if text is not None and not text.startswith("/"):
            self.error(path, f"must start with '/', got {_shown(text)}")
            return None
        return text

    def tokens(self, value: Any, path: str) -> tuple[str, ...] | None:
        items = self.strings(value, path, allow_empty=True, limit=None)
        if items is None:
            return None
        # "${TTS_GATEWAY_TOKEN:-}" expands to "" when unset: that means "no such token".
        return tuple(token for _, token in items if token)

    def check_default_voice(
        self, block: Mapping[str, Any], fields: Mapping[str, Any], voice_keys: Collection[str]
    ) -> None:
        path = _child("server", "default_voice")
        if not voice_keys:
            return  # no usable voices section: that problem is reported, this would be noise
        if any(
            block.get(k) is not None and k not in fields for k in ("default_voice", "unknown_voice")
        ):
            return  # a bad value there is already reported
        default = fields.get("default_voice")
        if default is None:
            if fields.get("unknown_voice", "default") == "default":
                self.error(
                    path,
                    "required when unknown_voice is 'default' "
                    "(name an exact voice, or set unknown_voice: reject)",
                    line=self.line_of(path, key=True) or self.line_of("server", key=True),
                )
            return
        if default not in voice_keys:
            exact = [k for k in voice_keys if not _is_pattern(k)]
            self.error(path, f"unknown voice {default!r}{_suggest(default, exact)}")
        elif _is_pattern(default):
            self.error(path, f"must name an exact voice, not the pattern {default!r}")

    # -------------------------------------------------------------- providers

    def provider(self, name: str, value: Any, path: str) -> ProviderConfig | None:
        if not isinstance(value, dict):
            if value is not _INVALID:
                self.error(path, f"expected a mapping with at least 'type', got {_describe(value)}")
            return None
        block: dict[str, Any] = value
        cls = self.provider_type(block, path)
        if cls is not None:
            self.plugins[name] = cls
        if cls is not None:
            allowed = (*_PROVIDER_COMMON_KEYS, *sorted(cls.settings_keys))
            self.check_keys(block, path, allowed, required=sorted(cls.required_settings))
        fields: dict[str, Any] = {}
        if "max_concurrency" in block:
            max_concurrency = self.integer(
                block["max_concurrency"], _child(path, "max_concurrency"), 1
            )
            if max_concurrency is not None:
                fields["max_concurrency"] = max_concurrency
        if "timeout" in block:
            timeout = self.timeouts(block["timeout"], _child(path, "timeout"))
            if timeout is not None:
                fields["timeout"] = timeout
        if "retry" in block:
            retry = self.retry(block["retry"], _child(path, "retry"))
            if retry is not None:
                fields["retry"] = retry
        options = self.mapping(block.get("options"), _child(path, "options"))
        if cls is None or not isinstance(block.get("type"), str):
            return None
        if options:
            self.option_checks(cls, options, _child(path, "options"))
        settings = {k: v for k, v in block.items() if k in cls.settings_keys and v is not None}
        missing = cls.required_settings - settings.keys()
        clean = self.check_settings_text(settings, path)
        if not missing and clean and not _contains_invalid(settings):
            self.plugin_checks(cls, settings, path)
            self.environment_checks(cls, settings, path)
        return ProviderConfig(
            name=name,
            type=block["type"],
            settings=MappingProxyType(settings),
            options=MappingProxyType(options or {}),
            **fields,
        )

    def provider_type(self, block: Mapping[str, Any], path: str) -> type[Provider] | None:
        """The plugin class named by ``type``. Only this type's plugin is imported, so a broken
        or heavy plugin that the file does not use costs nothing."""
        if block.get("type") is None:
            self.error(path, "missing required key 'type'", key=True)
            return None
        type_name = self.string(
            block["type"], _child(path, "type"), non_empty=True, limit=_MAX_NAME
        )
        if type_name is None:
            return None
        if self._known_types is None:
            # Listing the types scans every installed package's entry points (milliseconds):
            # once per file, not once per provider block.
            self._known_types = provider_types()
        known = self._known_types
        if type_name not in known:
            self.error(
                _child(path, "type"),
                f"unknown provider type {type_name!r}{_suggest(type_name, known)}; "
                f"known types: {', '.join(known)}",
            )
            return None
        try:
            return provider_class(type_name)
        except Exception as exc:  # a plugin's import error must become a problem, not a crash
            self.error(
                _child(path, "type"),
                f"provider type {type_name!r} cannot be loaded: {type(exc).__name__}: {exc}",
            )
            return None

    def plugin_checks(self, cls: type[Provider], settings: dict[str, Any], path: str) -> None:
        try:
            found = cls.validate_settings(MappingProxyType(settings))
        except Exception as exc:  # a plugin bug must not hide the rest of the report
            self.error(path, f"settings check failed: {type(exc).__name__}: {exc}", key=True)
            return
        for key, problem in found:
            target = _child(path, key) if key else path
            self.error(target, problem, line=self.line_of(target) or self.line_of(path, key=True))

    def check_settings_text(self, settings: Mapping[str, Any], path: str) -> bool:
        """Settings are keys, URLs, regions, file names: they go into request headers and
        URLs, where a control character (an env value's trailing newline) breaks the request
        late and obscurely. Whether none has one. (Options may hold prose: not checked.)"""
        clean = True
        for key, value in settings.items():
            text = _first_control(value)
            if text is not None:
                # The message names the character, never the value: it may be a secret.
                self.error(_child(path, key), _control_message(text))
                clean = False
        return clean

    def environment_checks(self, cls: type[Provider], settings: dict[str, Any], path: str) -> None:
        """The plugin's warnings about this machine (a missing optional dependency)."""
        try:
            found = cls.check_environment(MappingProxyType(settings))
        except Exception as exc:  # a plugin bug must not fail a valid file
            found = [("", f"environment check failed: {type(exc).__name__}: {exc}")]
        for key, message in found:
            target = _child(path, key) if key else path
            line = self.line_of(target) or self.line_of(path, key=True)
            self.warnings.append(ConfigProblem(self.source, target, message, line))

    def option_checks(self, cls: type[Provider], options: dict[str, Any], path: str) -> None:
        """The plugin's own check of an ``options`` block (provider, voice or emotion)."""
        if _contains_invalid(options):
            return
        try:
            found = cls.validate_options(MappingProxyType(options))
        except Exception as exc:  # a plugin bug must not hide the rest of the report
            self.error(path, f"options check failed: {type(exc).__name__}: {exc}")
            return
        for key, problem in found:
            target = _child(path, key) if key else path
            self.error(target, problem, line=self.line_of(target) or self.line_of(path))

    def timeouts(self, value: Any, path: str) -> Timeouts | None:
        block = self.mapping(value, path)
        if block is None:
            return None if value is not None else Timeouts()
        self.check_keys(block, path, _TIMEOUT_KEYS)
        values: dict[str, float] = {}
        ok = True
        for key in _TIMEOUT_KEYS:
            if key in block:
                number = self.number(block[key], _child(path, key), 0, strict=True)
                ok = ok and number is not None
                if number is not None:
                    values[key] = number
        timeout = Timeouts(**values)
        if ok and timeout.first_byte > timeout.total:
            target = "total" if "total" in values else "first_byte"
            self.error(
                _child(path, target),
                f"first_byte ({timeout.first_byte:g}) must not exceed total ({timeout.total:g})",
            )
            return None
        return timeout if ok else None

    def retry(self, value: Any, path: str) -> RetryPolicy | None:
        block = self.mapping(value, path)
        if block is None:
            return None if value is not None else RetryPolicy()
        self.check_keys(block, path, _RETRY_KEYS)
        ok = True
        values: dict[str, Any] = {}
        if "attempts" in block:
            attempts = self.integer(block["attempts"], _child(path, "attempts"), 1)
            ok = attempts is not None
            if attempts is not None:
                values["attempts"] = attempts
        for key in ("backoff", "max_backoff"):
            if key in block:
                number = self.number(block[key], _child(path, key), 0)
                ok = ok and number is not None
                if number is not None:
                    values[key] = number
        policy = RetryPolicy(**values)
        if ok and policy.max_backoff < policy.backoff:
            target = "max_backoff" if "max_backoff" in values else "backoff"
            self.error(
                _child(path, target),
                f"max_backoff ({policy.max_backoff:g}) must be at least "
                f"backoff ({policy.backoff:g})",
            )
            return None
        return policy if ok else None

    # -------------------------------------------------------------- voices

    def voice(
        self, key: str, value: Any, path: str, providers: Mapping[str, Any]
    ) -> VoiceConfig | None:
        line = self.line_of(path, key=True)
        if not key.strip():
            # An empty VoiceId always means the default voice; an entry for it could never match.
            self.error(path, "a voice key must not be empty", key=True)
        if not isinstance(value, dict):
            if value is not _INVALID:
                self.error(
                    path, f"expected a mapping with at least 'provider', got {_describe(value)}"
                )
            return None
        block: dict[str, Any] = value
        self.check_keys(block, path, _VOICE_KEYS, required=("provider",))
        provider = self.name(block.get("provider"), _child(path, "provider"))
        if provider is not None and provider not in providers:
            hint = _suggest(provider, providers) or f"; providers: {_some(providers)}"
            self.error(_child(path, "provider"), f"unknown provider {provider!r}{hint}")
        voice = self.name(block.get("voice"), _child(path, "voice"))
        options = self.mapping(block.get("options"), _child(path, "options"))
        emotions = self.emotions(block.get("emotions"), _child(path, "emotions"))
        fallback_path = _child(path, "fallback")
        fallback = self.strings(block.get("fallback"), fallback_path)
        if fallback is not None and len(fallback) >= _MAX_CHAIN:
            self.error(fallback_path, f"at most {_MAX_CHAIN - 1} fallbacks, got {len(fallback)}")
            fallback = None
        single = not isinstance(block.get("fallback"), list)
        self.fallback_refs[key] = [
            (fallback_path if single else _item(fallback_path, i), name)
            for i, name in fallback or ()
        ]
        if provider is None:
            return None
        cls = self.plugins.get(provider)
        if cls is not None:
            if options:
                self.option_checks(cls, options, _child(path, "options"))
            for emotion, emotion_options in (emotions or {}).items():
                if emotion_options:
                    self.option_checks(
                        cls, dict(emotion_options), _child(_child(path, "emotions"), emotion)
                    )
        return VoiceConfig(
            key=key,
            provider=provider,
            voice=voice,
            options=MappingProxyType(options or {}),
            emotions=MappingProxyType(emotions or {}),
            fallback=tuple(name for _, name in fallback or ()),
            line=line,
        )

    def emotions(self, value: Any, path: str) -> dict[str, Mapping[str, Any]] | None:
        block = self.mapping(value, path)
        if block is None:
            return None
        result: dict[str, Mapping[str, Any]] = {}
        for name, options in block.items():
            child = _child(path, name)
            # The request side lower-cases ExtendData.Emotion, so keys must match that form.
            emotion = name.strip().lower()
            if emotion not in EMOTIONS:
                self.error(
                    child,
                    f"unknown emotion {name!r}{_suggest(emotion, EMOTIONS)}; "
                    f"the interface defines {', '.join(EMOTIONS)}",
                    key=True,
                )
                continue
            if emotion in result:
                self.error(child, f"emotion {emotion!r} is given twice", key=True)
                continue
            parsed = self.mapping(options, child)
            if parsed is not None or options is None:
                result[emotion] = MappingProxyType(parsed or {})
        return result

    def check_fallbacks(self, voice_keys: Collection[str]) -> None:
        """Fallbacks must name other, exact, existing voices, must not loop, and a flattened
        chain must stay short (the router precomputes one per voice)."""
        exact = [k for k in voice_keys if not _is_pattern(k)]
        edges: dict[str, list[tuple[str, str]]] = {}
        for key, refs in self.fallback_refs.items():
            for path, target in refs:
                if target == key:
                    self.error(path, f"voice {key!r} cannot fall back to itself")
                elif target not in voice_keys:
                    self.error(path, f"unknown voice {target!r}{_suggest(target, exact)}")
                elif _is_pattern(target):
                    self.error(
                        path, f"{target!r} is a pattern; a fallback must name an exact voice"
                    )
                else:
                    edges.setdefault(key, []).append((path, target))
        order = list(voice_keys)
        if not self.check_cycles(edges, order):
            self.check_chain_lengths(edges, order)

    def check_cycles(self, edges: Mapping[str, list[tuple[str, str]]], order: list[str]) -> bool:
        """Report each fallback cycle once, written from its earliest voice in the file;
        whether there is one. A depth-first walk with its own stack: a chain of thousands of
        voices must not exhaust Python's."""
        rank = {key: i for i, key in enumerate(order)}
        reported: set[tuple[str, ...]] = set()
        position: dict[str, int] = {}  # the voices on the current path: their index in stack
        done: set[str] = set()
        stack: list[str] = []
        found = False
        for root in order:
            if root in done:
                continue
            position[root] = 0
            stack.append(root)
            walks = [iter(edges.get(root, ()))]
            while walks:
                for _, target in walks[-1]:
                    if target in position:
                        found = True
                        if len(self.problems) >= _MAX_PROBLEMS:
                            self.unlisted += 1  # not worth building a cycle nobody sees
                            continue
                        cycle = stack[position[target] :]
                        start = min(range(len(cycle)), key=lambda j: rank[cycle[j]])
                        cycle = cycle[start:] + cycle[:start]
                        if tuple(cycle) not in reported:
                            reported.add(tuple(cycle))
                            self.report_cycle(cycle, edges)
                    elif target not in done:
                        position[target] = len(stack)
                        stack.append(target)
                        walks.append(iter(edges.get(target, ())))
                        break
                else:
                    walks.pop()
                    key = stack.pop()
                    del position[key]
                    done.add(key)
        return found

    def report_cycle(self, cycle: list[str], edges: Mapping[str, list[tuple[str, str]]]) -> None:
        """One problem, at the fallback entry where the cycle leaves its earliest voice."""
        head, succ = cycle[0], cycle[1 % len(cycle)]
        path = next(p for p, target in edges[head] if target == succ)
        shown = cycle if len(cycle) <= 8 else [*cycle[:6], f"... ({len(cycle)} voices)", cycle[-1]]
        self.error(path, "fallback cycle: " + " -> ".join([*shown, head]))

    def check_chain_lengths(
        self, edges: Mapping[str, list[tuple[str, str]]], order: list[str]
    ) -> None:
        """A voice's chain (itself, its fallbacks, theirs, each voice once) has at most
        ``_MAX_CHAIN`` voices. Each walk stops once over the limit, so this costs at most
        ``_MAX_CHAIN`` steps per voice."""
        for key in order:
            seen = {key}
            todo = [key]
            while todo and len(seen) <= _MAX_CHAIN:
                for _, target in edges.get(todo.pop(), ()):
                    if target not in seen:
                        seen.add(target)
                        todo.append(target)
            if len(seen) > _MAX_CHAIN:
                path = _child(_child("voices", key), "fallback")
                self.error(
                    path,
                    f"the fallback chain of {key!r} (fallbacks of fallbacks included) "
                    f"has more than {_MAX_CHAIN} voices",
                )


def _present(value: _T | None) -> _T:
    # Only reached when no problem was recorded, and every None above comes with a problem.
    assert value is not None
    return value
