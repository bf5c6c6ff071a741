"""The streams worker's lanes against a real broker and store, with senders
that only inject faults: a destination down parks its lane while the others
deliver, a recovered lane gets everything it missed and no other lane gets
anything twice, a partial failure re-sends only what failed, a held commit
survives a restart, and an oversized record is dead-lettered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from ingest.errors import DeliveryError, StoreError
from ingest.kafka import clients
from ingest.metrics import StreamMetrics
from ingest.records.codec import Codec
from ingest.records.values import Event
from ingest.settings import Settings
from ingest.store.backends import open_store
from ingest.store.base import App, EventStream, Store
from ingest.streams import record
from ingest.streams import worker as worker_module
from ingest.streams.aws import RecordFailure
from ingest.streams.destinations import parse
from ingest.streams.senders import Item, Target
from ingest.streams.worker import StreamWorker
from tests.kafka_reader import read_partition

KINESIS = "arn:aws:kinesis:us-east-1:123456789012:stream/{}"
ROLE = "arn:aws:iam::123456789012:role/stream"
WITHIN_S = 30.0


@dataclass
class Faulty:
    """Records what it is sent; fails as told (the only fake: faults)."""

    down: bool = False
    # Per item data, how many more times to name it failed.
    fail_items: dict[bytes, int] = field(default_factory=dict)
    sent: list[Item] = field(default_factory=list)
    delivered: dict[str, list[Item]] = field(default_factory=dict)

    async def send(self, target: Target, items: Sequence[Item]) -> list[RecordFailure | None]:
        self.sent.extend(items)
        if self.down:
            raise DeliveryError("the test stopped it", reason="unavailable", retriable=True)
        out: list[RecordFailure | None] = []
        for item in items:
            left = self.fail_items.get(item.data, 0)
            if left:
                self.fail_items[item.data] = left - 1
                out.append(
                    RecordFailure(
                        code="ProvisionedThroughputExceededException",
                        message="Rate exceeded for shard",
                        reason="throttled",
                        retriable=True,
                    )
                )
            else:
                self.delivered.setdefault(target.destination.name, []).append(item)
                out.append(None)
        return out

    def names(self, stream: str) -> list[str]:
        """The event IDs a stream has got, in delivery order."""
        return [orjson.loads(item.data)["ingest"]["event_id"] for item in self.delivered.get(stream, [])]


def event(app_id: str, endpoint: int, number: int, *, attributes: dict[str, str] | None = None) -> Event:
    ms = 1_764_547_200_000 + number
    return Event(
        app_id=app_id,
        endpoint_id=f"ep-{endpoint}",
        event_id=f"{app_id[:6]}-{endpoint}-{number}",
        request_id="req",
        received_at_ms=ms,
        event_type="_session.start",
        timestamp="2025-12-01T00:00:00.000Z",
        timestamp_ms=ms,
        attributes=attributes,
    )


@pytest.fixture(autouse=True)
def quick_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A parked lane's probe at most every 0.5 s (30 s in production), so
    a test's recovery is seen in a bounded time however long it was down."""
    monkeypatch.setattr(worker_module, "BACKOFF_MAX_S", 0.5)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(None, data_dir=tmp_path)
    try:
        yield opened
    finally:
        await opened.close()


async def stream_to(store: Store, app_id: str, arn: str) -> None:
    await store.create_app(
        App(
            id=app_id,
            name=app_id,
            arn=f"arn:aws:mobiletargeting:us-east-1:0:apps/{app_id}",
            tags={},
            creation_date="x",
        )
    )
    assert await store.put_event_stream(
        EventStream(
            app_id=app_id,
            destination_arn=arn,
            role_arn=ROLE,
            external_id=None,
            last_modified="2026-12-01T00:00:00.000Z",
            last_updated_by="test",
        )
    )


