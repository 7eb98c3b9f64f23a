"""Several worker processes on one port, kept alive and reloaded in place.

``tts-gateway serve`` with ``server.workers`` above 1 (``auto``: one per core) runs this
supervisor. It binds the port once and starts the workers (fresh interpreters), each serving
the same listening socket with the whole gateway, its limits split between them
(:func:`gateway.runtime.share_limits`), filled with new connections in order while they are
light, each taking a few of the connections waiting at a time, so that a burst is shared
between them (:mod:`gateway.http1.accept`: the workers publish their load in memory the
supervisor shares with them). The supervisor itself serves nothing:

- **SIGHUP**, and a change of the routing file on disk (``server.watch``), are passed to every
  worker, which reloads in place (:meth:`gateway.runtime.Gateway.reload`): no process restarts,
  streams under way finish on the routing they started with, a bad file is refused by each
  with every error logged and the old routing kept;
- **SIGTERM / SIGINT**: the supervisor closes its copy of the listening socket and passes the
  signal on; every worker drains (``server.drain_seconds``) and exits, then the supervisor;
- a worker that **dies** is replaced (after a pause that doubles while workers keep dying
  at start, so a broken machine is not a busy loop), its live gauges dropped; if the
  supervisor dies, every worker drains and exits;
- **metrics**: prometheus-client's multiprocess mode, its directory made here and removed at
  exit (or the operator's ``PROMETHEUS_MULTIPROC_DIR``, emptied of an earlier run's files by
  ``serve``: :func:`gateway.metrics.prepare_directory`); ``/metrics`` of any worker sums
  every process, and so does ``server.metrics.port``, served from here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import MutableSequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Final

from prometheus_client import multiprocess as prometheus_multiprocess

from .metrics import MULTIPROC_ENV
from .watch import POLL_SECONDS, FileWatch

log = logging.getLogger("gateway")

#: The environment variable that tells a worker how many processes share the limits.
WORKERS_ENV: Final = "TTS_GATEWAY_WORKERS"
#: A worker that dies within this many seconds of its start died starting.
_EARLY_DEATH_SECONDS: Final = 5.0
#: The longest pause before a worker that keeps dying at start is started again.
_MAX_RESPAWN_PAUSE: Final = 30.0
#: How often the supervisor looks at its workers (and, every POLL_SECONDS, the routing file).
TICK_SECONDS: Final = 0.25


def workers_wanted(configured: int, given: int | None) -> int:
    """The number of worker processes: ``--workers``, else ``server.workers``, where 0 is
    ``auto``: one per core this process may use (the CPUs it may run on, fewer under a
    container's CPU limit)."""
    wanted = given if given else configured
    if wanted <= 0:
        try:
            wanted = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            wanted = os.cpu_count() or 1
        quota = cpu_quota()
        if quota is not None:
            wanted = min(wanted, max(1, math.ceil(quota)))
    return max(1, wanted)


def cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """The cores a cgroup-v2 CPU limit allows this process (Kubernetes' ``limits.cpu``,
    ``docker run --cpus``), or None when there is no limit."""
    try:
        with open(path) as file:
            quota, _, period = file.read().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or "100000")
    except (OSError, ValueError, ZeroDivisionError):
        return None


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to serve (all of it picklable: workers are fresh interpreters)."""

    config_path: str | None
    certfile: str | None
    keyfile: str | None
    workers: int


def _run_worker(
    spec: WorkerSpec, sock: socket.socket, index: int, loads: MutableSequence[float]
) -> None:
    """A worker's main: load the routing file, build the app and serve ``sock`` until told
    to stop (SIGTERM drains, as in one process). ``loads``: the workers' shared load board
    (:class:`gateway.http1.accept.LoadBoard`), ``index`` this worker's place on it."""
    import uvicorn

    from .app import create_app
    from .cli import serve_options, tune_gc
    from .config import ConfigError, default_config, load_config
    from .http1.accept import LoadBoard, PacedServer
    from .logs import configure_logging

    os.environ[WORKERS_ENV] = str(spec.workers)
    try:
        config = load_config(spec.config_path) if spec.config_path else default_config()
    except ConfigError as error:
        print(f"invalid routing file:\n{error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    configure_logging(config.server.log_level, config.server.log_format)
    _stop_with_the_supervisor()
    app = create_app(
        config, spec.config_path, workers=spec.workers, supervised=True, settle_heap=True
    )
    options = serve_options(config, spec.certfile, spec.keyfile)
    tune_gc()
    gateway = app.state.gateway
    server = PacedServer(
        uvicorn.Config(app, **options),
        LoadBoard(loads, index),
        gateway.occupancy,
        lambda: gateway.streams.active,
    )
    server.run(sockets=[sock])


def _stop_with_the_supervisor() -> None:
    """Drain and exit if the supervisor dies (killed, it can pass no signal on), rather than
    serve on as an orphan that nothing replaces or reloads, holding the port."""
    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - always started by a supervisor
        return

    def wait() -> None:
        parent.join()  # returns once the supervisor has exited
        log.warning("the supervisor is gone: draining and exiting")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="supervisor-watch", daemon=True).start()


