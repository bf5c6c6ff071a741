"""The sinks of the consumer loop (:class:`ingest.workers.consumer.Worker`):

* the endpoint worker (:class:`EndpointSink`): ``ingest.endpoints`` → the
  endpoint store, folded under a version guard; it also finishes the purges
  of deleted apps that DeleteApp left (at start, and a step between batches);
* the KPI worker (:class:`KpiSink`): ``ingest.events`` → dedupe marks and the
  KPI aggregates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastavro.schema import to_parsing_canonical_form

from ingest.errors import StoreError
from ingest.folds import kpis
from ingest.folds.endpoints import EndpointRecord
from ingest.kafka.clients import ENDPOINTS_TOPIC, EVENTS_TOPIC
from ingest.metrics import KpiWorkerMetrics, WorkerMetrics
from ingest.records.avro import AvroDecodeError, compile_projection
from ingest.records.codec import (
    EVENT_SCHEMA,
    HEADER_BYTES,
    MARKER,
    RECORD_TYPES,
    TAIL_MEMO_ENTRIES,
    Codec,
    fingerprint,
)
from ingest.records.values import MAX_MS, MIN_MS, Event
from ingest.store.base import PURGE_CHUNK_ROWS, Store
from ingest.workers.consumer import STALL_TIMEOUT_S, Worker

log = logging.getLogger(__name__)


# Between batches, how often the endpoint worker looks for a purge that
# DeleteApp left unfinished (an edge stopped mid-purge, or an app too large
# for its budget): one small query.
PURGE_CHECK_S = 5.0


class EndpointSink:
    """``ingest.endpoints`` → the endpoint store (``Store.apply_endpoint_batch``:
    the fold, guarded by version, so a replay changes nothing). Records of a
    deleted app are dropped by the store. The purges of deleted apps are
    finished here: all of them at start (so a restart completes what a
    stopped process began), then one bounded step after a batch, or after an
    empty poll, while any is left, looked for every ``PURGE_CHECK_S``."""

    topic = ENDPOINTS_TOPIC
    name = "endpoint"

    def __init__(self, store: Store, *, codec: Codec, metrics: WorkerMetrics) -> None:
        self._store = store
        self._codec = codec
        self.metrics = metrics
        # When to look for an unfinished purge next (monotonic seconds).
        self._purge_at = 0.0

    def decode(self, value: bytes | None) -> EndpointRecord:
        return self._codec.decode_endpoint_record(value)

    async def start(self) -> None:
        try:
            purged = 0
            while step := await self._store.purge_deleted_apps(max_rows=PURGE_CHUNK_ROWS):
                purged += step
        except StoreError as exc:  # the purge goes on between batches
            log.warning("could not finish purging deleted apps at start (%s); continuing later", exc)
        else:
            if purged:
                log.info("finished purging deleted apps: %d rows", purged)
            self._purge_at = time.monotonic() + PURGE_CHECK_S

    async def write(self, records: Sequence[tuple[EndpointRecord, int]]) -> None:
        outcome = await self._store.apply_endpoint_batch(records)
        counted = self.metrics.records
        counted.labels("applied").inc(outcome.applied)
        counted.labels("superseded").inc(outcome.superseded)
        counted.labels("deleted").inc(outcome.deleted)
        counted.labels("deleted_app").inc(outcome.of_deleted_apps)
        self.metrics.deactivated.inc(outcome.deactivated)
        if time.monotonic() >= self._purge_at:
            await self._purge_step()

    async def idle(self) -> None:
        # An idle worker still finishes what DeleteApp left.
        if time.monotonic() >= self._purge_at:
            await self._purge_step()

    async def _purge_step(self) -> None:
        """One purge step; soon again if it found work. A failure is logged
        and retried later: the batch is written already."""
        try:
            found = await self._store.purge_deleted_apps(max_rows=PURGE_CHUNK_ROWS)
        except StoreError as exc:
            log.warning("purge of deleted apps failed (%s); retrying later", exc)
            found = 0
        self._purge_at = time.monotonic() + (0.0 if found else PURGE_CHECK_S)


class EndpointWorker(Worker[EndpointRecord]):
    """The endpoint worker: a :class:`Worker` on an :class:`EndpointSink`."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        deadletter: AIOKafkaProducer,
        store: Store,
        *,
        codec: Codec,
        metrics: WorkerMetrics,
        max_records: int,
        drain_timeout_s: float,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        fetch_interval_s: float = 0.0,
    ) -> None:
        super().__init__(
            consumer,
            deadletter,
            EndpointSink(store, codec=codec, metrics=metrics),
            max_records=max_records,
            drain_timeout_s=drain_timeout_s,
            stall_timeout_s=stall_timeout_s,
            fetch_interval_s=fetch_interval_s,
        )


# --- the KPI worker --------------------------------------------------------------


