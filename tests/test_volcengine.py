"""``type: volcengine`` against respx mocks of Volcengine's chunked JSON stream."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import ConfigError, parse_config
from providers.base import ProviderHTTPError, ProviderProtocolError, SynthesisJob
from tests.support import peak_frequency, synthesize, tone

pytestmark = pytest.mark.respx(using="httpx")

URL = "https://openspeech.bytedance.com/api/v3/tts/unidirectional"
SETTINGS = {"app_id": "app-1", "access_key": "ak-secret-123"}


def objects(*events: dict[str, Any], cut: int = 0) -> httpx.Response:
    body = "\n".join(json.dumps(e, ensure_ascii=False) for e in events).encode()

    async def pieces() -> Any:
        step = cut or len(body)
        for i in range(0, len(body), step):
            yield body[i : i + step]

    return httpx.Response(200, content=pieces(), headers={"Content-Type": "application/json"})


def chunk(pcm: bytes) -> dict[str, Any]:
    return {"code": 0, "message": "", "data": base64.b64encode(pcm).decode()}


END = {"code": 20000000, "message": "ok", "data": None}


async def collect(job: SynthesisJob) -> bytes:
    return await synthesize("volcengine", job, **SETTINGS)


def job(**fields: Any) -> SynthesisJob:
    values: dict[str, Any] = {
        "text": "你好\uff0c欢迎\u3002",
        "voice": "zh_female_1",
        "sample_rate": 16000,
        "request_id": "req-9",
    }
    values.update(fields)
    return SynthesisJob(**values)


@pytest.mark.parametrize("cut", [0, 5])  # whole, or objects split across network chunks
async def test_request_and_chunked_json_audio(respx_mock: respx.MockRouter, cut: int) -> None:
    pcm = tone(440, 0.2, 16000)
    route = respx_mock.post(URL).mock(
        return_value=objects(chunk(pcm[:3000]), chunk(pcm[3000:]), END, cut=cut)
    )
    audio = await collect(job(emotion="happy", options={"audio_params": {"speech_rate": 10}}))
    assert audio == pcm
    sent = route.calls.last.request
    assert sent.headers["x-api-app-id"] == "app-1"
    assert sent.headers["x-api-access-key"] == "ak-secret-123"
    assert sent.headers["x-api-resource-id"] == "seed-tts-1.0"
    assert sent.headers["x-api-request-id"] == "req-9"
    assert json.loads(sent.content) == {
        "user": {"uid": "tts-gateway"},
        "req_params": {
            "text": "你好\uff0c欢迎\u3002",
            "speaker": "zh_female_1",
            "audio_params": {
                "format": "pcm",
                "speech_rate": 10,
                "sample_rate": 16000,
                "emotion": "happy",
            },
        },
    }


async def test_error_code_inside_http_200(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).mock(
        return_value=objects({"code": 45000000, "message": "资源未授权 resource not granted"}),
    )
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(job())
    assert "45000000" in str(caught.value) and "resource not granted" in str(caught.value)
    assert not caught.value.retryable


async def test_http_errors(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).mock(
        return_value=httpx.Response(429, json={"code": 45000292, "message": "quota"})
    )
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(job())
    assert caught.value.retryable


def test_app_id_and_access_key_are_required() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "providers: {v: {type: volcengine}}\nvoices: {a: {provider: v}}\n"
            "server: {default_voice: a}\n"
        )
    assert "app_id" in str(caught.value) and "access_key" in str(caught.value)


def test_volcengine_through_the_gateway(respx_mock: respx.MockRouter) -> None:
    respx_mock.route(host="testserver").pass_through()
    pcm = tone(1000, 1.0, 24000)
    respx_mock.post(URL).mock(return_value=objects(chunk(pcm[:20000]), chunk(pcm[20000:]), END))
    routing = """
