"""``tts-gateway serve`` as ops run it, for tests over real processes on loopback: the command
as a subprocess, its log read line by line, its worker processes found by their parent, its
``/metrics`` parsed, and an upstream that holds its streams open until a test lets them go."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support import LoopbackServer, RawResponse, raw_post, read_request, tone

REPO = Path(__file__).resolve().parent.parent
CHUNK = tone(440, 0.02, 24000)
BODY = {"Text": "Hello.", "SampleRate": 24000, "VoiceId": "v"}
#: Deadline for anything a test waits for from a gateway process (a loaded machine is slow).
PATIENCE = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def routing_text(upstreams: Mapping[str, str], voice_to: str, **server: Any) -> str:
    """A routing file: one ``custom`` provider per upstream URL, and the voice ``v`` (the
    default) on the provider ``voice_to``."""
    server.setdefault("default_voice", "v")
    server.setdefault("log_level", "info")
    document = {
        "server": server,
        "providers": {
            name: {"type": "custom", "url": url, "retry": {"attempts": 1}}
            for name, url in upstreams.items()
        },
        "voices": {"v": {"provider": voice_to}},
    }
    return json.dumps(document)


def routing_file(path: Path, upstreams: Mapping[str, str], voice_to: str, **server: Any) -> None:
    """Write :func:`routing_text` to ``path`` whole under another name, then rename it: a
    watch never sees it half-written."""
    part = path.with_name(path.name + ".part")
    part.write_text(routing_text(upstreams, voice_to, **server))
    os.replace(part, path)


class ConfigMapDir:
    """A directory laid out as Kubernetes mounts a ConfigMap: ``gateway.yaml ->
    ..data/gateway.yaml`` and ``..data -> ..<timestamp>``. An update (:meth:`publish`) writes
    a new timestamped directory, points ``..data`` at it atomically (a new symlink renamed over
    it) and deletes the old directory, as the kubelet does."""

    def __init__(self, root: Path, text: str) -> None:
        self.root = root
        self.path = root / "gateway.yaml"
        self._serial = 0
        self._current: Path | None = None
        self.publish(text)
        self.path.symlink_to(Path("..data") / "gateway.yaml")

    def publish(self, text: str) -> None:
        self._serial += 1
        fresh = self.root / f"..2026_01_01_00_00_{self._serial:02d}.{os.getpid()}"
        fresh.mkdir()
        (fresh / "gateway.yaml").write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(fresh.name)
        os.replace(link, self.root / "..data")
        if self._current is not None:
            (self._current / "gateway.yaml").unlink()
            self._current.rmdir()
        self._current = fresh


@dataclass
class GatedUpstream(LoopbackServer):
    """A loopback upstream speaking the custom TTS interface: each answer is ``chunks`` chunks
    of :data:`CHUNK`. While it holds (:meth:`hold`), an answer stops after its first chunk until
    it is let go (:meth:`release`, :meth:`open`) or the gateway hangs up."""

    chunks: int = 3
    requests: list[dict[str, Any]] = field(default_factory=list)
    hung_up: int = 0
    holding: bool = False
    _waiting: list[asyncio.Event] = field(default_factory=list)

    @property
    def held(self) -> int:
        """Answers held now."""
        return len(self._waiting)

    def hold(self) -> None:
        self.holding = True

    def release(self, count: int) -> None:
        """Let ``count`` of the held answers go on (the longest held first)."""
        for gate in self._waiting[:count]:
            gate.set()

    def open(self) -> None:
        """Let every held answer go on, and hold no more."""
        self.holding = False
        self.release(len(self._waiting))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            _, _, body = await read_request(reader)
            self.requests.append(json.loads(body))
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK)
            )
            await writer.drain()
            if self.holding and not await self._held(reader):
                self.hung_up += 1
                return
            for _ in range(self.chunks - 1):
                writer.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.hung_up += 1
        finally:
            writer.close()

    async def _held(self, reader: asyncio.StreamReader) -> bool:
        """Wait until let go (True) or until the gateway hangs up (False)."""
        gate = asyncio.Event()
        self._waiting.append(gate)
        eof = asyncio.ensure_future(reader.read(1))
        released = asyncio.ensure_future(gate.wait())
        try:
            await asyncio.wait((eof, released), return_when=asyncio.FIRST_COMPLETED)
            return gate.is_set()
        finally:
            self._waiting.remove(gate)
            eof.cancel()
            released.cancel()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:  # gone meanwhile
            continue
        # The command name is in parentheses and may hold anything: read after the last one.
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(stat.split("/")[2]))
    return found


def is_worker(pid: int) -> bool:
    """Whether ``pid`` is a worker process (not multiprocessing's resource tracker)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone
        return False


def workers_of(pid: int) -> set[int]:
    """The supervisor's worker processes."""
    return {child for child in children(pid) if is_worker(child)}


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has ended)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


