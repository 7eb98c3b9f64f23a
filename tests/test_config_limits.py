"""The routing-file loader on hostile and oversized files: aliases, nesting, long keys and
paths, env expansion cost, the problem count, control characters in names, fallback chains,
the file's size and kind."""

from __future__ import annotations

import difflib
import os
import threading
import time
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config
from gateway.config.fallbacks import check_fallbacks
from gateway.config.report import Report
from tests.config_support import MINIMAL, problems, yml

# ---------------------------------------------------------------- hostile and oversized files
#
# A routing file may be crafted. Each limit below is a problem like any other: listed, with its
# line where there is one; never a traceback, a hang or gigabytes of memory. The sizes are just
# over each limit, so that the code before the limits existed still finished (wrongly) on them.

HEAD = "server: {default_voice: joe}\nproviders: {p: {type: fake, api_key: k}}\n"
VALID = HEAD + "voices: {joe: {provider: p}}\n"


def laughs(levels: int, width: int) -> str:
    """A "billion laughs": each level a list of ``width`` aliases of the one before, so
    ``levels`` short lines name ``width ** levels`` values."""
    lines = [VALID + "laughs:", f"  l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def merge_laughs(levels: int) -> str:
    """The same through merge keys: each level merges the one before twice. The result stays
    one small mapping, but building it naively takes ``2 ** levels`` steps."""
    lines = [VALID + "laughs:", "  m0: &m0 {a: 1}"]
    for i in range(1, levels):
        lines.append(f"  m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}")
    return "\n".join(lines) + "\n"


EXPANDS = "the file expands to more than 100000 values (through YAML aliases)"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (laughs(4, 20), 8),  # 160 000 values from 4 lines
        (laughs(2, 400), 6),
        (laughs(18, 2), 19),  # 2 ** 18
        (merge_laughs(18), 20),
    ],
    ids=["4x20", "2x400", "18x2", "merges"],
)
def test_alias_expansion_is_bounded(text: str, line: int) -> None:
    # Reported at the level whose copies pass the limit.
    assert problems(text) == [(line, "", EXPANDS)]


def test_a_file_of_too_many_values_is_refused_while_composing() -> None:
    text = VALID + "big: [" + ",".join(["0"] * 100_001) + "]\n"
    assert problems(text) == [(4, "", "the file has more than 100000 values")]


def test_an_alias_may_still_be_used_within_the_budget() -> None:
    text = VALID.replace("{provider: p}", "&v {provider: p}") + "  ann: *v\n"
    text = text.replace(
        "voices: {joe: &v {provider: p}}\n  ann: *v", "voices:\n  joe: &v {provider: p}\n  ann: *v"
    )
    assert list(parse_config(text, env={}).voices) == ["joe", "ann"]


def nested(style: str, depth: int) -> str:
    if style == "flow sequence":
        body = "[" * depth + "]" * depth
        return VALID + f"deep: {body}\n"
    if style == "flow mapping":
        return VALID + "deep: " + "{a: " * depth + "1" + "}" * depth + "\n"
    if style == "block mapping":
        return VALID + "deep:\n" + "".join(" " * i + "k:\n" for i in range(1, depth + 1))
    if style == "block sequence":
        return VALID + "deep:\n" + "".join(" " * i + "-\n" for i in range(1, depth + 1))
    assert style == "compact sequence"
    return VALID + "deep:\n" + "- " * depth + "x\n"


@pytest.mark.parametrize(
    ("style", "depth"),
    [
        ("flow sequence", 10_000),
        ("flow mapping", 10_000),
        ("block mapping", 400),
        ("block sequence", 400),
        ("compact sequence", 10_000),
    ],
)
def test_nesting_depth_is_bounded(style: str, depth: int) -> None:
    [(line, path, message)] = problems(nested(style, depth))
    assert (path, message) == ("", "the file nests deeper than 64 levels")
    assert line is not None and line >= 4


def test_moderate_nesting_in_options_still_loads() -> None:
    options = "{a: " * 40 + "1" + "}" * 40
    text = HEAD + f"voices: {{joe: {{provider: p, options: {options}}}}}\n"
    assert "a" in parse_config(text, env={}).voices["joe"].options


def test_overlong_keys_and_key_paths_are_refused() -> None:
    long_key = "k" * 300
    text = HEAD + f"voices:\n  joe: {{provider: p}}\n  {long_key}: {{provider: p}}\n"
    assert problems(text) == [
        (5, 'voices["' + "k" * 40 + '..."]', "key longer than 256 characters")
    ]
    key = "k" * 250
    text = VALID + f"x:\n  {key}:\n    {key}:\n      {key}: 1\n"
    found = problems(text)
    assert (7, "nested too deeply (key path too long)") in [(p[0], p[2]) for p in found]


