"""The KPI aggregates on both store backends (SQLite in a temp dir, PostgreSQL
in a fresh schema), through the Store protocol only.

The property test holds both backends to a brute-force oracle written here
from the events themselves: the distinct in-window events (the first of each
(app, endpoint, event ID)), their distinct sets and sums computed directly,
then ``kpis.rows`` over both. It does not call ``kpis.effects``: the oracle is
the contract, not the code under test.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ingest.errors import StoreError
from ingest.folds import kpis
from ingest.folds.endpoints import EndpointRecord
from ingest.folds.kpis import EventOutcome, Kpi
from ingest.records.values import EndpointContext, Event, Session
from ingest.store import sql
from ingest.store import sqlite as store_module
from ingest.store.base import KpiData, Store
from ingest.store.postgres import PostgresStore
from tests.test_store import (
    BACKENDS,
    HOUR_MS,
    T0_MS,
    delete,
    fresh_store,
    offsets,
    postgres_schema,
    upsert,
)

DAY_MS = kpis.DAY_MS
DAY0 = kpis.day_of(T0_MS)
# Events fall on DAY0 .. DAY0 + 4; the dedupe window starts a day later, so
# DAY0's events are too old, and ends a day before the last, whose events are
# too new.
STREAM_DAYS = 5
OLDEST_DAY = DAY0 + 1
NEWEST_DAY = DAY0 + STREAM_DAYS - 2
# For tests about other things: no event is too new.
FAR_DAY = DAY0 + 1000
# A KPI window (days, inclusive) around every event.
WHOLE_STREAM = (DAY0 - 1, DAY0 + STREAM_DAYS)
APP_IDS = ("app-a", "app-b")
ENDPOINT_IDS = tuple(f"ep-{i}" for i in range(6))
USER_IDS = ("u1", "u2", "u3")
SESSION_IDS = ("s1", "s2", "s3")
CAMPAIGN_IDS = ("c1", "c2", "")
EVENT_TYPES = (
    "_session.start",
    "_session.stop",
    "_monetization.purchase",
    "_userauth.sign_in",
    "_userauth.sign_up",
    "_userauth.auth_fail",
    "_campaign.opened_notification",
    "level.complete",
    "screen.view",
)


def event(
    event_id: str,
    *,
    app_id: str = "app-a",
    endpoint_id: str = "ep-0",
    day: int = DAY0,
    event_type: str = "level.complete",
    **members: object,
) -> Event:
    millis = day * DAY_MS + HOUR_MS
    return Event(
        app_id=app_id,
        endpoint_id=endpoint_id,
        event_id=event_id,
        request_id="req",
        received_at_ms=millis,
        event_type=event_type,
        timestamp="-",
        timestamp_ms=millis,
        **members,  # type: ignore[arg-type]
    )


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with fresh_store(request.param) as opened:
        yield opened


# The stream.

# What an endpoint is in the store before the events: its UserId, "" (sent
# empty), "no user", "deleted" (had u3, then deleted) or "absent".
Seed = dict[tuple[str, str], str]


@st.composite
def seeds(draw: st.DrawFn) -> Seed:
    states = st.sampled_from(("u1", "u2", "", "no user", "deleted", "absent"))
    return {(a, e): draw(states) for a in APP_IDS for e in ENDPOINT_IDS}


def seed_records(seed: Seed) -> list[EndpointRecord]:
    records: list[EndpointRecord] = []
    for (app_id, endpoint_id), state in sorted(seed.items()):
        if state == "absent":
            continue
        user_id = {"no user": None, "deleted": "u3"}.get(state, state)
        records.append(upsert(endpoint_id, app_id=app_id, user_id=user_id))
        if state == "deleted":
            records.append(delete(endpoint_id, app_id=app_id, received_at_ms=T0_MS + HOUR_MS))
    return records


def stored_user(seed: Seed, app_id: str, endpoint_id: str) -> str | None:
    """The UserId of the endpoint's live row, as seeded."""
    state = seed[(app_id, endpoint_id)]
    return None if state in ("no user", "deleted", "absent") else state


