"""``type: volcengine`` — Volcengine (Doubao) speech synthesis, HTTP unidirectional streaming.

``POST {base_url}/api/v3/tts/unidirectional`` with ``X-Api-App-Id``, ``X-Api-Access-Key`` and
``X-Api-Resource-Id``; the body asks for ``audio_params.format: "pcm"``. The answer is a chunked
stream of JSON objects, each ``{"code": 0, "data": "<base64 PCM>"}``, the last with code
20000000; any other non-zero code is an error *inside an HTTP 200*. The objects are cut from
the stream as their closing brackets arrive, each parsed once (``JSONObjectStream``).

Settings: ``app_id`` and ``access_key`` (required), ``resource_id`` (default
``seed-tts-1.0``), ``base_url`` (default ``https://openspeech.bytedance.com``). Options:
``audio_params`` fields (``speech_rate``, ``loudness_rate``, ``emotion_scale``…), other
``req_params`` fields. Emotion: ``audio_params.emotion`` (happy, sad).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx

from ._errors import short_text
from ._http import HTTPProvider
from ._streams import JSONObjectStream, iter_body, json_object
from .base import ProviderConfig, ProviderHTTPError, ProviderProtocolError, SynthesisJob

FINISHED = 20000000


class VolcengineProvider(HTTPProvider):
    """Volcengine / Doubao TTS."""

    type_name = "volcengine"
    settings_keys: ClassVar[frozenset[str]] = frozenset(
        {"app_id", "access_key", "resource_id", "base_url"}
    )
    required_settings: ClassVar[frozenset[str]] = frozenset({"app_id", "access_key"})
    default_base_url = "https://openspeech.bytedance.com"
    native_rates = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
    max_text = 1000
    # The documentation names no type for the stream; the objects' framing is checked anyway,
    # so any type a JSON stream could carry passes, and a page (HTML, XML) does not.
    answer_types = (
        "application/json",
        "application/x-ndjson",
        "text/plain",
        "application/octet-stream",
    )

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        settings = config.settings
        self.app_id = str(settings.get("app_id") or "")
        self.access_key = str(settings.get("access_key") or "")
        self.resource_id = str(settings.get("resource_id") or "seed-tts-1.0")

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        options = dict(job.options)
        audio_params: dict[str, Any] = {"format": "pcm"}
        audio_params.update(options.pop("audio_params", None) or {})
        audio_params["sample_rate"] = self.native_format(job).sample_rate
        if job.emotion in ("happy", "sad"):
            audio_params.setdefault("emotion", job.emotion)
        params: dict[str, Any] = options
        params.update(text=text, speaker=job.voice, audio_params=audio_params)
        headers = {
            "X-Api-App-Id": self.app_id,
            "X-Api-Access-Key": self.access_key,
            "X-Api-Resource-Id": self.resource_id,
        }
        if job.request_id:
            headers["X-Api-Request-Id"] = job.request_id
        return self.client.build_request(
            "POST",
            f"{self.base_url}/api/v3/tts/unidirectional",
            json={"user": {"uid": "tts-gateway"}, "req_params": params},
            headers=headers,
        )

    async def audio(
        self, response: httpx.Response, job: SynthesisJob, text: str
    ) -> AsyncIterator[bytes]:
        objects = JSONObjectStream(self.name)
        async for chunk in iter_body(response, self.name):
            for raw in objects.feed(chunk):
                audio = self._audio_of(json_object(raw, self.name))
                if audio:
                    yield audio
        objects.finish()

    def _audio_of(self, event: dict[str, Any]) -> bytes:
        code = event.get("code", 0)
        if code not in (0, FINISHED):
            raise ProviderHTTPError(
                self.name, 200, short_text(event.get("message") or ""), code=code, retryable=False
            )
        data = event.get("data")
        if not data:
            return b""
        try:
            return base64.b64decode(data)
        except (binascii.Error, TypeError, ValueError):
            raise ProviderProtocolError(self.name, "undecodable audio") from None
