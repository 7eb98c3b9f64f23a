"""``type: cosyvoice`` — Alibaba Cloud CosyVoice over DashScope's WebSocket API.

The only interface is a WebSocket (``wss://dashscope-intl.aliyuncs.com/api-ws/v1/inference``,
China ``wss://dashscope.aliyuncs.com/...``, ``Authorization: bearer <key>``) speaking a small
task protocol: the client sends ``run-task`` (model, voice, ``format: pcm``, sample rate), waits
for ``task-started``, sends the text in ``continue-task`` and then ``finish-task``; the server
streams the audio as *binary* frames, with ``result-generated`` events between them, and ends
with ``task-finished`` — or ``task-failed`` carrying ``error_code`` and ``error_message``.

Settings: ``api_key`` (required), ``url`` (the WebSocket endpoint). Options: ``model``
(default ``cosyvoice-v2``), ``volume``, ``rate``, ``pitch``. Rates: 8000, 16000, 22050, 24000,
44100, 48000 Hz. No emotion control: Emotion is ignored. Uses the ``websockets`` package
(installed with uvicorn[standard]; also the ``tts-gateway[cosyvoice]`` extra).

Every wait for a frame is bounded by the longer of the ``first_byte`` and ``stall`` timeouts
(as an HTTP provider's read), and a frame by :data:`MAX_FRAME_BYTES`; a text frame that is not
a JSON event is a provider error, and a failed task's ``error_code`` is what the caller is shown.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

from ._errors import short_text
from ._streams import json_object, member
from .base import (
    AudioFormat,
    Provider,
    ProviderConfig,
    ProviderConnectionError,
    ProviderError,
    ProviderHTTPError,
    ProviderProtocolError,
    ProviderTimeout,
    SynthesisJob,
    closest_rate,
)

RATES = (8000, 16000, 22050, 24000, 44100, 48000)
DEFAULT_URL = "wss://dashscope-intl.aliyuncs.com/api-ws/v1/inference"
#: task-failed codes worth another attempt.
RETRYABLE_CODES = ("Throttling", "InternalError", "RequestTimeOut")
#: The largest frame accepted: audio frames carry a fraction of a second (a few KiB); 2 MiB is
#: over 20 s of 48 kHz PCM. A bigger frame ends the task (close code 1009) as a provider error.
MAX_FRAME_BYTES = 2 * 1024 * 1024


class CosyVoiceProvider(Provider):
    """CosyVoice, WebSocket task protocol."""

    type_name = "cosyvoice"
    settings_keys: ClassVar[frozenset[str]] = frozenset({"api_key", "url"})
    required_settings: ClassVar[frozenset[str]] = frozenset({"api_key"})

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.api_key = str(config.settings.get("api_key") or "")
        self.url = str(config.settings.get("url") or DEFAULT_URL)

    def native_format(self, job: SynthesisJob) -> AudioFormat:
        return AudioFormat(sample_rate=closest_rate(job.sample_rate, RATES))

    def _message(self, action: str, task_id: str, payload: dict[str, Any]) -> str:
        header = {"action": action, "task_id": task_id, "streaming": "duplex"}
        return json.dumps({"header": header, "payload": payload}, ensure_ascii=False)

    async def stream(self, job: SynthesisJob) -> AsyncGenerator[bytes, None]:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

        options = dict(job.options)
        model = str(options.pop("model", "cosyvoice-v2"))
        parameters: dict[str, Any] = {"text_type": "PlainText", "voice": job.voice}
        parameters.update(options)
        parameters.update(format="pcm", sample_rate=self.native_format(job).sample_rate)
        task = uuid.uuid4().hex
        gap = max(self.config.timeout.first_byte, self.config.timeout.stall)
        try:
            async with connect(
                self.url,
                additional_headers={"Authorization": f"bearer {self.api_key}"},
                open_timeout=self.config.timeout.connect,
                max_size=MAX_FRAME_BYTES,
            ) as socket:
                await socket.send(
                    self._message(
                        "run-task",
                        task,
                        {
                            "task_group": "audio",
                            "task": "tts",
                            "function": "SpeechSynthesizer",
                            "model": model,
                            "parameters": parameters,
                            "input": {},
                        },
                    )
                )
                started = False
                while True:
                    try:
                        async with asyncio.timeout(gap):
                            frame = await socket.recv()
                    except TimeoutError:
                        raise ProviderTimeout(self.name, f"no frame within {gap:g} s") from None
                    if isinstance(frame, bytes):
                        if frame:
                            yield frame
                        continue
                    event = member(json_object(frame, self.name), "header")
                    kind = member(event, "event") if isinstance(event, dict) else None
                    if kind == "task-started" and not started:
                        started = True
                        await socket.send(
                            self._message("continue-task", task, {"input": {"text": job.text}})
                        )
                        await socket.send(self._message("finish-task", task, {"input": {}}))
                    elif kind == "task-finished":
                        return
                    elif kind == "task-failed":
                        assert isinstance(event, dict)
                        code = str(event.get("error_code", ""))
                        raise ProviderError(
                            self.name,
                            f"{short_text(code)}: {short_text(event.get('error_message', ''))}",
                            code=code,
                            retryable=code.startswith(RETRYABLE_CODES),
                        )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ProviderHTTPError(self.name, status, "WebSocket handshake refused") from exc
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == 1009:  # we refused an oversized frame
                raise ProviderProtocolError(
                    self.name, f"a frame over {MAX_FRAME_BYTES // (1024 * 1024)} MiB"
                ) from exc
            raise ProviderConnectionError(self.name, "the connection closed mid-task") from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ProviderConnectionError(self.name, f"{type(exc).__name__}: {exc}") from exc
