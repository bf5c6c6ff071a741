"""`python -m bench --part write`: the write path measured side by side with its ceilings.

Everything runs in one invocation on one machine, so the ratios hold even when
the machine is shared and noisy:

1. core: JSON parse + validate + Avro encode of 100-event PutEvents bodies, in
   this process, no I/O: the CPU cost of our own code per event;
2. produce ceiling: the same Avro records produced by raw aiokafka
   (``send_batch``, acks=all) to the embedded broker: what Kafka and the
   client library allow;
3. publisher: core + our Publisher to the broker, no HTTP;
4. HTTP ceiling: the edge's HTTP server answering a canned 202 to the same
   bodies, driven by the same client; beside it uvicorn (the server the edge
   ran before its own) answering the same;
5. edge: `ingest edge` in its own process, driven over HTTP with requests
   SigV4-signed by an admin key it verifies (issued by `ingest keys create`
   before it starts); reported as events/s and as events per CPU-second of
   the edge process ("per edge core");
6. the same edge with ``INGEST_AUTH=off``: what verification costs the edge
   per event (the issue's aim: under 5 % at 100-event batches);
7. the same edge with its limits relaxed (rate limits off, caps where they
   never bind): what the hardening limits cost (the aim: under 5 %).

The HTTP rows are driven by :mod:`bench.edge`, the canned server is
:mod:`bench.canned`.

The HTTP client (aiohttp) comes with the dev extras.
"""

from __future__ import annotations

import asyncio
import functools
import os
import platform
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from prometheus_client import CollectorRegistry

from bench.edge import bench_http
from bench.support import EDGE_ARGV, Result, clean_env, cpu_seconds, edge_env, issue_key, timed
from ingest.api.sigv4 import Verifier
from ingest.kafka import clients
from ingest.kafka.broker import EmbeddedBroker
from ingest.kafka.publish import Publisher
from ingest.metrics import Metrics
from ingest.records import validate
from ingest.records.codec import Codec
from ingest.records.values import Event, Invalid, OutRecord
from ingest.scopes import Principal
from ingest.settings import Settings
from load.sigv4 import Signer

EVENTS_PER_BODY = 100
EDGE_ROUNDS = 3
BODIES = 64
HTTP_CEILING = "HTTP ceiling: the edge's HTTP server answering a canned 202"
UVICORN_CEILING = "uvicorn ceiling: uvicorn (httptools) answering the same canned 202"
RELAXED = "edge, limits relaxed: the same edge, rate limits off, connection and body caps at their largest"
# What the limits of the hardening issue cost: the same edge with each set
# where it never binds (rate limits off, caps at their largest).
RELAXED_LIMITS = {
    "INGEST_RATE_LIMIT_APP_EVENTS_PER_S": "0",
    "INGEST_RATE_LIMIT_ADDRESS_REQUESTS_PER_S": "0",
    "INGEST_HTTP_MAX_HEADERS": "10000",
    "INGEST_HTTP_MAX_HEADER_BYTES": str(16 << 20),
    "INGEST_HTTP_MAX_URL_BYTES": str(1 << 20),
    "INGEST_HTTP_MAX_CONNECTIONS": "1000000",
    "INGEST_HTTP_BODY_BUDGET_BYTES": str(1 << 40),
}
UNVERIFIED = "edge, INGEST_AUTH=off: `ingest edge` over HTTP, signatures not verified"


def make_body(seed: int) -> bytes:
    """A native-SDK-shaped PutEvents body: one endpoint, 100 realistic events."""
    endpoint_id = str(uuid.UUID(int=seed))
    session = f"{endpoint_id[:8]}-20261123-100000000"
    ts = "2026-11-23T10:00:00.000Z"
    events: dict[str, Any] = {}
    for i in range(EVENTS_PER_BODY):
        kind = i % 10
        body: dict[str, Any] = {"Timestamp": ts, "Session": {"Id": session, "StartTimestamp": ts}}
        if kind == 0:
            body["EventType"] = "_session.start"
        elif kind == 9:
            body |= {"EventType": "_session.stop"}
            body["Session"] |= {"StopTimestamp": ts, "Duration": 61000}
        elif kind == 5:
            body |= {
                "EventType": "_monetization.purchase",
                "Attributes": {"_product_id": "sku-1", "_currency": "USD", "_store": "Apple"},
                "Metrics": {"_item_price": 4.99, "_quantity": 1},
            }
        else:
            body |= {
                "EventType": "screen.view",
                "Attributes": {"screen": f"screen-{kind}", "source": "tab"},
                "Metrics": {"dwell_ms": 1500.0},
            }
        body |= {"AppPackageName": "com.example.app", "AppVersionCode": "42", "SdkName": "aws-amplify-swift"}
        events[str(uuid.UUID(int=seed * 1000 + i))] = body
    endpoint = {
        "ChannelType": "APNS",
        "Address": f"token-{seed}",
        "Demographic": {"Platform": "ios", "PlatformVersion": "18.1", "AppVersion": "4.2", "Locale": "en_US"},
        "Location": {"Country": "NO", "City": "Oslo"},
        "User": {"UserId": f"user-{seed}"},
    }
    return orjson.dumps({"BatchItem": {endpoint_id: {"Endpoint": endpoint, "Events": events}}})


