"""``type: volcengine`` against respx mocks of Volcengine's chunked JSON stream: what is specific to
it (the contract every provider keeps is ``tests/test_provider_contract.py``)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
import respx

from gateway.config import ConfigError, parse_config
from providers.base import SynthesisJob
from tests.support import job_maker, synthesize, tone

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


job = job_maker(
    text="你好\uff0c欢迎\u3002", voice="zh_female_1", sample_rate=16000, request_id="req-9"
)


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


def test_app_id_and_access_key_are_required() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "providers: {v: {type: volcengine}}\nvoices: {a: {provider: v}}\n"
            "server: {default_voice: a}\n"
        )
    assert "app_id" in str(caught.value) and "access_key" in str(caught.value)


async def test_objects_with_braces_and_escapes_inside_strings_split_anywhere(
    respx_mock: respx.MockRouter,
) -> None:
    pcm = tone(440, 0.05, 16000)
    tricky = {"code": 0, "message": 'a "}{" \\ "[" \u4f60', "data": base64.b64encode(pcm).decode()}
    for cut in (1, 2, 3, 7):
        respx_mock.post(URL).mock(return_value=objects(tricky, tricky, END, cut=cut))
        assert await collect(job()) == pcm * 2


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
