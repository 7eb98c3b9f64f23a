"""The routing-file loader: a full valid file, and each mistake reported at its path and line."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from textwrap import dedent

import pytest

from gateway.config import (
    ConfigError,
    ConfigProblem,
    GatewayConfig,
    ServerConfig,
    VoiceConfig,
    default_config,
    load_config,
    parse_config,
)
from providers.base import (
    Provider,
    ProviderConfig,
    RetryPolicy,
    Timeouts,
)
from tests.support import FakeProvider  # also registers type: fake


def yml(text: str) -> str:
    """Dedent so that the first line of the literal is line 1 of the file."""
    return dedent(text).lstrip("\n")


def problems(text: str, env: Mapping[str, str] | None = None) -> list[tuple[int | None, str, str]]:
    """(line, path, message) of every problem ``text`` has; fails if it loads."""
    with pytest.raises(ConfigError) as caught:
        parse_config(yml(text), "gateway.yaml", env or {})
    assert all(p.source == "gateway.yaml" for p in caught.value.problems)
    return [(p.line, p.path, p.message) for p in caught.value.problems]


def only_problem(text: str, env: Mapping[str, str] | None = None) -> tuple[int | None, str, str]:
    found = problems(text, env)
    assert len(found) == 1, found
    return found[0]


# A minimal valid file; the error tests below each break one thing in a copy of it.
MINIMAL = """
server:
  default_voice: joe
providers:
  p:
    type: fake
    api_key: k
voices:
  joe:
    provider: p
"""

FULL = """
server:
  path: /tts
  content_type: audio/L16
  tokens: ["${TOKEN}", "${SPARE:-}", "literal-$$-token"]
  max_text_chars: "${MAX_CHARS:-1500}"
  max_body_bytes: 4096
  max_concurrent_streams: 50
  unknown_voice: reject
  default_voice: joe
  host: 127.0.0.1
  port: "${PORT}"
  ssl_certfile: /etc/cert.pem
  ssl_keyfile: /etc/key.pem
  log_level: DEBUG
  drain_seconds: "2.5"
providers:
  cloud:
    type: fake
    api_key: ${API_KEY}
    base_url: "${BASE:-https://api.example.com}/v1"
    max_concurrency: 4
    timeout: {connect: 1, first_byte: 2.5}
    retry: {attempts: 2, backoff: 0.5, max_backoff: 4}
    options: {model: tts-1, speed: 1.0}
  spare:
    type: fake
    api_key: other
voices:
  joe:
    provider: cloud
    voice: alloy
    options: {speed: 1.1}
    emotions:
      Happy: {instructions: "Speak brightly."}
      sad: {}
    fallback: [ann, bob]
  ann:
    provider: spare
    fallback: bob
  bob:
    provider: spare
  "en-US-*":
    provider: cloud
