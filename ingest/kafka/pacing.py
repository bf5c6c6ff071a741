"""How often a worker's consumer fetches while it keeps up.

A consumer that keeps up fetches again as soon as it has taken the last
records: with records arriving all the time, that is a fetch per produce
request or so, for each of the three worker groups. Each fetch that finds
records costs the embedded broker a listing of every batch the partition
ever stored (Tansu's object-store engines answer a fetch that way, and keep
every batch), so that cost grows with the run's age and, on the one broker
the edge produces to, held up the edge's acks: at a steady half of
saturation, the produce round trip grew from 12 ms to 114 ms over five 12 s
rows (load/benchmark-notes.md, "Latency grows with the run's age").

:class:`FetchPacer` spaces those fetches: after a poll that took all the
broker had (the worker is keeping up), the worker's partitions are paused
for the rest of ``interval_s`` from that poll, so that no fetch is sent
meanwhile, and resumed before the next poll, which then takes what arrived
in one fetch. A worker that is behind (a full batch, or a poll that ends
below its partition's high watermark) is never paused, and a stopping one is
not held either (its drain goes at full speed). The cost is freshness: a
record waits up to ``interval_s`` more before its worker reads it.

It also sets how long the broker may take to answer the next fetch: the
short wait the consumer was built with (``INGEST_WORKER_FETCH_WAIT_MS``)
while it is caught up, so a new record is answered soon, and a long one
(``clients.FETCH_MAX_WAIT_BEHIND_MS``) while records lie beyond its position:
Tansu stops listing a partition's batches once the wait has passed and then
answers nothing, so with a backlog whose listing outlasted the short wait the
consumer never got another record. aiokafka reads the wait from its fetcher
for every fetch request (``Fetcher._fetch_max_wait_ms``, aiokafka 0.14;
and the consumer keeps the wait it was built with as
``AIOKafkaConsumer._fetch_max_wait_ms``; ``tests/test_pacing.py`` fails if
either changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from ingest.kafka.clients import FETCH_MAX_WAIT_BEHIND_MS


async def behind(consumer: AIOKafkaConsumer, *, unknown: bool) -> bool:
    """Whether a partition of ``consumer`` has records on the broker beyond its
    position, by the high watermark of the last fetch (Tansu's end_offsets()
    is wrong); a partition no fetch has answered yet counts as ``unknown``."""
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is None:
            if unknown:
                return True
        elif high > await consumer.position(tp):
            return True
    return False


class FetchPacer:
    """Pauses ``consumer``'s partitions after a poll that kept up, until
    ``interval_s`` after it. ``interval_s`` 0 never pauses."""

    def __init__(
        self, consumer: AIOKafkaConsumer, *, interval_s: float, max_records: int, stopping: asyncio.Event
    ) -> None:
        self._consumer = consumer
        self._interval_s = interval_s
        self._max_records = max_records
        self._stopping = stopping
        # The partitions this pacer paused (none other is resumed by it), and
        # until when (monotonic s).
        self._paused: set[TopicPartition] = set()
        self._until = 0.0

    def polled(self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]) -> None:
        """Right after a poll returned ``batch`` (before any await, so the
        consumer's background fetch has not been sent yet). Not after a poll
        that left records on the broker: a full batch, or one that ends below
        its partition's high watermark (the broker may answer a fetch with
        less than there is, as Tansu does when its listing runs out of time)."""
        records = sum(len(messages) for messages in batch.values())
        if self._interval_s <= 0 or records == 0 or records >= self._max_records or self._stopping.is_set():
            return
        for tp, messages in batch.items():
            high = self._consumer.highwater(tp)
            if messages and high is not None and high > messages[-1].offset + 1:
                return
        pausing = self._consumer.assignment() - self._consumer.paused()
        self._consumer.pause(*pausing)
        self._paused |= pausing
        self._until = time.monotonic() + self._interval_s

    async def wait(self, *, resume: bool = True) -> None:
        """Before the next poll: the rest of the interval (ended by a stop),
        then the partitions this pacer paused resumed. With ``resume`` false
        (the worker holds its partitions through a store outage) they stay
        paused, and a later wait resumes them. Then the next fetch's wait set."""
        await self._hold(resume=resume)
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is not None:  # None before the consumer started
            behind = await self.behind()
            # Caught up: the wait the consumer was built with (the fetcher's own
            # is the one changed here).
            short_wait_ms = self._consumer._fetch_max_wait_ms
            fetcher._fetch_max_wait_ms = FETCH_MAX_WAIT_BEHIND_MS if behind else short_wait_ms

    async def behind(self) -> bool:
        """Whether records lie beyond this consumer's position (see :func:`behind`)."""
        return await behind(self._consumer, unknown=False)

    async def _hold(self, *, resume: bool) -> None:
        if not self._paused:
            return
        remaining = self._until - time.monotonic()
        if remaining > 0 and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), remaining)
        if not resume:
            return
        # A rebalance may have taken some of them meanwhile.
        self._consumer.resume(*(self._paused & self._consumer.assignment()))
        self._paused = set()
