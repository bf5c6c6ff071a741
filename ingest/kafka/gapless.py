"""A consumer that never moves past a record not yet visible.

Tansu, the embedded broker, can make a later batch of a partition visible
before an earlier one when two producers append to that partition at once:
a consumer at the end of the log is handed offsets N+2… while N and N+1 are
still being stored, moves past them, and never reads them, though every
later reader finds them (load/benchmark-notes.md, "Why the embedded broker
took one edge"; measured: 4 of 60,000 records skipped by a tailing consumer
with six producers, none by a second reader). A Kafka cluster hands out no
such gap: the pipeline's topics are neither compacted nor written in
transactions, so their offsets run without holes.

:class:`GaplessConsumer` checks that each partition's records follow on from
the last it returned (or from where it was last sought). At a gap it returns
the records before it, seeks back to the missing offset and fetches again,
so nothing after a gap is handed to a worker, and so committed, before the
gap is filled. A gap still open after ``patience_s`` is a real one (a topic
someone compacted, transactional markers, records removed by retention
under a consumer that fell behind): it is logged and passed.

Where it starts: before the first fetch of a partition it was just given
(by the group, or by ``assign``), it asks for the partition's position: the
committed offset, or where the reset policy puts a group with none. So the
first fetch is checked like any other. That matters where the race is: a
worker that stops at the tail of the log (caught up, then restarted, or a
first start while the edges are already producing) resumes at the tail. A
position not known within the poll's timeout (the coordinator still
answering) makes that poll return nothing; the next one asks again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from time import monotonic
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter

log = logging.getLogger(__name__)

# How long a gap is held before it is taken as real. Tansu's stored the
# earlier batch within milliseconds in every gap measured; a real gap (see
# above) costs its partition this much once.
GAP_PATIENCE_S = 5.0

Batch = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


class GaplessConsumer(AIOKafkaConsumer):  # type: ignore[misc]
    """An AIOKafkaConsumer whose ``getmany`` returns, of each partition, only
    records whose offsets follow on without a gap (see the module)."""

    def __init__(
        self, *args: Any, patience_s: float = GAP_PATIENCE_S, gaps: Counter | None = None, **kwargs: Any
    ) -> None:
        """``gaps``: a counter of the gaps held, labelled (topic, outcome:
        filled or passed)."""
        super().__init__(*args, **kwargs)
        self._patience_s = patience_s
        self._gaps = gaps
        # Of each partition: the offset its next record must have.
        self._next: dict[TopicPartition, int] = {}
        # Of each partition held at a gap: the missing offset, and since when.
        self._held: dict[TopicPartition, tuple[int, float]] = {}
        self.gaps_filled = 0
        """Gaps held until their records came."""
        self.gaps_passed = 0
        """Gaps held for ``patience_s`` and then passed."""

    def subscribe(
        self,
        topics: Iterable[str] = (),
        pattern: str | None = None,
        listener: ConsumerRebalanceListener | None = None,
    ) -> None:
        super().subscribe(topics, pattern, listener=_ForgetOnAssign(self, listener))

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        super().assign(partitions)
        self.forget()

    def seek(self, partition: TopicPartition, offset: int) -> None:
        super().seek(partition, offset)
        self._next[partition] = offset
        self._held.pop(partition, None)

    def forget(self) -> None:
        """The partitions were given again (by the group or ``assign``): their
        positions are the committed offsets now, learnt before their next fetch."""
        self._next.clear()
        self._held.clear()

    async def _learn_positions(self, timeout_s: float) -> bool:
        """Where each partition given since the last fetch starts (see the
        module); False if one is not known within ``timeout_s``."""
        new = [tp for tp in self.assignment() if tp not in self._next]
        if not new:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                for tp in new:
                    self._next[tp] = await self.position(tp)
        except TimeoutError:
            return False
        return True

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Batch:
        if not await self._learn_positions(timeout_ms / 1000):
            return {}
        batch: Batch = await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
        for tp in list(batch):
            records = batch[tp]
            kept = self._follow_on(tp, records)
            if kept < len(records):
                if kept:
                    batch[tp] = records[:kept]
                else:
                    del batch[tp]
        return batch

    def _follow_on(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> int:
        """How many of ``records`` to hand over: all, or those before a gap
        being held (the consumer then seeks back to it)."""
        if not records:
            return 0
        expected = self._next.get(tp)
        first, last = records[0].offset, records[-1].offset
        follows = expected is None or first <= expected
        if follows and last - first == len(records) - 1 and tp not in self._held:
            # A partition's offsets only rise: a span of one less than the
            # count has no gap (the usual fetch, checked without a loop).
            self._next[tp] = last + 1
            return len(records)
        for index, message in enumerate(records):
            if expected is not None and message.offset > expected:
                if self._hold(tp, expected, message.offset):
                    return index
            expected = message.offset + 1
        if expected is not None:
            self._next[tp] = expected
        held = self._held.pop(tp, None)
        if held is not None:
            self.gaps_filled += 1
            self._count(tp, "filled")
            log.info("%s[%d]: offset %d came after a gap was held", tp.topic, tp.partition, held[0])
        return len(records)

    def _count(self, tp: TopicPartition, outcome: str) -> None:
        if self._gaps is not None:
            self._gaps.labels(tp.topic, outcome).inc()

    def _hold(self, tp: TopicPartition, missing: int, found: int) -> bool:
        """A gap from ``missing`` to ``found``: True to hold it (seek back to
        it), False to pass it, once it has been held ``patience_s``."""
        now = monotonic()
        held = self._held.get(tp)
        if held is None or held[0] != missing:
            held = (missing, now)
        if now - held[1] < self._patience_s:
            super().seek(tp, missing)
            self._next[tp] = missing
            self._held[tp] = held
            return True
        self._held.pop(tp, None)
        self.gaps_passed += 1
        self._count(tp, "passed")
        log.warning(
            "%s[%d]: offsets %d-%d were not there after %.1f s; going on past them",
            tp.topic,
            tp.partition,
            missing,
            found - 1,
            now - held[1],
        )
        return False


class _ForgetOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    """The worker's own listener, with the consumer forgetting its partitions'
    positions once the group assigns them again."""

    def __init__(self, consumer: GaplessConsumer, inner: ConsumerRebalanceListener | None) -> None:
        self._consumer = consumer
        self._inner = inner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        if self._inner is not None:
            await self._inner.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._consumer.forget()
        if self._inner is not None:
            await self._inner.on_partitions_assigned(assigned)
