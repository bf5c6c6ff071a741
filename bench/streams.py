"""`python -m bench --part streams`: one streams worker's delivery rate to a
Kafka topic and to Kinesis (kinesalite), beside its decode + convert ceiling
and the KPI worker's drain of the same records, all in one run.

Records: the KPI part's app's day (:func:`bench.kpis.workload`), the half of
the endpoints that name their user given the rest of a native SDK's batch
too (channel, demographic, location, app package and SDK), so the stream's
JSON carries what an iOS app's events carry; the other half stays as Amplify
JS sends it. They are produced once to ``ingest.events`` on an embedded
broker (memory engine), under one app, before anything is timed; every
measurement reads those same records, as the streams and KPI groups read the
same topic in production. Each streams worker's store holds every endpoint
already (:func:`stored_endpoints`), as in production, where the endpoint
worker has applied them: each record is its stored endpoint overlaid with
the event's context.

Each round takes, in turn:

1. ceiling: ``Codec().decode_event`` + ``record.Converter`` (one a poll,
   over the stored endpoints) alone on the records' Avro values, no I/O:
   what converting costs the worker;
2. worker → Kafka: one :class:`~ingest.streams.worker.StreamWorker` from a
   fresh consumer group, the app's stream a new topic on the same broker;
3. worker → Kinesis: the same, the app's stream a new Kinesis stream on
   kinesalite (loopback, in memory, dummy keys, no role assumed);
4. the KPI worker (:func:`bench.kpis.drain_rate`) into a fresh SQLite store.

A drain is timed as the other parts time theirs (:func:`bench.support.time_drain`):
from the first record delivered (the group join and the first AWS client are
not timed) until the destination has acknowledged every record; then the
destination is read back, untimed, and must hold them all. CPU: this
process's (the worker, and botocore's threads) per event over the drain, and
the broker's and kinesalite's over the whole drain call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from bench.kpis import drain_rate, workload
from bench.support import counted, cpu_seconds, fresh_store, produce, time_drain
from ingest.folds.endpoints import BatchOutcome, EndpointState, fold
from ingest.kafka import clients
from ingest.kafka.broker import EmbeddedBroker, _Child, free_port
from ingest.process import settle_gc, stream_worker
from ingest.records.codec import Codec
from ingest.records.values import Demographic, EndpointContext, EndpointUpsert, Event, Location
from ingest.settings import Settings
from ingest.store.base import App, EventStream, Store
from ingest.streams import record
from ingest.streams.destinations import Kind

ROOT = Path(__file__).resolve().parent.parent
KINESALITE_JS = ROOT / "tests" / "js" / "kinesalite.cjs"
HOST = "127.0.0.1"
REGION = "us-east-1"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/bench-stream"
# What botocore signs with here: keys of no one (kinesalite checks a
# signature's form, not its value), shaped as AWS's are.
DUMMY_KEY_ID = "AKIABENCHKEYID000001"
DUMMY_SECRET = "not-a-secret-of-anyone-0000000000000000"  # noqa: S105 - a dummy, by design
# Shards of the bench's Kinesis stream: kinesalite does not throttle a
# shard, so this only spreads its partition keys as a real stream would.
SHARDS = 2
READY_TIMEOUT_S = 30.0
# Reading a destination back after its drain: 100,000 records take seconds.
READ_BACK_TIMEOUT_S = 120.0

CEILING = "ceiling: decode + convert (decode_event + record.Converter), no I/O"
TO_KAFKA = "worker → Kafka: a topic on the same broker"
TO_KINESIS = "worker → Kinesis: kinesalite, PutRecords"
KPI = "KPI worker: Kafka → SQLite, the same records"


def realistic(events: Sequence[Event]) -> list[Event]:
    """The workload's events, those whose batch named its user (native
    SDKs) with the rest of what a native SDK's batch sends."""
    out = []
    for event in events:
        context = event.endpoint
        if context is not None and context.user_id is not None:
            event = event._replace(
                app_package_name="com.example.app",
                app_title="Example",
                app_version_code="42",
                client_sdk_version="2.14.0",
                sdk_name="aws-amplify-swift",
                endpoint=EndpointContext(
                    user_id=context.user_id,
                    channel_type="APNS",
                    demographic=Demographic(
                        app_version="4.2",
                        locale="en_US",
                        make="Apple",
                        model="iPhone15,2",
                        platform="ios",
                        platform_version="18.1",
                        timezone="Europe/Oslo",
                    ),
                    location=Location(city="Oslo", country="NO", region="Oslo"),
                ),
            )
        out.append(event)
    return out


