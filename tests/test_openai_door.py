"""The OpenAI-compatible door (``POST /v1/audio/speech``, ``GET /v1/models``) with the official
``openai`` package as the client, against a real gateway on loopback over loopback upstreams:
every response format decoded (PyAV) and checked against the tone the upstream sent (rate,
length, pitch), speed, voice and model, instructions, the error shape and the client's
exception types, tokens and tenants, the phrase cache, a caller hanging up, and the first
encoded bytes leaving before the upstream has finished."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import av
import httpx
import httpx2
import numpy as np
import openai
import pytest
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.config import parse_config
from gateway.encode import FORMATS, SLICE_SAMPLES, StreamEncoder
from tests.answering_upstream import metric, scrape
from tests.scripted_upstream import HEAD, HOLD, Fail, ScriptedUpstream, Signal, Step, custom_block
from tests.support import live_server, log_line, peak_frequency, scripted_config, tone

RATE = 24000
TOKEN = "sk-gateway-acme"
FREQ = 440.0
CHUNK = tone(FREQ, 0.1, RATE)  # 100 ms
AUDIO_CHUNKS = [CHUNK] * 12  # 1.2 s
AUDIO_SECONDS = len(CHUNK) * len(AUDIO_CHUNKS) / 2 / RATE

#: Samples (at the rate the format decodes to) by which a decoded answer may be longer than
#: the PCM: MP3 and AAC decoders keep the encoder's priming and the last frame's padding
#: (no gapless header on a stream), at most two frames; the others are exact.
SLACK = {"mp3": 2 * 1152, "aac": 2 * 1024}


def app_for(
    upstream: ScriptedUpstream, *, server: dict[str, Any] | None = None, **provider: Any
) -> Starlette:
    """Voices ``joe`` (cached) and ``ann`` on the upstream, a pattern ``en-*``; one named
    token; unknown voices rejected."""
    settings: dict[str, Any] = {
        "tokens": [{"name": "acme", "token": TOKEN}],
        "unknown_voice": "reject",
        **(server or {}),
    }
    yaml = scripted_config(
        voices={
            "joe": {"provider": "up", "cache": True},
            "ann": {"provider": "up"},
            "en-*": {"provider": "up"},
        },
        providers={"up": custom_block(upstream, **provider)},
        **settings,
    )
    return create_app(parse_config(yaml))


@contextlib.asynccontextmanager
async def gateway(
    *replies: Sequence[Step], server: dict[str, Any] | None = None, **provider: Any
) -> AsyncIterator[tuple[str, ScriptedUpstream, openai.AsyncOpenAI]]:
    """A gateway over a scripted upstream (``replies``, default: the tone), and an async
    OpenAI client for it (no retries: a test sees each answer)."""
    async with (
        ScriptedUpstream(*(replies or [AUDIO_CHUNKS])) as upstream,
        live_server(app_for(upstream, server=server, **provider)) as url,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0) as client,
    ):
        yield url, upstream, client


async def speak(client: openai.AsyncOpenAI, **fields: Any) -> tuple[httpx2.Headers, bytes]:
    """A streamed speech answer read to its end: its headers and its bytes."""
    body = {"model": "tts-1", "voice": "ann", "input": "Hello there.", **fields}
    async with client.audio.speech.with_streaming_response.create(**body) as response:
        return response.headers, await response.read()


def decode(data: bytes, response_format: str) -> tuple[int, bytes]:
    """The answer's audio as (sample rate, mono S16LE), decoded by FFmpeg (raw ``pcm`` as is)."""
    if response_format == "pcm":
        return RATE, data
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    samples = np.concatenate([f.reshape(-1) for f in frames])
    if samples.dtype.kind == "f":
        samples = np.clip(samples, -1.0, 1.0) * 32767
    return rate, samples.astype("<i2").tobytes()


