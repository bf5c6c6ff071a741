"""The pure evaluation of a segment definition (:mod:`ingest.segments.definitions`
says what it selects): the reference the SQL of :mod:`ingest.store.segment_query`
is held to. No I/O; values in, a verdict out.

Arithmetic that both must do alike is written here once and mirrored there
term by term: the GPS test compares the haversine of the two points with
that of the range (no arcsine or square root), each term computed in the
same order, so the store's libm and this one give the same bits."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ingest.segments.values import (
    DAY_US,
    AttributeDimension,
    Combine,
    Definition,
    Dimensions,
    GpsPoint,
    Group,
    MetricDimension,
    SetDimension,
    SourceSegment,
    instant_us,
)

EARTH_RADIUS_KM = 6371.0088
"""The mean radius (IUGG)."""
RADIANS = math.pi / 180


@dataclass(frozen=True, slots=True)
class Source:
    """A source segment as evaluation sees it: a DIMENSIONAL one's
    definition, or an IMPORT one's members at the version named."""

    definition: Definition | None = None
    members: frozenset[str] | None = None


Sources = Mapping[tuple[str, int | None], Source | None]
"""(segment ID, version named) → the source; None or absent: no such segment."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What evaluation reads of an endpoint."""

    id: str
    document: Mapping[str, Any]
    last_event_ms: int | None


@dataclass(frozen=True, slots=True)
class GpsTerms:
    """A GPSPoint's constants, as the SQL binds them."""

    latitude_rad: float
    longitude_rad: float
    cos_latitude: float
    bound: float
    """The haversine of the range: a point is within it when its own is at most this."""


def gps_terms(point: GpsPoint) -> GpsTerms:
    latitude = point.latitude * RADIANS
    half = math.sin(point.range_km / (2 * EARTH_RADIUS_KM))
    return GpsTerms(latitude, point.longitude * RADIANS, math.cos(latitude), half * half)


def within(point: GpsPoint, latitude: float, longitude: float) -> bool:
    terms = gps_terms(point)
    x = latitude * RADIANS
    s1 = math.sin((x - terms.latitude_rad) / 2)
    s2 = math.sin((longitude * RADIANS - terms.longitude_rad) / 2)
    return s1 * s1 + math.cos(x) * terms.cos_latitude * s2 * s2 <= terms.bound


def _member(document: Mapping[str, Any], path: tuple[str, ...] | None) -> Any:
    if path is None:
        return None
    value: Any = document
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def set_matches(dimension: SetDimension, value: Any) -> bool:
    found = isinstance(value, str) and value in dimension.values
    return found if dimension.type == "INCLUSIVE" else not found


def attribute_matches(dimension: AttributeDimension, values: Any) -> bool:
    items = [v for v in values if isinstance(v, str)] if isinstance(values, list) else []
    kind = dimension.type
    if kind == "INCLUSIVE":
        return any(v in dimension.values for v in items)
    if kind == "EXCLUSIVE":
        return not any(v in dimension.values for v in items)
    if kind == "CONTAINS":
        return any(part in v for v in items for part in dimension.values)
    instants = [at for at in map(instant_us, items) if at is not None]
    first = dimension.instants[0]
    if kind == "BEFORE":
        return any(at < first for at in instants)
    if kind == "AFTER":
        return any(at > first for at in instants)
    if kind == "ON":
        return any(first <= at < first + DAY_US for at in instants)
    last = dimension.instants[1]
    if kind == "BETWEEN":
        return any(first <= at <= last for at in instants)
    return any(not first <= at <= last for at in instants)  # NOT_BETWEEN


def metric_matches(dimension: MetricDimension, value: Any) -> bool:
    if type(value) not in (int, float):
        return False
    target = dimension.value
    verdicts: dict[str, bool] = {
        "GREATER_THAN": value > target,
        "LESS_THAN": value < target,
        "GREATER_THAN_OR_EQUAL": value >= target,
        "LESS_THAN_OR_EQUAL": value <= target,
        "EQUAL": value == target,
    }
    return verdicts[dimension.operator]


def dimensions_match(dims: Dimensions, endpoint: Endpoint, now_ms: int) -> bool:
    doc = endpoint.document
    if not all(set_matches(d, _member(doc, path)) for path, d in dims.sets):
        return False
    if dims.gps is not None:
        location = doc.get("Location") or {}
        latitude, longitude = location.get("Latitude"), location.get("Longitude")
        if not isinstance(latitude, int | float) or not isinstance(longitude, int | float):
            return False
        if not within(dims.gps, latitude, longitude):
            return False
    if dims.recency is not None:
        last = endpoint.last_event_ms
        active = last is not None and last >= now_ms - dims.recency.duration_ms
        if active != dims.recency.active:
            return False
    attributes = doc.get("Attributes") or {}
    if not all(attribute_matches(d, attributes.get(name)) for name, d in dims.attributes):
        return False
    user_attributes = (doc.get("User") or {}).get("UserAttributes") or {}
    if not all(attribute_matches(d, user_attributes.get(name)) for name, d in dims.user_attributes):
        return False
    metrics = doc.get("Metrics") or {}
    return all(metric_matches(d, metrics.get(name)) for name, d in dims.metrics)


def combine(kind: Combine, verdicts: list[bool]) -> bool:
    """ALL, ANY or NONE of ``verdicts`` (none at all: no criterion, True)."""
    if not verdicts:
        return True
    if kind == "ALL":
        return all(verdicts)
    found = any(verdicts)
    return found if kind == "ANY" else not found


def source_matches(source: SourceSegment, endpoint: Endpoint, now_ms: int, sources: Sources) -> bool:
    found = sources.get((source.id, source.version))
    if found is None:
        return False
    if found.members is not None:
        return endpoint.id in found.members
    return matches(found.definition, endpoint, now_ms, sources)


def group_matches(group: Group, endpoint: Endpoint, now_ms: int, sources: Sources) -> bool:
    population = combine(
        group.source_type, [source_matches(s, endpoint, now_ms, sources) for s in group.sources]
    )
    return population and combine(
        group.type, [dimensions_match(d, endpoint, now_ms) for d in group.dimensions]
    )


def matches(definition: Definition | None, endpoint: Endpoint, now_ms: int, sources: Sources) -> bool:
    """Whether ``endpoint`` (live) belongs to the segment ``definition``
    defines at ``now_ms``."""
    if definition is None:
        return True
    if definition.dimensions is not None:
        return dimensions_match(definition.dimensions, endpoint, now_ms)
    return combine(
        definition.include, [group_matches(g, endpoint, now_ms, sources) for g in definition.groups]
    )
