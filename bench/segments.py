"""`python -m bench --part segments`: a dimensional segment over a large app,
paged through ``Store.segment_endpoints`` as an export job pages it, per
store backend, at two app sizes (so that memory can be seen flat in the
row count).

The app is seeded by a bulk insert of endpoint rows (as the endpoint fold
stores them) and of their last events, not through the pipeline. The
segment is Platform iOS, Country DE, Attributes plan INCLUSIVE pro and
Recency ACTIVE DAY_7 (1 endpoint in 15); beside it, the walk of every
endpoint of the app (an export of all of them). Each is paged 1,000
endpoints a page from the first to the last; timed, with this process's
resident memory sampled at every page (the peak above what it was before
the walk). PostgreSQL runs in a schema of its own, ANALYZEd after the seed,
and its page plan is shown.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.support import fresh_store
from ingest.segments import definitions
from ingest.settings import Settings
from ingest.store import segment_query as query
from ingest.store import sql
from ingest.store.base import App, Segment, Store

DAY_MS = 86_400_000
PAGE = 1_000
SEED_CHUNK = 50_000
SEGMENT = {
    "Dimensions": {
        "Demographic": {"Platform": {"Values": ["iOS"]}},
        "Location": {"Country": {"Values": ["DE"]}},
        "Attributes": {"plan": {"Values": ["pro"]}},
        "Behavior": {"Recency": {"Duration": "DAY_7", "RecencyType": "ACTIVE"}},
    }
}
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE


def _rows(
    app_id: str, start: int, stop: int, now_ms: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Endpoint rows (in endpoints' column order) and endpoint_activity rows."""
    endpoints: list[tuple[Any, ...]] = []
    activity: list[tuple[Any, ...]] = []
    stamp = "2026-11-01T10:00:00.000Z"
    for n in range(start, stop):
        endpoint_id = f"device-{n:08d}"
        document = {
            "Address": f"token-{n:08d}-" + "x" * 40,
            "ChannelType": "APNS" if n % 2 == 0 else "GCM",
            "Attributes": {"plan": ["pro" if n % 5 < 2 else "free"], "interests": ["news", "sport"]},
            "Demographic": {"Platform": "iOS" if n % 2 == 0 else "Android", "AppVersion": f"1.{n % 9}"},
            "Location": {"Country": ("DE", "FR", "US")[n % 3], "City": "Berlin"},
            "Metrics": {"sessions": float(n % 50)},
            "User": {"UserId": f"user-{n // 3}"},
            "EndpointStatus": "ACTIVE",
        }
        row = (
            app_id,
            endpoint_id,
            f"user-{n // 3}",
            False,
            now_ms,
            n,
            stamp,
            stamp,
            "req",
            orjson.dumps(document).decode(),
        )
        endpoints.append(row)
        if n % 10 < 7:  # 70 % had an event in the last week
            activity.append((app_id, endpoint_id, now_ms - (n % 7) * DAY_MS))
    return endpoints, activity


async def seed(store: Store, app_id: str, count: int, now_ms: int) -> None:
    insert = "INSERT INTO endpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    activity_insert = "INSERT INTO endpoint_activity VALUES (?, ?, ?)"
    for start in range(0, count, SEED_CHUNK):
        rows, activity = _rows(app_id, start, min(count, start + SEED_CHUNK), now_ms)
        if hasattr(store, "_db"):

            def write(rows: list[Any] = rows, activity: list[Any] = activity, db: Any = store._db) -> None:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(insert, rows)
                db.executemany(activity_insert, activity)
                db.execute("COMMIT")

            await store._run("seed", write)  # type: ignore[attr-defined]
        else:
            async with store._pool.acquire() as con:  # type: ignore[attr-defined]
                await con.copy_records_to_table("endpoints", records=rows)
                await con.copy_records_to_table("endpoint_activity", records=activity)
    if not hasattr(store, "_db"):
        async with store._pool.acquire() as con:  # type: ignore[attr-defined]
            await con.execute("ANALYZE endpoints")
            await con.execute("ANALYZE endpoint_activity")


async def walk(store: Store, app_id: str, segment_id: str | None, now_ms: int) -> tuple[int, float, int]:
    """Every page from the first to the last → (endpoints, seconds, peak RSS
    growth in bytes)."""
    before = peak = rss_bytes()
    found = 0
    after: str | None = None
    started = time.perf_counter()
    while True:
        page = await store.segment_endpoints(app_id, segment_id, None, after=after, limit=PAGE, now_ms=now_ms)
        found += len(page)
        peak = max(peak, rss_bytes())
        if len(page) < PAGE:
            break
        after = page[-1].endpoint_id
    return found, time.perf_counter() - started, peak - before


async def plan(store: Store, app_id: str, segment: Segment, now_ms: int) -> str:
    """PostgreSQL's plan of a page of ``segment`` (the node types, top down)."""
    found = await query.page(store.get_segment, "postgres", app_id, segment.id, None, ("", PAGE, now_ms))
    assert found is not None
    statement = sql.numbered.__wrapped__(found[0])
    async with store._pool.acquire() as con:  # type: ignore[attr-defined]
        rows = await con.fetch("EXPLAIN " + statement, *found[1])
    lines = [row[0] for row in rows]
    return "; ".join(line.strip().split("  (")[0].lstrip("-> ") for line in lines if "(" in line)


async def bench_segments(settings: Settings, *, records: int, postgres_url: str | None) -> int:
    sizes = (records // 4, records)
    now_ms = time.time_ns() // 1_000_000
    lines = [
        f"Machine: {os.cpu_count()} cores; pages of {PAGE:,} endpoints through `segment_endpoints`, "
        "database and bench on the same machine. Segment: Platform iOS, Country DE, plan pro, "
        "ACTIVE in DAY_7 (1 endpoint in 15).",
        "",
        "| store | app endpoints | walk | members | time, s | members/s | app endpoints walked/s "
        "| peak RSS growth, MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    plans: list[str] = []
    with tempfile.TemporaryDirectory(dir=settings.data_dir if settings.data_dir.exists() else None) as tmp:
        backends: list[tuple[str, str | None]] = [("SQLite", None)]
        if postgres_url:
            backends.append(("PostgreSQL", postgres_url))
        for name, url in backends:
            for size in sizes:
                async with fresh_store(url, Path(tmp) / f"{name}-{size}") as (store, _):
                    app_id = f"bench-{uuid.uuid4().hex[:8]}"
                    await store.create_app(
                        App(app_id, "bench", f"arn:aws:mobiletargeting:us-east-1:0:apps/{app_id}", {}, "-")
                    )
                    await seed(store, app_id, size, now_ms)
                    shown = definitions.write_segment(SEGMENT).shown
                    segment = Segment(app_id, "segment", 1, "bench", "DIMENSIONAL", shown, "-", "-")
                    await store.create_segment(segment)
                    for label, segment_id in (("all endpoints", None), ("segment", "segment")):
                        found, seconds, grown = await walk(store, app_id, segment_id, now_ms)
                        rates = f"{found / seconds:,.0f} | {size / seconds:,.0f}"
                        lines.append(
                            f"| {name} | {size:,} | {label} | {found:,} | {seconds:.1f} | {rates} "
                            f"| {grown / 2**20:.1f} |"
                        )
                    if url is not None and size == records:
                        plans.append(await plan(store, app_id, segment, now_ms))
    if plans:
        lines += ["", f"PostgreSQL's plan of a segment page: {plans[0]}."]
    print("\n".join(lines))
    return 0
