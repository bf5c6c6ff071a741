"""A full disk and a read-only store are named as such: in the StoreError (so
in the log), in readiness, and they are retried rather than dead-lettered,
so nothing accepted is lost while an operator frees space."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import orjson
import pytest

from ingest.errors import StoreError
from ingest.launch import launch
from ingest.store import postgres
from ingest.store.sqlite import SqliteStore
from tests.conftest import ROOT, Pipeline, clean_env, eventually
from tests.test_store import offsets, upsert


async def test_a_full_sqlite_disk_says_so_and_the_batch_lands_once_there_is_room(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "ingest.sqlite3")
    try:
        db = store._db
        # SQLite's own size cap answers exactly as a full disk does (SQLITE_FULL).
        pages = await store._run("pages", lambda: db.execute("PRAGMA page_count").fetchone()[0])
        await store._run("cap", lambda: db.execute(f"PRAGMA max_page_count={pages + 2}"))
        batch = offsets([upsert(f"e{i}", attributes={"a": ["x" * 400] * 10}) for i in range(200)])
        with pytest.raises(StoreError) as caught:
            await store.apply_endpoint_batch(batch)
        error = caught.value
        assert error.condition == "disk_full" and error.retriable
        assert "the store's disk is full" in str(error)
        assert "cannot rollback" not in str(error)
        await store._run("uncap", lambda: db.execute("PRAGMA max_page_count=1073741823"))
        await store.apply_endpoint_batch(batch)
        assert await store.get_endpoint("app-a", "e199") is not None
    finally:
        await store.close()


async def test_a_read_only_sqlite_store_says_so(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "ingest.sqlite3")
    try:
        await store._run("read-only", lambda: store._db.execute("PRAGMA query_only=ON"))
        with pytest.raises(StoreError) as caught:
            await store.apply_endpoint_batch(offsets([upsert("e1")]))
        assert caught.value.condition == "read_only" and caught.value.retriable
        assert "the store is read-only" in str(caught.value)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("raised", "condition"),
    [
        (asyncpg.DiskFullError("could not extend file: No space left on device"), "disk_full"),
        (
            asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
            "read_only",
        ),
    ],
)
def test_postgres_disk_full_and_read_only_are_named_and_retried(
    raised: BaseException, condition: str
) -> None:
    with pytest.raises(StoreError) as caught, postgres._boundary("apply endpoints"):
        raise raised
    assert caught.value.condition == condition and caught.value.retriable


def can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not can_mount(), reason="needs a mount namespace (root) for a small file system")
def test_ingest_run_on_a_full_disk_names_it_in_readiness_and_the_log(tmp_path: Path) -> None:
    """The store on a 1 MiB tmpfs of the process's own mount namespace: the
    endpoint worker fills it, then holds its records and retries."""
    store_dir = Path(tempfile.mkdtemp(prefix="store-", dir=tmp_path))
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=tmp_path))
    wrapper = 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"'
    launched = launch(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            wrapper,
            str(store_dir),
            sys.executable,
            "-m",
            "ingest",
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
        ],
        env=clean_env(
            INGEST_PROBE_PORT="0",
            INGEST_STORE_URL=f"sqlite:///{store_dir}/ingest.sqlite3",
            INGEST_EMBEDDED_STORAGE="memory",
            INGEST_LOG_LEVEL="INFO",
        ),
        log_path=tmp_path / "run.log",
        cwd=ROOT,
        name="ingest run",
    )
    running = Pipeline(launched, data_dir, {})
    try:
        client = running.client()
        app_id = client.create_app(CreateApplicationRequest={"Name": "full"})["ApplicationResponse"]["Id"]
        attributes = {f"a{i}": ["v" * 90] for i in range(40)}
        for n in range(60):  # ~3 MiB of endpoint profiles for a 1 MiB disk
            items = [
                {"Id": f"e{n}-{i}", "ChannelType": "GCM", "Address": f"t{n}-{i}", "Attributes": attributes}
                for i in range(12)
            ]
            client.update_endpoints_batch(ApplicationId=app_id, EndpointBatchRequest={"Item": items})

        def readiness() -> tuple[int, bytes]:
            status, _, body = running.request("GET", "/readyz", sign=False)
            return status, body

        _, body = eventually(readiness, lambda got: got[0] == 503, "readiness to fail", within_s=30)
        # `ingest run` names the process whose store is full, and its reason.
        assert orjson.loads(body)["reason"] == "worker-endpoints: the store's disk is full", body
        log = running.log()
        assert "the store's disk is full" in log
        assert "cannot rollback" not in log
        # The edge still accepts writes: they wait in Kafka for the disk.
        assert (
            client.update_endpoint(
                ApplicationId=app_id,
                EndpointId="late",
                EndpointRequest={"ChannelType": "GCM", "Address": "x"},
            )["ResponseMetadata"]["HTTPStatusCode"]
            == 202
        )
    finally:
        running.stop(signal.SIGKILL)  # the worker is holding records for the disk
