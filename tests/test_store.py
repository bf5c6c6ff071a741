"""The store on both backends: SQLite in a temp dir and the test PostgreSQL
(tests/postgres.py, the conftest's ``postgres_url``). Each
store gets a fresh database: a new SQLite file, or a new PostgreSQL schema
dropped afterwards.

The property test drives both backends with arbitrary batch cuts and Kafka
style redelivery, and holds each to a brute-force oracle that applies the
stream once, record by record, with the 15-per-user rule after each record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
import sqlite3
import tempfile
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ingest.errors import StoreError
from ingest.folds import endpoints
from ingest.folds.endpoints import BatchOutcome, EndpointRecord, EndpointState, iso_ms
from ingest.kafka.broker import free_port
from ingest.records.codec import MAX_MS, MIN_MS
from ingest.records.values import Demographic, EndpointDelete, EndpointUpsert
from ingest.store import sql
from ingest.store import sqlite as store_module
from ingest.store.base import App, ApplicationSettings, EventStream, Store
from ingest.store.postgres import MIGRATIONS as PG_MIGRATIONS
from ingest.store.postgres import PostgresStore
from ingest.store.sqlite import SqliteStore, identity_file
from tests import postgres

BACKENDS = ("sqlite", "postgres")
T0_MS = 1_700_000_000_000
HOUR_MS = 3_600_000


def postgres_url() -> str:
    # What the conftest's fixture returns, for the helpers below that are
    # called from inside tests (Hypothesis examples) rather than as fixtures.
    return postgres.session_url()


def with_search_path(url: str, schema: str) -> str:
    # asyncpg passes unknown URL parameters to the server as settings.
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A new empty schema; yields the URL whose search_path is that schema."""
    url = postgres_url()
    schema = f"test_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield with_search_path(url, schema)
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


@contextlib.asynccontextmanager
async def fresh_store(backend: str) -> AsyncIterator[Store]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="ingest-store-") as tmp:
            sqlite = await SqliteStore.open(Path(tmp) / "ingest.sqlite3")
            try:
                yield sqlite
            finally:
                await sqlite.close()
        return
    async with postgres_schema() as url:
        postgres = await PostgresStore.open(url)
        try:
            yield postgres
        finally:
            await postgres.close()


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with fresh_store(request.param) as opened:
        yield opened


def upsert(
    endpoint_id: str,
    *,
    app_id: str = "app-a",
    received_at_ms: int | None = None,
    effective_ms: int | None = None,
    user_id: str | None = None,
    request_id: str = "req",
    **members: object,
) -> EndpointUpsert:
    return EndpointUpsert(
        app_id=app_id,
        endpoint_id=endpoint_id,
        request_id=request_id,
        # Received when it was effective unless said otherwise: an
        # EffectiveDate after the receive time counts as the receive time.
        received_at_ms=received_at_ms or effective_ms or T0_MS,
        source="UPDATE_ENDPOINT",
        effective_date=None if effective_ms is None else iso_ms(effective_ms),
        effective_date_ms=effective_ms,
        user_id=user_id,
        **members,  # type: ignore[arg-type]
    )


def delete(endpoint_id: str, *, app_id: str = "app-a", received_at_ms: int = T0_MS) -> EndpointDelete:
    return EndpointDelete(app_id, endpoint_id, "req-delete", received_at_ms)


def offsets(records: Sequence[EndpointRecord], start: int = 0) -> list[tuple[EndpointRecord, int]]:
    return [(record, offset) for offset, record in enumerate(records, start=start)]


# Apps.


def app(app_id: str) -> App:
    return App(
        id=app_id,
        name=f"name {app_id}",
        arn=f"arn:aws:mobiletargeting:us-east-1:000000000000:apps/{app_id}",
        tags={"team": "ingest", "ü": "ß"},
        creation_date="2024-01-02T03:04:05.678Z",
    )


async def test_apps_create_get_list_delete(store: Store) -> None:
    # Byte order, not a locale's: "B" < "a" < "b" < "é".
    ids = ["b", "a", "é", "B", "a1", "c"]
    for app_id in ids:
        await store.create_app(app(app_id))
    assert await store.get_app("a") == app("a")
    assert await store.get_app("missing") is None

    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = await store.list_apps(after=after, limit=4)
        pages.append([a.id for a in page])
        if len(page) < 4:
            break
        after = page[-1].id
    assert pages == [["B", "a", "a1", "b"], ["c", "é"]]
    assert list(await store.list_apps(after=None, limit=100)) == [app(i) for i in sorted(ids)]

    assert await store.delete_app("a1") == app("a1")
    assert await store.delete_app("a1") is None
    assert await store.get_app("a1") is None
    assert [a.id for a in await store.list_apps(after="a", limit=10)] == ["b", "c", "é"]


