"""The publisher's partition choice: aiokafka's murmur2, remembered per key,
picks the partition aiokafka's own DefaultPartitioner (and so the Java
client) picks, whether the records of one key come together or interleaved
with others, and across requests."""

from __future__ import annotations

import asyncio

from aiokafka.partitioner import DefaultPartitioner, murmur2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.kafka.publish import key_hash
from ingest.records.values import OutRecord
from tests.test_publish import TOPIC, FakeProducer, started

keys = st.binary(max_size=80) | st.text(max_size=40).map(lambda t: f"app:{t}".encode())


@settings(max_examples=300, deadline=None)
@given(keys)
def test_key_hash_is_aiokafkas_murmur2_asked_twice(key: bytes) -> None:
    assert key_hash(key) == murmur2(key)
    assert key_hash(key) == murmur2(key)  # the remembered answer


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(keys, min_size=1, max_size=12), min_size=1, max_size=4), st.integers(1, 7))
def test_each_record_goes_where_aiokafka_would_put_it(requests: list[list[bytes]], partitions: int) -> None:
    async def run() -> None:
        producer = FakeProducer(partitions=partitions, batch_capacity=3)
        producer.auto_ack = True
        running = await started(producer)
        try:
            for request in requests:
                records = [OutRecord(TOPIC, key, b"%d" % i) for i, key in enumerate(request)]
                assert await running.publisher.publish(records) == [True] * len(records)
        finally:
            await running.publisher.stop()
        every = list(range(partitions))
        placed = sorted((key, sent.partition) for sent in producer.sent for key, _ in sent.batch.records)
        wanted = sorted(
            (key, DefaultPartitioner()(key, every, every)) for request in requests for key in request
        )
        assert placed == wanted

    asyncio.run(run())
