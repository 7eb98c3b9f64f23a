"""``tts-gateway``: serve, check-config, voices, say, warm, stats."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import resource
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import (
    ConfigError,
    ConfigProblem,
    GatewayConfig,
    ServerConfig,
    default_config,
    load_config,
)
from .config.model import WarmPhrase
from .http1 import ConnectionLimits, TLSFiles, protocol_factory
from .logs import configure_logging
from .routing import Router

if TYPE_CHECKING:
    from .cache.warm import WarmReport


def _load(path: str | None) -> GatewayConfig:
    path = path or os.environ.get("TTS_GATEWAY_CONFIG") or None
    return load_config(path) if path else default_config()


def format_table(config: GatewayConfig) -> str:
    """The routing table as aligned text: one line per voice, the default marked ``*``."""
    rows = [("VOICE", "PROVIDER", "TYPE", "PROVIDER VOICE", "FALLBACK")]
    for entry in Router(config).table():
        name = entry["voice"] + (" *" if entry["default"] else "")
        rows.append(
            (
                name,
                entry["provider"],
                entry["type"],
                entry["provider_voice"] or "(VoiceId)",
                " -> ".join(entry["fallback"]) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    server = config.server
    lines.append("")
    lines.append(
        f"default voice: {server.default_voice or '-'}; unknown VoiceId: {server.unknown_voice}"
    )
    return "\n".join(lines)


#: Seconds the server waits, after the gateway's own drain deadline, before cancelling requests.
_DRAIN_BACKSTOP_SECONDS = 10.0
#: File descriptors kept back from client connections (listening socket, logs, models, pools).
_RESERVED_FILES = 256


def open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_limits(
    server: ServerConfig, open_files: int | None = None, tls: TLSFiles | None = None
) -> ConnectionLimits:
    """The connection deadlines and bounds for ``server`` (and ``tls`` to serve HTTPS). The
    cap is lowered, with a warning, to what the open-file limit leaves room for: each
    connection may need a second descriptor for its upstream, and accepting beyond the limit
    fails for everyone instead of answering 503."""
    cap = server.max_connections
    if open_files is not None:
        room = max(1, (open_files - _RESERVED_FILES) // 2)
        if cap > room:
            logging.getLogger("gateway").warning(
                "server.max_connections is %d, but the open-file limit (%d) leaves room for %d "
                "connections: using %d (raise LimitNOFILE / ulimit -n to allow more)",
                cap,
                open_files,
                room,
                room,
            )
            cap = room
    timeouts = server.timeouts
    head = ConnectionLimits().max_head_bytes
    return ConnectionLimits(
        header=timeouts.header,
        body=timeouts.body,
        keep_alive=timeouts.keep_alive,
        max_connections=cap,
        # A body as sent may carry chunk framing: room for it, and for the head and trailers.
        max_request_bytes=head + 4 * server.max_body_bytes + 65536,
        tls=tls,
    )


#: Net new container objects between two passes of the cycle collector over its youngest
#: generation, in a serving process (Python's default is 700).
GC_YOUNG_OBJECTS = 20_000


def tune_gc() -> None:
    """The cycle collector as a serving process wants it: its youngest generation collected
    every :data:`GC_YOUNG_OBJECTS` net new objects instead of every 700. The gateway's garbage
    is freed by reference counting as it goes (its requests leave no cycles behind:
    ``tests/test_cycles.py``; a cycle per request would wait for a pass, with all it held), but the
    objects of the requests in flight are what the collector finds each time: with 200 callers
    at once it ran a pass every few requests, promoting what it found until a pass over every
    object was due. The collector's own CPU, 200 requests at a time through the custom door in
    one process: ~0.12 ms a request before, ~0.04 after (see ``bench/changes.md``)."""
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_OBJECTS, middle, old)


def serve_options(
    config: GatewayConfig, certfile: str | None, keyfile: str | None
) -> dict[str, Any]:
    """uvicorn's settings for serving ``config`` (one process, or each worker of several)."""
    server = config.server
    tls = TLSFiles(certfile, keyfile) if certfile and keyfile else None
    limits = connection_limits(server, open_file_limit(), tls)
    if tls is not None:
        # TLS is terminated by the gateway's connection layer, not by the server, which would
        # name the scheme in its start-up line as plain http.
        logging.getLogger("uvicorn.error").addFilter(_https_in_start_line)
    return {
        "log_level": server.log_level,
        "access_log": False,  # the gateway logs one richer line per request itself
        "http": protocol_factory(limits),
        "ws": "none",
        # Nothing in the gateway reads the caller's address or scheme from the scope, so
        # uvicorn's X-Forwarded-* rewriting would be a layer on every request for nothing.
        "proxy_headers": False,
        # The gateway ends streams itself at server.drain_seconds (end reason "drain"); this
        # is only the server's backstop for anything still running after that.
        "timeout_graceful_shutdown": server.drain_seconds + _DRAIN_BACKSTOP_SECONDS,
        "log_config": None,
    }


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .metrics import MULTIPROC_ENV, prepare_directory
    from .supervisor import Supervisor, WorkerSpec, workers_wanted

    config = _load(args.config)
    server = config.server
    configure_logging(server.log_level, server.log_format)
    certfile = args.ssl_certfile or server.ssl_certfile
    keyfile = args.ssl_keyfile or server.ssl_keyfile
    if bool(certfile) != bool(keyfile):
        print("error: --ssl-certfile and --ssl-keyfile go together", file=sys.stderr)
        return 2
    for tls_file in (certfile, keyfile):
        if tls_file and not Path(tls_file).is_file():
            print(f"error: no such TLS file: {tls_file}", file=sys.stderr)
            return 2
    if certfile and keyfile:
        problem = tls_problem(certfile, keyfile)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    path = args.config or os.environ.get("TTS_GATEWAY_CONFIG") or None
    if path:
        # Absolute, since workers and the watch outlive the current directory; but symlinks
        # not followed: a Kubernetes ConfigMap update swaps the link under the same path.
        path = os.path.abspath(path)
    host = args.host or server.host
    port = server.port if args.port is None else args.port
    workers = workers_wanted(server.workers, args.workers)
    shared_dir = os.environ.get(MULTIPROC_ENV)
    if shared_dir:
        # The operator's metrics directory (multiprocess mode even for one process).
        try:
            prepare_directory(shared_dir)
        except OSError as exc:
            print(f"error: {MULTIPROC_ENV} {shared_dir}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    if server.metrics.port is not None:
        # A port in use is one clear line now, rather than a traceback once serving starts.
        _listen(host, server.metrics.port, " (server.metrics.port)").close()
    if workers == 1:
        options = serve_options(config, certfile, keyfile)
        tune_gc()
        uvicorn.Server(
            uvicorn.Config(
                create_app(config, path, metrics_host=host, settle_heap=True),
                host=host,
                port=port,
                **options,
            )
        ).run()
        return 0
    scheme = "https" if certfile else "http"
    sock = _listen(host, port)
    logging.getLogger("gateway").info(
        "serving on %s://%s:%d with %d worker processes",
        scheme,
        host,
        sock.getsockname()[1],
        workers,
    )
    supervisor = Supervisor(
        WorkerSpec(path, certfile, keyfile, workers),
        sock,
        watch=bool(path) and server.watch,
        metrics_port=server.metrics.port,
        metrics_host=host,
        stop_seconds=server.drain_seconds + _DRAIN_BACKSTOP_SECONDS + 5,
    )
    return supervisor.run()


def _listen(host: str, port: int, what: str = "") -> socket.socket:
    """The listening socket every worker serves (bound here, once); ``what`` names the port
    in the error that ends ``serve`` if it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"error: cannot listen on {host}:{port}{what}: {exc.strerror or exc}"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _https_in_start_line(record: logging.LogRecord) -> bool:
    if str(record.msg).startswith("Uvicorn running on") and isinstance(record.args, tuple):
        record.args = ("https", *record.args[1:])
    return True


class _EncryptedKey(Exception):
    """The TLS key asks for a passphrase (which the gateway has no way to give)."""


def _no_passphrase() -> str:
    raise _EncryptedKey


def tls_problem(certfile: str, keyfile: str) -> str | None:
    """What is wrong with a TLS certificate and key, loaded as the server will load them;
    None if they make a working pair. Checked before serving, so that a wrong file is one
    clear line rather than a traceback from inside the server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=certfile)  # the certificate file alone
    except ssl.SSLError:
        return f"TLS certificate {certfile}: not a PEM certificate"
    except OSError as exc:
        return f"TLS certificate {certfile}: {exc.strerror or exc}"
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except _EncryptedKey:
        return f"TLS key {keyfile}: encrypted with a passphrase; give the key unencrypted"
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return f"TLS key {keyfile} does not match the certificate {certfile}"
        return f"TLS key {keyfile}: not a PEM private key"
    except OSError as exc:
        return f"TLS key {keyfile}: {exc.strerror or exc}"
    return None