# An event's parts, built once: a strategy built inside the composite is
# validated again for every event drawn, which was most of this file's time.
APP_CHOICE = st.sampled_from(APP_IDS)
ENDPOINT_CHOICE = st.sampled_from(ENDPOINT_IDS)
DAY_CHOICE = st.integers(0, STREAM_DAYS - 1)
TIME_OF_DAY = st.integers(0, DAY_MS - 1)
SESSIONS = st.one_of(
    st.none(),
    st.builds(
        Session,
        id=st.sampled_from(SESSION_IDS),
        start_timestamp=st.just("-"),
        duration_ms=st.one_of(st.none(), st.integers(0, 10**7)),
    ),
)
# Any event may carry the keys purchases and push opens read: only the
# right event type counts them.
ATTRIBUTES = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "_currency": st.sampled_from(("USD", "EUR", "")),
            "campaign_id": st.sampled_from(CAMPAIGN_IDS),
            "campaign_activity_id": st.sampled_from(("a1", "a2", "")),
            "level": st.just("3"),
        },
    ),
)
METRICS = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "_item_price": st.sampled_from((0.99, 2.5, 10.0, 0.0, 1234.56)),
            "_quantity": st.sampled_from((1.0, 2.0, 3.0, 0.5)),
            "score": st.just(7.0),
        },
    ),
)
CONTEXTS = st.one_of(st.none(), st.builds(EndpointContext, user_id=st.sampled_from((None, "", *USER_IDS))))
EVENT_TYPE_CHOICE = st.sampled_from(EVENT_TYPES)


@st.composite
def events(draw: st.DrawFn, number: int, ids: dict[tuple[str, str], int]) -> Event:
    app_id = draw(APP_CHOICE)
    endpoint_id = draw(ENDPOINT_CHOICE)
    # Event IDs repeat across endpoints and apps, never within one endpoint:
    # the key is (app, endpoint, event ID).
    serial = ids[(app_id, endpoint_id)] = ids.get((app_id, endpoint_id), -1) + 1
    millis = (DAY0 + draw(DAY_CHOICE)) * DAY_MS + draw(TIME_OF_DAY)
    session = draw(SESSIONS)
    attributes = draw(ATTRIBUTES)
    metrics = draw(METRICS)
    context = draw(CONTEXTS)
    return Event(
        app_id=app_id,
        endpoint_id=endpoint_id,
        event_id=f"ev-{serial}",
        request_id=f"req-{number}",
        received_at_ms=millis,
        event_type=draw(EVENT_TYPE_CHOICE),
        timestamp="-",
        timestamp_ms=millis,
        session=session,
        attributes=attributes,
        metrics=metrics,
        endpoint=context,
    )


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    """Events in no time order, some again (an SDK retry resends the same
    event, unchanged)."""
    stream: list[Event] = []
    ids: dict[tuple[str, str], int] = {}
    for number in range(draw(st.integers(1, 60))):
        if stream and draw(st.integers(0, 4)) == 0:
            stream.append(draw(st.sampled_from(stream)))
        else:
            stream.append(draw(events(number, ids)))
    return stream


@st.composite
def cuts(draw: st.DrawFn, length: int) -> list[tuple[int, int]]:
    points = sorted(draw(st.sets(st.integers(1, max(1, length - 1)), max_size=8)) | {0, length})
    return [(a, b) for a, b in itertools.pairwise(points) if a < b]


# The oracle.


@dataclass
class Truth:
    """One app's aggregates by brute force."""

    members: dict[str, set[tuple[int, str]]] = field(default_factory=lambda: defaultdict(set))
    sums: dict[str, Counter[tuple[int, str]]] = field(default_factory=lambda: defaultdict(Counter))
    first_days: dict[str, int] = field(default_factory=dict)


def distinct_in_window(
    stream: Iterable[Event], oldest_day: int = OLDEST_DAY, newest_day: int = NEWEST_DAY
) -> list[Event]:
    first: dict[tuple[str, str, str], Event] = {}
    for e in stream:
        if oldest_day <= kpis.day_of(e.timestamp_ms) <= newest_day:
            first.setdefault((e.app_id, e.endpoint_id, e.event_id), e)
    return list(first.values())


