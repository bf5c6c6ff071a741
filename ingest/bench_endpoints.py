"""`ingest bench --part endpoints`: the endpoint worker's drain rate per store
backend beside the ceilings it runs under, and freshness (UpdateEndpoint
answered 202 → readable by GetEndpoint).

Drain rate: upserts already in Kafka (produced first, not timed), one
EndpointWorker from a fresh consumer group, timed until every record is
applied or superseded. Store ceiling: the same batches' SQL alone — load the
batch's rows, upsert the rows the fold made (built beforehand) — in one
transaction a batch. Decode and fold: the worker's two Python steps alone, on
the same records. PostgreSQL runs in a schema of its own, dropped after.
Freshness: `ingest run` (edge + worker + SQLite) on the same machine, one write
at a time, each then polled until readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from ingest import endpoints, kafka, postgres
from ingest.broker import EmbeddedBroker, free_port
from ingest.codec import Codec
from ingest.endpoints import EndpointRecord, EndpointState
from ingest.metrics import WorkerMetrics
from ingest.process import settle_gc
from ingest.records import Demographic, EndpointUpsert, Location
from ingest.settings import Settings
from ingest.store import LOAD_ENDPOINTS, MIGRATIONS, PUT_ENDPOINT, by_app, endpoint_row, open_store
from ingest.worker import EndpointWorker

UPSERTS_PER_ENDPOINT = 5
# How often the drain is checked: reading a counter walks the registry, and
# at 5 ms that took 4 % of the worker's CPU; 20 ms errs under 1 % on a
# drain of seconds.
POLL_S = 0.02


def _upserts(app_id: str, count: int) -> list[EndpointUpsert]:
    endpoints = max(1, count // UPSERTS_PER_ENDPOINT)
    now_ms = time.time_ns() // 1_000_000
    return [
        EndpointUpsert(
            app_id=app_id,
            endpoint_id=f"device-{n % endpoints}",
            request_id=str(n),
            received_at_ms=now_ms + n,
            source="UPDATE_ENDPOINT",
            address=f"token-{n % endpoints}",
            channel_type="APNS",
            attributes={"plan": ["pro"], f"seen-{n % 7}": [str(n)]},
            metrics={"sessions": float(n)},
            demographic=Demographic(platform="ios", app_version=f"1.{n % 9}"),
            location=Location(country="NO"),
            user_id=f"user-{n % endpoints // 3}",  # three devices a user, as apps see them
        )
        for n in range(count)
    ]


async def _produce(bootstrap: str, settings: Settings, upserts: list[EndpointUpsert]) -> None:
    codec = Codec()
    producer = kafka.producer(settings, bootstrap, idempotence=False)
    await producer.start()
    try:
        for start in range(0, len(upserts), 1000):
            futures = [
                await producer.send(
                    kafka.ENDPOINTS_TOPIC,
                    codec.encode_endpoint(u),
                    key=f"{u.app_id}:{u.endpoint_id}".encode(),
                )
                for u in upserts[start : start + 1000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def drain_rate(
    settings: Settings, store_url: str | None, data_dir: Path, count: int
) -> tuple[float, float]:
    """→ (upserts/s, CPU-seconds of this process per 1,000 upserts)."""
    async with EmbeddedBroker(log_path=data_dir / "tansu-drain.log") as broker:
        await kafka.ensure_topics(settings, broker.bootstrap)
        await _produce(broker.bootstrap, settings, _upserts(f"bench-{uuid.uuid4().hex[:8]}", count))
        store = await open_store(store_url, data_dir=data_dir)
        registry = CollectorRegistry()
        metrics = WorkerMetrics(registry)
        worker = EndpointWorker(
            kafka.consumer(settings, broker.bootstrap, group_id=f"bench-{uuid.uuid4().hex[:8]}"),
            kafka.deadletter_producer(settings, broker.bootstrap, idempotence=False),
            store,
            codec=Codec(),
            metrics=metrics,
            max_records=settings.worker_max_records,
            drain_timeout_s=5,
        )

        def done() -> float:
            return sum(
                registry.get_sample_value("ingest_endpoint_records_total", {"outcome": o}) or 0.0
                for o in ("applied", "superseded")
            )

        task = asyncio.create_task(worker.run())
        try:
            while done() == 0:  # noqa: ASYNC110 - polling a metric; the group join is not timed
                await asyncio.sleep(POLL_S)
            started, cpu = time.perf_counter(), time.process_time()
            first = done()
            while done() < count:
                if task.done():
                    task.result()
                await asyncio.sleep(POLL_S)
            elapsed, used = time.perf_counter() - started, time.process_time() - cpu
            if first == count:
                raise RuntimeError(f"{count} records were applied before the first poll: time more of them")
        finally:
            worker.stop()
            await task
            await store.close()
    return (count - first) / elapsed, used / (count - first) * 1_000_000


def _batches(upserts: list[EndpointUpsert], size: int) -> list[list[tuple[EndpointRecord, int]]]:
    records: list[tuple[EndpointRecord, int]] = [(u, offset) for offset, u in enumerate(upserts)]
    return [records[start : start + size] for start in range(0, len(records), size)]


def python_rates(upserts: list[EndpointUpsert], batch: int) -> tuple[float, float]:
    """→ (records decoded per second, records folded per second), each the
    worker's step alone on the same records."""
    codec = Codec()
    encoded = [codec.encode_endpoint(u) for u in upserts]
    started = time.perf_counter()
    for value in encoded:
        codec.decode_endpoint_record(value)
    decode_rate = len(encoded) / (time.perf_counter() - started)
    states: dict[tuple[str, str], EndpointState] = {}
    started = time.perf_counter()
    for records in _batches(upserts, batch):
        states.update(endpoints.fold(states, records, endpoints.BatchOutcome()))
    return decode_rate, len(upserts) / (time.perf_counter() - started)


