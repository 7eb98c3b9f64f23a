"""``type: google`` — Google Cloud Text-to-Speech, ``POST {base_url}/v1/text:synthesize``.

Not streamed: one JSON reply ``{"audioContent": "<base64>"}`` whose ``LINEAR16`` audio carries a
WAV header (walked and dropped here, since every piece of a long text has its own), at the
caller's own ``sampleRateHertz``; the answer starts when the reply has arrived. So the text goes
out in pieces, the first sentence alone and the next piece asked for while the current one plays
(``providers._pieces``); input is also capped at 5000 *bytes* a request.

Settings: ``api_key`` (sent in the ``X-Goog-Api-Key`` header, never in the URL, which HTTP
libraries and proxies log) or ``credentials_file`` (a service-account JSON key; its OAuth token
is fetched and refreshed by google-auth, the ``tts-gateway[google]`` extra), ``base_url``
(default ``https://texttospeech.googleapis.com``). The voice is Google's voice name. Its
``voice.languageCode`` is the ``languageCode`` option if given, else the locale a voice name
starts with (``en-US`` of ``en-US-Neural2-F``), else ``en-US``: Gemini-TTS voices (``Kore``,
``Puck``, …) carry no locale, and the API requires one, so set ``languageCode`` for any other
language.
Options: ``languageCode``, ``speakingRate``, ``pitch``, ``volumeGainDb``, ``model_name``
(Gemini-TTS). Emotion: for Gemini-TTS voices (``model_name`` set), ``input.prompt``; classic
voices have no emotion control and ignore it. The reply may take what the text could need at a
slow pace (``clip_bound``); a bigger one is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import httpx

from ._errors import short_text
from ._http import HTTPProvider
from ._streams import clip_bound, json_object, member, read_body
from .base import (
    AudioFormat,
    ProviderConfig,
    ProviderConnectionError,
    ProviderHTTPError,
    ProviderProtocolError,
    SynthesisJob,
)
from .emotions import EMOTION_INSTRUCTIONS
from .wav import strip_riff

_AUDIO_CONFIG = ("speakingRate", "pitch", "volumeGainDb")
#: A voice name that starts with a BCP-47 locale: ``en-US-Neural2-F``, ``cmn-CN-Wavenet-A``.
_LOCALE_VOICE = re.compile(r"([a-z]{2,3}-(?:[A-Z]{2}|[0-9]{3}))-")
DEFAULT_LANGUAGE = "en-US"


SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class GoogleProvider(HTTPProvider):
    """Google Cloud Text-to-Speech."""

    type_name = "google"
    settings_keys: ClassVar[frozenset[str]] = frozenset({"api_key", "credentials_file", "base_url"})
    required_settings: ClassVar[frozenset[str]] = frozenset()
    default_base_url = "https://texttospeech.googleapis.com"
    max_text = 5000
    whole_clip = True
    answer_types = ("application/json",)

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._credentials: Any = None
        path = config.settings.get("credentials_file")
        if path:
            from google.oauth2 import service_account

            self._credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                str(path), scopes=[SCOPE]
            )
            self._token_client = httpx.Client(timeout=config.timeout.first_byte)

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        path = settings.get("credentials_file")
        if "api_key" not in settings and not path:  # an empty key is warned about at start
            return [("api_key", "give an api_key or a service-account credentials_file")]
        if path:
            try:
                import google.oauth2.service_account  # noqa: F401
            except ImportError:
                return [
                    ("credentials_file", "needs google-auth: pip install 'tts-gateway[google]'")
                ]
            problem = _credentials_problem(str(path))
            if problem:
                return [("credentials_file", problem)]
        return []

    async def aclose(self) -> None:
        await super().aclose()
        if self._credentials is not None:
            self._token_client.close()

    async def stream(self, job: SynthesisJob) -> AsyncGenerator[bytes, None]:
        if self._credentials is not None and not self._credentials.valid:
            # google-auth refreshes synchronously: off the event loop.
            await asyncio.to_thread(self._refresh)
        async for chunk in super().stream(job):
            yield chunk

    def _refresh(self) -> None:
        from google.auth.exceptions import RefreshError, TransportError

        try:
            self._credentials.refresh(_TokenRequest(self._token_client))
        except TransportError as exc:
            raise ProviderConnectionError(self.name, f"token endpoint: {exc}") from exc
        except RefreshError as exc:
            raise ProviderHTTPError(
                self.name, 401, f"service-account token refused: {exc}"
            ) from exc

    @property
    def secrets(self) -> tuple[str, ...]:
        credentials = getattr(self, "_credentials", None)  # None until __init__ has run
        token = credentials.token if credentials is not None else None
        if isinstance(token, str) and len(token) >= 4:  # the OAuth token of the hour
            return (token, *super().secrets)
        return super().secrets

    def text_size(self, text: str) -> int:
        return len(text.encode("utf-8"))

    def native_format(self, job: SynthesisJob) -> AudioFormat:
        return AudioFormat(sample_rate=job.sample_rate)

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        options = dict(job.options)
        locale = _LOCALE_VOICE.match(job.voice)
        language = options.get("languageCode") or (locale[1] if locale else DEFAULT_LANGUAGE)
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
        body = {"input": source, "voice": voice, "audioConfig": audio_config}
        url = f"{self.base_url}/v1/text:synthesize"
        if self._credentials is not None:
            token = f"Bearer {self._credentials.token}"
            return self.client.build_request(
                "POST", url, json=body, headers={"Authorization": token}
            )
        return self.client.build_request(
            "POST", url, json=body, headers={"X-Goog-Api-Key": self.api_key}
        )

    async def audio(
        self, response: httpx.Response, job: SynthesisJob, text: str
    ) -> AsyncIterator[bytes]:
        body = await read_body(response, self.name, clip_bound(text, job.sample_rate))
        found = _AUDIO_CONTENT.search(body)
        if found is not None:
            # The usual reply, {"audioContent": "<base64>"}: decoded piece by piece, off a
            # full JSON parse, so that a long clip (tens of MB) never holds the event loop.
            end = body.find(b'"', found.end())
            if end < 0:
                raise ProviderProtocolError(self.name, "a truncated audioContent")
            first = True
            for start in range(found.end(), end, _DECODE_PIECE):
                try:
                    audio = base64.b64decode(
                        body[start : min(start + _DECODE_PIECE, end)], validate=True
                    )
                except (binascii.Error, ValueError):
                    raise ProviderProtocolError(self.name, "undecodable audioContent") from None
                if first:
                    audio, first = strip_riff(audio), False
                if audio:
                    yield audio
                await asyncio.sleep(0)  # let the other streams have the loop between pieces
            return
        reply = json_object(body, self.name)
        error = reply.get("error")
        if error:  # Google's error shape, inside a success status
            raise ProviderHTTPError(
                self.name,
                200,
                short_text(member(reply, "error", "message") or error),
                code=member(reply, "error", "status") or member(reply, "error", "code"),
                retryable=False,
            )
        encoded = reply.get("audioContent")
        if not isinstance(encoded, str) or not encoded:
            raise ProviderProtocolError(self.name, "no audioContent in the reply")
        try:
            audio = strip_riff(base64.b64decode(encoded))
        except (binascii.Error, ValueError):
            raise ProviderProtocolError(self.name, "undecodable audioContent") from None
        yield audio


#: Where the audio starts in a reply: the opening quote of audioContent's value.
_AUDIO_CONTENT = re.compile(rb'"audioContent"\s*+:\s*+"')
#: Base64 characters decoded at a time (a multiple of 4): 192 KiB of audio, ~1 ms.
_DECODE_PIECE = 256 * 1024

#: A service-account key file is about 2.3 KB; anything much larger is something else.
_MAX_CREDENTIALS_BYTES = 64 * 1024
_CREDENTIAL_FIELDS = ("client_email", "token_uri", "private_key")


def _credentials_problem(path: str) -> str | None:
    """What makes ``path`` unusable as a service-account key, checked by loading it the way
    the provider will (google-auth, private key included); None if it loads. The messages
    never quote the file's content: it holds a private key."""
    from google.oauth2 import service_account

    file = Path(path)
    if not file.is_file():  # also keeps a FIFO or a device from being read
        return f"no such file: {path!r}"
    try:
        with file.open("rb") as f:
            data = f.read(_MAX_CREDENTIALS_BYTES + 1)
    except OSError as exc:
        return f"cannot read {path!r}: {exc.strerror or exc}"
    if len(data) > _MAX_CREDENTIALS_BYTES:
        return f"{path!r} is over {_MAX_CREDENTIALS_BYTES // 1024} KiB: not a service-account key"
    try:
        info = json.loads(data)
    except (ValueError, RecursionError):
        return f"{path!r} is not JSON: expected a service-account key file"
    if not isinstance(info, dict):
        return f"{path!r} is not a JSON object: expected a service-account key file"
    kind = info.get("type")
    if kind != "service_account":
        shown = repr(kind)[:40] if isinstance(kind, str) else "missing"
        return f"{path!r} is not a service-account key ('type' is {shown}, not 'service_account')"
    missing = [k for k in _CREDENTIAL_FIELDS if not (isinstance(info.get(k), str) and info[k])]
    if missing:
        return f"{path!r} lacks {', '.join(missing)} (needed for a service-account token)"
    try:
        service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])  # type: ignore[no-untyped-call]
    except Exception as exc:  # google-auth and cryptography raise several types
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return f"{path!r}: google-auth cannot load the key: {reason}"
    return None


class _TokenResponse:
    """google-auth's view of an HTTP response."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = dict(response.headers)
        self.data = response.content


class _TokenRequest:
    """google-auth's transport, on httpx (so that the token exchange is mockable like the rest)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _TokenResponse:
        from google.auth.exceptions import TransportError

        try:
            answer = self.client.request(method, url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise TransportError(str(exc)) from exc  # type: ignore[no-untyped-call]
        return _TokenResponse(answer)
