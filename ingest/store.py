"""The store: apps (projects) now; endpoints and KPIs join it later.

One small interface, :class:`Store`; SQLite (WAL, under the data dir) is the
embedded default. Migrations are numbered SQL applied in order and recorded in
``schema_migrations``, so opening a store brings its schema up to date.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiosqlite
import orjson

from ingest.errors import SettingsError, StoreError


@dataclass(frozen=True, slots=True)
class App:
    """A Pinpoint application (project)."""

    id: str
    name: str
    arn: str
    tags: dict[str, str]
    creation_date: str


class Store(Protocol):
    """What the edge needs from the store. Every method raises StoreError
    (``retriable`` when the store is unavailable) and nothing else."""

    async def create_app(self, app: App) -> None: ...
    async def get_app(self, app_id: str) -> App | None: ...
    async def list_apps(self, *, after: str | None, limit: int) -> Sequence[App]: ...
    async def delete_app(self, app_id: str) -> App | None: ...
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
)


class SqliteStore:
    """SQLite in WAL mode through one aiosqlite connection (one writer thread)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(path)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=5000")
            store = cls(db)
            await store._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store at {path}: {exc}", retriable=False) from exc
        return store

    async def _migrate(self) -> None:
        await self._db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
        async with self._db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") as cur:
            row = await cur.fetchone()
        current = 0 if row is None else int(row[0])
        for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
            await self._db.execute(sql)
            await self._db.execute("INSERT INTO schema_migrations(version) VALUES (?)", (version,))
        await self._db.commit()

    async def create_app(self, app: App) -> None:
        try:
            await self._db.execute(
                "INSERT INTO apps(id, name, arn, tags, creation_date) VALUES (?, ?, ?, ?, ?)",
                (app.id, app.name, app.arn, orjson.dumps(app.tags).decode(), app.creation_date),
            )
            await self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"create app: {exc}", retriable=True) from exc

    async def get_app(self, app_id: str) -> App | None:
        try:
            async with self._db.execute(
                "SELECT id, name, arn, tags, creation_date FROM apps WHERE id = ?", (app_id,)
            ) as cur:
                row = await cur.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"get app: {exc}", retriable=True) from exc
        return None if row is None else _app(row)

    async def list_apps(self, *, after: str | None, limit: int) -> Sequence[App]:
        try:
            async with self._db.execute(
                "SELECT id, name, arn, tags, creation_date FROM apps WHERE id > ? ORDER BY id LIMIT ?",
                (after or "", limit),
            ) as cur:
                rows = await cur.fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"list apps: {exc}", retriable=True) from exc
        return [_app(row) for row in rows]

    async def delete_app(self, app_id: str) -> App | None:
        found = await self.get_app(app_id)
        if found is None:
            return None
        try:
            await self._db.execute("DELETE FROM apps WHERE id = ?", (app_id,))
            await self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"delete app: {exc}", retriable=True) from exc
        return found

    async def close(self) -> None:
        await self._db.close()


def _app(row: sqlite3.Row | tuple[object, ...]) -> App:
    app_id, name, arn, tags, created = row
    return App(
        id=str(app_id),
        name=str(name),
        arn=str(arn),
        tags=orjson.loads(str(tags)),
        creation_date=str(created),
    )


async def open_store(store_url: str | None, *, data_dir: Path) -> Store:
    """``None`` or ``sqlite:///path`` → SQLite. Other schemes are refused by name."""
    if store_url is None:
        return await SqliteStore.open(data_dir / "ingest.sqlite3")
    if store_url.startswith("sqlite:///"):
        return await SqliteStore.open(Path(store_url.removeprefix("sqlite://")))
    raise SettingsError(
        f"INGEST_STORE_URL={store_url.split(':', 1)[0]}:…: this version stores in SQLite only "
        "(sqlite:///path, or unset for the data dir)"
    )
