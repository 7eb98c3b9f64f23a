"""The cycle collector and a serving process's heap.

A worker's start leaves tens of thousands of objects that live as long as it does: modules,
the routing, providers, models, pools. Python's collector scans them all on each pass over its
oldest generation, and its first such pass comes early in serving, when the objects of the
requests in flight have been promoted far enough: measured on this 2-core machine size, one
pass of 38-59 ms per worker within the first seconds of a burst of 200 callers or of 600
real-time streams, with the event loop stopped meanwhile (every stream's next chunk and every
waiting caller's first byte held back by as much).

:func:`settle` runs once the gateway has started, before the worker takes a connection: one
full pass there (nothing is waiting yet), then :func:`gc.freeze`, which sets every object left
aside in the collector's permanent generation, never scanned again. Later passes over the
oldest generation scan only what serving made. What is set aside is still freed by reference
counting like anything else; only a reference cycle among those objects would outlive its use.
A routing file reloaded retires the old routing's providers and clients (set aside if they
were there at start): :func:`thaw` gives everything set aside back to the collector once they
have been retired, so that their cycles are found by its next pass, as before any settling.
No pass is forced then: that would stop the loop with streams under way.

Only serving processes settle (the gateway's ``serve``, each of its workers): a process that
runs gateways one after another (tests, say) would set aside each one's garbage."""

from __future__ import annotations

import gc
import logging

__all__ = ["settle", "thaw"]

log = logging.getLogger("gateway")


def settle() -> int:
    """Collect once, then set every object left aside (see the module docstring); returns
    how many were."""
    gc.collect()
    gc.freeze()
    count = gc.get_freeze_count()
    log.info(
        "heap settled: %d objects set aside from the cycle collector",
        count,
        extra={"event": "heap_settled", "objects": count},
    )
    return count


def thaw() -> None:
    """Give whatever :func:`settle` set aside back to the cycle collector (a retired routing's
    objects among them); nothing if nothing was."""
    count = gc.get_freeze_count()
    if count:
        gc.unfreeze()
        log.info(
            "heap thawed: %d objects set aside at start given back to the cycle collector",
            count,
            extra={"event": "heap_thawed", "objects": count},
        )
