"""``type: google`` — Google Cloud Text-to-Speech, ``POST {base_url}/v1/text:synthesize``.

Not streamed: one JSON reply ``{"audioContent": "<base64>"}`` whose ``LINEAR16`` audio carries a
WAV header (walked and dropped here, since every piece of a long text has its own), at the
caller's own ``sampleRateHertz``; the answer starts when the reply has arrived. Input is capped
at 5000 *bytes*: longer text goes out in pieces.

Settings: ``api_key`` (sent as ``?key=``; required), ``base_url`` (default
``https://texttospeech.googleapis.com``). The voice is Google's voice name (``en-US-Neural2-F``);
its language code is taken from the name unless the ``languageCode`` option says otherwise.
Options: ``languageCode``, ``speakingRate``, ``pitch``, ``volumeGainDb``, ``model_name``
(Gemini-TTS). Emotion: for Gemini-TTS voices (``model_name`` set), ``input.prompt``; classic
voices have no emotion control and ignore it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ._http import HTTPProvider, iter_body, strip_riff
from .base import AudioFormat, ProviderHTTPError, SynthesisJob
from .openai import EMOTION_INSTRUCTIONS

_AUDIO_CONFIG = ("speakingRate", "pitch", "volumeGainDb")


class GoogleProvider(HTTPProvider):
    """Google Cloud Text-to-Speech."""

    type_name = "google"
    default_base_url = "https://texttospeech.googleapis.com"
    max_text = 5000

    def text_size(self, text: str) -> int:
        return len(text.encode("utf-8"))

    def native_format(self, job: SynthesisJob) -> AudioFormat:
        return AudioFormat(sample_rate=job.sample_rate)

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        options = dict(job.options)
        language = options.get("languageCode") or "-".join(job.voice.split("-")[:2])
        voice: dict[str, Any] = {"languageCode": language, "name": job.voice}
        source: dict[str, Any] = {"text": text}
        if options.get("model_name"):
            voice["model_name"] = options["model_name"]
            prompt = EMOTION_INSTRUCTIONS.get(job.emotion or "")
            if prompt:
                source["prompt"] = prompt
        audio_config: dict[str, Any] = {
            "audioEncoding": "LINEAR16",
            "sampleRateHertz": job.sample_rate,
        }
        audio_config.update({k: options[k] for k in _AUDIO_CONFIG if k in options})
        return self.client.build_request(
            "POST",
            f"{self.base_url}/v1/text:synthesize",
            params={"key": self.api_key},
            json={"input": source, "voice": voice, "audioConfig": audio_config},
        )

    async def audio(self, response: httpx.Response) -> AsyncIterator[bytes]:
        body = b"".join([chunk async for chunk in iter_body(response, self.name)])
        try:
            encoded = json.loads(body)["audioContent"]
            yield strip_riff(base64.b64decode(encoded))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise ProviderHTTPError(
                self.name, response.status_code, "no audioContent in the reply", retryable=False
            ) from None
