"""`python -m bench --part jobs`: import and export jobs, run by the jobs
role itself, per store backend and at two sizes, beside the endpoint worker
applying what the import published.

For each backend and size: a fresh store and a fresh embedded broker
(memory engine); a gzip newline-delimited JSON file of that many endpoint
definitions (written first, not timed) under the import directory; then,
each timed from the job's creation until the store says COMPLETED:

1. import: a :class:`~ingest.jobs.worker.JobWorker` (as `ingest worker jobs`
   builds it, :func:`ingest.process.job_worker`) reads the file, validates
   every row as UpdateEndpoint does and publishes it to ``ingest.endpoints``,
   checkpointing after Kafka's acks;
2. the endpoint worker drains those records into the store
   (:func:`bench.support.time_drain`): the rate the import should keep up with;
3. export: the same role writes every endpoint back out, gzip pieces under
   the export directory.

Memory: this process's peak RSS over each job, above its RSS when the job
began (Linux: ``/proc/self/clear_refs`` resets the high-water mark), so the
two sizes show whether it grows with the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from bench.endpoints import time_endpoint_drain
from bench.support import fresh_store
from ingest.api.jobs import new_job_id
from ingest.kafka import clients
from ingest.kafka.broker import EmbeddedBroker
from ingest.process import job_worker, settle_gc
from ingest.records.codec import Codec
from ingest.settings import Settings
from ingest.store.base import App, Job, Store

ROLE = "arn:aws:iam::123456789012:role/bench-jobs"
POLL_S = 0.02
JOB_TIMEOUT_S = 3600.0


def endpoint_line(n: int) -> bytes:
    """One endpoint definition as Pinpoint exports them (~400 bytes)."""
    return orjson.dumps(
        {
            "Id": f"device-{n:08d}",
            "ApplicationId": "pinpoint-app",
            "CohortId": str(n % 100),
            "CreationDate": "2026-01-01T00:00:00.000Z",
            "ChannelType": "APNS",
            "Address": f"token-{n:08d}-{'a' * 40}",
            "EndpointStatus": "ACTIVE",
            "OptOut": "NONE",
            "Attributes": {"plan": ["pro" if n % 3 else "free"], "interests": ["science", "travel"]},
            "Metrics": {"sessions": float(n % 50)},
            "Demographic": {"Platform": "ios", "AppVersion": f"4.{n % 9}", "Make": "Apple"},
            "Location": {"Country": "NO", "City": "Oslo"},
            "User": {"UserId": f"user-{n // 3:08d}", "UserAttributes": {"tier": ["gold"]}},
        }
    )


def write_import(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=1) as out:
        for start in range(0, rows, 10_000):
            out.write(b"".join(endpoint_line(n) + b"\n" for n in range(start, min(start + 10_000, rows))))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


@dataclasses.dataclass
class Peak:
    mib: float = 0.0
    """The RSS high-water mark over the block."""
    growth_mib: float = 0.0
    """How far above the RSS at its start."""

    def __str__(self) -> str:
        return f"{self.mib:,.0f} (+{self.growth_mib:,.0f})"


@contextlib.contextmanager
def peak_rss() -> Iterator[Peak]:
    """The RSS high-water mark over the block (MiB), filled in after it."""
    peak = Peak()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    try:
        yield peak
    finally:
        high = _rss_kib("VmHWM")
        peak.mib, peak.growth_mib = high / 1024, max(0, high - before) / 1024


async def run_job(settings: Settings, store: Store, bootstrap: str, job: Job) -> tuple[float, Job]:
    """Create ``job`` and run the jobs role until it finishes; → (seconds, the job)."""
    async with contextlib.AsyncExitStack() as stack:
        worker = await job_worker(
            stack,
            settings,
            bootstrap,
            idempotence=False,
            store=store,
            codec=Codec(),
            registry=CollectorRegistry(),
        )
        task = asyncio.create_task(worker.run())
        started = time.perf_counter()
        assert await store.create_job(job, max_unfinished=1)
        deadline = started + JOB_TIMEOUT_S
        try:
            while True:
                found = await store.get_job(job.app_id, job.id)
                if found is not None and found.status in ("COMPLETED", "FAILED"):
                    return time.perf_counter() - started, found
                if task.done() or time.perf_counter() > deadline:
                    task.result()
                    raise RuntimeError(f"job {job.id} did not finish: {found}")
                await asyncio.sleep(POLL_S)
        finally:
            worker.stop()
            await task


def new_job(app_id: str, job_type: str, definition: dict[str, Any]) -> Job:
    now_ms = time.time_ns() // 1_000_000
    return Job(
        app_id=app_id,
        id=new_job_id(now_ms),
        job_type="IMPORT" if job_type == "IMPORT" else "EXPORT",
        segment_id=None,
        definition=definition,
        status="CREATED",
        creation_date="2026-12-01T00:00:00.000Z",
        created_ms=now_ms,
    )


async def apply_rate(settings: Settings, store: Store, bootstrap: str, count: int) -> float:
    """The endpoint worker's drain of what is on ``ingest.endpoints``: upserts/s."""
    rate, _ = await time_endpoint_drain(settings, store, bootstrap, count)
    return rate


