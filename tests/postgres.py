"""The test PostgreSQL of scripts/postgres.sh, found or started once per test
session, so that a plain ``pytest`` needs no environment; and a private
cluster for a test that stops its server or fills its disk.

``INGEST_TEST_POSTGRES_URL``, when set, names the server instead. Under
pytest-xdist each worker gets a database of its own beside that URL's
(``ingest_test_gw0``, ...), so that workers never migrate the same tables at
once nor count each other's rows; a plain run uses the URL's database as is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import functools
import os
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from ingest.kafka.broker import free_port

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_SH = ROOT / "scripts" / "postgres.sh"
# Installing Debian's package on a fresh machine is the slow case.
POSTGRES_SH_TIMEOUT_S = 600


def run_postgres_sh(*wrapper: str, **env: str) -> str:
    """Run scripts/postgres.sh (as the last arguments of ``wrapper``, if
    given) → the URL it prints last. One caller at a time on this machine
    (xdist workers, concurrent sessions): two initdb or pg_ctl start of one
    cluster would race."""
    with (Path(tempfile.gettempdir()) / "ingest-postgres-sh.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(
            [*wrapper, "bash", str(POSTGRES_SH)],
            check=True,
            stdout=subprocess.PIPE,
            env=os.environ | env,
            text=True,
            timeout=POSTGRES_SH_TIMEOUT_S,
        )
    return done.stdout.strip().splitlines()[-1]


def with_database(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


async def create_database(url: str, database: str) -> None:
    """CREATE DATABASE unless it exists; a concurrent creator is fine."""
    connection = await asyncpg.connect(url)
    try:
        if await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            return
        await connection.execute(f'CREATE DATABASE "{database}"')
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        pass
    finally:
        await connection.close()


@functools.cache
def session_url() -> str:
    """The URL the tests of this session (or xdist worker) use."""
    url = os.environ.get("INGEST_TEST_POSTGRES_URL") or run_postgres_sh()
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return url
    database = f"{urllib.parse.urlsplit(url).path.lstrip('/') or 'postgres'}_{worker}"
    # A thread of its own: the first caller may be inside a running event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, create_database(url, database)).result()
    return with_database(url, database)


@dataclass(frozen=True)
class Cluster:
    """A PostgreSQL server of the test's own, which it may stop and start."""

    url: str
    data_dir: Path
    port: int

    @property
    def tmpfs(self) -> Path:
        """The small file system of :func:`private_cluster` (``tmpfs_mib``)."""
        return self.data_dir / "tmpfs"

    @property
    def postmaster_pid(self) -> int:
        return int((self.data_dir / "data" / "postmaster.pid").read_text().split()[0])

    def pg_ctl(self, *args: str, check: bool = True) -> None:
        binary = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]
        command = [str(binary), "-D", str(self.data_dir / "data"), *args]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=check, capture_output=True, timeout=60)

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        # The same options scripts/postgres.sh starts it with.
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1"
        self.pg_ctl("-l", str(self.data_dir / "log"), "-w", "-o", options, "start")


# Mounts a tmpfs of size $1 MiB at $2, owned by `postgres`, then runs the rest.
_MOUNT_TMPFS = (
    'mkdir -p "$2" && mount -t tmpfs -o "size=$1m" tmpfs "$2" && chown postgres: "$2" && shift 2 && exec "$@"'
)


@contextmanager
def private_cluster(*, tmpfs_mib: int | None = None) -> Iterator[Cluster]:
    """A fresh cluster on a free port (scripts/postgres.sh with its directory
    and port overridden), removed afterwards. With ``tmpfs_mib``, the server
    runs in a mount namespace of its own (``unshare -m``: root only) where
    :attr:`Cluster.tmpfs` is a tmpfs of that size, for a tablespace that can
    fill up; only the server's processes see that mount (enter it with
    ``nsenter -t {postmaster_pid} -m``), and it goes when the server stops."""
    port = free_port()
    # Not under pytest's tmp dir: the server runs as `postgres`, which may not
    # enter root's private temporary directories.
    data_dir = Path(f"/tmp/ingest-pg-{port}")
    wrapper: tuple[str, ...] = ()
    if tmpfs_mib is not None:
        wrapper = ("unshare", "-m", "sh", "-c", _MOUNT_TMPFS, "sh", str(tmpfs_mib), str(data_dir / "tmpfs"))
    try:
        url = run_postgres_sh(
            *wrapper, INGEST_TEST_POSTGRES_DIR=str(data_dir), INGEST_TEST_POSTGRES_PORT=str(port)
        )
        yield Cluster(url, data_dir, port)
    finally:
        # Whatever state the test left it in: stopped already is fine.
        Cluster("", data_dir, port).pg_ctl("-m", "immediate", "stop", check=False)
        shutil.rmtree(data_dir, ignore_errors=True)