"""


def test_full_file_loads_with_values_types_and_env_expansion() -> None:
    env = {"TOKEN": "secret", "PORT": "9443", "API_KEY": "sk-123", "SPARE": ""}
    config = parse_config(yml(FULL), "gateway.yaml", env)

    assert config.source == "gateway.yaml"
    assert config.server == ServerConfig(
        path="/tts",
        content_type="audio/L16",
        tokens=("secret", "literal-$-token"),
        max_text_chars=1500,
        max_body_bytes=4096,
        max_concurrent_streams=50,
        unknown_voice="reject",
        default_voice="joe",
        host="127.0.0.1",
        port=9443,
        ssl_certfile="/etc/cert.pem",
        ssl_keyfile="/etc/key.pem",
        log_level="debug",
        drain_seconds=2.5,
    )
    assert isinstance(config.server.port, int)
    assert isinstance(config.server.drain_seconds, float)

    cloud = config.providers["cloud"]
    assert cloud == ProviderConfig(
        name="cloud",
        type="fake",
        settings={"api_key": "sk-123", "base_url": "https://api.example.com/v1"},
        options={"model": "tts-1", "speed": 1.0},
        timeout=Timeouts(connect=1.0, first_byte=2.5, total=60.0),
        retry=RetryPolicy(attempts=2, backoff=0.5, max_backoff=4.0),
        max_concurrency=4,
    )
    spare = config.providers["spare"]
    assert spare.settings == {"api_key": "other"}
    assert spare.options == {}
    assert (spare.timeout, spare.retry, spare.max_concurrency) == (Timeouts(), RetryPolicy(), 16)

    assert list(config.voices) == ["joe", "ann", "bob", "en-US-*"]
    joe = config.voices["joe"]
    assert joe == VoiceConfig(
        key="joe",
        provider="cloud",
        voice="alloy",
        options={"speed": 1.1},
        emotions={"happy": {"instructions": "Speak brightly."}, "sad": {}},
        fallback=("ann", "bob"),
        line=29,
    )
    assert config.voices["ann"].fallback == ("bob",)
    assert config.voices["bob"].voice is None
    assert config.voices["en-US-*"].is_pattern
    assert not joe.is_pattern


def test_config_mappings_are_read_only() -> None:
    config = parse_config(yml(MINIMAL), env={})
    with pytest.raises(TypeError):
        config.voices["x"] = config.voices["joe"]  # type: ignore[index]
    with pytest.raises(TypeError):
        config.providers["p"].settings["api_key"] = "y"  # type: ignore[index]


def test_minimal_file_gets_the_documented_defaults() -> None:
    config = parse_config(yml(MINIMAL), env={})
    assert config.server == ServerConfig(default_voice="joe")
    assert config.server.tokens == ()
    assert config.server.port == 8080
    assert config.server.unknown_voice == "default"
    assert config.source == "<string>"


def test_env_defaults_cover_unset_and_empty_and_dollars_escape() -> None:
    text = MINIMAL.replace("api_key: k", 'api_key: "$${A:-x}-${B:-dflt}-${C:-}-$5"')
    config = parse_config(yml(text), env={"B": ""})
    assert config.providers["p"].settings["api_key"] == "${A:-x}-dflt--$5"


def test_env_is_expanded_in_values_but_not_in_keys() -> None:
    text = MINIMAL.replace("provider: p", 'provider: p\n    options: {"${K}": "${V}"}')
    config = parse_config(yml(text), env={"K": "key", "V": "value"})
    assert config.voices["joe"].options == {"${K}": "value"}


def test_a_single_token_string_is_accepted() -> None:
    text = MINIMAL.replace("default_voice: joe", "default_voice: joe\n  tokens: abc")
    assert parse_config(yml(text), env={}).server.tokens == ("abc",)


def test_names_are_taken_as_written_even_when_yaml_reads_a_number() -> None:
    text = """
    server:
      default_voice: 1001
      tokens: [0123, yes]
    providers:
      p: {type: fake, api_key: k}
    voices:
      1001: {provider: p, voice: 0x1F, fallback: 2002}
      2002: {provider: p, voice: no}
    """
    config = parse_config(yml(text), env={})
    assert config.server.default_voice == "1001"
    assert config.server.tokens == ("0123", "yes")
    assert list(config.voices) == ["1001", "2002"]
    assert config.voices["1001"].voice == "0x1F"
    assert config.voices["1001"].fallback == ("2002",)
    assert config.voices["2002"].voice == "no"


def test_yaml_merge_keys_are_understood_without_duplicate_errors() -> None:
    text = """
    server: {default_voice: a}
    providers:
      p: {type: fake, api_key: k}
    voices:
      a: &base
        provider: p
        options: {speed: 1.2}
      b:
        <<: *base
        voice: other
        options: {speed: 0.9}
    """
    config = parse_config(yml(text), env={})
    assert config.voices["b"].provider == "p"
    assert config.voices["b"].options == {"speed": 0.9}
    assert config.voices["b"].voice == "other"


def test_default_config_is_the_bundled_piper_voice() -> None:
    config = default_config()
    assert isinstance(config, GatewayConfig)
    assert config.source == "<built-in default>"
    assert dict(config.providers) == {
        "local": ProviderConfig(name="local", type="piper", max_concurrency=2)
    }
    assert list(config.voices) == ["joe"]
    assert config.voices["joe"].provider == "local"
    assert config.voices["joe"].fallback == ()
    assert config.server.default_voice == "joe"
    assert config.server.unknown_voice == "default"
    assert config.server.tokens == ()
    assert config.server.port == 8080


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yml(MINIMAL), encoding="utf-8")
    config = load_config(path, env={})
    assert config.source == str(path)
    assert config.voices["joe"].provider == "p"


def test_load_config_on_a_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.source == str(path)
    assert problem.line is None
    assert "cannot read file" in problem.message
    assert str(caught.value).startswith(f"{path}: cannot read file")


def test_problem_text_format() -> None:
    problem = ConfigProblem("gateway.yaml", "voices.alloy.fallback[0]", "unknown voice 'jo'", 12)
    assert str(problem) == "gateway.yaml:12: voices.alloy.fallback[0]: unknown voice 'jo'"
    assert (
        str(ConfigProblem("g.yaml", "", "the file is empty", None)) == "g.yaml: the file is empty"
    )
    error = ConfigError([problem, ConfigProblem("g.yaml", "x", "bad", None)])
    assert str(error).splitlines() == [str(problem), "g.yaml: x: bad"]


# ------------------------------------------------------------------------------ mistakes


def test_unknown_top_level_key() -> None:
    assert only_problem(MINIMAL + "extra: 1\n") == (
        10,
        "extra",
        "unknown key 'extra' (allowed: providers, server, voices)",
    )


def test_unknown_key_gets_a_did_you_mean_hint() -> None:
    text = MINIMAL.replace("default_voice: joe", "default_voice: joe\n  tokns: [a]")
    assert only_problem(text) == (3, "server.tokns", "unknown key 'tokns' (did you mean 'tokens'?)")


def test_unknown_provider_setting_is_checked_against_the_plugin_keys() -> None:
    text = MINIMAL.replace("api_key: k", "api_key: k\n    base_ulr: http://x")
    assert only_problem(text) == (
        7,
        "providers.p.base_ulr",
        "unknown key 'base_ulr' (did you mean 'base_url'?)",
    )


def test_duplicate_key_is_reported_at_the_second_occurrence() -> None:
    text = MINIMAL + "  joe:\n    provider: p\n"
    assert only_problem(text) == (10, "voices.joe", "duplicate key 'joe' (first at line 8)")


def test_wrong_types_are_reported_with_what_was_found() -> None:
    text = """
    server:
      default_voice: joe
      port: eighty
      max_body_bytes: 100
    providers:
      p:
        type: fake
        api_key: k
        max_concurrency: [1]
        options: fast
    voices:
      joe:
        provider: p
        voice: [a]
    """
    assert problems(text) == [
        (3, "server.port", "expected an integer from 0 to 65535, got a string ('eighty')"),
        (4, "server.max_body_bytes", "must be an integer from 1024 to 1048576, got 100"),
        (9, "providers.p.max_concurrency", "expected an integer >= 1, got a list"),
        (10, "providers.p.options", "expected a mapping, got a string ('fast')"),
        (14, "voices.joe.voice", "expected a string, got a list"),
    ]


def test_missing_provider_type() -> None:
    text = MINIMAL.replace("    type: fake\n", "")
    assert only_problem(text) == (4, "providers.p", "missing required key 'type'")


def test_a_required_key_left_empty_counts_as_missing() -> None:
    text = MINIMAL.replace("type: fake", "type:").replace("provider: p", "provider:")
    assert problems(text) == [
        (4, "providers.p", "missing required key 'type'"),
        (8, "voices.joe", "missing required key 'provider'"),
    ]


def test_missing_required_plugin_setting() -> None:
    text = MINIMAL.replace("api_key: k", "base_url: http://x")
    assert only_problem(text) == (4, "providers.p", "missing required key 'api_key'")


def test_plugin_settings_check_is_reported_at_the_key() -> None:
    text = MINIMAL.replace("api_key: k", "api_key: k\n    base_url: ftp://x")
    assert only_problem(text) == (7, "providers.p.base_url", "must be an http(s) URL")


def test_missing_voice_provider() -> None:
    text = MINIMAL.replace("    provider: p\n", "    voice: x\n")
    assert only_problem(text) == (8, "voices.joe", "missing required key 'provider'")


def test_unknown_provider_type_lists_the_known_types() -> None:
    line, path, message = only_problem(MINIMAL.replace("type: fake", "type: fkae"))
    assert (line, path) == (5, "providers.p.type")
    assert message.startswith("unknown provider type 'fkae' (did you mean 'fake'?); known types: ")
    known = message.split("known types: ")[1].split(", ")
    assert {"fake", "piper", "custom"} <= set(known)


def test_voice_naming_an_unknown_provider() -> None:
    text = MINIMAL.replace("provider: p", "provider: q")
    assert only_problem(text) == (9, "voices.joe.provider", "unknown provider 'q'; providers: p")


FALLBACKS = """
server: {default_voice: joe}
providers:
  p: {type: fake, api_key: k}
