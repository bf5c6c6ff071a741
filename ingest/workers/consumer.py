"""The consumer loop: a topic → the store, one transaction per batch.

It earns its size (about 440 lines): at-least-once delivery with two batches
overlapped, the store-outage hold, the drain to the end of the partitions
and the stall watchdog, all in the one loop every worker shares.

One loop, :class:`Worker`, serves every worker; a :class:`Sink` says which
topic it reads, how a record decodes and how a batch is written (the sinks
are in :mod:`ingest.workers.sinks`).

A worker is a consumer group member that, per poll: decodes the batch (a
record it cannot decode goes to ``ingest.deadletter`` with the reason and its
origin in headers, and never blocks its partition), writes it to the store in
one transaction, and commits offsets only after that write. Delivery is
at-least-once and every sink's write is idempotent (a version guard; dedupe
on the event key), so a crash or a rebalance that replays records changes
nothing.

Two batches overlap: while one is written (SQLite in its own thread,
PostgreSQL in its server), the next is fetched and decoded. Writes still run
one at a time, in fetch order.

When the store is unavailable the worker holds its batch, pauses its
partitions, retries with capped exponential backoff, and reports not ready
until a write succeeds; no record is skipped.

A stall watchdog: a worker that fetched and wrote nothing for
``stall_timeout_s`` while a partition of its own has records left (or no
fetch answered for it), or while it has no partition at all, raises
:class:`WorkerStalled` from ``run()``: its consumer is stuck (aiokafka#1154
can leave one so after a rebalance), and a restart by the supervisor is
the way out. Waiting on an unavailable store is not a stall.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import CommitFailedError, IllegalStateError
from prometheus_client import Counter, Gauge, Histogram

from ingest.errors import DecodeError, StoreCondition, StoreError, WorkerStalled
from ingest.kafka.clients import DEADLETTER_TOPIC, start_producer
from ingest.kafka.pacing import FetchPacer, behind

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 200
# Records decoded between yields to the event loop: a batch of 5,000 takes
# 25-35 ms to decode, which in `ingest run` is that long of no HTTP answers,
# and holds up the batch being written: each PostgreSQL round trip of it,
# or SQLite's thread finishing, waits for the next yield. 50 at a time keeps
# each pause near 0.3 ms; measured on the KPI drain (200,000 events, runs
# alternated), 500 → 50 took PostgreSQL from 48-52k to 57-65k events/s and
# SQLite from 58k to 62-69k; 20 was no better.
DECODE_SLICE = 50
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
# Default of the stall watchdog: well above a group rebalance (tens of
# seconds at most with the session timeouts in clients) and a store
# retry's backoff, so only a consumer that is stuck trips it.
STALL_TIMEOUT_S = 120.0
# How long the watchdog waits for a partition's position before it counts
# the partition as stuck too.
POSITION_TIMEOUT_S = 5.0

R = TypeVar("R")


class SinkMetrics(Protocol):
    """The metrics the loop reports for a sink: ``records`` takes an
    ``outcome`` label, of which the loop counts ``dead_lettered``."""

    lag: Gauge
    records: Counter
    batch_size: Histogram
    write_seconds: Histogram
    store_retries: Counter


class Sink(Protocol[R]):
    """What a worker does with the records of its topic.

    ``decode`` raises :class:`DecodeError` for a value that is not a record
    of the topic. ``write`` is one store transaction and counts what it did
    in ``metrics``; it raises StoreError (``retriable`` while the store is
    unavailable: the loop retries the same batch) or, for a record it cannot
    apply, anything else (the loop writes the batch again one record at a
    time and dead-letters the ones that fail). Writing records again must
    change nothing: delivery is at-least-once.
    """

    @property
    def topic(self) -> str: ...
    @property
    def name(self) -> str:
        """What the worker is called in logs ("endpoint", "KPI")."""
        ...

    @property
    def metrics(self) -> SinkMetrics: ...
    def decode(self, value: bytes | None) -> R: ...
    async def start(self) -> None:
        """Once, before the first poll. Must not fail on an unavailable store."""
        ...

    async def write(self, records: Sequence[tuple[R, int]]) -> None:
        """Write (record, offset) pairs of a batch in one transaction."""
        ...

    async def idle(self) -> None:
        """After a poll that found nothing, with no batch being written:
        room for the sink's own bounded upkeep. Must not raise."""
        ...


