"""``type: polly`` — Amazon Polly ``SynthesizeSpeech`` (``POST https://polly.{region}.amazonaws.com
/v1/speech``), signed with AWS Signature Version 4 by botocore's signer (the optional
``tts-gateway[polly]`` extra; no hand-written crypto).

``OutputFormat: "pcm"`` is S16LE mono at 8000 or 16000 Hz (``SampleRate`` is a string); the
body of the answer is the audio. Text over 3000 characters goes out in pieces. Errors are JSON
with the type in ``x-amzn-ErrorType``: throttling and service failures are retried whatever
their status. Polly has no emotion control: Emotion is ignored.

Settings: ``region`` (required), ``access_key_id`` and ``secret_access_key`` (required),
``session_token``, ``base_url`` (default the region's endpoint). Options: ``Engine``
(standard, neural, long-form, generative), ``LanguageCode``, ``TextType``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from ._http import HTTPProvider
from .base import ProviderConfig, ProviderError, SynthesisJob

log = logging.getLogger("gateway.providers")
_NO_BOTOCORE = "type polly needs botocore: pip install 'tts-gateway[polly]'"
RETRYABLE_TYPES = ("ThrottlingException", "ServiceFailureException", "ServiceUnavailable")


class PollyProvider(HTTPProvider):
    """Amazon Polly."""

    type_name = "polly"
    settings_keys: ClassVar[frozenset[str]] = frozenset(
        {"region", "access_key_id", "secret_access_key", "session_token", "base_url"}
    )
    required_settings: ClassVar[frozenset[str]] = frozenset(
        {"region", "access_key_id", "secret_access_key"}
    )
    native_rates = (8000, 16000)
    max_text = 3000

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        settings = config.settings
        self.region = str(settings["region"])
        if not settings.get("base_url"):
            self.base_url = f"https://polly.{self.region}.amazonaws.com"
        self.credentials: Any = None
        try:
            from botocore.credentials import Credentials
        except ImportError:  # the routing file stays valid; this provider's voices fall back
            log.error("provider %s: %s", self.name, _NO_BOTOCORE)
        else:
            self.credentials = Credentials(
                str(settings["access_key_id"]),
                str(settings["secret_access_key"]),
                str(settings["session_token"]) if settings.get("session_token") else None,
            )

    @classmethod
    def check_environment(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        try:
            import botocore.credentials  # noqa: F401
        except ImportError:
            return [("", _NO_BOTOCORE)]
        return []

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        if self.credentials is None:
            raise ProviderError(self.name, _NO_BOTOCORE, retryable=False)
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        body: dict[str, Any] = {"Engine": "neural", "TextType": "text"}
        body.update(job.options)
        body.update(
            Text=text,
            VoiceId=job.voice,
            OutputFormat="pcm",
            SampleRate=str(self.native_format(job).sample_rate),
        )
        payload = json.dumps(body).encode()
        url = f"{self.base_url}/v1/speech"
        signed = AWSRequest(
            method="POST", url=url, data=payload, headers={"Content-Type": "application/json"}
        )
        SigV4Auth(self.credentials, "polly", self.region).add_auth(signed)
        return self.client.build_request(
            "POST", url, content=payload, headers=dict(signed.headers.items())
        )

    def error_retryable(self, response: httpx.Response) -> bool | None:
        kind = response.headers.get("x-amzn-errortype", "")
        return True if kind.startswith(RETRYABLE_TYPES) else None