voices:
  joe: {provider: p}
  "en-*": {provider: p}
"""


def test_fallback_to_an_unknown_voice() -> None:
    text = FALLBACKS + "  ann:\n    provider: p\n    fallback: [joe, jo]\n"
    assert only_problem(text) == (
        9,
        "voices.ann.fallback[1]",
        "unknown voice 'jo' (did you mean 'joe'?)",
    )


def test_fallback_to_a_pattern() -> None:
    text = FALLBACKS + "  ann: {provider: p, fallback: en-*}\n"
    assert only_problem(text) == (
        7,
        "voices.ann.fallback",
        "'en-*' is a pattern; a fallback must name an exact voice",
    )


def test_fallback_to_itself() -> None:
    text = FALLBACKS + "  ann: {provider: p, fallback: [joe, ann]}\n"
    assert only_problem(text) == (
        7,
        "voices.ann.fallback[1]",
        "voice 'ann' cannot fall back to itself",
    )


def test_three_voice_cycle_is_named_once() -> None:
    text = FALLBACKS + (
        "  a: {provider: p, fallback: [joe, b]}\n"
        "  b: {provider: p, fallback: c}\n"
        "  c: {provider: p, fallback: [a]}\n"
    )
    assert only_problem(text) == (7, "voices.a.fallback[1]", "fallback cycle: a -> b -> c -> a")


def test_default_voice_missing() -> None:
    text = MINIMAL.replace("  default_voice: joe\n", "  port: 80\n")
    assert only_problem(text) == (
        1,
        "server.default_voice",
        "required when unknown_voice is 'default' "
        "(name an exact voice, or set unknown_voice: reject)",
    )


def test_default_voice_is_optional_when_unknown_voices_are_rejected() -> None:
    text = MINIMAL.replace("default_voice: joe", "unknown_voice: reject")
    config = parse_config(yml(text), env={})
    assert config.server.default_voice is None
    assert config.server.unknown_voice == "reject"


def test_default_voice_unknown() -> None:
    text = MINIMAL.replace("default_voice: joe", "default_voice: jeo")
    assert only_problem(text) == (
        2,
        "server.default_voice",
        "unknown voice 'jeo' (did you mean 'joe'?)",
    )


def test_default_voice_must_not_be_a_pattern() -> None:
    text = FALLBACKS.replace("default_voice: joe", "default_voice: en-*")
    assert only_problem(text) == (
        1,
        "server.default_voice",
        "must name an exact voice, not the pattern 'en-*'",
    )


def test_missing_env_var_is_named_with_its_path() -> None:
    text = MINIMAL.replace("api_key: k", "api_key: ${OPENAI_API_KEY}")
    assert only_problem(text, env={"OTHER": "x"}) == (
        6,
        "providers.p.api_key",
        "environment variable 'OPENAI_API_KEY' is not set (and has no default)",
    )


def test_numeric_field_rejects_a_non_numeric_expansion() -> None:
    text = MINIMAL.replace("default_voice: joe", "default_voice: joe\n  port: ${PORT}")
    assert only_problem(text, env={"PORT": "http"}) == (
        3,
        "server.port",
        "expected an integer from 0 to 65535, got a string ('http')",
    )


def test_ssl_certfile_without_keyfile() -> None:
    text = MINIMAL.replace("default_voice: joe", "default_voice: joe\n  ssl_certfile: /c.pem")
    assert only_problem(text) == (
        3,
        "server.ssl_certfile",
        "ssl_certfile needs ssl_keyfile too (give both or neither)",
    )


def test_timeout_and_retry_consistency() -> None:
    text = MINIMAL.replace(
        "api_key: k",
        "api_key: k\n    timeout: {first_byte: 90}\n    retry: {backoff: 1, max_backoff: 0.5}",
    )
    assert problems(text) == [
        (7, "providers.p.timeout.first_byte", "first_byte (90) must not exceed total (60)"),
        (8, "providers.p.retry.max_backoff", "max_backoff (0.5) must be at least backoff (1)"),
    ]


def test_unknown_emotion_and_case_duplicates() -> None:
    text = MINIMAL + "    emotions:\n      HAPPY: {a: 1}\n      happy: {a: 2}\n      joyful: {}\n"
    assert problems(text) == [
        (12, "voices.joe.emotions.happy", "emotion 'happy' is given twice"),
        (
            13,
            "voices.joe.emotions.joyful",
            "unknown emotion 'joyful'; the interface defines neutral, happy, sad",
        ),
    ]


def test_bad_yaml_syntax_is_one_problem_with_its_line() -> None:
    text = MINIMAL.replace("default_voice: joe", "default_voice: joe\n\tport: 80")
    line, path, message = only_problem(text)
    assert (line, path) == (3, "")
    assert message.startswith("invalid YAML: ")
    assert "'\\t'" in message


def test_unclosed_bracket_names_where_it_was_opened() -> None:
    text = MINIMAL.replace("    provider: p", "    provider: [p")
    assert only_problem(text) == (
        10,
        "",
        "invalid YAML: while parsing a flow sequence (line 9), "
        "expected ',' or ']', but got '<stream end>'",
    )


def test_empty_file() -> None:
    assert only_problem("") == (None, "", "the file is empty")


def test_several_errors_are_all_reported_in_line_order() -> None:
    text = """
    server:
      default_voice: nobody
      log_level: loud
    providers:
      p: {type: fake}
    voices:
      joe: {provider: p, fallback: [ghost]}
      ann: {provider: nowhere}
    """
    assert problems(text, env={}) == [
        (2, "server.default_voice", "unknown voice 'nobody'"),
        (
            3,
            "server.log_level",
            "must be one of 'debug', 'info', 'warning', 'error', got 'loud'",
        ),
        (5, "providers.p", "missing required key 'api_key'"),
        (7, "voices.joe.fallback[0]", "unknown voice 'ghost'"),
        (8, "voices.ann.provider", "unknown provider 'nowhere'; providers: p"),
    ]


def test_only_plugins_named_in_the_file_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.config.plugin_checks as plugin_checks

    loaded: list[str] = []

    def recording_provider_class(type_name: str) -> type[Provider]:
        loaded.append(type_name)
        return FakeProvider

    monkeypatch.setattr(plugin_checks, "provider_class", recording_provider_class)
    parse_config(yml(MINIMAL), env={})
    assert loaded == ["fake"]


def test_a_plugin_that_cannot_be_imported_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.config.plugin_checks as plugin_checks

    def broken_provider_class(type_name: str) -> type[Provider]:
        raise ImportError("No module named 'piper'")

    monkeypatch.setattr(plugin_checks, "provider_class", broken_provider_class)
    assert only_problem(MINIMAL.replace("type: fake", "type: piper")) == (
        5,
        "providers.p.type",
        "provider type 'piper' cannot be loaded: ImportError: No module named 'piper'",
    )


def test_nested_mistakes_are_reported_at_their_own_paths() -> None:
    text = MINIMAL.replace(
        "api_key: k",
        "api_key: k\n    timeout:\n      total: 0\n      conect: 1\n"
        "    options:\n      model: a\n      model: b",
    )
    assert problems(text) == [
        (8, "providers.p.timeout.total", "must be a number > 0, got 0"),
        (9, "providers.p.timeout.conect", "unknown key 'conect' (did you mean 'connect'?)"),
        (12, "providers.p.options.model", "duplicate key 'model' (first at line 11)"),
    ]


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


# ---------------------------------------------------------------- environment warnings


POLLY = """
server: {default_voice: Joanna}
providers:
  aws: {type: polly, region: eu-west-1, access_key_id: AKID, secret_access_key: SECRET}
