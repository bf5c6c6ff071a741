"""The PostgreSQL backend of the store (asyncpg), for more than one process.

It runs the SQL of :mod:`ingest.store.sql` as SQLite does, and earns its size
over SQLite's with what several workers writing at once need: the locking that
keeps their batches serialisable, and the partitioned marks (below).

Same logical schema and the same observable behaviour as
:class:`ingest.store.sqlite.SqliteStore`; migrations are numbered and applied at open
under an advisory lock, so processes starting together migrate once.

A batch is one transaction: load its endpoints, :func:`ingest.folds.endpoints.fold`
them in Python with the 15-endpoints-per-user rule, upsert the changed rows.
SQLite runs one writer at a time; here workers of different partitions write
at once, and one user's endpoints can sit in several partitions. To give the
same results as some serial order of the batches:

* the batch's endpoints are loaded ``FOR UPDATE``, so a concurrent eviction of
  one of them is either seen or waits for this batch;
* before counting a user's endpoints, the batch takes a transaction advisory
  lock per (app, user) it may add an endpoint to, so two batches adding to one
  user run the rule one after the other, and the second counts the first's
  endpoints (READ COMMITTED reads a fresh snapshot per statement);
* the rule loads a crowded user's endpoints ``FOR UPDATE``, so it never
  overwrites an endpoint that another batch just moved to another user.

Locks are taken in key order; a deadlock PostgreSQL still detects surfaces as a
retriable StoreError, and the worker retries the whole batch, of which nothing
was written.

Columns compared or sorted as text use ``COLLATE "C"`` (byte order, as
SQLite's BINARY), so ``list_apps`` pages and ``user_endpoints`` order the same
on every database whatever its default collation. The document is JSON in a
``text`` column rather than ``jsonb``: ``jsonb`` rejects ``\\u0000`` in strings,
reorders members and turns ``1e300`` into an integer, and a 5000-row upsert
into ``text`` ran about 1.4 times as fast here.

PostgreSQL text cannot hold NUL (U+0000), which SQLite stores: writing an ID
with one is a non-retriable StoreError, and reads looking one up find nothing,
as nothing with one can have been written. The same holds for events: a NUL in
any text an event batch writes (IDs, a session or user ID, an event type, a
currency, a campaign) fails the batch, non-retriably.

KPI aggregates (see :mod:`ingest.folds.kpis` and ``SqliteStore``). Here several KPI
workers write at once: different partitions, so different marks and first
days, but the same app's sums and often the same members (a user's endpoints
in several partitions). So:

* ``event_marks`` is partitioned by range of ``day``, a partition a day, and
  marks expire by ``DROP TABLE`` of whole partitions. A batch creates the
  partitions it lacks itself, under a transaction advisory lock, by ``CREATE
  TABLE … (LIKE event_marks)`` then ``ATTACH PARTITION``, which takes SHARE
  UPDATE EXCLUSIVE on the parent and so does not wait for the batches writing
  marks (``CREATE TABLE … PARTITION OF`` takes ACCESS EXCLUSIVE: it would);
* a batch takes ROW EXCLUSIVE on the parent first, so the partitions it found
  cannot be dropped under it (``DROP`` of a partition needs ACCESS EXCLUSIVE
  on the parent); expiring waits for the batches in flight;
* every upsert's rows are sorted by key, and the tables are written in one
  order (marks, members, sums, first days), so two batches lock rows in one
  global order and do not deadlock; sums add to the latest committed total
  (``ON CONFLICT DO UPDATE`` re-reads it), so no addition is lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from typing import Any

import asyncpg
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

# A small pool: a process runs one endpoint worker (one batch at a time) plus
# the edge's reads.
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 4
# Connecting to a server that is down fails at once (refused); this bounds a
# connect to an address that drops packets, so the worker's retry loop runs.
CONNECT_TIMEOUT_S = 5.0
# A 5000-record batch takes well under a second; a statement still running
# after this means the server is stuck, and the batch is retried.
COMMAND_TIMEOUT_S = 30.0
# Closing waits this long for borrowed connections, then drops them.
CLOSE_TIMEOUT_S = 5.0
# Advisory lock key (one bigint) held while migrating: "ingest" in ASCII.
MIGRATION_LOCK = 0x696E67657374
# Advisory lock keys (one bigint, like MIGRATION_LOCK): held while creating
# event_marks partitions ("marks"), and while expiring them ("expire").
PARTITION_LOCK = 0x6D61726B73
EXPIRE_LOCK = 0x657870697265
# Held while counting the apps and creating one ("apps"), so concurrent
# CreateApps on several edges take turns and never pass the quota.
APPS_LOCK = 0x61707073
# Held while claiming a job ("jobs"): see _CLAIM_JOB.
JOBS_LOCK = 0x6A6F6273
# The one character a PostgreSQL text value cannot hold.
NUL = "\x00"

MIGRATIONS = sql.migrations(
    sql.Types(
        key='text COLLATE "C"',
        text="text",
        boolean="boolean",
        int32="integer",
        int64="bigint",
        total_check="",
        keyed="",
        # Partitions of event_marks are made by apply_event_batch, a day at a
        # time (_ensure_partitions).
        marks=" PARTITION BY RANGE (day)",
    )
)


def unnest(*types: str) -> str:
    """``{rows}`` of a batch write: one array parameter a column, of ``types``."""
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, 1))
    return "SELECT * FROM unnest(" + arrays + ")"  # noqa: S608 (type names, constants here)


# Tags: the app row locked while its tags are compared and written; a put of
# a stream or settings holds the app row FOR SHARE (see sql.PUT_EVENT_STREAM).
_GET_APP_TO_TAG = sql.numbered(sql.GET_APP_TO_TAG.format(lock=" FOR UPDATE"))
_SET_APP_TAGS = sql.numbered(sql.SET_APP_TAGS)
_PUT_EVENT_STREAM = sql.numbered(sql.PUT_EVENT_STREAM.format(lock=" FOR SHARE"))
_PUT_SETTINGS = sql.numbered(sql.PUT_SETTINGS.format(lock=" FOR SHARE"))
_GET_EVENT_STREAM = sql.numbered(sql.GET_EVENT_STREAM)
# Jobs: a create holds the app row FOR SHARE (as a stream's put); a claim
# runs under JOBS_LOCK, so two claims never count the same held jobs.
_CREATE_JOB = sql.numbered(sql.CREATE_JOB.format(lock=" FOR SHARE"))
_GET_JOB = sql.numbered(sql.GET_JOB)
_LIST_JOBS = sql.numbered(sql.LIST_JOBS)
_CLAIM_JOB = sql.numbered(sql.CLAIM_JOB)
_SAVE_JOB = sql.numbered(sql.SAVE_JOB)
_RENEW_JOB = sql.numbered(sql.RENEW_JOB)
_DELETE_EVENT_STREAM = sql.numbered(sql.DELETE_EVENT_STREAM)
_GET_SETTINGS = sql.numbered(sql.GET_SETTINGS)
_GET_ENDPOINT = sql.numbered(sql.GET_ENDPOINT)
_USER_ENDPOINTS = sql.numbered(sql.USER_ENDPOINTS.format(index=""))
# A batch's (app, ID) pairs, as two arrays. (S608: the statements that use it
# are built of constants only.)
_PAIRS = "(SELECT * FROM unnest($1::text[], $2::text[]))"
LOAD_BATCH = (
    f"{sql.SELECT_ENDPOINTS} WHERE (app_id, endpoint_id) IN {_PAIRS} ORDER BY app_id, endpoint_id FOR UPDATE"
)
# get_endpoints: the live endpoints among a chunk of pairs. A read, so no
# lock; _GET_KEYS_PER_QUERY pairs a query bounds each answer (a few MB of rows).
_LIVE_ENDPOINTS = f"{sql.SELECT_ENDPOINTS} WHERE (app_id, endpoint_id) IN {_PAIRS} AND NOT deleted"
_GET_KEYS_PER_QUERY = 1000
_COUNT_USERS = (
    "SELECT app_id, user_id, count(*) AS count FROM endpoints "  # noqa: S608
    f"WHERE (app_id, user_id) IN {_PAIRS} GROUP BY app_id, user_id"
)
_LOAD_USERS = (
    f"{sql.SELECT_ENDPOINTS} WHERE (app_id, user_id) IN {_PAIRS} "
    "AND NOT deleted ORDER BY app_id, endpoint_id FOR UPDATE"
)
# Two int4 keys: a separate lock space from MIGRATION_LOCK. A hash collision
# only serialises two users that did not need it.
_LOCK_USERS = (
    "SELECT pg_advisory_xact_lock(a, u) FROM ("
    "SELECT DISTINCT hashtext(a) AS a, hashtext(u) AS u FROM unnest($1::text[], $2::text[]) AS t(a, u) "
    "ORDER BY 1, 2) AS keys"
)
UPSERT = sql.PUT_ENDPOINTS.format(
    rows=unnest("text", "text", "text", "boolean", "bigint", "bigint", "text", "text", "text", "text")
)

# A batch's apps: the live ones locked FOR SHARE, so a DeleteApp (which
# deletes the row) waits for the batch, and its purge sees what the batch
# wrote; then the deleted ones, whose records the batch drops. Either the
# DeleteApp committed before the lock (its tombstone is seen) or after the
# batch (its purge deletes the batch's rows).
_LOCK_APPS = "SELECT id FROM apps WHERE id = ANY($1::text[]) ORDER BY id FOR SHARE"
_DELETED_AMONG = "SELECT app_id FROM deleted_apps WHERE app_id = ANY($1::text[])"

# KPI writes (see the module docstring for the locking).
_LOCK_MARKS = "LOCK TABLE ONLY event_marks IN ROW EXCLUSIVE MODE"
_PARTITIONS = (
    "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = 'event_marks'::regclass"
)
# A partition's name says its day: event_marks_20261123.
_PARTITION_NAME = re.compile(r"event_marks_(\d{4})(\d{2})(\d{2})")
_EPOCH = date(1970, 1, 1)
_MARK_EVENTS = sql.MARK_EVENTS.format(rows=unnest("integer", "text", "text", "text"))
_EVENT_USERS = (
    "SELECT app_id, endpoint_id, user_id FROM endpoints "  # noqa: S608
    f"WHERE (app_id, endpoint_id) IN {_PAIRS} AND NOT deleted"
)
_ADD_MEMBERS = sql.ADD_MEMBERS.format(rows=unnest("text", "text", "integer", "text"))
_ADD_SUMS = sql.ADD_SUMS.format(rows=unnest("text", "text", "integer", "text", "bigint"))
_KEEP_FIRST_DAYS = sql.KEEP_FIRST_DAYS.format(rows=unnest("text", "text", "integer"))
# KPI reads: the shared ones (sql.KPI_*) and the monthly steps, counted as
# SqliteStore counts them (see its KPI_MONTHLY_STEPS); LEAST passes over the
# last day's NULL lead, and the running sum (numeric) is cast back.
_KPI_MONTHLY_STEPS = (
    "WITH m AS (SELECT day, LEAST(lead(day) OVER (PARTITION BY member ORDER BY day), "
    "day + $5::integer) AS ends FROM kpi_members "
    "WHERE app_id = $1 AND kind = $2 AND day BETWEEN $3 AND $4), "
    "steps AS (SELECT day AS at, 1 AS delta FROM m UNION ALL SELECT ends, -1 FROM m) "
    "SELECT at, '', (sum(sum(delta)) OVER (ORDER BY at))::integer FROM steps GROUP BY at ORDER BY at"
)

# Segments (see sql): creates in one app take turns on its row; a new
# version or new members hold the segment's head.
_APP_OF_SEGMENT = sql.numbered(segment_sql.APP_OF_SEGMENT.format(lock=" FOR UPDATE"))
_SEGMENT_EXISTS = sql.numbered(segment_sql.SEGMENT_EXISTS.format(lock=" FOR SHARE"))
_GET_SEGMENT = sql.numbered(segment_sql.GET_SEGMENT).replace("COALESCE($1,", "COALESCE($1::integer,")
_INSERT_SEGMENT_VERSION = sql.numbered(segment_sql.INSERT_SEGMENT_VERSION)
_ADD_SEGMENT_MEMBERS = segment_sql.ADD_SEGMENT_MEMBERS.format(rows=unnest("text", "text", "text", "integer"))
_KEEP_LAST_EVENTS = sql.KEEP_LAST_EVENTS.format(rows=unnest("text", "text", "bigint"))

# What asyncpg and the socket under it raise; everything else is a bug here.
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
# Server errors that mean "not now" rather than "never": connection loss
# (class 08), a deadlock or serialization failure (40), out of resources (53),
# shutdown, restart or cancel (57), an I/O error on the server (58).
_RETRIABLE = (
    OSError,  # refused, reset, timed out (TimeoutError is an OSError)
    asyncpg.PostgresConnectionError,
    asyncpg.TransactionRollbackError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    asyncpg.PostgresSystemError,
)


class PostgresStore:
    """A pool of asyncpg connections. Every method holds a connection only
    for its own statements; a batch holds one for its transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        """Connect and migrate. Raises StoreError, retriable when the server
        cannot be reached."""
        with _boundary("cannot open PostgreSQL store"):
            pool = await asyncpg.create_pool(
                url,
                min_size=POOL_MIN_SIZE,
                max_size=POOL_MAX_SIZE,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
            )
        store = cls(pool)
        try:
            with _boundary("cannot migrate PostgreSQL store"):
                async with pool.acquire() as con, con.transaction():
                    await _migrate(con)
        except BaseException:
            pool.terminate()
            raise
        return store

    async def create_app(self, app: App, *, max_apps: int | None = None) -> bool:
        with _boundary("create app"):
            async with self._pool.acquire() as con, con.transaction():
                if max_apps is not None:
                    await con.execute("SELECT pg_advisory_xact_lock($1)", APPS_LOCK)
                    if await con.fetchval(sql.COUNT_APPS) >= max_apps:
                        return False
                await con.execute(sql.numbered(sql.CREATE_APP), *app_row(app))
        return True

    async def get_app(self, app_id: str) -> App | None:
        if NUL in app_id:
            return None
        with _boundary("get app"):
            row = await self._pool.fetchrow(sql.numbered(sql.GET_APP), app_id)
        return None if row is None else app_of(row)

    async def list_apps(self, *, after: str | None, limit: int) -> Sequence[App]:
        # No ID holds NUL, so "after P + NUL + rest" is "after P" in byte order.
        after = (after or "").partition(NUL)[0]
        with _boundary("list apps"):
            rows = await self._pool.fetch(sql.numbered(sql.LIST_APPS), after, limit)
        return [app_of(row) for row in rows]

    async def delete_app(self, app_id: str) -> App | None:
        if NUL in app_id:
            return None
        with _boundary("delete app"):
            async with self._pool.acquire() as con, con.transaction():
                row = await con.fetchrow(sql.numbered(sql.DELETE_APP), app_id)
                if row is None:
                    return None
                now_ms = time.time_ns() // 1_000_000
                await con.execute(sql.numbered(sql.MARK_DELETED), app_id, now_ms, False)
                for statement in sql.DELETE_WITH_APP:
                    await con.execute(sql.numbered(statement), app_id)
                keys = [key_of(r) for r in await con.fetch(sql.LIVE_KEYS + " FOR UPDATE")]
                for key_id, kept in keys_without(keys, app_id):
                    if kept:
                        await con.execute(sql.numbered(sql.SET_KEY_APPS), orjson.dumps(kept).decode(), key_id)
                    else:
                        await con.execute(sql.numbered(sql.REVOKE_KEY), now_ms, key_id)
        return app_of(row)

    async def set_app_tags(
        self, app_id: str, tags: dict[str, str], *, expected: dict[str, str] | None = None
    ) -> App | None:
        if NUL in app_id:
            return None
        with _boundary("set app tags"):
            async with self._pool.acquire() as con, con.transaction():
                row = await con.fetchrow(_GET_APP_TO_TAG, app_id)
                if row is None:
                    return None
                app = app_of(row)
                if expected is not None and app.tags != expected:
                    return app
                await con.execute(_SET_APP_TAGS, orjson.dumps(tags).decode(), app_id)
        return dataclasses.replace(app, tags=tags)

    async def put_event_stream(self, stream: EventStream) -> bool:
        return await self._put_of_app("put event stream", _PUT_EVENT_STREAM, stream_row(stream))

    async def get_event_stream(self, app_id: str) -> EventStream | None:
        row = await self._row_of_app("get event stream", _GET_EVENT_STREAM, app_id)
        return None if row is None else stream_of(row)

    async def delete_event_stream(self, app_id: str) -> EventStream | None:
        row = await self._row_of_app("delete event stream", _DELETE_EVENT_STREAM, app_id)
        return None if row is None else stream_of(row)

    async def list_event_streams(self) -> Sequence[EventStream]:
        with _boundary("list event streams"):
            rows = await self._pool.fetch(sql.LIST_EVENT_STREAMS)
        return [stream_of(row) for row in rows]

    async def put_application_settings(self, settings: ApplicationSettings) -> bool:
        return await self._put_of_app("put application settings", _PUT_SETTINGS, settings_row(settings))

    async def get_application_settings(self, app_id: str) -> ApplicationSettings | None:
        row = await self._row_of_app("get application settings", _GET_SETTINGS, app_id)
        return None if row is None else settings_of(row)

    async def create_segment(self, segment: Segment, *, max_segments: int | None = None) -> bool:
        if NUL in segment.app_id:
            return False
        with _boundary("create segment"):
            async with self._pool.acquire() as con, con.transaction():
                if await con.fetchval(_APP_OF_SEGMENT, segment.app_id) is None:
                    return False
                if max_segments is not None:
                    count = await con.fetchval(sql.numbered(segment_sql.COUNT_SEGMENTS), segment.app_id)
                    if count >= max_segments:
                        return False
                head = (segment.app_id, segment.id, segment.version, segment.creation_date)
                await con.execute(sql.numbered(segment_sql.INSERT_SEGMENT), *head)
                await con.execute(
                    sql.numbered(segment_sql.INSERT_SEGMENT_VERSION), *segment_version_row(segment)
                )
        return True

    async def put_segment_version(self, segment: Segment) -> Segment | None:
        if NUL in segment.app_id or NUL in segment.id:
            return None
        with _boundary("put segment version"):
            async with self._pool.acquire() as con, con.transaction():
                head = (segment.version, segment.app_id, segment.id, segment.version - 1)
                created = await con.fetchval(sql.numbered(segment_sql.ADVANCE_SEGMENT), *head)
                if created is None:
                    return None
                await con.execute(
                    sql.numbered(segment_sql.INSERT_SEGMENT_VERSION), *segment_version_row(segment)
                )
        return dataclasses.replace(segment, creation_date=created)

    async def get_segment(self, app_id: str, segment_id: str, version: int | None = None) -> Segment | None:
        if NUL in app_id or NUL in segment_id:
            return None
        with _boundary("get segment"):
            row = await self._pool.fetchrow(_GET_SEGMENT, version, app_id, segment_id)
        return None if row is None else segment_of(row)

    async def list_segments(self, app_id: str, *, after: str | None, limit: int) -> Sequence[Segment]:
        if NUL in app_id:
            return []
        after = (after or "").partition(NUL)[0]
        with _boundary("list segments"):
            rows = await self._pool.fetch(sql.numbered(segment_sql.LIST_SEGMENTS), app_id, after, limit)
        return [segment_of(row) for row in rows]

    async def list_segment_versions(
        self, app_id: str, segment_id: str, *, after: int, limit: int
    ) -> Sequence[Segment]:
        if NUL in app_id or NUL in segment_id:
            return []
        with _boundary("list segment versions"):
            rows = await self._pool.fetch(
                sql.numbered(segment_sql.LIST_SEGMENT_VERSIONS), app_id, segment_id, after, limit
            )
        return [segment_of(row) for row in rows]

    async def delete_segment(self, app_id: str, segment_id: str) -> Segment | None:
        if NUL in app_id or NUL in segment_id:
            return None
        with _boundary("delete segment"):
            async with self._pool.acquire() as con, con.transaction():
                row = await con.fetchrow(_GET_SEGMENT + " FOR UPDATE OF s", None, app_id, segment_id)
                if row is None:
                    return None
                for statement in segment_sql.DELETE_SEGMENT_ROWS:
                    await con.execute(sql.numbered(statement), app_id, segment_id)
        return segment_of(row)

    async def add_segment_members(
        self, app_id: str, segment_id: str, version: int, endpoint_ids: Sequence[str]
    ) -> None:
        ids = sorted({e for e in endpoint_ids if NUL not in e})
        if NUL in app_id or NUL in segment_id or not ids:
            return
        with _boundary("add segment members"):
            async with self._pool.acquire() as con, con.transaction():
                if await con.fetchval(_SEGMENT_EXISTS, app_id, segment_id) is None:
                    return
                width = len(ids)
                await con.execute(
                    _ADD_SEGMENT_MEMBERS, [app_id] * width, [segment_id] * width, ids, [version] * width
                )

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
        if NUL in app_id or (segment_id is not None and NUL in segment_id):
            return []
        start = (after or "").partition(NUL)[0]
        found = await query.page(
            self.get_segment, "postgres", app_id, segment_id, version, (start, limit, now_ms)
        )
        if found is None:
            return []
        # Not sql.numbered: its cache would keep every definition's text.
        statement, params = sql.numbered.__wrapped__(found[0]), found[1]
        with _boundary("segment endpoints"):
            rows = await self._pool.fetch(statement, *params)
        return [endpoint_state(row) for row in rows]

    async def _put_of_app(self, what: str, statement: str, row: Sequence[Any]) -> bool:
        """``statement`` (a put of a row led by its app ID, written only
        where that app exists) on ``row``; → whether it wrote."""
        app_id = row[0]
        if NUL in app_id:
            return False  # no app can have it
        with _boundary(what):
            return _count(await self._pool.execute(statement, *row, app_id)) == 1

    async def _row_of_app(self, what: str, query: str, app_id: str) -> asyncpg.Record | None:
        """The one row ``query`` answers for ``app_id``, if any."""
        if NUL in app_id:
            return None  # nothing with a NUL can have been written
        with _boundary(what):
            row: asyncpg.Record | None = await self._pool.fetchrow(query, app_id)
        return row

    async def purge_deleted_apps(self, *, max_rows: int = PURGE_CHUNK_ROWS) -> int:
        with _boundary("purge deleted apps"):
            async with self._pool.acquire() as con, con.transaction():
                # FOR UPDATE: two processes purging take turns on an app.
                app_id = await con.fetchval(sql.NEXT_PURGE + " FOR UPDATE")
                if app_id is None:
                    return 0
                deleted = 0
                for statement in sql.PURGE_TABLES:
                    deleted += _count(await con.execute(sql.numbered(statement), app_id, max_rows))
                await con.execute(_LOCK_MARKS)  # no partition dropped under the loop
                day = INT32_MIN
                while (day := await con.fetchval(sql.numbered(sql.NEXT_MARK_DAY), day)) is not None:
                    status = await con.execute(sql.numbered(sql.PURGE_MARKS), day, app_id, max_rows)
                    deleted += _count(status)
                if deleted == 0:
                    await con.execute(sql.numbered(sql.MARK_PURGED), True, app_id)
                    deleted = 1
        return deleted

    async def create_key(self, key: AccessKey) -> None:
        with _boundary("create key"):
            await self._pool.execute(sql.numbered(sql.CREATE_KEY), *key_row(key))

    async def list_keys(self) -> Sequence[AccessKey]:
        with _boundary("list keys"):
            rows = await self._pool.fetch(sql.LIST_KEYS)
        return [key_of(row) for row in rows]

    async def revoke_key(self, access_key_id: str, at_ms: int) -> bool:
        if NUL in access_key_id:
            return False
        with _boundary("revoke key"):
            row = await self._pool.fetchrow(sql.numbered(sql.REVOKE_KEY), at_ms, access_key_id)
        return row is not None

    async def create_identity_pool(self, pool: IdentityPool) -> None:
        with _boundary("create identity pool"):
            await self._pool.execute(sql.numbered(sql.CREATE_POOL), *pool_row(pool))

    async def list_identity_pools(self) -> Sequence[IdentityPool]:
        with _boundary("list identity pools"):
            rows = await self._pool.fetch(sql.LIST_POOLS)
        return [pool_of(row) for row in rows]

    async def get_endpoint(self, app_id: str, endpoint_id: str) -> EndpointState | None:
        if NUL in app_id or NUL in endpoint_id:
            return None
        with _boundary("get endpoint"):
            row = await self._pool.fetchrow(_GET_ENDPOINT, app_id, endpoint_id)
        return None if row is None else endpoint_state(row)

    async def get_endpoints(self, keys: Sequence[Key]) -> dict[Key, EndpointState]:
        # A key with a NUL finds nothing (nothing with one can have been
        # written) and cannot be sent as text: it is not looked up.
        wanted = [key for key in dict.fromkeys(keys) if NUL not in key[0] and NUL not in key[1]]
        found: dict[Key, EndpointState] = {}
        if not wanted:
            return found
        with _boundary("get endpoints"):
            async with self._pool.acquire() as con:
                for start in range(0, len(wanted), _GET_KEYS_PER_QUERY):
                    chunk = wanted[start : start + _GET_KEYS_PER_QUERY]
                    for row in await con.fetch(_LIVE_ENDPOINTS, *columns(chunk, 2)):
                        state = endpoint_state(row)
                        found[(state.app_id, state.endpoint_id)] = state
        return found

    async def user_endpoints(self, app_id: str, user_id: str) -> Sequence[EndpointState]:
        if NUL in app_id or NUL in user_id:
            return []
        with _boundary("user endpoints"):
            rows = await self._pool.fetch(_USER_ENDPOINTS, app_id, user_id)
        return [endpoint_state(row) for row in rows]

    async def apply_endpoint_batch(self, records: Sequence[tuple[EndpointRecord, int]]) -> BatchOutcome:
        """Fold ``records`` (in partition order) into the store in one
        transaction; on any StoreError nothing of the batch is written."""
        outcome = BatchOutcome()
        keys = sorted({(r.app_id, r.endpoint_id) for r, _ in records})
        with _boundary("apply endpoint batch"):
            async with self._pool.acquire() as con, con.transaction():
                if dead := await _deleted_among(con, {r.app_id for r, _ in records}):
                    kept = [(r, offset) for r, offset in records if r.app_id not in dead]
                    outcome.of_deleted_apps = len(records) - len(kept)
                    records = kept
                    keys = sorted({(r.app_id, r.endpoint_id) for r, _ in records})
                rows = await con.fetch(LOAD_BATCH, *columns(keys, 2))
                current = {(row["app_id"], row["endpoint_id"]): endpoint_state(row) for row in rows}
                joining = endpoints.joining(current, records)
                crowded = await _crowded(con, current, joining) if joining else {}
                changed = endpoints.fold(current, records, outcome, crowded)
                await _upsert(con, changed.values())
        return outcome

    async def apply_event_batch(
        self, events: Sequence[Event], *, oldest_day: int, newest_day: int
    ) -> EventOutcome:
        """As the Store protocol says, in one transaction; on any StoreError
        nothing of the batch is written (a partition it created included)."""
        outcome = EventOutcome()
        fresh = fresh_events(events, oldest_day, newest_day, outcome)
        last = activity.last_events(events)
        if not last:
            return outcome
        marks = sorted(fresh)
        with _boundary("apply event batch"):
            async with self._pool.acquire() as con, con.transaction():
                if dead := await _deleted_among(con, {app_id for app_id, _ in last}):
                    outcome.of_deleted_apps = sum(1 for mark in marks if mark[1] in dead)
                    marks = [mark for mark in marks if mark[1] not in dead]
                    fresh = {mark: fresh[mark] for mark in marks}
                    last = {key: at for key, at in last.items() if key[0] not in dead}
                new: list[Event] = []
                if marks:
                    await con.execute(_LOCK_MARKS)
                    await _ensure_partitions(con, sorted({day for day, *_ in marks}))
                    rows = await con.fetch(_MARK_EVENTS, *columns(marks, 4))
                    new = [fresh[(row[0], row[1], row[2], row[3])] for row in rows]
                stored: dict[Key, str | None] = {}
                if lookup := unresolved(new):
                    for row in await con.fetch(_EVENT_USERS, *columns(lookup, 2)):
                        stored[(row[0], row[1])] = row[2]
                effects = event_effects(new, stored)
                if effects.members:
                    await con.execute(_ADD_MEMBERS, *columns(sorted(effects.members), 4))
                if effects.sums:
                    sums = [(*key, total) for key, total in sorted(effects.sums.items())]
                    await con.execute(_ADD_SUMS, *columns(sums, 5))
                if effects.first_days:
                    firsts = [(*key, day) for key, day in sorted(effects.first_days.items())]
                    await con.execute(_KEEP_FIRST_DAYS, *columns(firsts, 3))
                if last:
                    await con.execute(
                        _KEEP_LAST_EVENTS, *columns(sorted((*k, at) for k, at in last.items()), 3)
                    )
        outcome.aggregated = len(new)
        outcome.duplicates += len(fresh) - len(new)
        return outcome

    async def expire_event_marks(self, *, before_day: int) -> int:
        """Drop the partitions of days before ``before_day``; → the marks
        they held. They are counted before the parent is locked (ACCESS
        EXCLUSIVE, to drop), so batches wait only for the drop itself."""
        with _boundary("expire event marks"):
            async with self._pool.acquire() as con, con.transaction():
                # One expiry at a time: a second one waits, then finds these gone.
                await con.execute("SELECT pg_advisory_xact_lock($1)", EXPIRE_LOCK)
                old = sorted(name for name, day in (await _partitions(con)).items() if day < before_day)
                if not old:
                    return 0
                # Names from the catalog, matched by _PARTITION_NAME.
                count = " + ".join(f"(SELECT count(*) FROM {name})" for name in old)  # noqa: S608
                dropped: int = await con.fetchval("SELECT " + count)
                await con.execute("LOCK TABLE ONLY event_marks IN ACCESS EXCLUSIVE MODE")
                await con.execute(f"DROP TABLE {', '.join(old)}")
        return dropped

    async def kpi_member_counts(self, app_id: str, kind: str, first_day: int, last_day: int) -> KpiData:
        return await self._read(
            "KPI member counts", sql.numbered(sql.KPI_MEMBER_COUNTS), app_id, kind, first_day, last_day
        )

    async def kpi_members(self, app_id: str, kind: str, first_day: int, last_day: int) -> KpiData:
        return await self._read(
            "KPI members", sql.numbered(sql.KPI_MEMBERS), app_id, kind, first_day, last_day
        )

    async def kpi_monthly_counts(self, app_id: str, kind: str, first_day: int, last_day: int) -> KpiData:
        first = first_day - (kpis.MONTH_DAYS - 1)
        steps = await self._read(
            "KPI monthly counts", _KPI_MONTHLY_STEPS, app_id, kind, first, last_day, kpis.MONTH_DAYS
        )
        return kpis.rolling_counts(steps, first_day, last_day)

    async def kpi_sums(self, app_id: str, kind: str, first_day: int, last_day: int) -> KpiData:
        return await self._read("KPI sums", sql.numbered(sql.KPI_SUMS), app_id, kind, first_day, last_day)

    async def kpi_new_endpoints(self, app_id: str, first_day: int, last_day: int) -> KpiData:
        return await self._read(
            "KPI new endpoints", sql.numbered(sql.KPI_NEW_ENDPOINTS), app_id, first_day, last_day
        )

    async def _read(self, what: str, query: str, *params: str | int) -> KpiData:
        if any(isinstance(param, str) and NUL in param for param in params):
            return []  # nothing with a NUL can have been written
        with _boundary(what):
            rows = await self._pool.fetch(query, *params)
        return [(row[0], row[1], row[2]) for row in rows]

    async def create_job(self, job: Job) -> bool:
        return await self._put_of_app("create job", _CREATE_JOB, job_row(job))

    async def get_job(self, app_id: str, job_id: str) -> Job | None:
        if NUL in app_id or NUL in job_id:
            return None
        with _boundary("get job"):
            row = await self._pool.fetchrow(_GET_JOB, app_id, job_id)
        return None if row is None else job_of(row)

    async def list_jobs(
        self, app_id: str, job_type: JobType, *, segment_id: str | None, before: str | None, limit: int
    ) -> Sequence[Job]:
        if NUL in app_id or NUL in (segment_id or ""):
            return []
        segment = segment_id or ""
        # No ID holds NUL, so "before P + NUL + rest" is "before or at P": cut there.
        before = (before or sql.LAST_JOB_ID).partition(NUL)[0]
        with _boundary("list jobs"):
            rows = await self._pool.fetch(_LIST_JOBS, app_id, job_type, before, segment, segment, limit)
        return [job_of(row) for row in rows]

    async def claim_job(
        self, owner: str, *, now_ms: int, lease_ms: int, max_running: int, max_per_app: int
    ) -> Job | None:
        params = (owner, now_ms + lease_ms, now_ms, now_ms, max_running, now_ms, max_per_app)
        with _boundary("claim job"):
            async with self._pool.acquire() as con, con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", JOBS_LOCK)
                row = await con.fetchrow(_CLAIM_JOB, *params)
        return None if row is None else job_of(row)

    async def save_job(self, job: Job, *, now_ms: int, lease_ms: int) -> bool:
        params = sql.save_job_params(job_row(job), now_ms + lease_ms if lease_ms else 0)
        with _boundary("save job"):
            return _count(await self._pool.execute(_SAVE_JOB, *params)) == 1

    async def renew_job(self, app_id: str, job_id: str, owner: str, *, until_ms: int) -> bool:
        with _boundary("renew job"):
            return _count(await self._pool.execute(_RENEW_JOB, until_ms, app_id, job_id, owner)) == 1

    async def close(self) -> None:
        """Wait up to CLOSE_TIMEOUT_S for borrowed connections, then drop
        them. Idempotent."""
        with _boundary("close"):
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._pool.close()
            except TimeoutError:
                self._pool.terminate()


