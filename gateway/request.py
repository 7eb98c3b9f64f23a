"""The custom TTS interface's request: body parsing, the tolerant ExtendData reader, validation.

The workflow posts ``Text``, ``VoiceId``, ``SampleRate``, ``Token`` and ``ExtendData`` as JSON
(the vendor text also says "form data", so urlencoded and multipart forms are read too).
``ExtendData`` is documented as a string holding a JSON object, but the vendor's own example is
single-quoted and missing a quote: it is salvaged, never a reason to fail a synthesis.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from providers.base import SAMPLE_RATES

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

log = logging.getLogger("gateway.request")

#: The fields of ExtendData that go into the request's log line.
LOGGED_EXTEND_FIELDS = ("InstanceId", "ChannelId", "SentenceId", "Emotion")


@dataclass(frozen=True, slots=True)
class TTSRequest:
    """A validated synthesis request."""

    text: str
    sample_rate: int
    voice_id: str = ""
    token: str | None = None
    extend_data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def emotion(self) -> str | None:
        """``ExtendData.Emotion`` lower-cased, or ``None`` when absent or empty."""
        value = self.extend_data.get("Emotion")
        if isinstance(value, str) and value.strip():
            return value.strip().lower()
        return None

    def log_fields(self) -> dict[str, Any]:
        """What ExtendData told us, for the log line (never the text or the token)."""
        return {k: self.extend_data[k] for k in LOGGED_EXTEND_FIELDS if k in self.extend_data}


def parse_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """Decode a JSON or urlencoded body into a flat dict of fields.

    Multipart bodies are handled by the caller (they need Starlette's parser); this takes the
    two cheap cases. A missing content type is sniffed: the vendor's sample client and many
    scripts send JSON without saying so.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    looks_json = body.lstrip()[:1] in (b"{", b"[")
    if media in ("", "application/octet-stream") or (
        # `curl -d '{...}'` labels JSON as a form; no real form body starts with a brace.
        media == "application/x-www-form-urlencoded" and looks_json
    ):
        media = "application/json" if looks_json else "application/x-www-form-urlencoded"
    if media == "application/json" or media.endswith("+json"):
        if not body.strip():
            raise BadRequest(
                "body is empty; send a JSON object with Text and SampleRate", code="malformed_body"
            )
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:  # also bad UTF-8, huge ints, deep nesting
            raise BadRequest(f"body is not valid JSON: {exc}", code="malformed_body") from None
        if not isinstance(data, dict):
            raise BadRequest("body must be a JSON object", code="malformed_body")
        return data
    if media == "application/x-www-form-urlencoded":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("form body is not UTF-8", code="malformed_body") from None
        return dict(parse_qsl(text, keep_blank_values=True))
    raise UnsupportedMediaType(
        f"Content-Type {media!r} is not supported; send application/json or a form",
        field="Content-Type",
    )


def field_value(data: Mapping[str, Any], name: str) -> Any:
    """A field of the body: exact name first, then any capitalisation (``text``)."""
    if name in data:
        return data[name]
    lowered = name.lower()
    for key, value in data.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return None


def validate(data: Mapping[str, Any], *, max_text_chars: int) -> TTSRequest:
    """Check the fields of a decoded body; raise ``BadRequest`` / ``PayloadTooLarge``."""
    text = field_value(data, "Text")
    if text is None:
        raise BadRequest("Text is required", field="Text", code="missing_field")
    if not isinstance(text, str):
        raise BadRequest("Text must be a string", field="Text", code="invalid_field")
    if not text.strip():
        raise BadRequest("Text is empty", field="Text", code="empty_text")
    if not any(ch.isalnum() for ch in text):
        # Punctuation or symbols only: no voice can speak it, so it is the caller's mistake,
        # not a provider failure to retry and fail over.
        raise BadRequest("Text has nothing to speak", field="Text", code="empty_text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("Text is not valid Unicode", field="Text", code="invalid_field") from None
    if len(text) > max_text_chars:
        raise PayloadTooLarge(
            f"Text has {len(text)} characters; the limit is {max_text_chars}", field="Text"
        )

    raw_rate = field_value(data, "SampleRate")
    if raw_rate is None or raw_rate == "":
        raise BadRequest("SampleRate is required", field="SampleRate", code="missing_field")
    rate = _as_int(raw_rate)
    if rate not in SAMPLE_RATES:
        allowed = ", ".join(str(r) for r in SAMPLE_RATES)
        raise BadRequest(
            f"SampleRate must be one of {allowed} (got {raw_rate!r})",
            field="SampleRate",
            code="invalid_sample_rate",
        )

    voice_id = field_value(data, "VoiceId")
    if voice_id is None:
        voice_id = ""
    elif isinstance(voice_id, int | float) and not isinstance(voice_id, bool):
        voice_id = str(voice_id)
    elif not isinstance(voice_id, str):
        raise BadRequest("VoiceId must be a string", field="VoiceId", code="invalid_field")

    token = field_value(data, "Token")
    if token is not None and not isinstance(token, str):
        token = str(token)

    return TTSRequest(
        text=text,
        sample_rate=rate,
        voice_id=voice_id.strip(),
        token=token,
        extend_data=parse_extend_data(field_value(data, "ExtendData")),
    )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                as_float = float(value.strip())
            except ValueError:
                return None
            return int(as_float) if as_float.is_integer() else None
    return None


# A key (quoted or not, or missing its opening quote) followed by a quoted or bare value. The
# value alternatives consume whole quoted strings, so quotes nested inside a value (UserData
# holding JSON) are never mistaken for keys.
_PAIR = re.compile(
    r"""['"]?(?P<key>[A-Za-z_][\w-]*)['"]?\s*:\s*
        (?: '(?P<sq>[^']*)' | "(?P<dq>(?:[^"\\]|\\.)*)" | (?P<bare>[^,}\s]+) )""",
    re.VERBOSE,
)


def parse_extend_data(value: Any) -> dict[str, Any]:
    """Read ExtendData however it came: a JSON string, an object, a Python-style dict literal,
    the vendor's broken example, empty or absent. Never raises; salvages what it can. The
    result holds JSON values only (it is passed on to upstreams)."""
    try:
        if isinstance(value, Mapping):
            parsed: dict[str, Any] = {str(k): v for k, v in value.items()}
        elif isinstance(value, str):
            parsed = _parse_extend_string(value.strip())
        else:
            return {}
        parsed = json.loads(json.dumps(parsed, default=str, allow_nan=False))
    except Exception:  # hostile input of any kind: keep nothing rather than fail
        log.info("ExtendData could not be read; ignored")
        return {}
    sentence = parsed.get("SentenceId")
    if isinstance(sentence, str) and _SENTENCE_ID.fullmatch(sentence.strip()):
        parsed["SentenceId"] = int(sentence.strip())
    return parsed


_SENTENCE_ID = re.compile(r"-?[0-9]{1,18}")


def _parse_extend_string(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError:
        loaded = None
    if isinstance(loaded, dict):
        return {str(k): v for k, v in loaded.items()}
    if isinstance(loaded, str):  # JSON-encoded twice
        return _parse_extend_string(loaded.strip()) if loaded.strip() != text else {}
    try:
        literal = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        literal = None
    if isinstance(literal, dict):
        return {str(k): v for k, v in literal.items()}
    salvaged: dict[str, Any] = {}
    for match in _PAIR.finditer(text):
        key = match.group("key")
        if match.group("sq") is not None:
            salvaged[key] = match.group("sq")
        elif match.group("dq") is not None:
            salvaged[key] = match.group("dq")
        else:
            bare = match.group("bare").strip("'\"")
            salvaged[key] = _bare_value(bare)
    return salvaged


def _bare_value(text: str) -> Any:
    if _SENTENCE_ID.fullmatch(text):
        return int(text)
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    return text