def core_records(codec: Codec, raw: bytes, app_id: str) -> list[OutRecord]:
    """Parse, validate and encode one body: the edge's pure work."""
    batches = validate.put_events(
        validate.json_body(raw), app_id=app_id, request_id="bench", received_at_ms=0, body_bytes=len(raw)
    )
    records = []
    for batch in batches:
        key = f"{app_id}:{batch.endpoint_id}".encode()
        if not isinstance(batch.endpoint, Invalid):
            records.append(OutRecord(clients.ENDPOINTS_TOPIC, key, codec.encode_endpoint(batch.endpoint)))
        records.extend(
            OutRecord(clients.EVENTS_TOPIC, key, codec.encode_event(e))
            for _, e in batch.events
            if isinstance(e, Event)
        )
    return records


def bench_encoders(bodies: list[bytes], seconds: float) -> tuple[Result, Result]:
    """The same Event records through fastavro's schemaless_writer and through
    the generated writer the codec uses (:mod:`ingest.avro`)."""
    import io

    import fastavro

    from ingest.records.codec import EVENT_SCHEMA, event_datum

    codec = Codec()
    schema = codec.schema(EVENT_SCHEMA)
    events = [
        e
        for raw in bodies
        for batch in validate.put_events(
            validate.json_body(raw),
            app_id="bench-app",
            request_id="bench",
            received_at_ms=0,
            body_bytes=len(raw),
        )
        for _, e in batch.events
        if isinstance(e, Event)
    ]

    def run(name: str, encode: Callable[[Event], object]) -> Result:
        done = 0
        cpu = time.process_time()
        started = time.perf_counter()
        while time.perf_counter() - started < seconds / 2:
            for event in events:
                encode(event)
            done += len(events)
        return Result(name, done, time.perf_counter() - started, time.process_time() - cpu)

    def with_fastavro(event: Event) -> object:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, event_datum(event))
        return out

    return (
        run("encode: fastavro schemaless_writer", with_fastavro),
        run("encode: generated writer (ingest.avro)", codec.encode_event),
    )


def bench_core(bodies: list[bytes], seconds: float) -> Result:
    codec = Codec()
    events = 0
    started = time.perf_counter()
    cpu = time.process_time()
    while time.perf_counter() - started < seconds:
        for raw in bodies:
            events += EVENTS_PER_BODY
            core_records(codec, raw, "bench-app")
    return Result(
        "core: parse + validate + encode", events, time.perf_counter() - started, time.process_time() - cpu
    )


def bench_verify(bodies: list[bytes], seconds: float) -> Result:
    """SigV4 verification alone, in this process: each body signed once as an
    SDK signs PutEvents, then verified over and over (body SHA-256, canonical
    request, one HMAC; the signing key cached, as on the edge)."""
    access_key_id, secret = "AKIABENCHBENCHBENCH0", "s" * 40
    principal = Principal(access_key_id, "admin", frozenset(), temporary=False)
    verifier: Verifier[Principal] = Verifier(lambda key, token: (secret, principal), max_skew_s=900.0)
    signer = Signer(access_key_id=access_key_id, secret_access_key=secret, region="us-east-1", host="edge")
    path = "/v1/apps/bench-app/events"
    raw_path = path.encode()
    signed: list[tuple[bytes, list[tuple[bytes, bytes]]]] = []
    for raw in bodies:
        added = signer.sign("POST", path, raw, epoch_s=int(time.time()))
        sent = [(b"host", b"edge"), (b"content-type", b"application/json")]
        signed.append((raw, sent + [(k.lower().encode(), v.encode()) for k, v in added.items()]))
    events = 0
    started = time.perf_counter()
    cpu = time.process_time()
    while time.perf_counter() - started < seconds:
        for raw, headers in signed:
            events += EVENTS_PER_BODY
            verifier.verify(method="POST", raw_path=raw_path, query_string=b"", headers=headers, body=raw)
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    return Result("verify: SigV4 verification alone", events, elapsed, used)


