"""``type: cartesia`` — Cartesia's ``POST {base_url}/tts/bytes``.

Raw S16LE mono PCM (``output_format: {container: raw, encoding: pcm_s16le, sample_rate}``) at
the caller's own rate, streamed as chunked bytes. ``Authorization: Bearer`` and the required
``Cartesia-Version`` header.

Settings: ``api_key`` (required), ``base_url`` (default ``https://api.cartesia.ai``),
``version`` (the ``Cartesia-Version`` header, default ``2025-04-16``). Options (body fields):
``model_id`` (default ``sonic-3``), ``language``, ``generation_config`` (``speed``, ``volume``,
``emotion``). Emotion: ``generation_config.emotion`` (neutral, happy, sad) unless the options
already set one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from ._http import HTTPProvider
from .base import EMOTIONS, ProviderConfig, SynthesisJob


class CartesiaProvider(HTTPProvider):
    """Cartesia Sonic."""

    type_name = "cartesia"
    settings_keys: ClassVar[frozenset[str]] = frozenset({"api_key", "base_url", "version"})
    default_base_url = "https://api.cartesia.ai"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.version = str(config.settings.get("version") or "2025-04-16")

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        body: dict[str, Any] = {"model_id": "sonic-3"}
        body.update(job.options)
        if job.emotion in EMOTIONS:
            config = dict(body.get("generation_config") or {})
            config.setdefault("emotion", job.emotion)
            body["generation_config"] = config
        body.update(
            transcript=text,
            voice={"mode": "id", "id": job.voice},
            output_format={
                "container": "raw",
                "encoding": "pcm_s16le",
                "sample_rate": job.sample_rate,
            },
        )
        return self.client.build_request(
            "POST",
            f"{self.base_url}/tts/bytes",
            json=body,
            headers={"Authorization": f"Bearer {self.api_key}", "Cartesia-Version": self.version},
        )
