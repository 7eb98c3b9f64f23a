"""The custom TTS interface's request: body parsing, the fields, validation, the token.

The workflow posts ``Text``, ``VoiceId``, ``SampleRate``, ``Token`` and ``ExtendData`` as JSON
(the vendor text also says "form data", so urlencoded and multipart forms are read too).
``ExtendData`` is documented as a string holding a JSON object, but the vendor's own example is
single-quoted and missing a quote: it is salvaged (:mod:`gateway.extend_data`), never a reason
to fail a synthesis.

Everything here reads caller bytes on the event loop, before anything else does, so every step
costs time linear in its input: a fixed number of passes in C (``json``, possessive regexes that
cannot backtrack, ``str`` methods), and Python loops that do a constant amount of work per item
(body keys, form fields, ExtendData tokens), with the ones that have no natural bound capped
(form fields, ExtendData tokens). ``bench/hostile_parse.py`` times each step on hostile input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from providers.base import SAMPLE_RATES

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from .extend_data import parse_extend_data

__all__ = [
    "LOGGED_EXTEND_FIELDS",
    "LOG_VALUE_CHARS",
    "MAX_FORM_FIELDS",
    "MAX_VOICE_ID_CHARS",
    "TTSRequest",
    "field_value",
    "loggable",
    "parse_body",
    "parse_extend_data",
    "printable_excerpt",
    "request_token",
    "validate",
]

#: The fields of ExtendData that go into the request's log line.
LOGGED_EXTEND_FIELDS = ("InstanceId", "ChannelId", "SentenceId", "Emotion")

#: The most characters of one caller-supplied value that a log line shows.
LOG_VALUE_CHARS = 128

#: The longest VoiceId accepted. Real voice names are far shorter (``zh-CN-XiaoxiaoNeural``,
#: MiniMax's ``Chinese (Mandarin)_Reliable_Executive``, 32-36 character ids of cloned voices);
#: 128 leaves room for any of them with a prefix, and bounds what a VoiceId costs in a log line,
#: the ``X-Voice`` header and the pattern scan.
MAX_VOICE_ID_CHARS = 128

#: The most fields a urlencoded form may have; the interface has five.
MAX_FORM_FIELDS = 100

_FIELDS = ("Text", "SampleRate", "VoiceId", "Token", "ExtendData")


@dataclass(frozen=True, slots=True)
class TTSRequest:
    """A validated synthesis request."""

    text: str
    sample_rate: int
    voice_id: str = ""
    token: str | None = None
    extend_data: Mapping[str, Any] = field(default_factory=dict)
    instructions: str | None = None
    """How to speak (the OpenAI door's ``instructions``), for providers that take a prompt."""

    @property
    def emotion(self) -> str | None:
        """``ExtendData.Emotion`` lower-cased, or ``None`` when absent or empty."""
        value = self.extend_data.get("Emotion")
        if isinstance(value, str) and value.strip():
            return value.strip().lower()
        return None

    def log_fields(self) -> dict[str, Any]:
        """What ExtendData told us, for the log line (never the text or the token), each value
        made safe for a log line by :func:`loggable`."""
        return {
            key: loggable(self.extend_data[key])
            for key in LOGGED_EXTEND_FIELDS
            if key in self.extend_data
        }


def printable_excerpt(text: str, limit: int = LOG_VALUE_CHARS) -> str:
    """``text`` made safe to write into one log line or a header: its first ``limit``
    characters, followed by ``...(+N chars)`` when ``N`` more were cut, with every character
    that is not printable (C0 and C1 controls, DEL, line and paragraph separators, format
    characters such as bidi overrides, lone surrogates) written as its Python escape
    (``\\n``, ``\\x01``, ``\\u202e``), so the result is one line of printable text."""
    head = text[:limit]
    if not head.isprintable():
        head = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in head)
    if len(text) > limit:
        head += f"...(+{len(text) - limit} chars)"
    return head


