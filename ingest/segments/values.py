"""A segment definition's values: frozen, typed, each criterion of
SegmentDimensions and the groups around them (what
:mod:`ingest.segments.definitions` parses a WriteSegmentRequest into), with
the enums, the bounds on what a client may send, and the instant reader
evaluation and both stores share. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from ingest.records import validate

SetType = Literal["INCLUSIVE", "EXCLUSIVE"]
AttributeType = Literal[
    "INCLUSIVE", "EXCLUSIVE", "CONTAINS", "BEFORE", "AFTER", "ON", "BETWEEN", "NOT_BETWEEN"
]
Operator = Literal["GREATER_THAN", "LESS_THAN", "GREATER_THAN_OR_EQUAL", "LESS_THAN_OR_EQUAL", "EQUAL"]
Combine = Literal["ALL", "ANY", "NONE"]

SET_TYPES: frozenset[str] = frozenset({"INCLUSIVE", "EXCLUSIVE"})
ATTRIBUTE_TYPES: frozenset[str] = frozenset(
    {"INCLUSIVE", "EXCLUSIVE", "CONTAINS", "BEFORE", "AFTER", "ON", "BETWEEN", "NOT_BETWEEN"}
)
DATE_TYPES: frozenset[str] = frozenset({"BEFORE", "AFTER", "ON", "BETWEEN", "NOT_BETWEEN"})
OPERATORS: frozenset[str] = frozenset(
    {"GREATER_THAN", "LESS_THAN", "GREATER_THAN_OR_EQUAL", "LESS_THAN_OR_EQUAL", "EQUAL"}
)
COMBINES: frozenset[str] = frozenset({"ALL", "ANY", "NONE"})
HOUR_MS = 3_600_000
DURATIONS_MS: dict[str, int] = {
    "HR_24": 24 * HOUR_MS,
    "DAY_7": 7 * 24 * HOUR_MS,
    "DAY_14": 14 * 24 * HOUR_MS,
    "DAY_30": 30 * 24 * HOUR_MS,
}
# Demographic dimensions → the endpoint member each reads (None: no member).
DEMOGRAPHIC_FIELDS: dict[str, tuple[str, ...] | None] = {
    "AppVersion": ("Demographic", "AppVersion"),
    "Channel": ("ChannelType",),
    "DeviceType": None,
    "Make": ("Demographic", "Make"),
    "Model": ("Demographic", "Model"),
    "Platform": ("Demographic", "Platform"),
}
COUNTRY_FIELD = ("Location", "Country")
DEFAULT_RANGE_KM = 100.0
# Half the circumference of the sphere below (20,015.1 km): every point is within it.
MAX_RANGE_KM = 20_015.0

# Bounds on what a client may send (ours: Pinpoint publishes none for
# these). Each keeps one definition's SQL a few hundred conditions at most.
MAX_VALUES = 100
"""Values of one SetDimension or AttributeDimension."""
MAX_VALUE_CHARS = validate.MAX_ENDPOINT_VALUE_CHARS
"""A longer value could never equal an endpoint's (at most this long)."""
MAX_KEYS = 50
"""Attributes, UserAttributes or Metrics named by one SegmentDimensions."""
MAX_KEY_CHARS = validate.MAX_KEY_CHARS
MAX_GROUPS = 5
MAX_GROUP_DIMENSIONS = 10
MAX_SOURCES = 10
"""Source segments of one group."""
MAX_NAME_CHARS = 256
MAX_SEGMENT_ID_CHARS = validate.MAX_ID_CHARS
MAX_CONDITIONS = 500
"""Criteria in one definition, its source segments' (compiled in) included."""
MAX_SOURCE_DEPTH = 3
"""Source segments of source segments, this deep at most."""
MAX_COMPILED_SEGMENTS = 20
"""Segments, the one evaluated and its sources at every depth, in one query."""

# ISO_INSTANT as both backends read it: ASCII digits, UTC ("Z"), hours
# 00-23 and seconds 00-59, at most microseconds.
_INSTANT = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?Z"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY_US = 86_400_000_000


def instant_us(value: str) -> int | None:
    """An ISO_INSTANT (``2026-12-01T10:00:00.5Z``) → epoch microseconds; None
    for any other string, or a date that does not exist."""
    found = _INSTANT.fullmatch(value)
    if found is None:
        return None
    year, month, day, hour, minute, second, fraction = found.groups()
    try:
        at = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC)
    except ValueError:
        return None
    since = at - _EPOCH
    micros = int((fraction or "").ljust(6, "0")) if fraction else 0
    return (since.days * 86_400 + since.seconds) * 1_000_000 + micros


@dataclass(frozen=True, slots=True)
class SetDimension:
    type: SetType
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AttributeDimension:
    type: AttributeType
    values: tuple[str, ...]
    instants: tuple[int, ...]
    """The date types' values in epoch microseconds; ON's, its UTC day's start."""


@dataclass(frozen=True, slots=True)
class MetricDimension:
    operator: Operator
    value: float


@dataclass(frozen=True, slots=True)
class GpsPoint:
    latitude: float
    longitude: float
    range_km: float


@dataclass(frozen=True, slots=True)
class Recency:
    duration_ms: int
    active: bool


@dataclass(frozen=True, slots=True)
class Dimensions:
    """One SegmentDimensions object: every criterion must hold."""

    sets: tuple[tuple[tuple[str, ...] | None, SetDimension], ...] = ()
    """(the endpoint member read, or None for none, its dimension)."""
    gps: GpsPoint | None = None
    recency: Recency | None = None
    attributes: tuple[tuple[str, AttributeDimension], ...] = ()
    user_attributes: tuple[tuple[str, AttributeDimension], ...] = ()
    metrics: tuple[tuple[str, MetricDimension], ...] = ()

    def conditions(self) -> int:
        count = len(self.sets) + len(self.attributes) + len(self.user_attributes) + len(self.metrics)
        return count + (self.gps is not None) + (self.recency is not None)


@dataclass(frozen=True, slots=True)
class SourceSegment:
    id: str
    version: int | None


@dataclass(frozen=True, slots=True)
class Group:
    dimensions: tuple[Dimensions, ...]
    sources: tuple[SourceSegment, ...]
    source_type: Combine
    type: Combine


@dataclass(frozen=True, slots=True)
class Definition:
    """What selects a segment's endpoints: Dimensions, or groups, or neither
    (every endpoint)."""

    dimensions: Dimensions | None = None
    groups: tuple[Group, ...] = ()
    include: Combine = "ALL"

    def sources(self) -> tuple[SourceSegment, ...]:
        return tuple(source for group in self.groups for source in group.sources)

    def conditions(self) -> int:
        own = self.dimensions.conditions() if self.dimensions is not None else 0
        return own + sum(d.conditions() + len(g.sources) for g in self.groups for d in g.dimensions)


@dataclass(frozen=True, slots=True)
class WriteSegment:
    """A WriteSegmentRequest: each member None when it was not sent."""

    name: str | None
    definition: Definition | None
    """None when neither Dimensions nor SegmentGroups was sent."""
    shown: dict[str, Any]
    """Dimensions and/or SegmentGroups as GetSegment shows them (defaults filled in)."""
    tags: dict[str, str] | None
