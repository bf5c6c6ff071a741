"""A segment definition as SQL: the condition a page of
``Store.segment_endpoints`` adds to its walk of the endpoints, on SQLite or
PostgreSQL. Each criterion is the SQL twin of its test in
:mod:`ingest.segments.evaluate` (the property test holds the two equal).

Every value a client sent is a bound parameter: the SQL text holds only
constants of this module, so a definition can change which statement runs
(its shape) but never what a statement says. Every condition is two-valued
(a missing member makes it false, never NULL), so NOT, AND and OR compose
as they do in Python.

The condition is evaluated row by row along the walk (a page is one range
walk of the primary key from the last endpoint ID of the page before):
Recency is a primary-key search of ``endpoint_activity``, an IMPORT source
one of ``segment_members``, each a scalar subquery, which neither backend
turns into a join (PostgreSQL makes a top-level EXISTS a semi-join, whose
inner side, unbounded by ``after``, would be read from the app's first row
on every page), and a PostgreSQL document is parsed once a row
(a ``jsonb`` of its text, in which an escaped NUL, which ``jsonb`` cannot
hold, reads as U+FFFD).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ingest.errors import BadRequest, StoreError
from ingest.segments import definitions, evaluate, values
from ingest.segments.values import (
    DAY_US,
    MAX_SOURCE_DEPTH,
    AttributeDimension,
    Combine,
    Definition,
    Dimensions,
    Group,
    SourceSegment,
)
from ingest.store import segment_sources as sources
from ingest.store import segment_sql
from ingest.store.base import Segment
from ingest.store.segment_sources import Getter, SourceKey

Dialect = Literal["sqlite", "postgres"]
# Conditions in one compiled statement, its sources' included (each time a
# source is named); with the definition bounds this caps the SQL at a few
# hundred kB and a few thousand parameters.
MAX_COMPILED_CONDITIONS = 1000

_TRUE, _FALSE = "1 = 1", "1 = 0"
# The functions PostgreSQL evaluates instants with: an ISO_INSTANT (as
# values.instant_us reads it) → epoch microseconds, NULL for any other
# text or a date that does not exist. Replaced at every open, so the body
# follows the code.
POSTGRES_FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION ingest_instant_us(value text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF value !~ ('^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])'
                 'T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?Z$') THEN
        RETURN NULL;
    END IF;
    RETURN (extract(epoch FROM value::timestamptz) * 1000000)::bigint;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$
"""


def _instant_us(value: Any) -> int | None:
    return values.instant_us(value) if isinstance(value, str) else None


def register(db: sqlite3.Connection) -> None:
    """What SQLite needs for the conditions: the instant reader (Python's,
    the very one evaluation uses) and, where this SQLite lacks its math
    functions, libm's sine and cosine (as Python calls them). Deterministic."""
    db.create_function("ingest_instant_us", 1, _instant_us, deterministic=True)
    try:
        db.execute("SELECT sin(0.5), cos(0.5)").fetchone()
    except sqlite3.OperationalError:
        db.create_function("sin", 1, math.sin, deterministic=True)
        db.create_function("cos", 1, math.cos, deterministic=True)


@dataclass(frozen=True, slots=True)
class Compiled:
    join: str
    """After ``FROM endpoints AS e``: PostgreSQL's parsed document, or empty."""
    where: str
    """`` AND (…)``, or empty for every endpoint."""
    params: tuple[Any, ...]


