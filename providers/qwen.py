"""``type: qwen`` — Alibaba Cloud Model Studio (DashScope) Qwen-TTS, streamed.

``POST {base_url}/api/v1/services/aigc/multimodal-generation/generation`` with
``X-DashScope-SSE: enable``: server-sent events whose ``output.audio.data`` is base64 PCM,
24 kHz S16LE mono; the last event carries ``output.finish_reason``. A chunk that starts with a
RIFF header has it stripped (seen in some model versions). Errors are JSON ``{code, message,
request_id}``, as an HTTP error or as an event inside the stream. The body is shaped as
DashScope's SDK shapes it: ``input`` holds ``text``, ``voice`` and ``language_type``, every
other option goes under ``parameters``. An answer that is plain JSON rather than a stream (as
the SDK also expects, by content type) is read as one event.

Settings: ``api_key`` (required), ``base_url`` (default ``https://dashscope-intl.aliyuncs.com``;
China ``https://dashscope.aliyuncs.com``). Options: ``model`` (default ``qwen3-tts-flash``),
``language_type``, ``instructions`` and ``optimize_instructions`` (instruct models), other
``parameters``. Emotion: ``instructions`` (only sent to models whose name contains
``instruct``; an explicit option wins).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from ._errors import short_text
from ._http import HTTPProvider, media_type
from ._streams import iter_sse, json_object, member, read_body
from .base import ProviderHTTPError, ProviderProtocolError, SynthesisJob
from .emotions import EMOTION_INSTRUCTIONS
from .wav import strip_riff

#: The option that goes into ``input`` beside the text and the voice; the rest are parameters.
INPUT_OPTIONS = ("language_type",)
#: A whole 600-character piece in one JSON answer: spoken slowly, 24 kHz PCM in base64.
_DOCUMENT_LIMIT = 16 * 1024 * 1024


class QwenProvider(HTTPProvider):
    """Qwen-TTS on DashScope."""

    type_name = "qwen"
    default_base_url = "https://dashscope-intl.aliyuncs.com"
    native_rates = (24000,)
    max_text = 600
    answer_types = ("text/event-stream", "application/json")

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        options = dict(job.options)
        model = str(options.pop("model", "qwen3-tts-flash"))
        source: dict[str, Any] = {"text": text, "voice": job.voice}
        source.update({key: options.pop(key) for key in INPUT_OPTIONS if key in options})
        parameters: dict[str, Any] = options
        instructions = EMOTION_INSTRUCTIONS.get(job.emotion or "")
        if instructions and "instruct" in model:
            parameters.setdefault("instructions", instructions)
        body: dict[str, Any] = {"model": model, "input": source}
        if parameters:
            body["parameters"] = parameters
        return self.client.build_request(
            "POST",
            f"{self.base_url}/api/v1/services/aigc/multimodal-generation/generation",
            json=body,
            headers={"Authorization": f"Bearer {self.api_key}", "X-DashScope-SSE": "enable"},
        )

    async def audio(
        self, response: httpx.Response, job: SynthesisJob, text: str
    ) -> AsyncIterator[bytes]:
        if media_type(response) != "text/event-stream":
            body = await read_body(response, self.name, _DOCUMENT_LIMIT)
            for pcm in self._event("result", json_object(body, self.name), whole=True):
                yield pcm
            return
        async for name, data in iter_sse(response, self.name):
            for pcm in self._event(name, json_object(data, self.name)):
                yield pcm

    def _event(self, name: str, event: dict[str, Any], whole: bool = False) -> Iterator[bytes]:
        code = event.get("code")
        if name == "error" or (code and "output" not in event):
            raise ProviderHTTPError(
                self.name,
                200,
                short_text(event.get("message") or ""),
                code=code,
                retryable=str(code).startswith(("Throttling", "Internal")),
            )
        encoded = member(event, "output", "audio", "data")
        if encoded:
            try:
                pcm = strip_riff(base64.b64decode(encoded))
            except (binascii.Error, TypeError, ValueError):
                raise ProviderProtocolError(self.name, "undecodable audio") from None
            if pcm:
                yield pcm
        elif whole and member(event, "output", "audio", "url"):
            # A non-streamed answer links to its audio instead of carrying it.
            raise ProviderProtocolError(self.name, "an audio URL instead of a stream of audio")
