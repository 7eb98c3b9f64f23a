"""A serving process's heap set aside from the cycle collector once started
(``gateway.heap``): garbage made before is collected first, what is left is frozen (no pass
scans it again), and a reload's retired routing gives it all back. Each worker of a real
``tts-gateway serve`` settles its own heap, and gives it back after a SIGHUP reload; the
process functions run in a subprocess of their own, since freezing is process-wide."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.served import GatedUpstream, routing_file, serving

_SCRIPT = """
import gc, json, weakref
from gateway import heap

class Node:
    pass

garbage = Node()
garbage.me = garbage              # a reference cycle, unreachable once dropped
gone = weakref.ref(garbage)
del garbage
kept = [Node()]                   # a live container from "start"
gc.disable()                      # no automatic pass: only settle() collects
count = heap.settle()
found = {
    "settled": count,
    "garbage_collected": gone() is None,
    "frozen": gc.get_freeze_count(),
    "kept_scanned": any(o is kept for o in gc.get_objects()),
}
heap.thaw()
found["frozen_after_thaw"] = gc.get_freeze_count()
found["kept_scanned_after_thaw"] = any(o is kept for o in gc.get_objects())
print(json.dumps(found))
"""


def test_settle_collects_then_freezes_and_thaw_gives_everything_back() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["garbage_collected"] is True  # the cycle made before was collected first
    assert found["settled"] == found["frozen"] > 1000  # the interpreter's and the modules'
    assert found["kept_scanned"] is False  # set aside: no pass scans it
    assert found["frozen_after_thaw"] == 0
    assert found["kept_scanned_after_thaw"] is True


@pytest.mark.asyncio
async def test_each_worker_settles_its_heap_and_a_reload_gives_it_back(tmp_path: Path) -> None:
    async with GatedUpstream() as a, GatedUpstream() as b:
        config = tmp_path / "gateway.yaml"
        routing_file(config, {"a": a.url, "b": b.url}, "a", watch=False)
        async with serving("--config", str(config), "--workers", "2", workers=2) as served:
            await served.wait_for("heap settled", times=2)
            assert served.count("heap thawed") == 0
            routing_file(config, {"a": a.url, "b": b.url}, "b", watch=False)
            served.signal(signal.SIGHUP)
            await served.wait_for("reloaded ", times=2)
            # Once the old routing is retired (nothing was under way on it: at once).
            await served.wait_for("heap thawed", times=2)
            assert served.count("heap settled") == 2  # at start only


@pytest.mark.asyncio
async def test_one_process_serving_settles_its_heap(tmp_path: Path) -> None:
    async with GatedUpstream() as a:
        config = tmp_path / "gateway.yaml"
        routing_file(config, {"a": a.url}, "a", watch=False)
        async with serving("--config", str(config), "--workers", "1") as served:
            await served.wait_for("heap settled")
