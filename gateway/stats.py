"""``tts-gateway stats``: a running gateway's spend, read from its ``/metrics``.

::

    GET <url>/metrics  (a deadline on the whole exchange, the page bounded in bytes,
                        no content encoding, so what is read is what is held)
    ─► the spend samples' lines (each bounded in length; the rest of the page is skipped)
    ─► prometheus-client's text parser ─► per provider and per tenant figures

Whatever answers may be hostile or broken: every way it can fail ends in a :class:`StatsError`
with one clear sentence, never a traceback, an unbounded wait or an unbounded buffer.
"""

from __future__ import annotations

import asyncio
import math
import re
import ssl
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .config import ServerConfig

#: The largest ``/metrics`` page read (a gateway's is some tens of kilobytes).
MAX_PAGE_BYTES: Final = 4 << 20
#: The longest spend sample line parsed (a metric name, two labels and a value; the names
#: are at most 256 characters), and the most of them parsed all told: the text parser's cost
#: grows faster than a line's length.
MAX_LINE_CHARS: Final = 512
MAX_SAMPLE_CHARS: Final = 1 << 20
#: Spend sample lines parsed at a time (between two looks at the deadline).
_BATCH_LINES: Final = 500
#: A sample line's metric name.
_NAME: Final = re.compile(r"[A-Za-z0-9_:]*")
#: Seconds the whole exchange may take, by default.
DEFAULT_TIMEOUT: Final = 10.0

#: The samples a spend report is made of.
_WANTED: Final = frozenset(
    {
        "tts_provider_characters_total",
        "tts_provider_characters_delivered_total",
        "tts_audio_generated_seconds_total",
        "tts_audio_seconds_total",
        "tts_hedge_characters_total",
        "tts_cache_characters_saved_total",
        "tts_cache_audio_seconds_saved_total",
        "tts_cache_lookups_total",
        "tts_tenant_requests_total",
        "tts_tenant_characters_total",
    }
)
#: A line that says the page is a TTS gateway's (present even before any request).
_GATEWAY_MARK: Final = "# TYPE tts_provider_characters"
#: Lookups answered without a synthesis of their own.
_SAVING_LOOKUPS: Final = ("hit", "shared")


class StatsError(Exception):
    """Why no report could be made, in one sentence."""


# ---------------------------------------------------------------- where to read


def metrics_url(url: str | None, server: ServerConfig) -> str:
    """The ``/metrics`` URL to read: ``url`` (a gateway's base URL or its ``/metrics``), or
    else the routing file's own: ``server.metrics.port`` when it has one, else the main port
    (HTTPS when the gateway serves it), on loopback when it listens on every address."""
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StatsError(f"--url must be an http:// or https:// URL, got {url!r}")
        if parts.path.rstrip("/").endswith("/metrics"):
            return url
        return url.rstrip("/") + "/metrics"
    host = server.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    if server.metrics.port is not None:  # prometheus-client's own server: plain HTTP
        return f"http://{host}:{server.metrics.port}/metrics"
    scheme = "https" if server.ssl_certfile else "http"
    return f"{scheme}://{host}:{server.port}/metrics"