server: {default_voice: zh}
providers: {volc: {type: volcengine, app_id: a, access_key: k}}
voices: {zh: {provider: volc, voice: zh_female_1}}
"""
    with TestClient(create_app(parse_config(routing))) as client:
        response = client.post("/stream-audio", json={"Text": "你好。", "SampleRate": 24000})
    assert response.status_code == 200
    assert response.content == pcm  # 24 kHz asked, 24 kHz native: untouched
    assert abs(peak_frequency(response.content, 24000) - 1000) <= 2


def test_the_caller_is_shown_volcengines_error_code(respx_mock: respx.MockRouter) -> None:
    respx_mock.route(host="testserver").pass_through()
    respx_mock.post(URL).mock(
        return_value=objects({"code": 45000000, "message": "resource not granted"})
    )
    routing = """
server: {default_voice: zh}
providers: {volc: {type: volcengine, app_id: a, access_key: k}}
voices: {zh: {provider: volc, voice: zh_female_1}}
"""
    with TestClient(create_app(parse_config(routing))) as client:
        response = client.post("/stream-audio", json={"Text": "你好。", "SampleRate": 24000})
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "(volc): error 45000000" in message and "HTTP 200" not in message


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"code": 0, "data": ', "ended inside an object"),
        (b"<html>502 Bad Gateway</html>", "not JSON objects"),
        (b'{"code": 0, "data": 5}', "undecodable audio"),
        (b'{"code": 0 "data": "AAA="}', "not JSON"),
    ],
)
async def test_malformed_streams_are_provider_errors(
    respx_mock: respx.MockRouter, body: bytes, reason: str
) -> None:
    respx_mock.post(URL).mock(
        return_value=httpx.Response(200, content=body, headers={"Content-Type": "application/json"})
    )
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(job())
    assert reason in str(caught.value)


async def test_an_html_page_at_200_is_an_error(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            200, content=b"<html>Bad Gateway</html>", headers={"Content-Type": "text/html"}
        )
    )
    with pytest.raises(ProviderProtocolError) as caught:
        await collect(job())
    assert "text/html" in str(caught.value)


async def test_objects_with_braces_and_escapes_inside_strings_split_anywhere(
    respx_mock: respx.MockRouter,
) -> None:
    pcm = tone(440, 0.05, 16000)
    tricky = {"code": 0, "message": 'a "}{" \\ "[" \u4f60', "data": base64.b64encode(pcm).decode()}
    for cut in (1, 2, 3, 7):
        respx_mock.post(URL).mock(return_value=objects(tricky, tricky, END, cut=cut))
        assert await collect(job()) == pcm * 2


async def test_a_long_object_in_small_pieces_is_parsed_in_linear_time(
    respx_mock: respx.MockRouter,
) -> None:
    pcm = b"\x01\x02" * 600_000  # 1.2 MB of audio: 1.6 MB of base64 in one object
    body = json.dumps({"code": 0, "data": base64.b64encode(pcm).decode()}).encode()

    async def pieces() -> Any:
        for i in range(0, len(body), 128):  # 12500 pieces, each a new chance to re-parse
            yield body[i : i + 128]

    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            200, content=pieces(), headers={"Content-Type": "application/json"}
        )
    )
    started = time.perf_counter()
    assert await collect(job()) == pcm
    assert time.perf_counter() - started < 1.5  # re-parsing from the start took seconds


async def test_an_object_without_end_is_refused_at_its_bound(respx_mock: respx.MockRouter) -> None:
    async def endless() -> Any:
        yield b'{"code": 0, "data": "'
        for _ in range(48):  # 3 MiB, then nothing more: a reader without a bound waits on
            yield b"A" * 65536
        await asyncio.Event().wait()

    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            200, content=endless(), headers={"Content-Type": "application/json"}
        )
    )
    with pytest.raises(ProviderProtocolError) as caught:
        await asyncio.wait_for(collect(job()), 10)
    assert "an object over 2 MiB" in str(caught.value)


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain; charset=utf-8", "application/octet-stream"]
)
async def test_a_json_stream_under_any_type_it_could_carry_is_read(
    respx_mock: respx.MockRouter, content_type: str
) -> None:
    pcm = tone(440, 0.05, 16000)
    answer = objects(chunk(pcm), END)
    answer.headers["Content-Type"] = content_type
    respx_mock.post(URL).mock(return_value=answer)
    assert await collect(job()) == pcm