class Worker(Generic[R]):
    """Consumes ``sink.topic`` into the store until ``stop()``; then applies
    everything up to the high watermark of its partitions (bounded by
    ``drain_timeout_s``), commits and returns."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        deadletter: AIOKafkaProducer,
        sink: Sink[R],
        *,
        max_records: int,
        drain_timeout_s: float,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        fetch_interval_s: float = 0.0,
    ) -> None:
        self._consumer = consumer
        self._deadletter = deadletter
        self._sink = sink
        self._metrics = sink.metrics
        self._max_records = max_records
        self._drain_timeout_s = drain_timeout_s
        self._stopping = asyncio.Event()
        # Spaces the fetches while the worker keeps up (ingest.kafka.pacing).
        self._pacer = FetchPacer(
            consumer, interval_s=fetch_interval_s, max_records=max_records, stopping=self._stopping
        )
        self._store_ok = True
        # Why the store last refused a batch, when it is a condition an
        # operator must fix (readiness names it); None once a batch lands.
        self.store_condition: StoreCondition | None = None
        self._started = False
        # The batch being written and committed while the next is fetched and
        # decoded: at most one, so at most two batches are in memory.
        self._writing: asyncio.Task[None] | None = None
        self._stall_timeout_s = stall_timeout_s
        # When the worker last fetched records or finished a write (monotonic s).
        self._progress_at = time.monotonic()

    @property
    def name(self) -> str:
        return self._sink.name

    @property
    def ready(self) -> bool:
        return self._started and self._store_ok and not self._stopping.is_set()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await self._consumer.start()
        await start_producer(self._deadletter)
        try:
            await self._sink.start()
            self._consumer.subscribe([self._sink.topic], listener=_FinishWritesOnRevoke(self))
            self._started = True
            self._progress_at = time.monotonic()
            try:
                while not self._stopping.is_set():
                    await self._poll_once()
                await self._drain()
            finally:
                await self._settle()
        finally:
            await self._consumer.stop()
            await self._deadletter.stop()

    async def _drain(self) -> None:
        """After stop: poll until every assigned partition is at its high
        watermark and a poll comes back empty, or the deadline passes."""
        deadline = time.monotonic() + self._drain_timeout_s
        while time.monotonic() < deadline:
            got = await self._poll_once()
            if got == 0 and await self._caught_up():
                log.info("%s worker drained to the end of its partitions", self.name)
                return
        log.warning("%s worker drain deadline passed before the end of its partitions", self.name)

    async def _caught_up(self) -> bool:
        return await caught_up(self._consumer)

    async def _settle(self) -> None:
        """Wait for the batch being written (and committed), if any. Its
        failure is raised here, so the worker stops on it."""
        writing, self._writing = self._writing, None
        await settle(writing)

    async def _poll_once(self) -> int:
        """Fetch and decode a batch while the previous one is written, then
        hand it to the writer. Batches are written one after the other, in
        the order fetched, each committed only after its write."""
        await self._pacer.wait(resume=self._store_ok)
        batch = await self._consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=self._max_records)
        self._pacer.polled(batch)
        if not batch:
            await self._settle()
            await self._report_idle_lag()
            if not self._stopping.is_set():
                await self._check_stalled()
            await self._sink.idle()
            return 0
        self._progress_at = time.monotonic()
        records: list[tuple[R, int]] = []
        origins: list[ConsumerRecord[Any, Any]] = []
        decode = self._sink.decode
        decoded = 0
        for messages in batch.values():
            for message in messages:
                decoded += 1
                if decoded % DECODE_SLICE == 0:
                    await asyncio.sleep(0)  # let the edge answer between slices
                try:
                    records.append((decode(message.value), message.offset))
                except DecodeError as exc:
                    await self._dead_letter(message, str(exc))
                    continue
                origins.append(message)
        await self._settle()
        self._writing = asyncio.create_task(self._write(records, origins, batch))
        return sum(len(m) for m in batch.values())

    async def _write(
        self,
        records: Sequence[tuple[R, int]],
        origins: Sequence[ConsumerRecord[Any, Any]],
        batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]],
    ) -> None:
        if records:
            await self._apply(records, origins, list(batch))
        applied = {tp: messages[-1].offset + 1 for tp, messages in batch.items()}
        try:
            await self._consumer.commit(applied)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced after this batch was fetched: its
            # partitions may be another member's now, which starts from the
            # last commit and applies these records again; the write being
            # idempotent, that changes nothing.
            log.warning("commit refused after a rebalance (%s); the new owner re-applies the batch", exc)
            return
        for tp, next_offset in applied.items():
            self._report_lag(tp, next_offset)
        self._progress_at = time.monotonic()

    async def _check_stalled(self) -> None:
        """After an empty poll, nothing being written: raise WorkerStalled
        if there was no progress for the stall timeout and there is work
        this worker should be doing. Idle at the end of its partitions, it
        starts the count again."""
        stalled_s = time.monotonic() - self._progress_at
        if stalled_s < self._stall_timeout_s:
            return
        reason = await self._stall_reason()
        if reason is None:
            self._progress_at = time.monotonic()
            return
        log.error(
            "%s worker made no progress for %.0f s: %s; failing so its supervisor restarts it",
            self.name,
            stalled_s,
            reason,
        )
        raise WorkerStalled(
            f"{self.name} worker made no progress for {stalled_s:.0f} s: {reason}",
            stalled_s=stalled_s,
            reason=reason,
        )

    async def _stall_reason(self) -> str | None:
        """What is left to do, when there is: no partition assigned, or the
        assigned partitions with records beyond the position (or no fetch
        answered, or no position known)."""
        assigned = sorted(self._consumer.assignment())
        if not assigned:
            return f"no partition of {self._sink.topic} assigned"
        behind: list[str] = []
        for tp in assigned:
            high = self._consumer.highwater(tp)
            if high is None:
                behind.append(f"{tp.topic}[{tp.partition}] no fetch answered")
                continue
            try:
                async with asyncio.timeout(POSITION_TIMEOUT_S):
                    position = await self._consumer.position(tp)
            except TimeoutError:
                behind.append(f"{tp.topic}[{tp.partition}] no position in {POSITION_TIMEOUT_S:.0f} s")
                continue
            if position < high:
                behind.append(f"{tp.topic}[{tp.partition}] lag {high - position}")
        return ", ".join(behind) or None

    async def finish_writing(self) -> None:
        """Wait until the batch being written is written and committed,
        leaving its outcome (an error included) to the loop."""
        writing = self._writing
        if writing is not None and not writing.done():
            await asyncio.wait([writing])

    async def _report_idle_lag(self) -> None:
        """After an empty poll with nothing being written, every fetched
        record is applied: the position is the next record to apply."""
        for tp in self._consumer.assignment():
            if self._consumer.highwater(tp) is not None:
                self._report_lag(tp, await self._consumer.position(tp))

    def _report_lag(self, tp: TopicPartition, next_offset: int) -> None:
        """Records on the partition not applied yet: the high watermark of the
        last fetch (Tansu's end_offsets() is wrong) minus the next offset to
        apply."""
        high = self._consumer.highwater(tp)
        if high is not None:
            self._metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - next_offset))

    async def _apply(
        self,
        records: Sequence[tuple[R, int]],
        origins: Sequence[ConsumerRecord[Any, Any]],
        partitions: list[TopicPartition],
    ) -> None:
        """Write the batch; retry while the store is unavailable; if the batch
        fails for another reason, find the records at fault one by one and
        dead-letter them, so one bad record never blocks its partition."""
        backoff = BACKOFF_FIRST_S
        held = False
        while True:
            started = time.perf_counter()
            try:
                await self._write_or_isolate(records, origins)
            except StoreError as exc:  # retriable: from the batch, or from one of its records
                self._store_ok = False
                self.store_condition = exc.condition
                self._metrics.store_retries.inc()
                self._consumer.pause(*partitions)
                held = True
                log.warning(
                    "store unavailable (%s); %s worker holding %d records, retry in %.2f s",
                    exc,
                    self.name,
                    len(records),
                    backoff,
                )
                await asyncio.sleep(backoff)  # capped exponential backoff between retries
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            break
        if not self._store_ok:
            log.info("store available again")
        self._store_ok = True
        self.store_condition = None
        if held:
            # A rebalance may have taken some of them meanwhile.
            self._consumer.resume(*(set(partitions) & self._consumer.assignment()))
        self._metrics.write_seconds.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(len(records))

    async def _write_or_isolate(
        self, records: Sequence[tuple[R, int]], origins: Sequence[ConsumerRecord[Any, Any]]
    ) -> None:
        """One attempt at the batch. Raises only a retriable StoreError, which
        can also come from the one-by-one pass (the store going away in the
        middle of it): the caller then retries the whole batch."""
        try:
            await self._sink.write(records)
        except StoreError as exc:
            if exc.retriable:
                raise
            await self._apply_one_by_one(records, origins)
        except Exception:  # a record the sink cannot apply: isolate it below
            log.exception("a %s batch of %d records failed; applying one by one", self.name, len(records))
            await self._apply_one_by_one(records, origins)

    async def _apply_one_by_one(
        self, records: Sequence[tuple[R, int]], origins: Sequence[ConsumerRecord[Any, Any]]
    ) -> None:
        """Slow path. A retriable StoreError propagates (the caller retries
        the whole batch; writing records again is idempotent)."""
        for record, origin in zip(records, origins, strict=True):
            try:
                await self._sink.write([record])
            except StoreError as exc:
                if exc.retriable:
                    raise
                await self._dead_letter(origin, f"cannot apply: {exc}")
            except Exception as exc:  # noqa: BLE001 - dead-lettered with its reason
                await self._dead_letter(origin, f"cannot apply: {exc!r}")

    async def _dead_letter(self, message: ConsumerRecord[Any, Any], reason: str) -> None:
        await dead_letter(self._deadletter, message, reason)
        self._metrics.records.labels("dead_lettered").inc()


async def settle(task: asyncio.Task[None] | None) -> None:
    """Wait for ``task`` (a batch being written or delivered, then
    committed), raising its failure. Cancelled while waiting, it lets the
    task finish first: the write runs on in the store's own thread or
    connection, and must commit before the worker leaves."""
    if task is None:
        return
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait([task])
        raise


async def caught_up(consumer: AIOKafkaConsumer) -> bool:
    """Whether the consumer's position is at the high watermark of every
    partition it has, each answered by a fetch already."""
    return not await behind(consumer, unknown=True)


async def dead_letter(producer: AIOKafkaProducer, message: ConsumerRecord[Any, Any], reason: str) -> None:
    """``message`` to ``ingest.deadletter`` as it was, with the reason and
    its origin (topic, partition, offset) in headers."""
    headers = [
        ("ingest-reason", reason.encode()),
        ("ingest-origin-topic", message.topic.encode()),
        ("ingest-origin-partition", str(message.partition).encode()),
        ("ingest-origin-offset", str(message.offset).encode()),
    ]
    await producer.send_and_wait(DEADLETTER_TOPIC, message.value, key=message.key, headers=headers)
    log.warning("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)


class _FinishWritesOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before the group takes partitions away, let the batch being written
    commit, so the next owner starts after it rather than applying it again."""

    def __init__(self, worker: Worker[Any]) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._worker.finish_writing()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        pass