async def test_duplicate_app_is_not_retriable(store: Store) -> None:
    await store.create_app(app("a"))
    with pytest.raises(StoreError) as caught:
        await store.create_app(app("a"))
    assert caught.value.retriable is False


# Tags, event streams and application settings.


def stream(app_id: str, *, name: str = "s", external_id: str | None = None, by: str = "AKIAX") -> EventStream:
    return EventStream(
        app_id=app_id,
        destination_arn=f"arn:aws:kinesis:us-east-1:123456789012:stream/{name}",
        role_arn="arn:aws:iam::123456789012:role/r",
        external_id=external_id,
        last_modified="2024-01-02T03:04:05.678Z",
        last_updated_by=by,
    )


async def test_app_tags_are_replaced_and_compared_before_they_are(store: Store) -> None:
    await store.create_app(app("a"))
    tagged = await store.set_app_tags("a", {"x": "1", "ü": "ß"})
    assert tagged == dataclasses.replace(app("a"), tags={"x": "1", "ü": "ß"})
    assert await store.get_app("a") == tagged
    # Expected tags that are no longer the app's: nothing written, the app as it is.
    assert await store.set_app_tags("a", {"y": "2"}, expected={"team": "ingest"}) == tagged
    assert await store.get_app("a") == tagged
    assert (await store.set_app_tags("a", {}, expected={"x": "1", "ü": "ß"})) == dataclasses.replace(
        app("a"), tags={}
    )
    assert (await store.get_app("a")) == dataclasses.replace(app("a"), tags={})
    assert await store.set_app_tags("missing", {"x": "1"}) is None
    assert await store.set_app_tags("nul\x00", {"x": "1"}) is None


async def test_one_event_stream_an_app_replaced_by_a_put(store: Store) -> None:
    for app_id in ("b", "a", "é"):
        await store.create_app(app(app_id))
    assert await store.get_event_stream("a") is None
    assert await store.put_event_stream(stream("a"))
    assert await store.put_event_stream(stream("b", external_id="ext-1"))
    assert await store.get_event_stream("a") == stream("a")
    replaced = stream("a", name="other", external_id="e2", by="AKIAY")
    assert await store.put_event_stream(replaced)
    assert await store.get_event_stream("a") == replaced
    assert await store.put_event_stream(stream("é"))
    assert list(await store.list_event_streams()) == [replaced, stream("b", external_id="ext-1"), stream("é")]

    assert await store.delete_event_stream("a") == replaced
    assert await store.delete_event_stream("a") is None
    assert await store.get_event_stream("a") is None
    assert [s.app_id for s in await store.list_event_streams()] == ["b", "é"]


async def test_a_stream_or_settings_of_an_app_that_does_not_exist_are_not_written(store: Store) -> None:
    settings = ApplicationSettings("missing", {"Limits": {"Daily": 1}}, "2024-01-02T03:04:05.678Z")
    assert not await store.put_event_stream(stream("missing"))
    assert not await store.put_application_settings(settings)
    assert not await store.put_event_stream(stream("nul\x00"))
    assert await store.list_event_streams() == []
    assert await store.get_application_settings("missing") is None
    assert await store.get_event_stream("nul\x00") is None
    assert await store.delete_event_stream("nul\x00") is None
    assert await store.get_application_settings("nul\x00") is None


async def test_application_settings_round_trip_and_are_replaced(store: Store) -> None:
    await store.create_app(app("a"))
    assert await store.get_application_settings("a") is None
    first = ApplicationSettings(
        "a",
        {
            "CampaignHook": {"LambdaFunctionName": "lfn", "Mode": "FILTER"},
            "Limits": {"Daily": 42},
            "ü": "\x00",
        },
        "2024-01-02T03:04:05.678Z",
    )
    assert await store.put_application_settings(first)
    assert await store.get_application_settings("a") == first
    second = ApplicationSettings(
        "a", {"QuietTime": {"Start": "22:00", "End": "06:30"}}, "2024-01-03T00:00:00.000Z"
    )
    assert await store.put_application_settings(second)
    assert await store.get_application_settings("a") == second


async def test_delete_app_deletes_its_stream_and_settings_and_no_other(store: Store) -> None:
    for app_id in ("gone", "kept"):
        await store.create_app(app(app_id))
        assert await store.put_event_stream(stream(app_id))
        assert await store.put_application_settings(
            ApplicationSettings(app_id, {}, "2024-01-02T03:04:05.678Z")
        )
    assert await store.delete_app("gone") == app("gone")
    assert await store.get_event_stream("gone") is None
    assert await store.get_application_settings("gone") is None
    assert list(await store.list_event_streams()) == [stream("kept")]
    assert await store.get_application_settings("kept") is not None