def oracle(stream: Iterable[Event], seed: Seed) -> dict[str, Truth]:
    truths: dict[str, Truth] = defaultdict(Truth)
    for e in distinct_in_window(stream):
        truth, day = truths[e.app_id], kpis.day_of(e.timestamp_ms)
        attributes, metrics = e.attributes or {}, e.metrics or {}
        truth.members["endpoints"].add((day, e.endpoint_id))
        named = e.endpoint.user_id if e.endpoint is not None else None
        user = named or stored_user(seed, e.app_id, e.endpoint_id)
        if user:
            truth.members["users"].add((day, user))
        if e.session is not None:
            truth.members["sessions"].add((day, e.session.id))
        truth.first_days[e.endpoint_id] = min(day, truth.first_days.get(e.endpoint_id, day))
        truth.sums["events"][(day, "")] += 1
        truth.sums["event_types"][(day, e.event_type)] += 1
        if e.event_type == "_session.stop" and e.session and e.session.duration_ms is not None:
            truth.sums["session_ms"][(day, "")] += e.session.duration_ms
            truth.sums["session_stops"][(day, "")] += 1
        if e.event_type == "_monetization.purchase":
            truth.members["paying"].add((day, e.endpoint_id))
            quantity = metrics.get("_quantity", 1.0)
            truth.sums["units"][(day, "")] += round(quantity * kpis.MICROS)
            if "_item_price" in metrics:
                # Each event's revenue rounded to millionths once.
                revenue = round(metrics["_item_price"] * quantity * kpis.MICROS)
                truth.sums["revenue"][(day, attributes.get("_currency", ""))] += revenue
        if e.event_type.startswith("_userauth."):
            kind = {"sign_in": "sign_ins", "sign_up": "sign_ups", "auth_fail": "auth_failures"}
            truth.sums[kind[e.event_type.removeprefix("_userauth.")]][(day, "")] += 1
        if e.event_type == "_campaign.opened_notification" and attributes.get("campaign_id"):
            campaign, activity = attributes["campaign_id"], attributes.get("campaign_activity_id", "")
            truth.sums[f"push_opens/{campaign}"][(day, activity)] += 1
    return truths


def truth_data(truth: Truth, kpi: Kpi, kind: str, first: int, last: int) -> KpiData:
    """What the store's read for ``kpi`` must answer, from the oracle."""
    if kpi.source == "first_days":
        per_day = Counter(day for day in truth.first_days.values() if first <= day <= last)
        return sorted((day, "", count) for day, count in per_day.items())
    if kpi.source == "members":
        if kpi.shape == "monthly":
            # Brute force: for each day, the distinct members of the 30 days ending on it.
            month = kpis.MONTH_DAYS
            per_day = Counter(
                {
                    d: len({m for day, m in truth.members[kind] if d - month < day <= d})
                    for d in range(first, last + 1)
                }
            )
            return sorted((day, "", count) for day, count in per_day.items() if count)
        members = [(day, m) for day, m in truth.members[kind] if first <= day <= last]
        return sorted((day, "", count) for day, count in Counter(day for day, _ in members).items())
    return sorted((day, grp, total) for (day, grp), total in truth.sums[kind].items() if first <= day <= last)


async def store_data(store: Store, app_id: str, kpi: Kpi, kind: str, first: int, last: int) -> KpiData:
    """The read the edge makes for ``kpi`` (ingest.kpi_api)."""
    if kpi.source == "first_days":
        return await store.kpi_new_endpoints(app_id, first, last)
    if kpi.source == "members" and kpi.shape == "monthly":
        return await store.kpi_monthly_counts(app_id, kind, first, last)
    if kpi.source == "members":
        return await store.kpi_member_counts(app_id, kind, first, last)
    return await store.kpi_sums(app_id, kind, first, last)


def every_kpi() -> list[tuple[str, Kpi, str]]:
    """(name, KPI, aggregate kind) for every app KPI and every campaign's."""
    named = [(name, kpi, kpi.kind) for name, kpi in kpis.APP_KPIS.items()]
    for campaign in CAMPAIGN_IDS:
        kind = kpis.push_opens_kind(campaign)
        named += [(f"{name}/{campaign}", kpi, kind) for name, kpi in kpis.CAMPAIGN_KPIS.items()]
    return named


async def assert_equals_oracle(
    store: Store, stream: Sequence[Event], seed: Seed, window: tuple[int, int] = WHOLE_STREAM
) -> None:
    """Every KPI of every app over ``window`` (days, inclusive; by default
    all of the stream) reads what the oracle says."""
    truths = oracle(stream, seed)
    start, end = window
    for app_id in APP_IDS:
        truth = truths[app_id]
        for name, kpi, kind in every_kpi():
            data = await store_data(store, app_id, kpi, kind, start, end)
            expected = truth_data(truth, kpi, kind, start, end)
            assert sorted(data) == expected, (app_id, name)
            divisors = expected_divisors = None
            if kpi.divisor_kind:
                sums = await store.kpi_sums(app_id, kpi.divisor_kind, start, end)
                divisors = {day: count for day, _, count in sums}
                expected_divisors = {day: n for (day, _), n in truth.sums[kpi.divisor_kind].items()}
            assert kpis.rows(kpi, start, end, data, divisors) == kpis.rows(
                kpi, start, end, expected, expected_divisors
            ), (app_id, name)


