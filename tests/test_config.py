"""The routing-file loader on valid files: every value, type and default, env expansion,
names, YAML merges, the built-in default, reading a file, and how a problem is written."""

from __future__ import annotations

from pathlib import Path

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
from providers.base import ProviderConfig, RetryPolicy, Timeouts
from tests.config_support import MINIMAL, only_problem, yml

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
    # An HTTP provider with no max_concurrency takes the gateway's own stream limit.
    assert (spare.timeout, spare.retry) == (Timeouts(), RetryPolicy())
    assert spare.max_concurrency == config.server.max_concurrent_streams == 50

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


def test_tokens_may_be_named_for_the_tenant_their_requests_are_counted_under() -> None:
    tokens = '[{name: acme, token: "a-1"}, "b-2", {name: globex, token: "${G:-}"}, "${P:-}"]'
    text = MINIMAL.replace("default_voice: joe", f"default_voice: joe\n  tokens: {tokens}")
    server = parse_config(yml(text), env={"G": "g-3"}).server
    # An entry whose token is empty (an unset variable) is no token, named or not.
    assert server.tokens == ("a-1", "b-2", "g-3")
    assert server.token_names == ("acme", None, "globex")


@pytest.mark.parametrize(
    ("tokens", "problem"),
    [
        (
            "[{name: acme, token: a}, {name: acme, token: b}]",
            ("server.tokens[1].name", "name 'acme' is given twice"),
        ),
        (
            '["a", {name: token-1, token: b}]',
            (
                "server.tokens[1].name",
                "name 'token-1' is what the unnamed token in place 1 is counted under; name "
                "that token, or choose another name",
            ),
        ),
        ("[{token: a}]", ("server.tokens[0]", "missing required key 'name'")),
        ("[{name: acme, token: a, tenant: x}]", ("server.tokens[0].tenant", "unknown key")),
    ],
    ids=["twice", "an-unnamed-tokens-name", "no-name", "unknown-key"],
)
def test_token_names_that_would_merge_or_lose_counts_are_refused(
    tokens: str, problem: tuple[str, str]
) -> None:
    text = MINIMAL.replace("default_voice: joe", f"default_voice: joe\n  tokens: {tokens}")
    _line, path, message = only_problem(text)
    assert (path, message[: len(problem[1])]) == problem


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
        "local": ProviderConfig(name="local", type="piper", max_concurrency=2, queue=5.0)
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
