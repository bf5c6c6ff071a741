"""Which store backend a URL names, opened."""

from __future__ import annotations

from pathlib import Path

from ingest.errors import SettingsError
from ingest.store.base import Store
from ingest.store.sqlite import SqliteStore


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
        from ingest.store.postgres import PostgresStore

        return await PostgresStore.open(store_url)
    raise SettingsError(
        f"INGEST_STORE_URL={store_url.split(':', 1)[0]}:…: the store is SQLite "
        "(sqlite:///path, or unset for the data dir) or PostgreSQL (postgresql://…)"
    )