async def fetch_page(
    url: str,
    token: str | None = None,
    *,
    seconds: float = DEFAULT_TIMEOUT,
    cafile: str | None = None,
    max_bytes: int = MAX_PAGE_BYTES,
) -> str:
    """The page at ``url``, read within ``seconds`` all told and at most
    ``max_bytes`` long; ``token`` is sent as a Bearer token."""
    headers = {"Accept-Encoding": "identity"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=cafile) if cafile else True
    try:
        async with (
            asyncio.timeout(seconds),
            httpx.AsyncClient(timeout=seconds, verify=verify) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            _check_head(url, response, max_bytes)
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > max_bytes:
                    raise StatsError(f"{url}: the page is larger than {_size(max_bytes)}")
    except TimeoutError:
        raise StatsError(f"{url}: no complete answer within {seconds:g} s") from None
    except httpx.HTTPError as error:
        hint = ""
        if "CERTIFICATE_VERIFY_FAILED" in str(error):
            hint = " (a self-signed certificate? pass its CA with --cacert)"
        raise StatsError(
            f"cannot read {url}: {type(error).__name__}: {error or 'no answer'}{hint}"
        ) from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise StatsError(f"{url}: the page is not UTF-8 text") from None


def _check_head(url: str, response: httpx.Response, max_bytes: int) -> None:
    status = response.status_code
    if status == 401:
        raise StatsError(f"{url}: 401, /metrics asks for a token (--token, or $TTS_GATEWAY_TOKEN)")
    if status != 200:
        raise StatsError(f"{url}: answered {status}, not the metrics page")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise StatsError(f"{url}: the page came {encoding!r}-encoded, though none was asked for")
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise StatsError(f"{url}: the page is larger than {_size(max_bytes)}")


def _size(count: int) -> str:
    return f"{count / (1 << 20):g} MiB"


# ---------------------------------------------------------------- reading the page


def spend_samples(
    page: str, deadline: float | None = None
) -> Iterator[tuple[str, dict[str, str], float]]:
    """Each spend sample of a ``/metrics`` page as (name, labels, value). Only the lines of
    the spend samples are parsed, each at most :data:`MAX_LINE_CHARS` long and together at
    most :data:`MAX_SAMPLE_CHARS`, a batch at a time until ``deadline``
    (``time.monotonic()``) passes."""
    if _GATEWAY_MARK not in page:
        raise StatsError("the page has no TTS gateway metrics (is it the gateway's /metrics?)")
    lines = []
    total = 0
    for number, raw in enumerate(page.split("\n"), 1):
        line = raw.strip()
        if not line.startswith("tts_"):
            continue  # comments, other families, blank lines
        name = _NAME.match(line)
        if name is None or name.group() not in _WANTED:
            continue
        if len(line) > MAX_LINE_CHARS:
            raise StatsError(f"line {number} of the page is over {MAX_LINE_CHARS} characters")
        total += len(line)
        if total > MAX_SAMPLE_CHARS:
            raise StatsError(f"the page holds over {_size(MAX_SAMPLE_CHARS)} of spend samples")
        lines.append(line)
    for start in range(0, len(lines), _BATCH_LINES):
        if deadline is not None and time.monotonic() > deadline:
            raise StatsError("the page took too long to read (too many samples)")
        batch = "\n".join(lines[start : start + _BATCH_LINES]) + "\n"
        try:
            families = list(text_string_to_metric_families(batch))
        except (ValueError, IndexError) as error:
            detail = printable(str(error)[:120]) or "a malformed sample"
            raise StatsError(f"the page is not in the Prometheus text format: {detail}") from None
        for family in families:
            for sample in family.samples:
                value = float(sample.value)
                if not math.isfinite(value):
                    raise StatsError(f"the page's {sample.name} is not a finite number")
                yield sample.name, dict(sample.labels), value


def printable(text: str) -> str:
    """``text`` with every character a terminal could act on (escapes, controls) replaced:
    what a page says is shown, never obeyed."""
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


# ---------------------------------------------------------------- the report


@dataclass
class ProviderSpend:
    """One provider's spend: characters and seconds as counted since the gateway started."""

    characters_billed: float = 0.0
    characters_delivered: float = 0.0
    audio_generated_seconds: float = 0.0
    audio_seconds_sent: float = 0.0
    """Every second of audio that went to callers, the cache's included."""
    hedge_characters: float = 0.0
    cache_characters_saved: float = 0.0
    cache_audio_seconds_saved: float = 0.0
    cache_lookups: dict[str, float] = field(default_factory=dict)

    @property
    def waste_percent(self) -> float | None:
        """The share of the billed characters whose audio no caller got."""
        if self.characters_billed <= 0:
            return None
        waste = 1.0 - self.characters_delivered / self.characters_billed
        return max(0.0, waste) * 100

    @property
    def audio_delivered_seconds(self) -> float:
        """Seconds of the provider's synthesized audio that went to callers (the audio served
        from the cache is counted as saved instead)."""
        return max(0.0, self.audio_seconds_sent - self.cache_audio_seconds_saved)

    @property
    def cache_hit_ratio(self) -> float | None:
        """The share of cache lookups answered without a synthesis of their own (a stored
        answer, or an identical one in flight)."""
        total = sum(self.cache_lookups.values())
        if total <= 0:
            return None
        return sum(self.cache_lookups.get(r, 0.0) for r in _SAVING_LOOKUPS) / total

    def as_json(self) -> dict[str, Any]:
        return {
            "characters_billed": self.characters_billed,
            "characters_delivered": self.characters_delivered,
            "waste_percent": self.waste_percent,
            "audio_generated_seconds": self.audio_generated_seconds,
            "audio_delivered_seconds": self.audio_delivered_seconds,
            "hedge_characters": self.hedge_characters,
            "cache_characters_saved": self.cache_characters_saved,
            "cache_audio_seconds_saved": self.cache_audio_seconds_saved,
            "cache_lookups": dict(sorted(self.cache_lookups.items())),
            "cache_hit_ratio": self.cache_hit_ratio,
        }


@dataclass
class TenantSpend:
    """One tenant's requests by answer status, and the characters of those answered with
    audio."""

    requests: dict[str, float] = field(default_factory=dict)
    characters: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"requests": dict(sorted(self.requests.items())), "characters": self.characters}