async def bench_produce(settings: Settings, bootstrap: str, bodies: list[bytes], seconds: float) -> Result:
    """Raw aiokafka: pre-built Avro records packed into one batch per partition
    and handed over with ``send_batch`` from a single task.

    A single task, because aiokafka 0.14's ``add_batch`` subtracts the time
    since its first wait on every wake-up: with many tasks waiting on one
    partition the budget runs out in well under ``request_timeout_ms`` and it
    raises KafkaTimeoutError. (The Publisher has one pump per partition for
    the same reason.)
    """
    codec = Codec()
    per_body = [core_records(codec, raw, "bench-app") for raw in bodies]
    producer = clients.producer(settings, bootstrap, idempotence=False)
    await producer.start()
    partitions = len(await producer.partitions_for(clients.EVENTS_TOPIC))

    @functools.cache
    def partition_of(key: bytes) -> int:
        return int(murmur2(key) & 0x7FFFFFFF) % partitions

    loop = asyncio.get_running_loop()
    acks: deque[asyncio.Future[Any]] = deque()
    events = 0
    try:
        cpu = time.process_time()
        started = loop.time()
        index = 0
        while loop.time() - started < seconds:
            builders: dict[tuple[str, int], Any] = {}
            for _ in range(8):
                for r in per_body[index % len(per_body)]:
                    tp = (r.topic, partition_of(r.key))
                    builder = builders.get(tp) or builders.setdefault(tp, producer.create_batch())
                    if builder.append(timestamp=None, key=r.key, value=r.value) is None:
                        acks.append(await producer.send_batch(builder, tp[0], partition=tp[1]))
                        builders[tp] = producer.create_batch()
                        builders[tp].append(timestamp=None, key=r.key, value=r.value)
                index += 1
                events += EVENTS_PER_BODY
            for (topic, number), builder in builders.items():
                acks.append(await producer.send_batch(builder, topic, partition=number))
            while len(acks) > 64:
                await acks.popleft()
        await asyncio.gather(*acks)
        return Result(
            "produce ceiling: raw aiokafka send_batch",
            events,
            loop.time() - started,
            time.process_time() - cpu,
        )
    finally:
        await producer.stop()


async def bench_publisher(settings: Settings, bootstrap: str, bodies: list[bytes], seconds: float) -> Result:
    codec = Codec()
    publisher = Publisher(
        clients.producer(settings, bootstrap, idempotence=False),
        topics=(clients.EVENTS_TOPIC, clients.ENDPOINTS_TOPIC),
        produce_timeout_s=settings.produce_timeout_s,
        buffer_bytes=settings.producer_buffer_bytes,
        drain_timeout_s=settings.drain_timeout_s,
        metrics=Metrics(CollectorRegistry()),
    )
    index = 0

    async def step() -> int:
        nonlocal index
        raw = bodies[index % len(bodies)]
        index += 1
        acked = await publisher.publish(core_records(codec, raw, "bench-app"))
        return acked.count(True) - 1  # minus the endpoint upsert

    async with publisher:
        cpu = time.process_time()
        events, elapsed = await timed(seconds, step, concurrency=32)
        return Result("publisher: core + Publisher, no HTTP", events, elapsed, time.process_time() - cpu)