def check_tone(data: bytes, response_format: str, seconds: float) -> None:
    """``data`` decodes to ``seconds`` of the 440 Hz tone at the format's rate: Opus decodes
    at 48 kHz (its header keeps the 24 kHz it was given), the others at 24 kHz."""
    rate, pcm = decode(data, response_format)
    if response_format == "opus":
        head = data.index(b"OpusHead")
        assert int.from_bytes(data[head + 12 : head + 16], "little") == RATE
        assert rate == 48000
    else:
        assert rate == RATE
    expected = round(seconds * rate)
    extra = len(pcm) // 2 - expected
    assert 0 <= extra <= SLACK.get(response_format, 0), (len(pcm) // 2, expected)
    assert abs(peak_frequency(pcm, rate) - FREQ) < 2.0


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("response_format", list(FORMATS))
async def test_every_format_decodes_to_the_tone_the_upstream_sent(response_format: str) -> None:
    async with gateway() as (url, upstream, _):
        # The synchronous client, as most callers use it (in a thread: the gateway runs here).
        def speak() -> tuple[dict[str, str], bytes]:
            with (
                openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0) as client,
                client.audio.speech.with_streaming_response.create(
                    model="tts-1",
                    voice="ann",
                    input="Hello there.",
                    response_format=response_format,  # type: ignore[arg-type]
                ) as response,
            ):
                return dict(response.headers), response.read()

        headers, data = await asyncio.to_thread(speak)
    assert headers["content-type"] == FORMATS[response_format].content_type
    assert headers["x-voice"] == "ann"
    assert headers["x-request-id"]
    check_tone(data, response_format, AUDIO_SECONDS)
    if response_format == "wav":  # streamed: the sizes say "unknown length"
        assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff"
    assert upstream.exchanges[0].body["Text"] == "Hello there."
    assert upstream.exchanges[0].body["SampleRate"] == RATE


async def test_mp3_is_the_default_format() -> None:
    async with gateway() as (_, _, client):
        headers, data = await speak(client, voice="joe")
    assert headers["content-type"] == "audio/mpeg"
    with av.open(io.BytesIO(data)) as container:
        assert container.format.name == "mp3"
    check_tone(data, "mp3", AUDIO_SECONDS)


@pytest.mark.parametrize(("response_format", "speed"), [("wav", 2.0), ("mp3", 2.0), ("flac", 0.3)])
async def test_speed_changes_the_length_and_keeps_the_pitch(
    response_format: str, speed: float
) -> None:
    async with gateway() as (_, _, client):
        _, data = await speak(client, response_format=response_format, speed=speed)
    rate, pcm = decode(data, response_format)
    # atempo's overlap-add window shortens or lengthens the end a little (within 2 %; the same
    # however the audio is chunked), and MP3 keeps its codec's frames.
    expected = AUDIO_SECONDS / speed
    slack = 0.02 + 0.02 * expected + SLACK.get(response_format, 0) / RATE
    assert abs(len(pcm) / 2 / rate - expected) < slack
    assert abs(peak_frequency(pcm, rate) - FREQ) < 2.0


# ---------------------------------------------------------------- voice, model, instructions


@pytest.mark.parametrize(
    ("voice", "model", "answering"),
    [
        ("ann", "joe", "ann"),  # a routed voice wins over the model
        ("alloy", "joe", "joe"),  # voice not routed, the model is: the model's voice
        ("en-gb", "tts-1", "en-gb"),  # a pattern's match is routed; the model is ignored
        ({"id": "ann"}, "tts-1", "ann"),  # OpenAI's custom-voice object
    ],
)
async def test_voice_is_the_voice_id_and_model_only_stands_in_for_it(
    voice: Any, model: str, answering: str
) -> None:
    async with gateway() as (_, upstream, client):
        headers, _ = await speak(client, model=model, voice=voice, response_format="pcm")
    assert headers["x-voice"] == answering
    assert upstream.exchanges[0].body["VoiceId"] == answering


async def test_instructions_reach_the_openai_provider() -> None:
    """The gateway's OpenAI provider, over a loopback upstream in OpenAI's place, sends the
    caller's ``instructions`` on."""
    async with ScriptedUpstream(AUDIO_CHUNKS) as upstream:
        yaml = scripted_config(
            voices={"nova": {"provider": "oa", "voice": "nova"}},
            providers={
                "oa": {
                    "type": "openai",
                    "api_key": "sk-upstream",
                    "base_url": f"http://127.0.0.1:{upstream.port}/v1",
                    "retry": {"attempts": 1},
                }
            },
            tokens=[TOKEN],
        )
        async with (
            live_server(create_app(parse_config(yaml))) as url,
            openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0) as client,
        ):
            _, data = await speak(
                client,
                model="gpt-4o-mini-tts",
                voice="nova",
                instructions="Speak warmly.",
                response_format="wav",
            )
    check_tone(data, "wav", AUDIO_SECONDS)
    sent = upstream.exchanges[0].body
    assert sent["instructions"] == "Speak warmly."
    assert sent["input"] == "Hello there."
    assert sent["response_format"] == "pcm"


