"""The store: apps and endpoints behind one small interface.

SQLite (WAL, under the data dir) is the embedded default. Migrations are
numbered SQL applied in order and recorded in ``schema_migrations``, so opening
a store brings its schema up to date.

Endpoint writes go through :meth:`Store.apply_endpoint_batch`: load the
batch's endpoints, fold the records in partition order with
:mod:`ingest.endpoints`, write the result and the 15-endpoints-per-user rule in
one transaction. The fold is the same Python for every backend.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from ingest import endpoints
from ingest.endpoints import EndpointDelete, EndpointState, Version
from ingest.errors import SettingsError, StoreError
from ingest.records import EndpointUpsert

T = TypeVar("T")
Key = tuple[str, str]
EndpointRecord = EndpointUpsert | EndpointDelete


@dataclass(frozen=True, slots=True)
class App:
    """A Pinpoint application (project)."""

    id: str
    name: str
    arn: str
    tags: dict[str, str]
    creation_date: str


@dataclass(slots=True)
class BatchOutcome:
    """What one ``apply_endpoint_batch`` did, for metrics."""

    applied: int = 0
    superseded: int = 0
    deleted: int = 0
    deactivated: int = 0
    endpoints: int = 0
    changed: list[Key] = field(default_factory=list)


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


def fold(
    current: dict[Key, EndpointState], records: Iterable[tuple[EndpointRecord, int]], outcome: BatchOutcome
) -> dict[Key, EndpointState]:
    """Fold records (in partition order) over the loaded states; return the
    states that changed. Pure: shared by every backend and by the tests."""
    changed: dict[Key, EndpointState] = {}
    for record, offset in records:
        key = (record.app_id, record.endpoint_id)
        state = changed.get(key, current.get(key))
        if isinstance(record, EndpointDelete):
            changed[key] = endpoints.apply_delete(state, record, offset)
            outcome.deleted += 1
            continue
        new, result = endpoints.apply(state, record, offset)
        if result == "superseded":
            outcome.superseded += 1
        else:
            outcome.applied += 1
            changed[key] = new
    outcome.endpoints = len(changed)
    outcome.changed = list(changed)
    return changed


def over_user_limit(states: Sequence[EndpointState]) -> list[EndpointState]:
    """Of one user's live endpoints, those beyond the 15 newest (by version)."""
    newest_first = sorted(states, key=lambda s: s.version, reverse=True)
    return newest_first[endpoints.MAX_ENDPOINTS_PER_USER :]


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

_SELECT_ENDPOINTS = (
    "SELECT app_id, endpoint_id, user_id, deleted, effective_ms, kafka_offset, "
    "creation_date, effective_date, request_id, document FROM endpoints"
)
_PUT_ENDPOINT = (
    "INSERT OR REPLACE INTO endpoints (app_id, endpoint_id, user_id, deleted, effective_ms, kafka_offset, "
    "creation_date, effective_date, request_id, document) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# SQLite's default limit on bound variables is 32766; two per key.
_KEYS_PER_QUERY = 500


class SqliteStore:
    """SQLite in WAL mode. One connection, used only from one thread, so
    every call is one hop to that thread and a batch is one transaction."""

    def __init__(self, db: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._db = db
        self._executor = executor

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
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
            row = self._db.execute(
                _SELECT_ENDPOINTS + " WHERE app_id = ? AND endpoint_id = ? AND deleted = 0",
                (app_id, endpoint_id),
            ).fetchone()
            return None if row is None else endpoint_state(row)

        return await self._run("get endpoint", get)

    async def user_endpoints(self, app_id: str, user_id: str) -> Sequence[EndpointState]:
        def get() -> list[EndpointState]:
            rows = self._db.execute(
                _SELECT_ENDPOINTS + " WHERE app_id = ? AND user_id = ? AND deleted = 0 ORDER BY endpoint_id",
                (app_id, user_id),
            ).fetchall()
            return [endpoint_state(row) for row in rows]

        return await self._run("user endpoints", get)

    async def apply_endpoint_batch(self, records: Sequence[tuple[EndpointRecord, int]]) -> BatchOutcome:
        return await self._run("apply endpoint batch", lambda: self._apply(records))

    def _apply(self, records: Sequence[tuple[EndpointRecord, int]]) -> BatchOutcome:
        outcome = BatchOutcome()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            keys = list({(r.app_id, r.endpoint_id) for r, _ in records})
            current: dict[Key, EndpointState] = {}
            for start in range(0, len(keys), _KEYS_PER_QUERY):
                chunk = keys[start : start + _KEYS_PER_QUERY]
                values = ", ".join("(?, ?)" for _ in chunk)
                rows = db.execute(
                    # Only placeholders are interpolated; the keys are bound.
                    _SELECT_ENDPOINTS + f" WHERE (app_id, endpoint_id) IN (VALUES {values})",
                    [part for key in chunk for part in key],
                ).fetchall()
                for row in rows:
                    state = endpoint_state(row)
                    current[(state.app_id, state.endpoint_id)] = state
            changed = fold(current, records, outcome)
            db.executemany(_PUT_ENDPOINT, [endpoint_row(s) for s in changed.values()])
            users = sorted({(s.app_id, s.user_id) for s in changed.values() if s.user_id and not s.deleted})
            for start in range(0, len(users), _KEYS_PER_QUERY):
                chunk = users[start : start + _KEYS_PER_QUERY]
                values = ", ".join("(?, ?)" for _ in chunk)
                # One counting query per chunk of users; rows are loaded only
                # for users over the limit, which is rare.
                crowded = db.execute(
                    "SELECT app_id, user_id FROM endpoints WHERE deleted = 0 AND (app_id, user_id) IN "  # noqa: S608
                    f"(VALUES {values}) GROUP BY app_id, user_id HAVING count(*) > ?",
                    [*(part for key in chunk for part in key), endpoints.MAX_ENDPOINTS_PER_USER],
                ).fetchall()
                for app_id, user_id in crowded:
                    rows = db.execute(
                        _SELECT_ENDPOINTS + " WHERE app_id = ? AND user_id = ? AND deleted = 0",
                        (app_id, user_id),
                    ).fetchall()
                    evicted = [
                        endpoints.deactivated(s) for s in over_user_limit([endpoint_state(r) for r in rows])
                    ]
                    db.executemany(_PUT_ENDPOINT, [endpoint_row(s) for s in evicted])
                    outcome.deactivated += len(evicted)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return outcome

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
    return EndpointState(
        app_id=app_id,
        endpoint_id=endpoint_id,
        version=Version(effective_ms, offset),
        deleted=bool(deleted),
        creation_date=created,
        effective_date=effective,
        request_id=request_id,
        document=orjson.loads(document),
    )


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
