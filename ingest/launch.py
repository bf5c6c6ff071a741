"""Starting an `ingest` process and knowing when it serves: the status file.

A serving process (`ingest run`, `ingest edge`, `ingest worker …`) given
``--status-file PATH`` writes there, once it listens, what a supervisor needs
to reach it: its PID, its HTTP address, the Kafka bootstrap it uses and, for
the embedded broker of `ingest run`, that broker's address and PID. The file
is written whole or not at all (temporary file, then rename), so a reader
never sees half of it; the process removes it when it stops cleanly.

:func:`launch` is the one way tests, benches and the load harness start such a
process: it passes ``--status-file``, waits for the file and then for
``/readyz`` to answer 200, and fails with the log's tail if the process exits
or the deadline passes. It blocks; async callers run it in a thread.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from ingest.errors import IngestError

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
# Between looks at a process that is starting: short against a start-up of
# about a second, long enough not to compete with it for the CPU.
POLL_S = 0.05
# One /readyz request; a process that takes longer is not ready.
PROBE_TIMEOUT_S = 2.0
LOG_TAIL_CHARS = 3000


class LaunchError(IngestError):
    """A launched process exited, or did not become ready in time; the
    message ends with the tail of its log."""


@dataclass(frozen=True, slots=True)
class Broker:
    """The embedded broker of `ingest run`: a child of that process."""

    bootstrap: str
    pid: int


@dataclass(frozen=True, slots=True)
class Child:
    """A process `ingest run` supervises: its role name (``edge-0``,
    ``worker-kpis``), its PID now (a restart changes it) and its probes."""

    name: str
    pid: int
    probes: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """What a serving process writes to its status file. A supervising
    `ingest run` rewrites it whenever a child is (re)started."""

    pid: int
    http: str | None  # host:port of the API; None for a worker, which serves none
    kafka: str | None = None  # the bootstrap it produces to or consumes from
    broker: Broker | None = None
    probes: str | None = None  # host:port of /healthz, /readyz, /metrics
    children: tuple[Child, ...] = ()

    def to_json(self) -> bytes:
        broker = None if self.broker is None else {"bootstrap": self.broker.bootstrap, "pid": self.broker.pid}
        children = [{"name": c.name, "pid": c.pid, "probes": c.probes} for c in self.children]
        return orjson.dumps(
            {
                "pid": self.pid,
                "http": self.http,
                "probes": self.probes,
                "kafka": self.kafka,
                "broker": broker,
                "children": children,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Status:
        data = orjson.loads(raw)
        broker = data.get("broker")
        return cls(
            pid=int(data["pid"]),
            http=data.get("http"),
            kafka=data.get("kafka"),
            broker=None if broker is None else Broker(str(broker["bootstrap"]), int(broker["pid"])),
            probes=data.get("probes"),
            children=tuple(
                Child(str(c["name"]), int(c["pid"]), c.get("probes")) for c in data.get("children", ())
            ),
        )

    def child(self, name: str) -> Child:
        """The supervised child named ``name``; KeyError if there is none."""
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)


def reachable(address: str) -> tuple[str, int]:
    """("host", port) to connect to for a listening "host:port": loopback
    when it listens on every address."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    return ("127.0.0.1" if host in ("", "0.0.0.0") else host), int(port)  # noqa: S104 - compared, not bound


def write_status(path: Path, status: Status) -> None:
    """Atomically: a reader sees the whole file or none."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(status.to_json())
    partial.replace(path)


class Launched:
    """A process :func:`launch` started and saw serving. Signals go only to
    it and, while it lives, to its own broker child, both by PID."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], status: Status, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.status = status
        self.log_path = log_path
        self.status_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def host(self) -> str:
        """Where to reach its API: loopback when it listens on every address."""
        return reachable(self.status.http or self.status.probes or ":0")[0]

    @property
    def port(self) -> int:
        """Its API port (a worker's probe port: it serves no API)."""
        return reachable(self.status.http or self.status.probes or ":0")[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def probes(self) -> tuple[str, int]:
        """Where its /healthz, /readyz and /metrics answer."""
        return reachable(self.status.probes or self.status.http or ":0")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log()[-chars:]

    def ready(self) -> bool:
        """Whether /readyz answers 200 now."""
        host, port = self.probes
        conn = http.client.HTTPConnection(host, port, timeout=PROBE_TIMEOUT_S)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False  # not listening, or too slow to answer: not ready
        finally:
            conn.close()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until /readyz answers 200; LaunchError if the process exits first
        or ``timeout_s`` passes."""
        self._wait(self.ready, timeout_s, "not ready")

    def wait_status(self, path: Path, timeout_s: float) -> None:
        """Until the process has written its status file; then it is read."""
        self._wait(path.exists, timeout_s, "wrote no status")
        self.status_path = path
        self.status = Status.from_json(path.read_bytes())

    def reread_status(self) -> Status:
        """The status file as the process last wrote it (a supervisor
        rewrites it when it restarts a child); the one read before if it is
        gone."""
        if self.status_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.status = Status.from_json(self.status_path.read_bytes())
        return self.status

    def _wait(self, done: Callable[[], bool], timeout_s: float, failure: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if self.process.poll() is not None:
                raise LaunchError(f"{self.name} exited {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise LaunchError(f"{self.name} {failure} in {timeout_s:g} s:\n{self.tail()}")
            time.sleep(POLL_S)

    def signal_broker(self, sig: signal.Signals) -> None:
        """Only while this process (the broker's parent) lives: the PID is ours."""
        if self.status.broker is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.status.broker.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig`` (after resuming a frozen broker, so a drain can finish),
        wait, SIGKILL after ``timeout_s``; → the exit code. Idempotent."""
        if self.process.poll() is None:
            self.signal_broker(signal.SIGCONT)
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def launch(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path | None = None,
    timeout_s: float = START_TIMEOUT_S,
    address: str | None = None,
    name: str | None = None,
) -> Launched:
    """Start ``argv`` with ``--status-file`` appended, stdout and stderr to
    ``log_path``, in ``env`` exactly; → once it serves (module docstring).

    ``address`` ("host:port") is for a server that writes no status file: no
    option is appended and readiness is polled there. ``name`` is for
    messages (default: ``ingest worker kpis`` for ``python -m ingest worker
    kpis --port 0``). A process that fails to start is killed before
    LaunchError is raised.
    """
    if name is None:
        words = argv[2:] if len(argv) > 2 and argv[1] == "-m" else argv[:1]
        name = " ".join(itertools.takewhile(lambda word: not word.startswith("-"), words))
    status_path = log_path.with_name(f"{log_path.stem}.status.json")
    command = list(argv)
    if address is None:
        status_path.unlink(missing_ok=True)
        command += ["--status-file", str(status_path)]
    with log_path.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603 - the caller's own command
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd
        )
    started = Launched(name, process, Status(pid=process.pid, http=address or ":0"), log_path)
    try:
        deadline = time.monotonic() + timeout_s
        if address is None:
            started.wait_status(status_path, timeout_s)
        started.wait_ready(max(0.0, deadline - time.monotonic()))
    except BaseException:
        started.stop(signal.SIGKILL)
        raise
    return started
