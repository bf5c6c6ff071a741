"""Process assembly: one AsyncExitStack per process; a signal only sets an event.

It earns its size (about 410 lines): every role's parts (probe listener,
Kafka, store, workers, edge) entered in the one order whose unwinding is the
drain, plus the pieces `ingest run`'s supervisor shares.

Shutdown order (the stack unwinds in reverse): readiness off and new work
refused → the HTTP server stops accepting and waits for in-flight requests →
the publisher waits for outstanding acks and flushes the producer → the
workers (endpoint and KPI, side by side) apply everything up to the end of
their partitions and commit → the store closes → the embedded broker stops.
Each step is bounded by ``INGEST_DRAIN_TIMEOUT_S``, which stays below
Kubernetes' ``terminationGracePeriodSeconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from prometheus_client import REGISTRY, CollectorRegistry

from ingest import logs
from ingest.api.limits import ClientAddress
from ingest.api.probes import Check, Probes
from ingest.api.server import BodyBudget, Limits, Server
from ingest.errors import CONDITION_TEXT, ApiError, SettingsError, StoreCondition
from ingest.kafka import clients
from ingest.kafka.broker import EmbeddedBroker
from ingest.kafka.publish import Publisher
from ingest.keys import KeyRing, MasterKey, bootstrap_admin
from ingest.launch import Broker, Status, write_status
from ingest.metrics import (
    ConsumerMetrics,
    HttpMetrics,
    JobMetrics,
    KpiWorkerMetrics,
    Metrics,
    StreamMetrics,
    WorkerMetrics,
)
from ingest.records.codec import Codec
from ingest.settings import Settings
from ingest.store.backends import open_store
from ingest.store.base import Store
from ingest.workers.consumer import Worker
from ingest.workers.sinks import EndpointWorker, KpiSink

# What only some roles run is imported where it is built: a worker of
# endpoints or KPIs, and `ingest run`'s supervisor, load neither the API nor
# botocore (0.1 CPU-s less a start, and about 10 MB less resident).
if TYPE_CHECKING:
    from ingest.api.auth import Authenticator
    from ingest.api.identity import Identities
    from ingest.jobs.worker import JobWorker
    from ingest.streams.worker import StreamWorker

log = logging.getLogger(__name__)

# Not ready while the process assembles itself; removed once it serves.
STARTING: Check = ("starting", lambda: False)

# Probes take no body worth the name, and a handful of scrapers and kubelets
# at once (they come out of the descriptors the API listener leaves free).
PROBE_MAX_BODY_BYTES = 64 * 1024
PROBE_MAX_CONNECTIONS = 64

# Allocations between young-generation collections (CPython's default: 700).
GC_GEN0_THRESHOLD = 10_000


def settle_gc() -> None:
    """Once start-up is done: everything built so far lives as long as the
    process, so take it out of the cyclic collector's view, and collect young
    objects less often (a 100-event request, or a batch of endpoint records,
    allocates thousands). Measured in-process: about 10-20 % more events per
    CPU-second on the edge."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD)


def limits_of(settings: Settings, *, max_body_bytes: int | None = None) -> Limits:
    """The API listener's limits from settings (the probe listener takes the
    same timeouts with small bodies)."""
    return Limits(
        header_timeout_s=settings.http_header_timeout_s,
        idle_timeout_s=settings.http_idle_timeout_s,
        body_timeout_s=settings.http_body_timeout_s,
        min_body_rate=settings.http_min_body_rate,
        max_url_bytes=settings.http_max_url_bytes,
        max_headers=settings.http_max_headers,
        max_header_bytes=settings.http_max_header_bytes,
        max_body_bytes=settings.max_body_bytes if max_body_bytes is None else max_body_bytes,
        max_connections=settings.http_max_connections,
    )


def http_server(
    app: Any,
    *,
    host: str,
    port: int,
    drain_timeout_s: float,
    name: str = "api",
    limits: Limits | None = None,
    budget: BodyBudget | None = None,
    metrics: HttpMetrics | None = None,
    clients: ClientAddress | None = None,
    shed: Callable[[dict[str, Any]], ApiError | None] | None = None,
    reuse_port: bool = False,
) -> contextlib.AbstractAsyncContextManager[int]:
    """:class:`ingest.api.server.Server` running ``app`` (default limits from
    default settings, a budget of 16 bodies); entered, it yields the bound
    port; on exit it stops accepting and lets requests under way finish
    within ``drain_timeout_s``."""
    limits = limits or limits_of(Settings())
    budget = budget or BodyBudget(16 * limits.max_body_bytes)
    server = Server(
        app,
        name=name,
        limits=limits,
        budget=budget,
        metrics=metrics or HttpMetrics(CollectorRegistry()),
        clients=clients,
        shed=shed,
    )
    return server.serving(host, port, drain_timeout_s, reuse_port=reuse_port)


