"""`python -m bench --part kpis`: the KPI worker's drain rate per store backend
beside the ceilings it runs under, and what the store keeps per event.

Events look like an app's day: each endpoint opens sessions of ten events
(``_session.start``, screens and custom events with attributes and metrics,
now and then a purchase, ``_session.stop`` with its duration). Half the
endpoints name their user in the event's endpoint context (native SDKs), the
others do not (Amplify JS), so the worker looks their user up in the store.
Every event ID is new; days are today and yesterday.

Drain rate: events already in Kafka (produced first, not timed), one KPI
worker from a fresh consumer group, timed until every event is aggregated.
Store ceiling: ``Store.apply_event_batch`` alone on the same events, already
decoded, a batch per transaction as the worker cuts them. Decode: the
worker's Avro step alone. Store cost: bytes of dedupe marks and of
aggregates per event once the drain is done.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from bench.support import batches_rate, counted, fresh_store, ingest_run, produce, quantile, time_drain
from ingest.folds import kpis
from ingest.kafka import clients
from ingest.kafka.broker import EmbeddedBroker
from ingest.metrics import KpiWorkerMetrics
from ingest.process import settle_gc
from ingest.records.codec import Codec
from ingest.records.values import EndpointContext, Event, Session
from ingest.settings import Settings
from ingest.store.base import Store
from ingest.workers.consumer import Worker
from ingest.workers.sinks import EventReader, KpiSink

EVENTS_PER_SESSION = 10
SESSIONS_PER_ENDPOINT = 2
SCREENS = ("home", "search", "product", "cart", "settings")


def _stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def workload(app_id: str, count: int, *, seed: int = 1) -> list[Event]:
    """``count`` events of one app, in the order devices would send them."""
    rng = random.Random(seed)  # noqa: S311 - a repeatable workload, not a secret
    now_ms = time.time_ns() // 1_000_000
    sessions = max(1, count // EVENTS_PER_SESSION)
    endpoints = max(1, sessions // SESSIONS_PER_ENDPOINT)
    out: list[Event] = []
    for s in range(sessions):
        endpoint_id = f"device-{s % endpoints}"
        user = EndpointContext(user_id=f"user-{s % endpoints // 2}") if s % 2 else None
        started = now_ms - rng.randrange(2 * kpis.DAY_MS - 3_600_000)
        session = Session(f"{endpoint_id}-s{s}", _stamp(started))
        for n in range(EVENTS_PER_SESSION):
            at = started + n * 30_000
            attributes: dict[str, str] | None = None
            metrics: dict[str, float] | None = None
            this = session
            if n == 0:
                kind = "_session.start"
            elif n == EVENTS_PER_SESSION - 1:
                kind = kpis.SESSION_STOP
                this = session._replace(stop_timestamp=_stamp(at), duration_ms=at - started)
            elif rng.random() < 0.05:
                kind = "_monetization.purchase"
                attributes = {"_currency": rng.choice(("USD", "EUR")), "_product_id": "sku-1"}
                metrics = {"_item_price": rng.choice((0.99, 4.99, 9.99)), "_quantity": 1.0}
            else:
                kind = rng.choice(("screen_view", "add_to_cart", "level_up"))
                attributes = {"screen": rng.choice(SCREENS), "variant": "b"}
                metrics = {"load_ms": float(rng.randrange(20, 900))}
            out.append(
                Event(
                    app_id,
                    endpoint_id,
                    str(uuid.UUID(int=rng.getrandbits(128))),
                    f"req-{s}",
                    now_ms,
                    kind,
                    _stamp(at),
                    at,
                    this,
                    attributes,
                    metrics,
                    endpoint=user,
                )
            )
    return out[:count]


def _oldest_day() -> int:
    return kpis.day_of(time.time_ns() // 1_000_000) - 6


def _newest_day() -> int:
    return kpis.day_of(time.time_ns() // 1_000_000) + kpis.MAX_DAYS_AHEAD


async def drain_rate(settings: Settings, store: Store, bootstrap: str, count: int) -> tuple[float, float]:
    """→ (events/s, CPU-ms of this process per 1,000 events)."""
    registry = CollectorRegistry()
    metrics = KpiWorkerMetrics(registry)
    sink = KpiSink(store, codec=Codec(), metrics=metrics, retention_days=7)
    worker = Worker(
        clients.consumer(settings, bootstrap, group_id=f"bench-{uuid.uuid4().hex[:8]}"),
        clients.deadletter_producer(settings, bootstrap, idempotence=False),
        sink,
        max_records=settings.worker_max_records,
        drain_timeout_s=5,
    )

    outcomes = ("aggregated", "duplicate", "too_old", "too_new", "dead_lettered")
    done = counted(registry, "ingest_kpi_events", "outcome", outcomes)
    rate, cpu_ms = await time_drain(worker, done, count)
    aggregated = registry.get_sample_value("ingest_kpi_events_total", {"outcome": "aggregated"})
    if aggregated != count:
        raise RuntimeError(f"the worker aggregated {aggregated} of {count} events")
    return rate, cpu_ms


async def store_ceiling(store: Store, events: list[Event], batch: int) -> float:
    """Events/s when the store does only ``apply_event_batch``."""
    oldest, newest = _oldest_day(), _newest_day()
    return await batches_rate(
        functools.partial(store.apply_event_batch, oldest_day=oldest, newest_day=newest), events, batch
    )


def decode_rates(events: list[Event]) -> tuple[float, float]:
    """→ (events/s of the codec's full reader, of the KPI worker's
    EventReader), one after the other on the same events."""
    codec = Codec()
    encoded = [codec.encode_event(e) for e in events]
    rates = []
    for decode in (codec.decode_event, EventReader(codec)):
        started = time.perf_counter()
        for value in encoded:
            decode(value)
        rates.append(len(encoded) / (time.perf_counter() - started))
    return rates[0], rates[1]


def sqlite_bytes(path: Path) -> tuple[int, int]:
    """(bytes of dedupe marks, bytes of KPI aggregates) in a SQLite store."""
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = db.execute(
            "SELECT name, sum(pgsize) FROM dbstat WHERE name LIKE 'event_marks%' OR name LIKE 'kpi_%' "
            "GROUP BY name"
        ).fetchall()
    finally:
        db.close()
    marks = sum(size for name, size in rows if name.startswith("event_marks"))
    return marks, sum(size for _, size in rows) - marks


async def postgres_bytes(url: str) -> tuple[int, int]:
    """(bytes of dedupe marks, bytes of KPI aggregates), tables and indexes,
    in the schema ``url`` searches."""
    con = await asyncpg.connect(url)
    try:
        rows = await con.fetch(
            "SELECT c.relname, pg_total_relation_size(c.oid) AS size FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r' "
            "AND (c.relname LIKE 'event_marks%' OR c.relname LIKE 'kpi_%')"
        )
    finally:
        await con.close()
    marks = sum(row["size"] for row in rows if row["relname"].startswith("event_marks"))
    return marks, sum(row["size"] for row in rows) - marks


async def freshness(data_dir: Path, sends: int) -> list[float]:
    """Milliseconds from PutEvents' 202 (the event "Accepted") to
    ``events-grouped-by-event-type`` counting it, one event at a time."""
    delays: list[float] = []
    event_type = f"fresh-{uuid.uuid4().hex[:8]}"
    async with ingest_run(data_dir) as (client, app_id):
        kpi = f"/v1/apps/{app_id}/kpis/daterange/events-grouped-by-event-type"
        for n in range(sends + 5):
            body = {
                "BatchItem": {
                    f"device-{n % 25}": {
                        "Endpoint": {},
                        "Events": {
                            f"ev-{n}": {
                                "EventType": event_type,
                                "Timestamp": _stamp(time.time_ns() // 1_000_000),
                            }
                        },
                    }
                }
            }
            _, answer = await client.call("POST", f"/v1/apps/{app_id}/events", body)
            status = answer["Results"][f"device-{n % 25}"]["EventsItemResponse"][f"ev-{n}"]["StatusCode"]
            if status != 202:
                raise RuntimeError(f"event not accepted: {answer}")
            accepted = time.perf_counter()
            while True:
                _, answer = await client.call("GET", kpi)
                rows = answer["KpiResult"]["Rows"]
                counts = {row["GroupedBys"][0]["Value"]: row["Values"][0]["Value"] for row in rows}
                if counts.get(event_type) == repr(float(n + 1)):
                    break
                await asyncio.sleep(0.002)  # polling the read API
            if n >= 5:  # the first events include the group join
                delays.append((time.perf_counter() - accepted) * 1000)
    return delays


async def bench_kpis(settings: Settings, *, records: int, postgres_url: str | None) -> int:
    batch = settings.worker_max_records
    events = workload("bench", records)
    settle_gc()  # as `ingest worker kpis` does once started
    full_rate, kpi_rate = decode_rates(events)
    endpoints = len({e.endpoint_id for e in events})
    lines = [
        f"Machine: {os.cpu_count()} cores; {records:,} events of {endpoints:,} endpoints over two days, "
        f"{batch} records per poll and per transaction; broker, worker and database share the machine.",
        "",
        "| store | store ceiling: apply_event_batch alone, events/s | worker: Kafka → store, events/s "
        "| worker ÷ ceiling | worker CPU-ms per 1,000 events | store per event: marks, aggregates |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(dir=settings.data_dir if settings.data_dir.exists() else None) as tmp:
        async with EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker:
            await clients.ensure_topics(settings, broker.bootstrap)
            app_id = f"bench-{uuid.uuid4().hex[:8]}"
            codec = Codec()
            await produce(
                broker.bootstrap,
                settings,
                [
                    (
                        clients.EVENTS_TOPIC,
                        f"{app_id}:{e.endpoint_id}".encode(),
                        codec.encode_event(e._replace(app_id=app_id)),
                    )
                    for e in events
                ],
            )
            backends: list[tuple[str, str | None]] = [("SQLite", None)]
            if postgres_url:
                backends.append(("PostgreSQL", postgres_url))
            for name, url in backends:
                async with fresh_store(url, Path(tmp) / "ceiling") as (store, _):
                    ceiling = await store_ceiling(store, events, batch)
                async with fresh_store(url, Path(tmp) / "drain") as (store, schema_url):
                    rate, cpu_ms = await drain_rate(settings, store, broker.bootstrap, records)
                    kept = None if schema_url is None else await postgres_bytes(schema_url)
                # SQLite's are read once the store is closed and its log checkpointed.
                marks, aggregates = kept or sqlite_bytes(Path(tmp) / "drain" / "ingest.sqlite3")
                lines.append(
                    f"| {name} | {ceiling:,.0f} | {rate:,.0f} | {rate / ceiling:.2f} | {cpu_ms:,.0f} "
                    f"| {marks / records:,.0f} B, {aggregates / records:,.0f} B |"
                )
        delays = await freshness(Path(tmp) / "fresh", 200)
    lines += [
        "",
        f"The worker's Avro step alone, same events: {kpi_rate:,.0f} events/s (the full reader, "
        f"Codec.decode_event: {full_rate:,.0f}).",
        "",
        f"Freshness (SQLite, `ingest run`, {len(delays)} events one at a time): PutEvents 202 → counted "
        f"by events-grouped-by-event-type: p50 {quantile(delays, 0.5):.0f} ms, "
        f"p99 {quantile(delays, 0.99):.0f} ms, max {max(delays):.0f} ms.",
        "",
        "Store per event: dedupe marks are kept for INGEST_DEDUPE_RETENTION_DAYS (7) days, so a million "
        "events a day keeps seven days of marks (the per-event figure times 7 million); aggregates grow with "
        "distinct endpoints, users and sessions a day, and are kept.",
    ]
    print("\n".join(lines))
    return 0
