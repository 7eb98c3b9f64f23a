"""``type: azure`` — Azure AI Speech text-to-speech (REST).

``POST https://{region}.tts.speech.microsoft.com/cognitiveservices/v1`` (or ``endpoint``) with an
SSML body, ``Ocp-Apim-Subscription-Key``, ``X-Microsoft-OutputFormat:
raw-{8khz,16khz,22050hz,24khz,44100hz,48khz}-16bit-mono-pcm`` (the caller's rate where Azure has
it) and a ``User-Agent``; raw PCM streamed as chunked bytes. The text is XML-escaped.

Settings: ``api_key`` (required), ``region`` or ``endpoint`` (one of them). Options:
``language`` (``xml:lang``, default ``en-US``), ``style`` and ``styledegree`` (0.01-2) for
``mstts:express-as``, ``rate`` and ``pitch`` for ``prosody``. Emotion: ``happy`` → style
``cheerful``, ``sad`` → ``sad`` (an explicit ``style`` option wins; Azure ignores styles a voice
does not have).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar
from xml.sax.saxutils import escape, quoteattr

import httpx

from ._http import HTTPProvider
from .base import ProviderConfig, SynthesisJob

FORMATS = {
    8000: "raw-8khz-16bit-mono-pcm",
    16000: "raw-16khz-16bit-mono-pcm",
    22050: "raw-22050hz-16bit-mono-pcm",
    24000: "raw-24khz-16bit-mono-pcm",
    44100: "raw-44100hz-16bit-mono-pcm",
    48000: "raw-48khz-16bit-mono-pcm",
}
EMOTION_STYLES = {"happy": "cheerful", "sad": "sad"}


def ssml(text: str, voice: str, options: Mapping[str, Any], style: str | None) -> str:
    """The SSML document for one piece of text."""
    body = escape(text)
    prosody = {k: str(options[k]) for k in ("rate", "pitch") if options.get(k) is not None}
    if prosody:
        attributes = "".join(f" {k}={quoteattr(v)}" for k, v in prosody.items())
        body = f"<prosody{attributes}>{body}</prosody>"
    if style:
        degree = options.get("styledegree")
        extra = f" styledegree={quoteattr(str(degree))}" if degree is not None else ""
        body = f"<mstts:express-as style={quoteattr(style)}{extra}>{body}</mstts:express-as>"
    language = quoteattr(str(options.get("language", "en-US")))
    return (
        '<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" '
        f'xmlns:mstts="https://www.w3.org/2001/mstts" xml:lang={language}>'
        f"<voice name={quoteattr(voice)}>{body}</voice></speak>"
    )


class AzureProvider(HTTPProvider):
    """Azure AI Speech."""

    type_name = "azure"
    settings_keys: ClassVar[frozenset[str]] = frozenset({"api_key", "region", "endpoint"})
    max_text = 5000
    native_rates = tuple(FORMATS)

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        endpoint = config.settings.get("endpoint")
        region = config.settings.get("region")
        self.url = str(
            endpoint or f"https://{region}.tts.speech.microsoft.com/cognitiveservices/v1"
        )

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        if not settings.get("region") and not settings.get("endpoint"):
            return [("region", "give the Speech resource's region (or a full endpoint)")]
        return []

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        style = job.options.get("style") or EMOTION_STYLES.get(job.emotion or "")
        rate = self.native_format(job).sample_rate
        return self.client.build_request(
            "POST",
            self.url,
            content=ssml(text, job.voice, job.options, style).encode("utf-8"),
            headers={
                "Ocp-Apim-Subscription-Key": self.api_key,
                "Content-Type": "application/ssml+xml",
                "X-Microsoft-OutputFormat": FORMATS[rate],
                "User-Agent": "tts-gateway",
            },
        )