Mode = Literal["run", "edge", "worker-endpoints", "worker-kpis", "worker-streams", "worker-jobs"]


class Role(Protocol):
    """What a process runs a worker by (the store workers and the streams worker)."""

    @property
    def name(self) -> str: ...
    @property
    def ready(self) -> bool: ...
    @property
    def store_condition(self) -> StoreCondition | None: ...
    async def run(self) -> None: ...
    def stop(self) -> None: ...


@contextlib.asynccontextmanager
async def running(workers: Sequence[Role], stopping: asyncio.Event) -> AsyncIterator[None]:
    """The workers as owned tasks: on exit all are stopped together, so they
    drain side by side, and awaited (a worker's failure is raised then); if
    one dies early the whole process stops rather than serve without it."""

    def ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # The error itself is raised (and, an IngestError, logged once by
            # the command line) when the process unwinds.
            log.error("%s failed; stopping the process", task.get_name())
            stopping.set()

    tasks = []
    for worker in workers:
        task = asyncio.create_task(worker.run(), name=f"{worker.name} worker")
        task.add_done_callback(ended)
        tasks.append(task)
    try:
        yield
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait(tasks)
        for task in tasks:
            task.result()


def workers_of(
    mode: Mode,
    settings: Settings,
    bootstrap: str,
    *,
    idempotence: bool,
    store: Store,
    codec: Codec,
) -> list[Worker[Any]]:
    """The workers a mode runs: the endpoint worker, the KPI worker, or both
    (`ingest run`), sharing one consumer-lag gauge in the registry."""
    built: list[Worker[Any]] = []
    if mode not in ("run", "worker-endpoints", "worker-kpis"):
        return built
    consumer_metrics = ConsumerMetrics(REGISTRY)
    if mode in ("run", "worker-endpoints"):
        built.append(
            EndpointWorker(
                clients.consumer(
                    settings, bootstrap, group_id=clients.ENDPOINTS_GROUP, gaps=consumer_metrics.offset_gaps
                ),
                clients.deadletter_producer(settings, bootstrap, idempotence=idempotence),
                store,
                codec=codec,
                metrics=WorkerMetrics(REGISTRY, consumer_metrics),
                max_records=settings.worker_max_records,
                drain_timeout_s=settings.drain_timeout_s,
                stall_timeout_s=settings.worker_stall_timeout_s,
                fetch_interval_s=settings.worker_fetch_interval_ms / 1000,
            )
        )
        log.info("endpoint worker consuming %s as group %s", clients.ENDPOINTS_TOPIC, clients.ENDPOINTS_GROUP)
    if mode in ("run", "worker-kpis"):
        sink = KpiSink(
            store,
            codec=codec,
            metrics=KpiWorkerMetrics(REGISTRY, consumer_metrics),
            retention_days=settings.dedupe_retention_days,
        )
        built.append(
            Worker(
                clients.consumer(
                    settings, bootstrap, group_id=clients.KPIS_GROUP, gaps=consumer_metrics.offset_gaps
                ),
                clients.deadletter_producer(settings, bootstrap, idempotence=idempotence),
                sink,
                max_records=settings.worker_max_records,
                drain_timeout_s=settings.drain_timeout_s,
                stall_timeout_s=settings.worker_stall_timeout_s,
                fetch_interval_s=settings.worker_fetch_interval_ms / 1000,
            )
        )
        log.info(
            "KPI worker consuming %s as group %s (dedupe window %d days)",
            clients.EVENTS_TOPIC,
            clients.KPIS_GROUP,
            settings.dedupe_retention_days,
        )
    return built