def test_env_references_expand_in_linear_time() -> None:
    # "${" never closed, 50 000 times: a regex with [^}]* rescans the rest at each of them
    # (quadratic: about 20 s here); one pass takes milliseconds.
    text = MINIMAL.replace("api_key: k", 'api_key: "' + "${" * 50_000 + '"')
    started = time.perf_counter()
    found = problems(text)
    assert time.perf_counter() - started < 2.0
    assert len(found) == 101
    assert found[0] == (
        6,
        "providers.p.api_key",
        "malformed reference '${'; use ${NAME} or ${NAME:-default}",
    )
    assert found[-1] == (None, "", "... and 49900 more problems (fix these first)")


def test_env_expansion_keeps_its_meaning() -> None:
    text = MINIMAL.replace("api_key: k", 'api_key: "a${X}b${Y:-{y}}c$$d$e${Z:-}f${"')
    assert problems(text, env={"X": "x"}) == [
        (6, "providers.p.api_key", "malformed reference '${'; use ${NAME} or ${NAME:-default}")
    ]
    text = MINIMAL.replace("api_key: k", 'api_key: "a${X}b${Y:-{y}}c$$d$e${Z:-}f"')
    config = parse_config(yml(text), env={"X": "x"})
    assert config.providers["p"].settings["api_key"] == "axb{y}c$d$ef"


def test_at_most_a_hundred_problems_are_listed() -> None:
    text = VALID + "".join(f"extra{i}: 1\n" for i in range(300))
    found = problems(text)
    assert len(found) == 101
    assert found[-1] == (None, "", "... and 200 more problems (fix these first)")


# ---------------------------------------------------------------- control characters in names


@pytest.mark.parametrize(
    ("fragment", "path", "char"),
    [
        (
            'voices: {joe: {provider: p}, "bad\\x01voice": {provider: p}}',
            'voices["bad\\x01voice"]',
            "\x01",
        ),
        (
            'voices: {joe: {provider: p}, "bad\\r\\nX-Evil: 1": {provider: p}}',
            'voices["bad\\r\\nX-Evil: 1"]',
            "\r",
        ),
        ('voices: {joe: {provider: p, voice: "Kore\\n"}}', "voices.joe.voice", "\n"),
        (
            'voices: {joe: {provider: p, fallback: "ann\\x7f"}, ann: {provider: p}}',
            "voices.joe.fallback",
            "\x7f",
        ),
        (
            'voices: {joe: {provider: p, options: {"sp\\x1beed": 1}}}',
            'voices.joe.options["sp\\x1beed"]',
            "\x1b",
        ),
        ('voices: {joe: {provider: p}}\nx-line: "\\u2028"', None, None),
    ],
    ids=["voice-key", "crlf-key", "provider-voice", "fallback", "option-key", "not-a-name"],
)
def test_names_with_control_characters_are_refused(
    fragment: str, path: str | None, char: str | None
) -> None:
    found = problems(HEAD + fragment + "\n")
    if path is None:  # a control character elsewhere is not refused for being one
        assert [p for p in found if "control" in p[2]] == []
        return
    assert (path, f"must not contain control characters or line breaks (found {char!r})") in [
        (p[1], p[2]) for p in found
    ]
    for _, where, message in found:  # every problem prints on one line
        assert f"{where}: {message}".isprintable()


def test_server_strings_and_provider_names_with_control_characters_are_refused() -> None:
    text = (
        'server: {default_voice: joe, content_type: "audio/pcm\\r\\nX-Evil: 1"}\n'
        'providers: {p: {type: fake, api_key: k}, "q\\nr": {type: fake, api_key: k}}\n'
        "voices: {joe: {provider: p}}\n"
    )
    assert [(p[1], p[2][:40]) for p in problems(text)] == [
        ("server.content_type", "must not contain control characters or l"),
        ('providers["q\\nr"]', "must not contain control characters or l"),
    ]


def test_a_secret_with_a_trailing_newline_is_refused_without_being_shown() -> None:
    text = MINIMAL.replace("api_key: k", "api_key: ${KEY}")
    found = problems(text, env={"KEY": "sk-very-secret\n"})
    assert found == [
        (
            6,
            "providers.p.api_key",
            "must not contain control characters or line breaks (found '\\n')",
        )
    ]
    assert "sk-very-secret" not in str(found)


def test_option_values_may_hold_line_breaks() -> None:
    text = MINIMAL.replace(
        "provider: p", 'provider: p\n    options: {instructions: "Calm.\\nSlow."}'
    )
    assert parse_config(yml(text), env={}).voices["joe"].options["instructions"] == "Calm.\nSlow."


# ---------------------------------------------------------------- fallback chains


def chain(length: int, *, loop: bool = False) -> str:
    voices = "".join(f"  v{i}: {{provider: p, fallback: v{i + 1}}}\n" for i in range(length - 1))
    last = f"  v{length - 1}: {{provider: p{', fallback: v0' if loop else ''}}}\n"
    return (
        "server: {default_voice: v0}\nproviders: {p: {type: fake, api_key: k}}\nvoices:\n"
        + voices
        + last
    )