def add(total: EventOutcome, outcome: EventOutcome) -> None:
    total.aggregated += outcome.aggregated
    total.duplicates += outcome.duplicates
    total.too_old += outcome.too_old
    total.too_new += outcome.too_new


def expected_outcome(delivered: Sequence[Event], stream: Sequence[Event]) -> EventOutcome:
    too_old = sum(kpis.day_of(e.timestamp_ms) < OLDEST_DAY for e in delivered)
    too_new = sum(kpis.day_of(e.timestamp_ms) > NEWEST_DAY for e in delivered)
    aggregated = len(distinct_in_window(stream))
    return EventOutcome(aggregated, len(delivered) - too_old - too_new - aggregated, too_old, too_new)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(
    max_examples=50,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
async def test_kpis_equal_the_oracle_under_duplicates_batching_and_replay(
    backend: str, data: st.DataObject
) -> None:
    seed = data.draw(seeds(), label="endpoints")
    stream = data.draw(streams(), label="stream")
    # At-least-once: a consumer gets events up to crash_at, its successor
    # starts again from an earlier offset and goes on to the end.
    crash_at = data.draw(st.integers(0, len(stream)), label="crash at")
    delivered = stream[:crash_at] + stream[data.draw(st.integers(0, crash_at), label="restart from") :]
    batches = [delivered[a:b] for a, b in data.draw(cuts(len(delivered)), label="cuts")]

    async with fresh_store(backend) as store:
        await store.apply_endpoint_batch(offsets(seed_records(seed)))
        total = EventOutcome()
        for batch in batches:
            add(total, await store.apply_event_batch(batch, oldest_day=OLDEST_DAY, newest_day=NEWEST_DAY))
        assert total == expected_outcome(delivered, stream)
        await assert_equals_oracle(store, stream, seed)
        # A window inside the stream's days: the bounds are inclusive.
        start = data.draw(st.integers(DAY0, DAY0 + STREAM_DAYS - 1), label="window start")
        end = data.draw(st.integers(start, DAY0 + STREAM_DAYS - 1), label="window end")
        await assert_equals_oracle(store, stream, seed, (start, end))


# Monthly counts, over more days than one month window.


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seen=st.sets(st.tuples(st.integers(0, 75), st.sampled_from(ENDPOINT_IDS)), max_size=40),
    bounds=st.tuples(st.integers(-5, 80), st.integers(0, 40)),
)
async def test_monthly_counts_slide_a_day_at_a_time(
    backend: str, seen: set[tuple[int, str]], bounds: tuple[int, int]
) -> None:
    """For each asked day, the distinct endpoints of the 30 days ending on
    it, counted by the database: a member enters on its day and leaves 30
    days after its last one, at each edge of the window."""
    start, length = bounds
    async with fresh_store(backend) as store:
        events = [event(f"{day}/{ep}", endpoint_id=ep, day=DAY0 + day) for day, ep in sorted(seen)]
        await store.apply_event_batch(events, oldest_day=DAY0, newest_day=FAR_DAY)
        got = await store.kpi_monthly_counts("app-a", "endpoints", DAY0 + start, DAY0 + start + length)
    expected = []
    for d in range(start, start + length + 1):
        members = {ep for day, ep in seen if d - kpis.MONTH_DAYS < day <= d}
        if members:
            expected.append((DAY0 + d, "", len(members)))
    assert got == expected


# Expiry.


def day_events(days: Iterable[int], per_day: int = 3) -> list[Event]:
    return [
        event(f"ev-{day}-{i}", endpoint_id=f"ep-{i}", day=day, session=Session(f"s-{day}", "-"))
        for day in days
        for i in range(per_day)
    ]