def loggable(value: Any, limit: int = LOG_VALUE_CHARS) -> Any:
    """A caller-supplied value as a log line may show it: ``None``, booleans, floats and short
    integers as they are; anything else as text (containers as JSON) through
    :func:`printable_excerpt`."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        try:
            text = str(value)
        except ValueError:  # over Python's limit on digits
            text = hex(value)
        if len(text) <= limit:
            return value
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (ValueError, TypeError, RecursionError):
            text = f"<{type(value).__name__}>"
    return printable_excerpt(text, limit)


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
        return _parse_form(body)
    raise UnsupportedMediaType(
        f"Content-Type {media!r} is not supported; send application/json or a form",
        field="Content-Type",
    )


def _parse_form(body: bytes) -> dict[str, Any]:
    """A urlencoded form as ``dict(parse_qsl(..., keep_blank_values=True))`` reads it, but
    decoded as bytes: ``parse_qsl`` on text makes one Python call per run of raw non-ASCII
    characters (which ``curl -d`` sends as they are), several times slower on hostile input.
    Each field costs a few Python calls, so their number is capped."""
    if body.count(b"&") >= MAX_FORM_FIELDS:
        raise BadRequest(f"form has more than {MAX_FORM_FIELDS} fields", code="malformed_body")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("form body is not UTF-8", code="malformed_body") from None
    fields: dict[str, Any] = {}
    for pair in body.split(b"&"):
        if pair:
            name, _, value = pair.partition(b"=")
            fields[_form_text(name)] = _form_text(value)
    return fields


def _form_text(part: bytes) -> str:
    return unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8", "replace")


def field_value(data: Mapping[str, Any], name: str) -> Any:
    """A field of the body: exact name first, then any capitalisation (``text``)."""
    if name in data:
        return data[name]
    lowered = name.lower()
    for key, value in data.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return None


def _interface_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The interface's fields of a body, looked up as :func:`field_value` does, in one pass
    over the body's keys however many there are."""
    found = {name: data[name] for name in _FIELDS if name in data}
    if len(found) == len(data):
        return found  # every key is a field's exact name: no other key to look at
    wanted = {name.lower(): name for name in _FIELDS if name not in found}
    if wanted:
        for key, value in data.items():
            if isinstance(key, str):
                name = wanted.get(key.lower())
                if name is not None and name not in found:
                    found[name] = value
    return found


def request_token(data: Mapping[str, Any], bearer: str | None) -> str | None:
    """The token a synthesis request presents: the body's ``Token`` when it has one, else the
    ``Authorization: Bearer`` header's; ``None`` when neither does.

    The body wins because ``Token`` is the interface's own field: the workflow copies its token
    into every request body, and a caller that sends both means the body's. An empty or
    blank body ``Token`` counts as absent: it is what a workflow without a token sends, and it
    must not hide a header that a script or a proxy in front added. A non-string body token is
    read as its ``str()`` (``123`` is ``"123"``); neither token is otherwise altered.
    """
    value = field_value(data, "Token")
    token = None if value is None else value if isinstance(value, str) else str(value)
    if token is not None and token.strip():
        return token
    if bearer is not None and bearer.strip():
        return bearer.strip()
    return None


def validate(data: Mapping[str, Any], *, max_text_chars: int) -> TTSRequest:
    """Check the fields of a decoded body; raise ``BadRequest`` / ``PayloadTooLarge``."""
    fields = _interface_fields(data)
    text = _text(fields.get("Text"), max_text_chars)

    raw_rate = fields.get("SampleRate")
    if raw_rate is None or raw_rate == "":
        raise BadRequest("SampleRate is required", field="SampleRate", code="missing_field")
    rate = _as_int(raw_rate)
    if rate not in SAMPLE_RATES:
        allowed = ", ".join(str(r) for r in SAMPLE_RATES)
        raise BadRequest(
            f"SampleRate must be one of {allowed} (got {printable_excerpt(repr(raw_rate), 40)})",
            field="SampleRate",
            code="invalid_sample_rate",
        )

    return TTSRequest(
        text=text,
        sample_rate=rate,
        voice_id=_voice_id(fields.get("VoiceId")),
        token=request_token(fields, None),
        extend_data=parse_extend_data(fields.get("ExtendData")),
    )


