"""The HTTP providers' lean request path (``providers._http``): :class:`JSONPosts` builds what
``client.build_request`` builds, header for header, with the head the pool writes for it made
ahead, byte for byte; :func:`send` does what ``client.send`` does for the gateway's clients,
and hands the others to it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from providers._http import AUDIO_TYPES, JSONPosts, check_type, make_client, send, type_accepted
from providers._pool import PREPARED_EXTENSION, _request_head
from providers.base import ProviderConfig, ProviderProtocolError, Timeouts

URL = httpx.URL("https://tts.upstream.test:8443/v1/stream-audio?model=fast")
BODY: dict[str, Any] = {
    "Text": 'Grüße, 世界 \u2028 "quoted"',
    "VoiceId": "v1",
    "SampleRate": 24000,
    "ExtendData": '{"InstanceId": "i-1"}',
    "Speed": 1.25,
    "Nested": {"list": [1, 2, None, True]},
}


def client() -> httpx.AsyncClient:
    config = ProviderConfig(
        name="up", type="custom", timeout=Timeouts(connect=2, first_byte=3, total=9, stall=4)
    )
    return make_client(config)


def same_request(lean: httpx.Request, built: httpx.Request) -> None:
    assert lean.method == built.method
    assert lean.url == built.url
    assert lean.headers.raw == built.headers.raw  # names, spelling, values and order
    assert lean.content == built.content
    extensions = dict(lean.extensions)
    prepared = extensions.pop(PREPARED_EXTENSION, None)
    assert extensions == built.extensions
    if prepared is not None:
        # What the pool would work out from the request, worked out ahead: the same bytes.
        assert prepared.fits(lean)
        assert prepared.origin == ("https", "tts.upstream.test", 8443)
        assert prepared.head == _request_head(built)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer s3cret", "X-Tenant": "t1"},
        {"accept": "audio/pcm", "User-Agent": "gateway"},  # replace the client's own
        # Headers the request sets itself: built by build_request, which settles the clash.
        {"X-Request-Id": "fixed"},
        {"content-type": "application/json; charset=utf-8"},
        {"Host": "elsewhere.test"},
        {"Content-Length": "5"},
    ],
)
@pytest.mark.parametrize("request_id", ["req-1", "", None])
def test_a_lean_request_is_the_request_httpx_builds(
    headers: dict[str, str], request_id: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = client()
    expected = dict(headers)
    if request_id:
        expected["X-Request-Id"] = request_id
    built = c.build_request("POST", URL, json=BODY, headers=expected)
    clash = {"host", "content-length", "content-type", "x-request-id"} & {
        name.lower() for name in headers
    }
    if not clash:  # the lean path: httpx's builder is not asked
        monkeypatch.setattr(c, "build_request", None)
    lean = JSONPosts(c, URL, headers).build(BODY, request_id)
    same_request(lean, built)
    assert (PREPARED_EXTENSION in lean.extensions) is not bool(clash)


@pytest.mark.parametrize(
    ("headers", "request_id"),
    [({"X-Tenant": "t1\r\nX-Smuggled: 1"}, "req-1"), ({"X-Tenant": "t1"}, "req\n1")],
)
def test_a_head_that_would_break_is_left_to_the_pool_to_refuse(
    headers: dict[str, str], request_id: str
) -> None:
    request = JSONPosts(client(), URL, headers).build(BODY, request_id)
    assert PREPARED_EXTENSION not in request.extensions
    with pytest.raises(httpx.LocalProtocolError, match="line break"):
        _request_head(request)


def test_a_body_httpx_refuses_is_refused_alike() -> None:
    c = client()
    with pytest.raises(ValueError):
        c.build_request("POST", URL, json={"Speed": float("nan")})
    with pytest.raises(ValueError):
        JSONPosts(c, URL, {}).build({"Speed": float("nan")}, "req-1")


def test_each_request_gets_headers_of_its_own() -> None:
    posts = JSONPosts(client(), URL, {"X-Tenant": "t1"})
    first = posts.build(BODY, "req-1")
    second = posts.build({"Text": "x"}, "req-2")
    assert first.headers["x-request-id"] == "req-1"
    assert first.headers["content-length"] == str(len(first.content))
    assert second.headers["x-request-id"] == "req-2"
    assert second.headers["content-length"] == str(len(second.content))


class Recorder(httpx.AsyncBaseTransport):
    """Answers every request with ``status`` (or raises ``error``), keeping what it was sent."""

    def __init__(self, status: int = 200, error: Exception | None = None) -> None:
        self.status = status
        self.error = error
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        if self.error is not None:
            raise self.error
        return httpx.Response(self.status, content=b"\x01\x00" * 4)


async def test_send_hands_the_request_to_the_transport_and_the_answer_back() -> None:
    transport = Recorder(status=503)
    async with httpx.AsyncClient(transport=transport) as c:
        request = c.build_request("POST", URL, json=BODY)
        response = await send(c, request)
        assert transport.sent == [request]  # as it is: nothing added on the way
        assert response.status_code == 503  # an error status is the caller's to judge
        assert response.request is request
        assert await response.aread() == b"\x01\x00" * 4


async def test_a_transport_error_names_its_request() -> None:
    async with httpx.AsyncClient(transport=Recorder(error=httpx.ConnectError("refused"))) as c:
        request = c.build_request("POST", URL, json=BODY)
        with pytest.raises(httpx.ConnectError) as raised:
            await send(c, request)
    assert raised.value.request is request


async def test_a_closed_client_sends_nothing() -> None:
    transport = Recorder()
    c = httpx.AsyncClient(transport=transport)
    request = c.build_request("POST", URL, json=BODY)
    await c.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await send(c, request)
    assert transport.sent == []


async def test_a_client_with_authentication_or_hooks_sends_through_httpx() -> None:
    transport = Recorder()
    async with httpx.AsyncClient(transport=transport, auth=("user", "pass")) as c:
        await send(c, c.build_request("POST", URL, json=BODY))
    assert transport.sent[-1].headers["authorization"].startswith("Basic ")
    seen: list[httpx.Request] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request)

    async with httpx.AsyncClient(transport=transport, event_hooks={"request": [hook]}) as c:
        request = c.build_request("POST", URL, json=BODY)
        await send(c, request)
    assert seen == [request]


@pytest.mark.parametrize(
    ("headers", "accepted", "passes"),
    [
        ({"content-type": "audio/pcm"}, AUDIO_TYPES, True),
        ({"Content-Type": "Audio/L16; rate=24000"}, AUDIO_TYPES, True),
        ({}, AUDIO_TYPES, True),  # no declared type passes
        ({"content-type": "application/octet-stream"}, AUDIO_TYPES, True),
        ({"content-type": "text/html; charset=utf-8"}, AUDIO_TYPES, False),
        ({"content-type": "application/json"}, AUDIO_TYPES, False),
        ({"content-type": "audio"}, AUDIO_TYPES, False),  # a family's name is not its type
        ({"content-type": "audiox/pcm"}, AUDIO_TYPES, False),
        ({"content-type": "audio/pcm", "content-encoding": "gzip"}, AUDIO_TYPES, False),
        ({"content-type": "audio/pcm", "content-encoding": " Identity "}, AUDIO_TYPES, True),
        ({"content-type": "audio/pcm", "content-encoding": ""}, AUDIO_TYPES, True),
        ({"content-type": "application/json"}, ("text/event-stream", "application/json"), True),
        ({"content-type": "text/event-stream"}, ("application/json",), False),
    ],
)
async def test_an_answer_passes_the_type_check_without_a_coroutine_as_check_type_lets_it(
    headers: dict[str, str], accepted: tuple[str, ...], passes: bool
) -> None:
    """``type_accepted`` (the check made for every answer) and ``check_type`` (which reads
    the error's message when it fails) agree on every kind of answer."""
    response = httpx.Response(
        200, headers=headers, stream=httpx.ByteStream(b"<html>no audio</html>")
    )
    assert type_accepted(response, accepted) is passes
    if passes:
        await check_type(response, "up", accepted)
    else:
        with pytest.raises(ProviderProtocolError):
            await check_type(response, "up", accepted)
