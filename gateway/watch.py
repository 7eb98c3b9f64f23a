"""Reload on change: the routing file watched on disk (``server.watch``).

The file is polled (:data:`POLL_SECONDS`), by what ``stat`` says of the file it names *after
following symlinks*: device, inode, size and modification time. That sees an editor's save, a
``cp`` over the file, and Kubernetes' ConfigMap update, which swaps a symlink to a new
directory (the file's inode changes; no event is ever raised on the path that was mounted).
A change is acted on once the file has stayed the same for one poll, so that a file caught
half-written is not loaded; a missing file is a change too (it is acted on when it is back).
Polling costs one ``stat`` a second, and works on every file system, network ones included.
"""

from __future__ import annotations

import os
from typing import Final

#: Seconds between two looks at the file.
POLL_SECONDS: Final = 0.5

Signature = tuple[int, int, int, int] | None


def signature(path: str) -> Signature:
    """What identifies the file's current content, or None if there is no such file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatch:
    """Tells, poll by poll, whether the file at ``path`` has changed and settled since the
    content last acted on."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._acted = signature(path)
        self._seen = self._acted

    def poll(self) -> bool:
        """Look at the file once; True when it changed and has stayed the same since the last
        look (then the change counts as acted on)."""
        now = signature(self.path)
        settled = now == self._seen
        self._seen = now
        if settled and now != self._acted and now is not None:
            self._acted = now
            return True
        return False