voices: {Joanna: {provider: aws}}
"""


def test_polly_without_botocore_loads_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "botocore.credentials", None)  # as if not installed
    config = parse_config(yml(POLLY), "gateway.yaml", env={})
    assert [str(w) for w in config.warnings] == [
        "gateway.yaml:3: providers.aws: type polly needs botocore: pip install 'tts-gateway[polly]'"
    ]


def test_polly_with_botocore_has_no_warning() -> None:
    assert parse_config(yml(POLLY), env={}).warnings == ()


def test_warnings_travel_with_an_invalid_file_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "botocore.credentials", None)
    with pytest.raises(ConfigError) as caught:
        parse_config(yml(POLLY) + "extra: 1\n", "gateway.yaml", env={})
    assert [p.path for p in caught.value.problems] == ["extra"]
    assert [w.path for w in caught.value.warnings] == ["providers.aws"]


def test_a_failing_environment_check_is_a_warning_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(settings: Mapping[str, object]) -> list[tuple[str, str]]:
        raise RuntimeError("plugin bug")

    monkeypatch.setattr(FakeProvider, "check_environment", broken)
    config = parse_config(yml(MINIMAL), env={})
    assert [w.message for w in config.warnings] == [
        "environment check failed: RuntimeError: plugin bug"
    ]


def test_max_body_bytes_is_bounded() -> None:
    yaml = (
        "providers: {p: {type: fake, api_key: k}}\nvoices: {v: {provider: p}}\n"
        "server: {default_voice: v, max_body_bytes: 1099511627776}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml)
    assert "server.max_body_bytes" in str(caught.value)
    assert "1048576" in str(caught.value)
    assert parse_config(yaml.replace("1099511627776", "1048576")).server.max_body_bytes == 1048576
