"""``type: volcengine`` against respx mocks of Volcengine's chunked JSON stream."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import ConfigError, parse_config
from providers.base import ProviderHTTPError, SynthesisJob
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
