"""`python -m bench --part endpoints`: the endpoint worker's drain rate per store
backend beside the ceilings it runs under, and freshness (UpdateEndpoint
answered 202 → readable by GetEndpoint).

Drain rate: upserts already in Kafka (produced first, not timed), one
EndpointWorker from a fresh consumer group, timed until every record is
applied or superseded. Store ceiling: ``Store.apply_endpoint_batch`` alone on
the same records, already decoded, a batch per transaction as the worker cuts
them (it loads the batch's rows, folds, upserts). Decode and fold: the
worker's two Python steps alone, on the same records. PostgreSQL runs in a
schema of its own, dropped after.
Freshness: `ingest run` (edge + worker + SQLite) on the same machine, one write
at a time, each then polled until readable.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bench.support import batches_rate, counted, fresh_store, ingest_run, produce, quantile, time_drain
from ingest.folds import endpoints
from ingest.folds.endpoints import EndpointRecord, EndpointState
from ingest.kafka import clients
from ingest.kafka.broker import EmbeddedBroker
from ingest.metrics import WorkerMetrics
from ingest.process import settle_gc
from ingest.records.codec import Codec
from ingest.records.values import Demographic, EndpointUpsert, Location
from ingest.settings import Settings
from ingest.store.base import Store
from ingest.workers.sinks import EndpointWorker

UPSERTS_PER_ENDPOINT = 5


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


async def drain_rate(settings: Settings, store: Store, data_dir: Path, count: int) -> tuple[float, float]:
    """→ (upserts/s, CPU-ms of this process per 1,000 upserts)."""
    async with EmbeddedBroker(log_path=data_dir / "tansu-drain.log") as broker:
        await clients.ensure_topics(settings, broker.bootstrap)
        codec = Codec()
        upserts = _upserts(f"bench-{uuid.uuid4().hex[:8]}", count)
        await produce(
            broker.bootstrap,
            settings,
            [
                (clients.ENDPOINTS_TOPIC, f"{u.app_id}:{u.endpoint_id}".encode(), codec.encode_endpoint(u))
                for u in upserts
            ],
        )
        return await time_endpoint_drain(settings, store, broker.bootstrap, count)


async def time_endpoint_drain(
    settings: Settings, store: Store, bootstrap: str, count: int
) -> tuple[float, float]:
    """An endpoint worker of a group of its own draining the ``count``
    records on ``ingest.endpoints``: → (upserts/s, CPU-ms per 1,000)."""
    registry = CollectorRegistry()
    worker = EndpointWorker(
        clients.consumer(settings, bootstrap, group_id=f"bench-{uuid.uuid4().hex[:8]}"),
        clients.deadletter_producer(settings, bootstrap, idempotence=False),
        store,
        codec=Codec(),
        metrics=WorkerMetrics(registry),
        max_records=settings.worker_max_records,
        drain_timeout_s=5,
    )

    done = counted(registry, "ingest_endpoint_records", "outcome", ("applied", "superseded"))
    return await time_drain(worker, done, count)


def _records(upserts: list[EndpointUpsert]) -> list[tuple[EndpointRecord, int]]:
    """As the worker hands them to the fold and the store: with their offsets."""
    return [(u, offset) for offset, u in enumerate(upserts)]


def _batches(upserts: list[EndpointUpsert], size: int) -> list[list[tuple[EndpointRecord, int]]]:
    records = _records(upserts)
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


async def freshness(data_dir: Path, writes: int) -> list[float]:
    """Milliseconds from UpdateEndpoint's 202 to GetEndpoint showing it."""
    delays: list[float] = []
    async with ingest_run(data_dir) as (client, app_id):
        for n in range(writes + 5):
            path = f"/v1/apps/{app_id}/endpoints/device-{n % 25}"
            status, answer = await client.call("PUT", path, {"Attributes": {"n": [str(n)]}})
            assert status == 202, answer
            written = time.perf_counter()
            while True:
                status, answer = await client.call("GET", path)
                body: Any = answer if status == 200 else {}
                if body.get("Attributes", {}).get("n") == [str(n)]:
                    break
                await asyncio.sleep(0.002)  # polling the read API
            if n >= 5:  # the first writes include the group join
                delays.append((time.perf_counter() - written) * 1000)
    return delays


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
        "| store | store ceiling: apply_endpoint_batch alone, upserts/s | worker: Kafka → store, upserts/s "
        "| worker ÷ ceiling | worker CPU-ms per 1,000 upserts |",
        "|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(dir=settings.data_dir if settings.data_dir.exists() else None) as tmp:
        backends: list[tuple[str, str | None]] = [("SQLite", None)]
        if postgres_url:
            backends.append(("PostgreSQL", postgres_url))
        for name, url in backends:
            async with fresh_store(url, Path(tmp) / f"ceiling-{name}") as (store, _):
                ceiling = await batches_rate(store.apply_endpoint_batch, _records(upserts), batch)
            async with fresh_store(url, Path(tmp) / f"drain-{name}") as (store, _):
                rate, cpu_ms = await drain_rate(settings, store, Path(tmp), records)
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
    print("\n".join(lines))
    return 0
