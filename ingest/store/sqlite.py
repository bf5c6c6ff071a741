"""The SQLite backend of the store: apps, endpoints and KPI aggregates. It
earns its size as the whole Store protocol on one backend (apps and their
purge, tags, event streams and settings, endpoints, KPIs, segments, keys),
each method a transaction on one thread.

SQLite (WAL, under the data dir) is the embedded default. Migrations are
numbered SQL applied in order and recorded in ``schema_migrations``, so opening
a store brings its schema up to date.

Endpoint writes go through :meth:`Store.apply_endpoint_batch`: in one
transaction, load the batch's endpoints (and, rarely, every endpoint of a user
the batch may take past 15), fold the records in partition order with
:func:`ingest.folds.endpoints.fold`, write what changed. The fold is the same Python
for every backend.

Event writes go through :meth:`Store.apply_event_batch`: in one transaction,
mark the batch's events in ``event_marks`` (a mark already there is a
duplicate), look up the UserId of the endpoints whose events do not name one,
and write :func:`ingest.folds.kpis.effects` of the new events. Marks are kept per
day, so expiring the days before the dedupe window is one range delete.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any, Self, TypeVar

import orjson

from ingest.errors import CONDITION_TEXT, StoreCondition, StoreError
from ingest.folds import activity, endpoints, kpis
from ingest.folds.endpoints import BatchOutcome, EndpointRecord, EndpointState, Key, UserKey
from ingest.folds.kpis import EventOutcome
from ingest.keys import AccessKey, IdentityPool
from ingest.records.values import Event
from ingest.store import segment_query as query
from ingest.store import segment_sql, sql
from ingest.store.base import (
    INT32_MIN,
    PURGE_CHUNK_ROWS,
    App,
    ApplicationSettings,
    EventStream,
    Job,
    JobType,
    KpiData,
    Mark,
    Segment,
    app_of,
    app_row,
    endpoint_row,
    endpoint_state,
    event_effects,
    fresh_events,
    job_of,
    job_row,
    key_of,
    key_row,
    keys_without,
    pool_of,
    pool_row,
    segment_of,
    segment_version_row,
    settings_of,
    settings_row,
    stream_of,
    stream_row,
    unresolved,
)

T = TypeVar("T")


def _values(width: int, rows: int = 1) -> str:
    """``{rows}`` of a batch write: ``rows`` rows of ``width`` placeholders."""
    row = "(" + ", ".join("?" * width) + ")"
    return "VALUES " + ", ".join([row] * rows)


MIGRATIONS = sql.migrations(
    sql.Types(
        key="TEXT",
        text="TEXT",
        boolean="INTEGER",
        int32="INTEGER",
        int64="INTEGER",
        # An addition past 64 bits makes an SQLite integer a float, silently
        # inexact; the CHECK refuses it, as PostgreSQL's bigint does.
        total_check=" CHECK (typeof(total) = 'integer')",
        keyed=" WITHOUT ROWID",
        marks=" WITHOUT ROWID",
    )
)

# Every endpoint query names its index. SQLite 3.40 answers a row-value
# ``(app_id, endpoint_id) IN (VALUES …)`` with a full scan, and without
# ANALYZE statistics it reads a user's endpoints by scanning the whole app in
# primary-key order (to skip a sort) rather than through the user index: both
# linear in the table. ``test_every_endpoint_query_searches_an_index`` holds
# each query below to an index search.
_BY_USER = " INDEXED BY endpoints_by_user"
USER_ENDPOINTS = sql.USER_ENDPOINTS.format(index=_BY_USER)
# A deleted endpoint has no user_id, so the user index holds live ones only.
USER_MEMBERS = sql.SELECT_ENDPOINTS + _BY_USER + " WHERE app_id = ? AND user_id = ?"
# "{}" takes one "?" per ID: one app's IDs at a time.
LOAD_ENDPOINTS = sql.SELECT_ENDPOINTS + " WHERE app_id = ? AND endpoint_id IN ({})"
# The same, the live ones only: get_endpoints, a read.
LIVE_ENDPOINTS = LOAD_ENDPOINTS + " AND NOT deleted"
COUNT_USERS = (
    "SELECT app_id, user_id, count(*) FROM endpoints INDEXED BY endpoints_by_user "
    "WHERE app_id = ? AND user_id IN ({}) GROUP BY app_id, user_id"
)
# An upsert rather than INSERT OR REPLACE, which deletes and re-inserts the
# row and its index entries: about 1.3 times the rows/s here.
PUT_ENDPOINT = sql.PUT_ENDPOINTS.format(rows=_values(10))
# SQLite's default limit on bound variables is 32766 (3.32+); one per ID.
_IDS_PER_QUERY = 1000
# Four bound variables a mark.
_MARKS_PER_QUERY = 1000

# KPI writes: sql's, with a row of placeholders; the batch writes them
# _ROWS_PER_STATEMENT rows a statement (write_rows) rather than with
# executemany: a statement a chunk, not a step (and a GIL release and
# re-acquire in the sqlite3 module) a row. The marks are looked up first
# (only those already there come back, usually none) and the others
# inserted, rather than inserted with RETURNING, a row back per new mark;
# BEGIN IMMEDIATE holds the write lock between the two. Measured with the
# bench workload (200,000 events, 5,000 a batch, side by side): 181-183k
# events/s before, 198-203k after.
ADD_MEMBER = sql.ADD_MEMBERS.format(rows=_values(4))
ADD_SUM = sql.ADD_SUMS.format(rows=_values(5))
KEEP_FIRST_DAY = sql.KEEP_FIRST_DAYS.format(rows=_values(3))
MARK_EVENT = (
    "INSERT INTO event_marks (day, app_id, endpoint_id, event_id) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_ROWS_PER_STATEMENT = 500
# "{}" takes one "?" per endpoint ID, as LOAD_ENDPOINTS. A deleted endpoint's
# user_id is NULL; the condition says so rather than relying on it.
EVENT_USERS = (
    "SELECT endpoint_id, user_id FROM endpoints WHERE app_id = ? AND endpoint_id IN ({}) AND NOT deleted"
)
EXPIRE_MARKS = "DELETE FROM event_marks WHERE day < ?"
# "{}" takes one "?" per app ID: the batch's apps that were deleted.
DELETED_AMONG = "SELECT app_id FROM deleted_apps WHERE app_id IN ({})"
# One writer at a time: no row lock to take.
GET_APP_TO_TAG = sql.GET_APP_TO_TAG.format(lock="")
PUT_EVENT_STREAM = sql.PUT_EVENT_STREAM.format(lock="")
PUT_SETTINGS = sql.PUT_SETTINGS.format(lock="")
APP_OF_SEGMENT = segment_sql.APP_OF_SEGMENT.format(lock="")
SEGMENT_EXISTS = segment_sql.SEGMENT_EXISTS.format(lock="")
ADD_SEGMENT_MEMBER = segment_sql.ADD_SEGMENT_MEMBERS.format(rows=_values(4))
KEEP_LAST_EVENT = sql.KEEP_LAST_EVENTS.format(rows=_values(3))
CREATE_JOB = sql.CREATE_JOB.format(lock="")
CREATE_APP_UNDER = (
    "INSERT INTO apps (id, name, arn, tags, creation_date) "
    "SELECT ?, ?, ?, ?, ? WHERE (SELECT count(*) FROM apps) < ?"
)
# Monthly: each member-day covers the MONTH_DAYS days from it, cut short where
# the member's next day takes over, so a member counts once a day; the
# running sum of +1 at each start and -1 at each end is the count from that
# day on. One range search, one sort by member, and a row per change back.
KPI_MONTHLY_STEPS = (
    "WITH m AS (SELECT day, min(coalesce(lead(day) OVER (PARTITION BY member ORDER BY day), "
    "day + ?5), day + ?5) AS ends FROM kpi_members "
    "WHERE app_id = ?1 AND kind = ?2 AND day BETWEEN ?3 AND ?4), "
    "steps AS (SELECT day AS at, 1 AS delta FROM m UNION ALL SELECT ends, -1 FROM m) "
    "SELECT at, '', sum(sum(delta)) OVER (ORDER BY at) FROM steps GROUP BY at ORDER BY at"
)


def _flat(rows: Sequence[tuple[Any, ...]]) -> list[Any]:
    return list(chain.from_iterable(rows))


@functools.lru_cache(maxsize=64)  # a few sizes a statement: full chunks, and the last
def _rows_of(one_row: str, rows: int) -> str:
    """A statement of one VALUES row (``one_row``) for ``rows`` rows."""
    head, values, tail = one_row.partition("VALUES ")
    row, _, rest = tail.partition(")")
    return head + values + ", ".join([row + ")"] * rows) + rest


def _marked(rows: int) -> str:
    """Of ``rows`` marks, four bound values each, those already in the table
    (each a search of its primary key)."""
    return (
        "SELECT m.day, m.app_id, m.endpoint_id, m.event_id FROM (" + _values(4, rows) + ") AS v "  # noqa: S608
        "JOIN event_marks AS m ON m.day = v.column1 AND m.app_id = v.column2 "
        "AND m.endpoint_id = v.column3 AND m.event_id = v.column4"
    )


def write_rows(db: sqlite3.Connection, one_row: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """``one_row`` (a write of one VALUES row) on each of ``rows``,
    ``_ROWS_PER_STATEMENT`` a statement: a step each, not a step a row."""
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start : start + _ROWS_PER_STATEMENT]
        db.execute(_rows_of(one_row, len(chunk)), _flat(chunk))


def by_app(keys: Iterable[tuple[str, str]]) -> Iterator[tuple[list[str], str]]:
    """(app, ID) pairs → the bound values and the placeholders of a query
    taking one app and a list of its IDs, a chunk at a time."""
    ids: dict[str, list[str]] = {}
    for app_id, item in keys:
        ids.setdefault(app_id, []).append(item)
    for app_id, items in ids.items():
        for start in range(0, len(items), _IDS_PER_QUERY):
            chunk = items[start : start + _IDS_PER_QUERY]
            yield [app_id, *chunk], ", ".join("?" * len(chunk))


class SqliteStore:
    """SQLite in WAL mode. One connection, used only from one thread, so
    every call is one hop to that thread and a batch is one transaction."""

    def __init__(self, db: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._db = db
        self._executor = executor

    @classmethod
    async def open(cls, path: Path) -> Self:
        executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite")

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            try:
                _check(db, path)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA busy_timeout=5000")
                query.register(db)
                _migrate(db)
                _keep_identity(db, path)
            except BaseException:
                db.close()
                raise
            return db

        try:
            db = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except sqlite3.Error as exc:
            executor.shutdown()
            raise StoreError(f"cannot open SQLite store at {path}: {exc}", retriable=False) from exc
        except StoreError:
            executor.shutdown()
            raise
        return cls(db, executor)

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise _store_error(what, exc) from exc

    async def create_app(self, app: App, *, max_apps: int | None = None) -> bool:
        # One statement: SQLite runs one writer at a time, so the count holds.
        def create() -> bool:
            if max_apps is None:
                self._db.execute(sql.CREATE_APP, app_row(app))
                return True
            return self._db.execute(CREATE_APP_UNDER, (*app_row(app), max_apps)).rowcount == 1

        return await self._run("create app", create)

    async def get_app(self, app_id: str) -> App | None:
        def get() -> App | None:
            row = self._db.execute(sql.GET_APP, (app_id,)).fetchone()
            return None if row is None else app_of(row)

        return await self._run("get app", get)

    async def list_apps(self, *, after: str | None, limit: int) -> Sequence[App]:
        def page() -> list[App]:
            rows = self._db.execute(sql.LIST_APPS, (after or "", limit)).fetchall()
            return [app_of(row) for row in rows]

        return await self._run("list apps", page)

    async def delete_app(self, app_id: str) -> App | None:
        def delete() -> App | None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(sql.DELETE_APP, (app_id,)).fetchone()
                if row is not None:
                    db.execute(sql.MARK_DELETED, (app_id, time.time_ns() // 1_000_000, False))
                    for statement in sql.DELETE_WITH_APP:
                        db.execute(statement, (app_id,))
                    keys = [key_of(r) for r in db.execute(sql.LIVE_KEYS).fetchall()]
                    now_ms = time.time_ns() // 1_000_000
                    for key_id, kept in keys_without(keys, app_id):
                        if kept:
                            db.execute(sql.SET_KEY_APPS, (orjson.dumps(kept).decode(), key_id))
                        else:
                            db.execute(sql.REVOKE_KEY, (now_ms, key_id)).fetchall()
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            return None if row is None else app_of(row)

        return await self._run("delete app", delete)

    async def set_app_tags(
        self, app_id: str, tags: dict[str, str], *, expected: dict[str, str] | None = None
    ) -> App | None:
        def update() -> App | None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(GET_APP_TO_TAG, (app_id,)).fetchone()
                app = None if row is None else app_of(row)
                if app is not None and (expected is None or app.tags == expected):
                    db.execute(sql.SET_APP_TAGS, (orjson.dumps(tags).decode(), app_id))
                    app = dataclasses.replace(app, tags=tags)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            return app

        return await self._run("set app tags", update)

    async def put_event_stream(self, stream: EventStream) -> bool:
        return await self._put_of_app("put event stream", PUT_EVENT_STREAM, stream_row(stream))

    async def get_event_stream(self, app_id: str) -> EventStream | None:
        row = await self._row_of_app("get event stream", sql.GET_EVENT_STREAM, app_id)
        return None if row is None else stream_of(row)

    async def delete_event_stream(self, app_id: str) -> EventStream | None:
        row = await self._row_of_app("delete event stream", sql.DELETE_EVENT_STREAM, app_id)
        return None if row is None else stream_of(row)

    async def list_event_streams(self) -> Sequence[EventStream]:
        def get() -> list[EventStream]:
            return [stream_of(row) for row in self._db.execute(sql.LIST_EVENT_STREAMS).fetchall()]

        return await self._run("list event streams", get)

    async def put_application_settings(self, settings: ApplicationSettings) -> bool:
        return await self._put_of_app("put application settings", PUT_SETTINGS, settings_row(settings))

    async def get_application_settings(self, app_id: str) -> ApplicationSettings | None:
        row = await self._row_of_app("get application settings", sql.GET_SETTINGS, app_id)
        return None if row is None else settings_of(row)

    async def create_segment(self, segment: Segment, *, max_segments: int | None = None) -> bool:
        def create() -> bool:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                ok = db.execute(APP_OF_SEGMENT, (segment.app_id,)).fetchone() is not None
                if ok and max_segments is not None:
                    ok = (
                        db.execute(segment_sql.COUNT_SEGMENTS, (segment.app_id,)).fetchone()[0] < max_segments
                    )
                if ok:
                    db.execute(
                        segment_sql.INSERT_SEGMENT,
                        (segment.app_id, segment.id, segment.version, segment.creation_date),
                    )
                    db.execute(segment_sql.INSERT_SEGMENT_VERSION, segment_version_row(segment))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            return ok

        return await self._run("create segment", create)

    async def put_segment_version(self, segment: Segment) -> Segment | None:
        def put() -> Segment | None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                head = (segment.version, segment.app_id, segment.id, segment.version - 1)
                row = db.execute(segment_sql.ADVANCE_SEGMENT, head).fetchone()
                if row is not None:
                    db.execute(segment_sql.INSERT_SEGMENT_VERSION, segment_version_row(segment))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            return None if row is None else dataclasses.replace(segment, creation_date=row[0])

        return await self._run("put segment version", put)

    async def get_segment(self, app_id: str, segment_id: str, version: int | None = None) -> Segment | None:
        def get() -> Segment | None:
            row = self._db.execute(segment_sql.GET_SEGMENT, (version, app_id, segment_id)).fetchone()
            return None if row is None else segment_of(row)

        return await self._run("get segment", get)

    async def list_segments(self, app_id: str, *, after: str | None, limit: int) -> Sequence[Segment]:
        def get() -> list[Segment]:
            rows = self._db.execute(segment_sql.LIST_SEGMENTS, (app_id, after or "", limit)).fetchall()
            return [segment_of(row) for row in rows]

        return await self._run("list segments", get)

    async def list_segment_versions(
        self, app_id: str, segment_id: str, *, after: int, limit: int
    ) -> Sequence[Segment]:
        def get() -> list[Segment]:
            params = (app_id, segment_id, after, limit)
            return [segment_of(row) for row in self._db.execute(segment_sql.LIST_SEGMENT_VERSIONS, params)]

        return await self._run("list segment versions", get)

    async def delete_segment(self, app_id: str, segment_id: str) -> Segment | None:
        def delete() -> Segment | None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(segment_sql.GET_SEGMENT, (None, app_id, segment_id)).fetchone()
                if row is not None:
                    for statement in segment_sql.DELETE_SEGMENT_ROWS:
                        db.execute(statement, (app_id, segment_id))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            return None if row is None else segment_of(row)

        return await self._run("delete segment", delete)

    async def add_segment_members(
        self, app_id: str, segment_id: str, version: int, endpoint_ids: Sequence[str]
    ) -> None:
        def add() -> None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute(SEGMENT_EXISTS, (app_id, segment_id)).fetchone() is not None:
                    rows = [(app_id, segment_id, e, version) for e in sorted(set(endpoint_ids))]
                    write_rows(db, ADD_SEGMENT_MEMBER, rows)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise

        await self._run("add segment members", add)

    async def segment_endpoints(
        self,
        app_id: str,
        segment_id: str | None,
        version: int | None,
        *,
        after: str | None,
        limit: int,
        now_ms: int,
    ) -> Sequence[EndpointState]:
        found = await query.page(
            self.get_segment, "sqlite", app_id, segment_id, version, (after or "", limit, now_ms)
        )
        if found is None:
            return []
        statement, params = found

        def page() -> list[EndpointState]:
            return [endpoint_state(row) for row in self._db.execute(statement, params)]

        return await self._run("segment endpoints", page)

    async def _put_of_app(self, what: str, statement: str, row: Sequence[Any]) -> bool:
        """``statement`` (a put of a row led by its app ID, written only
        where that app exists) on ``row``; → whether it wrote. One statement:
        SQLite runs one writer at a time, so the app cannot go in between."""
        return await self._run(what, lambda: self._db.execute(statement, (*row, row[0])).rowcount == 1)

    async def _row_of_app(self, what: str, query: str, app_id: str) -> Any:
        """The one row ``query`` answers for ``app_id``, if any (every row
        stepped through, so a RETURNING statement is done)."""

        def get() -> Any:
            rows = self._db.execute(query, (app_id,)).fetchall()
            return rows[0] if rows else None

        return await self._run(what, get)

    async def purge_deleted_apps(self, *, max_rows: int = PURGE_CHUNK_ROWS) -> int:
        def purge() -> int:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                found = db.execute(sql.NEXT_PURGE).fetchone()
                deleted = 0
                if found is not None:
                    (app_id,) = found
                    for statement in sql.PURGE_TABLES:
                        deleted += db.execute(statement, (app_id, max_rows)).rowcount
                    day = INT32_MIN
                    while (day := db.execute(sql.NEXT_MARK_DAY, (day,)).fetchone()[0]) is not None:
                        deleted += db.execute(sql.PURGE_MARKS, (day, app_id, max_rows)).rowcount
                    if deleted == 0:
                        db.execute(sql.MARK_PURGED, (True, app_id))
                        deleted = 1
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            return deleted

        return await self._run("purge deleted apps", purge)

    def _deleted_among(self, app_ids: Iterable[str]) -> set[str]:
        """Of ``app_ids``, those deleted (inside the caller's transaction)."""
        dead: set[str] = set()
        ids = sorted(set(app_ids))
        for start in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[start : start + _IDS_PER_QUERY]
            dead.update(
                row[0] for row in self._db.execute(DELETED_AMONG.format(", ".join("?" * len(chunk))), chunk)
            )
        return dead

    async def create_key(self, key: AccessKey) -> None:
        await self._run("create key", lambda: self._db.execute(sql.CREATE_KEY, key_row(key)))

    async def list_keys(self) -> Sequence[AccessKey]:
        def get() -> list[AccessKey]:
            return [key_of(row) for row in self._db.execute(sql.LIST_KEYS).fetchall()]

        return await self._run("list keys", get)

    async def revoke_key(self, access_key_id: str, at_ms: int) -> bool:
        def revoke() -> bool:
            return self._db.execute(sql.REVOKE_KEY, (at_ms, access_key_id)).fetchone() is not None

        return await self._run("revoke key", revoke)

    async def create_identity_pool(self, pool: IdentityPool) -> None:
        await self._run("create identity pool", lambda: self._db.execute(sql.CREATE_POOL, pool_row(pool)))

    async def list_identity_pools(self) -> Sequence[IdentityPool]:
        def get() -> list[IdentityPool]:
            return [pool_of(row) for row in self._db.execute(sql.LIST_POOLS).fetchall()]

        return await self._run("list identity pools", get)

    async def get_endpoint(self, app_id: str, endpoint_id: str) -> EndpointState | None:
        def get() -> EndpointState | None:
            row = self._db.execute(sql.GET_ENDPOINT, (app_id, endpoint_id)).fetchone()
            return None if row is None else endpoint_state(row)

        return await self._run("get endpoint", get)

    async def get_endpoints(self, keys: Sequence[Key]) -> dict[Key, EndpointState]:
        return await self._run("get endpoints", lambda: self._load(LIVE_ENDPOINTS, dict.fromkeys(keys)))

    def _load(self, query: str, keys: Iterable[Key]) -> dict[Key, EndpointState]:
        """The endpoints ``query`` (LOAD_ENDPOINTS or LIVE_ENDPOINTS) finds
        among ``keys`` (no repeats), by key: a query per chunk of an app's IDs."""
        found: dict[Key, EndpointState] = {}
        for values, marks in by_app(keys):
            for row in self._db.execute(query.format(marks), values):
                state = endpoint_state(row)
                found[(state.app_id, state.endpoint_id)] = state
        return found

    async def user_endpoints(self, app_id: str, user_id: str) -> Sequence[EndpointState]:
        def get() -> list[EndpointState]:
            rows = self._db.execute(USER_ENDPOINTS, (app_id, user_id)).fetchall()
            return [endpoint_state(row) for row in rows]

        return await self._run("user endpoints", get)

    async def apply_endpoint_batch(self, records: Sequence[tuple[EndpointRecord, int]]) -> BatchOutcome:
        return await self._run("apply endpoint batch", lambda: self._apply(records))

    def _apply(self, records: Sequence[tuple[EndpointRecord, int]]) -> BatchOutcome:
        outcome = BatchOutcome()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if dead := self._deleted_among(r.app_id for r, _ in records):
                kept = [(r, offset) for r, offset in records if r.app_id not in dead]
                outcome.of_deleted_apps = len(records) - len(kept)
                records = kept
            current = self._load(LOAD_ENDPOINTS, {(r.app_id, r.endpoint_id) for r, _ in records})
            crowded = self._crowded(current, endpoints.joining(current, records))
            changed = endpoints.fold(current, records, outcome, crowded)
            db.executemany(PUT_ENDPOINT, [endpoint_row(s) for s in changed.values()])
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return outcome

    def _crowded(
        self, current: dict[Key, EndpointState], joining: dict[UserKey, set[str]]
    ) -> dict[UserKey, list[EndpointState]]:
        """The live endpoints of each user the batch may take past 15: one
        counting query (on the user index alone: a deleted endpoint has no
        user) per chunk of users; rows are loaded only for the crowded, which
        is rare."""
        counts: dict[UserKey, int] = {}
        for values, marks in by_app(joining):
            for app_id, user_id, count in self._db.execute(COUNT_USERS.format(marks), values):
                counts[(app_id, user_id)] = count
        crowded: dict[UserKey, list[EndpointState]] = {}
        for user, joiners in joining.items():
            if counts.get(user, 0) + len(joiners) <= endpoints.MAX_ENDPOINTS_PER_USER:
                continue
            rows = self._db.execute(USER_MEMBERS, user).fetchall()
            states = (endpoint_state(row) for row in rows)
            crowded[user] = [current.get((s.app_id, s.endpoint_id), s) for s in states]
        return crowded

    async def apply_event_batch(
        self, events: Sequence[Event], *, oldest_day: int, newest_day: int
    ) -> EventOutcome:
        return await self._run(
            "apply event batch", lambda: self._apply_events(events, oldest_day, newest_day)
        )

    def _apply_events(self, events: Sequence[Event], oldest_day: int, newest_day: int) -> EventOutcome:
        outcome = EventOutcome()
        fresh = fresh_events(events, oldest_day, newest_day, outcome)
        last = activity.last_events(events)
        if not last:
            return outcome
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if dead := self._deleted_among(app_id for app_id, _ in last):
                outcome.of_deleted_apps = sum(1 for mark in fresh if mark[1] in dead)
                fresh = {mark: event for mark, event in fresh.items() if mark[1] not in dead}
                last = {key: at for key, at in last.items() if key[0] not in dead}
            marks = sorted(fresh)
            marked: set[Mark] = set()
            for start in range(0, len(marks), _MARKS_PER_QUERY):
                chunk = marks[start : start + _MARKS_PER_QUERY]
                marked.update(db.execute(_marked(len(chunk)), _flat(chunk)))
            if marked:
                marks = [mark for mark in marks if mark not in marked]
            write_rows(db, MARK_EVENT, marks)
            new = [fresh[mark] for mark in marks]
            stored: dict[Key, str | None] = {}
            for ids, marks_ in by_app(unresolved(new)):
                for endpoint_id, user_id in db.execute(EVENT_USERS.format(marks_), ids):
                    stored[(ids[0], endpoint_id)] = user_id
            effects = event_effects(new, stored)
            write_rows(db, ADD_MEMBER, sorted(effects.members))
            write_rows(db, ADD_SUM, [(*key, total) for key, total in sorted(effects.sums.items())])
            write_rows(db, KEEP_FIRST_DAY, [(*key, day) for key, day in sorted(effects.first_days.items())])
            write_rows(db, KEEP_LAST_EVENT, [(*key, at) for key, at in sorted(last.items())])
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        outcome.aggregated = len(new)
        outcome.duplicates += len(fresh) - len(new)
        return outcome

    async def expire_event_marks(self, *, before_day: int) -> int:
        def expire() -> int:
            return self._db.execute(EXPIRE_MARKS, (before_day,)).rowcount

        return await self._run("expire event marks", expire)

    async def kpi_member_counts(self, app_id: str, kind: str, first_day: int, last_day: int) -> KpiData:
        params = (app_id, kind, first_day, last_day)
        return await self._read("KPI member counts", sql.KPI_MEMBER_COUNTS, params)

    async def kpi_members(self, app_id: str, kind: str, first_day: int, last_day: int) -> KpiData:
        return await self._read("KPI members", sql.KPI_MEMBERS, (app_id, kind, first_day, last_day))

    async def kpi_monthly_counts(self, app_id: str, kind: str, first_day: int, last_day: int) -> KpiData:
        params = (app_id, kind, first_day - (kpis.MONTH_DAYS - 1), last_day, kpis.MONTH_DAYS)
        steps = await self._read("KPI monthly counts", KPI_MONTHLY_STEPS, params)
        return kpis.rolling_counts(steps, first_day, last_day)

    async def kpi_sums(self, app_id: str, kind: str, first_day: int, last_day: int) -> KpiData:
        return await self._read("KPI sums", sql.KPI_SUMS, (app_id, kind, first_day, last_day))

    async def kpi_new_endpoints(self, app_id: str, first_day: int, last_day: int) -> KpiData:
        return await self._read("KPI new endpoints", sql.KPI_NEW_ENDPOINTS, (app_id, first_day, last_day))

    async def _read(self, what: str, query: str, params: tuple[Any, ...]) -> KpiData:
        def read() -> KpiData:
            return self._db.execute(query, params).fetchall()

        return await self._run(what, read)

    async def create_job(self, job: Job) -> bool:
        return await self._put_of_app("create job", CREATE_JOB, job_row(job))

    async def get_job(self, app_id: str, job_id: str) -> Job | None:
        def get() -> Job | None:
            row = self._db.execute(sql.GET_JOB, (app_id, job_id)).fetchone()
            return None if row is None else job_of(row)

        return await self._run("get job", get)

    async def list_jobs(
        self, app_id: str, job_type: JobType, *, segment_id: str | None, before: str | None, limit: int
    ) -> Sequence[Job]:
        segment = segment_id or ""
        params = (app_id, job_type, before or sql.LAST_JOB_ID, segment, segment, limit)

        def page() -> list[Job]:
            return [job_of(row) for row in self._db.execute(sql.LIST_JOBS, params).fetchall()]

        return await self._run("list jobs", page)

    async def claim_job(
        self, owner: str, *, now_ms: int, lease_ms: int, max_running: int, max_per_app: int
    ) -> Job | None:
        # One statement: SQLite runs one writer at a time, so the counts hold.
        params = (owner, now_ms + lease_ms, now_ms, now_ms, max_running, now_ms, max_per_app)

        def claim() -> Job | None:
            rows = self._db.execute(sql.CLAIM_JOB, params).fetchall()
            return job_of(rows[0]) if rows else None

        return await self._run("claim job", claim)

    async def save_job(self, job: Job, *, now_ms: int, lease_ms: int) -> bool:
        params = sql.save_job_params(job_row(job), now_ms + lease_ms if lease_ms else 0)
        return await self._run("save job", lambda: self._db.execute(sql.SAVE_JOB, params).rowcount == 1)

    async def renew_job(self, app_id: str, job_id: str, owner: str, *, until_ms: int) -> bool:
        params = (until_ms, app_id, job_id, owner)
        return await self._run("renew job", lambda: self._db.execute(sql.RENEW_JOB, params).rowcount == 1)

    async def close(self) -> None:
        await self._run("close", self._db.close)
        self._executor.shutdown()


def identity_file(path: Path) -> Path:
    """Beside the store: the identity the store had when it was made."""
    return path.with_name(path.name + ".id")


def _check(db: sqlite3.Connection, path: Path) -> None:
    """Refuse a store that is damaged, or not the one this path had.

    ``PRAGMA quick_check`` reads the whole file once (seconds per GB), so a
    store damaged mid-file refuses to start rather than starting ready. And a
    store emptied (a zero-length file) or replaced under a path that had one
    would start as an empty store, silently forgetting every endpoint: its
    identity (SQLite's ``application_id``, set when the store is made and
    kept in ``<store>.id``) tells it apart."""
    found = db.execute("PRAGMA quick_check").fetchall()
    if found != [("ok",)]:
        problems = "; ".join(str(row[0]) for row in found[:3])
        raise StoreError(
            f"the SQLite store at {path} is damaged ({problems}); restore it from a backup", retriable=False
        )
    marker = identity_file(path)
    if not marker.exists():
        return
    expected = marker.read_text().strip()
    (actual,) = db.execute("PRAGMA application_id").fetchone()
    if str(actual) != expected:
        raise StoreError(
            f"the SQLite store at {path} is not the one made here (identity {actual}, expected "
            f"{expected} from {marker}): it was emptied or replaced. Restore it, or remove {marker} "
            "to start with this store",
            retriable=False,
        )


def _keep_identity(db: sqlite3.Connection, path: Path) -> None:
    """Give a store without one (new, or made before identities) its identity,
    and write it beside the store; a second process finds the same."""
    marker = identity_file(path)
    if marker.exists():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        (identity,) = db.execute("PRAGMA application_id").fetchone()
        if identity == 0:
            # Any positive 31-bit number but SQLite's own registered ones.
            identity = secrets.randbelow(2**31 - 2) + 1
            db.execute(f"PRAGMA application_id = {int(identity)}")
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise
    partial = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    partial.write_text(f"{identity}\n")
    partial.replace(marker)


def _migrate(db: sqlite3.Connection) -> None:
    """All pending migrations in one write transaction: a second process
    opening the same fresh store waits (busy_timeout) instead of racing."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(sql.MIGRATIONS_TABLE)
        (current,) = db.execute(sql.MIGRATED).fetchone()
        for version, migration in enumerate(MIGRATIONS[current:], start=current + 1):
            db.execute(migration)
            db.execute(sql.RECORD_MIGRATION, (version,))
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


# SQLite's primary result codes that say what is wrong with the disk.
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_CONDITIONS: dict[int, StoreCondition] = {_SQLITE_FULL: "disk_full", _SQLITE_READONLY: "read_only"}


def _store_error(what: str, exc: sqlite3.Error) -> StoreError:
    """The StoreError for what sqlite3 raised: a full disk or a read-only
    file named as such (both retriable: space can be freed, a file system
    remounted); other operational errors (locked, I/O) retriable; the rest
    (constraint, misuse) not."""
    code = getattr(exc, "sqlite_errorcode", None)
    condition = _CONDITIONS.get(code & 0xFF) if isinstance(code, int) else None
    if condition is not None:
        return StoreError(f"{what}: {CONDITION_TEXT[condition]} ({exc})", retriable=True, condition=condition)
    return StoreError(f"{what}: {exc}", retriable=isinstance(exc, sqlite3.OperationalError))


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back what is open. SQLite has already rolled back a transaction
    that failed on a full disk, and a second ROLLBACK would replace that
    error with "cannot rollback - no transaction is active"."""
    if db.in_transaction:
        db.execute("ROLLBACK")