async def test_a_put_racing_delete_app_never_leaves_a_stream_behind(store: Store) -> None:
    # Either the put comes first (and DeleteApp deletes its row) or the
    # delete does (and the put writes nothing): never a stream without an app.
    for round_ in range(20):
        app_id = f"race-{round_}"
        await store.create_app(app(app_id))
        put, deleted = await asyncio.gather(store.put_event_stream(stream(app_id)), store.delete_app(app_id))
        assert deleted == app(app_id)
        assert await store.get_event_stream(app_id) is None, put
    assert await store.list_event_streams() == []


# Endpoint rules.


async def test_sixteenth_endpoint_deactivates_the_oldest(store: Store) -> None:
    records = [
        upsert(f"ep-{i:02d}", user_id="u1", effective_ms=T0_MS + i * HOUR_MS, address=f"a{i}")
        for i in range(16)
    ]
    outcome = await store.apply_endpoint_batch(offsets(records))
    assert outcome.deactivated == 1

    oldest = await store.get_endpoint("app-a", "ep-00")
    assert oldest is not None
    assert oldest.document["EndpointStatus"] == "INACTIVE"
    assert oldest.user_id is None
    assert "User" not in oldest.document
    assert oldest.document["Address"] == "a0"
    live = await store.user_endpoints("app-a", "u1")
    assert [s.endpoint_id for s in live] == [f"ep-{i:02d}" for i in range(1, 16)]
    assert all(s.document["EndpointStatus"] == "ACTIVE" for s in live)


async def test_sixteenth_endpoint_across_batches(store: Store) -> None:
    # The newest arrives first (offline devices sending late): the one
    # arriving 16th is itself the oldest.
    records = [
        upsert(
            f"ep-{i:02d}",
            user_id="u1",
            received_at_ms=T0_MS + 20 * HOUR_MS,
            effective_ms=T0_MS + (16 - i) * HOUR_MS,
        )
        for i in range(16)
    ]
    for offset, record in enumerate(records):
        await store.apply_endpoint_batch([(record, offset)])
    assert len(await store.user_endpoints("app-a", "u1")) == 15
    last = await store.get_endpoint("app-a", "ep-15")
    assert last is not None
    assert last.user_id is None
    assert last.document["EndpointStatus"] == "INACTIVE"


async def test_delete_then_older_upsert_stays_deleted(store: Store) -> None:
    await store.apply_endpoint_batch(offsets([upsert("ep", user_id="u1", received_at_ms=T0_MS)]))
    await store.apply_endpoint_batch(offsets([delete("ep", received_at_ms=T0_MS + HOUR_MS)], start=1))
    assert await store.get_endpoint("app-a", "ep") is None
    assert await store.user_endpoints("app-a", "u1") == []

    older = upsert("ep", user_id="u1", received_at_ms=T0_MS + 2 * HOUR_MS, effective_ms=T0_MS + 30 * 60_000)
    outcome = await store.apply_endpoint_batch(offsets([older], start=2))
    assert outcome.superseded == 1
    assert await store.get_endpoint("app-a", "ep") is None
    assert await store.user_endpoints("app-a", "u1") == []


async def test_delete_then_newer_upsert_recreates(store: Store) -> None:
    await store.apply_endpoint_batch(offsets([upsert("ep", user_id="u1", address="old")]))
    first = await store.get_endpoint("app-a", "ep")
    assert first is not None
    await store.apply_endpoint_batch(offsets([delete("ep", received_at_ms=T0_MS + HOUR_MS)], start=1))

    newer = upsert("ep", received_at_ms=T0_MS + 2 * HOUR_MS, channel_type="GCM")
    outcome = await store.apply_endpoint_batch(offsets([newer], start=2))
    assert outcome.applied == 1
    again = await store.get_endpoint("app-a", "ep")
    assert again is not None
    assert again.creation_date == iso_ms(T0_MS + 2 * HOUR_MS) != first.creation_date
    # Nothing of the deleted endpoint survives.
    assert dict(again.document) == {"ChannelType": "GCM", "EndpointStatus": "ACTIVE"}
    assert await store.user_endpoints("app-a", "u1") == []


