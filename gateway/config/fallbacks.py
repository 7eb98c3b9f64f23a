"""The fallback cross-checks, once every voice is known: each fallback names another, exact,
existing voice; no chain loops; a flattened chain stays short (the router precomputes one per
voice). Linear in the number of voices and fallbacks, without recursion: a chain of thousands of
voices must not exhaust Python's stack."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from .limits import MAX_CHAIN
from .messages import child, suggest
from .model import is_pattern
from .report import Report

#: Per voice, (path, target) of each fallback entry that names an exact, existing other voice.
_Edges = Mapping[str, list[tuple[str, str]]]


def check_fallbacks(
    report: Report, fallback_refs: Mapping[str, list[tuple[str, str]]], voice_keys: Collection[str]
) -> None:
    """Report every bad fallback reference, cycle and overlong chain. ``fallback_refs`` holds,
    per voice key, the (path, target) of each of its fallback entries; ``voice_keys`` every
    voice key in file order."""
    exact = [k for k in voice_keys if not is_pattern(k)]
    known = set(voice_keys)  # a lookup per fallback: a scan of a list would be quadratic
    edges: dict[str, list[tuple[str, str]]] = {}
    for key, refs in fallback_refs.items():
        for path, target in refs:
            if target == key:
                report.error(path, f"voice {key!r} cannot fall back to itself")
            elif target not in known:
                # A hint compares the name with every voice: only worth it for a listed problem.
                hint = "" if report.full else suggest(target, exact)
                report.error(path, f"unknown voice {target!r}{hint}")
            elif is_pattern(target):
                report.error(path, f"{target!r} is a pattern; a fallback must name an exact voice")
            else:
                edges.setdefault(key, []).append((path, target))
    order = list(voice_keys)
    if not _check_cycles(report, edges, order):
        _check_chain_lengths(report, edges, order)


def _check_cycles(report: Report, edges: _Edges, order: list[str]) -> bool:
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
                    if report.full:
                        report.unlisted += 1  # not worth building a cycle nobody sees
                        continue
                    cycle = stack[position[target] :]
                    start = min(range(len(cycle)), key=lambda j: rank[cycle[j]])
                    cycle = cycle[start:] + cycle[:start]
                    if tuple(cycle) not in reported:
                        reported.add(tuple(cycle))
                        _report_cycle(report, cycle, edges)
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


def _report_cycle(report: Report, cycle: list[str], edges: _Edges) -> None:
    """One problem, at the fallback entry where the cycle leaves its earliest voice."""
    head, succ = cycle[0], cycle[1 % len(cycle)]
    path = next(p for p, target in edges[head] if target == succ)
    shown = cycle if len(cycle) <= 8 else [*cycle[:6], f"... ({len(cycle)} voices)", cycle[-1]]
    report.error(path, "fallback cycle: " + " -> ".join([*shown, head]))


def _check_chain_lengths(report: Report, edges: _Edges, order: list[str]) -> None:
    """A voice's chain (itself, its fallbacks, theirs, each voice once) has at most
    :data:`MAX_CHAIN` voices. Each walk stops once over the limit, so this costs at most
    :data:`MAX_CHAIN` steps per voice."""
    for key in order:
        seen = {key}
        todo = [key]
        while todo and len(seen) <= MAX_CHAIN:
            for _, target in edges.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        if len(seen) > MAX_CHAIN:
            path = child(child("voices", key), "fallback")
            report.error(
                path,
                f"the fallback chain of {key!r} (fallbacks of fallbacks included) "
                f"has more than {MAX_CHAIN} voices",
            )