async def test_expiry_drops_exactly_the_days_before_the_cut(store: Store) -> None:
    days = range(DAY0, DAY0 + 5)
    await store.apply_event_batch(day_events(days), oldest_day=DAY0, newest_day=FAR_DAY)
    assert await store.expire_event_marks(before_day=DAY0 + 2) == 6
    assert await store.expire_event_marks(before_day=DAY0 + 2) == 0
    # The aggregates stay.
    events_per_day = [(day, "", 3) for day in days]
    assert await store.kpi_sums("app-a", "events", DAY0, DAY0 + 4) == events_per_day

    # Kept days: still duplicates. Expired days: their marks are gone, so
    # with the window moved back they would count again.
    kept = await store.apply_event_batch(day_events(days[2:]), oldest_day=DAY0, newest_day=FAR_DAY)
    assert kept == EventOutcome(aggregated=0, duplicates=9, too_old=0)
    expired = await store.apply_event_batch(day_events(days[:2]), oldest_day=DAY0, newest_day=FAR_DAY)
    assert expired == EventOutcome(aggregated=6, duplicates=0, too_old=0)
    # As the worker runs it, the window has moved: they are too old.
    late = await store.apply_event_batch(day_events(days[:2]), oldest_day=DAY0 + 2, newest_day=FAR_DAY)
    assert late == EventOutcome(aggregated=0, duplicates=0, too_old=6)


async def test_postgres_expiry_drops_whole_partitions() -> None:
    async with postgres_schema() as url:
        store = await PostgresStore.open(url)
        admin = await asyncpg.connect(url)
        try:
            days = range(DAY0, DAY0 + 4)
            await store.apply_event_batch(day_events(days), oldest_day=DAY0, newest_day=FAR_DAY)

            async def partitions() -> list[str]:
                rows = await admin.fetch(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'event_marks'::regclass ORDER BY 1"
                )
                return [row["relname"] for row in rows]

            names = ["event_marks_" + kpis.iso_day(day).replace("-", "") for day in days]
            assert await partitions() == names
            assert await store.expire_event_marks(before_day=DAY0 + 1) == 3
            assert await partitions() == names[1:]
            # A day seen again after its partition went gets a new one.
            assert (
                await store.apply_event_batch(day_events([DAY0]), oldest_day=DAY0, newest_day=FAR_DAY)
            ).aggregated == 3
            assert await partitions() == names
            # A day after the window's end gets none: its events are too new.
            after = DAY0 + 4
            too_new = await store.apply_event_batch(
                day_events([after]), oldest_day=DAY0, newest_day=after - 1
            )
            assert too_new == EventOutcome(too_new=3)
            assert await partitions() == names
        finally:
            await admin.close()
            await store.close()


# Failures: nothing of a failed batch is written.


async def test_nul_in_an_id(store: Store) -> None:
    """SQLite stores NUL; PostgreSQL text cannot: an event batch writing one
    is a non-retriable StoreError (as an endpoint batch is), nothing of it is
    written, and reads looking one up find nothing."""
    clean = [event("ev-1"), event("ev-2", endpoint_id="ep-1")]
    bad = [
        event("e\x00v"),
        event("ev-3", endpoint_id="e\x00p"),
        event("ev-3", app_id="a\x00"),
        # Written after the marks, by the members statement.
        event("ev-4", session=Session("s\x00", "-")),
    ]
    if isinstance(store, PostgresStore):
        for one in bad:
            with pytest.raises(StoreError) as caught:
                await store.apply_event_batch([*clean, one], oldest_day=DAY0, newest_day=FAR_DAY)
            assert caught.value.retriable is False
        assert await store.kpi_sums("app-a", "events", DAY0, DAY0) == []
        assert await store.kpi_member_counts("a\x00", "endpoints", DAY0, DAY0) == []
        assert await store.kpi_members("app-a", "sessions\x00", DAY0, DAY0) == []
        assert await store.kpi_sums("a\x00", "events", DAY0, DAY0) == []
        assert await store.kpi_new_endpoints("a\x00", DAY0, DAY0) == []
    else:
        assert (await store.apply_event_batch(bad, oldest_day=DAY0, newest_day=FAR_DAY)).aggregated == 4
        assert await store.kpi_member_counts("a\x00", "endpoints", DAY0, DAY0) == [(DAY0, "", 1)]
        assert await store.kpi_members("app-a", "sessions", DAY0, DAY0) == [(DAY0, "s\x00", 1)]
        assert await store.kpi_new_endpoints("app-a", DAY0, DAY0) == [(DAY0, "", 2)]
    # The clean events were never marked by the failed batches.
    assert (await store.apply_event_batch(clean, oldest_day=DAY0, newest_day=FAR_DAY)).aggregated == 2


