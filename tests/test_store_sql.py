"""The SQL the store backends share (ingest.store.sql), rendered for each:
the same statements, differing only in placeholder style and in the rows of a
batch write; the released migrations unchanged; neither backend importing
the other. (What the statements do is tested on both databases in
test_store.py and test_kpi_store.py.)"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path
from types import ModuleType

import pytest

from ingest.store import postgres, sql, sqlite


def statements(module: ModuleType) -> dict[str, str]:
    """A module's string constants (its SQL, mostly), by name."""
    return {
        name: value
        for name, value in vars(module).items()
        if name.lstrip("_").isupper() and isinstance(value, str)
    }


# The shared statements that run as they are (no hole to fill).
SHARED = sorted(name for name, statement in statements(sql).items() if "{" not in statement)
# Each batch write's "{rows}" as each backend renders it.
BATCH_WRITES = [
    (sql.PUT_ENDPOINTS, sqlite.PUT_ENDPOINT, postgres.UPSERT),
    (sql.ADD_MEMBERS, sqlite.ADD_MEMBER, postgres._ADD_MEMBERS),
    (sql.ADD_SUMS, sqlite.ADD_SUM, postgres._ADD_SUMS),
    (sql.KEEP_FIRST_DAYS, sqlite.KEEP_FIRST_DAY, postgres._KEEP_FIRST_DAYS),
    (sql.MARK_EVENTS, sql.MARK_EVENTS.format(rows="VALUES (?, ?, ?, ?)"), postgres._MARK_EVENTS),
]
# How many migrations have been released, and what they say on each backend:
# a store records how many it has applied, so these never change (a new
# migration is appended, and this count moves).
RELEASED = 10
RELEASED_SHA256 = {
    "sqlite": "4bedacaafe3845e82551b4198814734dc498514d51aee0415590c26a7e9a0c7d",
    "postgres": "f78cdab0d5350bcb45154d1452e19a662450baf4c09369a36e2fa0f65bd06724",
}
BACKENDS: dict[str, ModuleType] = {"sqlite": sqlite, "postgres": postgres}


def test_numbered_numbers_the_placeholders_in_order() -> None:
    assert sql.numbered("a = ? AND b IN (?, ?)") == "a = $1 AND b IN ($2, $3)"
    assert sql.numbered("SELECT 1") == "SELECT 1"


@pytest.mark.parametrize("name", SHARED)
def test_a_shared_statement_differs_between_backends_only_in_placeholders(name: str) -> None:
    statement: str = getattr(sql, name)
    rendered = sql.numbered(statement)
    assert "$" not in statement
    assert "?" not in rendered
    numbers = [int(n) for n in re.findall(r"\$(\d+)", rendered)]
    assert numbers == list(range(1, statement.count("?") + 1))
    assert re.sub(r"\$\d+", "?", rendered) == statement


@pytest.mark.parametrize(("template", "on_sqlite", "on_postgres"), BATCH_WRITES)
def test_a_batch_write_differs_between_backends_only_in_its_rows(
    template: str, on_sqlite: str, on_postgres: str
) -> None:
    before, after = template.split("{rows}")
    for rendered in (on_sqlite, on_postgres):
        assert rendered.startswith(before)
        assert rendered.endswith(after)
    assert on_sqlite[len(before) : len(on_sqlite) - len(after)].startswith("VALUES (?")
    assert on_postgres[len(before) : len(on_postgres) - len(after)].startswith("SELECT * FROM unnest($1::")


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_statement_is_in_its_backends_placeholder_style(backend: str) -> None:
    found = statements(BACKENDS[backend])
    foreign = "$" if backend == "sqlite" else "?"
    assert found
    for name, statement in found.items():
        assert foreign not in statement, name
        assert not re.search(r"\{[a-z_]+\}", statement), name  # a hole left unfilled


@pytest.mark.parametrize("backend", BACKENDS)
def test_released_migrations_are_unchanged(backend: str) -> None:
    migrations: tuple[str, ...] = BACKENDS[backend].MIGRATIONS
    assert len(migrations) >= RELEASED
    digest = hashlib.sha256("\0".join(migrations[:RELEASED]).encode()).hexdigest()
    assert digest == RELEASED_SHA256[backend]


def test_both_backends_migrate_the_same_tables_in_one_order() -> None:
    def created(migrations: tuple[str, ...]) -> list[str]:
        return [re.findall(r"CREATE (?:TABLE|INDEX) (\w+)", migration)[0] for migration in migrations]

    assert created(sqlite.MIGRATIONS) == created(postgres.MIGRATIONS)
    assert len(created(sqlite.MIGRATIONS)) == len(sqlite.MIGRATIONS)


@pytest.mark.parametrize(("backend", "other"), [("sqlite", "postgres"), ("postgres", "sqlite")])
def test_neither_backend_imports_the_other(backend: str, other: str) -> None:
    source = Path(BACKENDS[backend].__file__ or "").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    assert f"ingest.store.{other}" not in imported


# Migrations released after the first ten, each pinned by the digest of all
# migrations up to it (11: deleted_apps, the tombstones DeleteApp leaves).
RELEASED_LATER = {
    11: {
        "sqlite": "7fe54eeceebcf9f3fb3006853dad82530d13fdf664dcab8e2cd73c902432b666",
        "postgres": "eaa762cdae417ff41ec135b4cbc93f58fdee74e60bba7c981b78141a0700053a",
    },
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("count", RELEASED_LATER)
def test_later_released_migrations_are_unchanged(backend: str, count: int) -> None:
    migrations: tuple[str, ...] = BACKENDS[backend].MIGRATIONS
    assert len(migrations) >= count
    digest = hashlib.sha256("\0".join(migrations[:count]).encode()).hexdigest()
    assert digest == RELEASED_LATER[count][backend]
