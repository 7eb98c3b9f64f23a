"""The HTTP surface: every row of the contract's error table, body types, tokens, the
ExtendData quirks, and that a rejected request never reaches a provider."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from tests.support import Plan, ScriptedProvider, provider_block, scripted_config, tone

CHUNK = tone(440, 0.02, 24000)
TOKEN = "s3cret-token"


def make_client(**server: Any) -> TestClient:
    yaml = scripted_config(
        voices={"joe": {"provider": "p"}, "en-*": {"provider": "p"}},
        providers={"p": provider_block()},
        **server,
    )
    return TestClient(create_app(parse_config(yaml)))


@pytest.fixture
def plan() -> Plan:
    ScriptedProvider.plans.clear()
    ScriptedProvider.plans["p"] = Plan([[CHUNK, CHUNK]])
    return ScriptedProvider.plans["p"]


@pytest.fixture
def client(plan: Plan) -> Iterator[TestClient]:
    with make_client(tokens=[TOKEN, "other-token"], max_text_chars=50) as c:
        yield c


def body(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Text": "Hello.",
        "VoiceId": "joe",
        "SampleRate": 24000,
        "Token": TOKEN,
        "ExtendData": '{"InstanceId":"i-1","ChannelId":"c-1","SentenceId":3}',
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def assert_error(response: Any, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    if field is not None:
        assert error["field"] == field
        assert field in error["message"] or field == "Content-Type"


def test_valid_json_request_streams_pcm(client: TestClient, plan: Plan) -> None:
    response = client.post("/stream-audio", json=body())
    assert response.status_code == 200
    assert response.content == CHUNK * 2
    assert response.headers["content-type"] == "audio/pcm"
    assert response.headers["x-sample-rate"] == "24000"
    assert response.headers["x-channels"] == "1"
    assert len(response.headers["x-request-id"]) >= 16
    assert plan.jobs[0].text == "Hello." and plan.jobs[0].voice == "joe"


def test_caller_request_id_is_echoed(client: TestClient) -> None:
    response = client.post("/stream-audio", json=body(), headers={"X-Request-Id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


def test_urlencoded_form_body(client: TestClient, plan: Plan) -> None:
    form = {k: str(v) for k, v in body().items()}
    response = client.post("/stream-audio", data=form)
    assert response.status_code == 200
    assert response.content == CHUNK * 2
    assert plan.jobs[0].sample_rate == 24000


def test_multipart_form_body(client: TestClient, plan: Plan) -> None:
    fields = {k: (None, str(v)) for k, v in body(SampleRate=16000).items()}
    response = client.post("/stream-audio", files=fields)
    assert response.status_code == 200
    assert response.headers["x-sample-rate"] == "16000"
    assert len(plan.jobs) == 1


def test_json_without_content_type_is_sniffed(client: TestClient) -> None:
    response = client.post(
        "/stream-audio", content=json.dumps(body()), headers={"Content-Type": ""}
    )
    assert response.status_code == 200


def test_json_labelled_as_a_form_is_read_as_json(client: TestClient, plan: Plan) -> None:
    """What `curl -d '{...}'` sends: a JSON body with the form content type."""
    response = client.post(
        "/stream-audio",
        content=json.dumps(body(SampleRate=8000)),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert plan.jobs[0].sample_rate == 8000


def test_sample_rate_as_string_is_accepted(client: TestClient, plan: Plan) -> None:
    response = client.post("/stream-audio", json=body(SampleRate="16000"))
    assert response.status_code == 200
    assert plan.jobs[0].sample_rate == 16000


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        (body(Text=None), "missing_field", "Text"),
        (body(Text=""), "empty_text", "Text"),
        (body(Text="   \n"), "empty_text", "Text"),
        (body(Text=42), "invalid_field", "Text"),
        (body(SampleRate=None), "missing_field", "SampleRate"),
        (body(SampleRate=44100), "invalid_sample_rate", "SampleRate"),
        (body(SampleRate="fast"), "invalid_sample_rate", "SampleRate"),
        (body(SampleRate=True), "invalid_sample_rate", "SampleRate"),
        (body(VoiceId=["joe"]), "invalid_field", "VoiceId"),
    ],
)
def test_invalid_fields_answer_400_naming_the_field(
    client: TestClient, plan: Plan, payload: dict[str, Any], code: str, field: str
) -> None:
    assert_error(client.post("/stream-audio", json=payload), 400, code, field)
    assert plan.jobs == []


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_malformed_json_answers_400(client: TestClient, plan: Plan, raw: bytes) -> None:
    response = client.post(
        "/stream-audio", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "malformed_body")
    assert plan.jobs == []


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x", TOKEN[:-1]])
def test_wrong_or_missing_token_answers_401(client: TestClient, plan: Plan, token: Any) -> None:
    assert_error(client.post("/stream-audio", json=body(Token=token)), 401, "unauthorized", "Token")
    assert plan.jobs == []


def test_any_configured_token_is_accepted(client: TestClient) -> None:
    assert client.post("/stream-audio", json=body(Token="other-token")).status_code == 200


def test_bearer_header_works_when_the_body_has_no_token(client: TestClient) -> None:
    response = client.post(
        "/stream-audio", json=body(Token=None), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 200


def test_no_tokens_configured_accepts_everyone(plan: Plan) -> None:
    with make_client() as c:
        assert c.post("/stream-audio", json=body(Token=None)).status_code == 200


def test_unknown_voice_with_reject_answers_404(plan: Plan) -> None:
    with make_client(unknown_voice="reject") as c:
        assert_error(c.post("/stream-audio", json=body(VoiceId="zz")), 404, "unknown_voice")
        assert c.post("/stream-audio", json=body(VoiceId="en-GB")).status_code == 200
        matched = c.post("/stream-audio", json=body(VoiceId="en-AU"))
        assert matched.headers["x-voice"] == "en-AU"  # not the pattern "en-*"
    assert len(plan.jobs) == 2
    assert plan.jobs[0].voice == "en-GB"  # matched by pattern: the VoiceId is the voice name


def test_unknown_voice_with_default_uses_the_default(client: TestClient, plan: Plan) -> None:
    response = client.post("/stream-audio", json=body(VoiceId="nobody"))
    assert response.status_code == 200
    assert response.headers["x-voice"] == "joe"


def test_text_over_the_limit_answers_413(client: TestClient, plan: Plan) -> None:
    assert_error(client.post("/stream-audio", json=body(Text="x" * 51)), 413, "too_large", "Text")
    assert plan.jobs == []


def test_body_over_the_limit_answers_413(plan: Plan) -> None:
    with make_client(max_body_bytes=2048) as c:
        response = c.post("/stream-audio", json=body(Text="y" * 3000))
        assert_error(response, 413, "too_large")
    assert plan.jobs == []


@pytest.mark.parametrize("ctype", ["text/plain", "application/xml", "audio/wav"])
def test_other_body_types_answer_415(client: TestClient, plan: Plan, ctype: str) -> None:
    response = client.post(
        "/stream-audio", content=json.dumps(body()), headers={"Content-Type": ctype}
    )
    assert_error(response, 415, "unsupported_media_type", "Content-Type")
    assert plan.jobs == []


def test_not_ready_answers_503(plan: Plan) -> None:
    client = make_client()  # not entered: the lifespan has not run, so nothing is started
    assert_error(client.post("/stream-audio", json=body()), 503, "not_ready")
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    assert plan.jobs == []


def test_unknown_routes_and_methods_answer_json(client: TestClient) -> None:
    assert_error(client.get("/stream-audio"), 405, "method_not_allowed")
    assert_error(client.post("/no-such-path", json=body()), 404, "not_found")


def test_empty_body_says_so(client: TestClient) -> None:
    response = client.post(
        "/stream-audio", content=b"", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "malformed_body")
    assert "empty" in response.json()["error"]["message"]


def test_readyz_after_start(client: TestClient) -> None:
    assert client.get("/readyz").json() == {"status": "ready"}


def test_voices_needs_a_bearer_token(client: TestClient) -> None:
    assert client.get("/voices").status_code == 401
    response = client.get("/voices", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    table = response.json()
    assert table["default_voice"] == "joe"
    assert [v["voice"] for v in table["voices"]] == ["joe", "en-*"]
    assert table["voices"][0]["provider"] == "p"


def test_metrics_count_requests(client: TestClient) -> None:
    client.post("/stream-audio", json=body())
    client.post("/stream-audio", json=body(Token="bad"))
    text = client.get("/metrics").text
    assert 'tts_requests_total{status="200"} 1.0' in text
    assert 'tts_requests_total{status="401"} 1.0' in text
    assert 'tts_provider_characters_total{provider="p"} 6.0' in text


@pytest.mark.parametrize(
    ("extend", "expected"),
    [
        (
            "{'InstanceId':'68e00b6640e*****3e943332fee7','ChannelId':'123','SentenceId':'3',"
            'UserData\':\'{"aaaa":"bbbb"}\'}',
            {"InstanceId": "68e00b6640e*****3e943332fee7", "ChannelId": "123", "SentenceId": 3},
        ),
        (
            {"InstanceId": "i-9", "SentenceId": "12", "Emotion": "Happy"},
            {"InstanceId": "i-9", "SentenceId": 12, "Emotion": "Happy"},
        ),
        (
            '{"InstanceId":"i-2","ChannelId":"7","SentenceId":5,"Emotion":"sad"}',
            {"InstanceId": "i-2", "ChannelId": "7", "SentenceId": 5, "Emotion": "sad"},
        ),
        ("", {}),
        (None, {}),
        ("}}}not even close{{{", {}),
    ],
)
def test_extend_data_quirks_never_fail_and_reach_the_log(
    client: TestClient,
    plan: Plan,
    caplog: pytest.LogCaptureFixture,
    extend: Any,
    expected: dict[str, Any],
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway"):
        response = client.post("/stream-audio", json=body(ExtendData=extend))
    assert response.status_code == 200
    line = next(r.getMessage() for r in caplog.records if "status=200" in r.getMessage())
    for key, value in expected.items():
        assert f"{key}={value}" in line
    assert TOKEN not in line and "Hello." not in line  # neither the token nor the text
    for key, value in expected.items():
        assert plan.jobs[0].extend_data[key] == value


def test_emotion_reaches_the_provider_lower_cased(client: TestClient, plan: Plan) -> None:
    client.post("/stream-audio", json=body(ExtendData='{"Emotion": "HAPPY"}'))
    assert plan.jobs[0].emotion == "happy"


def test_voice_emotion_override_replaces_the_builtin_mapping(plan: Plan) -> None:
    yaml = scripted_config(
        voices={
            "joe": {
                "provider": "p",
                "options": {"speed": 1.1, "style": "plain"},
                "emotions": {"happy": {"style": "bright"}},
            }
        },
        providers={"p": provider_block(options={"speed": 1.0, "model": "m1"})},
    )
    with TestClient(create_app(parse_config(yaml))) as c:
        c.post("/stream-audio", json=body(Token=None, ExtendData={"Emotion": "happy"}))
        c.post("/stream-audio", json=body(Token=None, ExtendData={"Emotion": "sad"}))
    happy, sad = plan.jobs
    assert dict(happy.options) == {"speed": 1.1, "model": "m1", "style": "bright"}
    assert happy.emotion is None  # the override was applied instead
    assert dict(sad.options) == {"speed": 1.1, "model": "m1", "style": "plain"}
    assert sad.emotion == "sad"