# ---------------------------------------------------------------- errors


async def bad_request(client: openai.AsyncOpenAI, **fields: Any) -> openai.BadRequestError:
    body = {"model": "tts-1", "voice": "ann", "input": "Hello there.", **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.audio.speech.create(**body)
    return caught.value


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"input": ""}, "input", "empty_text"),
        ({"input": "?!"}, "input", "empty_text"),
        ({"input": 42}, "input", "invalid_field"),
        ({"input": "x" * 2001}, "input", "string_above_max_length"),
        ({"speed": 4.5}, "speed", "invalid_field"),
        ({"speed": 0.2}, "speed", "invalid_field"),
        ({"speed": "fast"}, "speed", "invalid_field"),
        ({"speed": True}, "speed", "invalid_field"),
        ({"response_format": "ogg"}, "response_format", "invalid_field"),
        ({"response_format": ["mp3"]}, "response_format", "invalid_field"),
        ({"voice": 12}, "voice", "invalid_field"),
        ({"voice": "a\nb"}, "voice", "invalid_field"),
        ({"model": {"name": "x"}}, "model", "invalid_field"),
        ({"instructions": "x" * 4097}, "instructions", "string_above_max_length"),
        ({"instructions": 3}, "instructions", "invalid_field"),
        ({"stream_format": "sse"}, "stream_format", "invalid_field"),
    ],
)
async def test_bad_fields_are_400_in_openai_shape_naming_the_param(
    fields: dict[str, Any], param: str, code: str
) -> None:
    async with gateway() as (_, upstream, client):
        error = await bad_request(client, **fields)
    assert error.status_code == 400
    assert error.param == param
    assert error.code == code
    assert error.type == "invalid_request_error"
    assert param in error.message
    assert upstream.exchanges == []  # refused before any upstream work


async def test_an_input_over_the_limit_is_logged_and_counted_as_the_400_it_is_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway"):
        async with gateway() as (url, _, client), httpx.AsyncClient() as http:
            error = await bad_request(client, input="x" * 2001)
            page = await scrape(http, url)
    assert error.status_code == 400
    assert metric(page, "tts_requests_total", status="400") == 1
    assert metric(page, "tts_requests_total", status="413") is None
    (line,) = [r.getMessage() for r in caplog.records if "door=openai" in r.getMessage()]
    assert "status=400" in line and "error=string_above_max_length" in line


async def test_a_body_that_is_not_a_json_object_is_400() -> None:
    async with gateway() as (url, _, _), httpx.AsyncClient() as http:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for body in (b"", b"{not json", b"[1, 2]", b'"text"'):
            response = await http.post(f"{url}/v1/audio/speech", content=body, headers=auth)
            assert response.status_code == 400
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "invalid_request_error"


async def test_unknown_fields_are_ignored() -> None:
    async with gateway() as (_, upstream, client):
        _, data = await speak(
            client,
            response_format="pcm",
            extra_body={"temperature": 0.7, "Text": "not this", "stream_format": "audio"},
        )
    check_tone(data, "pcm", AUDIO_SECONDS)
    assert upstream.exchanges[0].body["Text"] == "Hello there."


async def test_a_token_is_required() -> None:
    async with gateway() as (url, upstream, _):
        async with openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0
        ) as client:
            with pytest.raises(openai.AuthenticationError) as caught:
                await client.audio.speech.create(model="tts-1", voice="ann", input="Hello.")
            assert caught.value.status_code == 401
            assert caught.value.code == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()
        async with httpx.AsyncClient() as http:  # no Authorization at all
            body = {"model": "tts-1", "voice": "ann", "input": "Hello."}
            speech = await http.post(f"{url}/v1/audio/speech", json=body)
            models = await http.get(f"{url}/v1/models")
    for response in (speech, models):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert upstream.exchanges == []


async def test_an_unknown_voice_is_404_naming_voice() -> None:
    async with gateway() as (_, upstream, client):
        with pytest.raises(openai.NotFoundError) as caught:
            await client.audio.speech.create(model="tts-1", voice="alloy", input="Hello.")
    assert caught.value.param == "voice"
    assert caught.value.code == "unknown_voice"
    assert upstream.exchanges == []