async def stream_worker(
    stack: AsyncExitStack,
    settings: Settings,
    bootstrap: str,
    *,
    idempotence: bool,
    store: Store,
    codec: Codec,
    registry: CollectorRegistry = REGISTRY,
    group_id: str = clients.STREAMS_GROUP,
) -> StreamWorker:
    """The streams worker, its AWS client and Kafka clients on ``stack``; its
    metrics in ``registry``, its consumer in group ``group_id`` (a bench gives
    each drain a registry and a group of its own)."""
    from ingest.streams.aws import AwsDelivery
    from ingest.streams.senders import FirehoseSender, KafkaSender, KinesisSender
    from ingest.streams.worker import StreamWorker

    aws = await stack.enter_async_context(
        AwsDelivery(assume_role=settings.stream_assume_role, max_threads=settings.stream_aws_threads)
    )
    producer = clients.producer(settings, bootstrap, idempotence=idempotence, client_id="ingest-streams")
    await clients.start_producer(producer)
    stack.push_async_callback(producer.stop)
    admin = clients.admin(settings, bootstrap, client_id="ingest-streams")
    await admin.start()
    stack.push_async_callback(admin.close)
    kafka = KafkaSender(
        producer,
        admin,
        partitions=settings.topic_partitions,
        replication_factor=settings.kafka_replication_factor,
        timeout_s=settings.produce_timeout_s,
    )
    log.info(
        "streams worker consuming %s as group %s (AWS destinations: %s)",
        clients.EVENTS_TOPIC,
        group_id,
        "as each stream's role" if settings.stream_assume_role else "with this process's own credentials",
    )
    metrics = StreamMetrics(registry)
    return StreamWorker(
        clients.consumer(settings, bootstrap, group_id=group_id, gaps=metrics.offset_gaps),
        clients.deadletter_producer(settings, bootstrap, idempotence=idempotence),
        store,
        codec=codec,
        senders={"kinesis": KinesisSender(aws), "firehose": FirehoseSender(aws), "kafka": kafka},
        metrics=metrics,
        max_records=settings.worker_max_records,
        drain_timeout_s=settings.drain_timeout_s,
        config_refresh_s=settings.stream_config_refresh_s,
        park_after_s=settings.stream_park_after_s,
        allowed_accounts=settings.stream_accounts,
        fetch_interval_s=settings.worker_fetch_interval_ms / 1000,
    )


async def job_worker(
    stack: AsyncExitStack,
    settings: Settings,
    bootstrap: str,
    *,
    idempotence: bool,
    store: Store,
    codec: Codec,
    registry: CollectorRegistry = REGISTRY,
    publisher: Publisher | None = None,
) -> JobWorker:
    """The jobs worker and its S3 client on ``stack``, publishing imported
    rows onto ``ingest.endpoints`` (UpdateEndpoint's path) through
    ``publisher``, the edge's own when it runs in the edge's process; else
    through a publisher of its own, on ``stack``, with the edge's producer
    settings (acks, buffer bound)."""
    from ingest.api.segments import MAX_SEGMENTS_PER_APP
    from ingest.jobs.sources import ROLE_SESSION_NAME as JOB_ROLE_SESSION_NAME
    from ingest.jobs.worker import Jobs, JobWorker
    from ingest.streams.aws import AwsDelivery

    aws = await stack.enter_async_context(
        AwsDelivery(
            assume_role=settings.job_assume_role,
            max_threads=settings.job_aws_threads,
            role_session_name=JOB_ROLE_SESSION_NAME,
        )
    )
    if publisher is None:
        publisher = await stack.enter_async_context(
            Publisher(
                clients.producer(settings, bootstrap, idempotence=idempotence, client_id="ingest-jobs"),
                topics=(clients.ENDPOINTS_TOPIC,),
                produce_timeout_s=settings.produce_timeout_s,
                buffer_bytes=settings.producer_buffer_bytes,
                drain_timeout_s=settings.drain_timeout_s,
                metrics=Metrics(CollectorRegistry()),
            )
        )
    log.info(
        "jobs worker: at most %d jobs in the deployment, %d an app; S3 %s; files under %s and %s",
        settings.job_max_running,
        settings.job_max_running_per_app,
        "as each job's role" if settings.job_assume_role else "with this process's own credentials",
        settings.import_dir,
        settings.export_dir,
    )
    return JobWorker(
        store,
        Jobs(
            store=store,
            aws=aws,
            publish=publisher.publish,
            codec=codec,
            settings=settings,
            max_segments=MAX_SEGMENTS_PER_APP,
        ),
        max_running=settings.job_max_running,
        max_per_app=settings.job_max_running_per_app,
        lease_s=settings.job_lease_s,
        poll_s=settings.job_poll_s,
        retries=settings.job_retries,
        drain_timeout_s=settings.drain_timeout_s,
        metrics=JobMetrics(registry),
    )


def _all_ready(workers: Sequence[Role]) -> bool:
    return all(worker.ready for worker in workers)


def _no_worker_has(workers: Sequence[Role], condition: StoreCondition) -> bool:
    return all(worker.store_condition != condition for worker in workers)


def _redacted(url: str | None) -> str | None:
    """A store URL fit for a log: its password and query values replaced."""
    return logs.redacted_url(url)