def _print_warnings(warnings: Sequence[ConfigProblem]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as error:
        _print_warnings(error.warnings)
        raise
    _print_warnings(config.warnings)
    print(f"{args.file}: OK ({len(config.providers)} providers, {len(config.voices)} voices)")
    print(format_table(config))
    return 0


def cmd_voices(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _print_warnings(config.warnings)
    if args.json:
        print(json.dumps(Router(config).table(), indent=2))
    else:
        print(format_table(config))
    return 0


def cmd_say(args: argparse.Namespace) -> int:
    from .audio import write_wav

    if args.url:
        import httpx

        try:
            pcm, ttfb, total = asyncio.run(_say_remote(args))
        except httpx.HTTPError as error:
            hint = ""
            if "CERTIFICATE_VERIFY_FAILED" in str(error):
                hint = " (a self-signed certificate? pass its CA with --cacert)"
            print(f"error: {args.url}: {type(error).__name__}: {error}{hint}", file=sys.stderr)
            return 1
    else:
        pcm, ttfb, total = asyncio.run(_say_local(args))
    try:
        write_wav(args.output, pcm, args.sample_rate)
    except OSError as error:
        print(f"error: cannot write {args.output}: {error.strerror or error}", file=sys.stderr)
        return 1
    seconds = len(pcm) / 2 / args.sample_rate
    print(
        f"wrote {args.output}: {seconds:.2f} s of audio at {args.sample_rate} Hz; "
        f"first byte after {ttfb * 1000:.0f} ms, done after {total * 1000:.0f} ms"
    )
    return 0


async def _say_local(args: argparse.Namespace) -> tuple[bytes, float, float]:
    from .request import validate
    from .runtime import Gateway
    from .synthesis import Outcome

    config = _load(args.config)
    # The same checks as a request to the server (text cleaned, nothing-to-speak refused).
    request = validate(
        {
            "Text": args.text,
            "SampleRate": args.sample_rate,
            "VoiceId": args.voice,
            "ExtendData": {"Emotion": args.emotion} if args.emotion else {},
        },
        max_text_chars=config.server.max_text_chars,
    )
    gateway = Gateway(config)
    loading = time.perf_counter()
    await gateway.start()
    print(f"providers started in {(time.perf_counter() - loading) * 1000:.0f} ms", file=sys.stderr)
    parts: list[bytes] = []

    async def keep(pcm: bytes) -> None:
        parts.append(pcm)

    try:
        outcome = Outcome(gateway.metrics, "cli")
        async with gateway.core.open(gateway.routing, request, outcome) as synthesis:
            parts.append(await synthesis.pump(keep))
        ttfb = outcome.ttfb or 0.0
        return b"".join(parts), ttfb, time.perf_counter() - outcome.started
    finally:
        await gateway.stop()


async def _say_remote(args: argparse.Namespace) -> tuple[bytes, float, float]:
    import httpx

    body: dict[str, Any] = {
        "Text": args.text,
        "VoiceId": args.voice,
        "SampleRate": args.sample_rate,
        "ExtendData": json.dumps({"Emotion": args.emotion} if args.emotion else {}),
    }
    token = args.token or os.environ.get("TTS_GATEWAY_TOKEN")
    if token:
        body["Token"] = token
    parts: list[bytes] = []
    ttfb = 0.0
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=args.cacert) if args.cacert else True
    )
    async with httpx.AsyncClient(timeout=60, verify=verify) as client:
        started = time.perf_counter()
        async with client.stream("POST", args.url, json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode("utf-8", "replace")
                raise SystemExit(f"error: HTTP {response.status_code}: {detail}")
            async for chunk in response.aiter_raw():
                if chunk and not parts:
                    ttfb = time.perf_counter() - started
                if chunk:
                    parts.append(chunk)
        return b"".join(parts), ttfb, time.perf_counter() - started


def read_phrases(
    path: str, config: GatewayConfig, voice: str | None, sample_rate: int
) -> tuple[WarmPhrase, ...]:
    """The phrases of a phrase file: a YAML list of ``{voice, text, sample_rate?, emotion?}``
    when its name ends ``.yaml``/``.yml``, else plain text, one phrase a line (blank lines and
    ``#`` comments skipped) for ``voice`` at ``sample_rate``. Raises :class:`ConfigError` (the
    file's problems) or :class:`OSError`."""
    from .config.schema import check_phrase_list

    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        return check_phrase_list(text, path, config.voices)
    lines = (line.strip() for line in text.splitlines())
    phrases = [line for line in lines if line and not line.startswith("#")]
    listed = [{"voice": voice, "text": p, "sample_rate": sample_rate} for p in phrases]
    if not listed:
        return ()
    # The same checks as a YAML list (the voice exists and caches; the rate is one of four).
    return check_phrase_list(json.dumps(listed), path, config.voices)


def cmd_warm(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _print_warnings(config.warnings)
    if not config.server.cache.redis_url:
        print(
            "error: server.cache.redis_url is not set: warming stores into the shared Redis "
            "(this process's own memory would be gone when it exits)",
            file=sys.stderr,
        )
        return 2
    voice = args.voice or config.server.default_voice
    if not voice and not args.file.endswith((".yaml", ".yml")):
        print("error: no --voice given and the routing file has no default voice", file=sys.stderr)
        return 2
    try:
        phrases = read_phrases(args.file, config, voice, args.sample_rate)
    except OSError as error:
        print(f"error: cannot read {args.file}: {error.strerror or error}", file=sys.stderr)
        return 2
    except ConfigError as error:
        print(f"invalid phrase file:\n{error}", file=sys.stderr)
        return 2
    report, redis_failures = asyncio.run(_warm(config, phrases))
    print(
        f"{len(phrases)} phrases: {report.stored} stored, {report.cached} already cached, "
        f"{report.skipped} not cacheable, {report.failed} failed"
    )
    if redis_failures:
        print(
            f"error: {redis_failures} Redis call(s) failed: what was synthesized may not be "
            "stored (see the warnings above)",
            file=sys.stderr,
        )
        return 1
    return 1 if report.failed else 0


async def _warm(config: GatewayConfig, phrases: Sequence[WarmPhrase]) -> tuple[WarmReport, int]:
    """Warm ``phrases`` into the routing file's Redis (and the failures of Redis calls)."""
    from .cache import PhraseCache
    from .cache.warm import warm_phrases
    from .metrics import Metrics
    from .runtime import LoadedRouting

    metrics = Metrics()
    cache = PhraseCache(config.server.cache, metrics)
    routing = LoadedRouting(config, metrics, None, cache)
    await routing.start()
    try:
        report = await warm_phrases(routing, cache, phrases)
    finally:
        await cache.aclose()
        await routing.aclose()
    return report, cache.redis.failures if cache.redis is not None else 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .stats import DEFAULT_TIMEOUT, StatsError, metrics_url, read_report

    token = args.token or os.environ.get("TTS_GATEWAY_TOKEN") or None
    seconds = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    try:
        if args.timeout is not None and not 0 < args.timeout <= 300:
            raise StatsError("--timeout must be more than 0 and at most 300 seconds")
        server = _load(args.config).server if not args.url else ServerConfig()
        url = metrics_url(args.url, server)
        report = asyncio.run(read_report(url, token, seconds=seconds, cafile=args.cacert))
    except StatsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(report.as_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tts-gateway", description="A TTS gateway speaking the custom TTS interface."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="routing file (default: $TTS_GATEWAY_CONFIG, or built-in)")
    serve.add_argument("--host", help="bind address (default: server.host, 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (default: server.port, 8080)")
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes (default: server.workers, auto = one per core)",
    )
    serve.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a routing file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    voices = sub.add_parser("voices", help="print the routing table")
    voices.add_argument("--config")
    voices.add_argument("--json", action="store_true", help="as JSON")
    voices.set_defaults(func=cmd_voices)

    say = sub.add_parser("say", help="synthesize TEXT to a WAV file")
    say.add_argument("text")
    say.add_argument("--voice", default="", help="VoiceId (default: the default voice)")
    say.add_argument("--sample-rate", type=int, default=24000, choices=(8000, 16000, 24000, 48000))
    say.add_argument("--emotion", choices=("neutral", "happy", "sad"))
    say.add_argument("-o", "--output", default="out.wav")
    say.add_argument("--url", help="a running gateway's synthesis URL (default: in-process)")
    say.add_argument("--token", help="Token for --url (default: $TTS_GATEWAY_TOKEN)")
    say.add_argument("--cacert", help="CA bundle to verify an https --url")
    say.add_argument("--config", help="routing file for in-process synthesis")
    say.set_defaults(func=cmd_say)

    warm = sub.add_parser(
        "warm", help="synthesize the phrases of FILE into the shared Redis phrase cache"
    )
    warm.add_argument(
        "file",
        help="one phrase a line (blank lines and # comments skipped), or a .yaml/.yml list "
        "of {voice, text, sample_rate?, emotion?}",
    )
    warm.add_argument("--config", help="routing file (default: $TTS_GATEWAY_CONFIG)")
    warm.add_argument("--voice", help="VoiceId of a plain-text file (default: the default voice)")
    warm.add_argument("--sample-rate", type=int, default=24000, choices=(8000, 16000, 24000, 48000))
    warm.set_defaults(func=cmd_warm)

    stats = sub.add_parser(
        "stats", help="a running gateway's spend: per provider and per tenant, from /metrics"
    )
    stats.add_argument(
        "--url",
        help="the gateway's base URL or its /metrics URL (default: from --config: "
        "server.metrics.port or server.port on this machine; else http://127.0.0.1:8080)",
    )
    stats.add_argument("--config", help="the gateway's routing file, to find its /metrics")
    stats.add_argument("--token", help="Bearer token for /metrics (default: $TTS_GATEWAY_TOKEN)")
    stats.add_argument("--cacert", help="CA bundle to verify an https URL")
    stats.add_argument("--timeout", type=float, help="seconds to wait for the page (default: 10)")
    stats.add_argument("--json", action="store_true", help="as JSON")
    stats.set_defaults(func=cmd_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        configure_logging("warning")
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `tts-gateway voices | head`
        sys.stderr.close()
        return 0
    except ConfigError as error:
        print(f"invalid routing file:\n{error}", file=sys.stderr)
        return 1
    except Exception as error:  # a CLI prints what went wrong, not a traceback
        from .errors import GatewayError

        if isinstance(error, GatewayError):
            print(f"error: {error.status} {error.code}: {error.message}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