async def _migrate(con: asyncpg.Connection) -> None:
    """Inside a transaction: the lock is released at its end, after the
    versions are recorded, so a second process waits and then finds nothing
    to do."""
    await con.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
    await con.execute(sql.MIGRATIONS_TABLE)
    current = await con.fetchval(sql.MIGRATED)
    for version, migration in enumerate(MIGRATIONS[current:], start=current + 1):
        await con.execute(migration)
        await con.execute(sql.numbered(sql.RECORD_MIGRATION), version)
    # Functions are code, not data: replaced at every open (under the lock).
    await con.execute(query.POSTGRES_FUNCTIONS)


async def _deleted_among(con: asyncpg.Connection, app_ids: set[str]) -> set[str]:
    """Of ``app_ids``, those deleted; the live ones locked FOR SHARE to the
    end of the transaction (see _LOCK_APPS)."""
    ids = sorted(app_ids)
    await con.execute(_LOCK_APPS, ids)
    return {row[0] for row in await con.fetch(_DELETED_AMONG, ids)}


def _count(status: str) -> int:
    """The row count of a command status ("DELETE 12")."""
    return int(status.rpartition(" ")[2])


def _partition_name(day: int) -> str:
    return "event_marks_" + kpis.iso_day(day).replace("-", "")


async def _partitions(con: asyncpg.Connection) -> dict[str, int]:
    """event_marks' partitions: name → day."""
    found: dict[str, int] = {}
    for row in await con.fetch(_PARTITIONS):
        match = _PARTITION_NAME.fullmatch(row["relname"])
        if match:
            year, month, day = map(int, match.groups())
            found[row["relname"]] = (date(year, month, day) - _EPOCH).days
    return found


