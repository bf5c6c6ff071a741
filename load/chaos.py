"""Servers the harness starts itself, and the faults it injects into them.

The harness signals only processes it started, by PID: `ingest run` (the
embedded Tansu broker, SQLite under a data dir of its own, and the edges
and both workers as its children), the processes whose PIDs `ingest run`
writes to its status file (the broker, its children), and the null server.
Each is started by :func:`ingest.launch.launch`.

``--chaos`` runs this timeline over a run of ``D`` seconds:

* at 0.15 D, SIGKILL `ingest run`'s KPI worker (``worker-kpis``): its
  partitions stay assigned to a dead member until the group's session
  timeout (about 10 s) passes, while the supervisor starts it again (a new
  member joins: a rebalance);
* by 0.30 D, note the worker started again (its new PID);
* at 0.45 D, SIGSTOP the broker for the produce deadline
  (``INGEST_PRODUCE_TIMEOUT_S``, default 5 s) plus 2 s, then SIGCONT: the
  edge answers 500 for what Kafka did not acknowledge in time, the harness
  retries those events with the same IDs, the workers stall and resume.

Accounting must still find nothing lost and nothing counted twice.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingest.launch import Launched, launch

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
FREEZE_BEYOND_DEADLINE_S = 2.0
DEFAULT_PRODUCE_TIMEOUT_S = 5.0
# Settings the harness decides for the processes it starts.
OWN_SETTINGS = (
    "INGEST_KAFKA_BOOTSTRAP",
    "INGEST_DATA_DIR",
    "INGEST_HOST",
    "INGEST_PORT",
    "INGEST_PROBE_PORT",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def produce_timeout_s() -> float:
    """The edge's produce deadline, as the spawned `ingest run` reads it."""
    return float(os.environ.get("INGEST_PRODUCE_TIMEOUT_S", DEFAULT_PRODUCE_TIMEOUT_S))


def _env(**extra: str) -> dict[str, str]:
    # Each process's probes on a free port of its own (9090 by default).
    return {k: v for k, v in os.environ.items() if k not in OWN_SETTINGS} | {"INGEST_PROBE_PORT": "0"} | extra


async def _launch(argv: list[str], env: dict[str, str], log: Path, address: str | None = None) -> Launched:
    """:func:`ingest.launch.launch` off the event loop: it blocks until ready."""
    return await asyncio.to_thread(
        functools.partial(launch, argv, env=env, log_path=log, timeout_s=START_TIMEOUT_S, address=address)
    )


async def _stop(child: Launched) -> None:
    """SIGTERM (a clean drain), SIGKILL after STOP_TIMEOUT_S. Idempotent."""
    await asyncio.to_thread(child.stop, signal.SIGTERM, STOP_TIMEOUT_S)


class Pipeline:
    """`ingest run` on a loopback port of its choosing. ``settings`` change
    its environment: a value sets an ``INGEST_*`` variable, None removes it."""

    def __init__(self, work_dir: Path, settings: dict[str, str | None] | None = None) -> None:
        self.work_dir = work_dir
        self.settings = settings or {}
        self.data_dir = work_dir / "data"
        self.run: Launched | None = None

    @property
    def url(self) -> str:
        assert self.run is not None, "not started"
        return self.run.url

    @property
    def bootstrap(self) -> str:
        assert self.run is not None and self.run.status.kafka, "not started"
        return self.run.status.kafka

    @property
    def credentials_file(self) -> Path:
        """The shared credentials file `ingest run` writes on its first start
        (profile ``ingest``, the admin key)."""
        return self.data_dir / "credentials"

    def cli_env(self) -> dict[str, str]:
        """The settings an `ingest keys …` or `ingest identity-pools …`
        command needs to act on this pipeline's store."""
        return _env(INGEST_DATA_DIR=str(self.data_dir))

    @property
    def broker_pid(self) -> int:
        """The embedded broker's PID, from the status file `ingest run` writes."""
        broker = None if self.run is None else self.run.status.broker
        return 0 if broker is None else broker.pid

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "ingest", "run", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--data-dir", str(self.data_dir)]
        env = {k: v for k, v in _env().items() if k not in self.settings}
        env |= {k: v for k, v in self.settings.items() if v is not None}
        self.run = await _launch(argv, env, self.work_dir / "ingest-run.log")

    def worker_pid(self, name: str = "worker-kpis") -> int:
        """The PID of ``ingest run``'s child ``name`` now (its status file)."""
        assert self.run is not None, "not started"
        return self.run.reread_status().child(name).pid

    async def restarted(self, name: str, old_pid: int, within_s: float) -> int:
        """Until ``ingest run`` has started ``name`` again; → its new PID."""
        deadline = asyncio.get_running_loop().time() + within_s
        while (pid := self.worker_pid(name)) == old_pid:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{name} was not started again within {within_s:g} s:\n{self.tails()}")
            await asyncio.sleep(0.1)  # polling the status file the supervisor rewrites
        return pid

    def signal_broker(self, sig: signal.Signals) -> None:
        """Only while `ingest run` (the broker's parent) lives: the PID is ours."""
        if self.run is not None:
            self.run.signal_broker(sig)

    async def stop(self) -> None:
        if self.run is not None:
            await _stop(self.run)  # resumes a frozen broker first

    def tails(self) -> str:
        """The end of `ingest run`'s log (its children's lines are in it)."""
        children = [self.run] if self.run else []
        return "\n".join(f"--- {c.name} (pid {c.pid}, {c.log_path}):\n{c.tail()}" for c in children)


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

    when = await at(0.15)
    victim = pipeline.worker_pid()
    os.kill(victim, signal.SIGKILL)  # a child of the `ingest run` we started
    note(when, f"SIGKILL worker-kpis (pid {victim})")
    replacement = await pipeline.restarted(
        "worker-kpis", victim, within_s=0.15 * duration_s + START_TIMEOUT_S
    )
    note(loop.time() - started_at, f"worker-kpis started again by ingest run (pid {replacement})")
    await at(0.30)
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

    def __init__(self, work_dir: Path, processes: int) -> None:
        self._work_dir = work_dir
        self._processes = processes
        self.port = free_port()
        self.child: Launched | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        # It writes no status file (uvicorn's workers share a port given up
        # front): readiness is polled on that port.
        argv = [sys.executable, "-m", "load.null", "--port", str(self.port)]
        argv += ["--processes", str(self._processes)]
        address = f"127.0.0.1:{self.port}"
        self.child = await _launch(argv, _env(), self._work_dir / "null.log", address=address)

    async def stop(self) -> None:
        if self.child is not None:
            await _stop(self.child)
