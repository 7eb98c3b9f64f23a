"""``type: minimax`` — MiniMax T2A v2 streaming, ``POST {base_url}/v1/t2a_v2`` with ``stream``.

Audio arrives as server-sent events whose ``data.audio`` is *hex* PCM (``audio_setting.format:
"pcm"``, mono, at the closest of 8000, 16000, 22050, 24000, 32000 and 44100 Hz). Two traps:
errors come back with HTTP 200 and a non-zero ``base_resp.status_code`` (1002 rate limit and
1000/1001/1024 server-side are retryable; 1004 auth, 1008 balance, 2013 invalid parameters are
not), and the final event (``status: 2``) repeats the whole audio unless
``stream_options.exclude_aggregated_audio`` is set — it is, and a final event's audio is never
played in any case.

Settings: ``api_key`` (required), ``base_url`` (default ``https://api.minimax.io``; China
``https://api.minimaxi.com``), ``group_id`` (sent as ``GroupId`` where an account needs it).
Options: ``model`` (default ``speech-02-turbo``), ``voice_setting`` fields (``speed``, ``vol``,
``pitch``, ``emotion``), ``language_boost``. Emotion: ``voice_setting.emotion`` (happy, sad;
neutral sends none).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx

from ._errors import short_text
from ._http import HTTPProvider, media_type
from ._streams import iter_sse, json_object, member, read_body
from .base import ProviderConfig, ProviderHTTPError, ProviderProtocolError, SynthesisJob

RATES = (8000, 16000, 22050, 24000, 32000, 44100)
RETRYABLE_CODES = frozenset({1000, 1001, 1002, 1024, 1039})
#: A reply that is not a stream is an error document (a stream is always asked for).
_DOCUMENT_LIMIT = 64 * 1024


class MiniMaxProvider(HTTPProvider):
    """MiniMax speech."""

    type_name = "minimax"
    settings_keys: ClassVar[frozenset[str]] = frozenset({"api_key", "base_url", "group_id"})
    default_base_url = "https://api.minimax.io"
    native_rates = RATES
    max_text = 5000
    answer_types = ("text/event-stream", "application/json")

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.group_id = config.settings.get("group_id")

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        options = dict(job.options)
        voice_setting: dict[str, Any] = {"voice_id": job.voice}
        voice_setting.update(options.pop("voice_setting", None) or {})
        if job.emotion in ("happy", "sad"):
            voice_setting.setdefault("emotion", job.emotion)
        body: dict[str, Any] = {"model": "speech-02-turbo"}
        body.update(options)
        body.update(
            text=text,
            stream=True,
            stream_options={"exclude_aggregated_audio": True},
            voice_setting=voice_setting,
            audio_setting={
                "sample_rate": self.native_format(job).sample_rate,
                "format": "pcm",
                "channel": 1,
            },
        )
        params = {"GroupId": str(self.group_id)} if self.group_id else None
        return self.client.build_request(
            "POST",
            f"{self.base_url}/v1/t2a_v2",
            params=params,
            json=body,
            headers={"Authorization": f"Bearer {self.api_key}"},
        )

    async def audio(
        self, response: httpx.Response, job: SynthesisJob, text: str
    ) -> AsyncIterator[bytes]:
        if media_type(response) != "text/event-stream":
            # An error (or a non-streamed answer) as one JSON document.
            body = await read_body(response, self.name, _DOCUMENT_LIMIT)
            event = json_object(body, self.name)
            self._check(event)
            audio = self._audio(event)
            if audio:
                yield audio
            return
        async for _, data in iter_sse(response, self.name):
            event = json_object(data, self.name)
            self._check(event)
            if member(event, "data", "status") == 2:  # the aggregate repeat of all already sent
                continue
            audio = self._audio(event)
            if audio:
                yield audio

    def _check(self, event: dict[str, Any]) -> None:
        code = member(event, "base_resp", "status_code")
        if code:
            raise ProviderHTTPError(
                self.name,
                200,
                short_text(member(event, "base_resp", "status_msg") or ""),
                code=code,
                retryable=isinstance(code, int) and code in RETRYABLE_CODES,
            )

    def _audio(self, event: dict[str, Any]) -> bytes:
        hex_audio = member(event, "data", "audio")
        if not hex_audio:
            return b""
        try:
            return bytes.fromhex(hex_audio)
        except (TypeError, ValueError):
            raise ProviderProtocolError(self.name, "audio that is not hex") from None
