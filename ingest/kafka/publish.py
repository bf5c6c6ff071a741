"""Hand records to Kafka and learn, per record, whether Kafka has it.

aiokafka's per-record ``send()`` costs 15-25 µs of CPU; ``send_batch()`` about
2 µs a record. So the publisher builds record batches itself: one open
``BatchBuilder`` per partition collects the records of every request that
arrives while that partition's previous batch is still in flight, and a pump
task per partition hands each batch to the producer as soon as aiokafka takes
it (aiokafka keeps one batch per partition queued and one produce request per
broker in flight). Batching therefore grows with load and costs no linger at
low load.

Guarantees:

* :meth:`Publisher.publish` answers within ``produce_timeout_s``: for each
  record ``True`` only once Kafka acknowledged its batch (the producer runs with
  ``acks=all``), ``False`` when it failed or the deadline passed. A record
  answered ``False`` may still reach Kafka later, so clients retry with the
  same event IDs and consumers dedupe on them (at-least-once).
* Per key, records reach a partition in the order ``publish`` was called.
* Buffered bytes are bounded: past ``buffer_bytes`` ``publish`` raises
  :class:`~ingest.errors.Overloaded` before queueing anything.
* A pump that dies fails its waiting records at once; no caller hangs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka.partitioner import murmur2

from ingest.errors import Overloaded
from ingest.kafka.clients import start_producer
from ingest.metrics import Metrics
from ingest.records.values import OutRecord

log = logging.getLogger(__name__)

# Kafka's per-record framing (length, attributes, deltas, header count) is a
# few varints; 16 bytes over-counts it, which errs on the side of the bound.
RECORD_OVERHEAD_BYTES = 16
# Keys whose partition hash is kept. aiokafka's murmur2 is pure Python, about
# 14 us for one of our keys, and a device sends request after request under
# the same key; an entry is about 200 bytes, so this is a few MB at most.
KEY_HASHES_KEPT = 16_384

key_hash = functools.lru_cache(maxsize=KEY_HASHES_KEPT)(murmur2)
"""aiokafka's murmur2 of a key (what its DefaultPartitioner and the Java
client hash), remembered for the keys seen last."""


class BatchBuilder(Protocol):
    def append(self, *, timestamp: int | None, key: bytes, value: bytes) -> object | None: ...


class Producer(Protocol):
    """The part of ``AIOKafkaProducer`` the publisher uses (a fake injects faults)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def partitions_for(self, topic: str) -> set[int]: ...
    def create_batch(self) -> Any: ...
    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]: ...


class _Pending:
    """One batch being filled or in flight, and the future its records wait on."""

    __slots__ = ("builder", "done", "handed_at", "nbytes", "topic")

    def __init__(self, builder: Any, topic: str, loop: asyncio.AbstractEventLoop) -> None:
        self.builder = builder
        self.topic = topic
        self.done: asyncio.Future[bool] = loop.create_future()
        self.nbytes = 0
        self.handed_at: float | None = None


class _Partition:
    __slots__ = ("open", "sealed", "wake")

    def __init__(self) -> None:
        self.open: _Pending | None = None
        self.sealed: deque[_Pending] = deque()
        self.wake = asyncio.Event()


