"""``type: custom`` — an upstream that itself speaks the custom TTS interface.

Chains gateways (a regional gateway in front of a central one) and puts a vendor-sample server,
or any in-house engine written to the same contract, behind the routing file. The upstream
answers raw S16LE mono PCM at the ``SampleRate`` it was asked for.

Settings: ``url`` (the upstream's full synthesis URL), ``token`` (sent as ``Token``),
``sample_rates`` (the rates the upstream serves, default all four; the gateway asks for the
closest one and resamples), ``headers`` (extra HTTP headers). ``options`` are added to the JSON
body as extra fields. Emotion is passed on as ``ExtendData.Emotion``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from ._http import HTTPProvider
from .base import SAMPLE_RATES, AudioFormat, ProviderConfig, SynthesisJob, closest_rate


class CustomProvider(HTTPProvider):
    """An upstream custom-TTS-interface server."""

    type_name = "custom"
    settings_keys: ClassVar[frozenset[str]] = frozenset({"url", "token", "sample_rates", "headers"})
    required_settings: ClassVar[frozenset[str]] = frozenset({"url"})

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        settings = config.settings
        self.url = httpx.URL(str(settings["url"]))  # parsed once, not per request
        self.token: str | None = settings.get("token") or None
        self.rates = tuple(int(r) for r in settings.get("sample_rates") or SAMPLE_RATES)
        self.headers = {str(k): str(v) for k, v in (settings.get("headers") or {}).items()}

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
        headers = settings.get("headers")
        if headers is not None and not isinstance(headers, dict):
            problems.append(("headers", "must be a mapping of header names to values"))
        return problems

    def native_format(self, job: SynthesisJob) -> AudioFormat:
        return AudioFormat(sample_rate=closest_rate(job.sample_rate, self.rates))

    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        extend = dict(job.extend_data)
        if job.emotion:
            extend["Emotion"] = job.emotion
        body: dict[str, Any] = dict(job.options)
        body.update(
            Text=text,
            VoiceId=job.voice,
            SampleRate=self.native_format(job).sample_rate,
            ExtendData=json.dumps(extend, ensure_ascii=False),
        )
        if self.token:
            body["Token"] = self.token
        headers = dict(self.headers)
        if job.request_id:
            headers["X-Request-Id"] = job.request_id
        return self.client.build_request("POST", self.url, json=body, headers=headers)
