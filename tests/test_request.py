"""The request's fields as the gateway reads them, one section per field."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.errors import BadRequest, PayloadTooLarge
from gateway.request import (
    LOG_VALUE_CHARS,
    MAX_FORM_FIELDS,
    MAX_VOICE_ID_CHARS,
    TTSRequest,
    loggable,
    parse_body,
    printable_excerpt,
    request_token,
    validate,
)
from tests.support import (
    Plan,
    ScriptedProvider,
    live_server,
    provider_block,
    scripted_config,
    tone,
)

CHUNK = tone(440, 0.02, 24000)
BODY: dict[str, Any] = {"Text": "Hello.", "SampleRate": 24000}


def app() -> Any:
    """One exact voice and a pattern that matches anything starting with a letter, so that a
    hostile VoiceId would be routed (and its provider called) if validation let it through."""
    yaml = scripted_config(
        voices={"joe": {"provider": "p"}, "[a-zA-Z]*": {"provider": "p"}},
        providers={"p": provider_block()},
    )
    return create_app(parse_config(yaml))


@pytest.fixture
def plan() -> Plan:
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans["p"] = Plan([[CHUNK]])
    return ScriptedProvider.plans["p"]


@pytest.fixture
def client(plan: Plan) -> Iterator[TestClient]:
    with TestClient(app()) as c:
        yield c


def read(**fields: Any) -> TTSRequest:
    return validate(dict(BODY, **fields), max_text_chars=2000)


# ------------------------------------------------------------------------------ VoiceId

BAD_VOICE_IDS = [
    "a\x01",
    "a\r\nX-Injected: 1",
    "ab\ncd",
    "a\x7f",
    "a\x85b",
    "a\x9bb",
    "a\u2028b",
    "a\u2029b",
    "a\u202eb",  # right-to-left override
    "a\u200bb",  # zero-width space
    "a\tb",
    "a" * (MAX_VOICE_ID_CHARS + 1),
]


@pytest.mark.parametrize("voice_id", BAD_VOICE_IDS)
def test_a_voice_id_that_cannot_be_a_voice_name_is_a_400_before_routing(
    client: TestClient, plan: Plan, voice_id: str
) -> None:
    response = client.post("/stream-audio", json=dict(BODY, VoiceId=voice_id))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["field"], error["code"]) == ("VoiceId", "invalid_field")
    assert plan.jobs == []  # no provider was called


def test_a_lone_surrogate_voice_id_is_a_400(client: TestClient, plan: Plan) -> None:
    raw = b'{"Text": "Hi.", "SampleRate": 24000, "VoiceId": "a\\ud800"}'
    response = client.post(
        "/stream-audio", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "VoiceId"
    assert plan.jobs == []


async def test_a_voice_id_with_a_line_break_gets_a_json_400_over_a_real_socket(
    plan: Plan,
) -> None:
    """Over uvicorn, such a VoiceId once reached the X-Voice header after the provider had
    been called, and the caller got an empty reply."""
    async with live_server(app()) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/stream-audio", json=dict(BODY, VoiceId="ann\r\nX-Evil: 1"))
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "VoiceId"
    assert plan.jobs == []


@pytest.mark.parametrize(
    ("voice_id", "routed_as"),
    [
        ("zh-CN-XiaoxiaoNeural", "zh-CN-XiaoxiaoNeural"),
        ("Chinese (Mandarin)_Warm_Bestie", "Chinese (Mandarin)_Warm_Bestie"),
        ("voice@v2:en/US.1", "voice@v2:en/US.1"),
        ("  joe \n", "joe"),
        ("a" * MAX_VOICE_ID_CHARS, "a" * MAX_VOICE_ID_CHARS),
    ],
)
def test_real_voice_names_are_accepted(
    client: TestClient, plan: Plan, voice_id: str, routed_as: str
) -> None:
    response = client.post("/stream-audio", json=dict(BODY, VoiceId=voice_id))
    assert response.status_code == 200, response.text
    assert plan.jobs[0].voice == routed_as


@pytest.mark.parametrize(
    ("voice_id", "read_as"), [("晓晓", "晓晓"), ("ja-JP-七海", "ja-JP-七海"), (7, "7"), (None, "")]
)
def test_voice_names_in_any_script_and_numbers_are_read(voice_id: Any, read_as: str) -> None:
    assert read(VoiceId=voice_id).voice_id == read_as


# ------------------------------------------------------------------------------ Text


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("Hello\x00 world.", "Hello world."),
        ("Line one.\nLine two.\r\n\tEnd.", "Line one. Line two. End."),
        ("a\x1b[31mred\x1b[0m", "a[31mred[0m"),
        ("Next\x85line\u2028and\u2029more", "Next line and more"),
        ("C1\x9b and DEL\x7f gone", "C1 and DEL gone"),
        ("👩\u200d💻 codes, caf\u0065\u0301.", "👩\u200d💻 codes, caf\u0065\u0301."),
    ],
)
def test_text_loses_what_cannot_be_spoken(
    client: TestClient, plan: Plan, text: str, spoken: str
) -> None:
    response = client.post("/stream-audio", json=dict(BODY, Text=text))
    assert response.status_code == 200, response.text
    assert plan.jobs[0].text == spoken


@pytest.mark.parametrize("text", ["\x00", "\x00\x01\x02", "\x00 ?!", "\x7f\x9f.", "\u200d\u200d"])
def test_text_with_nothing_speakable_left_is_a_400(
    client: TestClient, plan: Plan, text: str
) -> None:
    response = client.post("/stream-audio", json=dict(BODY, Text=text))
    assert response.status_code == 400
    assert (response.json()["error"]["code"], response.json()["error"]["field"]) == (
        "empty_text",
        "Text",
    )
    assert plan.jobs == []


def test_the_text_limit_counts_what_was_sent() -> None:
    with pytest.raises(PayloadTooLarge):
        validate(dict(BODY, Text="Hi." + "\x00" * 10), max_text_chars=12)
    # A run of line breaks is kept as one: text shaping reads Markdown's lines.
    assert validate(dict(BODY, Text="Hi." + "\r\n" * 4 + "\n"), max_text_chars=12).text == "Hi.\n"


# ------------------------------------------------------------------------------ Token


@pytest.mark.parametrize(
    ("data", "bearer", "expected"),
    [
        ({"Token": "body"}, "header", "body"),  # the interface's own field wins
        ({"Token": ""}, "header", "header"),  # an empty body token is no token
        ({"Token": "  \t"}, "header", "header"),
        ({"Token": None}, "header", "header"),
        ({}, "header", "header"),
        ({"token": "lower"}, "header", "lower"),
        ({"Token": 123}, "header", "123"),  # non-string body tokens read as before
        ({"Token": ""}, None, None),
        ({"Token": ""}, "   ", None),
        ({}, None, None),
        ({"Token": " spaced "}, None, " spaced "),  # a body token is never altered
    ],
)
def test_request_token_picks_the_body_token_unless_it_is_empty(
    data: dict[str, Any], bearer: str | None, expected: str | None
) -> None:
    assert request_token(data, bearer) == expected


def test_validate_reads_an_empty_body_token_as_none() -> None:
    assert read(Token="").token is None
    assert read(Token="t").token == "t"


# ------------------------------------------------------------------------------ log values


def test_log_fields_are_capped_and_say_how_much_was_cut() -> None:
    request = read(ExtendData={"InstanceId": "i" * 60000, "ChannelId": "c-1", "SentenceId": 9})
    fields = request.log_fields()
    assert fields["ChannelId"] == "c-1" and fields["SentenceId"] == 9
    assert fields["InstanceId"] == "i" * LOG_VALUE_CHARS + f"...(+{60000 - LOG_VALUE_CHARS} chars)"


@pytest.mark.parametrize(
    "value",
    ["i-1\nINFO forged", "\x1b[31mred", "a\rb", "a\u2028b", "\u202eevil", "nul\x00"],
)
def test_log_fields_hold_no_control_or_invisible_character(value: str) -> None:
    shown = read(ExtendData={"InstanceId": value}).log_fields()["InstanceId"]
    assert isinstance(shown, str) and shown.isprintable()
    assert "\\" in shown  # the character is shown as its escape, not dropped silently


def test_loggable_keeps_small_values_and_flattens_containers() -> None:
    assert loggable(None) is None and loggable(True) is True and loggable(3) == 3
    assert loggable(1.5) == 1.5
    assert loggable(10**200) == printable_excerpt(str(10**200))
    assert loggable({"a": ["\n"]}) == '{"a": ["\\n"]}'
    assert printable_excerpt("abc", 2) == "ab...(+1 chars)"
    assert printable_excerpt("a\ud800\U000e0001") == "a\\ud800\\U000e0001"


def test_a_huge_caller_value_makes_a_short_log_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    extend = {"InstanceId": "x" * 30000, "ChannelId": "y\n" * 10000}
    with caplog.at_level(logging.INFO, logger="gateway"):
        response = client.post("/stream-audio", json=dict(BODY, ExtendData=extend))
    assert response.status_code == 200
    line = next(r.getMessage() for r in caplog.records if "status=200" in r.getMessage())
    assert len(line) < 1000
    assert "(+29872 chars)" in line


def test_an_invalid_sample_rate_is_not_echoed_whole() -> None:
    with pytest.raises(BadRequest) as raised:
        read(SampleRate="9" * 60000)
    assert len(raised.value.message) < 200


# ------------------------------------------------------------------------------ form bodies

FORM = "application/x-www-form-urlencoded"


def test_a_form_is_read_like_parse_qsl_reads_it() -> None:
    raw = "Text=你好+world%21&SampleRate=24000&VoiceId=&Flag&&Text2=%E4%BD%A0%ZZ".encode()
    assert parse_body(raw, FORM) == {
        "Text": "你好 world!",
        "SampleRate": "24000",
        "VoiceId": "",
        "Flag": "",
        "Text2": "你%ZZ",
    }


def test_a_form_that_is_not_utf8_is_a_400() -> None:
    with pytest.raises(BadRequest, match="not UTF-8"):
        parse_body(b"Text=\xff", FORM)


def test_a_form_with_too_many_fields_is_a_400() -> None:
    parse_body(b"a=1" + b"&a=1" * (MAX_FORM_FIELDS - 1), FORM)
    with pytest.raises(BadRequest, match="fields"):
        parse_body(b"a=1" + b"&a=1" * MAX_FORM_FIELDS, FORM)
