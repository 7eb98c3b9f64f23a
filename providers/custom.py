"""``type: custom`` — an upstream that itself speaks the custom TTS interface.

Chains gateways (a regional gateway in front of a central one) and puts a vendor-sample server,
or any in-house engine written to the same contract, behind the routing file. The upstream
answers raw S16LE mono PCM at the ``SampleRate`` it was asked for.

Settings: ``url`` (the upstream's full synthesis URL), ``token`` (sent as ``Token``),
``sample_rates`` (the rates the upstream serves, default all four; the gateway asks for the
closest one and resamples), ``headers`` (extra HTTP headers; the values of those named like
a credential, such as ``Authorization`` or ``X-Api-Key``, are secrets, masked in every log
line), ``whole_clip`` (true for an upstream that sends each answer only once it is whole, such
as a file: the text is then sent in pieces, the first sentence alone and the next piece asked for
while the current one plays; default false). ``options`` are added to the JSON body as extra
fields. Emotion is passed on as ``ExtendData.Emotion``. A success answer must be audio
(``audio/*``, ``application/octet-stream`` or no type at all): a JSON, text or HTML answer is the
upstream's error, not sound.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Final

import httpx

from ._errors import short_text
from ._http import HTTPProvider, JSONPosts
from .base import (
    SAMPLE_RATES,
    AudioFormat,
    ProviderConfig,
    ProviderProtocolError,
    SynthesisJob,
    closest_rate,
    is_secret_name,
)

#: An HTTP header name (RFC 9110 token) and a value that cannot end the header early.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")


#: ExtendData's fields that name a call and a sentence, not how to speak.
_CALL_FIELDS = frozenset({"InstanceId", "ChannelId", "SentenceId"})
#: ``json.dumps(..., ensure_ascii=False)``'s encoder, made once rather than per request.
_EXTEND_JSON: Final = json.JSONEncoder(ensure_ascii=False)


class CustomProvider(HTTPProvider):
    """An upstream custom-TTS-interface server."""

    type_name = "custom"
    settings_keys: ClassVar[frozenset[str]] = frozenset(
        {"url", "token", "sample_rates", "headers", "whole_clip"}
    )
    required_settings: ClassVar[frozenset[str]] = frozenset({"url"})

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        settings = config.settings
        self.url = httpx.URL(str(settings["url"]))  # parsed once, not per request
        if self.url.password:  # https://user:secret@host/...
            self.add_secret(self.url.password)
        for name, value in self.url.params.multi_items():  # ...?api_key=secret
            if is_secret_name(name):
                self.add_secret(value)
        self.token: str | None = settings.get("token") or None
        self.rates = tuple(int(r) for r in settings.get("sample_rates") or SAMPLE_RATES)
        self._formats = {
            rate: AudioFormat(sample_rate=closest_rate(rate, self.rates)) for rate in SAMPLE_RATES
        }
        self.headers = {str(k): str(v) for k, v in (settings.get("headers") or {}).items()}
        #: The upstream sends each answer only once it is whole (a file, not a stream).
        self.clips = settings.get("whole_clip") is True
        #: The requests' builder, made at the first request (for the client then in use).
        self._posts: JSONPosts | None = None
        for name, value in self.headers.items():
            if is_secret_name(name):
                self.add_secret(value)
                scheme, _, credential = value.partition(" ")  # "Bearer <token>"
                if credential and scheme.isalpha():
                    self.add_secret(credential.strip())

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        url = settings.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            problems.append(("url", "must be an http:// or https:// URL"))
        rates = settings.get("sample_rates")
        if rates is not None and (
            not isinstance(rates, list)
            or not rates
            or not all(isinstance(r, int) and r in SAMPLE_RATES for r in rates)
        ):
            allowed = ", ".join(map(str, SAMPLE_RATES))
            problems.append(("sample_rates", f"must be a non-empty list of {allowed}"))
        whole_clip = settings.get("whole_clip")
        if whole_clip is not None and not isinstance(whole_clip, bool):
            problems.append(("whole_clip", "must be true or false"))
        headers = settings.get("headers")
        if headers is not None and not isinstance(headers, dict):
            problems.append(("headers", "must be a mapping of header names to values"))
        elif headers:
            for name, value in headers.items():
                if not _HEADER_NAME.fullmatch(str(name)):
                    problems.append(("headers", f"{str(name)[:40]!r} is not a header name"))
                elif not _HEADER_VALUE.fullmatch(str(value)):
                    problems.append(
                        ("headers", f"the value of {name} holds a line break or control character")
                    )
        return problems

    @property
    def answers_whole_clips(self) -> bool:
        return self.clips

    def native_format(self, job: SynthesisJob) -> AudioFormat:
        # Asked several times a request (the request, the answer's check, the converter).
        known = self._formats.get(job.sample_rate)
        if known is not None:
            return known
        return AudioFormat(sample_rate=closest_rate(job.sample_rate, self.rates))

    def cache_facets(self, job: SynthesisJob) -> Mapping[str, Any]:
        # ExtendData goes upstream whole; what names the call and the sentence is not what the
        # audio is made of (and would make every answer a cache miss).
        return {k: v for k, v in job.extend_data.items() if k not in _CALL_FIELDS}

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        extend = dict(job.extend_data)
        if job.emotion:
            extend["Emotion"] = job.emotion
        body: dict[str, Any] = dict(job.options)
        body.update(
            Text=text,
            VoiceId=job.voice,
            SampleRate=self.native_format(job).sample_rate,
            ExtendData=_EXTEND_JSON.encode(extend),
        )
        if self.token:
            body["Token"] = self.token
        posts = self._posts
        if posts is None or posts.client is not self.client:
            posts = self._posts = JSONPosts(self.client, self.url, self.headers)
        return posts.build(body, job.request_id)

    def audio(self, response: httpx.Response, job: SynthesisJob, text: str) -> AsyncIterator[bytes]:
        # An upstream that says it answers at another rate than asked would otherwise be
        # played at the wrong speed and pitch: refuse it (the next voice is tried). Checked
        # before the body is read, and the body handed over unwrapped (a layer fewer per chunk).
        declared = response.headers.get("x-sample-rate")
        asked = self.native_format(job).sample_rate
        if declared is not None and declared.strip() != str(asked):
            raise ProviderProtocolError(
                self.name,
                f"answered at X-Sample-Rate {short_text(declared[:20])!r} "
                f"where {asked} was asked for",
            )
        return super().audio(response, job, text)
