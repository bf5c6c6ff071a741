"""FetchPacer on a real consumer of a Tansu broker: a poll that kept up holds
the partitions until the interval is over, so no fetch goes out meanwhile;
the next poll takes in one fetch what arrived; a full batch, a stop, a store
hold and a rebalance are each handled as ingest.kafka.pacing says."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ingest.kafka import clients
from ingest.kafka.clients import FETCH_MAX_WAIT_BEHIND_MS
from ingest.kafka.pacing import FetchPacer
from ingest.settings import Settings

TOPIC = "paced"
INTERVAL_S = 0.4
MAX_RECORDS = 50
# The consumer's own short wait, not the default: the pacer goes back to the
# wait its consumer was built with (INGEST_WORKER_FETCH_WAIT_MS).
SHORT_WAIT_MS = 70
TP0, TP1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


@pytest.fixture
async def kafka(broker: str) -> AsyncIterator[tuple[AIOKafkaProducer, AIOKafkaConsumer]]:
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    # Assigned by hand: no group to join, the same pause and fetch machinery.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker, auto_offset_reset="earliest", fetch_max_wait_ms=SHORT_WAIT_MS
    )
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(TOPIC, b"create", partition=0)  # auto-created, 4 partitions
        consumer.assign([TP0, TP1])
        yield producer, consumer
    finally:
        await consumer.stop()
        await producer.stop()


async def _send(producer: AIOKafkaProducer, count: int, partition: int = 0) -> None:
    for n in range(count):
        await producer.send(TOPIC, f"r{n}".encode(), partition=partition)
    await producer.flush()


async def _poll(consumer: AIOKafkaConsumer, pacer: FetchPacer, want: int) -> int:
    """Poll until ``want`` records came (at most 5 s); → how many, the
    pacer told of the last poll."""
    got = 0
    deadline = time.monotonic() + 5
    while got < want and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
        count = sum(len(m) for m in batch.values())
        pacer.polled(batch)
        got += count
        if got < want:
            await pacer.wait()
    return got


async def _first_poll(
    consumer: AIOKafkaConsumer, max_records: int = MAX_RECORDS
) -> dict[TopicPartition, list[Any]]:
    """The first poll that brings records (with no other sent, the "create"
    record: all there was), to tell the pacer of, as often as a test needs:
    it reads only offsets of it."""
    batch: dict[TopicPartition, list[Any]] = {}
    while not batch:
        batch = await consumer.getmany(timeout_ms=2000, max_records=max_records)
    return batch


async def test_a_poll_that_kept_up_holds_the_partitions_for_the_interval(
    kafka: tuple[AIOKafkaProducer, AIOKafkaConsumer],
) -> None:
    producer, consumer = kafka
    pacer = FetchPacer(consumer, interval_s=INTERVAL_S, max_records=MAX_RECORDS, stopping=asyncio.Event())
    assert await _poll(consumer, pacer, 1) == 1  # the "create" record: a poll that kept up
    polled_at = time.monotonic()
    assert consumer.paused() == {TP0, TP1}
    # Records arriving meanwhile are not fetched: a paused partition has no
    # fetch in flight, so nothing is buffered for the next poll yet.
    await _send(producer, 5)
    await asyncio.sleep(0.15)
    assert consumer.paused() == {TP0, TP1}
    assert await consumer.getmany(timeout_ms=0) == {}
    await pacer.wait()
    assert time.monotonic() - polled_at >= INTERVAL_S - 0.01
    assert consumer.paused() == set()
    # Resumed, the next poll takes everything that arrived, in one fetch.
    batch = await consumer.getmany(timeout_ms=2000, max_records=MAX_RECORDS)
    assert [m.value for m in batch[TP0]] == [f"r{n}".encode() for n in range(5)]


async def test_a_worker_behind_is_never_held(kafka: tuple[AIOKafkaProducer, AIOKafkaConsumer]) -> None:
    producer, consumer = kafka
    pacer = FetchPacer(consumer, interval_s=INTERVAL_S, max_records=MAX_RECORDS, stopping=asyncio.Event())
    await _send(producer, 9)  # 10 records on partition 0, with "create"
    # A poll that ends below the high watermark: records are left.
    batch = await _first_poll(consumer, max_records=3)
    assert consumer.highwater(TP0) == 10 and batch[TP0][-1].offset == 2
    pacer.polled(batch)
    assert consumer.paused() == set()
    started = time.monotonic()
    await pacer.wait()
    assert time.monotonic() - started < 0.05
    pacer.polled({TP0: batch[TP0][:1] * MAX_RECORDS})  # a full batch: the next fetch goes at once
    assert consumer.paused() == set()
    pacer.polled({})  # an empty poll neither
    assert consumer.paused() == set()


async def test_a_stop_ends_the_wait_and_a_stopping_worker_is_not_held(
    kafka: tuple[AIOKafkaProducer, AIOKafkaConsumer],
) -> None:
    _, consumer = kafka
    first = await _first_poll(consumer)
    stopping = asyncio.Event()
    pacer = FetchPacer(consumer, interval_s=30.0, max_records=MAX_RECORDS, stopping=stopping)
    pacer.polled(first)
    assert consumer.paused() == {TP0, TP1}
    asyncio.get_running_loop().call_later(0.1, stopping.set)
    started = time.monotonic()
    await pacer.wait()
    assert time.monotonic() - started < 1.0
    assert consumer.paused() == set()
    pacer.polled(first)  # stopping: the drain goes at full speed
    assert consumer.paused() == set()


async def test_partitions_held_by_the_worker_stay_held(
    kafka: tuple[AIOKafkaProducer, AIOKafkaConsumer],
) -> None:
    _, consumer = kafka
    first = await _first_poll(consumer)
    pacer = FetchPacer(consumer, interval_s=0.05, max_records=MAX_RECORDS, stopping=asyncio.Event())
    consumer.pause(TP1)  # the worker's own hold (a store outage)
    pacer.polled(first)
    assert consumer.paused() == {TP0, TP1}
    await pacer.wait(resume=False)  # the store is still out: nothing resumed
    assert consumer.paused() == {TP0, TP1}
    consumer.resume(TP1)  # the worker lets its hold go ...
    await pacer.wait()  # ... and the next wait resumes what the pacer paused
    assert consumer.paused() == set()
    consumer.pause(TP1)
    pacer.polled(first)
    await pacer.wait()
    assert consumer.paused() == {TP1}, "a hold the pacer did not make is not lifted by it"


async def test_a_partition_taken_away_meanwhile_is_not_resumed(
    kafka: tuple[AIOKafkaProducer, AIOKafkaConsumer],
) -> None:
    _, consumer = kafka
    first = await _first_poll(consumer)
    pacer = FetchPacer(consumer, interval_s=0.05, max_records=MAX_RECORDS, stopping=asyncio.Event())
    pacer.polled(first)
    consumer.assign([TP0])  # TP1 went to another member
    await pacer.wait()  # resuming TP1 would raise IllegalStateError
    assert consumer.paused() == set()
    assert consumer.assignment() == {TP0}


async def test_an_interval_of_zero_never_pauses(kafka: tuple[AIOKafkaProducer, AIOKafkaConsumer]) -> None:
    _, consumer = kafka
    first = await _first_poll(consumer)
    pacer = FetchPacer(consumer, interval_s=0.0, max_records=MAX_RECORDS, stopping=asyncio.Event())
    pacer.polled(first)
    assert consumer.paused() == set()


async def test_the_fetch_wait_is_long_only_while_records_wait_beyond_the_position(
    kafka: tuple[AIOKafkaProducer, AIOKafkaConsumer],
) -> None:
    """Tansu stops listing a partition's batches once the fetch's wait has
    passed and answers nothing: a consumer behind by a listing longer than
    the short wait would never get another record."""
    producer, consumer = kafka
    pacer = FetchPacer(consumer, interval_s=0.0, max_records=MAX_RECORDS, stopping=asyncio.Event())
    await _send(producer, 9)  # 10 records on partition 0, with "create"
    fetcher = consumer._fetcher  # what aiokafka builds each fetch request from
    assert fetcher._fetch_max_wait_ms == SHORT_WAIT_MS
    taken = 0
    while taken == 0:
        batch = await consumer.getmany(timeout_ms=2000, max_records=3)
        taken = sum(len(m) for m in batch.values())
    assert taken == 3 and await pacer.behind()
    await pacer.wait()
    assert fetcher._fetch_max_wait_ms == FETCH_MAX_WAIT_BEHIND_MS
    while taken < 10:
        batch = await consumer.getmany(timeout_ms=2000, max_records=MAX_RECORDS)
        taken += sum(len(m) for m in batch.values())
    assert not await pacer.behind()
    await pacer.wait()
    assert fetcher._fetch_max_wait_ms == SHORT_WAIT_MS


async def test_a_workers_consumer_waits_as_configured_while_caught_up() -> None:
    """INGEST_WORKER_FETCH_WAIT_MS is the wait of every worker's consumer
    (never started here: the wait is fixed when it is built)."""
    for settings, wait_ms in ((Settings(worker_fetch_wait_ms=300), 300), (Settings(), 50)):
        consumer = clients.consumer(settings, "127.0.0.1:9", group_id="waits")
        try:
            assert consumer._fetch_max_wait_ms == wait_ms
        finally:
            await consumer.stop()
