"""``type: polly`` against respx mocks of Amazon Polly's SynthesizeSpeech: a SigV4-signed JSON
request (botocore's signer), raw PCM back, errors typed by ``x-amzn-ErrorType``; what is
specific to it (the contract every provider keeps is ``tests/test_provider_contract.py``)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
import respx

from gateway.config import parse_config
from providers.base import ProviderConfig, SynthesisJob, build_provider
from tests.support import drain, job_maker, synthesize

pytestmark = pytest.mark.respx(using="httpx")

URL = "https://polly.eu-west-1.amazonaws.com/v1/speech"
SETTINGS = {
    "region": "eu-west-1",
    "access_key_id": "AKIDEXAMPLE",
    "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
}


async def collect(job: SynthesisJob) -> bytes:
    return await synthesize("polly", job, **SETTINGS)


job = job_maker(text="Hello there.", voice="Joanna", sample_rate=48000)


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
