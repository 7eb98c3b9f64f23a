"""``type: polly`` against respx mocks of Amazon Polly's SynthesizeSpeech: a SigV4-signed JSON
request (botocore's signer), raw PCM back, errors typed by ``x-amzn-ErrorType``."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from providers.base import ProviderConfig, ProviderHTTPError, SynthesisJob, build_provider
from tests.support import drain, peak_frequency, synthesize, tone

pytestmark = pytest.mark.respx(using="httpx")

URL = "https://polly.eu-west-1.amazonaws.com/v1/speech"
SETTINGS = {
    "region": "eu-west-1",
    "access_key_id": "AKIDEXAMPLE",
    "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
}


async def collect(job: SynthesisJob) -> bytes:
    return await synthesize("polly", job, **SETTINGS)


def job(**fields: Any) -> SynthesisJob:
    values: dict[str, Any] = {"text": "Hello there.", "voice": "Joanna", "sample_rate": 48000}
    values.update(fields)
    return SynthesisJob(**values)


async def test_signed_request(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(return_value=httpx.Response(200, content=b"\x01\x00" * 8))
    assert await collect(job(emotion="happy", options={"Engine": "generative"})) == b"\x01\x00" * 8
    sent = route.calls.last.request
    assert json.loads(sent.content) == {
        "Engine": "generative",
        "TextType": "text",
        "Text": "Hello there.",  # no emotion control: the text is unchanged
        "VoiceId": "Joanna",
        "OutputFormat": "pcm",
        "SampleRate": "16000",  # a string, and 16 kHz at most for pcm
    }
    auth = sent.headers["authorization"]
    assert re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/\d{8}/eu-west-1/polly/aws4_request, "
        r"SignedHeaders=[a-z0-9;-]*host[a-z0-9;-]*x-amz-date[a-z0-9;-]*, Signature=[0-9a-f]{64}",
        auth,
    ), auth
    assert re.fullmatch(r"\d{8}T\d{6}Z", sent.headers["x-amz-date"])
    assert "wJalrXUtnFEMI" not in str(sent.headers)  # the secret signs, never travels


async def test_signature_covers_the_body(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(return_value=httpx.Response(200, content=b"\x00\x00"))
    await collect(job(text="One."))
    await collect(job(text="Two."))
    first, second = (c.request.headers["authorization"] for c in route.calls)
    assert first.split("Signature=")[1] != second.split("Signature=")[1]


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, "ThrottlingException", True),  # throttling comes back as a 400
        (400, "InvalidSampleRateException", False),
        (403, "UnrecognizedClientException", False),
        (500, "ServiceFailureException", True),
    ],
)
async def test_errors(
    respx_mock: respx.MockRouter, status: int, kind: str, retryable: bool
) -> None:
    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            status, json={"message": f"{kind} message"}, headers={"x-amzn-ErrorType": f"{kind}:"}
        )
    )
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(job())
    assert caught.value.retryable is retryable and f"{kind} message" in str(caught.value)


def test_polly_through_the_gateway(respx_mock: respx.MockRouter) -> None:
    respx_mock.route(host="testserver").pass_through()
    respx_mock.post(URL).mock(return_value=httpx.Response(200, content=tone(1000, 1.0, 16000)))
    routing = """
server: {default_voice: Joanna}
providers:
  aws: {type: polly, region: eu-west-1, access_key_id: AKID, secret_access_key: SECRET}
voices: {Joanna: {provider: aws}}
"""
    with TestClient(create_app(parse_config(routing))) as client:
        response = client.post("/stream-audio", json={"Text": "Hi.", "SampleRate": 48000})
    assert response.status_code == 200
    assert abs(len(response.content) // 2 - 48000) <= 1  # 16 kHz from Polly, resampled
    assert abs(peak_frequency(response.content, 48000) - 1000) <= 2


async def test_without_botocore_the_file_loads_and_the_voice_fails_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from providers.base import ProviderError

    monkeypatch.setitem(sys.modules, "botocore.credentials", None)  # as if not installed
    routing = """
server: {default_voice: Joanna}
providers:
  aws: {type: polly, region: eu-west-1, access_key_id: AKID, secret_access_key: SECRET}
voices: {Joanna: {provider: aws}}
"""
    parse_config(routing)  # check-config passes without the extra
    provider = build_provider(ProviderConfig(name="aws", type="polly", settings=SETTINGS))
    with pytest.raises(ProviderError) as caught:
        await drain(provider, job())
    assert not caught.value.retryable and "tts-gateway[polly]" in str(caught.value)