class Supervisor:
    """Runs ``spec.workers`` workers on ``sock`` (see the module docstring)."""

    def __init__(
        self,
        spec: WorkerSpec,
        sock: socket.socket,
        *,
        watch: bool,
        metrics_port: int | None,
        metrics_host: str,
        stop_seconds: float,
    ) -> None:
        self.spec = spec
        self.sock: socket.socket | None = sock
        self.watch = watch
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.stop_seconds = stop_seconds
        self.workers: dict[int, tuple[BaseProcess, float]] = {}  # index -> (process, started)
        self._context = multiprocessing.get_context("spawn")
        # The workers' load board (gateway.http1.accept): which of them takes new connections.
        # (Imported here: that module imports uvicorn, which only the workers need.)
        from .http1.accept import LOAD_SLOT

        self.loads = self._context.RawArray("d", LOAD_SLOT * spec.workers)
        self._wake = threading.Event()
        self._reload = False
        self._stopping = False
        self._pause = 1.0
        self._due: dict[int, float] = {}  # index -> when a dead worker is started again

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit status."""
        owned_dir = None
        if not os.environ.get(MULTIPROC_ENV):  # else the operator's, prepared by ``serve``
            owned_dir = tempfile.mkdtemp(prefix="tts-gateway-metrics-")
            os.environ[MULTIPROC_ENV] = owned_dir
        previous = {
            signum: signal.signal(signum, self._signalled)
            for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
        }
        scrape = None
        try:
            if self.metrics_port is not None:
                from .metrics import serve_metrics

                scrape = serve_metrics(self.metrics_host, self.metrics_port)
            for index in range(self.spec.workers):
                self._start(index)
            log.info("supervisor: %d worker processes serving", self.spec.workers)
            self._loop()
        finally:
            self._stop_workers()
            if scrape is not None:
                scrape.shutdown()
                scrape.server_close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if owned_dir is not None:
                shutil.rmtree(owned_dir, ignore_errors=True)
        return 0

    # ---------------------------------------------------------------- internals

    def _signalled(self, number: int, frame: FrameType | None) -> None:
        if number == signal.SIGHUP:
            self._reload = True
        else:
            self._stopping = True
        self._wake.set()

    def _loop(self) -> None:
        watch = None
        if self.watch and self.spec.config_path:
            watch = FileWatch(self.spec.config_path)
        next_look = 0.0
        while not self._stopping:
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()
            if self._stopping:
                break
            now = time.monotonic()
            if watch is not None and now >= next_look:
                next_look = now + POLL_SECONDS
                if watch.poll():
                    log.info("%s changed on disk: reloading every worker", watch.path)
                    self._reload = True
            if self._reload:
                self._reload = False
                self._signal_workers(signal.SIGHUP)
            self._replace_dead(now)

    def _start(self, index: int) -> None:
        process = self._context.Process(
            target=_run_worker,
            args=(self.spec, self.sock, index, self.loads),
            name=f"tts-gateway-worker-{index}",
            daemon=False,
        )
        # A worker can reload only once its app has started; until then a SIGHUP would end
        # it. So it is born with SIGHUP blocked (the signal mask is inherited) and unblocks it
        # once it can reload: a SIGHUP sent meanwhile waits, then reloads it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        self.workers[index] = (process, time.monotonic())

    def _replace_dead(self, now: float) -> None:
        # A dead worker leaves ``workers`` at once (its process object is closed), so that
        # signals and the stop only ever see live ones; it is started again once ``_due``.
        for index, (process, started) in list(self.workers.items()):
            if process.is_alive():
                continue
            del self.workers[index]
            code = process.exitcode
            if process.pid is not None:
                prometheus_multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
            early = now - started < _EARLY_DEATH_SECONDS
            pause = self._pause if early else 0.0
            self._pause = min(self._pause * 2, _MAX_RESPAWN_PAUSE) if early else 1.0
            log.error(
                "worker %d (pid %s) exited with %s; starting another in %g s",
                index,
                process.pid,
                code,
                pause,
            )
            process.close()
            self._due[index] = now + pause
        for index, due in list(self._due.items()):
            if now >= due:
                del self._due[index]
                self._start(index)

    def _signal_workers(self, signum: int) -> None:
        for process, _ in self.workers.values():
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    def _stop_workers(self) -> None:
        """Close the listening socket here (new connections are refused once the workers
        have closed theirs), pass SIGTERM on, and wait for every worker's drain."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_seconds
        for process, _ in self.workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
        for process, _ in self.workers.values():
            if process.is_alive():
                log.error("worker pid %s did not stop in time: killed", process.pid)
                process.kill()
                process.join(5)
            if process.pid is not None:
                prometheus_multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
