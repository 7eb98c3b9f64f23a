"""``type: fish`` — Fish Audio, ``POST {base_url}/v1/tts``.

``format: "pcm"`` answers raw S16LE mono at ``sample_rate`` (the closest of 8000, 16000, 24000,
32000 and 44100 Hz to the caller's), streamed as chunked bytes. ``Authorization: Bearer``;
the model goes in the ``model`` header, always sent (as Fish's SDK does): without it the
server picks a model of its own choosing, and bills for it.

Settings: ``api_key`` (required), ``base_url`` (default ``https://api.fish.audio``).
Options: ``model`` (the header: ``s2-pro`` by default, the SDK's; ``s1``, ``s2.1-pro``…),
``prosody`` (``speed``, ``volume``), ``latency`` (``normal`` or ``balanced``), other body
fields. The voice is the ``reference_id``. Emotion: an inline tag before the text —
``(happy)`` for the ``s1`` models, ``[happy]`` for the newer ones.
"""

from __future__ import annotations

from typing import Any

import httpx

from ._http import HTTPProvider
from .base import SynthesisJob

RATES = (8000, 16000, 24000, 32000, 44100)
DEFAULT_MODEL = "s2-pro"


class FishProvider(HTTPProvider):
    """Fish Audio."""

    type_name = "fish"
    default_base_url = "https://api.fish.audio"
    native_rates = RATES

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        options = dict(job.options)
        model = str(options.pop("model", None) or DEFAULT_MODEL)
        if job.emotion in ("happy", "sad"):
            legacy = model.startswith("s1")
            text = f"({job.emotion}) {text}" if legacy else f"[{job.emotion}] {text}"
        body: dict[str, Any] = options
        body.update(
            text=text,
            reference_id=job.voice,
            format="pcm",
            sample_rate=self.native_format(job).sample_rate,
        )
        headers = {"Authorization": f"Bearer {self.api_key}", "model": model}
        return self.client.build_request(
            "POST", f"{self.base_url}/v1/tts", json=body, headers=headers
        )