async def _ensure_partitions(con: asyncpg.Connection, days: Sequence[int]) -> None:
    """Inside the batch's transaction, holding ROW EXCLUSIVE on event_marks:
    create the partitions of ``days`` that do not exist. Creators take turns
    under PARTITION_LOCK (held to the end of their batch), and each looks
    again once it holds the lock: another may just have made the same day's."""
    missing = set(days) - set((await _partitions(con)).values())
    if not missing:
        return
    await con.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
    missing -= set((await _partitions(con)).values())
    for day in sorted(missing):
        name = _partition_name(day)
        await con.execute(f"CREATE TABLE {name} (LIKE event_marks INCLUDING ALL)")
        await con.execute(
            f"ALTER TABLE event_marks ATTACH PARTITION {name} FOR VALUES FROM ({day}) TO ({day + 1})"
        )


async def _crowded(
    con: asyncpg.Connection, current: dict[Key, EndpointState], joining: dict[UserKey, set[str]]
) -> dict[UserKey, list[EndpointState]]:
    """The live endpoints of each user the batch may take past 15, as
    SqliteStore finds them, under the users' advisory locks (so batches adding
    to one user run the rule one after the other, and the later one counts
    the earlier one's endpoints). Rows are loaded, ``FOR UPDATE``, only for
    the crowded users, which is rare."""
    users = sorted(joining)
    await con.execute(_LOCK_USERS, *columns(users, 2))
    counts = {
        (row["app_id"], row["user_id"]): row["count"]
        for row in await con.fetch(_COUNT_USERS, *columns(users, 2))
    }
    over = [u for u in users if counts.get(u, 0) + len(joining[u]) > endpoints.MAX_ENDPOINTS_PER_USER]
    # A crowded user with no endpoint stored yet still gets its (empty) list:
    # its members come from this batch, and fold must count them.
    crowded: dict[UserKey, list[EndpointState]] = {user: [] for user in over}
    if over:
        for row in await con.fetch(_LOAD_USERS, *columns(over, 2)):
            state = endpoint_state(row)
            crowded[(row["app_id"], row["user_id"])].append(
                current.get((state.app_id, state.endpoint_id), state)
            )
    return crowded


