"""The routing-file loader on mistakes: each one reported at its path and line, all of them
in one error, and the plugins' own checks and warnings."""

from __future__ import annotations

import sys
from collections.abc import Mapping

import pytest

from gateway.config import ConfigError, parse_config
from providers.base import Provider
from tests.config_support import MINIMAL, only_problem, problems, yml
from tests.support import FakeProvider  # also registers type: fake


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