def purchase(event_id: str, price: float, *, endpoint_id: str = "ep-0") -> Event:
    return event(
        event_id,
        endpoint_id=endpoint_id,
        event_type="_monetization.purchase",
        metrics={"_item_price": price},
        attributes={"_currency": "USD"},
    )


async def test_a_total_out_of_range_fails_the_batch_and_writes_nothing(store: Store) -> None:
    """9e18 millionths fit a 64-bit total; 9.3e18 does not. The second batch
    fails at its sums, after its marks and members: nothing of it stays, and
    it is not retriable (retrying cannot help). Each purchase is at the
    largest amount summed (kpis.MAX_AMOUNT)."""
    top = kpis.MAX_AMOUNT
    first = [purchase(f"p-{n}", top) for n in range(9000)]
    assert (await store.apply_event_batch(first, oldest_day=DAY0, newest_day=FAR_DAY)).aggregated == 9000
    other = event("ev-1", endpoint_id="ep-new", session=Session("s-new", "-"))
    more = [purchase(f"q-{n}", top, endpoint_id="ep-1") for n in range(300)]
    with pytest.raises(StoreError) as caught:
        await store.apply_event_batch([other, *more], oldest_day=DAY0, newest_day=FAR_DAY)
    assert caught.value.retriable is False
    assert await store.kpi_sums("app-a", "revenue", DAY0, DAY0) == [(DAY0, "USD", 9 * 10**18)]
    assert await store.kpi_sums("app-a", "events", DAY0, DAY0) == [(DAY0, "", 9000)]
    assert await store.kpi_member_counts("app-a", "sessions", DAY0, DAY0) == []
    assert await store.kpi_new_endpoints("app-a", DAY0, DAY0) == [(DAY0, "", 1)]
    assert (await store.apply_event_batch([other], oldest_day=DAY0, newest_day=FAR_DAY)).aggregated == 1

    # One event past the amounts summed, or past the float range: counted as
    # an event, left out of the revenue, and its batch is written.
    for n, price in enumerate((1e20, 1e308)):
        huge = event(f"r-{n}", event_type="_monetization.purchase", metrics={"_item_price": price})
        assert (await store.apply_event_batch([huge], oldest_day=DAY0, newest_day=FAR_DAY)).aggregated == 1
    assert await store.kpi_sums("app-a", "revenue", DAY0, DAY0) == [(DAY0, "USD", 9 * 10**18)]


async def test_user_of_an_event(store: Store) -> None:
    """The endpoint context's UserId, else the endpoint's live one; an empty
    context UserId names none; a deleted endpoint has none."""
    await store.apply_endpoint_batch(
        offsets(
            [
                upsert("ep-0", user_id="stored-0"),
                upsert("ep-1", user_id="stored-1"),
                upsert("ep-2", user_id="stored-2"),
                delete("ep-2", received_at_ms=T0_MS + HOUR_MS),
            ]
        )
    )
    await store.apply_event_batch(
        [
            event("a", endpoint_id="ep-0", endpoint=EndpointContext(user_id="named")),
            event("b", endpoint_id="ep-1", endpoint=EndpointContext(user_id="")),
            event("c", endpoint_id="ep-2"),
            event("d", endpoint_id="ep-3", endpoint=EndpointContext()),
        ],
        oldest_day=DAY0,
        newest_day=FAR_DAY,
    )
    assert await store.kpi_members("app-a", "users", DAY0, DAY0) == [
        (DAY0, "named", 1),
        (DAY0, "stored-1", 1),
    ]


# SQLite query plans.


KPI_RANGE = "(app_id=? AND kind=? AND day>? AND day<?)"


