"""``tts-gateway``: serve, check-config, voices, say."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .config import ConfigError, GatewayConfig, default_config, load_config
from .logs import configure_logging
from .routing import Router


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


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    config = _load(args.config)
    server = config.server
    configure_logging(server.log_level)
    certfile = args.ssl_certfile or server.ssl_certfile
    keyfile = args.ssl_keyfile or server.ssl_keyfile
    if bool(certfile) != bool(keyfile):
        print("error: --ssl-certfile and --ssl-keyfile go together", file=sys.stderr)
        return 2
    for tls_file in (certfile, keyfile):
        if tls_file and not Path(tls_file).is_file():
            print(f"error: no such TLS file: {tls_file}", file=sys.stderr)
            return 2
    options: dict[str, Any] = {
        "host": args.host or server.host,
        "port": server.port if args.port is None else args.port,
        "log_level": server.log_level,
        "access_log": False,  # the gateway logs one richer line per request itself
        "timeout_graceful_shutdown": server.drain_seconds,
        "ssl_certfile": certfile,
        "ssl_keyfile": keyfile,
        "log_config": None,
    }
    if args.workers > 1:
        # Each worker process loads the routing file itself.
        if args.config:
            os.environ["TTS_GATEWAY_CONFIG"] = str(Path(args.config).resolve())
        uvicorn.run("gateway.app:app_from_env", factory=True, workers=args.workers, **options)
    else:
        path = args.config or os.environ.get("TTS_GATEWAY_CONFIG") or None
        app = create_app(config, path)
        gateway = app.state.gateway

        class DrainingServer(uvicorn.Server):
            """On SIGTERM/SIGINT, answer 503 (readyz, new requests on open connections) while
            the streams under way finish."""

            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                gateway.draining = True
                super().handle_exit(sig, frame)

        DrainingServer(uvicorn.Config(app, **options)).run()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"{args.file}: OK ({len(config.providers)} providers, {len(config.voices)} voices)")
    print(format_table(config))
    return 0


def cmd_voices(args: argparse.Namespace) -> int:
    config = _load(args.config)
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
    write_wav(args.output, pcm, args.sample_rate)
    seconds = len(pcm) / 2 / args.sample_rate
    print(
        f"wrote {args.output}: {seconds:.2f} s of audio at {args.sample_rate} Hz; "
        f"first byte after {ttfb * 1000:.0f} ms, done after {total * 1000:.0f} ms"
    )
    return 0


async def _say_local(args: argparse.Namespace) -> tuple[bytes, float, float]:
    from .app import Gateway
    from .request import TTSRequest

    gateway = Gateway(_load(args.config))
    loading = time.perf_counter()
    await gateway.start()
    print(f"providers started in {(time.perf_counter() - loading) * 1000:.0f} ms", file=sys.stderr)
    extend = {"Emotion": args.emotion} if args.emotion else {}
    request = TTSRequest(
        text=args.text, sample_rate=args.sample_rate, voice_id=args.voice, extend_data=extend
    )
    try:
        started = time.perf_counter()
        stream = await gateway.open(request, "cli")
        parts: list[bytes] = []
        ttfb = 0.0
        try:
            async for pcm in stream.chunks():
                if not parts:
                    ttfb = time.perf_counter() - started
                parts.append(pcm)
        finally:
            await stream.aclose()
        return b"".join(parts), ttfb, time.perf_counter() - started
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tts-gateway", description="A TTS gateway speaking the custom TTS interface."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="routing file (default: $TTS_GATEWAY_CONFIG, or built-in)")
    serve.add_argument("--host", help="bind address (default: server.host, 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (default: server.port, 8080)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
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
