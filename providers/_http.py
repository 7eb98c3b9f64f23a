"""The base of the providers that speak HTTP (:class:`HTTPProvider`): the pooled client kept
warm for the provider's life, one request per piece of text within the provider's limit, error
statuses turned into provider errors with the upstream's own message and ``Retry-After``, and
the check that a success answer is of a type the provider sends. Reading the answer is
``providers._streams``'s; what an error says, ``providers._errors``'s."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping
from functools import lru_cache, partial
from typing import Any, ClassVar, Final

import httpx

from ._errors import ERROR_BODY_LIMIT, error_message, parse_retry_after, translate_errors
from ._pieces import LOOKAHEAD, pipelined, whole_clip_pieces
from ._pool import (
    _UNSAFE_IN_HEADER,
    BODY_EXTENSION,
    PREPARED_EXTENSION,
    PreparedHead,
    RawHeaders,
    StreamingTransport,
    _Connection,
    _ResponseStream,
    header_lines,
    prepared_prefix,
)
from ._streams import is_body, iter_body
from .base import (
    AudioFormat,
    Provider,
    ProviderConfig,
    ProviderError,
    ProviderHTTPError,
    ProviderProtocolError,
    SynthesisJob,
    closest_rate,
)
from .sentences import split_to_limit

log = logging.getLogger("gateway.providers")

#: Media types of the raw-audio providers' success answers. A missing type is accepted too: a
#: vendor-sample upstream labels its PCM ``audio/mpeg``, others label nothing.
AUDIO_TYPES = ("audio/*", "application/octet-stream", "binary/octet-stream")


def make_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """The transport under every provider client (see ``providers._pool``)."""
    return StreamingTransport(limits=limits)


#: What :func:`make_client` builds its transport with. This is the one seam for tests: put a
#: factory of mock (or guarded) transports here and every provider client built after uses it.
transport_factory: Callable[[httpx.Limits], httpx.AsyncBaseTransport] = make_transport


def make_client(config: ProviderConfig, **kwargs: Any) -> httpx.AsyncClient:
    """One pooled client per provider instance, created at start and kept warm.

    The read timeout is the longer of the provider's ``first_byte`` and ``stall`` timeouts: a
    backstop under the relay's first-byte budget and the stream's stall watch, which end a
    silent upstream on time. The pool holds a connection per concurrent job.
    Answers are asked for uncompressed: audio does not shrink, and a compressed answer could
    expand a thousandfold in one read."""
    timeout = httpx.Timeout(
        connect=config.timeout.connect,
        read=max(config.timeout.first_byte, config.timeout.stall),
        write=config.timeout.first_byte,
        pool=config.timeout.first_byte,
    )
    limits = httpx.Limits(
        # A stream of several pieces has the next one requested beside the current one.
        max_connections=config.max_concurrency * (1 + LOOKAHEAD),
        max_keepalive_connections=config.max_concurrency,
        keepalive_expiry=120,
    )
    kwargs.setdefault("transport", transport_factory(limits))
    kwargs.setdefault("headers", {"Accept-Encoding": "identity"})
    return _CookielessClient(timeout=timeout, limits=limits, **kwargs)


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _CookielessClient(httpx.AsyncClient):
    """TTS APIs authenticate with keys, not cookies; httpx would otherwise run every response
    through ``http.cookiejar`` (measured: ~7 % of the gateway's CPU per request)."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("this client keeps no cookies")


_NO_COOKIES = _NoCookies()


#: Headers a request sets from its own body or URL: fixed headers naming one of them would make
#: the merge of the client's headers and the request's depend on the request (see
#: :class:`JSONPosts`).
_SET_PER_REQUEST = ("host", "content-length", "content-type", "transfer-encoding", "x-request-id")


#: httpx's JSON body encoding (``json.dumps`` with these settings makes an encoder per call).
_COMPACT_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class JSONPosts:
    """POSTs of a JSON body to one URL with fixed ``headers`` and, per request, an
    ``X-Request-Id``: the request ``client.build_request("POST", url, json=body, headers=...)``
    builds, header for header and in the same order, in a fraction of its cost.
    ``build_request`` merges the client's headers and the request's into new ``Headers`` on
    every call and then prepares the request's own through them (~40 µs a request measured
    alone, most of httpx's share of a short request); here the fixed part is merged once.

    When the fixed headers name one that the request sets itself (:data:`_SET_PER_REQUEST`),
    every request is built by ``build_request``, which settles such a clash its own way."""

    def __init__(
        self, client: httpx.AsyncClient, url: httpx.URL, headers: Mapping[str, str]
    ) -> None:
        self.client = client
        self.url = url
        self._headers = dict(headers)
        merged = httpx.Headers(client.headers)
        merged.update(self._headers)
        self._lean = not any(name in merged for name in _SET_PER_REQUEST)
        host = [(b"Host", url.netloc)] if url.host else []
        self._fixed: list[tuple[bytes, bytes]] = [*host, *merged.raw]
        self._extensions: dict[str, Any] = {"timeout": client.timeout.as_dict()}
        # The origin, and the head as the pool would write it up to the headers each request
        # adds: made and checked once (None when the pool is to make the head, and refuse
        # it, per request).
        self._prepared = prepared_prefix(url, self._fixed)

    def build(self, body: Any, request_id: str | None = None) -> httpx.Request:
        """The request for ``body`` (``request_id``: sent as ``X-Request-Id`` when given)."""
        if not self._lean:
            headers = dict(self._headers)
            if request_id:
                headers["X-Request-Id"] = request_id
            return self.client.build_request("POST", self.url, json=body, headers=headers)
        # As httpx encodes a JSON body (httpx._content.encode_json).
        content = _COMPACT_JSON.encode(body).encode("utf-8")
        raw = self._fixed.copy()
        rid = request_id.encode("ascii") if request_id else b""
        if rid:
            raw.append((b"X-Request-Id", rid))
        raw.append((b"Content-Length", b"%d" % len(content)))
        raw.append((b"Content-Type", b"application/json"))
        extensions = self._extensions.copy()
        request = _JSONPost(self.url, RawHeaders(raw), content, extensions)
        prepared = self._prepared
        if prepared is not None and not _UNSAFE_IN_HEADER.search(rid):
            # The pool's head of this request (providers._pool._request_head), made here: the
            # prefix made ahead, then the headers this request added.
            origin, prefix = prepared
            head = b"".join([prefix, *header_lines(raw[len(self._fixed) :]), b"\r\n"])
            extensions[PREPARED_EXTENSION] = PreparedHead(origin, head, request)
        return request


class _JSONPost(httpx.Request):
    """A request :class:`JSONPosts` built: what ``httpx.Request("POST", url, headers=...,
    stream=httpx.ByteStream(content), extensions=...)`` followed by ``read()`` makes, without
    the copies of the URL and the headers it makes of what it is given (both are made for it
    here and shared with nothing that changes them)."""

    def __init__(
        self,
        url: httpx.URL,
        headers: RawHeaders,
        content: bytes,
        extensions: dict[str, Any],
    ) -> None:
        self.method = "POST"
        self.url = url
        self.headers = headers
        self.extensions = extensions
        self.stream = httpx.ByteStream(content)
        self._content = content


async def send(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """``client.send(request, stream=True)`` for a client of :func:`make_client`, without the
    steps such a client has nothing for: an authentication flow, redirects (never followed),
    event hooks, cookies (it keeps none), the timer of ``response.elapsed`` and the log line
    (held at WARNING by the gateway's logging). What remains is the transport httpx would pick
    for the URL (a mock's, in tests; a proxy's, when the environment names one) and the request
    attached to the response and to a transport error.

    The steps cost ~15 µs a request, and the timer's wrapper of the body was one more layer for
    every chunk and a response that refers to itself (garbage for the cycle collector). A
    client that has authentication or event hooks is sent through ``client.send``."""
    if client.auth is not None or any(client.event_hooks.values()):
        return await client.send(request, stream=True)
    if client.is_closed:
        raise RuntimeError("Cannot send a request, as the client has been closed.")
    # httpx's own choice of transport (mounts for proxies), and what respx mocks in tests.
    transport = client._transport_for_url(request.url)
    try:
        response = await transport.handle_async_request(request)
    except httpx.RequestError as exc:
        exc.request = request
        raise
    response.request = request
    return response


def open_stream(
    client: httpx.AsyncClient,
    provider: str,
    request: httpx.Request,
    error_for: Callable[[httpx.Response, bytes], ProviderError] | None = None,
    seen: Callable[[httpx.Response], None] | None = None,
) -> OpenStream:
    """Send ``request`` (:func:`send`) and hand over the streaming response once its status is
    a success (``async with``, which gives the response).

    ``seen`` is shown every response first (limits the API signals in its headers). An error
    status raises what ``error_for`` makes of the answer and up to 16 KiB of its body (by
    default :func:`http_error`). The response is always closed on exit, which is what
    releases the upstream connection when the caller hangs up."""
    return OpenStream(client, provider, request, error_for, seen)


class OpenStream:
    """The block of :func:`open_stream` (a class rather than ``contextlib``'s async generator:
    it is entered for every upstream request)."""

    __slots__ = ("_client", "_error_for", "_provider", "_request", "_response", "_seen")

    def __init__(
        self,
        client: httpx.AsyncClient,
        provider: str,
        request: httpx.Request,
        error_for: Callable[[httpx.Response, bytes], ProviderError] | None,
        seen: Callable[[httpx.Response], None] | None,
    ) -> None:
        self._client = client
        self._provider = provider
        self._request = request
        self._error_for = error_for
        self._seen = seen
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        provider = self._provider
        with translate_errors(provider):
            response = await send(self._client, self._request)
        try:
            if self._seen is not None:
                self._seen(response)
            if not response.is_success:
                body = await read_error_body(response)
                raise (self._error_for or partial(http_error, provider))(response, body)
        except BaseException:
            await response.aclose()
            raise
        self._response = response
        return response

    async def __aexit__(self, *exc_info: object) -> None:
        response, self._response = self._response, None
        if response is None:
            return
        stream = response.stream
        if type(stream) is not _ResponseStream or response.is_closed:
            await response.aclose()
            return
        # What response.aclose() does for the pool's own body (which hands its connection
        # back and raises nothing), without the context manager httpx enters to name the
        # request on an error: a generator's frames every request.
        response.is_closed = True
        await stream.aclose()


def http_error(
    provider: str, response: httpx.Response, body: bytes, retryable: bool | None = None
) -> ProviderHTTPError:
    """An error answer as a :class:`ProviderHTTPError`: the provider's own message and any
    ``Retry-After``; ``retryable`` overrules the status-based retry decision."""
    return ProviderHTTPError(
        provider,
        response.status_code,
        error_message(body, response.reason_phrase),
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        retryable=retryable,
    )


async def read_error_body(response: httpx.Response) -> bytes:
    """Up to 16 KiB of an answer that is an error: enough for its message, never more (and
    nothing of a compressed one, which could expand a thousandfold in one read)."""
    body = bytearray()
    if not _identity(response):
        return b""
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= ERROR_BODY_LIMIT:
                break
    return bytes(body[:ERROR_BODY_LIMIT])


def media_type(response: httpx.Response) -> str:
    """The answer's declared media type, lower-case and without parameters ("" if none)."""
    declared = str(response.headers.get("content-type", ""))
    return declared.partition(";")[0].strip().lower()


async def check_type(response: httpx.Response, provider: str, accepted: tuple[str, ...]) -> None:
    """Refuse a success answer whose declared type is not one of ``accepted`` (``type/*``
    matches a family; no declared type passes): an HTML page from a proxy or a JSON error
    document at status 200 is an error, with its message in the log, never audio."""
    if type_accepted(response, accepted):
        return
    if not _identity(response):
        encoding = str(response.headers.get("content-encoding"))
        raise ProviderProtocolError(provider, f"a compressed answer ({_shown(encoding)})")
    declared = media_type(response)
    message = error_message(await read_error_body(response))
    raise ProviderProtocolError(
        provider, f"answered {_shown(declared)} where {accepted[0]} was due: {message}"
    )


def type_accepted(response: httpx.Response, accepted: tuple[str, ...]) -> bool:
    """Whether :func:`check_type` lets ``response`` pass: sent as it is, of a type in
    ``accepted`` or of none declared (what an answer is, nearly always: checked without a
    coroutine, the error's message read only when it is not)."""
    if not _identity(response):
        return False
    declared = media_type(response)
    if not declared:
        return True
    exact, families = _kinds(accepted)
    return declared in exact or declared.startswith(families)


@lru_cache(maxsize=64)
def _kinds(accepted: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
    """``accepted`` as the exact types and the families' prefixes (``audio/*``: ``audio/``)."""
    exact = frozenset(kind for kind in accepted if not kind.endswith("/*"))
    return exact, tuple(kind[:-1] for kind in accepted if kind.endswith("/*"))


def _identity(response: httpx.Response) -> bool:
    """Whether the answer is sent as is (no ``Content-Encoding``, or ``identity``)."""
    encoding = response.headers.get("content-encoding")
    return encoding is None or str(encoding).strip().lower() in ("", "identity")


def _shown(value: str) -> str:
    """An upstream's short token (a media type, an encoding) safe to put in a log line."""
    return re.sub(r"[^\w.+/*-]", "?", value[:60])


class HTTPProvider(Provider):
    """Base of the providers that speak HTTP: one pooled client for the provider's life, and
    long texts cut at sentence boundaries into consecutive requests streamed as one answer.

    A subclass builds the request for one piece of text (:meth:`build`) and, if the body is not
    plain audio bytes, decodes it (:meth:`audio`)."""

    settings_keys: ClassVar[frozenset[str]] = frozenset({"api_key", "base_url"})
    required_settings: ClassVar[frozenset[str]] = frozenset({"api_key"})
    #: The media types a success answer may declare (see :func:`check_type`).
    answer_types: ClassVar[tuple[str, ...]] = AUDIO_TYPES
    #: The provider's limit on one request's text, in :meth:`text_size` units (None: no limit).
    max_text: ClassVar[int | None] = None
    default_base_url: ClassVar[str] = ""
    #: The rates the provider can send raw PCM at (empty: any rate the caller asks for).
    native_rates: ClassVar[tuple[int, ...]] = ()
    #: The provider answers each request with a whole clip (nothing plays until it has all been
    #: synthesized): its text is cut so that the first sentence goes alone (``providers._pieces``).
    whole_clip: ClassVar[bool] = False

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        settings = config.settings
        self.api_key = str(settings.get("api_key") or "")
        self.base_url = str(settings.get("base_url") or self.default_base_url).rstrip("/")
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if "api_key" in self.config.settings and not self.api_key:
            log.warning("provider %s has an empty api_key: its requests will be refused", self.name)
        if self._client is None:
            self._client = make_client(self.config)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = make_client(self.config)
        return self._client

    def native_format(self, job: SynthesisJob) -> AudioFormat:
        """Raw S16LE mono at the offered rate closest to the caller's."""
        rates = self.native_rates
        return AudioFormat(closest_rate(job.sample_rate, rates) if rates else job.sample_rate)

    def error_retryable(self, response: httpx.Response) -> bool | None:
        """Whether an error answer may succeed on retry; None: decide by the status code."""
        return None

    def error_for(self, response: httpx.Response, body: bytes) -> ProviderError:
        """What an error answer (and up to 16 KiB of its body) means."""
        return http_error(self.name, response, body, self.error_retryable(response))

    def response_seen(self, response: httpx.Response) -> None:
        """Every answer, before its status is looked at: for limits an API signals in its
        headers (see :attr:`Provider.signalled_concurrency`)."""

    def text_size(self, text: str) -> int:
        """How the provider counts its text limit (characters unless said otherwise)."""
        return len(text)

    @abstractmethod
    def build(self, job: SynthesisJob, text: str) -> httpx.Request:
        """The HTTP request for one piece of the job's text."""

    def audio(self, response: httpx.Response, job: SynthesisJob, text: str) -> AsyncIterator[bytes]:
        """The native audio in a successful response to the request for ``text`` (one piece
        of ``job``); the default is the body as it arrives. (A subclass may write it as an
        async generator; the default hands over the body's own iterator, one layer fewer for
        every chunk.)"""
        return iter_body(response, self.name)

    @property
    def answers_whole_clips(self) -> bool:
        """Whether this provider's answers are whole clips (see :attr:`whole_clip`)."""
        return self.whole_clip

    def pieces(self, job: SynthesisJob) -> list[str]:
        """The job's text as the requests that carry it: cut to the provider's limit, and for a
        whole-clip provider with the first sentence alone."""
        if self.answers_whole_clips:
            return whole_clip_pieces(job.text, self.max_text, self.text_size)
        if self.max_text:
            return split_to_limit(job.text, self.max_text, self.text_size)
        return [job.text]

    def stream(self, job: SynthesisJob) -> AsyncGenerator[bytes, None]:
        # One piece is its request's own stream; several are pipelined, the next requested
        # while the current one streams (providers._pieces). Handed over as they are, not
        # wrapped: every layer of async generator is paid again for every chunk.
        pieces = self.pieces(job)
        if len(pieces) == 1:
            one = OnePiece()
            one.generator = self._piece(job, pieces[0], one)
            return one
        return pipelined(pieces, lambda piece: self._piece(job, piece))

    async def _piece(
        self, job: SynthesisJob, piece: str, one: OnePiece | None = None
    ) -> AsyncGenerator[bytes, None]:
        request = self.build(job, piece)
        async with open_stream(
            self.client, self.name, request, self.error_for, self.response_seen
        ) as response:
            if not type_accepted(response, self.answer_types):
                await check_type(response, self.name, self.answer_types)
            audio = self.audio(response, job, piece)
            if one is not None and is_body(audio):
                body = response.extensions.get(BODY_EXTENSION)
                one.body = body if isinstance(body, _ResponseStream) else None
            try:
                # The body as it is: what has arrived with the head goes first, straight from
                # the connection (the body's reader is started only for what comes after, and
                # not at all for a stream relayed from the connection's callbacks after it).
                connection = one.tap_point() if one is not None else None
                first = connection.take_body() if connection is not None else b""
                if first:
                    yield first
                async for chunk in audio:
                    yield chunk
            finally:
                if one is not None:
                    one.body = None
                close = getattr(audio, "aclose", None)
                if close is not None:
                    await close()


class OnePiece(AsyncGenerator[bytes, None]):
    """A provider stream that is one request's answer (what :meth:`HTTPProvider.stream` gives
    for a text of one piece): its generator's chunks as they are, and, when its audio is the
    response body as it is, the body's connection for a reader that would rather be handed
    the rest of it (:meth:`tap_point`; ``providers._pool``'s ``_Connection.tap``)."""

    __slots__ = ("body", "generator")

    def __init__(self) -> None:
        self.generator: AsyncGenerator[bytes, None]
        self.body: _ResponseStream | None = None

    def tap_point(self) -> _Connection | None:
        """The connection whose body is the rest of this stream, as it is, when it is."""
        return self.body.connection if self.body is not None else None

    # The generator's own coroutines are handed over: no frame of this class per chunk.
    def __anext__(self) -> Coroutine[Any, Any, bytes]:
        return self.generator.__anext__()

    def asend(self, value: None) -> Coroutine[Any, Any, bytes]:
        return self.generator.asend(value)

    def athrow(self, *args: Any) -> Coroutine[Any, Any, bytes]:
        return self.generator.athrow(*args)

    def aclose(self) -> Coroutine[Any, Any, None]:
        return self.generator.aclose()