async def test_document_round_trips_exactly(store: Store) -> None:
    attributes = {"nul": ["a\x00b"], "emoji": ["\U0001f600"], "": [""]}
    metrics = {"huge": 1e300, "tiny": 5e-324, "neg": -0.0, "int-like": 2.0}
    await store.apply_endpoint_batch(offsets([upsert("ep", attributes=attributes, metrics=metrics)]))
    state = await store.get_endpoint("app-a", "ep")
    assert state is not None
    assert state.document["Attributes"] == attributes
    assert list(state.document["Metrics"]) == list(metrics)
    assert [repr(v) for v in state.document["Metrics"].values()] == [repr(v) for v in metrics.values()]


async def test_get_endpoints_answers_the_live_ones_among_its_keys(store: Store) -> None:
    """Across apps, past a query's chunk (1000 keys on each backend), with
    repeats, unknown, deleted and NUL keys among them: each live endpoint
    as get_endpoint reads it, the rest left out."""
    many = [upsert(f"ep-{i:04d}", address=f"a{i}") for i in range(2500)]
    others = [upsert("ep-0001", app_id="app-b", user_id="u1"), upsert("gone", app_id="app-b")]
    await store.apply_endpoint_batch(offsets([*many, *others]))
    await store.apply_endpoint_batch(offsets([delete("gone", app_id="app-b")], start=len(many) + 2))
    live = [("app-a", f"ep-{i:04d}") for i in range(0, 2500, 2)] + [("app-b", "ep-0001")]
    keys = [
        *live,
        *live[:10],
        ("app-b", "gone"),
        ("app-b", "ep-0002"),
        ("app-c", "ep-0001"),
        ("app-a", "e\x00p"),
    ]

    found = await store.get_endpoints(keys)
    assert found == {key: await store.get_endpoint(*key) for key in live}
    assert found[("app-b", "ep-0001")].user_id == "u1"
    assert found[("app-a", "ep-2498")].document["Address"] == "a2498"
    assert await store.get_endpoints([]) == {}
    assert await store.get_endpoints([("app-b", "gone"), ("nul\x00", "x")]) == {}


async def test_nul_in_an_id(store: Store) -> None:
    """SQLite stores NUL in an ID; PostgreSQL text cannot, so the write is a
    non-retriable error (the worker dead-letters it). Reads agree."""
    assert await store.get_endpoint("app-a", "e\x00p") is None
    assert await store.user_endpoints("app-a", "u\x00") == []
    assert await store.get_app("a\x00") is None
    assert await store.delete_app("a\x00") is None
    for app_id in ("a", "a\x01", "b"):
        await store.create_app(app(app_id))
    assert [a.id for a in await store.list_apps(after="a\x00z", limit=10)] == ["a\x01", "b"]

    write = offsets([upsert("e\x00p", user_id="u")])
    if isinstance(store, PostgresStore):
        with pytest.raises(StoreError) as caught:
            await store.apply_endpoint_batch(write)
        assert caught.value.retriable is False
    else:
        await store.apply_endpoint_batch(write)
        assert await store.get_endpoint("app-a", "e\x00p") is not None


# SQLite query plans.

PRIMARY_KEY = "SEARCH endpoints USING PRIMARY KEY (app_id=? AND endpoint_id=?)"
USER_INDEX = "INDEX endpoints_by_user (app_id=? AND user_id=?)"


@pytest.mark.parametrize(
    ("query", "search"),
    [
        (sql.GET_ENDPOINT, PRIMARY_KEY),
        (store_module.LOAD_ENDPOINTS.format("?, ?, ?"), PRIMARY_KEY),
        (store_module.LIVE_ENDPOINTS.format("?, ?, ?"), PRIMARY_KEY),
        (store_module.USER_ENDPOINTS, f"SEARCH endpoints USING {USER_INDEX}"),
        (store_module.USER_MEMBERS, f"SEARCH endpoints USING {USER_INDEX}"),
        (store_module.COUNT_USERS.format("?, ?, ?"), f"SEARCH endpoints USING COVERING {USER_INDEX}"),
    ],
    ids=["get", "load-batch", "get-endpoints", "user-endpoints", "user-members", "count-users"],
)
def test_every_endpoint_query_searches_an_index(query: str, search: str) -> None:
    """No endpoint query reads the table or a whole app: each is an index
    search, whatever the statistics (none here, the worst case)."""
    db = sqlite3.connect(":memory:")
    for migration in store_module.MIGRATIONS:
        db.execute(migration)
    db.executemany(
        "INSERT INTO endpoints VALUES (?, ?, ?, 0, 0, 0, '', '', '', '{}')",
        [("app-a", f"ep-{i}", f"u{i // 3}") for i in range(1000)],
    )
    plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + query, ["x"] * query.count("?"))]
    assert plan[0] == search, plan


# The property: both backends do exactly what the pure fold and the user
# rule say, for any batching and any replay.

