"""Segment evaluation in the database equals the pure evaluator, on both
backends: random endpoints (written by the endpoint fold, with last events
written by the KPI batch) and random definitions (every dimension type,
groups, dimensional and IMPORT sources at a version or the latest), the
members ``segment_endpoints`` pages out, a few at a time, are the ones
``evaluate.matches`` selects.

One store per backend for the whole test; each example is a fresh app."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ingest.folds.endpoints import EndpointState
from ingest.records.values import Demographic, Event, Location
from ingest.segments import definitions, evaluate, values
from ingest.segments.evaluate import Endpoint, Source
from ingest.store.base import Segment, Store
from tests.test_store import BACKENDS, app, fresh_store, offsets, upsert

NOW_MS = 1_764_583_200_000  # 2025-12-01T10:00:00Z
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
PAGE = 3
_apps = itertools.count()

# Small pools, so that criteria and endpoints meet often.
CHANNELS = ("APNS", "GCM", "EMAIL")
PLATFORMS = ("iOS", "Android")
MAKES = ("Apple", "Samsung")
VERSIONS = ("1.0", "2.0")
COUNTRIES = ("DE", "US", "FR")
PLANS = ("pro", "free", "trial", "pro-plus")
INSTANTS = (
    "2026-01-01T00:00:00Z",
    "2026-01-01T12:30:00.5Z",
    "2026-01-02T00:00:00Z",
    "2026-02-01T08:00:00.000001Z",
)
DATE_VALUES = (*INSTANTS, "soon", "2026-02-30T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01")
# Halves and whole degrees: exact in binary, so each backend reads the very
# doubles Python does.
COORDINATES = (-10.0, -0.5, 0.0, 0.5, 1.0, 2.0, 45.0, 89.5)
METRICS = (-1.0, 0.0, 1.0, 2.5, 100.0)
LAST_EVENT_AGO_MS = (
    0,
    HOUR_MS,
    DAY_MS,
    2 * DAY_MS,
    7 * DAY_MS,
    10 * DAY_MS,
    14 * DAY_MS,
    30 * DAY_MS,
    40 * DAY_MS,
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


# An endpoint's parts, built once: a strategy built inside the composite is
# validated again for every endpoint drawn.
CHANNEL_CHOICE = maybe(st.sampled_from(CHANNELS))
VERSION_CHOICE = maybe(st.sampled_from(VERSIONS))
MAKE_CHOICE = maybe(st.sampled_from(MAKES))
PLATFORM_CHOICE = maybe(st.sampled_from(PLATFORMS))
COUNTRY_CHOICE = maybe(st.sampled_from(COUNTRIES))
COORDINATE_CHOICE = maybe(st.sampled_from(COORDINATES))
PLAN_LISTS = st.lists(st.sampled_from(PLANS), max_size=2, unique=True)
DATE_LISTS = st.lists(st.sampled_from(DATE_VALUES), max_size=2, unique=True)
SCORE_CHOICE = st.sampled_from(METRICS)


@st.composite
def endpoint_upserts(draw: st.DrawFn, app_id: str, index: int) -> Any:
    members: dict[str, Any] = {}
    if (channel := draw(CHANNEL_CHOICE)) is not None:
        members["channel_type"] = channel
    if draw(st.booleans()):
        members["demographic"] = Demographic(
            app_version=draw(VERSION_CHOICE),
            make=draw(MAKE_CHOICE),
            platform=draw(PLATFORM_CHOICE),
        )
    if draw(st.booleans()):
        members["location"] = Location(
            country=draw(COUNTRY_CHOICE),
            latitude=draw(COORDINATE_CHOICE),
            longitude=draw(COORDINATE_CHOICE),
        )
    attributes = {}
    if draw(st.booleans()):
        attributes["plan"] = draw(PLAN_LISTS)
    if draw(st.booleans()):
        attributes["signup"] = draw(DATE_LISTS)
    if attributes:
        members["attributes"] = attributes
    if draw(st.booleans()):
        members["user_attributes"] = {"tier": draw(PLAN_LISTS)}
    if draw(st.booleans()):
        members["metrics"] = {"score": draw(SCORE_CHOICE)}
    return upsert(f"e{index:02d}", app_id=app_id, address=f"a{index}", **members)


def set_dimension(values: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"Values": st.lists(st.sampled_from(values), min_size=1, max_size=2)},
        optional={"DimensionType": st.sampled_from(("INCLUSIVE", "EXCLUSIVE"))},
    )


@st.composite
def attribute_dimension(draw: st.DrawFn, choices: tuple[str, ...]) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(values.ATTRIBUTE_TYPES)))
    if kind in values.DATE_TYPES:
        count = 2 if kind in ("BETWEEN", "NOT_BETWEEN") else 1
        chosen = sorted(draw(st.lists(st.sampled_from(INSTANTS), min_size=count, max_size=count)))
        return {"AttributeType": kind, "Values": chosen}
    pool = tuple(v[:3] for v in choices) + choices if kind == "CONTAINS" else choices
    return {"AttributeType": kind, "Values": draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2))}


GPS = st.fixed_dictionaries(
    {
        "Coordinates": st.fixed_dictionaries(
            {"Latitude": st.sampled_from(COORDINATES), "Longitude": st.sampled_from(COORDINATES)}
        )
    },
    optional={"RangeInKilometers": st.sampled_from((0.0, 10.0, 60.0, 150.0, 5000.0))},
)
RECENCY = st.fixed_dictionaries(
    {
        "Duration": st.sampled_from(sorted(values.DURATIONS_MS)),
        "RecencyType": st.sampled_from(("ACTIVE", "INACTIVE")),
    }
)
METRIC = st.fixed_dictionaries(
    {"ComparisonOperator": st.sampled_from(sorted(values.OPERATORS)), "Value": st.sampled_from(METRICS)}
)
# Each criterion a SegmentDimensions object can hold: (its path, its value).
CRITERIA: dict[str, tuple[tuple[str, ...], st.SearchStrategy[Any]]] = {
    "channel": (("Demographic", "Channel"), set_dimension(CHANNELS)),
    "platform": (("Demographic", "Platform"), set_dimension(PLATFORMS)),
    "make": (("Demographic", "Make"), set_dimension(MAKES)),
    "app version": (("Demographic", "AppVersion"), set_dimension(VERSIONS)),
    "model": (("Demographic", "Model"), set_dimension(("X",))),
    "device type": (("Demographic", "DeviceType"), set_dimension(("PHONE",))),
    "country": (("Location", "Country"), set_dimension(COUNTRIES)),
    "gps": (("Location", "GPSPoint"), GPS),
    "recency": (("Behavior", "Recency"), RECENCY),
    "plan": (("Attributes", "plan"), attribute_dimension(PLANS)),
    "signup": (("Attributes", "signup"), attribute_dimension(INSTANTS)),
    "tier": (("UserAttributes", "tier"), attribute_dimension(PLANS)),
    "score": (("Metrics", "score"), METRIC),
    "other": (("Metrics", "other"), METRIC),
}


@st.composite
def segment_dimensions(draw: st.DrawFn) -> dict[str, Any]:
    """A SegmentDimensions object of 0-3 criteria (mostly 1)."""
    size = draw(st.sampled_from((1, 2, 1, 3, 1, 0)))
    out: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(sorted(CRITERIA)), min_size=size, max_size=size, unique=True)):
        (outer, inner), strategy = CRITERIA[name]
        out.setdefault(outer, {})[inner] = draw(strategy)
    return out


def combine() -> st.SearchStrategy[str]:
    return st.sampled_from(("ALL", "ANY", "NONE"))


@st.composite
def write_request(draw: st.DrawFn, sources: list[tuple[str, int | None]]) -> dict[str, Any]:
    """Dimensions, SegmentGroups (naming some of ``sources``), or neither."""
    form = draw(st.sampled_from(("groups", "dimensions", "groups", "dimensions", "groups", "neither")))
    if form == "dimensions":
        return {"Dimensions": draw(segment_dimensions())}
    if form == "neither" or not sources:
        return {}
    groups = []
    for _ in range(draw(st.sampled_from((1, 1, 2, 3)))):
        group: dict[str, Any] = {"Dimensions": draw(st.lists(segment_dimensions(), max_size=3))}
        named = draw(st.lists(st.sampled_from(sources), max_size=2, unique=True))
        group["SourceSegments"] = [{"Id": i} if v is None else {"Id": i, "Version": v} for i, v in named]
        if draw(st.booleans()):
            group["SourceType"] = draw(combine())
        if draw(st.booleans()):
            group["Type"] = draw(combine())
        groups.append(group)
    return {"SegmentGroups": {"Groups": groups, "Include": draw(combine())}}


def segment(app_id: str, segment_id: str, document: dict[str, Any], *, version: int = 1) -> Segment:
    kind = "IMPORT" if "ImportDefinition" in document else "DIMENSIONAL"
    stamp = "2025-12-01T10:00:00.000Z"
    return Segment(app_id, segment_id, version, segment_id, kind, document, stamp, stamp)


@pytest.fixture(params=BACKENDS)
async def one_store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with fresh_store(request.param) as opened:
        yield opened


async def members(store: Store, app_id: str, segment_id: str, version: int | None = None) -> list[str]:
    found: list[str] = []
    after: str | None = None
    while True:
        page = await store.segment_endpoints(
            app_id, segment_id, version, after=after, limit=PAGE, now_ms=NOW_MS
        )
        found += [e.endpoint_id for e in page]
        if len(page) < PAGE:
            return found
        after = page[-1].endpoint_id


@settings(
    max_examples=100,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
async def test_the_store_selects_what_the_pure_evaluator_does(one_store: Store, data: st.DataObject) -> None:
    store = one_store
    app_id = f"app-{next(_apps)}"
    await store.create_app(app(app_id))
    count = data.draw(st.integers(4, 14), label="endpoints")
    records = [data.draw(endpoint_upserts(app_id, i), label=f"endpoint {i}") for i in range(count)]
    await store.apply_endpoint_batch(offsets(records))
    ago = [
        data.draw(maybe(st.sampled_from(LAST_EVENT_AGO_MS)), label=f"last event {i}") for i in range(count)
    ]
    events = [
        Event(app_id, f"e{i:02d}", f"ev{i}", "req", NOW_MS, "t", "-", NOW_MS - back)
        for i, back in enumerate(ago)
        if back is not None
    ]
    await store.apply_event_batch(events, oldest_day=NOW_MS // DAY_MS - 7, newest_day=NOW_MS // DAY_MS + 1)
    stored: list[EndpointState] = list(
        await store.segment_endpoints(app_id, None, None, after=None, limit=100, now_ms=NOW_MS)
    )
    last = {f"e{i:02d}": NOW_MS - back for i, back in enumerate(ago) if back is not None}
    endpoints = [Endpoint(s.endpoint_id, s.document, last.get(s.endpoint_id)) for s in stored]

    # Sources: an IMPORT segment with members at versions 1 and 2, and a
    # dimensional one at versions 1 and 2; named at a version or the latest.
    oracle: dict[tuple[str, int | None], Source | None] = {}
    ids = [s.endpoint_id for s in stored]
    first = data.draw(
        st.lists(st.sampled_from(ids), unique=True) if ids else st.just([]), label="imported v1"
    )
    second = data.draw(
        st.lists(st.sampled_from(ids), unique=True) if ids else st.just([]), label="imported v2"
    )
    imported = {"ImportDefinition": {"Size": len(first), "Format": "JSON", "S3Url": "s3://b/k"}}
    assert await store.create_segment(segment(app_id, "imp", imported))
    await store.add_segment_members(app_id, "imp", 1, first)
    assert await store.put_segment_version(segment(app_id, "imp", imported, version=2))
    await store.add_segment_members(app_id, "imp", 2, second)
    oracle[("imp", 1)] = Source(members=frozenset(first))
    oracle[("imp", 2)] = oracle[("imp", None)] = Source(members=frozenset(first) | frozenset(second))
    oracle[("imp", 3)] = None
    oracle[("gone", None)] = None
    for version in (1, 2):
        request = data.draw(write_request([("imp", None)]), label=f"dimensional source v{version}")
        parsed = definitions.write_segment(request)
        source = segment(app_id, "dim", parsed.shown, version=version)
        if version == 1:
            assert await store.create_segment(source)
        else:
            assert await store.put_segment_version(source)
        oracle[("dim", version)] = Source(definition=parsed.definition)
    oracle[("dim", None)] = oracle[("dim", 2)]
    choices = [("imp", None), ("imp", 1), ("imp", 2), ("imp", 3), ("dim", None), ("dim", 1), ("gone", None)]
    request = data.draw(write_request(choices), label="segment")
    parsed = definitions.write_segment(request)
    assert definitions.definition(parsed.shown) == parsed.definition, "the shown form reads back the same"
    assert await store.create_segment(segment(app_id, "seg", parsed.shown))

    expected = [e.id for e in endpoints if evaluate.matches(parsed.definition, e, NOW_MS, oracle)]
    assert await members(store, app_id, "seg") == expected
    imported_v1 = [e.id for e in endpoints if e.id in first]
    assert await members(store, app_id, "imp", 1) == imported_v1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_each_criterion_selects_in_the_store_what_the_module_says(backend: str) -> None:
    """test_segment_definitions' cases (the boundaries among them: the start
    of a Recency window, an instant equal to BEFORE's, a metric equal to
    GREATER_THAN_OR_EQUAL's), on each store, endpoints written by the folds."""
    from tests.test_segment_definitions import CASES, FULL, NOW

    document = FULL.document
    full = upsert(
        "full",
        app_id="cases",
        address="a",
        channel_type=document["ChannelType"],
        demographic=Demographic(platform="iOS"),
        location=Location(country="DE", latitude=52.5, longitude=13.4),
        attributes=document["Attributes"],
        user_attributes=document["User"]["UserAttributes"],
        metrics=document["Metrics"],
    )
    async with fresh_store(backend) as store:
        await store.create_app(app("cases"))
        await store.apply_endpoint_batch(offsets([full, upsert("plain", app_id="cases", address="b")]))
        assert FULL.last_event_ms is not None
        last = Event("cases", "full", "ev", "req", NOW, "t", "-", FULL.last_event_ms)
        await store.apply_event_batch([last], oldest_day=0, newest_day=NOW // DAY_MS + 1)
        for index, (body, selected) in enumerate(CASES):
            shown = definitions.write_segment(body).shown
            assert await store.create_segment(segment("cases", f"s{index}", shown))
            found = await store.segment_endpoints(
                "cases", f"s{index}", None, after=None, limit=10, now_ms=NOW
            )
            assert {e.endpoint_id for e in found} == selected, body