def stored_endpoints(events: Sequence[Event]) -> list[tuple[EndpointUpsert, int]]:
    """An UpdateEndpoint for each of the events' endpoints, as the store holds
    them in production before their events stream (the endpoint worker
    applied each batch's Endpoint, and Amplify JS describes its device with
    UpdateEndpoint): the device, its address, an attribute and its user.
    With the records' offsets, as the worker hands them to the store."""
    first: dict[str, Event] = {}
    for event in events:
        first.setdefault(event.endpoint_id, event)
    upserts = []
    for n, event in enumerate(first.values()):
        context = event.endpoint or EndpointContext()
        native = context.demographic is not None
        upserts.append(
            (
                EndpointUpsert(
                    app_id=event.app_id,
                    endpoint_id=event.endpoint_id,
                    request_id=f"stored-{n}",
                    received_at_ms=event.received_at_ms - 60_000,
                    source="UPDATE_ENDPOINT",
                    address=f"token-{n}",
                    channel_type="APNS" if native else "GCM",
                    attributes={"plan": ["pro" if n % 3 else "free"]},
                    demographic=context.demographic
                    or Demographic(app_version="4.2", locale="de_DE", make="Google", platform="android"),
                    location=context.location or Location(country="DE"),
                    user_id=context.user_id or f"user-{n}",
                ),
                n,
            )
        )
    return upserts


def convert_rate(
    encoded: Sequence[bytes], poll: int, stored: Mapping[tuple[str, str], EndpointState]
) -> tuple[float, float]:
    """→ (events/s, CPU-µs per event) of decoding and converting ``encoded``
    as the worker does: a :class:`~ingest.streams.record.Converter` a poll of
    ``poll`` records, over the ``stored`` endpoints (the poll's store read
    not timed)."""
    decode = Codec().decode_event
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(encoded), poll):
        encode = record.Converter(stored).encode
        for value in encoded[start : start + poll]:
            encode(decode(value))
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    return len(encoded) / elapsed, used / len(encoded) * 1e6


# --- kinesalite --------------------------------------------------------------------


@dataclass(frozen=True)
class Kinesalite:
    pid: int
    url: str


@contextlib.asynccontextmanager
async def kinesalite(log_path: Path) -> AsyncIterator[Kinesalite]:
    """kinesalite in memory on a free loopback port (tests/js/kinesalite.cjs,
    which binds 127.0.0.1 only), streams ACTIVE at once; in a session of its
    own, killed with this process, stopped by its PID after."""
    node = shutil.which("node")
    if node is None or not (ROOT / "tests" / "js" / "node_modules" / "kinesalite").is_dir():
        raise RuntimeError("kinesalite is not installed: run scripts/setup.sh")
    # The embedded broker's own runner of a loopback server child.
    child = _Child("kinesalite", log_path=log_path, host=HOST, ready_timeout_s=READY_TIMEOUT_S)
    child.port = free_port(HOST)
    command = [node, str(KINESALITE_JS), "--host", HOST, "--port", str(child.port)]
    command += ["--createStreamMs", "0", "--deleteStreamMs", "0", "--shardLimit", "1000"]
    await child.start(command)
    try:
        assert child.pid is not None, "started"
        yield Kinesalite(child.pid, f"http://{HOST}:{child.port}")
    finally:
        await child.stop()


