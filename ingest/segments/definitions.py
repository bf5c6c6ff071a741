"""A WriteSegmentRequest parsed, checked and bounded: typed frozen values,
and the API form they are shown in again. Pure.

Every invalid definition is a BadRequest whose message names the member
path (``Dimensions.Attributes.plan.Values[2]``,
``SegmentGroups.Groups[0].SourceSegments[1].Id``).

What a definition selects (botocore's model docs and seed 002; where they
are silent, the choice made here; :mod:`ingest.segments.evaluate` is the
reference, :mod:`ingest.store.segment_query` its SQL):

* A ``SegmentDimensions`` object holds when every criterion it names holds
  (an empty one: every endpoint). Inside ``Demographic``, ``Location``,
  ``Attributes``, ``UserAttributes`` and ``Metrics`` the criteria also all
  have to hold.
* ``SetDimension`` (``DimensionType`` INCLUSIVE by default): INCLUSIVE holds
  when the endpoint's value is one of ``Values``; EXCLUSIVE when it is not,
  an endpoint without the member included (it has none of the values).
  Values compare exactly (case and all). ``Channel`` reads ``ChannelType``;
  ``AppVersion``, ``Make``, ``Model``, ``Platform`` read ``Demographic``;
  ``Country`` reads ``Location.Country``. ``DeviceType`` names no member an
  endpoint can carry (EndpointDemographic has none): every endpoint is
  without it, so INCLUSIVE selects none and EXCLUSIVE all.
* ``AttributeDimension`` (``AttributeType`` INCLUSIVE by default) on the
  endpoint's list of values for the attribute (``Attributes``, or
  ``User.UserAttributes``): INCLUSIVE holds when one of them is one of
  ``Values``; EXCLUSIVE when none is (an endpoint without the attribute
  included); CONTAINS when one of them contains one of ``Values``. The date
  types read values as ISO 8601 instants of the form
  ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (ISO_INSTANT; an endpoint value of any
  other form is no instant and never matches): BEFORE and AFTER (one value)
  hold when one of the endpoint's instants is strictly before or after it;
  ON (one value) when one falls on its UTC day; BETWEEN (two values, the
  first not after the second) when one is in that closed range;
  NOT_BETWEEN when one is outside it.
* ``MetricDimension`` compares the endpoint's metric (a number) with
  ``Value``; an endpoint without the metric does not match.
* ``Location.GPSPoint``: the endpoint's Latitude and Longitude within
  ``RangeInKilometers`` (default 100) of ``Coordinates``, by great-circle
  (haversine) distance on a sphere of the Earth's mean radius; an endpoint
  without both does not match.
* ``Behavior.Recency``: ACTIVE holds when the endpoint's last activity
  (``ingest.folds.kpis.last_events``) is within ``Duration`` of now (the
  start of the window included); INACTIVE when it is not, or the endpoint
  never had an event.
* ``SegmentGroups``: a group's population is its source segments combined
  by ``SourceType`` (ALL: in every one; ANY: in one; NONE: in none), or the
  app's every endpoint when it names none; its dimensions, combined by
  ``Type`` (ALL, ANY, NONE of them holding), filter that population (no
  dimensions: no filter). ``Include`` combines the groups the same way (no
  groups: every endpoint). Each of the three defaults to ALL.
* A source segment is another segment of the app at ``Version`` (its
  latest when left out, read when the segment is evaluated): a
  DIMENSIONAL one by its own definition, an IMPORT one by its members at
  that version. One that no longer exists selects no endpoint. As the model
  says, a group names dimensional segments, or one imported segment alone.
* A segment with neither ``Dimensions`` nor ``SegmentGroups`` is every
  endpoint of the app; one with both is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from ingest.errors import BadRequest
from ingest.records import validate
from ingest.segments.values import (
    ATTRIBUTE_TYPES,
    COMBINES,
    COUNTRY_FIELD,
    DATE_TYPES,
    DAY_US,
    DEFAULT_RANGE_KM,
    DEMOGRAPHIC_FIELDS,
    DURATIONS_MS,
    MAX_CONDITIONS,
    MAX_GROUP_DIMENSIONS,
    MAX_GROUPS,
    MAX_KEY_CHARS,
    MAX_KEYS,
    MAX_NAME_CHARS,
    MAX_RANGE_KM,
    MAX_SEGMENT_ID_CHARS,
    MAX_SOURCES,
    MAX_VALUE_CHARS,
    MAX_VALUES,
    OPERATORS,
    SET_TYPES,
    AttributeDimension,
    Definition,
    Dimensions,
    GpsPoint,
    Group,
    MetricDimension,
    Recency,
    SetDimension,
    SourceSegment,
    WriteSegment,
    instant_us,
)

# No text of a definition holds one: PostgreSQL's text cannot, so the
# store could never compare it (an endpoint's own NUL reads as U+FFFD there).
NUL = "\x00"


def _fail(message: str) -> NoReturn:
    raise BadRequest(message)


def _object(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict:
        _fail(f"{where} must be an object")
    return value


def _list(value: Any, where: str, bound: int) -> list[Any]:
    if type(value) is not list:
        _fail(f"{where} must be a list")
    if len(value) > bound:
        _fail(f"{where} has {len(value)} items; at most {bound}")
    return value


def _string(value: Any, where: str, bound: int) -> str:
    if type(value) is not str:
        _fail(f"{where} must be a string")
    if len(value) > bound:
        _fail(f"{where} is {len(value)} characters; at most {bound}")
    if NUL in value:
        _fail(f"{where} must not hold a NUL character")
    return value


def _enum(obj: Mapping[str, Any], key: str, allowed: frozenset[str], where: str, default: str) -> str:
    value = obj.get(key)
    if value is None:
        return default
    if type(value) is not str or value not in allowed:
        _fail(f"{where}.{key} must be one of {', '.join(sorted(allowed))}")
    return value


def _number(value: Any, where: str) -> float:
    if type(value) not in (int, float) or value != value or value in (float("inf"), float("-inf")):
        _fail(f"{where} must be a finite number")
    try:
        return float(value)
    except OverflowError:
        _fail(f"{where} must be a finite number")


def _values(obj: Mapping[str, Any], where: str) -> tuple[str, ...]:
    if "Values" not in obj or obj["Values"] is None:
        _fail(f"{where}.Values is required")
    items = _list(obj["Values"], f"{where}.Values", MAX_VALUES)
    return tuple(_string(v, f"{where}.Values[{i}]", MAX_VALUE_CHARS) for i, v in enumerate(items))


def _set_dimension(value: Any, where: str) -> SetDimension:
    obj = _object(value, where)
    kind = _enum(obj, "DimensionType", SET_TYPES, where, "INCLUSIVE")
    return SetDimension(kind, _values(obj, where))  # type: ignore[arg-type]


def _attribute_dimension(value: Any, where: str) -> AttributeDimension:
    obj = _object(value, where)
    kind = _enum(obj, "AttributeType", ATTRIBUTE_TYPES, where, "INCLUSIVE")
    values = _values(obj, where)
    instants: tuple[int, ...] = ()
    if kind in DATE_TYPES:
        wanted = 2 if kind in ("BETWEEN", "NOT_BETWEEN") else 1
        if len(values) != wanted:
            _fail(f"{where}.Values must hold {wanted} ISO 8601 instant{'s' if wanted > 1 else ''} for {kind}")
        parsed = []
        for i, text in enumerate(values):
            at = instant_us(text)
            if at is None:
                _fail(f"{where}.Values[{i}] must be an ISO 8601 instant (YYYY-MM-DDTHH:MM:SS[.ffffff]Z)")
            parsed.append(at - at % DAY_US if kind == "ON" else at)
        if wanted == 2 and parsed[0] > parsed[1]:
            _fail(f"{where}.Values[0] must not be after {where}.Values[1]")
        instants = tuple(parsed)
    return AttributeDimension(kind, values, instants)  # type: ignore[arg-type]


def _keyed(value: Any, where: str, parse: Any) -> tuple[tuple[str, Any], ...]:
    obj = _object(value, where)
    if len(obj) > MAX_KEYS:
        _fail(f"{where} names {len(obj)} keys; at most {MAX_KEYS}")
    out = []
    for key, item in sorted(obj.items()):
        if not 0 < len(key) <= MAX_KEY_CHARS or NUL in key:
            _fail(f"{where} key {key[:64]!r} must be 1-{MAX_KEY_CHARS} characters, none of them NUL")
        out.append((key, parse(item, f"{where}.{key}")))
    return tuple(out)


def _metric(value: Any, where: str) -> MetricDimension:
    obj = _object(value, where)
    operator = obj.get("ComparisonOperator")
    if operator is None:
        _fail(f"{where}.ComparisonOperator is required")
    operator = _enum(obj, "ComparisonOperator", OPERATORS, where, "")
    if obj.get("Value") is None:
        _fail(f"{where}.Value is required")
    return MetricDimension(operator, _number(obj["Value"], f"{where}.Value"))  # type: ignore[arg-type]


def _gps(value: Any, where: str) -> GpsPoint:
    obj = _object(value, where)
    if obj.get("Coordinates") is None:
        _fail(f"{where}.Coordinates is required")
    coordinates = _object(obj["Coordinates"], f"{where}.Coordinates")
    point = []
    for key, bound in (("Latitude", 90.0), ("Longitude", 180.0)):
        at = f"{where}.Coordinates.{key}"
        if coordinates.get(key) is None:
            _fail(f"{at} is required")
        number = _number(coordinates[key], at)
        if not -bound <= number <= bound:
            _fail(f"{at} must be between -{bound:g} and {bound:g}")
        point.append(number)
    range_km = DEFAULT_RANGE_KM
    if obj.get("RangeInKilometers") is not None:
        range_km = _number(obj["RangeInKilometers"], f"{where}.RangeInKilometers")
        if not 0 <= range_km <= MAX_RANGE_KM:
            _fail(f"{where}.RangeInKilometers must be between 0 and {MAX_RANGE_KM:g}")
    return GpsPoint(point[0], point[1], range_km)


def _recency(value: Any, where: str) -> Recency:
    obj = _object(value, where)
    for key in ("Duration", "RecencyType"):
        if obj.get(key) is None:
            _fail(f"{where}.{key} is required")
    duration = _enum(obj, "Duration", frozenset(DURATIONS_MS), where, "")
    kind = _enum(obj, "RecencyType", frozenset({"ACTIVE", "INACTIVE"}), where, "")
    return Recency(DURATIONS_MS[duration], kind == "ACTIVE")


def dimensions(value: Any, where: str) -> Dimensions:
    """One SegmentDimensions object."""
    obj = _object(value, where)
    sets: list[tuple[tuple[str, ...] | None, SetDimension]] = []
    gps = recency = None
    if obj.get("Demographic") is not None:
        demographic = _object(obj["Demographic"], f"{where}.Demographic")
        for name, field in DEMOGRAPHIC_FIELDS.items():
            if demographic.get(name) is not None:
                sets.append((field, _set_dimension(demographic[name], f"{where}.Demographic.{name}")))
    if obj.get("Location") is not None:
        location = _object(obj["Location"], f"{where}.Location")
        if location.get("Country") is not None:
            sets.append((COUNTRY_FIELD, _set_dimension(location["Country"], f"{where}.Location.Country")))
        if location.get("GPSPoint") is not None:
            gps = _gps(location["GPSPoint"], f"{where}.Location.GPSPoint")
    if obj.get("Behavior") is not None:
        behavior = _object(obj["Behavior"], f"{where}.Behavior")
        if behavior.get("Recency") is not None:
            recency = _recency(behavior["Recency"], f"{where}.Behavior.Recency")
    keyed = {}
    for key, parse in (
        ("Attributes", _attribute_dimension),
        ("UserAttributes", _attribute_dimension),
        ("Metrics", _metric),
    ):
        keyed[key] = () if obj.get(key) is None else _keyed(obj[key], f"{where}.{key}", parse)
    return Dimensions(
        sets=tuple(sets),
        gps=gps,
        recency=recency,
        attributes=keyed["Attributes"],
        user_attributes=keyed["UserAttributes"],
        metrics=keyed["Metrics"],
    )


def _source(value: Any, where: str) -> SourceSegment:
    obj = _object(value, where)
    if obj.get("Id") is None:
        _fail(f"{where}.Id is required")
    segment_id = _string(obj["Id"], f"{where}.Id", MAX_SEGMENT_ID_CHARS)
    version = obj.get("Version")
    if version is not None and (type(version) is not int or not 1 <= version < 2**31):
        _fail(f"{where}.Version must be a whole number of at least 1")
    return SourceSegment(segment_id, version)


def _group(value: Any, where: str) -> Group:
    obj = _object(value, where)
    dims = _list(obj.get("Dimensions") or [], f"{where}.Dimensions", MAX_GROUP_DIMENSIONS)
    sources = _list(obj.get("SourceSegments") or [], f"{where}.SourceSegments", MAX_SOURCES)
    return Group(
        dimensions=tuple(dimensions(d, f"{where}.Dimensions[{i}]") for i, d in enumerate(dims)),
        sources=tuple(_source(s, f"{where}.SourceSegments[{i}]") for i, s in enumerate(sources)),
        source_type=_enum(obj, "SourceType", COMBINES, where, "ALL"),  # type: ignore[arg-type]
        type=_enum(obj, "Type", COMBINES, where, "ALL"),  # type: ignore[arg-type]
    )


def definition(obj: Mapping[str, Any]) -> Definition | None:
    """The Dimensions or SegmentGroups of a request or a stored document;
    None when it has neither."""
    has_dimensions = obj.get("Dimensions") is not None
    has_groups = obj.get("SegmentGroups") is not None
    if has_dimensions and has_groups:
        _fail("Dimensions and SegmentGroups: a segment has one or the other, not both")
    if has_dimensions:
        return Definition(dimensions=dimensions(obj["Dimensions"], "Dimensions"))
    if not has_groups:
        return None
    where = "SegmentGroups"
    groups = _object(obj["SegmentGroups"], where)
    items = _list(groups.get("Groups") or [], f"{where}.Groups", MAX_GROUPS)
    parsed = Definition(
        groups=tuple(_group(g, f"{where}.Groups[{i}]") for i, g in enumerate(items)),
        include=_enum(groups, "Include", COMBINES, where, "ALL"),  # type: ignore[arg-type]
    )
    if parsed.conditions() > MAX_CONDITIONS:
        _fail(f"{where} holds {parsed.conditions()} criteria; at most {MAX_CONDITIONS}")
    return parsed


def write_segment(body: Any) -> WriteSegment:
    """A CreateSegment or UpdateSegment body (WriteSegmentRequest)."""
    obj = _object(body, "The request body")
    name = None if obj.get("Name") is None else _string(obj["Name"], "Name", MAX_NAME_CHARS)
    tags = obj.get("tags")
    if tags is not None:
        if type(tags) is not dict or any(type(v) is not str for v in tags.values()):
            _fail("tags must be an object of string values")
        validate.check_tags(tags)
    parsed = definition(obj)
    return WriteSegment(name=name, definition=parsed, shown=shown(parsed), tags=tags)


# --- the API form -----------------------------------------------------------


def _shown_set(dimension: SetDimension) -> dict[str, Any]:
    return {"DimensionType": dimension.type, "Values": list(dimension.values)}


def _shown_dimensions(dims: Dimensions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = {field: name for name, field in DEMOGRAPHIC_FIELDS.items() if field is not None}
    for field, dimension in dims.sets:
        if field == COUNTRY_FIELD:
            out.setdefault("Location", {})["Country"] = _shown_set(dimension)
        else:
            name = "DeviceType" if field is None else names[field]
            out.setdefault("Demographic", {})[name] = _shown_set(dimension)
    if dims.gps is not None:
        out.setdefault("Location", {})["GPSPoint"] = {
            "Coordinates": {"Latitude": dims.gps.latitude, "Longitude": dims.gps.longitude},
            "RangeInKilometers": dims.gps.range_km,
        }
    if dims.recency is not None:
        duration = next(k for k, v in DURATIONS_MS.items() if v == dims.recency.duration_ms)
        recency_type = "ACTIVE" if dims.recency.active else "INACTIVE"
        out["Behavior"] = {"Recency": {"Duration": duration, "RecencyType": recency_type}}
    for key, items in (("Attributes", dims.attributes), ("UserAttributes", dims.user_attributes)):
        if items:
            out[key] = {k: {"AttributeType": d.type, "Values": list(d.values)} for k, d in items}
    if dims.metrics:
        out["Metrics"] = {k: {"ComparisonOperator": d.operator, "Value": d.value} for k, d in dims.metrics}
    return out


def shown(parsed: Definition | None) -> dict[str, Any]:
    """The members GetSegment shows for a definition: {"Dimensions": …} or
    {"SegmentGroups": …}, with their defaults filled in; {} for none.
    :func:`definition` of it is ``parsed`` again."""
    if parsed is None:
        return {}
    if parsed.dimensions is not None:
        return {"Dimensions": _shown_dimensions(parsed.dimensions)}
    groups = []
    for group in parsed.groups:
        sources = [
            {"Id": s.id} if s.version is None else {"Id": s.id, "Version": s.version} for s in group.sources
        ]
        groups.append(
            {
                "Dimensions": [_shown_dimensions(d) for d in group.dimensions],
                "SourceSegments": sources,
                "SourceType": group.source_type,
                "Type": group.type,
            }
        )
    return {"SegmentGroups": {"Groups": groups, "Include": parsed.include}}
