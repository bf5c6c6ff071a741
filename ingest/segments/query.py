"""A segment definition as SQL: stub until the compiler lands."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from ingest.store import sql
from ingest.store.base import Segment

Dialect = Literal["sqlite", "postgres"]
SourceKey = tuple[str, int | None]


@dataclass(frozen=True, slots=True)
class Compiled:
    where: str
    params: tuple[Any, ...]


async def load_sources(
    get: Callable[[str, str, int | None], Awaitable[Segment | None]], segment: Segment
) -> dict[SourceKey, Segment]:
    return {}


def compile_segment(
    segment: Segment, sources: dict[SourceKey, Segment], dialect: Dialect, now_ms: int
) -> Compiled:
    return Compiled("", ())


async def page(
    get: Callable[[str, str, int | None], Awaitable[Segment | None]],
    dialect: Dialect,
    app_id: str,
    segment_id: str | None,
    version: int | None,
    page: tuple[str, int, int],
) -> tuple[str, tuple[Any, ...]] | None:
    """The statement (``?`` placeholders) and parameters of one page of
    ``Store.segment_endpoints``; ``page`` is (after, limit, now ms). None:
    no such segment (version)."""
    after, limit, now_ms = page
    if segment_id is None:
        return sql.APP_ENDPOINTS_PAGE.format(where=""), (app_id, after, limit)
    segment = await get(app_id, segment_id, version)
    if segment is None:
        return None
    compiled = compile_segment(segment, await load_sources(get, segment), dialect, now_ms)
    if segment.segment_type == "IMPORT":
        statement = sql.MEMBER_ENDPOINTS_PAGE.format(where=compiled.where)
        return statement, (app_id, segment_id, after, segment.version, *compiled.params, limit)
    return sql.APP_ENDPOINTS_PAGE.format(where=compiled.where), (app_id, after, *compiled.params, limit)