@pytest.mark.parametrize(
    ("query", "search"),
    [
        (sql.KPI_MEMBER_COUNTS, f"SEARCH kpi_members USING PRIMARY KEY {KPI_RANGE}"),
        (sql.KPI_MEMBERS, f"SEARCH kpi_members USING PRIMARY KEY {KPI_RANGE}"),
        (sql.KPI_SUMS, f"SEARCH kpi_sums USING PRIMARY KEY {KPI_RANGE}"),
        (
            sql.KPI_NEW_ENDPOINTS,
            "SEARCH kpi_first_days USING COVERING INDEX kpi_first_days_by_day (app_id=? AND day>? AND day<?)",
        ),
        (store_module.EXPIRE_MARKS, "SEARCH event_marks USING PRIMARY KEY (day<?)"),
        (
            store_module.EVENT_USERS.format("?, ?, ?"),
            "SEARCH endpoints USING PRIMARY KEY (app_id=? AND endpoint_id=?)",
        ),
    ],
    ids=["member-counts", "members", "sums", "new-endpoints", "expire-marks", "event-users"],
)
def test_every_kpi_query_searches_an_index(query: str, search: str) -> None:
    """Each KPI query is one search of a key range, read in the order it
    answers (no temporary B-tree for GROUP BY or ORDER BY), whatever the
    statistics (none here, the worst case)."""
    db = sqlite3.connect(":memory:")
    for migration in store_module.MIGRATIONS:
        db.execute(migration)
    rows = [(kind, day, f"m{i}") for kind in ("endpoints", "users") for day in range(40) for i in range(25)]
    db.executemany("INSERT INTO kpi_members VALUES ('app-a', ?, ?, ?)", rows)
    db.executemany("INSERT INTO kpi_sums VALUES ('app-a', ?, ?, ?, 1)", rows)
    db.executemany(
        "INSERT INTO kpi_first_days VALUES ('app-a', ?, ?)", [(f"e{i}", i % 40) for i in range(1000)]
    )
    db.executemany(
        "INSERT INTO event_marks VALUES (?, 'app-a', 'e', ?)", [(i % 40, str(i)) for i in range(1000)]
    )
    plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + query, ["x"] * query.count("?"))]
    assert plan == [search]


def test_monthly_counts_read_the_members_once_by_key() -> None:
    """The monthly read touches kpi_members in one key-range search (the
    rest works on what that search found), and no row comes back per member."""
    db = sqlite3.connect(":memory:")
    for migration in store_module.MIGRATIONS:
        db.execute(migration)
    params = ("a", "k", 0, 60, kpis.MONTH_DAYS)
    plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + store_module.KPI_MONTHLY_STEPS, params)]
    assert [step for step in plan if "kpi_members" in step] == [
        f"SEARCH kpi_members USING PRIMARY KEY {KPI_RANGE}"
    ]


# PostgreSQL only: concurrent workers.


async def apply_retrying(store: Store, batch: Sequence[Event], retries: list[StoreError]) -> EventOutcome:
    """What the KPI worker does: retry retriable errors."""
    while True:
        try:
            return await store.apply_event_batch(batch, oldest_day=OLDEST_DAY, newest_day=NEWEST_DAY)
        except StoreError as exc:
            if not exc.retriable:
                raise
            retries.append(exc)
            await asyncio.sleep(0.01)


async def test_concurrent_workers_lose_no_addition() -> None:
    """Four processes writing batches at once, each batch's events in random
    order, all adding to the same sums and users and all needing the same
    new partitions: the aggregates are exactly the oracle's, and no batch
    deadlocks (row locks are taken in key order)."""
    rng = random.Random(11)
    seed: Seed = {(a, e): rng.choice(("u1", "u2", "absent")) for a in APP_IDS for e in ENDPOINT_IDS}
    # Two days, so batches share most of their sums rows.
    stream = [
        event(
            f"ev-{i}",
            app_id=rng.choice(APP_IDS),
            endpoint_id=rng.choice(ENDPOINT_IDS),
            day=DAY0 + 1 + rng.randrange(2),
            event_type=rng.choice(EVENT_TYPES),
            session=Session(rng.choice(SESSION_IDS), "-", duration_ms=rng.randrange(1000)),
            attributes={"campaign_id": "c1", "campaign_activity_id": rng.choice(("a1", "a2"))},
            metrics={"_item_price": 1.5},
            endpoint=EndpointContext(user_id=rng.choice((None, *USER_IDS))),
        )
        for i in range(1600)
    ]
    batches = [stream[i : i + 40] for i in range(0, len(stream), 40)]
    async with postgres_schema() as url:
        stores = [await PostgresStore.open(url) for _ in range(4)]
        try:
            await stores[0].apply_endpoint_batch(offsets(seed_records(seed)))
            retries: list[StoreError] = []
            outcomes = await asyncio.gather(
                *(
                    apply_retrying(stores[i % 4], rng.sample(batch, len(batch)), retries)
                    for i, batch in enumerate(batches + batches[:5])  # a few sent twice
                )
            )
            assert sum(o.aggregated for o in outcomes) == len(stream)
            assert sum(o.duplicates for o in outcomes) == 5 * 40
            # (Retries for other reasons: the shared test server may restart.)
            assert [e for e in retries if "Deadlock" in str(e)] == []
            await assert_equals_oracle(stores[0], stream, seed)
        finally:
            for opened in stores:
                await opened.close()