async def produce(bootstrap: str, events: Sequence[Event]) -> None:
    codec = Codec()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for one in events:
            await producer.send(
                clients.EVENTS_TOPIC, codec.encode_event(one), key=f"{one.app_id}:{one.endpoint_id}".encode()
            )
        await producer.flush()
    finally:
        await producer.stop()


class Running:
    """A StreamWorker of the test's, run as a task."""

    def __init__(self, bootstrap: str, store: Store, sender: Faulty, *, park_after_s: float = 0.3) -> None:
        settings = Settings()
        self.worker = StreamWorker(
            clients.consumer(settings, bootstrap, group_id=clients.STREAMS_GROUP),
            clients.deadletter_producer(settings, bootstrap, idempotence=False),
            store,
            codec=Codec(),
            senders={"kinesis": sender, "firehose": sender, "kafka": sender},
            metrics=StreamMetrics(CollectorRegistry()),
            max_records=100,
            drain_timeout_s=10.0,
            config_refresh_s=0.2,
            park_after_s=park_after_s,
        )
        self.task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        self.worker.stop()
        await self.task


async def until(check: object, what: str) -> None:
    """Poll ``check()`` until it holds; fail after WITHIN_S."""
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + WITHIN_S
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {WITHIN_S:g} s")
        await asyncio.sleep(0.05)  # between polls, not instead of one


def in_order(names: list[str]) -> dict[str, list[int]]:
    """Per endpoint, the numbers of its events in the order they came."""
    out: dict[str, list[int]] = {}
    for name in names:
        _, endpoint, number = name.rsplit("-", 2)
        out.setdefault(endpoint, []).append(int(number))
    return out


async def test_every_record_reaches_its_stream_in_order_per_endpoint(broker: str, store: Store) -> None:
    await clients.ensure_topics(Settings(), broker)
    await stream_to(store, "a" * 32, KINESIS.format("alpha"))
    await stream_to(store, "b" * 32, KINESIS.format("beta"))
    sender = Faulty()
    running = Running(broker, store, sender)
    events = [event(app, n % 5, n) for n in range(300) for app in ("a" * 32, "b" * 32, "c" * 32)]
    await produce(broker, events)
    await until(
        lambda: len(sender.names("alpha")) == 300 and len(sender.names("beta")) == 300, "all delivered"
    )
    await running.stop()
    for stream in ("alpha", "beta"):
        numbers = in_order(sender.names(stream))
        assert all(got == sorted(got) for got in numbers.values()), numbers
        assert sorted(n for got in numbers.values() for n in got) == list(range(300))
    # The app with no stream is passed over; nothing else went anywhere.
    assert len(sender.sent) == 600


async def test_a_target_that_is_down_parks_while_others_deliver_then_gets_everything(
    broker: str, store: Store
) -> None:
    await clients.ensure_topics(Settings(), broker)
    await stream_to(store, "a" * 32, KINESIS.format("down"))
    await stream_to(store, "b" * 32, KINESIS.format("up"))
    down, up = Faulty(down=True), Faulty()

    class ByStream:
        async def send(self, target: Target, items: Sequence[Item]) -> list[RecordFailure | None]:
            return await (down if target.destination.name == "down" else up).send(target, items)

    running = Running(broker, store, ByStream())  # type: ignore[arg-type]
    first = [event(app, n % 4, n) for n in range(200) for app in ("a" * 32, "b" * 32)]
    await produce(broker, first)
    await until(lambda: len(up.names("up")) == 200, "the healthy stream delivered while the other is down")
    await until(lambda: bool(running.worker.degraded()), "the down stream listed as degraded")
    assert "down" in running.worker.degraded()[0] and "unavailable" in running.worker.degraded()[0]
    assert down.names("down") == []
    # More events while parked: the healthy one keeps flowing.
    more = [event(app, n % 4, n) for n in range(200, 300) for app in ("a" * 32, "b" * 32)]
    await produce(broker, more)
    await until(lambda: len(up.names("up")) == 300, "the healthy stream flows on")
    down.down = False
    await until(lambda: len(down.names("down")) == 300, "the recovered stream got every event")
    await until(lambda: not running.worker.degraded(), "no stream degraded")
    await running.stop()
    assert sorted(up.names("up")) == sorted(set(up.names("up"))), "the healthy stream got nothing twice"
    numbers = in_order(down.names("down"))
    assert all(got == sorted(got) for got in numbers.values()), numbers
    assert sorted(n for got in numbers.values() for n in got) == list(range(300))