@dataclass(slots=True)
class _Builder:
    """One statement's condition being written: its parameters in order."""

    dialect: Dialect
    now_ms: int
    sources: dict[SourceKey, Segment | None]
    params: list[Any] = field(default_factory=list)
    conditions: int = 0
    uses_document: bool = False

    def bind(self, value: Any, pg_type: str) -> str:
        self.params.append(value)
        return "?" if self.dialect == "sqlite" else f"?::{pg_type}"

    def count(self) -> None:
        self.conditions += 1
        if self.conditions > MAX_COMPILED_CONDITIONS:
            raise BadRequest(
                f"The segment and its source segments hold over {MAX_COMPILED_CONDITIONS} criteria"
            )

    # The endpoint's members.

    def member(self, path: tuple[str, ...]) -> str:
        """A string member of the document (NULL when absent)."""
        self.uses_document = True
        if self.dialect == "sqlite":
            return "json_extract(e.document, '$." + ".".join(path) + "')"
        return "(j.d #>> '{" + ",".join(path) + "}')"

    def number(self, path: tuple[str, ...]) -> str:
        """A numeric member of the document (NULL when absent or not a number)."""
        self.uses_document = True
        if self.dialect == "sqlite":
            dotted = "'$." + ".".join(path) + "'"
            return (
                f"(CASE WHEN json_type(e.document, {dotted}) IN ('integer', 'real') "
                f"THEN json_extract(e.document, {dotted}) END)"
            )
        braced = "'{" + ",".join(path) + "}'"
        return f"(CASE WHEN jsonb_typeof(j.d #> {braced}) = 'number' THEN (j.d #> {braced})::float8 END)"

    def in_values(self, expr: str, values: tuple[str, ...]) -> str:
        if self.dialect == "sqlite":
            values_json = self.bind(orjson.dumps(values).decode(), "text")
            return f"COALESCE({expr} IN (SELECT value FROM json_each({values_json})), 1 = 0)"  # noqa: S608
        return f"COALESCE({expr} = ANY({self.bind(list(values), 'text[]')}), 1 = 0)"

    def any_value(self, map_path: tuple[str, ...], name: str, condition: Callable[[str], str]) -> str:
        """Some value of the endpoint's list ``map_path.name`` meets ``condition``."""
        self.uses_document = True
        if self.dialect == "sqlite":
            key = self.bind(name, "text")
            return (
                "EXISTS (SELECT 1 FROM json_each(e.document, '$."  # noqa: S608
                + ".".join(map_path)
                + f"') AS attr, json_each(attr.value) AS item WHERE attr.key = {key} "
                f"AND attr.type = 'array' AND {condition('item.value')})"
            )
        lookup = "j.d -> " + " -> ".join(f"'{part}'" for part in map_path) + " -> ?::text"
        self.params += [name, name]  # the lookup is written twice
        return (
            f"EXISTS (SELECT 1 FROM jsonb_array_elements_text(CASE WHEN jsonb_typeof({lookup}) = 'array' "  # noqa: S608
            f"THEN {lookup} END) AS item(value) WHERE {condition('item.value')})"
        )

    def contains(self, expr: str, part: str) -> str:
        if self.dialect == "sqlite":
            return f"instr({expr}, {self.bind(part, 'text')}) > 0"
        return f"strpos({expr}, {self.bind(part, 'text')}) > 0"


def _combine(kind: Combine, parts: list[str]) -> str:
    if not parts:
        return _TRUE
    if kind == "ALL":
        return "(" + " AND ".join(parts) + ")"
    found = "(" + " OR ".join(parts) + ")"
    return found if kind == "ANY" else f"(NOT {found})"


def _attribute(b: _Builder, map_path: tuple[str, ...], name: str, d: AttributeDimension) -> str:
    b.count()
    kind = d.type
    if kind in ("INCLUSIVE", "EXCLUSIVE"):
        found = b.any_value(map_path, name, lambda v: b.in_values(v, d.values))
        return found if kind == "INCLUSIVE" else f"(NOT {found})"
    if kind == "CONTAINS":
        if not d.values:
            return _FALSE
        return b.any_value(
            map_path, name, lambda v: "(" + " OR ".join(b.contains(v, p) for p in d.values) + ")"
        )

    def instant(value: str) -> str:
        at = f"ingest_instant_us({value})"
        first = d.instants[0]
        if kind == "BEFORE":
            return f"{at} < {b.bind(first, 'bigint')}"
        if kind == "AFTER":
            return f"{at} > {b.bind(first, 'bigint')}"
        if kind == "ON":
            return f"({at} >= {b.bind(first, 'bigint')} AND {at} < {b.bind(first + DAY_US, 'bigint')})"
        between = f"{at} BETWEEN {b.bind(first, 'bigint')} AND {b.bind(d.instants[1], 'bigint')}"
        return between if kind == "BETWEEN" else f"({at} IS NOT NULL AND NOT ({between}))"

    return b.any_value(map_path, name, instant)


_OPERATORS = {
    "GREATER_THAN": ">",
    "LESS_THAN": "<",
    "GREATER_THAN_OR_EQUAL": ">=",
    "LESS_THAN_OR_EQUAL": "<=",
    "EQUAL": "=",
}


def _dimensions(b: _Builder, dims: Dimensions) -> str:
    parts: list[str] = []
    for path, d in dims.sets:
        b.count()
        found = _FALSE if path is None else b.in_values(b.member(path), d.values)
        parts.append(found if d.type == "INCLUSIVE" else f"(NOT {found})")
    if dims.gps is not None:
        b.count()
        terms = evaluate.gps_terms(dims.gps)
        latitude, longitude = b.number(("Location", "Latitude")), b.number(("Location", "Longitude"))

        # evaluate.within, term by term. Each call binds its own parameters,
        # and the f-strings below call them in the order they are written.
        def x() -> str:
            return f"({latitude} * {b.bind(evaluate.RADIANS, 'float8')})"

        def s1() -> str:
            return f"sin(({x()} - {b.bind(terms.latitude_rad, 'float8')}) / 2)"

        def s2() -> str:
            radians = b.bind(evaluate.RADIANS, "float8")
            return f"sin(({longitude} * {radians} - {b.bind(terms.longitude_rad, 'float8')}) / 2)"

        haversine = f"{s1()} * {s1()} + cos({x()}) * {b.bind(terms.cos_latitude, 'float8')} * {s2()} * {s2()}"
        parts.append(f"COALESCE({haversine} <= {b.bind(terms.bound, 'float8')}, 1 = 0)")
    if dims.recency is not None:
        b.count()
        active = (
            "COALESCE((SELECT act.last_event_ms FROM endpoint_activity AS act "  # noqa: S608
            "WHERE act.app_id = e.app_id AND act.endpoint_id = e.endpoint_id) >= "
            f"{b.bind(b.now_ms - dims.recency.duration_ms, 'bigint')}, 1 = 0)"
        )
        parts.append(active if dims.recency.active else f"(NOT {active})")
    for name, a in dims.attributes:
        parts.append(_attribute(b, ("Attributes",), name, a))
    for name, a in dims.user_attributes:
        parts.append(_attribute(b, ("User", "UserAttributes"), name, a))
    for name, m in dims.metrics:
        b.count()
        b.uses_document = True
        if b.dialect == "sqlite":
            value = (
                f"(SELECT metric.value FROM json_each(e.document, '$.Metrics') AS metric "  # noqa: S608
                f"WHERE metric.key = {b.bind(name, 'text')} AND metric.type IN ('integer', 'real'))"
            )
        else:
            lookup = f"(j.d -> 'Metrics' -> {b.bind(name, 'text')})"
            value = f"(CASE WHEN jsonb_typeof({lookup}) = 'number' THEN {lookup}::float8 END)"
            b.params.append(name)  # the lookup's key, bound twice
        parts.append(f"COALESCE({value} {_OPERATORS[m.operator]} {b.bind(m.value, 'float8')}, 1 = 0)")
    return _combine("ALL", parts)


