"""ingest.kafka.publish.Publisher in process, with a fake producer behind its
Producer protocol to inject what a broker does badly: acks that fail or never
come, a hand-over that raises, a pump that dies. The real producer against
the broker is covered in test_kafka.py and the API tests.

Nothing here waits a fixed time to synchronise: each wait is on a future or
an event, bounded by ``asyncio.timeout``. The only short timers are the
produce and drain deadlines whose expiry a test is about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NamedTuple

import pytest
from aiokafka.partitioner import murmur2
from prometheus_client import CollectorRegistry

from ingest.errors import Overloaded
from ingest.kafka.publish import RECORD_OVERHEAD_BYTES, Publisher
from ingest.metrics import Metrics
from ingest.records.values import OutRecord

TOPIC = "ingest.events"
# Bound on any wait for the code under test: far above what it needs, so a
# hang fails the test instead of stalling the run.
WAIT_S = 5.0
# A produce deadline no test reaches unless it is about the deadline.
LONG_S = 30.0
SHORT_S = 0.05


class PumpKilled(BaseException):
    """Not an Exception, so the pump's handler does not catch it: the pump
    dies as it would on a bug."""


class FakeBatch:
    """A record batch that holds ``capacity`` records, then refuses (None),
    as aiokafka's BatchBuilder does when full."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, timestamp: int | None, key: bytes, value: bytes) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()


class Sent(NamedTuple):
    topic: str
    partition: int
    batch: FakeBatch
    ack: asyncio.Future[Any]