async def test_a_partial_failure_resends_only_the_records_it_names(broker: str, store: Store) -> None:
    await clients.ensure_topics(Settings(), broker)
    await stream_to(store, "a" * 32, KINESIS.format("flaky"))
    sender = Faulty()
    events = [event("a" * 32, n % 3, n) for n in range(90)]
    # Every fifth record fails twice before it lands.
    failing = [e for number, e in enumerate(events) if number % 5 == 0]
    running = Running(broker, store, sender, park_after_s=30.0)
    sender.fail_items = {record.encode(e): 2 for e in failing}
    await produce(broker, events)
    await until(lambda: len(sender.names("flaky")) == 90, "every record delivered")
    await running.stop()
    sent = [orjson.loads(item.data)["ingest"]["event_id"] for item in sender.sent]
    counts = {name: sent.count(name) for name in set(sent)}
    failed = {e.event_id for e in failing}
    assert {name for name, count in counts.items() if count > 1} == failed
    assert all(counts[name] == 3 for name in failed), counts
    assert sorted(sender.names("flaky")) == sorted(e.event_id for e in events)


async def test_a_parked_target_holds_the_commit_so_a_restart_delivers_what_it_missed(
    broker: str, store: Store
) -> None:
    await clients.ensure_topics(Settings(), broker)
    await stream_to(store, "a" * 32, KINESIS.format("later"))
    await stream_to(store, "b" * 32, KINESIS.format("now"))
    sender = Faulty()

    class DownForLater:
        async def send(self, target: Target, items: Sequence[Item]) -> list[RecordFailure | None]:
            if target.destination.name == "later":
                raise DeliveryError("not yet", reason="not_found", retriable=False)
            return await sender.send(target, items)

    running = Running(broker, store, DownForLater())  # type: ignore[arg-type]
    await produce(broker, [event(app, n % 2, n) for n in range(100) for app in ("a" * 32, "b" * 32)])
    await until(lambda: len(sender.names("now")) == 100, "the healthy stream delivered")
    await until(lambda: bool(running.worker.degraded()), "the other parked")
    await running.stop()
    # A new worker (a restart) with the destination back: it reads from the held commit.
    again = Running(broker, store, sender)
    await until(lambda: len(sender.names("later")) == 100, "the held records delivered after the restart")
    await again.stop()
    assert sorted(sender.names("later")) == sorted(f"{'a' * 6}-{n % 2}-{n}" for n in range(100))
    # At-least-once: the healthy stream may have got some again, never fewer.
    assert set(sender.names("now")) == {f"{'b' * 6}-{n % 2}-{n}" for n in range(100)}


async def test_a_record_too_large_for_its_service_is_dead_lettered_and_the_rest_flow(
    broker: str, store: Store
) -> None:
    await clients.ensure_topics(Settings(), broker)
    await stream_to(store, "a" * 32, KINESIS.format("sized"))
    sender = Faulty()
    running = Running(broker, store, sender)
    # 600 KB in Avro (so it fits the dead-letter topic), over 1 MiB as JSON,
    # where each quote is escaped.
    huge = event("a" * 32, 0, 1, attributes={f"k{n}": '"' * 20_000 for n in range(30)})
    await produce(broker, [event("a" * 32, 0, 0), huge, event("a" * 32, 0, 2)])
    await until(lambda: len(sender.names("sized")) == 2, "the records around it delivered")
    await running.stop()
    assert sender.names("sized") == [f"{'a' * 6}-0-0", f"{'a' * 6}-0-2"]
    dead = await read_partition(
        broker, TopicPartition(clients.DEADLETTER_TOPIC, 0), 0, lambda got: len(got) >= 1, WITHIN_S
    )
    headers = {name: value.decode() for name, value in dead[0].headers}
    assert "kinesis takes at most" in headers["ingest-reason"], headers