async def test_every_voice_failing_is_502() -> None:
    async with gateway([Fail(500)]) as (_, _, client):
        with pytest.raises(openai.InternalServerError) as caught:
            await client.audio.speech.create(model="tts-1", voice="ann", input="Hello.")
    assert caught.value.status_code == 502
    assert caught.value.code == "provider_failed"
    assert caught.value.type == "server_error"


async def test_an_upstream_that_never_answers_is_504() -> None:
    async with gateway([HOLD], timeout={"connect": 2, "first_byte": 0.2, "total": 30}) as (
        _,
        upstream,
        client,
    ):
        with pytest.raises(openai.InternalServerError) as caught:
            await client.audio.speech.create(model="tts-1", voice="ann", input="Hello.")
        assert await upstream.all_ended() == ["hung_up"]
    assert caught.value.status_code == 504
    assert caught.value.code == "provider_timeout"


@contextlib.asynccontextmanager
async def one_held(client: openai.AsyncOpenAI) -> AsyncIterator[None]:
    """A speech request whose first audio has arrived, held open for the block."""
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="ann", input="Hold on.", response_format="pcm"
    ) as response:
        parts = response.iter_bytes()  # held: a dropped iterator would close the response
        await asyncio.wait_for(anext(parts), 10)
        yield


async def test_a_full_provider_is_503_provider_busy_with_retry_after() -> None:
    async with gateway([HEAD, CHUNK, HOLD], [CHUNK], max_concurrency=1, queue=0.05) as (
        _,
        upstream,
        client,
    ):
        async with one_held(client):
            with pytest.raises(openai.InternalServerError) as caught:
                await client.audio.speech.create(model="tts-1", voice="ann", input="Hello.")
        assert len(upstream.exchanges) == 1  # the second never reached the upstream
    assert caught.value.status_code == 503
    assert caught.value.code == "provider_busy"
    assert int(caught.value.response.headers["retry-after"]) >= 1


async def test_the_stream_limit_full_is_429() -> None:
    limited = gateway([HEAD, CHUNK, HOLD], server={"max_concurrent_streams": 1})
    async with limited as (_, _, client), one_held(client):
        with pytest.raises(openai.RateLimitError) as caught:
            await client.audio.speech.create(model="tts-1", voice="ann", input="Hello.")
    assert caught.value.status_code == 429
    assert caught.value.code == "too_many_streams"


# ---------------------------------------------------------------- models, off switch


async def test_models_lists_the_routed_voices() -> None:
    async with gateway() as (_, _, client):
        models = [model async for model in client.models.list()]
    assert [m.id for m in models] == ["joe", "ann"]  # no pattern
    assert all(m.object == "model" and m.owned_by == "up" and m.created > 0 for m in models)


async def test_openai_api_false_leaves_the_routes_out() -> None:
    async with (
        gateway(server={"openai_api": False}) as (url, upstream, _),
        httpx.AsyncClient() as http,
    ):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        body = {"model": "tts-1", "voice": "ann", "input": "Hello."}
        speech = await http.post(f"{url}/v1/audio/speech", json=body, headers=auth)
        models = await http.get(f"{url}/v1/models", headers=auth)
    assert (speech.status_code, models.status_code) == (404, 404)
    assert upstream.exchanges == []


# ---------------------------------------------------------------- the same gateway


