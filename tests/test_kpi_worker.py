"""The KPI worker on a real Tansu broker and real stores: ``ingest.events`` →
dedupe marks and KPI aggregates, read back through the store's KPI reads.

In-process workers (a fresh registry each, a clock the test holds where the
day matters), and `ingest run` as a process for the assembled pipeline.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError
from prometheus_client import CollectorRegistry

from ingest.errors import SettingsError, StoreError
from ingest.folds import kpis
from ingest.kafka import clients
from ingest.kafka.clients import DEADLETTER_TOPIC, EVENTS_TOPIC
from ingest.metrics import KpiWorkerMetrics
from ingest.records.codec import Codec
from ingest.records.values import EndpointContext, EndpointUpsert, Event, Session
from ingest.settings import Settings
from ingest.store.backends import open_store
from ingest.store.base import Store
from ingest.store.sqlite import SqliteStore
from ingest.workers.consumer import Worker
from ingest.workers.sinks import KpiSink
from tests.conftest import Pipeline, eventually, start_pipeline
from tests.kafka_reader import assert_dead_letters, read_partition
from tests.samples import samples_named, without_process
from tests.test_process import run_ingest

# Noon UTC, so "today" is one day whatever the test's own duration.
NOW_MS = kpis.day_of(int(datetime.now(UTC).timestamp() * 1000)) * kpis.DAY_MS + kpis.DAY_MS // 2
TODAY = kpis.day_of(NOW_MS)
RETENTION_DAYS = 7
PROCESSED_WITHIN_S = 30.0
DRAIN_TIMEOUT_S = 5
OUTCOMES = ("aggregated", "duplicate", "too_old", "too_new", "dead_lettered")


@pytest.fixture
def broker(broker: str) -> str:
    """conftest's broker, with the topics created."""
    asyncio.run(clients.ensure_topics(Settings(), broker))
    return broker


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A real store; on PostgreSQL tests keep apart by their own app IDs."""
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
    opened = await open_store(url, data_dir=tmp_path)
    yield opened
    await opened.close()


@dataclass
class Clock:
    now_ms: int = NOW_MS

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Running:
    worker: Worker[Event]
    task: asyncio.Task[None]
    registry: CollectorRegistry

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def events(self, outcome: str) -> float:
        return self.sample("ingest_kpi_events_total", outcome=outcome)

    def processed(self) -> float:
        return sum(self.events(o) for o in OUTCOMES)

    async def until(self, check: Callable[[], bool], what: str) -> None:
        deadline = asyncio.get_running_loop().time() + PROCESSED_WITHIN_S
        while not check():
            if self.task.done():
                self.task.result()
                raise AssertionError(f"the KPI worker stopped before {what}")
            counts = {o: self.events(o) for o in OUTCOMES}
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}: {counts}"
            await asyncio.sleep(0.02)  # polling a metric

    async def stop(self) -> None:
        self.worker.stop()
        await self.task


async def refuse(offsets: Any = None) -> None:
    raise CommitFailedError("refused by the test: as if the worker died before its commit")


def start_worker(
    bootstrap: str, store: Store, group: str, clock: Clock | None = None, *, commits: bool = True
) -> Running:
    """A KPI worker as `ingest worker kpis` builds it, on a fresh registry.
    Fault injection: without ``commits`` its consumer's commits are refused."""
    settings = Settings()
    registry = CollectorRegistry()
    consumer = clients.consumer(settings, bootstrap, group_id=group)
    if not commits:
        consumer.commit = refuse
    sink = KpiSink(
        store,
        codec=Codec(),
        metrics=KpiWorkerMetrics(registry),
        retention_days=RETENTION_DAYS,
        now_ms=clock or Clock(),
    )
    worker = Worker(
        consumer,
        clients.deadletter_producer(settings, bootstrap, idempotence=False),
        sink,
        max_records=settings.worker_max_records,
        drain_timeout_s=DRAIN_TIMEOUT_S,
    )
    return Running(worker, asyncio.create_task(worker.run()), registry)


