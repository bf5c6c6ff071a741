"""Servers the harness starts itself, and the faults it injects into them.

The harness signals only processes it started, by PID: `ingest run` (edge,
both workers, the embedded Tansu broker, SQLite under a data dir of its own),
an extra `ingest worker kpis` joined to the same broker and store (the KPI
worker it can kill without taking the memory-only broker down with `ingest
run`), the broker whose PID `ingest run` logs, and the null server.

``--chaos`` runs this timeline over a run of ``D`` seconds:

* at 0.15 D, SIGKILL the extra KPI worker: its partitions stay assigned to
  a dead member until the group's session timeout (about 10 s) passes;
* at 0.30 D, start a new one, which joins the group (a rebalance);
* at 0.45 D, SIGSTOP the broker for the produce deadline
  (``INGEST_PRODUCE_TIMEOUT_S``, default 5 s) plus 2 s, then SIGCONT: the
  edge answers 500 for what Kafka did not acknowledge in time, the harness
  retries those events with the same IDs, the workers stall and resume.

Accounting must still find nothing lost and nothing counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from load.api import Api

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.1
FREEZE_BEYOND_DEADLINE_S = 2.0
DEFAULT_PRODUCE_TIMEOUT_S = 5.0
# Settings the harness decides for the processes it starts.
OWN_SETTINGS = ("INGEST_KAFKA_BOOTSTRAP", "INGEST_DATA_DIR", "INGEST_HOST", "INGEST_PORT")
_BROKER = re.compile(r"listening on tcp://([\d.]+:\d+), pid (\d+)")


class SpawnError(Exception):
    """A process the harness started did not come up (its log tail attached)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def produce_timeout_s() -> float:
    """The edge's produce deadline, as the spawned `ingest run` reads it."""
    return float(os.environ.get("INGEST_PRODUCE_TIMEOUT_S", DEFAULT_PRODUCE_TIMEOUT_S))


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in OWN_SETTINGS} | extra


class Child:
    """One process we started, its output in a log file."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    @classmethod
    async def start(cls, name: str, argv: list[str], env: dict[str, str], log: Path) -> Child:
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )
        return cls(name, process, log)

    async def wait_ready(self, session: aiohttp.ClientSession, url: str) -> None:
        api = Api(session, url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not await api.ready():
            if self.process.returncode is not None:
                raise SpawnError(f"{self.name} exited {self.process.returncode}:\n{self.tail()}")
            if loop.time() > deadline:
                raise SpawnError(f"{self.name} not ready in {START_TIMEOUT_S:g} s:\n{self.tail()}")
            await asyncio.sleep(POLL_S)  # between readiness polls

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    async def stop(self) -> None:
        """SIGTERM (a clean drain), SIGKILL after STOP_TIMEOUT_S. Idempotent."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                self.process.kill()
        await self.process.wait()


class Pipeline:
    """`ingest run` on a free loopback port, plus extra workers on demand."""

    def __init__(self, work_dir: Path, session: aiohttp.ClientSession) -> None:
        self.work_dir = work_dir
        self.data_dir = work_dir / "data"
        self._session = session
        self.run: Child | None = None
        self.workers: list[Child] = []
        self.port = 0
        self.bootstrap = ""
        self.broker_pid = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [sys.executable, "-m", "ingest", "run", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--data-dir", str(self.data_dir)]
        self.run = await Child.start("ingest run", argv, _env(), self.work_dir / "ingest-run.log")
        await self.run.wait_ready(self._session, self.url)
        found = _BROKER.search(self.run.tail(10**6))
        if found is None:
            raise SpawnError(f"no broker address in the log of ingest run:\n{self.run.tail()}")
        self.bootstrap, self.broker_pid = found.group(1), int(found.group(2))

    async def start_worker(self, role: str = "kpis") -> Child:
        """`ingest worker <role>` on the same broker and store: another member
        of that role's consumer group."""
        port = free_port()
        env = _env(
            INGEST_KAFKA_BOOTSTRAP=self.bootstrap,
            INGEST_DATA_DIR=str(self.data_dir),
            # aiokafka's idempotent producer (the dead-letter one) fails on Tansu.
            INGEST_KAFKA_IDEMPOTENCE="false",
        )
        argv = [sys.executable, "-m", "ingest", "worker", role, "--host", "127.0.0.1", "--port", str(port)]
        log = self.work_dir / f"worker-{role}-{len(self.workers)}.log"
        worker = await Child.start(f"ingest worker {role}", argv, env, log)
        self.workers.append(worker)
        await worker.wait_ready(self._session, f"http://127.0.0.1:{port}")
        return worker

    def signal_broker(self, sig: signal.Signals) -> None:
        """Only while `ingest run` (the broker's parent) lives: the PID is ours."""
        if self.run is not None and self.run.process.returncode is None and self.broker_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.broker_pid, sig)

    async def stop(self) -> None:
        self.signal_broker(signal.SIGCONT)
        for worker in self.workers:
            await worker.stop()
        if self.run is not None:
            await self.run.stop()

    def tails(self) -> str:
        children = ([self.run] if self.run else []) + self.workers
        return "\n".join(f"--- {c.name} (pid {c.pid}, {c.log}):\n{c.tail()}" for c in children)


async def chaos(
    pipeline: Pipeline, *, duration_s: float, started_at: float, record: Callable[[dict[str, Any]], None]
) -> None:
    """The module docstring's timeline, from ``started_at`` (loop time)."""
    loop = asyncio.get_running_loop()

    async def at(fraction: float) -> float:
        wait = started_at + fraction * duration_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)  # the timeline's next step
        return loop.time() - started_at

    def note(when: float, action: str) -> None:
        record({"at_s": round(when, 2), "action": action})

    victim = pipeline.workers[-1] if pipeline.workers else await pipeline.start_worker()
    when = await at(0.15)
    victim.kill()
    await victim.process.wait()
    note(when, f"SIGKILL ingest worker kpis (pid {victim.pid})")
    await at(0.30)
    replacement = await pipeline.start_worker()
    note(loop.time() - started_at, f"started ingest worker kpis (pid {replacement.pid})")
    freeze_s = produce_timeout_s() + FREEZE_BEYOND_DEADLINE_S
    when = await at(0.45)
    pipeline.signal_broker(signal.SIGSTOP)
    note(when, f"SIGSTOP broker (pid {pipeline.broker_pid}) for {freeze_s:g} s")
    try:
        await asyncio.sleep(freeze_s)  # the fault itself
    finally:
        pipeline.signal_broker(signal.SIGCONT)
    note(loop.time() - started_at, f"SIGCONT broker (pid {pipeline.broker_pid})")


class NullServer:
    """``python -m load.null`` on a free port."""

    def __init__(self, work_dir: Path, session: aiohttp.ClientSession, processes: int) -> None:
        self._work_dir = work_dir
        self._session = session
        self._processes = processes
        self.port = free_port()
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        argv = [sys.executable, "-m", "load.null", "--port", str(self.port)]
        argv += ["--processes", str(self._processes)]
        self.child = await Child.start("null server", argv, _env(), self._work_dir / "null.log")
        await self.child.wait_ready(self._session, self.url)

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop()