_PROVIDER_FIELDS: Final = {
    "tts_provider_characters_total": "characters_billed",
    "tts_provider_characters_delivered_total": "characters_delivered",
    "tts_audio_generated_seconds_total": "audio_generated_seconds",
    "tts_audio_seconds_total": "audio_seconds_sent",
    "tts_hedge_characters_total": "hedge_characters",
    "tts_cache_characters_saved_total": "cache_characters_saved",
    "tts_cache_audio_seconds_saved_total": "cache_audio_seconds_saved",
}


@dataclass
class SpendReport:
    """What ``tts-gateway stats`` prints."""

    url: str
    providers: dict[str, ProviderSpend] = field(default_factory=dict)
    tenants: dict[str, TenantSpend] = field(default_factory=dict)

    @classmethod
    def from_page(cls, url: str, page: str, deadline: float | None = None) -> SpendReport:
        providers: defaultdict[str, ProviderSpend] = defaultdict(ProviderSpend)
        tenants: defaultdict[str, TenantSpend] = defaultdict(TenantSpend)
        for name, labels, value in spend_samples(page, deadline):
            if name in _PROVIDER_FIELDS:
                spend = providers[labels.get("provider", "")]
                attribute = _PROVIDER_FIELDS[name]
                setattr(spend, attribute, getattr(spend, attribute) + value)
            elif name == "tts_cache_lookups_total":
                lookups = providers[labels.get("provider", "")].cache_lookups
                result = labels.get("result", "")
                lookups[result] = lookups.get(result, 0.0) + value
            elif name == "tts_tenant_requests_total":
                requests = tenants[labels.get("tenant", "")].requests
                status = labels.get("status", "")
                requests[status] = requests.get(status, 0.0) + value
            elif name == "tts_tenant_characters_total":
                tenants[labels.get("tenant", "")].characters += value
        return cls(url, dict(sorted(providers.items())), dict(sorted(tenants.items())))

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "providers": {name: p.as_json() for name, p in self.providers.items()},
            "tenants": {name: t.as_json() for name, t in self.tenants.items()},
        }

    def as_text(self) -> str:
        """Two aligned tables: providers, then tenants."""
        lines = [f"spend from {self.url}", ""]
        rows: list[tuple[str, ...]] = [
            (
                "PROVIDER",
                "BILLED",
                "DELIVERED",
                "WASTE",
                "AUDIO GENERATED",
                "AUDIO DELIVERED",
                "HEDGE",
                "CACHE SAVED",
                "CACHE AUDIO SAVED",
                "CACHE HITS",
            )
        ]
        for name, p in self.providers.items():
            rows.append(
                (
                    printable(name) or '""',
                    characters(p.characters_billed),
                    characters(p.characters_delivered),
                    percent(p.waste_percent),
                    seconds(p.audio_generated_seconds),
                    seconds(p.audio_delivered_seconds),
                    characters(p.hedge_characters),
                    characters(p.cache_characters_saved),
                    seconds(p.cache_audio_seconds_saved),
                    percent(None if p.cache_hit_ratio is None else p.cache_hit_ratio * 100),
                )
            )
        lines += _table(rows, left={0}) if self.providers else ["no provider has been asked yet"]
        lines.append("")
        rows = [("TENANT", "REQUESTS", "BY STATUS", "CHARACTERS")]
        for name, t in self.tenants.items():
            by_status = " ".join(f"{printable(s)}:{count(n)}" for s, n in t.requests.items())
            rows.append(
                (
                    printable(name) or '""',
                    count(sum(t.requests.values())),
                    by_status,
                    characters(t.characters),
                )
            )
        lines += (
            _table(rows, left={0, 2})
            if self.tenants
            else ["no request has been counted to a tenant yet"]
        )
        return "\n".join(lines)


def characters(value: float) -> str:
    """Characters as printed (the delivered ones are an estimate: whole characters)."""
    return f"{value:.0f}"


def count(value: float) -> str:
    return f"{value:.0f}"


def seconds(value: float) -> str:
    return f"{value:.2f} s"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _table(rows: Sequence[tuple[str, ...]], left: set[int]) -> list[str]:
    """``rows`` aligned: the columns in ``left`` to the left, the figures to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


async def read_report(
    url: str, token: str | None, *, seconds: float = DEFAULT_TIMEOUT, cafile: str | None = None
) -> SpendReport:
    """The spend report of the gateway whose ``/metrics`` is at ``url``, read and parsed
    within ``seconds`` all told."""
    deadline = time.monotonic() + seconds
    page = await fetch_page(url, token, seconds=seconds, cafile=cafile)
    return SpendReport.from_page(url, page, deadline)


__all__ = [
    "MAX_LINE_CHARS",
    "MAX_PAGE_BYTES",
    "MAX_SAMPLE_CHARS",
    "ProviderSpend",
    "SpendReport",
    "StatsError",
    "TenantSpend",
    "fetch_page",
    "metrics_url",
    "read_report",
    "spend_samples",
]
