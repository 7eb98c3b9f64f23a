"""A request leaves no reference cycles behind, nor does a closed connection: what they made is
freed by reference counting as they end. Serving processes run the cycle collector rarely
(``gateway.cli.tune_gc``), so a cycle per request would hold each request's objects (the
exchange, the attempt, its converter, an error's frames) until the next pass, and a process
under load, or under callers that open a connection per request, would grow by that much."""

from __future__ import annotations

import gc
import json
from typing import Any

from gateway.app import create_app
from gateway.config import parse_config
from tests.cache_support import PhraseUpstream, ask, body
from tests.support import live_server

#: The types a request makes (the door, the relay, the attempt, the stream); none may be found
#: in cyclic garbage once requests have ended.
PER_REQUEST = {
    "HangUp",
    "Outcome",
    "TTSRequest",
    "SynthesisJob",
    "_Walk",
    "VoiceTry",
    "AudioStream",
    "Converter",
    "Bill",
    "Lease",
    "OnePiece",
    "ProviderHTTPError",
}
#: A connection's (the caller's, and the upstream's: the loopback upstream closes each one).
PER_CONNECTION = {"HTTPProtocol", "RequestReader", "Exchange", "_Connection"}


def routing(failing: str, healthy: str) -> str:
    def provider(url: str) -> dict[str, Any]:
        return {
            "type": "custom",
            "url": url,
            "sample_rates": [24000],
            "retry": {"attempts": 1},
            "timeout": {"connect": 2, "first_byte": 10, "total": 30, "stall": 30},
        }

    return json.dumps(
        {
            "server": {"default_voice": "main"},
            "providers": {"sick": provider(failing), "well": provider(healthy)},
            "voices": {
                "main": {"provider": "sick", "fallback": ["backup"]},
                "backup": {"provider": "well"},
            },
        }
    )


async def test_answered_and_failed_over_requests_and_their_connections_leave_no_cycles() -> None:
    # Each request on a connection of its own (``ask``), which the caller then closes.
    async with PhraseUpstream(status=503) as failing, PhraseUpstream() as healthy:
        app = create_app(parse_config(routing(failing.url, healthy.url)))
        async with live_server(app) as url:
            for voice in ("main", "backup"):  # first requests: imports, caches, connections
                assert (await ask(url, body(voice=voice))).status == 200
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(3):
                    # The sick voice's 503, then its fallback; and the fallback alone.
                    for voice in ("main", "backup"):
                        answer = await ask(url, body(voice=voice))
                        assert answer.status == 200
                        assert answer.headers["x-voice"] == "backup"
                        assert len(answer.audio) > 0
                gc.collect()
                found = {type(o).__name__ for o in gc.garbage}
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            assert failing.count == 4 and healthy.count == 8
    assert found & (PER_REQUEST | PER_CONNECTION) == set()
