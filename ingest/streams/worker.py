"""The streams worker: ``ingest.events`` → each app's event stream.

It earns its size: at-least-once delivery to many destinations from one
consumer, where one destination being down must hold back only its own apps.

Each poll's records are sorted into **lanes**, one per target (destination
ARN and role) that some app's stream names; records of apps with no stream
are passed over. Every lane's records are converted to the stream's JSON
(:mod:`ingest.streams.record`), cut into calls within the service's limits
(:func:`ingest.streams.senders.chunks`) and sent in order, the lanes side by
side. A partial failure re-sends only the records the service named, with
capped exponential backoff; throttling and unavailability back off the same
way. A record too large for its service, or that does not decode, is
dead-lettered with its reason and never blocks its lane.

A lane that cannot deliver for ``park_after_s`` **parks**: it remembers, per
partition, the offset of its first record not delivered (its ``next``), and
the poll loop goes on for every other lane, passing its records over. A
probe (an owned task) re-sends the first undelivered call on a backoff
(capped at ``BACKOFF_MAX_S``); once it lands, the loop seeks the consumer
back to the lane's ``next`` offsets and reads on from there; every lane
skips what it had handled already (offsets below its own ``next``), so only
the recovered lane receives those records again.

Offsets are committed after each poll at the lowest offset any lane still
needs: a crash, a restart or a rebalance reads again from there, and
delivers again at most what some lane had delivered since (at-least-once;
the ``ingest.event_id`` key of each record lets downstream count an event
once). Per endpoint, records reach a destination in partition order, except
that a record re-sent after a partial failure can land after later records
of its endpoint that the same call delivered.

Which app streams where is read from the store every ``config_refresh_s``,
and also before passing over a record that arrived after the configuration
in hand was read: an event accepted after PutEventStream answered is never
passed over for want of the new stream. Until the first read succeeds,
nothing is consumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import TopicPartition

from ingest.errors import DecodeError, DeliveryError, StoreError
from ingest.folds.endpoints import EndpointState
from ingest.kafka.clients import EVENTS_TOPIC, start_producer
from ingest.kafka.pacing import FetchPacer
from ingest.metrics import StreamMetrics
from ingest.records.codec import Codec
from ingest.store.base import EventStream, Store
from ingest.streams import record
from ingest.streams.aws import RecordFailure
from ingest.streams.destinations import DestinationError, Kind, check_accounts, parse
from ingest.streams.senders import LIMITS, Item, Sender, Target, chunks, counted
from ingest.workers.consumer import POLL_TIMEOUT_MS, caught_up, dead_letter, settle
from ingest.workers.sinks import wall_clock_ms

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 30.0
# How far the clock of the edge that stamped a record may be ahead of this
# worker's: a record stamped later than the configuration's read minus this
# has the configuration read again before it is passed over.
CLOCK_SKEW_MS = 2_000
# Records decoded and converted between yields to the event loop.
CONVERT_SLICE = 100


@dataclass(slots=True, eq=False)
class Lane:
    """The records of every app that streams to one target (hashed by identity)."""

    target: Target
    next: dict[TopicPartition, int] = field(default_factory=dict)
    """Per partition, the first offset this lane has not handled yet."""
    parked: bool = False
    probe: list[Item] = field(default_factory=list)
    """Parked: the first call not delivered, which the probe re-sends."""
    recovered: bool = False
    """Parked, and the probe delivered: the loop reads again from ``next``."""
    prober: asyncio.Task[None] | None = None
    reason: str = ""
    """Why the lane last failed, for readiness and the log."""

    @property
    def kind(self) -> Kind:
        return self.target.destination.kind

    def hold(self, tp: TopicPartition, offset: int) -> None:
        """Parked: the record at ``offset`` is not handled, so the lane's
        ``next`` on ``tp`` goes no further than it. Polls are prepared
        ahead of their delivery, so records may be held out of order:
        only ever lowering ``next`` keeps the earliest."""
        held = self.next.get(tp)
        if held is None or offset < held:
            self.next[tp] = offset


def target_of(stream: EventStream, allowed_accounts: frozenset[str] = frozenset()) -> Target | None:
    """The target a stored stream names; None if it no longer parses (a
    stream stored by a version with other rules) or names an account no
    longer allowed, which is logged (once)."""
    return _target(stream.destination_arn, stream.role_arn, stream.external_id, allowed_accounts)


@functools.lru_cache(maxsize=4096)
def _target(arn: str, role_arn: str, external_id: str | None, allowed: frozenset[str]) -> Target | None:
    """:func:`target_of`, remembered: the configuration is read again for
    nearly every poll, and its streams rarely change."""
    try:
        destination = parse(arn)
        check_accounts(destination, role_arn, allowed)
    except DestinationError as exc:
        log.warning("event stream to %s is not deliverable: %s", arn[:300], exc)
        return None
    return Target(destination, role_arn, external_id)


def app_of_key(key: bytes | None) -> str | None:
    """The app ID a record key ``"{app_id}:{endpoint_id}"`` starts with."""
    if not key:
        return None
    app, sep, _ = key.partition(b":")
    return app.decode("utf-8", "replace") if sep else None


def endpoint_key(key: bytes | None) -> tuple[str, str] | None:
    """(app ID, endpoint ID) of a record key ``"{app_id}:{endpoint_id}"``
    (app IDs have no colon; endpoint IDs may)."""
    if not key:
        return None
    app, sep, endpoint = key.partition(b":")
    if not sep:
        return None
    try:
        return app.decode(), endpoint.decode()
    except UnicodeDecodeError:
        return None


class StreamWorker:
    """Consumes ``ingest.events`` as group ``group_id`` into the apps' event
    streams until ``stop()``; then delivers up to the end of its partitions
    (bounded by ``drain_timeout_s``), commits and returns. The same
    ``run``/``stop``/``ready`` as the store workers, so a process runs it
    beside them."""

    name = "stream"
    store_condition = None

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        deadletter: AIOKafkaProducer,
        store: Store,
        *,
        codec: Codec,
        senders: Mapping[Kind, Sender],
        metrics: StreamMetrics,
        max_records: int,
        drain_timeout_s: float,
        config_refresh_s: float,
        park_after_s: float,
        allowed_accounts: frozenset[str] = frozenset(),
        fetch_interval_s: float = 0.0,
    ) -> None:
        self._consumer = consumer
        self._deadletter = deadletter
        self._store = store
        self._codec = codec
        self._senders = senders
        self._metrics = metrics
        self._max_records = max_records
        self._drain_timeout_s = drain_timeout_s
        self._config_refresh_s = config_refresh_s
        self._park_after_s = park_after_s
        self._allowed_accounts = allowed_accounts
        self._stopping = asyncio.Event()
        # Spaces the fetches while the worker keeps up (ingest.kafka.pacing).
        self._pacer = FetchPacer(
            consumer, interval_s=fetch_interval_s, max_records=max_records, stopping=self._stopping
        )
        self._started = False
        # app ID → its target, as last read; when (wall ms, monotonic s).
        self._streams: dict[str, Target] = {}
        self._config_wall_ms: int | None = None
        self._config_at = 0.0
        self._config_ok = False
        self._lanes: dict[Target, Lane] = {}
        # Per partition, the offset last committed.
        self._committed: dict[TopicPartition, int] = {}
        # The poll being delivered and committed while the next is fetched
        # and converted: at most one, so at most two polls are in memory.
        self._delivering: asyncio.Task[None] | None = None
        # Set when a poll was left undelivered at stop: nothing more is
        # delivered or committed.
        self._halted = False

    @property
    def ready(self) -> bool:
        return self._started and self._config_ok and not self._stopping.is_set()

    def degraded(self) -> list[str]:
        """The lanes parked now, each "kind ARN: why" (readiness lists them)."""
        return [
            f"{lane.kind} {lane.target.destination.arn}: {lane.reason}"
            for lane in self._lanes.values()
            if lane.parked
        ]

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await self._consumer.start()
        await start_producer(self._deadletter)
        try:
            if not await self._read_config():
                return  # stopped before the configuration could be read: consume nothing
            self._consumer.subscribe([EVENTS_TOPIC], listener=_CommitOnRevoke(self))
            self._started = True
            try:
                while not self._stopping.is_set():
                    await self._poll_once()
                await self._drain()
            finally:
                await self._settle()
        finally:
            for lane in self._lanes.values():
                await _cancel(lane.prober)
            await self._consumer.stop()
            await self._deadletter.stop()

    # --- configuration ------------------------------------------------------------

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if the worker is stopped; → whether it is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def _read_config(self) -> bool:
        """Read the configuration, again with capped backoff while the store
        is unavailable; → True once read, False if the worker stops first."""
        backoff = BACKOFF_FIRST_S
        while not await self._refresh():
            if await self._pause(backoff):
                return False
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        return True

    async def _refresh(self) -> bool:
        """Read every app's stream; → whether it was read (a failure keeps
        the configuration in hand, and is logged and counted)."""
        wall_ms = wall_clock_ms()
        try:
            streams = await self._store.list_event_streams()
        except StoreError as exc:
            self._metrics.config_failures.inc()
            log.warning("could not read the event streams (%s); keeping the ones in hand", exc)
            self._config_ok = False
            return False
        found: dict[str, Target] = {}
        for stream in streams:
            target = target_of(stream, self._allowed_accounts)
            if target is not None:
                found[stream.app_id] = target
        self._streams = found
        self._config_wall_ms = wall_ms
        self._config_at = time.monotonic()
        self._config_ok = True
        wanted = set(found.values())
        for target in [t for t in self._lanes if t not in wanted]:
            lane = self._lanes.pop(target)
            await _cancel(lane.prober)
            self._metrics.parked.labels(lane.kind).dec(1 if lane.parked else 0)
            log.info("event stream target %s is no longer used", target.destination.arn)
        return True

    async def _config_for(self, newest_ms: int) -> bool:
        """Read the configuration again when it is due, or when it is older
        than the newest record in hand (that record's app may have just
        added a stream). Older, it must be read before the poll goes on: with
        the store unavailable, this retries with backoff until it is read
        (→ True) or the worker stops (→ False: the poll must not be
        delivered or committed, or a stream added meanwhile would miss it)."""
        stale = self._config_wall_ms is None or newest_ms + CLOCK_SKEW_MS > self._config_wall_ms
        if stale:
            return await self._read_config()
        if time.monotonic() - self._config_at >= self._config_refresh_s:
            await self._refresh()
        return True

    # --- the loop ------------------------------------------------------------------

    async def _poll_once(self) -> int:
        """Fetch and convert a poll while the previous one is delivered, then
        hand it over: polls are delivered one after the other, in order, each
        committed after its delivery."""
        if self._halted:
            return 0
        if any(lane.parked and lane.recovered for lane in self._lanes.values()):
            await self._settle()  # a read-back starts from a settled position
        self._rewind_recovered()
        await self._pacer.wait()
        batch = await self._consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=self._max_records)
        self._pacer.polled(batch)
        if not batch:
            await self._settle()
            if time.monotonic() - self._config_at >= self._config_refresh_s:
                await self._refresh()
            self._report_lag()
            return 0
        prepared = await self._prepare(batch)
        await self._settle()
        if prepared is None:
            # Not delivered, so nothing after it may be committed: this
            # worker is done, and the next start reads from the last commit.
            self._halted = True
            log.warning("stream worker stopping without the stream configuration; the next start goes on")
            return 0
        self._delivering = asyncio.create_task(self._deliver_poll(*prepared))
        return sum(len(messages) for messages in batch.values())

    async def _settle(self) -> None:
        """Wait for the poll being delivered (and committed), if any; its
        failure is raised here, so the worker stops on it."""
        delivering, self._delivering = self._delivering, None
        await settle(delivering)

    async def _prepare(
        self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> tuple[dict[Lane, list[Item]], dict[TopicPartition, int]] | None:
        """The poll's records of each flowing lane, converted, and the end of
        the poll on each partition; None when the worker stopped before it
        could read the configuration the poll needs (see :meth:`_config_for`)."""
        newest_ms = max(messages[-1].timestamp for messages in batch.values())
        if not await self._config_for(newest_ms):
            return None
        ends = {tp: messages[-1].offset + 1 for tp, messages in batch.items()}
        chosen: list[tuple[Lane, ConsumerRecord[Any, Any]]] = []
        # A key's lane, once a poll: a device's events share their key.
        lanes: dict[bytes | None, Lane | None] = {}
        for tp, messages in batch.items():
            for message in messages:
                key = message.key
                if key in lanes:
                    lane = lanes[key]
                else:
                    lane = lanes[key] = self._lane_of(message)
                if lane is None:
                    continue
                if lane.parked:
                    lane.hold(tp, message.offset)
                    continue
                if message.offset >= lane.next.get(tp, -1):  # else handled before a read-back
                    chosen.append((lane, message))
        converter = record.Converter(await self._stored_endpoints(message for _, message in chosen))
        work: dict[Lane, list[Item]] = {}
        for handled, (lane, message) in enumerate(chosen, 1):
            if handled % CONVERT_SLICE == 0:
                await asyncio.sleep(0)
            item = self._convert(message, lane.kind, converter)
            if isinstance(item, Item):
                work.setdefault(lane, []).append(item)
            else:
                await self._dead_letter(message, lane.kind, *item)
        return work, ends

    async def _stored_endpoints(
        self, messages: Iterable[ConsumerRecord[Any, Any]]
    ) -> Mapping[tuple[str, str], EndpointState]:
        """The stored endpoints of the records' keys, one store read a poll:
        a record's ``endpoint``, device and app version come from them, as
        Pinpoint's did. With the store unavailable the records go without
        (what the event's own context says), counted and logged: a stream
        does not wait on the endpoint store."""
        keys = {key for key in map(endpoint_key, (m.key for m in messages)) if key is not None}
        if not keys:
            return {}
        try:
            return await self._store.get_endpoints(sorted(keys))
        except StoreError as exc:
            self._metrics.config_failures.inc()
            log.warning("could not read the batch's stored endpoints (%s); streaming without them", exc)
            return {}

    async def _deliver_poll(self, work: dict[Lane, list[Item]], ends: dict[TopicPartition, int]) -> None:
        """Deliver a prepared poll, lanes side by side, then move each
        flowing lane past it and commit."""
        for lane, items in list(work.items()):
            if lane.parked:  # parked while this poll was prepared: hold its records
                for item in items:
                    lane.hold(TopicPartition(EVENTS_TOPIC, item.partition), item.offset)
                del work[lane]
        if work:
            async with asyncio.TaskGroup() as group:
                for lane, items in work.items():
                    group.create_task(self._deliver(lane, items, ends))
        assigned = self._consumer.assignment()
        for lane in self._lanes.values():
            if not lane.parked:
                # Never back: after a read-back, a flowing lane is past it.
                for tp, end in ends.items():
                    if tp in assigned and lane.next.get(tp, -1) < end:
                        lane.next[tp] = end
        await self._commit(ends)

    def _lane_of(self, message: ConsumerRecord[Any, Any]) -> Lane | None:
        app = app_of_key(message.key)
        target = self._streams.get(app) if app is not None else None
        if target is None:
            return None
        lane = self._lanes.get(target)
        if lane is None:
            lane = self._lanes[target] = Lane(target)
        return lane

    def _convert(
        self, message: ConsumerRecord[Any, Any], kind: Kind, converter: record.Converter
    ) -> Item | tuple[str, str]:
        """The record as the stream's JSON; else why it goes to the dead
        letters instead, (reason, text): it does not decode, or it is too
        large for the service. Synchronous: this runs for every record."""
        try:
            event = self._codec.decode_event(message.value)
        except DecodeError as exc:
            return "undecodable", f"stream: {exc}"
        data = converter.encode(event)
        size = counted(kind, message.key, event.endpoint_id, data)
        limit = LIMITS[kind].max_record_bytes
        if size > limit:
            return "too_large", f"stream: the record is {size} bytes as JSON; {kind} takes at most {limit}"
        return Item(message.partition, message.offset, message.key, event.endpoint_id, data, size)

    async def _dead_letter(
        self, message: ConsumerRecord[Any, Any], kind: Kind, reason: str, text: str
    ) -> None:
        await dead_letter(self._deadletter, message, text)
        self._metrics.dead_lettered.labels(kind, reason).inc()

    # --- delivery ------------------------------------------------------------------

    async def _deliver(self, lane: Lane, items: list[Item], ends: Mapping[TopicPartition, int]) -> None:
        """Every item of the lane, call after call, or park the lane at the
        first call that could not be delivered within ``park_after_s``."""
        calls = chunks(items, lane.kind)
        for number, call in enumerate(calls):
            left = await self._send(lane, call, patience_s=self._park_after_s)
            if left:
                undelivered = left + [item for later in calls[number + 1 :] for item in later]
                self._park(lane, left, undelivered, ends)
                return

    async def _send(self, lane: Lane, call: list[Item], *, patience_s: float) -> list[Item]:
        """Send ``call``, re-sending only what failed, backing off, for up to
        ``patience_s`` (0: one attempt); → what is still not delivered, in order."""
        sender = self._senders[lane.kind]
        kind = lane.kind
        deadline = time.monotonic() + patience_s
        backoff = BACKOFF_FIRST_S
        pending = call
        while True:
            started = time.perf_counter()
            try:
                failures: Sequence[RecordFailure | None] = await sender.send(lane.target, pending)
            except DeliveryError as exc:
                self._metrics.failures.labels(kind, exc.reason).inc()
                lane.reason = f"{exc.reason}: {exc}"
                log.warning("event stream %s: %s", lane.target.destination.arn, lane.reason)
            else:
                self._metrics.call_seconds.labels(kind).observe(time.perf_counter() - started)
                failed = [
                    item for item, failure in zip(pending, failures, strict=True) if failure is not None
                ]
                self._metrics.delivered.labels(kind).inc(len(pending) - len(failed))
                for failure in failures:
                    if failure is not None:
                        self._metrics.failures.labels(kind, failure.reason).inc()
                if not failed:
                    return []
                self._metrics.retried.labels(kind).inc(len(failed))
                first = next(f for f in failures if f is not None)
                lane.reason = f"{first.reason}: {len(failed)} of {len(pending)} records failed ({first.code})"
                pending = failed
            if time.monotonic() + backoff > deadline or await self._pause(backoff):
                return pending
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _park(
        self, lane: Lane, probe: list[Item], undelivered: list[Item], ends: Mapping[TopicPartition, int]
    ) -> None:
        """Hold the lane at its first undelivered record of each partition.
        A lane no stream names any more (dropped while this poll was
        delivered) is not held: its streams were deleted or re-pointed."""
        if self._lanes.get(lane.target) is not lane:
            return
        first: dict[int, int] = {}
        for item in undelivered:
            first.setdefault(item.partition, item.offset)
        for tp, end in ends.items():
            lane.next[tp] = first.get(tp.partition, end)
        if not lane.parked:
            self._metrics.parked.labels(lane.kind).inc()
            log.warning(
                "event stream %s parked (%s); its apps' events wait, other streams go on",
                lane.target.destination.arn,
                lane.reason,
            )
        lane.parked = True
        lane.recovered = False
        lane.probe = probe
        if lane.prober is None or lane.prober.done():
            self._start_probe(lane)

    def _start_probe(self, lane: Lane) -> None:
        lane.prober = asyncio.create_task(self._probe(lane), name=f"probe {lane.target.destination.arn}")
        lane.prober.add_done_callback(_log_failure)

    async def _probe(self, lane: Lane) -> None:
        """Re-send the lane's first undelivered call on a capped backoff
        until it lands; then mark the lane recovered for the loop."""
        backoff = BACKOFF_FIRST_S * 10
        sent = list(lane.probe)
        while lane.probe:
            if await self._pause(backoff):
                return
            lane.probe = await self._send(lane, lane.probe, patience_s=0)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        # The read-back starts after what the probe delivered, where that
        # was the first of the partition's records the lane holds (not if
        # something earlier was held since, nor in a partition taken away).
        delivered: dict[int, tuple[int, int]] = {}
        for item in sent:
            first, _ = delivered.get(item.partition, (item.offset, item.offset))
            delivered[item.partition] = (first, item.offset)
        for partition, (first, last) in delivered.items():
            tp = TopicPartition(EVENTS_TOPIC, partition)
            if lane.next.get(tp) == first:
                lane.next[tp] = last + 1
        lane.recovered = True

    def _rewind_recovered(self) -> None:
        """Before a poll: every recovered lane flows again, the consumer sought
        back to where it has records left (others skip what they handled)."""
        for lane in self._lanes.values():
            idle_probe = lane.prober is None or lane.prober.done()
            if lane.parked and not lane.recovered and idle_probe and not self._stopping.is_set():
                # A probe that failed (logged): the lane must not wait forever.
                self._start_probe(lane)
            if not (lane.parked and lane.recovered):
                continue
            assigned = self._consumer.assignment()
            for tp, offset in lane.next.items():
                if tp in assigned:
                    self._consumer.seek(tp, offset)
            lane.parked = lane.recovered = False
            self._metrics.parked.labels(lane.kind).dec()
            log.info(
                "event stream %s delivers again; reading back from where it stopped",
                lane.target.destination.arn,
            )

    # --- offsets -------------------------------------------------------------------

    def _safe(self, positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Per partition, the offset to commit: ``positions`` held back to the
        first record a parked lane still needs."""
        out = dict(positions)
        for lane in self._lanes.values():
            if lane.parked:
                for tp in out:
                    out[tp] = min(out[tp], lane.next.get(tp, out[tp]))
        return {tp: offset for tp, offset in out.items() if offset > self._committed.get(tp, -1)}

    async def _commit(self, positions: Mapping[TopicPartition, int]) -> None:
        offsets = self._safe(positions)
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # Rebalanced since the poll: the new owner reads again from the
            # last commit (at-least-once).
            log.warning("stream commit refused after a rebalance (%s)", exc)
            return
        self._committed.update(offsets)
        self._report_lag()

    def _report_lag(self) -> None:
        """Per kind, the records the furthest-behind lane has left."""
        worst: dict[Kind, int] = {}
        for lane in self._lanes.values():
            behind = 0
            for tp in self._consumer.assignment():
                high = self._consumer.highwater(tp)
                if high is not None:
                    behind += max(0, high - lane.next.get(tp, high))
            worst[lane.kind] = max(worst.get(lane.kind, 0), behind)
        for kind in get_args(Kind):
            self._metrics.lag.labels(kind).set(worst.get(kind, 0))

    async def _drain(self) -> None:
        """After stop: poll until the flowing lanes are at the end of every
        assigned partition, or the deadline passes (a parked lane's records
        stay behind the commit, for the next start)."""
        deadline = time.monotonic() + self._drain_timeout_s
        while time.monotonic() < deadline and not self._halted:
            got = await self._poll_once()
            if got == 0 and await caught_up(self._consumer):
                log.info("stream worker drained to the end of its partitions")
                return
        log.warning("stream worker drain deadline passed before the end of its partitions")

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Before the group takes ``partitions`` away: let the poll in hand
        finish (it commits), then forget them; whoever gets them next reads
        from the commit."""
        delivering = self._delivering
        if delivering is not None and not delivering.done():
            await asyncio.wait([delivering])
        gone = set(partitions)
        for lane in self._lanes.values():
            for tp in gone:
                lane.next.pop(tp, None)
        for tp in gone:
            self._committed.pop(tp, None)


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: StreamWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._worker.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        pass


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("event stream probe failed", exc_info=task.exception())
