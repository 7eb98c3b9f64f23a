"""``type: deepgram`` — Deepgram Aura, ``POST {base_url}/v1/speak``.

The voice is Deepgram's model name (``aura-2-thalia-en``…), sent in the query string with
``encoding=linear16``, ``sample_rate`` (8000, 16000, 24000, 32000 or 48000: the closest to the
caller's) and ``container=none`` — the default container is WAV, which would put a header into
the stream. ``Authorization: Token <key>``; the body is ``{"text": ...}`` (2000 characters at
most: longer text goes out in pieces). Deepgram has no emotion control: Emotion is ignored.

Settings: ``api_key`` (required), ``base_url`` (default ``https://api.deepgram.com``).
Options: further query parameters.
"""

from __future__ import annotations

from typing import Any

import httpx

from ._http import HTTPProvider
from .base import SynthesisJob

RATES = (8000, 16000, 24000, 32000, 48000)


class DeepgramProvider(HTTPProvider):
    """Deepgram text-to-speech."""

    type_name = "deepgram"
    default_base_url = "https://api.deepgram.com"
    native_rates = RATES
    max_text = 2000

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        params: dict[str, Any] = dict(job.options)
        params.update(
            model=job.voice,
            encoding="linear16",
            sample_rate=self.native_format(job).sample_rate,
            container="none",
        )
        return self.client.build_request(
            "POST",
            f"{self.base_url}/v1/speak",
            params=params,
            json={"text": text},
            headers={"Authorization": f"Token {self.api_key}"},
        )
