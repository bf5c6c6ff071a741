"""The store: apps and endpoints behind one small interface.

SQLite (WAL, under the data dir) is the embedded default. Migrations are
numbered SQL applied in order and recorded in ``schema_migrations``, so opening
a store brings its schema up to date.

Endpoint writes go through :meth:`Store.apply_endpoint_batch`: in one
transaction, load the batch's endpoints (and, rarely, every endpoint of a user
the batch may take past 15), fold the records in partition order with
:func:`ingest.endpoints.fold`, write what changed. The fold is the same Python
for every backend.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import orjson

from ingest import endpoints
from ingest.endpoints import BatchOutcome, EndpointRecord, EndpointState, Key, UserKey, Version
from ingest.errors import SettingsError, StoreError

T = TypeVar("T")
_new = tuple.__new__


@dataclass(frozen=True, slots=True)
class App:
    """A Pinpoint application (project)."""

    id: str
    name: str
    arn: str
    tags: dict[str, str]
    creation_date: str


class Store(Protocol):
    """What the edge and the workers need from the store. Every method raises
    StoreError (``retriable`` when the store is unavailable) and nothing else."""

    async def create_app(self, app: App) -> None: ...
    async def get_app(self, app_id: str) -> App | None: ...
    async def list_apps(self, *, after: str | None, limit: int) -> Sequence[App]: ...
    async def delete_app(self, app_id: str) -> App | None: ...
    async def get_endpoint(self, app_id: str, endpoint_id: str) -> EndpointState | None: ...
    async def user_endpoints(self, app_id: str, user_id: str) -> Sequence[EndpointState]: ...
    async def apply_endpoint_batch(self, records: Sequence[tuple[EndpointRecord, int]]) -> BatchOutcome: ...
    async def close(self) -> None: ...


MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE apps (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        arn TEXT NOT NULL,
        tags TEXT NOT NULL,
        creation_date TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE endpoints (
        app_id TEXT NOT NULL,
        endpoint_id TEXT NOT NULL,
        user_id TEXT,
        deleted INTEGER NOT NULL,
        effective_ms INTEGER NOT NULL,
        kafka_offset INTEGER NOT NULL,
        creation_date TEXT NOT NULL,
        effective_date TEXT NOT NULL,
        request_id TEXT NOT NULL,
        document TEXT NOT NULL,
        PRIMARY KEY (app_id, endpoint_id)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX endpoints_by_user ON endpoints (app_id, user_id) WHERE user_id IS NOT NULL",
)

_SELECT = (
    "SELECT app_id, endpoint_id, user_id, deleted, effective_ms, kafka_offset, "
    "creation_date, effective_date, request_id, document FROM endpoints "
)
# Every endpoint query names its index. SQLite 3.40 answers a row-value
# ``(app_id, endpoint_id) IN (VALUES …)`` with a full scan, and without
# ANALYZE statistics it reads a user's endpoints by scanning the whole app in
# primary-key order (to skip a sort) rather than through the user index: both
# linear in the table. ``test_every_endpoint_query_searches_an_index`` holds
# each query below to an index search.
GET_ENDPOINT = _SELECT + "WHERE app_id = ? AND endpoint_id = ? AND deleted = 0"
USER_ENDPOINTS = (
    _SELECT
    + "INDEXED BY endpoints_by_user WHERE app_id = ? AND user_id = ? AND deleted = 0 ORDER BY endpoint_id"
)
# A deleted endpoint has no user_id, so the user index holds live ones only.
USER_MEMBERS = _SELECT + "INDEXED BY endpoints_by_user WHERE app_id = ? AND user_id = ?"
# "{}" takes one "?" per ID: one app's IDs at a time.
LOAD_ENDPOINTS = _SELECT + "WHERE app_id = ? AND endpoint_id IN ({})"
COUNT_USERS = (
    "SELECT app_id, user_id, count(*) FROM endpoints INDEXED BY endpoints_by_user "
    "WHERE app_id = ? AND user_id IN ({}) GROUP BY app_id, user_id"
)
# An upsert rather than INSERT OR REPLACE, which deletes and re-inserts the
# row and its index entries: about 1.3 times the rows/s here.
PUT_ENDPOINT = (
    "INSERT INTO endpoints (app_id, endpoint_id, user_id, deleted, effective_ms, kafka_offset, "
    "creation_date, effective_date, request_id, document) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (app_id, endpoint_id) DO UPDATE SET user_id = excluded.user_id, "
    "deleted = excluded.deleted, effective_ms = excluded.effective_ms, "
    "kafka_offset = excluded.kafka_offset, creation_date = excluded.creation_date, "
    "effective_date = excluded.effective_date, request_id = excluded.request_id, "
    "document = excluded.document"
)
# SQLite's default limit on bound variables is 32766 (3.32+); one per ID.
_IDS_PER_QUERY = 1000


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
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            _migrate(db)
            return db

        try:
            db = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except sqlite3.Error as exc:
            executor.shutdown()
            raise StoreError(f"cannot open SQLite store at {path}: {exc}", retriable=False) from exc
        return cls(db, executor)

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise StoreError(f"{what}: {exc}", retriable=isinstance(exc, sqlite3.OperationalError)) from exc

    async def create_app(self, app: App) -> None:
        row = (app.id, app.name, app.arn, orjson.dumps(app.tags).decode(), app.creation_date)
        await self._run(
            "create app", lambda: self._db.execute("INSERT INTO apps VALUES (?, ?, ?, ?, ?)", row)
        )

    async def get_app(self, app_id: str) -> App | None:
        def get() -> App | None:
            row = self._db.execute("SELECT * FROM apps WHERE id = ?", (app_id,)).fetchone()
            return None if row is None else _app(row)

        return await self._run("get app", get)

    async def list_apps(self, *, after: str | None, limit: int) -> Sequence[App]:
        def page() -> list[App]:
            rows = self._db.execute(
                "SELECT * FROM apps WHERE id > ? ORDER BY id LIMIT ?", (after or "", limit)
            ).fetchall()
            return [_app(row) for row in rows]

        return await self._run("list apps", page)

    async def delete_app(self, app_id: str) -> App | None:
        def delete() -> App | None:
            row = self._db.execute("DELETE FROM apps WHERE id = ? RETURNING *", (app_id,)).fetchone()
            return None if row is None else _app(row)

        return await self._run("delete app", delete)

    async def get_endpoint(self, app_id: str, endpoint_id: str) -> EndpointState | None:
        def get() -> EndpointState | None:
            row = self._db.execute(GET_ENDPOINT, (app_id, endpoint_id)).fetchone()
            return None if row is None else endpoint_state(row)

        return await self._run("get endpoint", get)

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
            current: dict[Key, EndpointState] = {}
            for values, marks in by_app({(r.app_id, r.endpoint_id) for r, _ in records}):
                for row in db.execute(LOAD_ENDPOINTS.format(marks), values):
                    state = endpoint_state(row)
                    current[(state.app_id, state.endpoint_id)] = state
            crowded = self._crowded(current, endpoints.joining(current, records))
            changed = endpoints.fold(current, records, outcome, crowded)
            db.executemany(PUT_ENDPOINT, [endpoint_row(s) for s in changed.values()])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
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

    async def close(self) -> None:
        await self._run("close", self._db.close)
        self._executor.shutdown()


def _migrate(db: sqlite3.Connection) -> None:
    """All pending migrations in one write transaction: a second process
    opening the same fresh store waits (busy_timeout) instead of racing."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
        (current,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
        for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
            db.execute(sql)
            db.execute("INSERT INTO schema_migrations(version) VALUES (?)", (version,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _app(row: Sequence[Any]) -> App:
    app_id, name, arn, tags, created = row
    return App(id=app_id, name=name, arn=arn, tags=orjson.loads(tags), creation_date=created)


def endpoint_row(state: EndpointState) -> tuple[Any, ...]:
    """An endpoint as the column values every backend stores, in table order."""
    return (
        state.app_id,
        state.endpoint_id,
        None if state.deleted else state.user_id,
        state.deleted,
        state.version.effective_ms,
        state.version.offset,
        state.creation_date,
        state.effective_date,
        state.request_id,
        orjson.dumps(state.document).decode(),
    )


def endpoint_state(row: Sequence[Any]) -> EndpointState:
    """The inverse of :func:`endpoint_row` (any backend's row, in table order)."""
    app_id, endpoint_id, _user, deleted, effective_ms, offset, created, effective, request_id, document = row
    # Built as tuples: this runs for every row a batch loads.
    state: EndpointState = _new(
        EndpointState,
        (
            app_id,
            endpoint_id,
            _new(Version, (effective_ms, offset)),
            bool(deleted),
            created,
            effective,
            request_id,
            orjson.loads(document),
        ),
    )
    return state


async def open_store(store_url: str | None, *, data_dir: Path) -> Store:
    """``None`` or ``sqlite:///path`` → SQLite; ``postgresql://…`` or
    ``postgres://…`` (an asyncpg URL) → PostgreSQL. Other schemes are refused
    by name. Raises StoreError when the store cannot be opened (retriable when
    it is unreachable)."""
    if store_url is None:
        return await SqliteStore.open(data_dir / "ingest.sqlite3")
    if store_url.startswith("sqlite:///"):
        return await SqliteStore.open(Path(store_url.removeprefix("sqlite://")))
    if store_url.startswith(("postgresql://", "postgres://")):
        # Imported here so a SQLite deployment never loads asyncpg.
        from ingest.postgres import PostgresStore

        return await PostgresStore.open(store_url)
    raise SettingsError(
        f"INGEST_STORE_URL={store_url.split(':', 1)[0]}:…: the store is SQLite "
        "(sqlite:///path, or unset for the data dir) or PostgreSQL (postgresql://…)"
    )
