"""``type: elevenlabs`` — ElevenLabs streaming text-to-speech.

``POST {base_url}/v1/text-to-speech/{voice_id}/stream?output_format=pcm_{rate}`` with the
``xi-api-key`` header; raw S16LE mono PCM at 8000, 16000, 22050, 24000, 32000, 44100 or 48000 Hz
(the one closest to the caller's rate is asked for), streamed as chunked bytes.

Settings: ``api_key`` (required), ``base_url`` (default ``https://api.elevenlabs.io``).
Options (body fields): ``model_id`` (default ``eleven_flash_v2_5``), ``voice_settings``
(``stability``, ``similarity_boost``, ``style``, ``speed``), ``language_code``. Emotion: with
``eleven_v3``, an inline audio tag (``[happy]``, ``[sad]``) before the text; other models have
no emotion control and ignore it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from ._http import HTTPProvider
from .base import SynthesisJob

RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
EMOTION_TAGS = {"happy": "[happy]", "sad": "[sad]"}


class ElevenLabsProvider(HTTPProvider):
    """ElevenLabs."""

    type_name = "elevenlabs"
    default_base_url = "https://api.elevenlabs.io"
    native_rates = RATES
    max_text = 5000

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
