"""Multiprocess mode: a turn's increments are written to the shared files once each, and none is
lost (written at the turn's end, before a scrape, across event loops, off the loop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

# Run in a process of its own: prometheus-client picks its value class from the environment
# when it is imported.
_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, threading
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector
    from gateway.metrics import Metrics

    metrics = Metrics()
    ok = metrics.requests.labels("200")
    ttfb = metrics.ttfb.labels("p")
    writes = {"requests": 0, "active": 0, "ttfb": 0}

    def counting(name, value):
        inner = value.inc
        def inc(amount):
            writes[name] += 1
            inner(amount)
        value.inc = inc

    counting("requests", ok._value)
    counting("active", metrics.active._value)
    for value in (ttfb._sum, *ttfb._buckets):
        counting("ttfb", value)

    def shared(name):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        labels = {"status": "200"} if name == "tts_requests_total" else {}
        if name.startswith("tts_first_byte"):
            labels = {"provider": "p", **({"le": "0.05"} if "bucket" in name else {})}
        return registry.get_sample_value(name, labels) or 0.0

    seen = {}

    async def turns():
        for _ in range(50):
            ok.inc()
        for _ in range(3):
            metrics.active.inc()
        metrics.active.dec()
        for seconds in (0.02, 0.03, 0.04, 0.3):
            ttfb.observe(seconds)
        seen["histogram held"] = [shared("tts_first_byte_seconds_count"), writes["ttfb"]]
        seen["held"] = [shared("tts_requests_total"), writes["requests"]]
        await asyncio.sleep(0)
        seen["turn"] = [shared("tts_requests_total"), writes["requests"]]
        seen["active"] = [shared("tts_streams_active"), writes["active"]]
        seen["histogram"] = [
            shared("tts_first_byte_seconds_count"),
            round(shared("tts_first_byte_seconds_sum"), 9),
            shared("tts_first_byte_seconds_bucket"),
            writes["ttfb"],
        ]
        for _ in range(10):
            ok.inc()
        metrics.render()  # a scrape on the loop's thread writes what is held first
        seen["scrape"] = [shared("tts_requests_total"), writes["requests"]]
        ok.inc(2)
        thread = threading.Thread(target=ok.inc, args=(5,))  # off the loop: at once
        thread.start()
        thread.join()
        seen["thread"] = [shared("tts_requests_total"), writes["requests"]]

    loop = asyncio.new_event_loop()
    loop.run_until_complete(turns())
    seen["done"] = [shared("tts_requests_total"), writes["requests"]]

    def last():  # the loop's last turn: its flush never comes
        ok.inc(3)
        loop.stop()

    loop.call_soon(last)
    loop.run_forever()
    seen["stopped"] = [shared("tts_requests_total"), writes["requests"]]
    ok.inc()  # no loop running now: what the stopped loop held is written with it
    seen["after"] = [shared("tts_requests_total"), writes["requests"]]
    loop.close()
    print(json.dumps(seen))
    """
)


def test_a_turns_increments_are_written_once_and_none_is_lost(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["held"] == [0.0, 0]  # held for the turn
    assert seen["turn"] == [50.0, 1]  # fifty increments, one write
    assert seen["active"] == [2.0, 1]  # +3 -1, one write
    # Four observations: the sum written once, and each bucket met once (0.025, 0.05, 0.5).
    assert seen["histogram held"] == [0.0, 0]
    assert seen["histogram"] == [4.0, 0.39, 3.0, 4]
    assert seen["scrape"] == [60.0, 2]
    # The thread's 5 went out at once; the 2 of the turn were still held.
    assert seen["thread"] == [65.0, 3]
    assert seen["done"] == [67.0, 4]
    assert seen["stopped"] == [67.0, 4]  # the 3 of the loop's last turn, held
    assert seen["after"] == [71.0, 6]  # written with the next, once no loop runs