async def one(
    settings: Settings, url: str | None, tmp: Path, rows: int
) -> tuple[float, float, float, Peak, Peak]:
    """→ (import rows/s, apply rows/s, export endpoints/s, import peak RSS, export peak RSS)."""
    run = dataclasses.replace(
        settings,
        job_import_dir=tmp / "import",
        job_export_dir=tmp / "export",
        job_assume_role=False,
        job_poll_s=POLL_S,
    )
    source = tmp / "import" / f"endpoints-{rows}.json.gz"
    write_import(source, rows)
    async with (
        EmbeddedBroker(log_path=tmp / f"tansu-{rows}.log") as broker,
        fresh_store(url, tmp / f"store-{rows}") as (
            store,
            _,
        ),
    ):
        await clients.ensure_topics(settings, broker.bootstrap)
        app_id = f"bench-{uuid.uuid4().hex[:8]}"
        await store.create_app(
            App(app_id, "bench", f"arn:aws:mobiletargeting:us-east-1:0:apps/{app_id}", {}, "x")
        )
        definition = {"S3Url": f"file://{source}", "Format": "JSON", "RoleArn": ROLE}
        with peak_rss() as imported:
            seconds, job = await run_job(run, store, broker.bootstrap, new_job(app_id, "IMPORT", definition))
        if (job.status, job.total_processed, job.total_failures) != ("COMPLETED", rows, 0):
            raise RuntimeError(f"the import did not complete cleanly: {job}")
        import_rate = rows / seconds
        applied = await apply_rate(settings, store, broker.bootstrap, rows)
        target = {"S3UrlPrefix": f"file://{tmp / 'export'}/{rows}", "RoleArn": ROLE}
        with peak_rss() as exported:
            seconds, job = await run_job(run, store, broker.bootstrap, new_job(app_id, "EXPORT", target))
        if (job.status, job.total_processed) != ("COMPLETED", rows):
            raise RuntimeError(f"the export did not complete cleanly: {job}")
        return import_rate, applied, rows / seconds, imported, exported


async def bench_jobs(settings: Settings, *, records: int, postgres_url: str | None) -> int:
    sizes = (max(20_000, records // 4), records)
    settle_gc()
    lines = [
        f"Machine: {os.cpu_count()} cores; endpoint definitions of ~400 bytes (gzip JSON, a file:// "
        f"object), {settings.job_checkpoint_rows} rows a checkpoint, "
        f"{settings.job_export_piece_endpoints:,} endpoints a piece; broker, role, worker and database "
        "share the machine.",
        "",
        "| store | endpoints | import: file → Kafka (acked), rows/s | endpoint worker applies, rows/s "
        "| export: store → gzip pieces, endpoints/s | import: peak RSS MiB (+ over its start) "
        "| export: peak RSS MiB (+ over its start) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    backends: list[tuple[str, str | None]] = [("SQLite", None)]
    if postgres_url:
        backends.append(("PostgreSQL", postgres_url))
    # Absolute: the jobs' file:// URLs name it, and a file:// URL names no host.
    parent = os.path.abspath(settings.data_dir) if settings.data_dir.exists() else None  # noqa: ASYNC240
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        for name, url in backends:
            for rows in sizes:
                directory = Path(tmp) / f"{name}-{rows}"
                imported, applied, exported, import_mib, export_mib = await one(
                    settings, url, directory, rows
                )
                lines.append(
                    f"| {name} | {rows:,} | {imported:,.0f} | {applied:,.0f} | {exported:,.0f} "
                    f"| {import_mib} | {export_mib} |"
                )
    print("\n".join(lines))
    return 0