def test_a_fallback_chain_of_sixteen_voices_loads() -> None:
    config = parse_config(chain(16), env={})
    assert len(config.voices) == 16


def test_a_longer_fallback_chain_is_refused() -> None:
    assert problems(chain(17)) == [
        (
            4,
            "voices.v0.fallback",
            "the fallback chain of 'v0' (fallbacks of fallbacks included) has more than 16 voices",
        )
    ]


def test_a_chain_of_thousands_of_voices_is_checked_without_recursion() -> None:
    found = problems(chain(5000))
    assert found[0][1] == "voices.v0.fallback" and "more than 16 voices" in found[0][2]
    assert found[-1] == (None, "", "... and 4884 more problems (fix these first)")
    [(line, path, message)] = problems(chain(5000, loop=True))
    assert (line, path) == (4, "voices.v0.fallback")
    assert (
        message
        == "fallback cycle: v0 -> v1 -> v2 -> v3 -> v4 -> v5 -> ... (5000 voices) -> v4999 -> v0"
    )


def test_fallback_targets_are_looked_up_in_constant_time() -> None:
    """20 000 voices that each fall back to the last: a scan of every voice per fallback took
    seconds (4 * 10 ** 8 comparisons), a lookup in a set takes milliseconds."""
    keys = [f"v{i}" for i in range(20_000)]
    refs = {key: [(f"voices.{key}.fallback", keys[-1])] for key in keys[:-1]}
    report = Report("gateway.yaml")
    start = time.perf_counter()
    check_fallbacks(report, refs, keys)
    elapsed = time.perf_counter() - start
    assert report.problems == []
    assert elapsed < 1.0, f"{elapsed:.2f} s"


def test_a_voice_has_at_most_fifteen_fallbacks() -> None:
    others = "".join(f"  f{i}: {{provider: p}}\n" for i in range(16))
    names = ", ".join(f"f{i}" for i in range(16))
    text = HEAD + f"voices:\n  joe: {{provider: p, fallback: [{names}]}}\n" + others
    assert problems(text) == [(4, "voices.joe.fallback", "at most 15 fallbacks, got 16")]


def test_an_unknown_provider_among_thousands_lists_only_a_few() -> None:
    providers = ", ".join(f"p{i}: {{type: fake, api_key: k}}" for i in range(2000))
    text = (
        f"server: {{default_voice: joe}}\nproviders: {{{providers}}}\n"
        "voices: {joe: {provider: nope}}\n"
    )
    assert problems(text) == [
        (
            3,
            "voices.joe.provider",
            "unknown provider 'nope'; providers: p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, "
            "... (2000 in all)",
        )
    ]


@pytest.mark.parametrize("field", ["fallback", "provider"])
def test_did_you_mean_hints_are_sought_only_for_listed_problems(
    monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """A hint compares a name with every voice or provider (up to a thousand, milliseconds
    each): sought for each of thousands of problems past the hundred listed, it took minutes."""
    calls = 0
    close_matches = difflib.get_close_matches

    def counted(word: str, choices: list[str], n: int, cutoff: float) -> list[str]:
        nonlocal calls
        calls += 1
        return close_matches(word, choices, n, cutoff)

    monkeypatch.setattr(difflib, "get_close_matches", counted)
    entry = "{provider: prov, fallback: [v%dx]}" if field == "fallback" else "{provider: prov%d}"
    voices = ", ".join(f"v{i}: {entry % i}" for i in range(300))
    text = "server: {unknown_voice: reject}\nproviders: {prov: {type: fake, api_key: k}}\n"
    found = problems(text + f"voices: {{{voices}}}\n")
    assert len(found) == 101
    assert found[-1] == (None, "", "... and 200 more problems (fix these first)")
    assert "(did you mean " in found[0][2]
    assert calls == 100


# ---------------------------------------------------------------- reading the file


def test_a_file_over_one_mebibyte_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(VALID + "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert [str(p) for p in caught.value.problems] == [f"{path}: the file is larger than 1 MiB"]


def test_a_file_of_exactly_one_mebibyte_loads(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    padding = (1 << 20) - len(VALID) - 1
    path.write_text(VALID + "#" + "x" * (padding - 1) + "\n")
    assert path.stat().st_size == 1 << 20
    assert list(load_config(path, env={}).voices) == ["joe"]


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_only_a_regular_file_is_read(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "gateway.yaml"
    if kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)  # no writer: opening it for reading the plain way blocks for ever
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            load_config(path)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():
        with open(path, "wb"):  # let the blocked reader go before failing
            pass
        worker.join(10)
        pytest.fail("load_config blocked on a FIFO")
    [error] = outcome
    assert isinstance(error, ConfigError)
    expected = "a directory" if kind == "directory" else "a FIFO"
    assert [p.message for p in error.problems] == [
        f"cannot read file: not a regular file ({expected})"
    ]