APP_IDS = ("app-a", "app-b")
USER_IDS = ("u1", "u2", "")
ENDPOINT_IDS = tuple(f"ep-{i:02d}" for i in range(20))
# The receive time moves forward a minute a record; EffectiveDates fall up to
# an hour either side of it, so older and newer writes interleave.
MINUTE_MS = 60_000

States = dict[tuple[str, str], EndpointState]
Snapshot = tuple[dict[tuple[str, str], EndpointState | None], dict[tuple[str, str], list[EndpointState]]]


# An upsert's parts, drawn by sampled_from and integers from strategies built
# once: one_of and dictionaries draws, built inside the composite, were most
# of the property tests' time.
# Its UserId: absent half the time, else one of USER_IDS.
USER_CHOICE = st.sampled_from((None, None, None, *USER_IDS))
# Past the hour after the receive time, a drawn EffectiveDate stands for
# none: about half the upserts have one.
EFFECTIVE_NONE_SPAN = 2 * HOUR_MS
STATUS_CHOICE = st.sampled_from((None, None, "ACTIVE", "INACTIVE"))
# Attributes and metrics an upsert may carry: None is "not sent", {} "sent
# empty"; keys overlap so writes merge. Copied for each upsert (the fold's
# states keep what they are given).
ATTRIBUTE_CHOICE = st.sampled_from(
    (
        None,
        None,
        {},
        {"x": ("p",)},
        {"x": ("p", "q")},
        {"x": ()},
        {"y": ("q",), "z": ("p", "p")},
        {"x": ("q",), "z": ()},
        {"x": ("q", "p"), "y": ()},
    )
)
# Metric names; each upsert's values are its index.
METRIC_CHOICE = st.sampled_from((None, None, (), ("m",), ("n",), ("m", "n")))


@st.composite
def streams(draw: st.DrawFn) -> list[EndpointRecord]:
    """Mostly: two apps, 6 endpoint IDs, so records collide. A crowd: one
    app, and 15 to 20 endpoints that each join user u1 at some point among
    the other records, so the 15-per-user rule triggers."""
    crowd = draw(st.booleans())
    app_ids = APP_IDS[:1] if crowd else APP_IDS
    endpoint_ids = ENDPOINT_IDS if crowd else ENDPOINT_IDS[:6]
    records: list[EndpointRecord] = []

    def add(endpoint_id: str | None = None, user_id: str | None = None) -> None:
        i = len(records)  # one record a minute
        received = T0_MS + i * MINUTE_MS
        app_id = draw(st.sampled_from(app_ids))
        if endpoint_id is None:
            endpoint_id = draw(st.sampled_from(endpoint_ids))
            if draw(st.integers(0, 9)) == 0:
                records.append(EndpointDelete(app_id, endpoint_id, f"del-{i}", received))
                return
            user_id = draw(USER_CHOICE)
        effective = draw(st.integers(received - HOUR_MS, received + HOUR_MS + EFFECTIVE_NONE_SPAN))
        attributes = draw(ATTRIBUTE_CHOICE)
        metrics = draw(METRIC_CHOICE)
        demographic = (None, Demographic(platform="ios"), Demographic(make=str(i)))
        records.append(
            upsert(
                endpoint_id,
                app_id=app_id,
                received_at_ms=received,
                effective_ms=None if effective > received + HOUR_MS else effective,
                request_id=f"req-{i}",
                user_id=user_id,
                endpoint_status=draw(STATUS_CHOICE),
                attributes=None if attributes is None else {k: list(v) for k, v in attributes.items()},
                metrics=None if metrics is None else dict.fromkeys(metrics, float(i)),
                demographic=demographic[draw(st.integers(0, 2))],
                address=f"addr-{i}" if draw(st.booleans()) else None,
            )
        )

    if crowd:
        joining = draw(st.permutations(ENDPOINT_IDS))[: draw(st.integers(15, 20))]
        for endpoint_id in joining:
            add(endpoint_id, "u1")
            for _ in range(draw(st.integers(0, 2))):
                add()
    else:
        for _ in range(draw(st.integers(1, 40))):
            add()
    return records


@st.composite
def cuts(draw: st.DrawFn, length: int) -> list[tuple[int, int]]:
    """Arbitrary [start, end) slices covering range(length) in order."""
    points = sorted(draw(st.sets(st.integers(1, max(1, length - 1)), max_size=8)) | {0, length})
    return [(a, b) for a, b in itertools.pairwise(points) if a < b]