def listening_on(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at ``port`` (from ``/proc/net/tcp``)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value in a Prometheus text exposition (0 if absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def requests_by_process(directory: str) -> dict[int, float]:
    """``tts_requests_total`` (every status) by the process that counted it, read from the
    multiprocess directory's files (one per process)."""
    counts: dict[int, float] = {}
    for path in glob.glob(os.path.join(directory, "counter_*.db")):
        pid = int(Path(path).stem.split("_")[-1])
        total = 0.0
        for metric in MultiProcessCollector.merge([path]):  # type: ignore[no-untyped-call]
            total += sum(s.value for s in metric.samples if s.name == "tts_requests_total")
        counts[pid] = total
    return counts


def requests_since(directory: str, before: Mapping[int, float]) -> dict[int, float]:
    """Requests counted since ``before`` (:func:`requests_by_process`), by each process that
    counted any."""
    after = requests_by_process(directory)
    return {pid: n - before.get(pid, 0.0) for pid, n in after.items() if n != before.get(pid)}


async def requests_counted(
    directory: str, before: Mapping[int, float], requests: int
) -> dict[int, float]:
    """:func:`requests_since` once it sums to ``requests``: a worker writes its counts at the end
    of its loop's turn, just after its answers have left."""
    assert await until(lambda: sum(requests_since(directory, before).values()) == requests), (
        requests_since(directory, before)
    )
    return requests_since(directory, before)


async def until(condition: Callable[[], object], seconds: float = PATIENCE) -> bool:
    """Poll ``condition`` every 20 ms until it holds or ``seconds`` pass; whether it held."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def settled(served: Served, name: str, want: float, **labels: str) -> float:
    """Scrape until ``name`` reads ``want`` (a live gauge follows events a moment later); its
    last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while (value := sample(await served.metrics(), name, **labels)) != want:
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    return value


def streams_by_process(directory: str) -> dict[int, float]:
    """``tts_streams_active`` by live process (0 for one that holds none)."""
    found: dict[int, float] = {}
    for path in glob.glob(os.path.join(directory, "gauge_livesum_*.db")):
        pid = int(Path(path).stem.split("_")[-1])
        with contextlib.suppress(FileNotFoundError):  # its process died meanwhile
            for metric in MultiProcessCollector.merge([path]):  # type: ignore[no-untyped-call]
                for s in metric.samples:
                    if s.name == "tts_streams_active":
                        found[pid] = s.value
    return found


#: Callers arriving at one instant: enough that several workers take some (the first worker's
#: fill counts each connection it takes as load at once, gateway.http1.accept, and ~25 fill it).
BURST = 64


async def burst(
    url: str, body: Mapping[str, Any] | None = None, count: int = BURST
) -> list[RawResponse]:
    """``count`` synthesis requests (``body``, else :data:`BODY`) at one instant, each on a new
    connection, as soon as their heads are in. Requests one after another all reach the first
    worker while it is light: a burst is how a test reaches every worker."""
    return list(
        await asyncio.gather(
            *(raw_post(url, "/stream-audio", dict(body or BODY)) for _ in range(count))
        )
    )


async def burst_answers(
    url: str, body: Mapping[str, Any] | None = None, patience: float = PATIENCE
) -> list[bytes]:
    """A :func:`burst`'s answers, each a 200 read whole within ``patience``."""
    answers = []
    for response in await burst(url, body):
        assert response.status == 200
        answers.append(await asyncio.wait_for(response.read_all(), patience))
        response.close()
    return answers


async def open_streams(url: str, count: int) -> list[RawResponse]:
    """``count`` streams opened at one instant (:func:`burst`), each held after its first chunk
    (:func:`open_stream`)."""
    return list(await asyncio.gather(*(open_stream(url) for _ in range(count))))


async def open_stream(url: str) -> RawResponse:
    """A synthesis stream the upstream holds open after its first chunk."""
    response = await raw_post(url, "/stream-audio", BODY)
    assert response.status == 200
    assert await asyncio.wait_for(response.read_chunk(), PATIENCE) == CHUNK
    return response


class Served:
    """A running ``tts-gateway serve`` subprocess and every line of its log so far."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self.seen: set[int] = set()  # every worker pid seen, for the clean-up
        self._reader = asyncio.ensure_future(self._read())

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.lines.append(line.decode(errors="replace"))

    def count(self, text: str) -> int:
        """How many lines of the log so far hold ``text``."""
        return sum(text in line for line in self.lines)

    async def wait_for(self, text: str, times: int = 1) -> None:
        """Wait until ``times`` lines of the log hold ``text``."""
        assert await until(lambda: self.count(text) >= times), (
            f"{times} x {text!r} not logged:\n{self.log}"
        )

    def workers(self) -> set[int]:
        found = workers_of(self.pid)
        self.seen |= found
        return found

    async def wait_ready(self, workers: int | None = None) -> None:
        """Wait until ``/readyz`` answers 200 (and, for a supervisor, until ``workers`` workers
        run and as many have logged their start-up)."""
        async with httpx.AsyncClient() as client:

            async def ready() -> bool:
                try:
                    response = await client.get(self.url + "/readyz")
                except httpx.TransportError:
                    return False
                return response.status_code == 200

            loop = asyncio.get_running_loop()
            deadline = loop.time() + PATIENCE
            while not await ready():
                assert self.process.returncode is None, f"the gateway exited:\n{self.log}"
                assert loop.time() < deadline, f"the gateway did not become ready:\n{self.log}"
                await asyncio.sleep(0.05)
        if workers is not None:
            await self.wait_for("Application startup complete", times=max(1, workers))
            assert await until(lambda: len(self.workers()) == workers), self.log

    async def metrics(self, url: str | None = None) -> str:
        """``/metrics`` on a connection of its own (so any worker may answer)."""
        async with httpx.AsyncClient(headers={"Connection": "close"}) as client:
            response = await client.get((url or self.url) + "/metrics")
        assert response.status_code == 200, response.text
        return response.text

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    async def stop(self) -> int:
        """SIGTERM, then the exit status (killed if it does not exit in time)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), PATIENCE)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"the gateway did not exit on SIGTERM:\n{self.log}") from None
        await asyncio.wait_for(self._reader, PATIENCE)
        return code

    async def kill_all(self) -> None:
        """Whatever happened, leave no process of this gateway behind (its workers, orphaned
        or not, included), and read its log to the end. SIGTERM first, so that a supervisor
        removes its metrics directory; SIGKILL for what is left."""
        self.workers()
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), PATIENCE)
        for pid in [*filter(is_worker, self.seen), self.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.returncode is None:
            await self.process.wait()
        # The log ends once every process holding it has ended.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), PATIENCE)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


async def start(
    *args: str, env: Mapping[str, str] | None = None, port: int | None = None
) -> Served:
    """Run ``tts-gateway serve --host 127.0.0.1 --port PORT *args`` (not yet ready)."""
    port = port or free_port()
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TTS_GATEWAY_CONFIG", "PROMETHEUS_MULTIPROC_DIR")
    }
    environment.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
        env=environment,
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return Served(process, port)


@contextlib.asynccontextmanager
async def serving(
    *args: str, env: Mapping[str, str] | None = None, workers: int | None = None
) -> AsyncIterator[Served]:
    """:func:`start`, wait until ready, and make sure nothing of it is left after."""
    served = await start(*args, env=env)
    try:
        await served.wait_ready(workers)
        yield served
    finally:
        await served.kill_all()


async def post(url: str) -> httpx.Response:
    """One synthesis request (:data:`BODY`) on a connection of its own."""
    async with httpx.AsyncClient(headers={"Connection": "close"}, timeout=PATIENCE) as client:
        return await client.post(url + "/stream-audio", json=BODY)