@contextlib.contextmanager
def offline_aws(kinesis_url: str, directory: Path) -> Iterator[None]:
    """This process's environment as botocore reads it: dummy keys, no
    profile or metadata, Kinesis at ``kinesis_url`` and every other service
    at a loopback port that refuses; restored after."""
    empty = directory / "aws-empty-config"
    empty.write_text("")
    saved = {name: value for name, value in os.environ.items() if name.startswith("AWS_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": DUMMY_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
            "AWS_CONFIG_FILE": str(empty),
            "AWS_SHARED_CREDENTIALS_FILE": str(empty),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": f"http://{HOST}:9",
            "AWS_ENDPOINT_URL_KINESIS": kinesis_url,
        }
    )
    try:
        yield
    finally:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            del os.environ[name]
        os.environ.update(saved)


def _kinesis(url: str) -> Any:
    """A botocore Kinesis client of the bench's own (setting up, reading back)."""
    return botocore.session.get_session().create_client(
        "kinesis",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id=DUMMY_KEY_ID,
        aws_secret_access_key=DUMMY_SECRET,
    )


def create_stream(url: str, name: str) -> None:
    """A Kinesis stream of :data:`SHARDS` shards, once ACTIVE. Blocking."""
    kinesis = _kinesis(url)
    kinesis.create_stream(StreamName=name, ShardCount=SHARDS)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] != (
        "ACTIVE"
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"stream {name} not ACTIVE within {READY_TIMEOUT_S:g} s")
        time.sleep(0.02)  # between polls of its status


def stream_records(url: str, name: str) -> int:
    """Records in every shard of stream ``name``; the stream deleted after
    (kinesalite keeps them in memory). Blocking."""
    kinesis = _kinesis(url)
    total = 0
    for shard in kinesis.list_shards(StreamName=name)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while True:  # kinesalite reads from its store: an empty page is the end
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            if not page["Records"]:
                break
            total += len(page["Records"])
            iterator = page["NextShardIterator"]
    kinesis.delete_stream(StreamName=name)
    return total


async def topic_records(settings: Settings, bootstrap: str, topic: str, expected: int) -> int:
    """Records on ``topic``, read from its start until ``expected`` are seen
    or a poll finds nothing new (Tansu's ListOffsets is wrong)."""
    consumer = AIOKafkaConsumer(**clients.connection_options(settings, bootstrap), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen = 0
        async with asyncio.timeout(READ_BACK_TIMEOUT_S):
            while seen < expected:
                batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                if not batch:
                    break
                seen += sum(len(records) for records in batch.values())
        return seen
    finally:
        await consumer.stop()


# --- one drain ---------------------------------------------------------------------


@dataclass(frozen=True)
class Drain:
    """A worker's drain: events/s, and CPU-µs per event of this process, of
    the broker and of kinesalite (0 when it was not the destination)."""

    rate: float
    cpu_us: float
    broker_us: float
    kinesalite_us: float = 0.0


def cpu_of(pid: int | None) -> float:
    """CPU seconds of process ``pid`` so far; 0 for none."""
    return 0.0 if pid is None else cpu_seconds(pid)


def _total(registry: CollectorRegistry, name: str) -> float:
    """The sum of a counter's samples over all its labels."""
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == f"{name}_total"
    )


async def stream_drain(
    settings: Settings,
    broker: EmbeddedBroker,
    store: Store,
    kind: Kind,
    count: int,
    kinesalite_pid: int | None = None,
) -> Drain:
    """One StreamWorker as ``ingest worker streams`` assembles it
    (:func:`ingest.process.stream_worker`; its metrics in a registry and its
    consumer in a group of their own), until the app's ``kind`` destination
    has acknowledged ``count`` records."""
    registry = CollectorRegistry()
    # kinesalite has no STS: the worker signs as the process (the dummy keys).
    alone = dataclasses.replace(settings, stream_assume_role=False)
    async with contextlib.AsyncExitStack() as stack:
        worker = await stream_worker(
            stack,
            alone,
            broker.bootstrap,
            idempotence=False,
            store=store,
            codec=Codec(),
            registry=registry,
            group_id=f"bench-streams-{uuid.uuid4().hex[:8]}",
        )

        delivered = counted(registry, "ingest_stream_delivered_records", "destination", (kind,))
        before = cpu_of(broker.pid), cpu_of(kinesalite_pid)
        rate, cpu_us = await time_drain(worker, delivered, count)
        after = cpu_of(broker.pid), cpu_of(kinesalite_pid)
    failures = _total(registry, "ingest_stream_failures")
    failures += _total(registry, "ingest_stream_dead_lettered_records")
    if failures or delivered() != count:
        raise RuntimeError(f"the worker delivered {delivered():.0f} of {count}, with {failures:.0f} failures")
    broker_us, kinesalite_us = ((a - b) / count * 1e6 for a, b in zip(after, before, strict=True))
    return Drain(rate, cpu_us, broker_us, kinesalite_us)