async def produce(bootstrap: str, records: list[tuple[bytes, bytes | None]]) -> list[tuple[int, int]]:
    """(key, value) records to ``ingest.events``, in order; → (partition, offset) each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        placed = []
        for key, value in records:
            sent = await producer.send_and_wait(EVENTS_TOPIC, value, key=key)
            placed.append((sent.partition, sent.offset))
        return placed
    finally:
        await producer.stop()


def make_event(
    app_id: str, endpoint_id: str, event_id: str, timestamp_ms: int, event_type: str = "screen", **more: Any
) -> Event:
    stamp = datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return Event(
        app_id,
        endpoint_id,
        event_id,
        "req",
        NOW_MS,
        event_type,
        stamp.replace("+00:00", "Z"),
        timestamp_ms,
        **more,
    )


def encoded(events: list[Event]) -> list[tuple[bytes, bytes | None]]:
    codec = Codec()
    return [(f"{e.app_id}:{e.endpoint_id}".encode(), codec.encode_event(e)) for e in events]


async def sums(store: Store, app_id: str, kind: str) -> list[tuple[int, str, int]]:
    return sorted(await store.kpi_sums(app_id, kind, TODAY - 60, TODAY + 1))


async def member_counts(store: Store, app_id: str, kind: str) -> list[tuple[int, str, int]]:
    return sorted(await store.kpi_member_counts(app_id, kind, TODAY - 60, TODAY + 1))


# --- exactly once ----------------------------------------------------------------


def stream(app_id: str) -> list[Event]:
    """Four endpoints, three days, sessions and several event types."""
    out = []
    for n in range(48):
        endpoint_id = f"ep-{n % 4}/ü"
        day = TODAY - n % 3
        session = Session(f"s-{n % 5}", "2026-01-01T00:00:00Z") if n % 2 else None
        out.append(
            make_event(
                app_id,
                endpoint_id,
                str(uuid.uuid4()),
                day * kpis.DAY_MS + n * 60_000,
                event_type=("_session.start", "screen", "tap")[n % 3],
                session=session,
                endpoint=EndpointContext(user_id=f"u-{n % 2}"),
            )
        )
    return out


async def test_events_are_aggregated_once_across_duplicates_and_a_restart(broker: str, store: Store) -> None:
    """The first half of a stream, with duplicates, goes to a worker that
    applies it but never commits (as if it died after each write, before its
    commit), then stops; the worker that replaces it starts where the group
    committed (nowhere: the beginning), so it reads all of that again, while
    the second half arrives with the first half once more. Every KPI
    aggregate equals the unique events folded once."""
    app_id = f"once-{uuid.uuid4().hex[:8]}"
    events = stream(app_id)
    first, second = events[: len(events) // 2], events[len(events) // 2 :]
    # Two groups with the same (no) commits: a replacement in the first
    # group would wait out the first member's session (10 s), since aiokafka
    # sends no LeaveGroup at Tansu's generation 0.
    group = f"kpis-{uuid.uuid4().hex[:8]}"

    await produce(broker, encoded(first + first[:8]))
    a = start_worker(broker, store, group, commits=False)
    try:
        await a.until(lambda: a.processed() == len(first) + 8, "the first half")
    finally:
        await a.stop()
    assert (a.events("aggregated"), a.events("duplicate")) == (len(first), 8)

    b = start_worker(broker, store, f"{group}-restarted")
    try:
        await produce(broker, encoded(second + first))
        # Everything the first worker applied, then the rest of the stream.
        await b.until(lambda: b.processed() == len(first) + 8 + len(events), "the whole topic")
    finally:
        await b.stop()
    assert (b.events("aggregated"), b.events("duplicate"), b.events("too_old")) == (
        len(second),
        2 * len(first) + 8,
        0,
    )

    per_day = Counter(kpis.day_of(e.timestamp_ms) for e in events)
    assert await sums(store, app_id, "events") == sorted((d, "", n) for d, n in per_day.items())
    types = Counter((kpis.day_of(e.timestamp_ms), e.event_type) for e in events)
    assert await sums(store, app_id, "event_types") == sorted((d, t, n) for (d, t), n in types.items())
    members: dict[str, Callable[[Event], str | None]] = {
        "endpoints": lambda e: e.endpoint_id,
        "users": lambda e: e.endpoint and e.endpoint.user_id,
        "sessions": lambda e: e.session and e.session.id,
    }
    for kind, member in members.items():
        seen = {(kpis.day_of(e.timestamp_ms), member(e)) for e in events}
        distinct = Counter(day for day, m in seen if m)
        assert await member_counts(store, app_id, kind) == sorted((d, "", n) for d, n in distinct.items()), (
            kind
        )


# --- the dedupe window -----------------------------------------------------------


async def test_events_before_the_window_are_too_old_and_the_window_moves_with_the_clock(
    broker: str, tmp_path: Path
) -> None:
    store = await SqliteStore.open(tmp_path / "store.sqlite3")
    clock = Clock()
    app_id = "window"
    oldest = TODAY - RETENTION_DAYS + 1
    edge = make_event(app_id, "ep", "first-day", oldest * kpis.DAY_MS)  # the window's first millisecond
    before = make_event(app_id, "ep", "day-before", oldest * kpis.DAY_MS - 1)  # the last one before it
    running = start_worker(broker, store, "window", clock)
    try:
        await produce(broker, encoded([before, edge]))
        await running.until(lambda: running.processed() == 2, "both events")
        assert (running.events("aggregated"), running.events("too_old")) == (1, 1)
        assert await sums(store, app_id, "events") == [(oldest, "", 1)]
        assert running.sample("ingest_kpi_dedupe_marks_expired_total") == 0

        # A day later the window starts a day later: the mark of its old first
        # day is expired, and that day's events are too old, not duplicates.
        clock.now_ms += kpis.DAY_MS
        later = make_event(app_id, "ep", "today", clock.now_ms)
        await produce(broker, encoded([later, edge]))
        await running.until(lambda: running.processed() == 4, "the events of the next day")
        assert (running.events("aggregated"), running.events("too_old")) == (2, 2)
        assert running.events("duplicate") == 0
        assert running.sample("ingest_kpi_dedupe_marks_expired_total") == 1
        assert await sums(store, app_id, "events") == [(oldest, "", 1), (TODAY + 1, "", 1)]
    finally:
        await running.stop()
        await store.close()


async def test_events_dated_after_tomorrow_are_too_new(broker: str, tmp_path: Path) -> None:
    """A device clock far ahead must not fill days that have not come: the
    last millisecond of tomorrow (by the worker's clock) counts, the next
    does not, and counts once the clock has reached it."""
    store = await SqliteStore.open(tmp_path / "store.sqlite3")
    clock = Clock()
    app_id = "ahead"
    newest = TODAY + kpis.MAX_DAYS_AHEAD
    last = make_event(app_id, "ep", "tomorrow", (newest + 1) * kpis.DAY_MS - 1)
    after = make_event(app_id, "ep", "day-after", (newest + 1) * kpis.DAY_MS)
    running = start_worker(broker, store, "ahead", clock)
    try:
        await produce(broker, encoded([last, after]))
        await running.until(lambda: running.processed() == 2, "both events")
        assert (running.events("aggregated"), running.events("too_new")) == (1, 1)
        assert await sums(store, app_id, "events") == [(newest, "", 1)]

        clock.now_ms += kpis.DAY_MS
        await produce(broker, encoded([after, last]))
        await running.until(lambda: running.processed() == 4, "the events again, a day later")
        assert (running.events("aggregated"), running.events("duplicate")) == (2, 1)
        counted = await store.kpi_sums(app_id, "events", newest, newest + 1)
        assert sorted(counted) == [(newest, "", 1), (newest + 1, "", 1)]
    finally:
        await running.stop()
        await store.close()


def test_dedupe_retention_days_must_be_at_least_one() -> None:
    assert Settings.from_env({"INGEST_DEDUPE_RETENTION_DAYS": "30"}).dedupe_retention_days == 30
    assert Settings().dedupe_retention_days == RETENTION_DAYS
    with pytest.raises(SettingsError, match="INGEST_DEDUPE_RETENTION_DAYS"):
        Settings.from_env({"INGEST_DEDUPE_RETENTION_DAYS": "0"})


# --- a record that does not decode -----------------------------------------------


async def test_undecodable_records_are_dead_lettered_and_the_partition_moves_on(
    broker: str, tmp_path: Path
) -> None:
    codec = Codec()
    good = make_event("poison", "ep", "good", NOW_MS)
    garbage = {
        b"\x00\x01 not avro at all": "no C3 01 marker",
        codec.encode_endpoint(EndpointUpsert("poison", "ep", "r", 0, "UPDATE_ENDPOINT")): "is not an event",
        codec.encode_event(good)[:-3]: "does not decode",
        None: "null value",
    }
    values = list(garbage)
    key = b"poison:ep"
    placed = await produce(broker, [(key, value) for value in values] + [(key, codec.encode_event(good))])
    partition = placed[0][0]
    assert {p for p, _ in placed} == {partition}

    store = await SqliteStore.open(tmp_path / "store.sqlite3")
    running = start_worker(broker, store, "poison")
    try:
        await running.until(lambda: running.events("aggregated") == 1, "the event after the poison")
        lag = {"topic": EVENTS_TOPIC, "partition": str(partition)}
        await running.until(lambda: running.sample("ingest_consumer_lag_records", **lag) == 0, "no lag")
        assert running.events("dead_lettered") == len(values)
        assert await sums(store, "poison", "events") == [(TODAY, "", 1)]
    finally:
        await running.stop()
        await store.close()

    dead = await read_partition(
        broker, TopicPartition(DEADLETTER_TOPIC, 0), 0, lambda got: len(got) >= len(values), 10
    )
    assert_dead_letters(
        dead,
        key=key,
        values=values,
        reasons=list(garbage.values()),
        origin_topic=EVENTS_TOPIC,
        placed=placed[:-1],
    )


class StoreGoingAway:
    """Fault injection: the first batch write fails as if a record were at
    fault (non-retriable), and the store is then unreachable (retriable) for
    the first write of the one-by-one pass; after that, the real store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.failures = [
            StoreError(
                "apply event batch: a record at fault, as far as the worker can tell", retriable=False
            ),
            StoreError("apply event batch: the database system is shutting down", retriable=True),
        ]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def apply_event_batch(self, events: Any, **window: int) -> Any:
        if self.failures:
            raise self.failures.pop(0)
        return await self._store.apply_event_batch(events, **window)


async def test_store_going_away_while_isolating_a_batch_is_retried_not_fatal(
    broker: str, tmp_path: Path
) -> None:
    """The store becoming unavailable in the middle of the one-by-one pass
    holds the batch and retries it, as an outage during a whole-batch write
    does: the worker neither dies nor dead-letters good records."""
    events = [make_event("going-away", "ep", f"e-{n}", NOW_MS) for n in range(3)]
    await produce(broker, encoded(events))
    store = await SqliteStore.open(tmp_path / "store.sqlite3")
    flaky = StoreGoingAway(store)
    running = start_worker(broker, cast(Store, flaky), "going-away")
    try:
        await running.until(lambda: running.events("aggregated") == len(events), "every event aggregated")
        assert flaky.failures == []
        assert running.events("dead_lettered") == 0
        assert running.sample("ingest_kpi_store_retries_total") >= 1
        assert await sums(store, "going-away", "events") == [(TODAY, "", len(events))]
    finally:
        await running.stop()
        await store.close()


# --- `ingest run` ----------------------------------------------------------------


def worker_samples(pipeline: Pipeline) -> dict[str, float]:
    """The KPI and lag samples of /metrics (no buckets), by their text
    without the label naming the process that reported them."""
    found = {}
    for sample in samples_named(pipeline, "ingest_kpi_", "ingest_consumer_lag_records"):
        if sample.name.endswith(("_bucket", "_created")):
            continue
        labels = ",".join(f'{name}="{value}"' for name, value in without_process(sample.labels).items())
        found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def put_events(client: Any, app_id: str, ids: list[str], timestamp_ms: int) -> None:
    stamp = datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")
    events = {event_id: {"EventType": "screen", "Timestamp": stamp} for event_id in ids}
    batch = {"device": {"Endpoint": {}, "Events": events}}
    response = client.put_events(ApplicationId=app_id, EventsRequest={"BatchItem": batch})
    results = response["EventsResponse"]["Results"]["device"]["EventsItemResponse"]
    assert {r["StatusCode"] for r in results.values()} == {202}


def test_ingest_run_aggregates_events_exposes_kpi_metrics_and_drains_on_stop(tmp_path: Path) -> None:
    """PutEvents through `ingest run`: the KPI worker's metrics show them
    aggregated once (a client retry counts as duplicate), both workers' lag
    shares one gauge; events accepted just before SIGTERM are aggregated by
    the drain, before the embedded broker stops."""
    running = start_pipeline(tmp_path, INGEST_DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S))
    try:
        client = running.client()
        app_id = client.create_app(CreateApplicationRequest={"Name": "kpis"})["ApplicationResponse"]["Id"]
        # A minute ago: a real timestamp, of a real day.
        timestamp_ms = int(time.time() * 1000) - 60_000
        first = [str(uuid.uuid4()) for _ in range(5)]
        put_events(client, app_id, first, timestamp_ms)
        aggregated = 'ingest_kpi_events_total{outcome="aggregated"}'
        duplicate = 'ingest_kpi_events_total{outcome="duplicate"}'
        eventually(lambda: worker_samples(running), lambda got: got.get(aggregated) == 5, "5 aggregated", 30)
        put_events(client, app_id, first, timestamp_ms)  # a client retrying the same event IDs

        def lag_of_both(got: dict[str, float]) -> bool:
            """One lag gauge, both workers (each reports once it has fetched)."""
            lags = [name for name in got if name.startswith("ingest_consumer_lag")]
            return all(
                any(f'topic="{topic}"' in name for name in lags)
                for topic in (EVENTS_TOPIC, clients.ENDPOINTS_TOPIC)
            )

        got = eventually(
            lambda: worker_samples(running),
            lambda got: got.get(duplicate) == 5 and lag_of_both(got),
            "5 duplicates, and both workers' lag",
            30,
        )
        assert got[aggregated] == 5
        assert got["ingest_kpi_batch_events_count"] == got["ingest_kpi_write_seconds_count"] >= 2
        assert got["ingest_kpi_batch_events_sum"] == 10

        last = [str(uuid.uuid4()) for _ in range(20)]
        put_events(client, app_id, last, timestamp_ms)
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(60) == 0, running.log()
    finally:
        running.stop(signal.SIGKILL)
    log = running.log()
    assert "KPI worker drained to the end of its partitions" in log
    assert "endpoint worker drained to the end of its partitions" in log
    assert "stopped cleanly" in log

    async def aggregated_events() -> list[tuple[int, str, int]]:
        store = await SqliteStore.open(running.data_dir / "ingest.sqlite3")
        try:
            return await sums(store, app_id, "events")
        finally:
            await store.close()

    assert asyncio.run(aggregated_events()) == [(kpis.day_of(timestamp_ms), "", 25)]


def test_worker_kpis_requires_a_bootstrap() -> None:
    done = run_ingest("worker", "kpis")
    assert done.returncode != 0
    assert b"INGEST_KAFKA_BOOTSTRAP is required for `ingest worker kpis`" in done.stderr
