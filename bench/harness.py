"""The bench's harness: servers run as processes of their own, what /proc says of them (CPU,
memory, connections), the load generator run in its own process (so that no figure measures
the process that takes it), and the targets the figures are judged by."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (nginx: master and worker)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(entry.name))
    return pids


def cpu_by_process(pid: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of a process and of each of its children, by pid, from
    /proc (a process gone meanwhile is left out)."""
    found = {}
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[p] = int(fields[11]) / TICKS, int(fields[12]) / TICKS
    return found


def split_of(reading: dict[int, tuple[float, float]]) -> tuple[float, float]:
    """(user, system) CPU seconds of a :func:`cpu_by_process` reading, its processes summed."""
    return sum(u for u, _ in reading.values()), sum(s for _, s in reading.values())


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its children, from /proc."""
    return split_of(cpu_by_process(pid))


def busiest_share(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
) -> float:
    """Of the CPU a process tree took between two :func:`cpu_by_process` readings, the share
    its busiest process took (1: one process did all of it; 0 when none was taken)."""
    taken = [sum(ticks) - sum(before.get(p, (0.0, 0.0))) for p, ticks in after.items()]
    total = sum(taken)
    return max(taken) / total if total > 0 else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children, from /proc."""
    user, system = cpu_split(pid)
    return user + system


def cpu_ns(pid: int) -> int:
    """CPU nanoseconds of a process and its children, every thread's, from the scheduler's
    own count (``/proc/PID/task/TID/schedstat``): exact where ``/proc/PID/stat`` counts 10 ms
    ticks, so a measurement of a second or less is not a few ticks more or less. A thread that
    ended meanwhile takes its time with it."""
    return _schedstat(pid, 0)


def waited_ns(pid: int) -> int:
    """Nanoseconds a process and its children (every thread) spent ready to run but waiting
    for a core, from the same count as :func:`cpu_ns`: what the machine's other processes
    cost it in time, beside what it costs itself."""
    return _schedstat(pid, 1)


def _schedstat(pid: int, field: int) -> int:
    """A field of ``/proc/PID/task/TID/schedstat`` (0: time on a core, 1: time waiting for
    one), summed over a process tree's threads."""
    total = 0
    for p in process_tree(pid):
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:  # gone meanwhile
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[field])
            except (OSError, ValueError, IndexError):
                continue
    return total


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children, KiB."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections owned by ``pid`` or its children (a gateway's workers)
    whose remote port is ``port``."""
    inodes = set()
    for p in process_tree(pid):
        try:
            fds = list(Path(f"/proc/{p}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        remote_port = int(parts[2].split(":")[1], 16)
        if remote_port == port and parts[3] == "01" and parts[9] in inodes:
            count += 1
    return count


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    name: str,
    args: list[str],
    port: int,
    workdir: Path,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Server:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    server = Server(name, process, port, log)
    try:
        wait_port(port)
    except RuntimeError:
        server.stop()
        raise RuntimeError(f"{name} did not start:\n{log.read_text()[-2000:]}") from None
    return server


def settle(server: Server, seconds: float = 60.0, quiet: float = 0.1) -> float:
    """Wait until ``server``, which answers on its port, has finished starting: its processes
    together using under ``quiet`` of a core over two quarter-seconds in a row; the seconds
    waited. A supervisor listens before its workers are up (connections wait in the listen
    queue meanwhile, not refused), so the port answers ~2 s early: a scenario begun then
    measures the workers' start-up beside its first runs (its first request through the
    gateway waited 1.4-1.6 s for a worker; the runs before it shared the machine with the
    workers' imports and model loads)."""
    started = time.monotonic()
    deadline = started + seconds
    calm = 0
    before, at = cpu_ns(server.pid), time.monotonic()
    while calm < 2:
        time.sleep(0.25)
        now, then = cpu_ns(server.pid), time.monotonic()
        calm = calm + 1 if (now - before) / 1e9 < quiet * (then - at) else 0
        before, at = now, then
        if then > deadline:
            raise RuntimeError(f"{server.name} still busy starting after {seconds:g} s")
    return time.monotonic() - started


def load(url: str, workdir: Path, **options: Any) -> dict[str, Any]:
    """Run the load generator in its own process; its raw results."""
    out = workdir / "load.json"
    args = [PY, "-m", "bench.loadgen", "--url", url, "--json", str(out)]
    for key, value in options.items():
        if value is True or value is False:  # a flag: given or left out
            args += [f"--{key}"] if value else []
        else:
            args += [f"--{key}", str(value)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the load generator failed:\n{done.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Target:
    """A figure beside its target: at most ``limit``, or at least it with ``at_least``;
    ``shown``, when given, is how the report writes the figure (``value`` is what is judged);
    ``scenario``, the report's section whose run gives it ("(3) real-time streams")."""

    figure: str
    value: float
    limit: float
    unit: str
    at_least: bool = False
    shown: str = ""
    scenario: str = ""

    @property
    def ok(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    @property
    def measured(self) -> str:
        return self.shown or f"{self.value:.2f} {self.unit}"

    @property
    def bound(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self.limit:g} {self.unit}".rstrip()