def _source(b: _Builder, source: SourceSegment, depth: int) -> str:
    b.count()
    segment = b.sources.get((source.id, source.version))
    if segment is None:
        return _FALSE
    if segment.segment_type == "IMPORT":
        return (
            "COALESCE((SELECT member.since_version FROM segment_members AS member "  # noqa: S608
            f"WHERE member.app_id = e.app_id AND member.segment_id = {b.bind(segment.id, 'text')} "
            f"AND member.endpoint_id = e.endpoint_id) <= {b.bind(segment.version, 'integer')}, 1 = 0)"
        )
    return _definition(b, definitions.definition(segment.document), depth + 1)


def _group(b: _Builder, group: Group, depth: int) -> str:
    population = _combine(group.source_type, [_source(b, s, depth) for s in group.sources])
    filtered = _combine(group.type, [_dimensions(b, d) for d in group.dimensions])
    return f"({population} AND {filtered})"


def _definition(b: _Builder, definition: Definition | None, depth: int) -> str:
    if depth > MAX_SOURCE_DEPTH + 1:
        raise BadRequest(f"Source segments nest deeper than {MAX_SOURCE_DEPTH} (or name each other)")
    if definition is None:
        return _TRUE
    if definition.dimensions is not None:
        return _dimensions(b, definition.dimensions)
    return _combine(definition.include, [_group(b, g, depth) for g in definition.groups])


def compile_definition(
    definition: Definition | None, sources: dict[SourceKey, Segment | None], dialect: Dialect, now_ms: int
) -> Compiled:
    """The condition ``definition`` adds to a page, with its parameters.
    BadRequest when it is beyond the bounds (too many criteria, sources
    nested too deep or in a cycle)."""
    if definition is None:
        return Compiled("", "", ())
    b = _Builder(dialect, now_ms, sources)
    condition = _definition(b, definition, 1)
    join = ""
    if dialect == "postgres":
        # Parsed once a row: OFFSET 0 keeps PostgreSQL from inlining the
        # subquery into each reference (a parse each).
        join = (
            " CROSS JOIN LATERAL (SELECT replace(e.document, '\\u0000', '\\ufffd')::jsonb AS d OFFSET 0) AS j"
            if b.uses_document
            else ""
        )
    return Compiled(join, f" AND {condition}", tuple(b.params))


async def page(
    get: Getter,
    dialect: Dialect,
    app_id: str,
    segment_id: str | None,
    version: int | None,
    page: tuple[str, int, int],
) -> tuple[str, tuple[Any, ...]] | None:
    """The statement (``?`` placeholders) and parameters of one page of
    ``Store.segment_endpoints``; ``page`` is (after, limit, now ms). None:
    no such segment (version). BadRequest: a definition whose sources have
    changed since it was stored so that it is now beyond the bounds."""
    after, limit, now_ms = page
    if segment_id is None:
        return segment_sql.APP_ENDPOINTS_PAGE.format(join="", where=""), (app_id, after, limit)
    segment = await get(app_id, segment_id, version)
    if segment is None:
        return None
    if segment.segment_type == "IMPORT":
        return segment_sql.MEMBER_ENDPOINTS_PAGE, (app_id, segment_id, after, segment.version, limit)
    try:
        parsed = definitions.definition(segment.document)
        found_sources = await sources.load(get, app_id, parsed)
        compiled = compile_definition(parsed, found_sources, dialect, now_ms)
    except BadRequest as exc:
        raise StoreError(f"segment {segment_id[:200]}: {exc}", retriable=False) from exc
    statement = segment_sql.APP_ENDPOINTS_PAGE.format(join=compiled.join, where=compiled.where)
    return statement, (app_id, after, *compiled.params, limit)
