"""How long one request's parsing holds the event loop on hostile input.

    python -m bench.hostile_parse                 # 8, 16, 32 and 64 KiB of each shape
    python -m bench.hostile_parse --sizes 1024    # also at a 1 MiB body limit

Every step that sees caller text before routing is timed on its own (the tolerant ExtendData
reader, body decoding, field validation) with inputs built to make a backtracking or quadratic
parser pay. Each figure is the best of a few runs, in milliseconds; a shape whose time grows
past ``--give-up`` seconds is not run at larger sizes (the figure it reached is shown).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from typing import Any

from gateway.request import parse_body, parse_extend_data, validate


def _mixed(size: int) -> str:
    rng = random.Random(7)
    return "".join(rng.choice("{}[]():,'\"\\ a1") for _ in range(size))


def _repeat(unit: str) -> Callable[[int], str]:
    return lambda size: (unit * (size // len(unit) + 1))[:size]


#: Shapes of ExtendData strings, by name: each builds a string of the given length.
EXTEND_SHAPES: dict[str, Callable[[int], str]] = {
    "letters": _repeat("a"),
    "single quotes": _repeat("'"),
    "double quotes": _repeat('"'),
    "colons": _repeat(":"),
    "commas": _repeat(","),
    "backslashes": _repeat("\\"),
    "open braces": _repeat("{"),
    "open brackets": _repeat("["),
    "close braces": _repeat("}"),
    "key colon": _repeat("a:"),
    "quoted key colon": _repeat("'a':"),
    "stray-quote keys": _repeat("a'"),
    "stray quote, spaces": lambda n: "a'" + " " * (n - 2),
    "word then spaces": lambda n: "a" * (n // 2) + " " * (n - n // 2),
    "escaped quotes, unterminated": lambda n: '{"a":"' + _repeat('\\"')(n - 6),
    "unterminated value": lambda n: "{'a': '" + "x" * (n - 7),
    "pairs": _repeat("'k':'v',"),
    "nested pairs": _repeat("{'k':"),
    "python literal": lambda n: "{" + _repeat("'k': True, ")(n - 2) + "}",
    "json object": lambda n: json.dumps({f"k{i}": "v" for i in range(n // 12)}),
    "json twice": lambda n: json.dumps(json.dumps({f"k{i}": "v" for i in range(n // 14)})),
    "mixed": _mixed,
}


def _body(**fields: Any) -> dict[str, Any]:
    return {"Text": "Hello.", "SampleRate": 24000, **fields}


def _validating(body: dict[str, Any]) -> Callable[[], object]:
    return lambda: _try(validate, body, max_text_chars=10**7)


def _decoding(body: bytes, content_type: str) -> Callable[[], object]:
    return lambda: _try(parse_body, body, content_type)


def _reading(extend: str) -> Callable[[], object]:
    return lambda: parse_extend_data(extend)


def _extend_step(build: Callable[[int], str]) -> Callable[[int], Callable[[], object]]:
    return lambda size: _reading(build(size))


def _many_keys(size: int) -> dict[str, Any]:
    return {f"k{i}": 0 for i in range(size // 10)}


#: Other steps: each builds its input for a size and returns the call to time.
OTHER_STEPS: dict[str, Callable[[int], Callable[[], object]]] = {
    "validate: Text of control characters": lambda n: _validating(
        _body(Text="\x01" * (n - 1) + "a")
    ),
    "validate: Text of line breaks between letters": lambda n: _validating(
        _body(Text=_repeat("a\n")(n))
    ),
    "validate: Text of punctuation": lambda n: _validating(_body(Text="!" * n)),
    "validate: VoiceId of letters": lambda n: _validating(_body(VoiceId="a" * n)),
    "validate: many keys, names lower-cased": lambda n: _validating(
        {"text": "Hi.", "samplerate": 24000, **_many_keys(n)}
    ),
    "parse_body: form of empty fields": lambda n: _decoding(
        _repeat("a&")(n).encode(), "application/x-www-form-urlencoded"
    ),
    "parse_body: form, raw UTF-8 between escapes": lambda n: _decoding(
        ("Text=" + _repeat("\u00e9%41")(n // 2)).encode(), "application/x-www-form-urlencoded"
    ),
    "parse_body: json of many keys": lambda n: _decoding(
        json.dumps(_many_keys(n)).encode(), "application/json"
    ),
}


#: Every step, by name: each builds its hostile input for a size in bytes and returns the call.
STEPS: dict[str, Callable[[int], Callable[[], object]]] = {
    **{f"ExtendData: {name}": _extend_step(build) for name, build in EXTEND_SHAPES.items()},
    **OTHER_STEPS,
}


def _try(function: Callable[..., object], *args: Any, **kwargs: Any) -> object:
    try:
        return function(*args, **kwargs)
    except Exception as error:  # a 4xx answer is a fine outcome here
        return error


def best_ms(call: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[], help="more sizes in KiB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--give-up", type=float, default=2.0, help="seconds")
    args = parser.parse_args()
    sizes = [8, 16, 32, 64, *args.sizes]
    print(f"{'step':48}" + "".join(f"{s:>10} KiB" for s in sizes))
    for name, step in STEPS.items():
        cells: list[str] = []
        for size in sizes:
            if cells and cells[-1].startswith(">"):
                cells.append("-")
                continue
            call = step(size * 1024)
            first = best_ms(call, 1)
            if first > args.give_up * 1000:
                cells.append(f">{first:.0f}")
                continue
            cells.append(f"{min(first, best_ms(call, args.repeats)):.2f}")
        print(f"{name:48}" + "".join(f"{c:>14}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