async def bench(settings: Settings, *, seconds: float, concurrency: int) -> int:
    bodies = [make_body(seed) for seed in range(1, BODIES + 1)]
    work = Path(settings.data_dir) / f"bench-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    results: list[Result] = [
        *bench_encoders(bodies, seconds),
        bench_core(bodies, seconds),
        bench_verify(bodies, seconds),
    ]
    for stack, name in (("ingest", HTTP_CEILING), ("uvicorn", UVICORN_CEILING)):
        results.append(
            await bench_http(
                name,
                [sys.executable, "-m", "bench.canned", "--stack", stack],
                clean_env(),
                "/v1/apps/x/events",
                bodies,
                seconds,
                concurrency,
                work / f"canned-{stack}.log",
            )
        )
    broker_cpu = 0.0
    # A fresh broker per measurement: the memory engine keeps every record,
    # and a broker holding the previous run's gigabyte is not the same broker.
    # The three edges are measured in turn, EDGE_ROUNDS times, and each
    # reported by its median round: their differences are a few percent, less
    # than a shared machine drifts between two runs.
    rounds: dict[str, list[Result]] = {}
    edges = ("edge", "edge-unverified", "edge-relaxed")
    for measure in ("produce", "publisher", *edges * EDGE_ROUNDS):
        async with EmbeddedBroker(log_path=work / f"tansu-{measure}.log") as broker:
            await clients.ensure_topics(settings, broker.bootstrap)
            if measure == "produce":
                results.append(await bench_produce(settings, broker.bootstrap, bodies, seconds))
            elif measure == "publisher":
                results.append(await bench_publisher(settings, broker.bootstrap, bodies, seconds))
            else:
                verify = measure != "edge-unverified"
                env = edge_env(
                    broker.bootstrap,
                    work,
                    INGEST_AUTH="sigv4" if verify else "off",
                    **(RELAXED_LIMITS if measure == "edge-relaxed" else {}),
                )
                # The key exists before the edge starts: its first key ring load has it.
                key = await asyncio.to_thread(issue_key, env)
                name = {"edge": "edge: `ingest edge` over HTTP", "edge-unverified": UNVERIFIED}.get(
                    measure, RELAXED
                )
                rounds.setdefault(name, []).append(
                    await bench_http(
                        name,
                        list(EDGE_ARGV),
                        env,
                        "/v1/apps/{app}/events",
                        bodies,
                        seconds,
                        concurrency,
                        work / f"{measure}.log",
                        key,
                    )
                )
            broker_cpu += cpu_seconds(broker.pid) if broker.pid else 0.0
    results.extend(
        sorted(measured, key=lambda r: r.per_cpu or 0)[len(measured) // 2] for measured in rounds.values()
    )
    print(report(results, seconds=seconds, concurrency=concurrency, broker_cpu_s=broker_cpu))
    return 0


def report(results: list[Result], *, seconds: float, concurrency: int, broker_cpu_s: float) -> str:
    by = {r.name.split(":")[0]: r for r in results}
    lines = [
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
        f"{seconds:g} s per measurement, {concurrency} HTTP connections, {EVENTS_PER_BODY}-event bodies; "
        f"the three edge rows are each the median of {EDGE_ROUNDS} rounds taken in turn. "
        "Client, broker and server share the machine.",
        "",
        "| measurement | events/s | events per CPU-second of the measured process | p99 request latency |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        per_cpu = "" if r.per_cpu is None else f"{r.per_cpu:,.0f}"
        p99 = "" if r.p99_s is None else f"{r.p99_s * 1000:.1f} ms"
        lines.append(f"| {r.name} | {r.rate:,.0f} | {per_cpu} | {p99} |")
    edge, core, produce, http = by["edge"], by["core"], by["produce ceiling"], by["HTTP ceiling"]
    unverified = by[UNVERIFIED.split(":")[0]]
    fastavro_writer, generated = (r for r in results if r.name.startswith("encode"))
    lines += [
        "",
        "Ratios (same run):",
        f"- generated writer ÷ fastavro schemaless_writer, events encoded per second: "
        f"{generated.rate / fastavro_writer.rate:.1f}",
        "- core (parse + validate + encode) ÷ fastavro schemaless_writer (encoding alone), events per "
        f"CPU-second: {(core.per_cpu or 0) / (fastavro_writer.per_cpu or 1):.2f}",
        f"- edge events/s ÷ produce ceiling events/s: {edge.rate / produce.rate:.2f}",
        f"- edge events/s ÷ HTTP ceiling events/s: {edge.rate / http.rate:.2f}",
        "- the edge's HTTP server ÷ uvicorn, canned 202s per server CPU-second: "
        f"{(http.per_cpu or 0) / (by['uvicorn ceiling'].per_cpu or 1):.2f} "
        f"(events/s: {http.rate / by['uvicorn ceiling'].rate:.2f})",
        "- edge events per edge CPU-second ÷ core events per CPU-second: "
        f"{(edge.per_cpu or 0) / (core.per_cpu or 1):.2f}",
        f'- edge events per edge CPU-second ("per edge core"): {edge.per_cpu or 0:,.0f}',
        "- SigV4 verification's share of the edge's CPU per event (1 - verified ÷ unverified events "
        f"per edge CPU-second): {1 - (edge.per_cpu or 0) / (unverified.per_cpu or 1):.1%}",
        "- the same share from verification alone (its CPU per event ÷ the edge's): "
        f"{(edge.per_cpu or 0) / (by['verify'].per_cpu or 1):.1%}",
        "- what the limits cost the edge (1 - edge ÷ limits relaxed, events per edge CPU-second): "
        f"{1 - (edge.per_cpu or 0) / (by['edge, limits relaxed'].per_cpu or 1):.1%}; "
        f"in events/s: {1 - edge.rate / by['edge, limits relaxed'].rate:.1%}",
        f"- broker CPU over the whole run: {broker_cpu_s:.1f} s",
    ]
    return "\n".join(lines)