def oracle(stream: Sequence[tuple[EndpointRecord, int]]) -> States:
    """The contract by brute force: the stream applied once, record by
    record; after each, a user with more than 15 live endpoints loses the
    oldest (INACTIVE, no UserId)."""
    states: States = {}
    for record, offset in stream:
        key = (record.app_id, record.endpoint_id)
        if isinstance(record, EndpointDelete):
            states[key] = endpoints.apply_delete(states.get(key), record, offset)
            continue
        new, result = endpoints.apply(states.get(key), record, offset)
        if result == "superseded":
            continue
        states[key] = new
        user = endpoints.member_of(new)
        members = sorted(
            (s for s in states.values() if user and endpoints.member_of(s) == user), key=endpoints.age
        )
        for evicted in members[: -endpoints.MAX_ENDPOINTS_PER_USER]:
            states[(evicted.app_id, evicted.endpoint_id)] = endpoints.deactivated(evicted)
    return states


async def snapshot(store: Store) -> Snapshot:
    """Every endpoint and every user, through the read methods."""
    found = {(a, e): await store.get_endpoint(a, e) for a in APP_IDS for e in ENDPOINT_IDS}
    users = {(a, u): list(await store.user_endpoints(a, u)) for a in APP_IDS for u in USER_IDS}
    return found, users


def oracle_snapshot(states: States) -> Snapshot:
    live = {key: state for key, state in states.items() if not state.deleted}
    found = {(a, e): live.get((a, e)) for a in APP_IDS for e in ENDPOINT_IDS}
    users = {
        (a, u): sorted(
            (s for s in live.values() if (s.app_id, s.user_id) == (a, u)), key=lambda s: s.endpoint_id
        )
        for a in APP_IDS
        for u in USER_IDS
    }
    return found, users


