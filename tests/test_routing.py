"""VoiceId -> voice chain: exact keys, patterns in file order, the default voice, fallbacks."""

from __future__ import annotations

from textwrap import dedent

import pytest

from gateway.config import GatewayConfig, default_config, parse_config
from gateway.routing import ChainStep, Router
from tests.support import FakeProvider  # noqa: F401 - registers type: fake

ROUTES = """
server:
  default_voice: joe
  unknown_voice: {unknown_voice}
providers:
  local: {{type: fake, api_key: k}}
  cloud: {{type: fake, api_key: k, base_url: "http://cloud"}}
voices:
  joe: {{provider: local, fallback: [ann]}}
  ann: {{provider: cloud, voice: ann-neural}}
  "en-US-*": {{provider: cloud, fallback: [joe]}}
  "en-*": {{provider: local, voice: generic-en}}
  en-US-Special: {{provider: local}}
  a: {{provider: local, fallback: [b, c]}}
  b: {{provider: cloud, fallback: [d, c]}}
  c: {{provider: local, voice: c-voice, fallback: [d]}}
  d: {{provider: cloud}}
"""


def load(unknown_voice: str = "default") -> GatewayConfig:
    text = dedent(ROUTES).format(unknown_voice=unknown_voice)
    return parse_config(text, "routes.yaml", env={})


def steps(chain: list[ChainStep] | None) -> list[tuple[str, str, str]]:
    """(voice key, provider name, provider voice) of every route in a chain."""
    assert chain is not None
    return [(r.voice.key, r.provider.name, r.provider_voice) for r in chain]


@pytest.fixture
def router() -> Router:
    return Router(load())


def test_exact_key_wins_over_an_earlier_pattern(router: Router) -> None:
    assert steps(router.resolve("en-US-Special")) == [("en-US-Special", "local", "en-US-Special")]


def test_patterns_are_tried_in_file_order_and_send_the_voice_id(router: Router) -> None:
    assert steps(router.resolve("en-US-Foo")) == [
        ("en-US-*", "cloud", "en-US-Foo"),
        ("joe", "local", "joe"),
        ("ann", "cloud", "ann-neural"),
    ]
    # Only the second pattern matches, and it names its own provider voice.
    assert steps(router.resolve("en-GB-Bar")) == [("en-*", "local", "generic-en")]


def test_patterns_match_case_sensitively(router: Router) -> None:
    assert steps(router.resolve("EN-us-foo"))[0][0] == "joe"


def test_unknown_voice_gets_the_default_chain_named_by_its_key(router: Router) -> None:
    assert steps(router.resolve("nobody")) == [
        ("joe", "local", "joe"),
        ("ann", "cloud", "ann-neural"),
    ]


def test_unknown_voice_is_none_when_rejected() -> None:
    router = Router(load("reject"))
    assert router.resolve("nobody") is None
    assert steps(router.resolve("en-US-Foo"))[0] == ("en-US-*", "cloud", "en-US-Foo")


def test_empty_voice_id_always_goes_to_the_default_voice() -> None:
    assert steps(Router(load("reject")).resolve(""))[0] == ("joe", "local", "joe")
    assert steps(Router(load("default")).resolve(""))[0] == ("joe", "local", "joe")


def test_empty_voice_id_without_a_default_voice_is_none() -> None:
    text = dedent(ROUTES).format(unknown_voice="reject").replace("  default_voice: joe\n", "")
    router = Router(parse_config(text, env={}))
    assert router.resolve("") is None
    assert router.resolve("nobody") is None
    assert router.resolve("joe") is not None


def test_default_voice_with_its_own_provider_voice_sends_that() -> None:
    text = (
        dedent(ROUTES)
        .format(unknown_voice="default")
        .replace("default_voice: joe", "default_voice: c")
    )
    router = Router(parse_config(text, env={}))
    assert steps(router.resolve("nobody")) == [("c", "local", "c-voice"), ("d", "cloud", "d")]


def test_exact_voice_sends_its_provider_voice_or_its_key(router: Router) -> None:
    assert steps(router.resolve("ann")) == [("ann", "cloud", "ann-neural")]
    assert steps(router.resolve("d")) == [("d", "cloud", "d")]


def test_chain_is_flattened_transitively_without_duplicates(router: Router) -> None:
    # a -> [b, c]; b -> [d, c]; c -> [d]: each fallback brings its own chain right after it.
    assert steps(router.resolve("a")) == [
        ("a", "local", "a"),
        ("b", "cloud", "b"),
        ("d", "cloud", "d"),
        ("c", "local", "c-voice"),
    ]


def test_routes_carry_the_configured_objects(router: Router) -> None:
    config = router.config
    chain = router.resolve("ann")
    assert chain is not None
    assert chain[0].voice is config.voices["ann"]
    assert chain[0].provider is config.providers["cloud"]
    assert chain[0].provider.settings == {"api_key": "k", "base_url": "http://cloud"}


def test_each_resolve_returns_a_fresh_list(router: Router) -> None:
    first = router.resolve("a")
    assert first is not None
    first.clear()
    assert len(router.resolve("a") or []) == 4


def test_table_lists_every_voice_in_file_order(router: Router) -> None:
    table = router.table()
    assert [row["voice"] for row in table] == [
        "joe",
        "ann",
        "en-US-*",
        "en-*",
        "en-US-Special",
        "a",
        "b",
        "c",
        "d",
    ]
    rows = {row["voice"]: row for row in table}
    assert rows["joe"] == {
        "voice": "joe",
        "pattern": False,
        "provider": "local",
        "type": "fake",
        "provider_voice": None,
        "fallback": ["ann"],
        "hedge_after": None,
        "sticky_fallback": None,
        "cache": False,
        "default": True,
    }
    assert rows["en-US-*"] == {
        "voice": "en-US-*",
        "pattern": True,
        "provider": "cloud",
        "type": "fake",
        "provider_voice": None,
        "fallback": ["joe", "ann"],
        "hedge_after": None,
        "sticky_fallback": None,
        "cache": False,
        "default": False,
    }
    assert rows["a"]["fallback"] == ["b", "d", "c"]
    assert rows["c"]["provider_voice"] == "c-voice"
    assert [row["voice"] for row in table if row["default"]] == ["joe"]


def test_built_in_default_routes_everything_to_joe() -> None:
    router = Router(default_config())
    assert steps(router.resolve("anything")) == [("joe", "local", "joe")]
    assert router.table() == [
        {
            "voice": "joe",
            "pattern": False,
            "provider": "local",
            "type": "piper",
            "provider_voice": None,
            "fallback": [],
            "hedge_after": None,
            "sticky_fallback": None,
            "cache": False,
            "default": True,
        }
    ]
