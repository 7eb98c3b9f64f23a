"""``GET /playground``: the audition page (``server.playground``), and the small JSON it reads.

The page is one static HTML file shipped with the package (``playground.html``), read once and
served as the same bytes to everyone: it holds no voice, no path and no token, so it loads
without a token. Everything it reads or does goes through routes guarded like ``/voices``:
``GET /playground/config`` (the synthesis path and the limits the form needs), ``GET /voices``
and the synthesis door itself, each with the token the page asks for and sends as
``Authorization: Bearer``.

Its script and style are inline and allowed by their SHA-256 in a strict Content-Security-Policy
(no other script, no inline event handlers, requests to this origin only), so that a routing
file's crafted voice name, shown by the page, can never run as code there.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from providers.base import SAMPLE_RATES

from ..runtime import Gateway
from .ops import token_refused

#: The emotions the interface's ``ExtendData.Emotion`` knows.
EMOTIONS = ("neutral", "happy", "sad")

_ELEMENT = {tag: re.compile(rf"<{tag}>(.*?)</{tag}>", re.DOTALL) for tag in ("script", "style")}


@dataclass(frozen=True)
class Page:
    """The page's bytes and the headers it is served with."""

    body: bytes
    headers: dict[str, str]


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@functools.cache
def page() -> Page:
    """The page, read from the package once per process, with a policy that allows exactly its
    one inline script and one inline style."""
    html = resources.files(__package__).joinpath("playground.html").read_text(encoding="utf-8")
    hashes = {}
    for tag, pattern in _ELEMENT.items():
        found = pattern.findall(html)
        if len(found) != 1:  # the policy below allows exactly one of each
            raise RuntimeError(f"playground.html must hold one <{tag}> element, not {len(found)}")
        hashes[tag] = _digest(found[0])
    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src {hashes['script']}",
            f"style-src {hashes['style']}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
        )
    )
    return Page(
        html.encode(),
        {
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cross-Origin-Opener-Policy": "same-origin",
            "Cache-Control": "no-cache",
        },
    )


def playground_routes(gateway: Gateway) -> list[Route]:
    """``/playground`` and ``/playground/config``: 404 unless ``server.playground`` is on (read
    per request, so that a reload turns the page on or off). The page is read here, when the
    app is built, so that a broken package fails at start rather than on a first visit."""
    served = page()

    def require_playground() -> None:
        if not gateway.config.server.playground:
            raise HTTPException(404, "Not Found")

    async def playground(request: Request) -> Response:
        require_playground()
        return Response(served.body, media_type="text/html; charset=utf-8", headers=served.headers)

    async def config(request: Request) -> Response:
        require_playground()
        if (refusal := token_refused(gateway, request)) is not None:
            return refusal
        server = gateway.config.server
        return JSONResponse(
            {
                "path": server.path,
                "sample_rates": sorted(SAMPLE_RATES),
                "emotions": list(EMOTIONS),
                "max_text_chars": server.max_text_chars,
            },
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    return [
        Route("/playground", playground, methods=["GET"]),
        Route("/playground/config", config, methods=["GET"]),
    ]