async def test_the_tenant_door_and_cache_are_the_gateways(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The second identical request is a phrase-cache hit (the upstream asked once), encoded
    like the first; the log line names the door and the tenant."""
    async with gateway() as (url, upstream, client):
        answers = []
        with caplog.at_level(logging.INFO, logger="gateway"):
            for i in range(2):
                async with client.audio.speech.with_streaming_response.create(
                    model="tts-1",
                    voice="joe",
                    input="Thanks for calling.",
                    response_format="flac",
                    extra_headers={"X-Request-Id": f"oa-{i}"},
                ) as response:
                    answers.append((response.headers["x-cache"], await response.read()))
            line = await log_line(caplog, "oa-1")
        async with httpx.AsyncClient() as http:
            page = (await http.get(f"{url}/metrics")).text
    assert [cache for cache, _ in answers] == ["miss", "hit"]
    assert len(upstream.exchanges) == 1
    for _, data in answers:
        check_tone(data, "flac", AUDIO_SECONDS)
    assert "door=openai" in line and "tenant=acme" in line and "cache=hit" in line
    assert 'tts_tenant_requests_total{status="200",tenant="acme"} 2.0' in page
    assert 'tts_tenant_characters_total{tenant="acme"} 38.0' in page


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("response_format", list(FORMATS))
async def test_first_audio_leaves_before_the_upstream_has_finished(response_format: str) -> None:
    """The upstream sends half a second, then holds its tail back until the client has
    decoded audio from what it received: the client can only get there if the door sends
    encoded audio as it goes."""
    release = asyncio.Event()
    head = [tone(FREQ, 0.05, RATE)] * 10
    tail = [tone(FREQ, 0.05, RATE)] * 10
    async with gateway([*head, release, *tail]) as (_, upstream, client):
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice="ann",
            input="A long answer.",
            response_format=response_format,  # type: ignore[arg-type]
        ) as response:
            received = b""
            parts = response.iter_bytes()
            while decoded_seconds(received, response_format) < 0.2:
                received += await asyncio.wait_for(anext(parts), 10)
            assert upstream.exchanges[0].end is None  # still holding its tail
            release.set()
            async for part in parts:
                received += part
        assert await upstream.all_ended() == ["complete"]
    check_tone(received, response_format, 1.0)


def decoded_seconds(data: bytes, response_format: str) -> float:
    """Seconds of audio in the start of an answer (0 while it does not decode yet)."""
    if not data:
        return 0.0
    try:
        rate, pcm = decode(data, response_format)
    except (av.FFmpegError, ValueError):
        return 0.0
    return len(pcm) / 2 / rate


async def test_a_caller_hanging_up_mid_stream_closes_the_upstream() -> None:
    sent = asyncio.Event()
    async with gateway([HEAD, CHUNK, CHUNK, Signal(sent), HOLD]) as (_, upstream, client):
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="ann", input="Hello there.", response_format="mp3"
        ) as response:
            await asyncio.wait_for(sent.wait(), 10)
            async for _ in response.iter_bytes():
                break  # audio is flowing: hang up
        assert await upstream.all_ended() == ["hung_up"]


# ---------------------------------------------------------------- the encoder on its own


def test_a_large_chunk_is_encoded_in_bounded_slices() -> None:
    """A provider's ten-second chunk is ten seconds of encoding work: it comes as slices of
    at most SLICE_SAMPLES each, one step each, the loop free between them."""
    encoder = StreamEncoder("mp3", RATE)
    pcm = tone(FREQ, 10.0, RATE)
    pieces = list(encoder.encode_slices(pcm))
    data = b"".join(pieces) + encoder.finish()
    assert len(pieces) == len(pcm) // (2 * SLICE_SAMPLES)
    check_tone(data, "mp3", 10.0)


def test_an_encoder_closed_mid_stream_can_be_closed_again() -> None:
    encoder = StreamEncoder("opus", RATE, speed=0.5)
    assert encoder.encode(CHUNK)  # the Ogg headers at least
    encoder.close()
    encoder.close()


def test_json_content_of_errors_is_openai_shape() -> None:
    from gateway.errors import ProvidersBusy
    from gateway.front.openai_api import openai_error_response

    response = openai_error_response(
        ProvidersBusy("every voice is busy", headers={"Retry-After": "2"}), "rid-1"
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.headers["x-request-id"] == "rid-1"
    assert json.loads(bytes(response.body)) == {
        "error": {
            "message": "every voice is busy",
            "type": "server_error",
            "param": None,
            "code": "provider_busy",
        }
    }


def test_pyav_is_loaded_by_the_first_encoder_not_by_the_gateway() -> None:
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from gateway.app import create_app\n"
        "from gateway.config import parse_config\n"
        "routing = 'server: {default_voice: v}\\nproviders: {p: {type: piper}}\\n'\n"
        "create_app(parse_config(routing + 'voices: {v: {provider: p}}'))\n"
        "print('av' in sys.modules)\n"
        "from gateway.encode import StreamEncoder\n"
        "StreamEncoder('mp3', 24000).close()\n"
        "print('av' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["False", "True"]