def wall_clock_ms() -> int:
    """Now, in epoch milliseconds."""
    return time.time_ns() // 1_000_000


class EventReader:
    """A value of ``ingest.events`` → its Event as the KPI worker needs it,
    read with a projection (``kpis.EVENT_FIELDS``): the fields no KPI reads
    (the request, the SDK, the device's demographic and location; attributes
    and metrics but of ``kpis.DETAILED_TYPES``, whose events are read whole)
    are skipped, not decoded, and hold placeholders. A value the projection
    cannot read goes to the codec's full reader, which names what is wrong
    (DecodeError); so a value is refused when the full reader refuses it,
    except for faults in skipped bytes alone (such as invalid UTF-8 in an
    app title, or a ReceivedAt beyond year 9999), which no KPI could count.
    """

    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        schema = codec.schema(EVENT_SCHEMA)
        self._header = MARKER + fingerprint(to_parsing_canonical_form(schema))
        self._project = compile_projection(
            schema, RECORD_TYPES, kpis.EVENT_FIELDS, tail_memo=TAIL_MEMO_ENTRIES
        )

    def __call__(self, value: bytes | None) -> Event:
        if value is not None and value.startswith(self._header):
            try:
                event: Event
                event, end = self._project(value, HEADER_BYTES)
            except AvroDecodeError:
                pass
            else:
                if (
                    end == len(value)
                    and MIN_MS <= event.timestamp_ms <= MAX_MS
                    and event.event_type not in kpis.DETAILED_TYPES
                ):
                    return event
        # A purchase or a push open, whose attributes count, or not an event
        # the projection reads: the full reader reads it, or refuses it with
        # the reason.
        return self._codec.decode_event(value)


class KpiSink:
    """``ingest.events`` → dedupe marks and KPI aggregates
    (``Store.apply_event_batch``).

    The dedupe window is the last ``retention_days`` UTC days, today
    included, by the clock: an event whose (app, endpoint, event ID) is
    marked already is a ``duplicate``, one dated before the window is
    ``too_old`` (its mark may be gone, so it could be counted twice), one
    dated more than ``kpis.MAX_DAYS_AHEAD`` days after today is ``too_new``;
    none of them is aggregated. The window never moves back, even if the clock
    does: marks already expired must not let an event count again. Marks of
    days before the window are expired at start and whenever it moves on.

    Events are read by an :class:`EventReader`: only what the KPIs read.
    """

    topic = EVENTS_TOPIC
    name = "KPI"

    def __init__(
        self,
        store: Store,
        *,
        codec: Codec,
        metrics: KpiWorkerMetrics,
        retention_days: int,
        now_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._store = store
        self._codec = codec
        self.metrics = metrics
        self._retention_days = retention_days
        self._now_ms = now_ms
        # The window's first day as of the last expiry (None: none yet).
        self._oldest_day: int | None = None
        self.decode = EventReader(codec)

    def oldest_day(self) -> int:
        """The first UTC day of the dedupe window."""
        oldest = kpis.day_of(self._now_ms()) - self._retention_days + 1
        return oldest if self._oldest_day is None else max(oldest, self._oldest_day)

    async def start(self) -> None:
        try:
            await self._expire(self.oldest_day())
        except StoreError as exc:  # retriable: the first write expires them, under retry
            log.warning("could not expire dedupe marks at start (%s); the first write will", exc)

    async def idle(self) -> None:
        pass  # the dedupe window moves with the next write

    async def write(self, records: Sequence[tuple[Event, int]]) -> None:
        oldest_day = self.oldest_day()
        if oldest_day != self._oldest_day:
            await self._expire(oldest_day)
        outcome = await self._store.apply_event_batch(
            [event for event, _ in records],
            oldest_day=oldest_day,
            newest_day=kpis.day_of(self._now_ms()) + kpis.MAX_DAYS_AHEAD,
        )
        counted = self.metrics.records
        counted.labels("aggregated").inc(outcome.aggregated)
        counted.labels("duplicate").inc(outcome.duplicates)
        counted.labels("too_old").inc(outcome.too_old)
        counted.labels("too_new").inc(outcome.too_new)
        counted.labels("deleted_app").inc(outcome.of_deleted_apps)

    async def _expire(self, oldest_day: int) -> None:
        """Drop the marks of days before ``oldest_day``. A retriable
        StoreError propagates; any other failure only keeps the marks (they
        cost space, not correctness) and is logged."""
        try:
            dropped = await self._store.expire_event_marks(before_day=oldest_day)
        except StoreError as exc:
            if exc.retriable:
                raise
            log.exception(
                "could not expire the dedupe marks before %s; keeping them", kpis.iso_day(oldest_day)
            )
        else:
            self.metrics.marks_expired.inc(dropped)
            log.info("KPI dedupe window starts %s; %d older marks expired", kpis.iso_day(oldest_day), dropped)
        self._oldest_day = oldest_day
