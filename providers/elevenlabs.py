"""``type: elevenlabs`` — ElevenLabs streaming text-to-speech.

``POST {base_url}/v1/text-to-speech/{voice_id}/stream?output_format=pcm_{rate}`` with the
``xi-api-key`` header; raw S16LE mono PCM at 8000, 16000, 22050, 24000, 32000, 44100 or 48000 Hz
(the one closest to the caller's rate is asked for), streamed as chunked bytes.

Settings: ``api_key`` (required), ``base_url`` (default ``https://api.elevenlabs.io``).
Options (body fields): ``model_id`` (default ``eleven_flash_v2_5``), ``voice_settings``
(``stability``, ``similarity_boost``, ``style``, ``speed``), ``language_code``. Emotion: with
``eleven_v3``, an inline audio tag (``[happy]``, ``[sad]``) before the text; other models have
no emotion control and ignore it.

Concurrency: ElevenLabs limits the requests a plan has in flight at once and says so in every
answer's ``maximum-concurrent-requests`` header; the gateway's admission honours it under the
provider's ``max_concurrency``. A 429 ``too_many_concurrent_requests`` is the plan being full
(the chain moves on at once, without counting it against the circuit breaker), while
``system_busy`` is ElevenLabs being overloaded (retried, counted).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx

from ._errors import error_message, parse_retry_after
from ._http import HTTPProvider
from .base import ProviderError, ProviderSaturated, SynthesisJob

RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
EMOTION_TAGS = {"happy": "[happy]", "sad": "[sad]"}
#: The plan's concurrency limit, in every answer.
LIMIT_HEADER = "maximum-concurrent-requests"
#: A limit past this is not one to plan by (an upstream could send anything).
_MAX_SIGNALLED = 100_000


class ElevenLabsProvider(HTTPProvider):
    """ElevenLabs."""

    type_name = "elevenlabs"
    default_base_url = "https://api.elevenlabs.io"
    native_rates = RATES
    max_text = 5000

    def response_seen(self, response: httpx.Response) -> None:
        value = response.headers.get(LIMIT_HEADER, "").strip()
        if 0 < len(value) <= 6 and value.isascii() and value.isdigit():
            limit = int(value)
            if 0 < limit <= _MAX_SIGNALLED:
                self.signalled_concurrency = limit

    def error_for(self, response: httpx.Response, body: bytes) -> ProviderError:
        if response.status_code == 429 and _detail_status(body) == "too_many_concurrent_requests":
            return ProviderSaturated(
                self.name,
                429,
                error_message(body, response.reason_phrase),
                code="too_many_concurrent_requests",
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        return super().error_for(response, body)

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        body: dict[str, Any] = {"model_id": "eleven_flash_v2_5"}
        body.update(job.options)
        tag = EMOTION_TAGS.get(job.emotion or "")
        if tag and body["model_id"] == "eleven_v3":
            text = f"{tag} {text}"
        body["text"] = text
        rate = self.native_format(job).sample_rate
        return self.client.build_request(
            "POST",
            f"{self.base_url}/v1/text-to-speech/{quote(job.voice, safe='')}/stream",
            params={"output_format": f"pcm_{rate}"},
            json=body,
            headers={"xi-api-key": self.api_key},
        )


def _detail_status(body: bytes) -> str | None:
    """``detail.status`` of an error body (``{"detail": {"status", "message"}}``)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    detail = data.get("detail") if isinstance(data, dict) else None
    status = detail.get("status") if isinstance(detail, dict) else None
    return status if isinstance(status, str) else None
