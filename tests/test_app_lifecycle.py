"""An app's life: the quotas on creating one (apps per deployment, AWS's tag
rules), GetApps pages bounded in bytes, the edge's app cache bounded, and
DeleteApp taking the app's data with it: endpoints, users, KPI aggregates,
dedupe marks, identity pools, its event stream and settings, and the keys
bound to it alone; records of the app still in Kafka never bring any of it
back; the purge, a bounded step at a time, finishing after a restart.

The store's part runs on both backends; the rest drives ``ingest run`` with
boto3, on SQLite and on PostgreSQL, and looks in the database itself."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from botocore.exceptions import ClientError

from ingest.api.apps import MAX_PAGE_BYTES, AppCache, cached_bytes
from ingest.keys import AccessKey, IdentityPool
from ingest.store.base import App, ApplicationSettings, EventStream, Store
from ingest.store.postgres import PostgresStore
from ingest.store.sqlite import SqliteStore
from ingest.workers.sinks import PURGE_CHECK_S
from tests.conftest import Pipeline, eventually, start_ingest, start_pipeline
from tests.samples import metric, samples_named
from tests.test_kpi_store import FAR_DAY, event
from tests.test_store import BACKENDS, fresh_store, offsets, postgres_schema, upsert

# The tables holding an app's data, each with its app column.
APP_TABLES = {
    "endpoints": "app_id",
    "event_marks": "app_id",
    "kpi_members": "app_id",
    "kpi_sums": "app_id",
    "kpi_first_days": "app_id",
    "identity_pools": "app_id",
    "event_streams": "app_id",
    "application_settings": "app_id",
    "apps": "id",
}
TIMEOUT_S = 30.0


def app(app_id: str, **tags: str) -> App:
    return App(id=app_id, name="test", arn=f"arn:{app_id}", tags=tags, creation_date="now")


def key(key_id: str, *apps: str) -> AccessKey:
    return AccessKey(
        access_key_id=key_id,
        name=key_id,
        scope="admin" if not apps else "ingest",
        apps=apps,
        secret_ciphertext=b"x",
        created_ms=1,
        revoked_ms=None,
    )


async def rows_of(store: Store, app_id: str) -> dict[str, int]:
    """Rows of ``app_id`` in each table, read from the database itself."""
    counts: dict[str, int] = {}
    for table, column in APP_TABLES.items():
        query = f"SELECT count(*) FROM {table} WHERE {column} = "
        if isinstance(store, SqliteStore):
            (counts[table],) = store._db.execute(query + "?", (app_id,)).fetchone()
        else:
            assert isinstance(store, PostgresStore)
            counts[table] = await store._pool.fetchval(query + "$1", app_id)
    return counts


async def purge_all(store: Store) -> int:
    steps = 0
    while await store.purge_deleted_apps(max_rows=1000):
        steps += 1
    return steps


async def seed(store: Store, app_id: str, endpoints: int = 20) -> None:
    """An app with endpoints (of users), events, KPI rows, a pool, an event
    stream and settings."""
    await store.create_app(app(app_id))
    records = [upsert(f"ep-{i}", app_id=app_id, user_id=f"u{i % 3}") for i in range(endpoints)]
    await store.apply_endpoint_batch(offsets(records))
    events = [event(f"ev-{i}", app_id=app_id, endpoint_id=f"ep-{i % endpoints}") for i in range(30)]
    await store.apply_event_batch(events, oldest_day=0, newest_day=FAR_DAY)
    await store.create_identity_pool(IdentityPool(id=f"pool-{app_id}", app_id=app_id, created_ms=1))
    assert await store.put_event_stream(
        EventStream(app_id, "arn:aws:firehose:us-east-1:123456789012:deliverystream/d", "r", None, "now", "k")
    )
    assert await store.put_application_settings(ApplicationSettings(app_id, {"Limits": {"Daily": 1}}, "now"))


# The store.


@pytest.mark.parametrize("backend", BACKENDS)
async def test_delete_app_purges_every_row_of_the_app_and_no_other(backend: str) -> None:
    async with fresh_store(backend) as store:
        await seed(store, "gone")
        await seed(store, "kept")
        for made in (key("AKIAONLY", "gone"), key("AKIABOTH", "gone", "kept"), key("AKIAADMIN")):
            await store.create_key(made)
        before = await rows_of(store, "gone")
        assert all(before.values()), before

        assert await store.delete_app("gone") == app("gone")
        assert await purge_all(store) >= 1
        assert set((await rows_of(store, "gone")).values()) == {0}
        assert await rows_of(store, "kept") == before
        assert await store.get_endpoint("gone", "ep-1") is None
        assert await store.user_endpoints("gone", "u1") == []
        assert [p.app_id for p in await store.list_identity_pools()] == ["kept"]
        keys = {k.access_key_id: k for k in await store.list_keys()}
        # A key bound to the deleted app alone is revoked; one bound to it
        # and others only loses it; a key of every app stays as it was.
        assert keys["AKIAONLY"].revoked_ms is not None
        assert keys["AKIABOTH"].apps == ("kept",)
        assert keys["AKIABOTH"].revoked_ms is None
        assert keys["AKIAADMIN"] == key("AKIAADMIN")
        assert await store.purge_deleted_apps(max_rows=1000) == 0
        assert await store.delete_app("gone") is None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_records_of_a_deleted_app_never_bring_it_back(backend: str) -> None:
    async with fresh_store(backend) as store:
        await seed(store, "gone")
        # What is still in Kafka for it, or replayed from an older offset.
        late = [upsert(f"late-{i}", app_id="gone", user_id="u1") for i in range(5)]
        late_events = [event(f"late-{i}", app_id="gone", endpoint_id="late-1") for i in range(5)]
        await store.delete_app("gone")
        await purge_all(store)

        outcome = await store.apply_endpoint_batch(offsets([*late, upsert("ep-x", app_id="other")], 100))
        assert (outcome.of_deleted_apps, outcome.applied) == (5, 1)
        counted = await store.apply_event_batch(
            [*late_events, event("e", app_id="other")], oldest_day=0, newest_day=FAR_DAY
        )
        assert (counted.of_deleted_apps, counted.aggregated) == (5, 1)
        assert set((await rows_of(store, "gone")).values()) == {0}
        assert await store.get_endpoint("other", "ep-x") is not None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_purge_goes_in_bounded_steps_and_resumes_after_a_restart(
    backend: str, tmp_path: Path
) -> None:
    async with reopenable(backend, tmp_path) as reopen:
        store = await reopen()
        await seed(store, "big", endpoints=2500)
        await store.delete_app("big")
        # One step deletes at most max_rows rows a table: then the process dies.
        assert await store.purge_deleted_apps(max_rows=1000) > 0
        assert (await rows_of(store, "big"))["endpoints"] == 1500
        await store.close()

        store = await reopen()
        try:
            assert await purge_all(store) >= 2
            assert set((await rows_of(store, "big")).values()) == {0}
        finally:
            await store.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_app_quota_holds_under_concurrent_creates(backend: str) -> None:
    async with fresh_store(backend) as store:
        created = await asyncio.gather(*(store.create_app(app(f"a{i}"), max_apps=3) for i in range(8)))
        assert sorted(created) == [False] * 5 + [True] * 3
        assert len(await store.list_apps(after=None, limit=100)) == 3
        await store.delete_app("a0")
        assert await store.create_app(app("again"), max_apps=3)


@contextlib.asynccontextmanager
async def reopenable(backend: str, tmp_path: Path) -> AsyncIterator[Any]:
    """A function opening the same store again each time it is called."""
    if backend == "sqlite":

        async def open_sqlite() -> Store:
            return await SqliteStore.open(tmp_path / "ingest.sqlite3")

        yield open_sqlite
        return
    async with postgres_schema() as url:

        async def open_postgres() -> Store:
            return await PostgresStore.open(url)

        yield open_postgres


# The app cache.


async def test_the_app_cache_is_bounded_in_entries_evicting_the_least_recent(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "ingest.sqlite3")
    try:
        for i in range(6):
            await store.create_app(app(f"a{i}"))
        cache = AppCache(store, ttl_s=60, max_entries=4)
        for i in range(4):
            await cache.get(f"a{i}")
        await cache.get("a0")  # used again: now the most recent
        await cache.get("a4")
        assert cache.size[0] == 4
        assert list(cache._entries) == ["a2", "a3", "a0", "a4"]  # a1 went, and only a1
        for i in range(50):  # lookups of IDs that do not exist are entries too
            assert await cache.get(f"missing-{i}") is None
        assert cache.size[0] == 4
    finally:
        await store.close()


async def test_the_app_cache_is_bounded_in_bytes_counting_tags(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "ingest.sqlite3")
    try:
        tags = {f"k{i:03d}" + "k" * 124: "v" * 256 for i in range(50)}
        for i in range(10):
            await store.create_app(app(f"a{i}", **tags))
        one = cached_bytes("a0", app("a0", **tags))
        assert one > 50 * (128 + 256)
        cache = AppCache(store, ttl_s=60, max_bytes=3 * one + 100)
        for i in range(10):
            assert await cache.get(f"a{i}") == app(f"a{i}", **tags)
            held = cache.size[1]
            assert held <= 3 * one + 100
        assert list(cache._entries) == ["a7", "a8", "a9"]
        assert held == sum(cached_bytes(i, e[1]) for i, e in cache._entries.items())
    finally:
        await store.close()


# Against `ingest run`.


def error_of(call: Any) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return (
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Code"],
        response["Error"]["Message"],
    )


@pytest.fixture(scope="module")
def quota_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    running = start_pipeline(tmp_path_factory.mktemp("quota"), INGEST_MAX_APPS="61")
    yield running
    assert running.stop() == 0, running.log()


def test_tags_past_aws_rules_are_refused_naming_the_rule(quota_pipeline: Pipeline) -> None:
    client = quota_pipeline.client(parameter_validation=False)

    def create(tags: dict[str, str]) -> Any:
        return lambda: client.create_app(CreateApplicationRequest={"Name": "t", "tags": tags})

    cases = {
        "at most 50 tags": {f"k{i}": "v" for i in range(51)},
        "tag key must be 1-128": {"k" * 129: "v"},
        "tag key must be 1-128 characters, not 0": {"": "v"},
        "tag value must be at most 256": {"k": "v" * 257},
        "'aws:' is reserved": {"AWS:team": "x"},
    }
    for rule, tags in cases.items():
        status, code, message = error_of(create(tags))
        assert (status, code) == (400, "BadRequestException"), rule
        assert rule in message, (rule, message)
    # At the limits exactly: accepted.
    edge = {f"{i:02d}" + "k" * 126: "v" * 256 for i in range(50)}
    made = client.create_app(CreateApplicationRequest={"Name": "edge", "tags": edge})
    assert made["ApplicationResponse"]["tags"] == edge
    client.delete_app(ApplicationId=made["ApplicationResponse"]["Id"])


def test_apps_past_the_quota_are_refused_and_get_apps_pages_are_bounded_in_bytes(
    quota_pipeline: Pipeline,
) -> None:
    client = quota_pipeline.client()
    tags = {f"{i:02d}" + "k" * 126: "v" * 256 for i in range(50)}
    made = {
        client.create_app(CreateApplicationRequest={"Name": f"app-{i}", "tags": tags})["ApplicationResponse"][
            "Id"
        ]
        for i in range(61)
    }
    status, code, message = error_of(
        lambda: client.create_app(CreateApplicationRequest={"Name": "one too many"})
    )
    assert (status, code) == (400, "BadRequestException")
    assert "Exceeded the limit of 61 apps" in message

    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        status, _, body = quota_pipeline.request(
            "GET", "/v1/apps?page-size=1000" + (f"&token={token}" if token else "")
        )
        assert status == 200
        assert len(body) <= MAX_PAGE_BYTES + 100  # the items within it, plus the token
        page = orjson.loads(body)
        seen += [item["Id"] for item in page["Item"]]
        pages += 1
        token = page.get("NextToken")
        if token is None:
            break
    assert pages >= 2  # 61 apps of ~20 KB do not fit in one 1 MiB page
    assert sorted(seen) == sorted(made)

    client.delete_app(ApplicationId=sorted(made)[0])
    client.create_app(CreateApplicationRequest={"Name": "room again"})


@contextlib.contextmanager
def database(backend: str, tmp_path: Path, postgres_url: str) -> Iterator[tuple[dict[str, str], Any]]:
    """The env for `ingest run` on ``backend`` and a function running one SQL
    statement (``?`` placeholders) on its database, answering its rows."""
    if backend == "sqlite":
        holder: dict[str, Path] = {}

        def on_sqlite(query: str, *params: Any) -> list[Any]:
            db = sqlite3.connect(holder["path"], isolation_level=None)
            try:
                return db.execute(query, params).fetchall()
            finally:
                db.close()

        on_sqlite.holder = holder  # type: ignore[attr-defined]
        yield {}, on_sqlite
        return
    schema = f"test_{uuid.uuid4().hex}"

    async def run(query: str, *params: Any) -> list[Any]:
        con = await asyncpg.connect(postgres_url)
        try:
            await con.execute(f"SET search_path TO {schema}")
            numbered = query
            for i in range(query.count("?")):
                numbered = numbered.replace("?", f"${i + 1}", 1)
            return [tuple(row) for row in await con.fetch(numbered, *params)]
        finally:
            await con.close()

    def on_postgres(query: str, *params: Any) -> list[Any]:
        return asyncio.run(run(query, *params))

    asyncio.run(run(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in postgres_url else "?"
    try:
        yield {"INGEST_STORE_URL": f"{postgres_url}{sep}search_path={schema}"}, on_postgres
    finally:
        asyncio.run(run(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


def start_on(backend: str, tmp_path: Path, env: dict[str, str], sql: Any) -> Pipeline:
    running = start_pipeline(tmp_path, **env)
    if backend == "sqlite":
        sql.holder["path"] = running.data_dir / "ingest.sqlite3"
    return running


def app_rows(sql: Any, app_id: str) -> dict[str, int]:
    return {
        table: sql(f"SELECT count(*) FROM {table} WHERE {column} = ?", app_id)[0][0]
        for table, column in APP_TABLES.items()
    }


def caught_up(running: Pipeline) -> bool:
    """Both workers at the end of their topics: each has reported its lag (a
    worker that has not fetched yet reports none, which is not "caught up")
    and every lag is 0."""
    lags = samples_named(running, "ingest_consumer_lag_records")
    reporting = {sample.labels.get("process") for sample in lags}
    workers = {"worker-endpoints", "worker-kpis"}
    return workers <= reporting and all(sample.value == 0 for sample in lags)


def new_app(client: Any, name: str) -> str:
    return str(client.create_app(CreateApplicationRequest={"Name": name})["ApplicationResponse"]["Id"])


def fill(client: Any, app_id: str, endpoints: int) -> None:
    """Endpoints of users, and an event for each, through the API."""
    for start in range(0, endpoints, 100):
        items = [
            {
                "Id": f"ep-{i}",
                "Address": f"user{i}@example.com",
                "ChannelType": "EMAIL",
                "User": {"UserId": f"u{i % 7}"},
            }
            for i in range(start, min(endpoints, start + 100))
        ]
        client.update_endpoints_batch(ApplicationId=app_id, EndpointBatchRequest={"Item": items})
    now = datetime.now(UTC).isoformat()
    for start in range(0, min(endpoints, 300), 100):
        batch = {
            f"ep-{i}": {
                "Endpoint": {},
                "Events": {f"ev-{i}": {"EventType": "level.complete", "Timestamp": now}},
            }
            for i in range(start, min(endpoints, start + 100))
        }
        client.put_events(ApplicationId=app_id, EventsRequest={"BatchItem": batch})


@dataclass
class Served:
    """`ingest run` on one backend, and SQL on its database (``?`` placeholders)."""

    running: Pipeline
    sql: Any
    env: dict[str, str]


@pytest.fixture(params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> Iterator[Served]:
    with database(request.param, tmp_path, postgres_url) as (env, sql):
        running = start_on(request.param, tmp_path, env, sql)
        try:
            yield Served(running, sql, env)
        finally:
            if running.process.poll() is None:
                assert running.stop() == 0, running.log()


def test_delete_app_deletes_its_data_and_late_records_never_recreate_it(served: Served) -> None:
    running, sql = served.running, served.sql
    client = running.client()
    app_id, kept = new_app(client, "doomed"), new_app(client, "kept")
    fill(client, app_id, 300)
    fill(client, kept, 10)
    eventually(
        lambda: app_rows(sql, app_id),
        lambda r: r["endpoints"] == 300 and r["kpi_sums"] > 0,
        "applied",
    )
    eventually(lambda: caught_up(running), bool, "caught up", TIMEOUT_S)

    # Records produced just before the delete, applied (or not) after it.
    fill(client, app_id, 300)
    deleted = client.delete_app(ApplicationId=app_id)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert deleted["ApplicationResponse"]["Id"] == app_id
    eventually(lambda: caught_up(running), bool, "caught up", TIMEOUT_S)

    for call in (
        lambda: client.get_app(ApplicationId=app_id),
        lambda: client.get_endpoint(ApplicationId=app_id, EndpointId="ep-1"),
        lambda: client.get_user_endpoints(ApplicationId=app_id, UserId="u1"),
        lambda: client.get_application_date_range_kpi(ApplicationId=app_id, KpiName="unique-endpoints"),
    ):
        assert error_of(call)[:2] == (404, "NotFoundException")
    assert set(app_rows(sql, app_id).values()) == {0}
    assert sql("SELECT purged FROM deleted_apps WHERE app_id = ?", app_id) == [(True,)]
    assert app_rows(sql, kept)["endpoints"] == 10
    assert client.get_endpoint(ApplicationId=kept, EndpointId="ep-1")["EndpointResponse"]["Id"] == "ep-1"
    # However the late records fell around the delete, none is left,
    # and the workers wrote through it.
    assert metric(running, 'ingest_endpoint_records_total{outcome="applied"}') >= 310


def test_a_purge_cut_short_by_sigkill_finishes_after_restart(served: Served) -> None:
    running, sql, env = served.running, served.sql, served.env
    client = running.client()
    app_id = new_app(client, "big")
    fill(client, app_id, 1500)
    eventually(lambda: app_rows(sql, app_id)["endpoints"], lambda n: n == 1500, "applied", TIMEOUT_S)
    eventually(lambda: caught_up(running), bool, "caught up", TIMEOUT_S)
    running.stop(signal.SIGKILL)
    # What a process killed in the middle of DeleteApp's purge leaves:
    # the app row gone, its tombstone not yet purged, part of its rows.
    sql("DELETE FROM apps WHERE id = ?", app_id)
    sql("INSERT INTO deleted_apps (app_id, deleted_ms, purged) VALUES (?, ?, ?)", app_id, 1, False)
    sql("DELETE FROM endpoints WHERE app_id = ? AND endpoint_id LIKE ?", app_id, "ep-14%")
    left = app_rows(sql, app_id)
    assert left["endpoints"] == 1389 and left["kpi_members"] > 0 and left["event_marks"] > 0

    args = ["run", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(running.data_dir)]
    again = start_ingest(running.data_dir, args, port=0, data_dir=running.data_dir, env=env)
    try:
        # The endpoint worker finishes the purge before it consumes.
        assert set(app_rows(sql, app_id).values()) == {0}
        assert sql("SELECT purged FROM deleted_apps WHERE app_id = ?", app_id) == [(True,)]
        assert "finished purging deleted apps" in again.log()
        assert (
            error_of(lambda: again.client().get_endpoint(ApplicationId=app_id, EndpointId="ep-2"))[0] == 404
        )
    finally:
        assert again.stop() == 0, again.log()


def test_an_idle_endpoint_worker_finishes_a_purge_left_unfinished(served: Served) -> None:
    """A purge that DeleteApp left (its edge stopped, or the app too large for
    its budget) goes on with no traffic at all: the worker's empty polls."""
    running, sql = served.running, served.sql
    client = running.client()
    app_id = new_app(client, "left-behind")
    fill(client, app_id, 50)
    eventually(lambda: app_rows(sql, app_id)["endpoints"], lambda n: n == 50, "applied", TIMEOUT_S)
    eventually(lambda: caught_up(running), bool, "caught up", TIMEOUT_S)
    # What another edge killed in the middle of DeleteApp leaves behind.
    sql("DELETE FROM apps WHERE id = ?", app_id)
    sql("INSERT INTO deleted_apps (app_id, deleted_ms, purged) VALUES (?, ?, ?)", app_id, 1, False)
    eventually(
        lambda: sql("SELECT purged FROM deleted_apps WHERE app_id = ?", app_id),
        lambda rows: rows == [(True,)],
        "the idle worker finishing the purge",
        PURGE_CHECK_S * 2 + TIMEOUT_S,
    )
    assert set(app_rows(sql, app_id).values()) == {0}