async def _authentication(
    stack: AsyncExitStack, settings: Settings, mode: Mode, store: Store, metrics: Metrics
) -> tuple[Identities, Authenticator | None, Callable[[], bool]]:
    """The key ring (an owned refresh task on ``stack``), the Cognito-style
    identities, and the authenticator (None with ``INGEST_AUTH=off``). On the
    first start of `ingest run` with auth on, the admin key and its shared
    credentials file."""
    from ingest.api.auth import Authenticator
    from ingest.api.identity import Identities
    from ingest.api.sessions import Sessions

    master = await asyncio.to_thread(MasterKey.load, settings)
    if mode == "run" and settings.auth == "sigv4":
        await bootstrap_admin(store, master, settings.data_dir)
    ring = await stack.enter_async_context(KeyRing(store, master, refresh_s=settings.auth_refresh_s))
    identities = Identities(
        mac=master.mac,
        pool=ring.pool,
        pools=ring.pools,
        ttl_s=settings.credentials_ttl_s,
        getid_per_s=settings.getid_per_address_per_s,
    )
    if settings.auth == "off":
        log.warning("INGEST_AUTH=off: API requests are served without verifying who sent them")
        return identities, None, lambda: ring.healthy
    auth = Authenticator(
        ring=ring,
        identities=identities,
        max_skew_s=settings.auth_max_skew_s,
        metrics=metrics,
        account_id=settings.account_id,
        sessions=Sessions(
            mac=master.console_mac,
            idle_s=settings.console_idle_timeout_s,
            max_age_s=settings.console_session_max_s,
        ),
    )
    return identities, auth, lambda: ring.healthy


