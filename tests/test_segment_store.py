"""Segments in the store, on both backends: versions and their
compare-and-set, static members from a version on, the pages of
segment_endpoints, and what DeleteApp and its purge take with them."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from typing import Any

import pytest

from ingest.records.values import Event
from ingest.store import segment_sql, sql
from ingest.store import sqlite as store_module
from ingest.store.base import Segment, Store
from tests.test_store import T0_MS, app, delete, offsets, store, upsert

__all__ = ["store"]  # the fixture, on both backends

NOW = "2026-12-01T10:00:00.000Z"


def segment(segment_id: str, *, app_id: str = "app-a", version: int = 1, kind: str = "IMPORT") -> Segment:
    return Segment(
        app_id=app_id,
        id=segment_id,
        version=version,
        name=f"{segment_id} v{version}",
        segment_type=kind,
        document={"tags": {"v": str(version)}, "ImportDefinition": {"Size": version}},
        creation_date=NOW,
        last_modified_date=f"2026-12-01T10:00:0{version}.000Z",
    )


async def ids_of(
    store: Store, segment_id: str | None, version: int | None = None, *, limit: int = 2
) -> list[str]:
    """Every page of segment_endpoints, ``limit`` a page, joined."""
    found: list[str] = []
    after: str | None = None
    while True:
        page = await store.segment_endpoints(
            "app-a", segment_id, version, after=after, limit=limit, now_ms=T0_MS
        )
        found += [e.endpoint_id for e in page]
        assert len(page) <= limit
        if len(page) < limit:
            return found
        after = page[-1].endpoint_id


async def test_versions_move_by_compare_and_set(store: Store) -> None:
    assert not await store.create_segment(segment("s1")), "no such app"
    await store.create_app(app("app-a"))
    assert await store.create_segment(segment("s1"))
    assert await store.get_segment("app-a", "s1") == segment("s1")
    v2 = dataclasses.replace(segment("s1", version=2), creation_date="ignored")
    assert await store.put_segment_version(v2) == segment("s1", version=2)
    assert await store.put_segment_version(segment("s1", version=2)) is None, "2 is taken"
    assert await store.put_segment_version(segment("s1", version=4)) is None, "3 is missing"
    assert await store.put_segment_version(segment("nope", version=2)) is None
    assert await store.get_segment("app-a", "s1") == segment("s1", version=2)
    assert await store.get_segment("app-a", "s1", 1) == segment("s1")
    assert await store.get_segment("app-a", "s1", 3) is None
    assert await store.get_segment("app-b", "s1") is None
    versions = await store.list_segment_versions("app-a", "s1", after=0, limit=10)
    assert [s.version for s in versions] == [1, 2]
    assert [s.version for s in await store.list_segment_versions("app-a", "s1", after=1, limit=10)] == [2]


async def test_concurrent_new_versions_one_wins(store: Store) -> None:
    await store.create_app(app("app-a"))
    await store.create_segment(segment("s1"))
    results = await asyncio.gather(*(store.put_segment_version(segment("s1", version=2)) for _ in range(5)))
    assert sum(r is not None for r in results) == 1


async def test_list_segments_pages_latest_versions_in_id_order(store: Store) -> None:
    await store.create_app(app("app-a"))
    await store.create_app(app("app-b"))
    for segment_id in ("c", "a", "b"):
        assert await store.create_segment(segment(segment_id))
    await store.create_segment(segment("z", app_id="app-b"))
    await store.put_segment_version(segment("b", version=2))
    first = await store.list_segments("app-a", after=None, limit=2)
    assert [(s.id, s.version) for s in first] == [("a", 1), ("b", 2)]
    assert [s.id for s in await store.list_segments("app-a", after="b", limit=2)] == ["c"]


async def test_segments_per_app_are_bounded(store: Store) -> None:
    await store.create_app(app("app-a"))
    made = await asyncio.gather(*(store.create_segment(segment(f"s{i}"), max_segments=3) for i in range(6)))
    assert sum(made) == 3
    assert len(await store.list_segments("app-a", after=None, limit=10)) == 3


async def test_static_members_belong_from_their_version_on(store: Store) -> None:
    await store.create_app(app("app-a"))
    await store.apply_endpoint_batch(offsets([upsert(f"e{i}", address=f"a{i}") for i in range(6)]))
    await store.create_segment(segment("s1"))
    await store.add_segment_members("app-a", "s1", 1, ["e1", "e3", "e3"])
    await store.put_segment_version(segment("s1", version=2))
    await store.add_segment_members("app-a", "s1", 2, ["e4", "e1", "e9"])  # e9: no such endpoint
    await store.add_segment_members("app-a", "s1", 2, ["e4"])  # again: nothing changes
    await store.add_segment_members("app-a", "gone", 1, ["e5"])  # no such segment: nothing
    assert await ids_of(store, "s1", 1) == ["e1", "e3"]
    assert await ids_of(store, "s1", 2) == ["e1", "e3", "e4"]
    assert await ids_of(store, "s1") == ["e1", "e3", "e4"]
    assert await ids_of(store, "gone") == []
    await store.apply_endpoint_batch(offsets([delete("e3", received_at_ms=T0_MS + 1)], start=100))
    assert await ids_of(store, "s1") == ["e1", "e4"], "a deleted endpoint is no member"


async def test_all_endpoints_pages_by_id(store: Store) -> None:
    await store.create_app(app("app-a"))
    await store.create_app(app("app-b"))
    records = [upsert(f"e{i}", address="x") for i in (5, 1, 3, 2, 4)]
    await store.apply_endpoint_batch(offsets([*records, upsert("e9", app_id="app-b", address="y")]))
    assert await ids_of(store, None) == ["e1", "e2", "e3", "e4", "e5"]
    assert await ids_of(store, None, limit=100) == ["e1", "e2", "e3", "e4", "e5"]


async def test_delete_segment_takes_its_versions_and_members(store: Store) -> None:
    await store.create_app(app("app-a"))
    await store.apply_endpoint_batch(offsets([upsert("e1", address="x")]))
    await store.create_segment(segment("s1"))
    await store.add_segment_members("app-a", "s1", 1, ["e1"])
    await store.put_segment_version(segment("s1", version=2))
    assert await store.delete_segment("app-a", "s1") == segment("s1", version=2)
    assert await store.delete_segment("app-a", "s1") is None
    assert await store.get_segment("app-a", "s1", 1) is None
    assert await store.list_segment_versions("app-a", "s1", after=0, limit=10) == []
    # A segment made again under the ID starts with no members.
    await store.create_segment(segment("s1"))
    assert await ids_of(store, "s1") == []


async def test_delete_app_takes_its_segments_and_the_purge_the_rest(store: Store) -> None:
    for app_id in ("app-a", "kept"):
        await store.create_app(app(app_id))
        await store.create_segment(segment("s1", app_id=app_id))
        await store.add_segment_members(app_id, "s1", 1, ["e1", "e2"])
    await store.delete_app("app-a")
    assert await store.get_segment("app-a", "s1") is None
    assert await store.list_segments("app-a", after=None, limit=10) == []
    while await store.purge_deleted_apps(max_rows=1):
        pass
    assert await store.get_segment("kept", "s1") == segment("s1", app_id="kept")
    rows = await count_rows(store, "app-a")
    assert rows == {"segment_versions": 0, "segment_members": 0}


async def count_rows(store: Store, app_id: str) -> dict[str, int]:
    counts = {}
    for table in ("segment_versions", "segment_members"):
        statement = f"SELECT count(*) FROM {table} WHERE app_id = ?"
        if isinstance(store, store_module.SqliteStore):
            counts[table] = store._db.execute(statement, (app_id,)).fetchone()[0]
        else:
            counts[table] = await store._pool.fetchval(sql.numbered(statement), app_id)  # type: ignore[attr-defined]
    return counts


@pytest.mark.parametrize(
    "query",
    [
        segment_sql.APP_ENDPOINTS_PAGE.format(join="", where=""),
        segment_sql.MEMBER_ENDPOINTS_PAGE,
    ],
    ids=["app", "members"],
)
def test_a_page_is_a_range_walk_without_a_sort(query: str) -> None:
    """Whatever the statistics (none here): the walk searches a primary key
    from ``after`` and never sorts (no temporary B-tree)."""
    db = sqlite3.connect(":memory:")
    for migration in store_module.MIGRATIONS:
        db.execute(migration)
    plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + query, ["x"] * query.count("?"))]
    assert not any("TEMP B-TREE" in step for step in plan), plan
    assert "PRIMARY KEY (app_id=? AND " in plan[0] and "endpoint_id>?" in plan[0], plan


# The last event of each endpoint (Behavior.Recency).

DAY_MS = 86_400_000


def event(event_id: str, endpoint_id: str, at_ms: int, *, received_ms: int, app_id: str = "app-a") -> Event:
    return Event(
        app_id=app_id,
        endpoint_id=endpoint_id,
        event_id=event_id,
        request_id="req",
        received_at_ms=received_ms,
        event_type="t",
        timestamp="-",
        timestamp_ms=at_ms,
    )


async def last_events(store: Store, app_id: str) -> dict[str, int]:
    statement = "SELECT endpoint_id, last_event_ms FROM endpoint_activity WHERE app_id = ?"
    if isinstance(store, store_module.SqliteStore):
        return dict(store._db.execute(statement, (app_id,)).fetchall())
    rows = await store._pool.fetch(sql.numbered(statement), app_id)  # type: ignore[attr-defined]
    return {row[0]: row[1] for row in rows}


async def test_the_last_event_of_each_endpoint_is_kept(store: Store) -> None:
    await store.create_app(app("app-a"))
    await store.create_app(app("gone"))
    now = T0_MS
    window = {"oldest_day": now // DAY_MS - 7, "newest_day": now // DAY_MS + 1}
    batch = [
        event("a1", "e1", now - 5000, received_ms=now),
        event("a2", "e1", now - 9000, received_ms=now),
        # A clock an hour ahead: counted as its arrival.
        event("b1", "e2", now + 3_600_000, received_ms=now),
        # Older than the dedupe window: not aggregated, but it happened.
        event("c1", "e3", now - 20 * DAY_MS, received_ms=now),
        event("d1", "e1", now, received_ms=now, app_id="gone"),
    ]
    await store.delete_app("gone")
    outcome = await store.apply_event_batch(batch, **window)
    assert outcome.too_old == 1
    expected = {"e1": now - 5000, "e2": now, "e3": now - 20 * DAY_MS}
    assert await last_events(store, "app-a") == expected
    assert await last_events(store, "gone") == {}
    # Redelivered, and an older event later: nothing moves back.
    await store.apply_event_batch(batch, **window)
    await store.apply_event_batch([event("a0", "e1", now - 60_000, received_ms=now + 1)], **window)
    assert await last_events(store, "app-a") == expected
    await store.apply_event_batch([event("a3", "e1", now + 10, received_ms=now + 20)], **window)
    assert (await last_events(store, "app-a"))["e1"] == now + 10
    await store.delete_app("app-a")
    while await store.purge_deleted_apps(max_rows=2):
        pass
    assert await last_events(store, "app-a") == {}


async def test_a_postgres_segment_page_joins_nothing_and_sorts_nothing() -> None:
    """Recency and an IMPORT source are a primary-key lookup a row (a
    scalar subquery), never a join: PostgreSQL makes a top-level EXISTS a
    semi-join whose inner side, not bounded by ``after``, it reads from the
    app's first row on every page. And the walk is the primary key's order."""
    from ingest.segments import definitions
    from ingest.store import segment_query as query
    from tests.test_store import fresh_store

    async with fresh_store("postgres") as store:
        await store.create_app(app("app-a"))
        await store.apply_endpoint_batch(offsets([upsert(f"e{i:05d}", address="x") for i in range(3000)]))
        events = [event(f"v{i}", f"e{i:05d}", T0_MS, received_ms=T0_MS) for i in range(0, 3000, 2)]
        await store.apply_event_batch(events, oldest_day=0, newest_day=T0_MS // DAY_MS + 1)
        await store.create_segment(segment("imp"))
        await store.add_segment_members("app-a", "imp", 1, [f"e{i:05d}" for i in range(0, 3000, 3)])
        body = {
            "SegmentGroups": {
                "Groups": [
                    {
                        "SourceSegments": [{"Id": "imp"}],
                        "Dimensions": [
                            {"Behavior": {"Recency": {"Duration": "DAY_7", "RecencyType": "ACTIVE"}}}
                        ],
                    }
                ]
            }
        }
        shown = definitions.write_segment(body).shown
        dimensional = dataclasses.replace(segment("dim", kind="DIMENSIONAL"), document=shown)
        assert await store.create_segment(dimensional)
        async with store._pool.acquire() as con:  # type: ignore[attr-defined]
            await con.execute("ANALYZE")
            found = await query.page(
                store.get_segment, "postgres", "app-a", "dim", None, ("e01000", 100, T0_MS)
            )
            assert found is not None
            plan = "\n".join(
                row[0] for row in await con.fetch("EXPLAIN " + sql.numbered.__wrapped__(found[0]), *found[1])
            )
        assert not any(node in plan for node in ("Join", "Nested Loop", "Sort", "Hash")), plan
        # The walk drives the plan: the first table read is the endpoints,
        # from ``after`` on.
        scans = [line.strip() for line in plan.splitlines() if "Scan" in line or "Index Cond" in line]
        assert scans[0].startswith("->  Index Scan using endpoints_pkey on endpoints e"), plan
        assert "endpoint_id > 'e01000'" in scans[1], plan
        page = await store.segment_endpoints("app-a", "dim", None, after="e01000", limit=100, now_ms=T0_MS)
        assert [e.endpoint_id for e in page][:3] == ["e01002", "e01008", "e01014"]


async def test_a_nul_in_an_endpoint_value_does_not_break_a_segment_page(store: Store) -> None:
    """PostgreSQL's jsonb cannot hold an escaped NUL: the page reads it as
    U+FFFD rather than failing for the whole app."""
    from ingest.segments import definitions

    await store.create_app(app("app-a"))
    nul = upsert("e1", address="x", attributes={"plan": ["a\x00b"]})
    await store.apply_endpoint_batch(offsets([nul, upsert("e2", address="y", attributes={"plan": ["pro"]})]))
    for segment_id, kind, values, expected in (
        ("s1", "INCLUSIVE", ["pro"], ["e2"]),
        ("s2", "CONTAINS", ["a"], ["e1"]),
    ):
        body = {"Dimensions": {"Attributes": {"plan": {"AttributeType": kind, "Values": values}}}}
        document = definitions.write_segment(body).shown
        assert await store.create_segment(
            dataclasses.replace(segment(segment_id, kind="DIMENSIONAL"), document=document)
        )
        assert await ids_of(store, segment_id) == expected


class _NoMath(sqlite3.Connection):
    """A connection whose SQLite has no math functions (built without
    SQLITE_ENABLE_MATH_FUNCTIONS, as some distributions ship it)."""

    def execute(self, statement: str, *args: Any) -> sqlite3.Cursor:
        if statement.startswith("SELECT sin(") and not getattr(self, "registered", False):
            self.registered = True
            raise sqlite3.OperationalError("no such function: sin")
        return super().execute(statement, *args)


def test_sqlite_without_math_functions_gets_libms_registered() -> None:
    import math

    from ingest.store import segment_query

    db = sqlite3.connect(":memory:", factory=_NoMath)
    segment_query.register(db)
    assert getattr(db, "registered", False), "the probe found no sin()"
    assert db.execute("SELECT sin(0.5), cos(0.5)").fetchone() == (math.sin(0.5), math.cos(0.5))
    assert db.execute(
        "SELECT ingest_instant_us('1970-01-01T00:00:01Z'), ingest_instant_us(7)"
    ).fetchone() == (
        1_000_000,
        None,
    )