class FakeProducer:
    """Keeps each batch handed to it with its ack future, which the test
    resolves (or ``auto_ack`` does at once); ``hand_over_error`` makes the
    next ``send_batch`` raise it."""

    def __init__(self, *, partitions: int = 1, batch_capacity: int = 100) -> None:
        self.partitions = partitions
        self.batch_capacity = batch_capacity
        self.batches_created = 0
        self.sent: list[Sent] = []
        self.auto_ack = False
        self.hand_over_error: BaseException | None = None
        self.started = 0
        self.stopped = 0
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        self.started += 1

    async def stop(self) -> None:
        self.stopped += 1

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> FakeBatch:
        self.batches_created += 1
        return FakeBatch(self.batch_capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        error, self.hand_over_error = self.hand_over_error, None
        self._arrived.set()
        if error is not None:
            raise error
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.auto_ack:
            ack.set_result(None)
        self.sent.append(Sent(topic, partition, batch, ack))
        return ack

    async def handed_over(self, count: int) -> list[Sent]:
        """The batches handed over, once they hold ``count`` records."""
        async with asyncio.timeout(WAIT_S):
            while sum(len(sent.batch.records) for sent in self.sent) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return list(self.sent)


def record(key: str, value: str, *, size: int = 0) -> OutRecord:
    return OutRecord(TOPIC, key.encode(), value.encode().ljust(size, b"."))


def nbytes(records: Sequence[OutRecord]) -> int:
    return sum(len(r.key) + len(r.value) + RECORD_OVERHEAD_BYTES for r in records)


class Rig(NamedTuple):
    publisher: Publisher
    producer: FakeProducer
    registry: CollectorRegistry

    def buffered(self) -> float | None:
        return self.registry.get_sample_value("ingest_producer_buffer_bytes")

    def batches(self, outcome: str) -> float | None:
        return self.registry.get_sample_value(
            "ingest_kafka_produce_batches_total", {"topic": TOPIC, "outcome": outcome}
        )


def rig(
    producer: FakeProducer,
    *,
    produce_timeout_s: float = LONG_S,
    buffer_bytes: int = 1 << 20,
    drain_timeout_s: float = LONG_S,
) -> Rig:
    registry = CollectorRegistry()
    publisher = Publisher(
        producer,
        topics=[TOPIC],
        produce_timeout_s=produce_timeout_s,
        buffer_bytes=buffer_bytes,
        drain_timeout_s=drain_timeout_s,
        metrics=Metrics(registry),
    )
    return Rig(publisher, producer, registry)


async def started(producer: FakeProducer, **deadlines: Any) -> Rig:
    running = rig(producer, **deadlines)
    await running.publisher.start()
    return running


async def test_each_record_gets_the_outcome_of_its_own_batch() -> None:
    """Three partitions, batches of two: every record is answered with its
    batch's ack, and a key's records reach one partition in publish order."""
    running = await started(FakeProducer(partitions=3, batch_capacity=2))
    records = [record(f"app:e{i % 4}", f"v{i}") for i in range(10)]
    publishing = asyncio.create_task(running.publisher.publish(records))
    batches = await running.producer.handed_over(len(records))
    assert len(batches) > 3  # some partition's records filled more than one batch
    outcomes: dict[bytes, bool] = {}
    for number, sent in enumerate(batches):
        ok = number % 2 == 0
        if ok:
            sent.ack.set_result(None)
        else:
            sent.ack.set_exception(ConnectionError("broker went away"))
        outcomes.update({value: ok for _, value in sent.batch.records})
    async with asyncio.timeout(WAIT_S):
        answers = await publishing
    assert answers == [outcomes[r.value] for r in records]
    assert False in answers
    assert True in answers

    on_partition: dict[bytes, set[int]] = {}
    in_order: dict[bytes, list[bytes]] = {}
    for sent in running.producer.sent:
        for key, value in sent.batch.records:
            on_partition.setdefault(key, set()).add(sent.partition)
            in_order.setdefault(key, []).append(value)
    for key, partitions in on_partition.items():
        assert partitions == {(murmur2(key) & 0x7FFFFFFF) % 3}
        assert in_order[key] == [r.value for r in records if r.key == key]
    assert running.buffered() == 0
    await running.publisher.stop()


async def test_one_batch_failing_to_hand_over_fails_only_its_records() -> None:
    running = await started(FakeProducer())
    running.producer.hand_over_error = RuntimeError("the producer refused the batch")
    async with asyncio.timeout(WAIT_S):
        assert await running.publisher.publish([record("app:e1", "v1")]) == [False]
    running.producer.auto_ack = True
    async with asyncio.timeout(WAIT_S):
        assert await running.publisher.publish([record("app:e1", "v2")]) == [True]
    assert (running.batches("failed"), running.batches("acked")) == (1, 1)
    assert running.publisher.healthy
    await running.publisher.stop()


async def test_a_dead_pump_fails_its_waiters_at_once() -> None:
    """With a produce deadline of 30 s, only failing the waiters when the
    pump dies answers within the bound."""
    running = await started(FakeProducer(partitions=2))
    running.producer.hand_over_error = PumpKilled()
    records = [record(f"app:e{i}", f"v{i}") for i in range(6)]
    async with asyncio.timeout(WAIT_S):
        assert await running.publisher.publish(records) == [False] * len(records)
    assert running.buffered() == 0
    assert not running.publisher.healthy
    async with asyncio.timeout(WAIT_S):
        await running.publisher.stop()
    assert running.producer.stopped == 1


async def test_overloaded_is_raised_before_queueing_anything() -> None:
    first = [record("app:e1", "v1", size=500)]
    running = await started(FakeProducer(), buffer_bytes=nbytes(first) * 2 - 1)
    publishing = asyncio.create_task(running.publisher.publish(first))
    (sent,) = await running.producer.handed_over(1)
    created = running.producer.batches_created

    with pytest.raises(Overloaded, match="producer buffer full"):
        await running.publisher.publish([record("app:e2", "v2", size=500)])
    assert running.producer.batches_created == created
    assert running.buffered() == nbytes(first)

    sent.ack.set_result(None)
    async with asyncio.timeout(WAIT_S):
        assert await publishing == [True]
    assert running.buffered() == 0
    running.producer.auto_ack = True
    async with asyncio.timeout(WAIT_S):
        assert await running.publisher.publish([record("app:e2", "v2", size=500)]) == [True]
        await running.publisher.stop()


async def test_records_larger_than_the_whole_buffer_are_overloaded() -> None:
    small = await started(FakeProducer(), buffer_bytes=100)
    with pytest.raises(Overloaded, match="producer buffer full"):
        await small.publisher.publish([record("app:e1", "v", size=100)])
    assert small.producer.batches_created == 0
    await small.publisher.stop()


async def test_no_records_are_answered_at_once_with_no_outcomes() -> None:
    # UpdateEndpointsBatch {"Item": []} publishes nothing; it once raised
    # asyncio.wait's ValueError, a 500 (found by `python -m load fuzz`).
    running = await started(FakeProducer())
    async with asyncio.timeout(WAIT_S):
        assert await running.publisher.publish([]) == []
    assert running.producer.batches_created == 0
    await running.publisher.stop()


async def test_a_publisher_not_started_refuses_records() -> None:
    publisher = rig(FakeProducer()).publisher
    with pytest.raises(Overloaded, match="not accepting"):
        await publisher.publish([record("app:e1", "v1")])
    assert not publisher.healthy


async def test_a_record_without_an_ack_by_the_deadline_is_answered_false() -> None:
    running = await started(FakeProducer(), produce_timeout_s=SHORT_S)
    async with asyncio.timeout(WAIT_S):
        assert await running.publisher.publish([record("app:e1", "v1")]) == [False]
    # Still in flight: its bytes stay counted and the publisher is unhealthy
    # until Kafka answers.
    assert running.buffered() == nbytes([record("app:e1", "v1")])
    assert not running.publisher.healthy
    (sent,) = await running.producer.handed_over(1)
    sent.ack.set_result(None)
    running.producer.auto_ack = True
    async with asyncio.timeout(WAIT_S):
        assert await running.publisher.publish([record("app:e1", "v2")]) == [True]
    assert running.buffered() == 0
    assert running.batches("acked") == 2
    assert running.publisher.healthy
    await running.publisher.stop()


async def test_stop_drains_in_flight_records_then_closes_once() -> None:
    running = await started(FakeProducer())
    publishing = asyncio.create_task(running.publisher.publish([record("app:e1", "v1")]))
    (sent,) = await running.producer.handed_over(1)

    stopping = asyncio.create_task(running.publisher.stop())
    # Scheduled after stop(), so it runs once stop() has begun: refused.
    late = asyncio.create_task(running.publisher.publish([record("app:e1", "v2")]))
    with pytest.raises(Overloaded, match="draining"):
        await late
    assert not stopping.done()
    assert running.producer.stopped == 0  # not closed under an unacknowledged record

    sent.ack.set_result(None)
    async with asyncio.timeout(WAIT_S):
        await stopping
        assert await publishing == [True]
    assert running.producer.stopped == 1

    async with asyncio.timeout(WAIT_S):
        await running.publisher.stop()
    assert running.producer.stopped == 1
    assert len(running.producer.sent) == 1


async def test_stop_past_the_drain_deadline_fails_what_is_left() -> None:
    running = await started(FakeProducer(), drain_timeout_s=SHORT_S)
    publishing = asyncio.create_task(running.publisher.publish([record("app:e1", "v1")]))
    await running.producer.handed_over(1)
    async with asyncio.timeout(WAIT_S):
        await running.publisher.stop()
        assert await publishing == [False]
    assert running.producer.stopped == 1
    assert running.buffered() == 0


async def test_as_a_context_manager_it_starts_and_stops_the_producer() -> None:
    producer = FakeProducer()
    producer.auto_ack = True
    publisher = rig(producer).publisher
    async with asyncio.timeout(WAIT_S), publisher:
        assert publisher.healthy
        assert await publisher.publish([record("app:e1", "v1")]) == [True]
    assert (producer.started, producer.stopped) == (1, 1)