def _rows_by_batch(
    upserts: list[EndpointUpsert], batch: int
) -> list[tuple[list[tuple[str, str]], list[Any]]]:
    """Each batch's keys and the rows the fold writes for it."""
    states: dict[tuple[str, str], EndpointState] = {}
    out = []
    for records in _batches(upserts, batch):
        changed = endpoints.fold(states, records, endpoints.BatchOutcome())
        states.update(changed)
        keys = sorted({(r.app_id, r.endpoint_id) for r, _ in records})
        out.append((keys, [endpoint_row(s) for s in changed.values()]))
    return out


def sqlite_ceiling(path: Path, upserts: list[EndpointUpsert], batch: int) -> float:
    """Upserts/s when SQLite does only the SQL of each batch."""
    prepared = _rows_by_batch(upserts, batch)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for migration in MIGRATIONS:
            db.execute(migration)
        started = time.perf_counter()
        for keys, rows in prepared:
            db.execute("BEGIN IMMEDIATE")
            for values, marks in by_app(keys):
                db.execute(LOAD_ENDPOINTS.format(marks), values).fetchall()
            db.executemany(PUT_ENDPOINT, rows)
            db.execute("COMMIT")
        return len(upserts) / (time.perf_counter() - started)
    finally:
        db.close()


@contextlib.asynccontextmanager
async def postgres_schema(url: str) -> AsyncIterator[str]:
    """A fresh schema, dropped after; → a URL whose search_path is it."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield f"{url}{'&' if '?' in url else '?'}search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def postgres_ceiling(url: str, upserts: list[EndpointUpsert], batch: int) -> float:
    """Upserts/s when PostgreSQL does only the SQL of each batch."""
    prepared = _rows_by_batch(upserts, batch)
    async with postgres_schema(url) as schema_url:
        await (await open_store(schema_url, data_dir=Path())).close()  # migrate
        con = await asyncpg.connect(schema_url)
        try:
            started = time.perf_counter()
            for keys, rows in prepared:
                async with con.transaction():
                    await con.fetch(postgres.LOAD_BATCH, *postgres.columns(keys, 2))
                    await con.execute(postgres.UPSERT, *postgres.columns(sorted(rows), 10))
            return len(upserts) / (time.perf_counter() - started)
        finally:
            await con.close()


@contextlib.asynccontextmanager
async def ingest_run(data_dir: Path) -> AsyncIterator[tuple[Any, str, str]]:
    """`ingest run` (embedded broker, SQLite under ``data_dir``) in its own
    process, ready; → (an aiohttp session, its base URL, a new app's ID)."""
    import aiohttp  # dev extra

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")} | {
        "INGEST_PORT": str(port),
        "INGEST_DATA_DIR": str(data_dir),
        "INGEST_LOG_LEVEL": "WARNING",
    }
    await asyncio.to_thread(functools.partial(data_dir.mkdir, parents=True, exist_ok=True))
    with (data_dir / "ingest.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ingest", "run", env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                try:
                    async with session.get(f"{base}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)  # polling a process that is starting
            async with session.post(f"{base}/v1/apps", json={"Name": "fresh"}) as response:
                app_id = (await response.json())["Id"]
            yield session, base, app_id
    finally:
        process.terminate()
        await process.wait()


async def freshness(data_dir: Path, writes: int) -> list[float]:
    """Milliseconds from UpdateEndpoint's 202 to GetEndpoint showing it."""
    delays: list[float] = []
    async with ingest_run(data_dir) as (session, base, app_id):
        for n in range(writes + 5):
            url = f"{base}/v1/apps/{app_id}/endpoints/device-{n % 25}"
            async with session.put(url, json={"Attributes": {"n": [str(n)]}}) as response:
                assert response.status == 202, await response.text()
            written = time.perf_counter()
            while True:
                async with session.get(url) as response:
                    body: Any = await response.json() if response.status == 200 else {}
                if body.get("Attributes", {}).get("n") == [str(n)]:
                    break
                await asyncio.sleep(0.002)  # polling the read API
            if n >= 5:  # the first writes include the group join
                delays.append((time.perf_counter() - written) * 1000)
    return delays


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_endpoints(settings: Settings, *, records: int, postgres_url: str | None) -> int:
    batch = settings.worker_max_records
    upserts = _upserts("bench", records)
    settle_gc()  # as `ingest worker endpoints` does once started
    decode_rate, fold_rate = python_rates(upserts, batch)
    lines = [
        f"Machine: {os.cpu_count()} cores; {records:,} upserts over {records // UPSERTS_PER_ENDPOINT:,} "
        f"endpoints, {batch} records per poll and per transaction; broker, worker and database share "
        "the machine.",
        "",
        "| store | store ceiling: the batches' SQL alone, upserts/s | worker: Kafka → store, upserts/s "
        "| worker ÷ ceiling | worker CPU-ms per 1,000 upserts |",
        "|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(dir=settings.data_dir if settings.data_dir.exists() else None) as tmp:
        backends: list[tuple[str, str | None]] = [("SQLite", None)]
        if postgres_url:
            backends.append(("PostgreSQL", postgres_url))
        for name, url in backends:
            if url is None:
                ceiling = sqlite_ceiling(Path(tmp) / f"ceiling-{uuid.uuid4().hex}.sqlite3", upserts, batch)
                rate, cpu_ms = await drain_rate(settings, None, Path(tmp), records)
            else:
                ceiling = await postgres_ceiling(url, upserts, batch)
                async with postgres_schema(url) as schema_url:
                    rate, cpu_ms = await drain_rate(settings, schema_url, Path(tmp), records)
            lines.append(f"| {name} | {ceiling:,.0f} | {rate:,.0f} | {rate / ceiling:.2f} | {cpu_ms:,.0f} |")
        delays = await freshness(Path(tmp) / "fresh", 200)
    lines += [
        "",
        f"The worker's Python steps alone, same records: decode {decode_rate:,.0f} records/s, "
        f"fold {fold_rate:,.0f} records/s.",
        "",
        f"Freshness (SQLite, `ingest run`, {len(delays)} writes one at a time): UpdateEndpoint 202 → "
        f"readable by GetEndpoint: p50 {quantile(delays, 0.5):.0f} ms, "
        f"p99 {quantile(delays, 0.99):.0f} ms, max {max(delays):.0f} ms.",
    ]
    print("\n".join(lines))  # noqa: T201
    return 0