#: Line breaks of every kind, kept as one ``\n`` per run: a voice's text shaping reads
#: Markdown, which is line-based; a voice without shaping gets them (and tabs) as spaces
#: (:meth:`gateway.routing.ChainStep.shape`).
_TEXT_BREAKS = re.compile(r"[\n\v\f\r\x1c-\x1e\x85\u2028\u2029]+")
#: The other C0 and C1 controls and DEL: nothing a voice can speak, and some upstreams fail on
#: them. Format characters (ZWJ, variation selectors, bidi marks) stay: scripts and emoji need
#: them.
_TEXT_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]+")
#: A letter or digit of any script (``\w`` without the underscore): something to speak.
_SPEAKABLE = re.compile(r"[^\W_]")


def _text(value: Any, max_text_chars: int) -> str:
    """``Text`` as the voices get it: line breaks of every kind as ``\n`` (a voice reads them
    as spaces, or as Markdown's line ends when it shapes its text), other control characters
    dropped. A text that is blank or left with nothing to speak (punctuation,
    symbols or controls only) is the caller's mistake, a 400, not a provider failure to retry
    and fail over. The length limit applies to the text as sent, before anything is dropped."""
    if value is None:
        raise BadRequest("Text is required", field="Text", code="missing_field")
    if not isinstance(value, str):
        raise BadRequest("Text must be a string", field="Text", code="invalid_field")
    if not value.strip():
        raise BadRequest("Text is empty", field="Text", code="empty_text")
    if len(value) > max_text_chars:
        raise PayloadTooLarge(
            f"Text has {len(value)} characters; the limit is {max_text_chars}", field="Text"
        )
    # Printable ASCII has no line break, no control character, nothing that is not UTF-8.
    plain = value.isascii() and value.isprintable()
    text = value if plain else _TEXT_CONTROLS.sub("", _TEXT_BREAKS.sub("\n", value))
    if not _SPEAKABLE.search(text):
        raise BadRequest("Text has nothing to speak", field="Text", code="empty_text")
    if not plain:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(
                "Text is not valid Unicode", field="Text", code="invalid_field"
            ) from None
    return text


def _voice_id(value: Any) -> str:
    """``VoiceId`` as routing sees it: surrounding whitespace stripped; empty when absent.

    A voice name is printable text of at most :data:`MAX_VOICE_ID_CHARS` characters: letters
    and digits of any script (Chinese voice names included), punctuation such as ``-_.:@/()``
    and spaces inside the name (MiniMax's system voices have them). Anything that cannot be a
    voice name is a 400 naming ``VoiceId`` before any routing: control characters (C0, C1,
    DEL, CR/LF), line and paragraph separators, other whitespace than the space, format
    characters (bidi overrides, zero-width characters), lone surrogates, unassigned code points.
    Such a VoiceId would otherwise go on into the ``X-Voice`` header, the log line and an
    upstream's request.
    """
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        voice_id = str(value)
    elif isinstance(value, str):
        voice_id = value.strip()
    else:
        raise BadRequest("VoiceId must be a string", field="VoiceId", code="invalid_field")
    if len(voice_id) > MAX_VOICE_ID_CHARS:
        raise BadRequest(
            f"VoiceId has {len(voice_id)} characters; a voice name has at most "
            f"{MAX_VOICE_ID_CHARS}",
            field="VoiceId",
            code="invalid_field",
        )
    if not voice_id.isprintable():
        raise BadRequest(
            "VoiceId must be printable text: no control, line-break or invisible characters",
            field="VoiceId",
            code="invalid_field",
        )
    return voice_id


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        value = value.strip()
        if len(value) > 32:  # no sample rate is this long; int() of 4000 digits is slow
            return None
        try:
            return int(value)
        except ValueError:
            try:
                as_float = float(value)
            except ValueError:
                return None
            return int(as_float) if as_float.is_integer() else None
    return None
