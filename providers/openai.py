"""``type: openai`` — OpenAI's speech endpoint (``POST {base_url}/audio/speech``).

Raw PCM (``response_format: "pcm"``) is 24 kHz S16LE mono only, streamed as chunked bytes; the
gateway resamples to other rates. ``input`` is capped at 4096 characters: longer text goes out
as consecutive requests cut at sentence boundaries.

Settings: ``api_key`` (required), ``base_url`` (default ``https://api.openai.com/v1``).
Options (body fields): ``model`` (default ``gpt-4o-mini-tts``), ``speed`` (0.25-4.0),
``instructions``, anything else the API takes. Emotion: ``happy``/``sad`` become
``instructions`` (not for the ``tts-1`` models, which ignore them; an explicit
``instructions`` option wins, and a request's own ``instructions`` from the OpenAI door win over
both).
"""

from __future__ import annotations

from typing import Any

import httpx

from ._http import HTTPProvider
from .base import SynthesisJob
from .emotions import EMOTION_INSTRUCTIONS


class OpenAIProvider(HTTPProvider):
    """OpenAI text-to-speech."""

    type_name = "openai"
    default_base_url = "https://api.openai.com/v1"
    native_rates = (24000,)
    max_text = 4096

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        body: dict[str, Any] = {"model": "gpt-4o-mini-tts"}
        body.update(job.options)
        instructions = EMOTION_INSTRUCTIONS.get(job.emotion or "")
        takes_prompt = not str(body["model"]).startswith("tts-1")
        if takes_prompt and job.instructions:
            body["instructions"] = job.instructions  # the caller's own words win
        elif instructions and "instructions" not in body and takes_prompt:
            body["instructions"] = instructions
        body.update(input=text, voice=job.voice, response_format="pcm")
        return self.client.build_request(
            "POST",
            f"{self.base_url}/audio/speech",
            json=body,
            headers={"Authorization": f"Bearer {self.api_key}"},
        )
