"""``type: qwen`` — Alibaba Cloud Model Studio (DashScope) Qwen-TTS, streamed.

``POST {base_url}/api/v1/services/aigc/multimodal-generation/generation`` with
``X-DashScope-SSE: enable``: server-sent events whose ``output.audio.data`` is base64 PCM,
24 kHz S16LE mono; the last event carries ``output.finish_reason``. A chunk that starts with a
RIFF header has it stripped (seen in some model versions). Errors are JSON ``{code, message,
request_id}``, as an HTTP error or as an event inside the stream.

Settings: ``api_key`` (required), ``base_url`` (default ``https://dashscope-intl.aliyuncs.com``;
China ``https://dashscope.aliyuncs.com``). Options: ``model`` (default ``qwen3-tts-flash``),
``language_type``, ``instructions`` (instruct models). Emotion: ``instructions`` (only sent to
models whose name contains ``instruct``; an explicit option wins).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ._http import HTTPProvider, iter_sse, strip_riff
from .base import ProviderHTTPError, SynthesisJob
from .openai import EMOTION_INSTRUCTIONS


class QwenProvider(HTTPProvider):
    """Qwen-TTS on DashScope."""

    type_name = "qwen"
    default_base_url = "https://dashscope-intl.aliyuncs.com"
    native_rates = (24000,)
    max_text = 600

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        options = dict(job.options)
        model = str(options.pop("model", "qwen3-tts-flash"))
        source: dict[str, Any] = {"text": text, "voice": job.voice}
        source.update(options)
        instructions = EMOTION_INSTRUCTIONS.get(job.emotion or "")
        if instructions and "instruct" in model:
            source.setdefault("instructions", instructions)
        return self.client.build_request(
            "POST",
            f"{self.base_url}/api/v1/services/aigc/multimodal-generation/generation",
            json={"model": model, "input": source},
            headers={"Authorization": f"Bearer {self.api_key}", "X-DashScope-SSE": "enable"},
        )

    async def audio(self, response: httpx.Response) -> AsyncIterator[bytes]:
        async for name, data in iter_sse(response, self.name):
            try:
                event = json.loads(data)
            except ValueError:
                continue
            if name == "error" or (event.get("code") and "output" not in event):
                raise ProviderHTTPError(
                    self.name,
                    200,
                    f"{event.get('code')}: {event.get('message', '')}",
                    retryable=str(event.get("code", "")).startswith(("Throttling", "Internal")),
                )
            encoded = ((event.get("output") or {}).get("audio") or {}).get("data")
            if encoded:
                try:
                    pcm = strip_riff(base64.b64decode(encoded))
                except (binascii.Error, ValueError):
                    raise ProviderHTTPError(
                        self.name, 200, "undecodable audio", retryable=False
                    ) from None
                if pcm:
                    yield pcm
