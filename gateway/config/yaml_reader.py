"""The routing file's YAML, read into plain values that remember the line of every key path.

The file is composed into YAML nodes rather than loaded with ``yaml.safe_load`` because the
reader needs the nodes: they carry the line of every key and value, and they reveal duplicate
keys, which PyYAML's constructor silently collapses to the last one. Environment references are
expanded in every string value as it is read.

Reading is bounded (:mod:`.limits`): nesting depth, the number of values in the file and again
once its aliases are expanded (a "billion laughs" file is a few hundred bytes), the length of
keys and key paths. A bound reached ends the reading with that one problem.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from .env import expand
from .limits import MAX_DEPTH, MAX_NAME, MAX_PATH, MAX_VALUES
from .messages import CONTROL, child, control_message, item
from .model import ConfigError, ConfigProblem
from .report import INVALID, Report

_TIMESTAMP_TAG: Final = "tag:yaml.org,2002:timestamp"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_MAP_TAG: Final = "tag:yaml.org,2002:map"


@dataclass(frozen=True, slots=True)
class Document:
    """A routing file read into plain values."""

    root: Any
    """The file's top-level value: mappings, lists and scalars, with :data:`INVALID` where a
    value produced a problem."""
    raw: Mapping[str, str]
    """The text as written of every scalar that YAML turned into a non-string (1234, yes, 0123),
    by key path, for fields that are names: there the text, not the number, is what was meant."""


def read_document(text: str, report: Report, env: Mapping[str, str]) -> Document:
    """The plain values of ``text``, their lines recorded in ``report`` and ``${VAR}`` expanded
    from ``env``. Raises :class:`ConfigError` when the text is not YAML, is empty, or reaches a
    bound; problems of single values are recorded in ``report`` instead."""
    try:
        root_node = _compose(text, report.source)
        if root_node is None:
            raise ConfigError([ConfigProblem(report.source, "", "the file is empty", None)])
        builder = _ValueBuilder(report, env)
        root = builder.build(root_node, "")
    except _TooLarge as exc:
        # Nothing after a limit is worth reporting: it would be about a file cut short.
        raise ConfigError([ConfigProblem(report.source, "", exc.message, exc.line)]) from None
    # Problems about the file as a whole have no better line than none at all.
    report.value_lines.pop("", None)
    return Document(root, builder.raw)


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
            if self._nodes > MAX_VALUES:
                raise _TooLarge(f"the file has more than {MAX_VALUES} values", line)
        if self._depth >= MAX_DEPTH:
            raise _TooLarge(f"the file nests deeper than {MAX_DEPTH} levels", line)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose(text: str, source: str) -> Node | None:
    """The root node of ``text``; invalid YAML is a :class:`ConfigError` naming its line."""
    try:
        loader = _BoundedLoader(text)  # reading starts here: a bad character fails at once
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except ReaderError as exc:
        where = text.count("\n", 0, exc.position) + 1
        message = f"invalid YAML: unacceptable character #x{exc.character:04x} ({exc.reason})"
        raise ConfigError([ConfigProblem(source, "", message, where)]) from None
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
        raise ConfigError([ConfigProblem(source, "", message, line)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(source, "", f"invalid YAML: {exc}")]) from None


class _ValueBuilder:
    """Turns nodes into plain values, remembering the line of every path in the report."""

    def __init__(self, report: Report, env: Mapping[str, str]) -> None:
        self.report = report
        self.env = env
        self.raw: dict[str, str] = {}
        self.built = 0  # values built, aliases expanded: bounded by MAX_VALUES
        self._seen: set[int] = set()  # the nodes built at least once
        self._copying = 0  # > 0 while building an alias's copy of a node built before
        self._origin = 0  # the line of the last node built for the first time outside a copy
        self._scalars = SafeConstructor()
        self._building: set[int] = set()

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
        if self.built > MAX_VALUES:
            raise _TooLarge(
                f"the file expands to more than {MAX_VALUES} values (through YAML aliases)",
                self._origin,
            )
        if len(path) > MAX_PATH:
            self.report.error(
                path[:MAX_PATH] + "...", "nested too deeply (key path too long)", line=line
            )
            return INVALID
        self.report.value_lines.setdefault(path, line)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        # An alias may point back at a node that contains it; following it would never end.
        if id(node) in self._building:
            self.report.error(path, "recursive YAML alias")
            return INVALID
        self._building.add(id(node))
        self._copying += again
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ_TAG:
                    self.report.error(path, f"unsupported YAML tag {node.tag!r}")
                    return INVALID
                return [self.build(value, item(path, i)) for i, value in enumerate(node.value)]
            if isinstance(node, MappingNode):
                if node.tag != _MAP_TAG:
                    self.report.error(path, f"unsupported YAML tag {node.tag!r}")
                    return INVALID
                return self._mapping(node, path)
        finally:
            self._building.discard(id(node))
            self._copying -= again
        self.report.error(path, "unsupported YAML node")
        return INVALID

    def _scalar(self, node: ScalarNode, path: str) -> Any:
        if node.tag == _TIMESTAMP_TAG:
            # Nothing in this file is a date; "2024-08-06" is far more likely a model version.
            return node.value
        try:
            value = self._scalars.construct_object(node)
        except ConstructorError as exc:
            self.report.error(path, f"invalid YAML value: {exc.problem}")
            return INVALID
        except (ValueError, TypeError) as exc:  # e.g. "!!int abc"
            self.report.error(path, f"invalid YAML value: {exc}")
            return INVALID
        if isinstance(value, str):
            return expand(value, path, self.env, self.report)
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
                self.report.error(path, "mapping keys must be plain strings", line=key_line)
                continue
            # Keys are names (VoiceIds, provider names), so their text is taken as written:
            # "1234" stays a string and "yes" does not turn into True.
            key = str(key_node.value)
            if len(key) > MAX_NAME:
                shown = child(path, key[:40] + "...")
                self.report.error(shown, f"key longer than {MAX_NAME} characters", line=key_line)
                continue
            key_path = child(path, key)
            if CONTROL.search(key):
                self.report.error(key_path, control_message(key), line=key_line)
                continue
            if key in first_line:
                self.report.error(
                    key_path,
                    f"duplicate key {key!r} (first at line {first_line[key]})",
                    line=key_line,
                )
                continue
            first_line[key] = key_line
            self.report.key_lines[key_path] = key_line
            result[key] = self.build(value_node, key_path)
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
            self.report.error(path, "a '<<' merge needs a mapping or a list of mappings", key=True)
