"""ExtendData as the gateway reads it: every shape it comes in, salvaged within bounds, and
passed on to an upstream as JSON that encodes."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from gateway.request import parse_extend_data
from tests.support import Upstream, live_server, scripted_config, tone

CHUNK = tone(440, 0.02, 24000)
VENDOR_EXAMPLE = (
    "{'InstanceId':'68e00b6640e*****3e943332fee7','ChannelId':'123','SentenceId':'3',"
    'UserData\':\'{"aaaa":"bbbb"}\'}'
)


@pytest.mark.parametrize(
    ("extend", "expected"),
    [
        ('{"InstanceId": "i-1", "SentenceId": 3}', {"InstanceId": "i-1", "SentenceId": 3}),
        ({"InstanceId": "i-1", "SentenceId": "4"}, {"InstanceId": "i-1", "SentenceId": 4}),
        (json.dumps(json.dumps({"ChannelId": "c", "SentenceId": "5"})), {"SentenceId": 5}),
        (
            "{'InstanceId': 'i-2', 'Ok': True, 'Gone': None, 'Off': false, 'N': -7, 'F': 1.5}",
            {"InstanceId": "i-2", "Ok": True, "Gone": None, "Off": False, "N": -7, "F": 1.5},
        ),
        (
            VENDOR_EXAMPLE,
            {
                "InstanceId": "68e00b6640e*****3e943332fee7",
                "ChannelId": "123",
                "SentenceId": 3,
                "UserData": '{"aaaa":"bbbb"}',
            },
        ),
        (
            "{'UserData': {'tags': ['a', (1, 2)], 'deep': {'x': None}}, 'SentenceId': 6}",
            {"UserData": {"tags": ["a", [1, 2]], "deep": {"x": None}}, "SentenceId": 6},
        ),
        ("InstanceId: i-3, ChannelId: 'c 3'", {"InstanceId": "i-3", "ChannelId": "c 3"}),
        ("{'InstanceId': 'i-4', 'ChannelId': 'unterminated", {"InstanceId": "i-4"}),
        (
            r"{'Note': 'it\'s \"quoted\"\n', 'Name': '\u00e9\ud83d\ude00\x41'}",
            {"Note": 'it\'s "quoted"\n', "Name": "é😀A"},
        ),
        ("", {}),
        ("   ", {}),
        (None, {}),
        (42, {}),
        ("'a' * 30000", {}),
        ("}}}not even close{{{", {}),
    ],
)
def test_extend_data_is_read_in_every_shape_it_comes_in(extend: Any, expected: Any) -> None:
    parsed = parse_extend_data(extend)
    for key, value in expected.items():
        assert parsed[key] == value
    if not expected:
        assert parsed == {}


def test_a_salvaged_extend_data_keeps_only_json_values() -> None:
    parsed = parse_extend_data("{'a': " * 100 + "1")  # deeper than anything real
    depth = 0
    node: Any = parsed
    while isinstance(node, dict) and "a" in node:
        node, depth = node["a"], depth + 1
    assert 1 < depth < 100  # read to a bounded depth, the rest skipped
    assert json.loads(json.dumps(parsed)) == parsed


def test_a_long_extend_data_that_is_not_json_is_read_up_to_a_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    extend = "{'InstanceId': 'i-5', " + "'k': 'v', " * 20000 + "'Late': 1}"
    with caplog.at_level(logging.INFO, logger="gateway.request"):
        parsed = parse_extend_data(extend)
    assert parsed["InstanceId"] == "i-5"
    assert "Late" not in parsed
    assert any("read only its first part" in r.getMessage() for r in caplog.records)


def test_extend_data_strings_always_encode_as_utf8() -> None:
    """A lone surrogate escaped in the JSON would make the upstream's request body fail to
    encode (the custom provider forwards ExtendData)."""
    parsed = parse_extend_data('{"InstanceId": "i-\\ud800", "ChannelId": "\\ud83d\\ude00"}')
    assert parsed == {"InstanceId": "i-?", "ChannelId": "😀"}
    json.dumps(parsed, ensure_ascii=False).encode("utf-8")


async def test_extend_data_with_a_lone_surrogate_reaches_a_custom_upstream() -> None:
    """The custom provider forwards ExtendData; a lone surrogate in it once made encoding the
    upstream's request fail, a provider error on every voice of the chain."""
    async with Upstream(chunks=[CHUNK]) as upstream:
        yaml = scripted_config(
            {"up": {"provider": "u"}}, {"u": {"type": "custom", "url": upstream.url}}
        )
        async with live_server(create_app(parse_config(yaml))) as url, httpx.AsyncClient() as c:
            response = await c.post(
                url + "/stream-audio",
                content=b'{"Text": "Hi.", "SampleRate": 24000, "ExtendData": '
                b'"{\\"InstanceId\\": \\"i-\\\\ud800\\"}"}',
                headers={"Content-Type": "application/json"},
            )
    assert response.status_code == 200, response.text
    assert response.content == CHUNK
    assert json.loads(upstream.requests[0]["ExtendData"]) == {"InstanceId": "i-?"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Read once and kept as read: a plain JSON object.
        (
            '{"InstanceId": "i-1", "SentenceId": "7", "Rate": 1.5, "Tags": [1, null, true]}',
            {"InstanceId": "i-1", "SentenceId": 7, "Rate": 1.5, "Tags": [1, None, True]},
        ),
        # NaN and Infinity are not JSON: such an ExtendData is not read at all, as before.
        ('{"InstanceId": "i-1", "Rate": NaN}', {}),
        ('{"InstanceId": "i-1", "Rate": -Infinity}', {}),
        # The words inside a string are only words.
        ('{"InstanceId": "NaN-Infinity"}', {"InstanceId": "NaN-Infinity"}),
        # A lone surrogate as a character (not an escape) is made plain too.
        ('{"InstanceId": "i-\ud800"}', {"InstanceId": "i-?"}),
        ('{"InstanceId": "caf\\u00e9"}', {"InstanceId": "café"}),
    ],
)
def test_extend_data_that_is_json_reads_as_plain_json(text: str, expected: object) -> None:
    parsed = parse_extend_data(text)
    assert parsed == expected
    json.dumps(parsed, allow_nan=False).encode("utf-8")  # plain: what goes upstream encodes