async def _upsert(con: asyncpg.Connection, states: Iterable[EndpointState]) -> None:
    rows = sorted((endpoint_row(s) for s in states), key=lambda row: (row[0], row[1]))
    if rows:
        await con.execute(UPSERT, *columns(rows, 10))


def columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to one list per column, for ``unnest``."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


@contextmanager
def _boundary(what: str) -> Iterator[None]:
    """Turn what the driver raises into StoreError, retriable when the server
    is unreachable or says "not now"."""
    try:
        yield
    except _DRIVER_ERRORS as exc:
        condition = _condition(exc)
        if condition is not None:
            text = CONDITION_TEXT[condition]
            raise StoreError(
                f"{what}: {text} ({type(exc).__name__}: {exc})", retriable=True, condition=condition
            ) from exc
        raise StoreError(f"{what}: {type(exc).__name__}: {exc}", retriable=_retriable(exc)) from exc


def _condition(exc: BaseException) -> StoreCondition | None:
    """A full disk (SQLSTATE 53100) or a read-only server (25006: a standby,
    or ``default_transaction_read_only``), looking down the chain as
    :func:`_retriable` does."""
    if isinstance(exc, asyncpg.DiskFullError):
        return "disk_full"
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return "read_only"
    if isinstance(exc, asyncpg.InterfaceError) and exc.__context__ is not None:
        return _condition(exc.__context__)
    return None


def _retriable(exc: BaseException) -> bool:
    # Losing the connection inside ``async with con.transaction()`` surfaces as
    # an InterfaceError ("the underlying connection is closed") whose context
    # is the real cause, so look down the chain.
    if isinstance(exc, asyncpg.InterfaceError) and exc.__context__ is not None:
        return _retriable(exc.__context__)
    return isinstance(exc, _RETRIABLE) and not isinstance(exc, asyncpg.DatabaseDroppedError)