def stop_on_signals(stopping: asyncio.Event) -> None:
    """SIGINT and SIGTERM only set ``stopping``; a second Ctrl-C falls through
    to Python's default handler (abandon the drain)."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        log.info("%s received: draining", sig.name)
        stopping.set()
        loop.remove_signal_handler(signal.SIGINT)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)


async def probe_listener(
    stack: AsyncExitStack, settings: Settings, probes: Probes, http_metrics: HttpMetrics
) -> str:
    """The probe listener on ``stack`` (entered first, so it is the last to
    close: readiness is false from the signal on and stays answerable
    through the drain); → its "host:port"."""
    probe_port = await stack.enter_async_context(
        http_server(
            probes,
            host=settings.probe_host,
            port=settings.probe_port,
            drain_timeout_s=settings.drain_timeout_s,
            name="probes",
            metrics=http_metrics,
            limits=dataclasses.replace(
                limits_of(settings, max_body_bytes=PROBE_MAX_BODY_BYTES),
                max_connections=PROBE_MAX_CONNECTIONS,
            ),
        )
    )
    address = f"{settings.probe_host}:{probe_port}"
    log.info("probes listening on http://%s (/healthz, /readyz, /metrics)", address)
    return address


async def kafka_of(stack: AsyncExitStack, settings: Settings, mode: Mode) -> tuple[str, bool, Broker | None]:
    """The Kafka a process uses, its topics created: INGEST_KAFKA_BOOTSTRAP,
    or for `ingest run` without it the embedded broker, started on
    ``stack``; → (bootstrap, producer idempotence, the embedded broker)."""
    bootstrap = settings.kafka_bootstrap
    idempotence = settings.kafka_idempotence
    embedded: Broker | None = None
    if bootstrap is None:
        if mode != "run":
            raise SettingsError(f"INGEST_KAFKA_BOOTSTRAP is required for `ingest {mode.replace('-', ' ')}`")
        broker = await stack.enter_async_context(
            EmbeddedBroker(
                log_path=settings.data_dir / "tansu.log",
                storage=settings.embedded_storage,
                directory=settings.data_dir / "kafka",
                retain={
                    clients.EVENTS_TOPIC: (clients.KPIS_GROUP, clients.STREAMS_GROUP),
                    clients.ENDPOINTS_TOPIC: (clients.ENDPOINTS_GROUP,),
                },
            )
        )
        bootstrap = broker.bootstrap
        embedded = Broker(broker.bootstrap, broker.pid or 0)
        # aiokafka's idempotent producer needs InitProducerId v3+, which Tansu lacks.
        idempotence = False
    await clients.ensure_topics(settings, bootstrap)
    log.info(
        "Kafka at %s; topics %s, %s, %s",
        bootstrap,
        clients.EVENTS_TOPIC,
        clients.ENDPOINTS_TOPIC,
        clients.DEADLETTER_TOPIC,
    )
    return bootstrap, idempotence, embedded


async def serve(
    settings: Settings,
    *,
    mode: Mode,
    status_file: Path | None = None,
    reuse_port: bool = False,
) -> int:
    """Run one process role until SIGINT/SIGTERM, then drain (module docstring).

    With ``status_file``, once listening it writes there where it listens and
    which broker it uses (:mod:`ingest.launch`), and removes it on the way out.
    ``reuse_port`` shares the API port with other edges (SO_REUSEPORT).
    """
    stopping = asyncio.Event()
    stop_on_signals(stopping)

    async with AsyncExitStack() as stack:
        checks: list[Check] = [STARTING, ("draining", lambda: not stopping.is_set())]
        probes = Probes(checks, REGISTRY)
        http_metrics = HttpMetrics(REGISTRY)
        probe_address = await probe_listener(stack, settings, probes, http_metrics)
        api: str | None = None
        bootstrap, idempotence, embedded = await kafka_of(stack, settings, mode)

        store = await open_store(settings.store_url, data_dir=settings.data_dir)
        stack.push_async_callback(store.close)
        log.info("store: %s", _redacted(settings.store_url) or f"SQLite at {settings.sqlite_path}")
        codec = Codec()

        workers: list[Role] = [
            *workers_of(mode, settings, bootstrap, idempotence=idempotence, store=store, codec=codec)
        ]
        if mode in ("run", "worker-streams"):
            streams = await stream_worker(
                stack, settings, bootstrap, idempotence=idempotence, store=store, codec=codec
            )
            workers.append(streams)
            probes.degraded.append(streams.degraded)
        if mode == "worker-jobs":
            workers.append(
                await job_worker(
                    stack, settings, bootstrap, idempotence=idempotence, store=store, codec=codec
                )
            )
        if workers:
            # Entered before the publisher, so they exit after it: the workers
            # drain what the edge produced before the broker stops.
            await stack.enter_async_context(running(tuple(workers), stopping))

        serves_api = mode in ("run", "edge")
        if serves_api:
            from ingest.api.app import Edge

            metrics = Metrics(REGISTRY)
            probes.gauge = metrics.ready
            publisher = await stack.enter_async_context(
                Publisher(
                    clients.producer(settings, bootstrap, idempotence=idempotence),
                    topics=(clients.EVENTS_TOPIC, clients.ENDPOINTS_TOPIC),
                    produce_timeout_s=settings.produce_timeout_s,
                    buffer_bytes=settings.producer_buffer_bytes,
                    drain_timeout_s=settings.drain_timeout_s,
                    metrics=metrics,
                )
            )
            identities, auth, keys_ready = await _authentication(stack, settings, mode, store, metrics)
            edge = Edge(
                settings=settings,
                store=store,
                publisher=publisher,
                codec=codec,
                metrics=metrics,
                identities=identities,
                auth=auth,
            )
            if mode == "run":
                # The one interpreter runs the jobs on the edge's producer.
                # Entered after the publisher, so the jobs stop before it flushes.
                jobs = await job_worker(
                    stack,
                    settings,
                    bootstrap,
                    idempotence=idempotence,
                    store=store,
                    codec=codec,
                    publisher=publisher,
                )
                await stack.enter_async_context(running((jobs,), stopping))
                workers.append(jobs)
            checks.extend(edge.checks)
            checks.append(("keys are not being reloaded (store unavailable?)", keys_ready))
            api_port = await stack.enter_async_context(
                http_server(
                    edge,
                    host=settings.host,
                    port=settings.port,
                    drain_timeout_s=settings.drain_timeout_s,
                    limits=limits_of(settings),
                    budget=BodyBudget(settings.http_body_budget_bytes),
                    clients=ClientAddress.parse(settings.trusted_proxies),
                    shed=edge.shed,
                    metrics=http_metrics,
                    reuse_port=reuse_port,
                )
            )
            api = f"{settings.host}:{api_port}"
            log.info("edge listening on http://%s (the Pinpoint API; the console at /console/)", api)
        if workers:
            # The conditions an operator must fix first, by name, then the rest.
            for condition, text in CONDITION_TEXT.items():
                checks.append((text, functools.partial(_no_worker_has, workers, condition)))
            checks.append(
                ("a worker is not ready (store unavailable?)", functools.partial(_all_ready, workers))
            )
        settle_gc()
        if status_file is not None:
            status = Status(os.getpid(), api, kafka=bootstrap, broker=embedded, probes=probe_address)
            write_status(status_file, status)
            stack.callback(status_file.unlink, missing_ok=True)
        checks.remove(STARTING)
        await stopping.wait()
        if serves_api:
            edge.draining = True  # new API requests get 429 while in-flight ones finish
    log.info("stopped cleanly")
    return 0