class Publisher:
    """Owns the Kafka producer for the edge. An async context manager whose
    exit drains: no new records, queued batches handed over, acks awaited up to
    ``drain_timeout_s``, then the producer flushed and closed."""

    def __init__(
        self,
        producer: Producer,
        *,
        topics: Sequence[str],
        produce_timeout_s: float,
        buffer_bytes: int,
        drain_timeout_s: float,
        metrics: Metrics,
    ) -> None:
        self._producer = producer
        self._topics = tuple(topics)
        self._timeout_s = produce_timeout_s
        self._limit = buffer_bytes
        self._drain_timeout_s = drain_timeout_s
        self._metrics = metrics
        self._partition_counts: dict[str, int] = {}
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._pumps: list[asyncio.Task[None]] = []
        self._in_flight: set[_Pending] = set()
        self._buffered = 0
        self._started = False
        self._stopping = False
        self._failed_since_ack = False
        self._drained = asyncio.Event()
        self._drained.set()
        metrics.buffer_limit_bytes.set(buffer_bytes)

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the producer and learn each topic's partitions.

        Raises BrokerError, naming INGEST_KAFKA_IDEMPOTENCE, when the broker
        refuses the idempotent producer: Tansu answers InitProducerId with
        UnknownError, the only request of an idempotent start that can.
        """
        await start_producer(self._producer)
        try:
            for topic in self._topics:
                self._partition_counts[topic] = len(await self._producer.partitions_for(topic))
        except BaseException:
            await self._producer.stop()
            raise
        for topic, count in self._partition_counts.items():
            for number in range(count):
                part = _Partition()
                self._partitions[(topic, number)] = part
                task = asyncio.create_task(self._pump(topic, number, part), name=f"pump-{topic}-{number}")
                task.add_done_callback(self._pump_ended)
                self._pumps.append(task)
        self._started = True

    @property
    def healthy(self) -> bool:
        """Started, not stopping, the last batch outcome was an ack, and no
        batch has waited for its ack longer than the produce deadline."""
        if not self._started or self._stopping or self._failed_since_ack:
            return False
        loop = asyncio.get_running_loop()
        oldest = min(
            (p.handed_at for p in self._in_flight if p.handed_at is not None),
            default=None,
        )
        return oldest is None or loop.time() - oldest < self._timeout_s

    async def publish(self, records: Sequence[OutRecord]) -> list[bool]:
        """Produce ``records``; per record, whether Kafka acknowledged it in time.

        Raises Overloaded, having queued nothing, when the records would push
        the unacknowledged bytes past the bound or the publisher is stopping.
        """
        if not self._started or self._stopping:
            raise Overloaded("the producer is not accepting records (starting or draining)")
        if not records:  # nothing to wait for (asyncio.wait refuses an empty set)
            return []
        nbytes = sum(len(r.key) + len(r.value) + RECORD_OVERHEAD_BYTES for r in records)
        if self._buffered + nbytes > self._limit:
            raise Overloaded(
                f"producer buffer full: {self._buffered} of {self._limit} bytes await a Kafka ack"
            )
        loop = asyncio.get_running_loop()
        # Each batch the records went into, and how many of them in a row:
        # the records of one endpoint come together and mostly share one.
        runs: list[list[Any]] = []
        last_topic = last_key = part = None
        for topic, key, value in records:
            if key is not last_key or topic is not last_topic:
                last_topic, last_key = topic, key
                number = (key_hash(key) & 0x7FFFFFFF) % self._partition_counts[topic]
                part = self._partitions[(topic, number)]
                part.wake.set()  # the pump runs once publish awaits, after these appends
            assert part is not None  # set by the first record
            pending = part.open
            if pending is None:
                pending = part.open = _Pending(self._producer.create_batch(), topic, loop)
            if pending.builder.append(timestamp=None, key=key, value=value) is None:
                # Full: it goes out as it is and this record starts the next one.
                part.sealed.append(pending)
                pending = part.open = _Pending(self._producer.create_batch(), topic, loop)
                pending.builder.append(timestamp=None, key=key, value=value)
            pending.nbytes += len(key) + len(value) + RECORD_OVERHEAD_BYTES
            if runs and runs[-1][0] is pending:
                runs[-1][1] += 1
            else:
                runs.append([pending, 1])
        self._buffered += nbytes
        self._drained.clear()
        self._metrics.buffer_bytes.set(self._buffered)
        await asyncio.wait({pending.done for pending, _ in runs}, timeout=self._timeout_s)
        acked: list[bool] = []
        for pending, count in runs:
            done = pending.done
            acked += [done.done() and done.result()] * count
        return acked

    async def _pump(self, topic: str, number: int, part: _Partition) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await part.wake.wait()
            part.wake.clear()
            while part.sealed or part.open is not None:
                if part.sealed:
                    pending = part.sealed.popleft()
                else:
                    assert part.open is not None
                    pending, part.open = part.open, None
                self._in_flight.add(pending)
                pending.handed_at = loop.time()
                try:
                    # Waits while this partition's previous batch is queued in
                    # aiokafka; meanwhile new records fill the next builder.
                    ack = await self._producer.send_batch(pending.builder, topic, partition=number)
                except Exception:
                    log.exception("handing a batch to the producer failed (%s/%d)", topic, number)
                    self._settle(pending, ok=False)
                    continue
                ack.add_done_callback(functools.partial(self._acked, pending))

    def _acked(self, pending: _Pending, ack: asyncio.Future[Any]) -> None:
        error = "cancelled" if ack.cancelled() else ack.exception()
        if error is not None:
            log.warning("Kafka did not acknowledge a batch on %s: %r", pending.topic, error)
        self._settle(pending, ok=error is None)

    def _settle(self, pending: _Pending, *, ok: bool) -> None:
        if pending.done.done():
            return
        self._in_flight.discard(pending)
        self._buffered -= pending.nbytes
        if self._buffered == 0:
            self._drained.set()
        self._metrics.buffer_bytes.set(self._buffered)
        self._metrics.produce_batches.labels(pending.topic, "acked" if ok else "failed").inc()
        if pending.handed_at is not None:
            elapsed = asyncio.get_running_loop().time() - pending.handed_at
            self._metrics.produce_seconds.labels(pending.topic).observe(elapsed)
        self._failed_since_ack = not ok
        pending.done.set_result(ok)

    def _pump_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() and self._stopping:
            return
        log.error("a producer pump ended unexpectedly: %r", None if task.cancelled() else task.exception())
        self._fail_all()

    def _fail_all(self) -> None:
        """Fail every record still waiting, so no request hangs on a dead pump."""
        self._failed_since_ack = True
        for part in self._partitions.values():
            queued = list(part.sealed) + ([part.open] if part.open is not None else [])
            part.sealed.clear()
            part.open = None
            for pending in queued:
                self._settle(pending, ok=False)
        for pending in list(self._in_flight):
            self._settle(pending, ok=False)

    async def stop(self) -> None:
        """Idempotent. Stop taking records, wait for queued and in-flight
        batches up to ``drain_timeout_s``, then flush and close the producer."""
        if self._stopping:
            return
        self._stopping = True
        if self._started:
            try:
                await asyncio.wait_for(self._drained.wait(), self._drain_timeout_s)
            except TimeoutError:
                log.warning("drain deadline passed with %d bytes unacknowledged", self._buffered)
        for task in self._pumps:
            task.cancel()
        # A pump that died was logged when it ended (_pump_ended); its
        # exception must not keep stop() from closing the producer.
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._fail_all()
        await self._producer.stop()