async def stream_to(store: Store, app_id: str, arn: str) -> None:
    """The app, and its event stream to ``arn``, in ``store``."""
    await store.create_app(
        App(
            id=app_id,
            name="bench",
            arn=f"arn:aws:mobiletargeting:{REGION}:{ACCOUNT}:apps/{app_id}",
            tags={},
            creation_date="2026-12-01T00:00:00.000Z",
        )
    )
    await store.put_event_stream(
        EventStream(
            app_id=app_id,
            destination_arn=arn,
            role_arn=ROLE,
            external_id=None,
            last_modified="2026-12-01T00:00:00.000Z",
            last_updated_by="bench",
        )
    )


# --- the part ----------------------------------------------------------------------


@dataclass
class Rounds:
    """Each measurement's figures, a round at a time."""

    rates: dict[str, list[float]] = field(default_factory=dict)
    drains: dict[str, list[Drain]] = field(default_factory=dict)

    def add(self, name: str, drain: Drain) -> None:
        self.rates.setdefault(name, []).append(drain.rate)
        self.drains.setdefault(name, []).append(drain)

    def median(self, name: str) -> Drain:
        """The round of median events/s (the lower middle of an even count)."""
        drains = sorted(self.drains[name], key=lambda d: d.rate)
        return drains[(len(drains) - 1) // 2]


async def measure(
    settings: Settings, work: Path, events: list[Event], app_id: str, rounds: int
) -> tuple[Rounds, int]:
    """``rounds`` rounds of the four measurements in turn; → them and the
    median JSON record size in bytes."""
    codec = Codec()
    encoded = [codec.encode_event(e) for e in events]
    endpoints = stored_endpoints(events)
    states = fold({}, endpoints, BatchOutcome())
    count = len(events)
    found = Rounds()
    async with (
        EmbeddedBroker(log_path=work / "tansu.log") as broker,
        kinesalite(work / "kinesalite.log") as kinesis,
    ):
        await clients.ensure_topics(settings, broker.bootstrap)
        await produce(
            broker.bootstrap,
            settings,
            [
                (clients.EVENTS_TOPIC, f"{app_id}:{e.endpoint_id}".encode(), value)
                for e, value in zip(events, encoded, strict=True)
            ],
        )
        with offline_aws(kinesis.url, work):
            for n in range(rounds):
                rate, cpu_us = convert_rate(encoded, settings.worker_max_records, states)
                found.add(CEILING, Drain(rate, cpu_us, 0.0))

                topic = f"bench-stream-{uuid.uuid4().hex[:8]}"
                async with fresh_store(None, work / f"kafka-{n}") as (store, _):
                    await store.apply_endpoint_batch(endpoints)
                    await stream_to(
                        store, app_id, f"arn:aws:kafka:{REGION}:{ACCOUNT}:topic/bench/{uuid.uuid4()}/{topic}"
                    )
                    found.add(TO_KAFKA, await stream_drain(settings, broker, store, "kafka", count))
                held = await topic_records(settings, broker.bootstrap, topic, count)
                if held != count:
                    raise RuntimeError(f"topic {topic} holds {held} records, not {count}")

                name = f"bench-{uuid.uuid4().hex[:8]}"
                await asyncio.to_thread(create_stream, kinesis.url, name)
                async with fresh_store(None, work / f"kinesis-{n}") as (store, _):
                    await store.apply_endpoint_batch(endpoints)
                    await stream_to(store, app_id, f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{name}")
                    found.add(
                        TO_KINESIS, await stream_drain(settings, broker, store, "kinesis", count, kinesis.pid)
                    )
                held = await asyncio.to_thread(stream_records, kinesis.url, name)
                if held != count:
                    raise RuntimeError(f"stream {name} holds {held} records, not {count}")

                async with fresh_store(None, work / f"kpis-{n}") as (store, _):
                    before = cpu_of(broker.pid)
                    rate, cpu_us = await drain_rate(settings, store, broker.bootstrap, count)
                    found.add(KPI, Drain(rate, cpu_us, (cpu_of(broker.pid) - before) / count * 1e6))
    sizes = sorted(len(record.encode(e, states.get((e.app_id, e.endpoint_id)))) for e in events)
    return found, sizes[len(sizes) // 2]


def _us(value: float) -> str:
    return f"{value:,.1f}" if value else ""


async def bench_streams(settings: Settings, *, records: int, rounds: int) -> int:
    app_id = f"bench-{uuid.uuid4().hex[:8]}"
    events = realistic([e._replace(app_id=app_id) for e in workload(app_id, records)])
    settle_gc()  # as `ingest worker streams` does once started
    with tempfile.TemporaryDirectory(dir=settings.data_dir if settings.data_dir.exists() else None) as tmp:
        found, size = await measure(settings, Path(tmp), events, app_id, rounds)
    median = {name: found.median(name) for name in found.drains}
    ceiling, kpi = median[CEILING].rate, median[KPI].rate
    endpoints = len({e.endpoint_id for e in events})
    lines = [
        f"Machine: {os.cpu_count()} cores; {records:,} events of {endpoints:,} endpoints over two days, one "
        f"app streaming to one destination (half the endpoints native SDKs with their demographic, location "
        f"and user, half Amplify JS; every endpoint stored, as the endpoint worker leaves them; JSON records "
        f"p50 {size:,} bytes), {settings.worker_max_records} records "
        f"per poll; {rounds} round{'s' if rounds != 1 else ''} taken in turn, each row its median round. "
        "Broker, kinesalite and the workers share the machine.",
        "",
        "| measurement | events/s | ÷ ceiling | ÷ KPI worker | CPU-µs per event, this process "
        "| broker CPU-µs per event | kinesalite CPU-µs per event |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in (CEILING, TO_KAFKA, TO_KINESIS, KPI):
        d = median[name]
        lines.append(
            f"| {name} | {d.rate:,.0f} | {d.rate / ceiling:.2f} | {d.rate / kpi:.2f} | {d.cpu_us:,.1f} "
            f"| {_us(d.broker_us)} | {_us(d.kinesalite_us)} |"
        )
    each = [f"{name.split(':')[0]} {' / '.join(f'{r:,.0f}' for r in found.rates[name])}" for name in median]
    lines += [
        "",
        f"Every round, events/s: {'; '.join(each)}.",
        "",
        "Ratios (same run):",
        f"- worker → Kafka ÷ ceiling: {median[TO_KAFKA].rate / ceiling:.2f}",
        f"- worker → Kinesis ÷ ceiling: {median[TO_KINESIS].rate / ceiling:.2f}",
        f"- worker → Kafka ÷ KPI worker: {median[TO_KAFKA].rate / kpi:.2f}",
        f"- worker → Kinesis ÷ KPI worker: {median[TO_KINESIS].rate / kpi:.2f}",
        "",
        "A drain is timed from the first record its destination acknowledged to the last (the group join "
        "and the first AWS client are not timed), then the destination is read back and holds every record. "
        "This process's CPU is the worker's event loop and botocore's threads; the broker's and "
        "kinesalite's are over the whole drain, join included.",
    ]
    print("\n".join(lines))
    return 0
