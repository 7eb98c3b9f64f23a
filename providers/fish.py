"""``type: fish`` — Fish Audio, ``POST {base_url}/v1/tts``.

``format: "pcm"`` answers raw S16LE mono at ``sample_rate`` (the closest of 8000, 16000, 24000,
32000 and 44100 Hz to the caller's), streamed as chunked bytes. ``Authorization: Bearer``;
the model goes in the optional ``model`` header.

Settings: ``api_key`` (required), ``base_url`` (default ``https://api.fish.audio``).
Options: ``model`` (the header, e.g. ``s1``), ``prosody`` (``speed``, ``volume``), ``latency``
(``normal``/``balanced``/``low``), other body fields. The voice is the ``reference_id``.
Emotion: an inline tag before the text — ``(happy)`` for the ``s1`` models, ``[happy]`` for the
newer ones.
"""

from __future__ import annotations

from typing import Any

import httpx

from ._http import HTTPProvider
from .base import SynthesisJob

RATES = (8000, 16000, 24000, 32000, 44100)


class FishProvider(HTTPProvider):
    """Fish Audio."""

    type_name = "fish"
    default_base_url = "https://api.fish.audio"
    native_rates = RATES

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        options = dict(job.options)
        model = options.pop("model", None)
        if job.emotion in ("happy", "sad"):
            legacy = str(model or "").startswith("s1")
            text = f"({job.emotion}) {text}" if legacy else f"[{job.emotion}] {text}"
        body: dict[str, Any] = options
        body.update(
            text=text,
            reference_id=job.voice,
            format="pcm",
            sample_rate=self.native_format(job).sample_rate,
        )
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if model:
            headers["model"] = str(model)
        return self.client.build_request(
            "POST", f"{self.base_url}/v1/tts", json=body, headers=headers
        )