@pytest.mark.parametrize("backend", BACKENDS)
@settings(
    max_examples=40,
    deadline=None,
    # No explain phase: its tracing (Python < 3.12) costs more than the test.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
async def test_store_equals_the_fold_under_batching_and_replay(backend: str, data: st.DataObject) -> None:
    records = data.draw(streams(), label="stream")
    stream = offsets(records, start=100)
    # At-least-once as Kafka delivers it: a consumer gets records up to
    # crash_at, then its successor starts again from an earlier offset and
    # goes on to the end.
    crash_at = data.draw(st.integers(0, len(stream)), label="crash at")
    restart_from = data.draw(st.integers(0, crash_at), label="restart from")
    delivered = stream[:crash_at] + stream[restart_from:]
    batches = [delivered[a:b] for a, b in data.draw(cuts(len(delivered)), label="cuts")]

    expected = oracle_snapshot(oracle(stream))
    async with fresh_store(backend) as batched:
        for batch in batches:
            await batched.apply_endpoint_batch(batch)
        assert await snapshot(batched) == expected
    async with fresh_store(backend) as whole:
        await whole.apply_endpoint_batch(stream)
        assert await snapshot(whole) == expected


@settings(max_examples=400, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
@given(data=st.data())
def test_the_pure_fold_equals_the_oracle_under_batching_and_replay(data: st.DataObject) -> None:
    """The same property without a database, many more examples: ``fold``
    per batch, given each crowded user's endpoints as the stores find them."""
    records = data.draw(streams(), label="stream")
    stream = offsets(records, start=100)
    crash_at = data.draw(st.integers(0, len(stream)), label="crash at")
    delivered = stream[:crash_at] + stream[data.draw(st.integers(0, crash_at), label="restart from") :]
    states: States = {}
    for a, b in data.draw(cuts(len(delivered)), label="cuts"):
        batch = delivered[a:b]
        joining = endpoints.joining(states, batch)
        crowded = {user: [s for s in states.values() if endpoints.member_of(s) == user] for user in joining}
        states.update(endpoints.fold(states, batch, BatchOutcome(), crowded))
    assert oracle_snapshot(states) == oracle_snapshot(oracle(stream))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "cut_at", [(), (16,), tuple(range(1, 17))], ids=["one-batch", "cut-at-16", "one-by-one"]
)
async def test_user_rule_does_not_depend_on_batch_cuts(backend: str, cut_at: tuple[int, ...]) -> None:
    """The rule runs per record: the 16th endpoint deactivates ep-00 then and
    there, and a newer write to ep-00 without a UserId, in the same batch or a
    later one, neither brings it back nor costs another endpoint its place."""
    records = [upsert(f"ep-{i:02d}", user_id="u1", effective_ms=T0_MS + i * HOUR_MS) for i in range(16)]
    records.append(upsert("ep-00", effective_ms=T0_MS + 20 * HOUR_MS, address="x"))
    stream = offsets(records)
    bounds = [0, *cut_at, len(stream)]
    async with fresh_store(backend) as store:
        for a, b in itertools.pairwise(bounds):
            await store.apply_endpoint_batch(stream[a:b])
        live = await store.user_endpoints("app-a", "u1")
        assert [s.endpoint_id for s in live] == [f"ep-{i:02d}" for i in range(1, 16)]
        oldest = await store.get_endpoint("app-a", "ep-00")
        assert oldest is not None
        assert oldest.user_id is None
        assert oldest.document["Address"] == "x"
        assert await snapshot(store) == oracle_snapshot(oracle(stream))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_replay_of_an_evicted_endpoints_join_changes_nothing(backend: str) -> None:
    """ep-00 joins u1 and is deactivated when a 16th joins; a delete makes
    room, and ep-16, older than ep-00, joins. Redelivering the stream must
    not let ep-00 rejoin (and push ep-16 out): a record no newer than its
    endpoint's state is superseded, even after a deactivation."""
    records: list[EndpointRecord] = [
        upsert(f"ep-{i:02d}", user_id="u1", effective_ms=T0_MS + (i + 1) * HOUR_MS) for i in range(16)
    ]
    records.append(delete("ep-15", received_at_ms=T0_MS + 20 * HOUR_MS))
    records.append(upsert("ep-16", user_id="u1", received_at_ms=T0_MS + 21 * HOUR_MS, effective_ms=T0_MS))
    stream = offsets(records)
    async with fresh_store(backend) as store:
        await store.apply_endpoint_batch(stream)
        members = [s.endpoint_id for s in await store.user_endpoints("app-a", "u1")]
        assert members == [*(f"ep-{i:02d}" for i in range(1, 15)), "ep-16"]
        outcome = await store.apply_endpoint_batch(stream)  # redelivered whole
        assert (outcome.applied, outcome.deactivated) == (0, 0)
        assert await snapshot(store) == oracle_snapshot(oracle(stream))


async def test_replay_after_delete_changes_nothing(store: Store) -> None:
    records: list[EndpointRecord] = [
        upsert("ep-00", received_at_ms=T0_MS, address="a"),
        delete("ep-00", received_at_ms=T0_MS + HOUR_MS),
        upsert("ep-00", received_at_ms=T0_MS + 2 * HOUR_MS, attributes={"x": ["p"]}),
        upsert("ep-00", received_at_ms=T0_MS + 3 * HOUR_MS, channel_type="GCM"),
    ]
    stream = offsets(records)
    await store.apply_endpoint_batch(stream)
    await store.apply_endpoint_batch(stream[1:])  # redelivered from the delete on
    assert await snapshot(store) == oracle_snapshot(oracle(stream))


# PostgreSQL only: migrations, concurrency, availability.


async def test_concurrent_opens_migrate_once() -> None:
    async with postgres_schema() as url:
        stores = await asyncio.gather(*(PostgresStore.open(url) for _ in range(4)))
        for opened in stores:
            await opened.close()
        admin = await asyncpg.connect(url)
        try:
            versions = await admin.fetch("SELECT version FROM schema_migrations ORDER BY version")
        finally:
            await admin.close()
    assert [v["version"] for v in versions] == list(range(1, len(PG_MIGRATIONS) + 1))


async def apply_retrying(store: Store, batch: Sequence[tuple[EndpointRecord, int]]) -> BatchOutcome:
    """What the endpoint worker does: retry retriable errors (here deadlocks)."""
    while True:
        try:
            return await store.apply_endpoint_batch(batch)
        except StoreError as exc:
            if not exc.retriable:
                raise
            await asyncio.sleep(0.01)


async def test_concurrent_batches_keep_the_user_rule() -> None:
    """Four processes adding to one user at the same time end as some serial
    order would: exactly the 15 newest stay the user's. (Without the per-user
    lock this ended with more than 15 in 10 runs out of 10.)"""
    async with postgres_schema() as url:
        stores = [await PostgresStore.open(url) for _ in range(4)]
        try:
            records = [
                upsert(f"ep-{i:02d}", user_id="u1", effective_ms=T0_MS + i * HOUR_MS) for i in range(60)
            ]
            stream = offsets(records)
            random.Random(7).shuffle(stream)
            batches = [stream[i : i + 3] for i in range(0, len(stream), 3)]
            outcomes = await asyncio.gather(
                *(apply_retrying(stores[i % 4], batch) for i, batch in enumerate(batches))
            )
            live = await stores[0].user_endpoints("app-a", "u1")
        finally:
            for opened in stores:
                await opened.close()
    assert [s.endpoint_id for s in live] == [f"ep-{i:02d}" for i in range(45, 60)]
    assert sum(o.deactivated for o in outcomes) == 45


class Proxy:
    """A TCP forwarder to PostgreSQL that a test can cut and restore, to
    play the server going away without stopping the shared cluster."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Close the listener and every connection: the port is closed."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def test_unreachable_at_open_is_retriable() -> None:
    with pytest.raises(StoreError) as caught:
        await PostgresStore.open(f"postgresql://postgres@127.0.0.1:{free_port()}/ingest_test")
    assert caught.value.retriable is True


async def test_server_gone_is_retriable_and_the_pool_reconnects() -> None:
    async with postgres_schema() as url:
        parts = urllib.parse.urlsplit(url)
        proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432))
        await proxy.start()
        user = parts.netloc.rpartition("@")[0]
        proxied = parts._replace(
            netloc=f"{user}@127.0.0.1:{proxy.port}" if user else f"127.0.0.1:{proxy.port}"
        )
        store = await PostgresStore.open(urllib.parse.urlunsplit(proxied))
        try:
            await store.apply_endpoint_batch(offsets([upsert("ep-1")]))

            await proxy.cut()
            for attempt in range(3):
                with pytest.raises(StoreError) as caught:
                    await store.apply_endpoint_batch(offsets([upsert("ep-2")], start=1 + attempt))
                assert caught.value.retriable is True, caught.value
            with pytest.raises(StoreError) as read:
                await store.get_endpoint("app-a", "ep-1")
            assert read.value.retriable is True

            await proxy.start()
            outcome = await apply_retrying(store, offsets([upsert("ep-2")], start=10))
            assert outcome.applied == 1
            assert await store.get_endpoint("app-a", "ep-1") is not None
            assert await store.get_endpoint("app-a", "ep-2") is not None
        finally:
            await store.close()
            await store.close()  # idempotent
            await proxy.cut()


@given(millis=st.integers(MIN_MS, MAX_MS))
def test_iso_ms_is_exact_to_the_millisecond(millis: int) -> None:
    expected = datetime(1970, 1, 1) + timedelta(milliseconds=millis)  # noqa: DTZ001 - naive UTC on purpose
    assert iso_ms(millis) == expected.isoformat(timespec="milliseconds") + "Z"


# --- integrity at open ---------------------------------------------------------


def forget_identity(path: Path) -> None:
    identity_file(path).unlink()


def read_identity(path: Path) -> str:
    return identity_file(path).read_text().strip()


def empty(path: Path) -> None:
    """What a full disk or a careless copy leaves: the file, zero bytes."""
    for leftover in path.parent.glob(path.name + "-*"):
        leftover.unlink()
    path.write_bytes(b"")


def damage(path: Path) -> None:
    """Two pages in the middle of the file overwritten."""
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096
    data[4 * 4096 : 6 * 4096] = b"\xff" * (2 * 4096)
    path.write_bytes(bytes(data))


async def made_store(path: Path) -> None:
    store = await SqliteStore.open(path)
    await store.create_app(App("a", "n", "arn", {}, "2026-01-01T00:00:00.000Z"))
    await store.close()


async def test_an_emptied_sqlite_store_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "ingest.sqlite3"
    await made_store(path)
    empty(path)
    with pytest.raises(StoreError, match="emptied or replaced") as refused:
        await SqliteStore.open(path)
    assert not refused.value.retriable


async def test_a_store_replaced_by_another_refuses_to_start(tmp_path: Path) -> None:
    path, other = tmp_path / "ingest.sqlite3", tmp_path / "other" / "ingest.sqlite3"
    await made_store(path)
    await made_store(other)
    other.replace(path)
    with pytest.raises(StoreError, match="is not the one made here"):
        await SqliteStore.open(path)


async def test_a_store_damaged_mid_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "ingest.sqlite3"
    store = await SqliteStore.open(path)
    for n in range(300):
        await store.create_app(
            App(f"app-{n}", "n" * 200, "arn", {"k": "v" * 200}, "2026-01-01T00:00:00.000Z")
        )
    await store.close()
    damage(path)
    with pytest.raises(StoreError, match=r"damaged|malformed|not a database") as refused:
        await SqliteStore.open(path)
    assert not refused.value.retriable


async def test_a_store_from_before_identities_adopts_one_and_opens_again(tmp_path: Path) -> None:
    path = tmp_path / "ingest.sqlite3"
    await made_store(path)
    forget_identity(path)  # as a store made before this check was
    store = await SqliteStore.open(path)
    assert await store.get_app("a") is not None
    await store.close()
    assert read_identity(path).isdigit()
    reopened = await SqliteStore.open(path)
    await reopened.close()