async def test_a_stream_added_while_running_gets_the_events_that_follow(broker: str, store: Store) -> None:
    await clients.ensure_topics(Settings(), broker)
    sender = Faulty()
    running = Running(broker, store, sender)
    await until(lambda: running.worker.ready, "the worker ready")
    await stream_to(store, "a" * 32, "arn:aws:kafka:us-east-1:123456789012:topic/c/0000-1111/stream.new")
    # Produced right after the stream exists: never passed over for want of it.
    await produce(broker, [event("a" * 32, 0, n) for n in range(20)])
    await until(lambda: len(sender.names("stream.new")) == 20, "the new stream's events")
    await running.stop()
    assert parse("arn:aws:kafka:us-east-1:123456789012:topic/c/0000-1111/stream.new").kind == "kafka"


async def test_a_parked_stream_deleted_is_let_go(broker: str, store: Store) -> None:
    await clients.ensure_topics(Settings(), broker)
    await stream_to(store, "a" * 32, KINESIS.format("gone"))
    sender = Faulty(down=True)
    running = Running(broker, store, sender)
    await produce(broker, [event("a" * 32, 0, n) for n in range(10)])
    await until(lambda: bool(running.worker.degraded()), "the stream parked")
    assert await store.delete_event_stream("a" * 32) is not None
    await until(lambda: not running.worker.degraded(), "the deleted stream no longer held")
    sent = len(sender.sent)
    sender.down = False
    await produce(broker, [event("a" * 32, 0, n) for n in range(10, 20)])
    await running.stop()
    # Nothing more went to the deleted stream: no probe, no read-back.
    assert len(sender.sent) == sent
    assert sender.names("gone") == []


def test_a_parked_lane_holds_the_earliest_record_whatever_order_polls_are_held_in() -> None:
    """Polls are prepared ahead of their delivery: a later poll's records can
    be held before an earlier poll's. The lane must keep the earliest (a
    record held out of order was lost to the read-back once)."""
    lane = worker_module.Lane(Target(parse(KINESIS.format("s")), ROLE, None))
    tp = TopicPartition(clients.EVENTS_TOPIC, 3)
    lane.hold(tp, 51)  # the later poll, prepared while the lane was parked
    lane.hold(tp, 1)  # the earlier one, prepared while it flowed, delivered after it parked
    lane.hold(tp, 20)
    assert lane.next[tp] == 1


class Unreadable:
    """The store, but reads of the stream configuration fail while ``down``
    (the only fake: a fault)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.down = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def list_event_streams(self) -> Sequence[EventStream]:
        if self.down:
            raise StoreError("the test made the store unreadable", retriable=True)
        return await self._store.list_event_streams()


async def test_records_newer_than_the_configuration_wait_for_it_to_be_read(broker: str, store: Store) -> None:
    """A stream added while the store cannot be read: the worker holds the
    records that arrived since its last read rather than pass them over."""
    await clients.ensure_topics(Settings(), broker)
    flaky = Unreadable(store)
    sender = Faulty()
    running = Running(broker, flaky, sender)  # type: ignore[arg-type]
    await until(lambda: running.worker.ready, "the worker ready")
    flaky.down = True
    await stream_to(store, "a" * 32, KINESIS.format("added"))
    await produce(broker, [event("a" * 32, 0, n) for n in range(30)])
    await until(lambda: not running.worker.ready, "not ready while the configuration cannot be read")
    assert sender.sent == []
    flaky.down = False
    await until(lambda: len(sender.names("added")) == 30, "every record once the configuration is read")
    await running.stop()
