"""The worker's stall watchdog, with the fault injected: a consumer stuck as
aiokafka#1154 leaves one after a rebalance (polls come back empty while its
partitions have records, or it has no partition at all). A fake consumer
stands in for the stuck one behind the narrow interface the worker uses;
fault injection only."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from ingest.errors import WorkerStalled
from ingest.metrics import WorkerMetrics
from ingest.workers.consumer import Worker

TOPIC = "ingest.endpoints"
POLLS = 20


class StuckConsumer:
    """Every poll comes back empty. ``high`` and ``positions`` say where
    each assigned partition stands; after ``POLLS`` polls it stops the
    worker, so a worker that does not fail still ends."""

    def __init__(self, high: dict[int, int | None], positions: dict[int, int]) -> None:
        self.high = {TopicPartition(TOPIC, p): h for p, h in high.items()}
        self.positions = {TopicPartition(TOPIC, p): o for p, o in positions.items()}
        self.worker: Worker[Any] | None = None
        self.polls = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def subscribe(self, topics: Sequence[str], listener: Any) -> None:
        pass

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.polls += 1
        if self.polls == POLLS and self.worker is not None:
            self.worker.stop()
        return {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.high)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high[tp]

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


class NoProducer:
    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class NullSink:
    topic = TOPIC
    name = "test"

    def __init__(self) -> None:
        self.metrics = WorkerMetrics(CollectorRegistry())

    def decode(self, value: bytes | None) -> bytes | None:
        return value

    async def start(self) -> None:
        pass

    async def write(self, records: Sequence[tuple[bytes | None, int]]) -> None:
        pass

    async def idle(self) -> None:
        pass


def _worker(consumer: StuckConsumer, stall_timeout_s: float) -> Worker[bytes | None]:
    worker = Worker(
        consumer,
        NoProducer(),
        NullSink(),
        max_records=100,
        drain_timeout_s=0,
        stall_timeout_s=stall_timeout_s,
    )
    consumer.worker = worker
    return worker


@pytest.mark.parametrize(
    ("high", "positions", "reason"),
    [
        ({0: 10, 1: 4}, {0: 3, 1: 4}, "ingest.endpoints[0] lag 7"),
        ({0: None}, {0: 0}, "ingest.endpoints[0] no fetch answered"),
        ({}, {}, "no partition of ingest.endpoints assigned"),
    ],
)
async def test_a_stuck_consumer_with_work_left_fails_the_worker(
    high: dict[int, int | None], positions: dict[int, int], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = StuckConsumer(high, positions)
    with caplog.at_level(logging.ERROR), pytest.raises(WorkerStalled) as stalled:
        await _worker(consumer, stall_timeout_s=0).run()
    assert stalled.value.reason == reason
    assert consumer.polls == 1
    assert f"no progress for 0 s: {reason}" in caplog.text


async def test_a_worker_at_the_end_of_its_partitions_is_idle_not_stalled() -> None:
    consumer = StuckConsumer({0: 10, 1: 0}, {0: 10, 1: 0})
    await _worker(consumer, stall_timeout_s=0).run()
    assert consumer.polls >= POLLS


async def test_a_worker_with_lag_fails_only_after_its_stall_timeout() -> None:
    consumer = StuckConsumer({0: 10}, {0: 3})
    await _worker(consumer, stall_timeout_s=3600).run()
    assert consumer.polls >= POLLS