async def test_a_new_day_does_not_wait_for_batches_in_flight() -> None:
    """A batch making a day's partition (ATTACH PARTITION: SHARE UPDATE
    EXCLUSIVE on event_marks) goes through while another batch holds ROW
    EXCLUSIVE on it; ``CREATE TABLE … PARTITION OF`` would wait for it."""
    async with postgres_schema() as url:
        store = await PostgresStore.open(url)
        other = await asyncpg.connect(url)
        try:
            await store.apply_event_batch([event("ev-1", day=DAY0)], oldest_day=DAY0, newest_day=FAR_DAY)
            async with other.transaction():
                await other.execute("LOCK TABLE ONLY event_marks IN ROW EXCLUSIVE MODE")
                await other.execute("INSERT INTO event_marks VALUES ($1, 'app-a', 'ep-9', 'x')", DAY0)
                async with asyncio.timeout(5):
                    outcome = await store.apply_event_batch(
                        [event("ev-2", day=DAY0 + 1)], oldest_day=DAY0, newest_day=FAR_DAY
                    )
            assert outcome.aggregated == 1
        finally:
            await other.close()
            await store.close()


async def test_a_detected_deadlock_is_retriable_and_writes_nothing() -> None:
    """Another transaction holds a sums row the batch needs, then waits for
    a mark the batch wrote: PostgreSQL aborts the batch (the first to wait),
    which is a retriable StoreError; the retry then counts the event once."""
    async with postgres_schema() as url:
        store = await PostgresStore.open(url)
        other = await asyncpg.connect(url)
        try:
            await store.apply_event_batch(
                [event("ev-1", day=OLDEST_DAY)], oldest_day=OLDEST_DAY, newest_day=FAR_DAY
            )
            blocker = other.transaction()
            await blocker.start()
            # The other side only notices the deadlock much later.
            await other.execute("SET LOCAL deadlock_timeout = '30s'")
            await other.execute("UPDATE kpi_sums SET total = total WHERE kind = 'events'")
            batch = asyncio.create_task(
                store.apply_event_batch(
                    [event("ev-2", day=OLDEST_DAY)], oldest_day=OLDEST_DAY, newest_day=FAR_DAY
                )
            )
            # Until the batch waits for the sums row.
            for _ in range(500):
                if await other.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
                ):
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the batch never waited for the locked sums row")
            mark = asyncio.create_task(
                other.execute(
                    "INSERT INTO event_marks VALUES ($1, 'app-a', 'ep-0', 'ev-2') ON CONFLICT DO NOTHING",
                    OLDEST_DAY,
                )
            )
            with pytest.raises(StoreError) as caught:
                await batch
            assert caught.value.retriable is True
            assert "Deadlock" in str(caught.value)
            await mark
            await blocker.rollback()
            retried = await store.apply_event_batch(
                [event("ev-2", day=OLDEST_DAY)], oldest_day=OLDEST_DAY, newest_day=FAR_DAY
            )
            assert retried.aggregated == 1
            assert await store.kpi_sums("app-a", "events", OLDEST_DAY, OLDEST_DAY) == [(OLDEST_DAY, "", 2)]
        finally:
            await other.close()
            await store.close()


@pytest.mark.parametrize("price", [1e200, float("inf"), -2e9])
def test_an_absurd_purchase_is_left_out_of_the_sums_not_its_batch(price: float) -> None:
    event = Event(
        "app",
        "ep",
        "e1",
        "r",
        0,
        "_monetization.purchase",
        "1970-01-01T00:00:00Z",
        0,
        metrics={"_item_price": price, "_quantity": 1e200},
    )
    added = kpis.effects([(event, None)])
    assert ("app", "revenue", 0, "") not in added.sums
    assert ("app", "units", 0, "") not in added.sums
    assert added.sums[("app", "events", 0, "")] == 1
    assert ("app", "paying", 0, "ep") in added.members
