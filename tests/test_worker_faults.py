"""The endpoint worker under faults, in the deployment topology: a Tansu
broker, `ingest edge` and `ingest worker endpoints` as separate processes
sharing one SQLite store (WAL works across processes).

Each test starts its own processes and signals only those, by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from ingest.folds.endpoints import BatchOutcome, EndpointRecord
from ingest.kafka import clients
from ingest.kafka.broker import free_port
from ingest.kafka.clients import DEADLETTER_TOPIC, ENDPOINTS_TOPIC
from ingest.metrics import WorkerMetrics
from ingest.records.codec import Codec
from ingest.records.values import EndpointUpsert
from ingest.settings import Settings
from ingest.store.sqlite import SqliteStore
from ingest.workers.sinks import EndpointWorker
from tests.conftest import Pipeline, endpoint_or_none, eventually, start_ingest, start_pipeline
from tests.kafka_reader import assert_dead_letters, read_partition
from tests.samples import metric
from tests.test_api import ACCEPTED, event

# Applying is quick; what takes time is a new worker joining the consumer
# group while the killed member's session (aiokafka's default 10 s) runs out.
APPLIED_WITHIN_S = 40.0
POLL_INTERVAL_S = 0.1
# Bounds each process's drain so a teardown never waits the default 20 s.
DRAIN_TIMEOUT_S = 5
LAG_RECORDS = 30
LAG_BATCH = 10
T0_MS = 1_700_000_000_000

# Long runs whose lines the rest of the suite reaches (tests/conftest.py).
pytestmark = pytest.mark.untraced


# --- the topology ----------------------------------------------------------


def start_role(tmp: Path, role: list[str], env: dict[str, str]) -> Pipeline:
    """`python -m ingest <role>` on a free port, ready (its /readyz answers 200)."""
    port = free_port()
    return start_ingest(tmp, role, port=port, data_dir=tmp, env={**env, "INGEST_PORT": str(port)})


@dataclass
class Topology:
    tmp: Path
    env: dict[str, str]
    edge: Pipeline
    workers: list[Pipeline] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.env["INGEST_KAFKA_BOOTSTRAP"]

    @property
    def worker(self) -> Pipeline:
        return self.workers[-1]

    def start_worker(self) -> Pipeline:
        self.workers.append(start_role(self.tmp, ["worker", "endpoints"], self.env))
        return self.worker

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()}" for p in (self.edge, *self.workers))


@pytest.fixture
def topology(request: pytest.FixtureRequest, tmp_path: Path, broker: str) -> Iterator[Topology]:
    """Edge and worker processes on one store: SQLite unless a test asks
    for ``postgres`` (indirect parametrization)."""
    store_url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    if getattr(request, "param", "sqlite") == "postgres":
        store_url = request.getfixturevalue("postgres_url")
    env = {
        "INGEST_KAFKA_BOOTSTRAP": broker,
        "INGEST_KAFKA_IDEMPOTENCE": "false",
        "INGEST_STORE_URL": store_url,
        "INGEST_DATA_DIR": str(tmp_path),
        "INGEST_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
    }
    # One after the other: the first to open the store migrates it.
    running = Topology(tmp_path, env, start_role(tmp_path, ["edge"], env))
    alive: list[Pipeline] = []
    codes: list[int] = []
    try:
        running.start_worker()
        yield running
    finally:
        # A process the test killed (or that died, which the test reports) is
        # already gone; the rest must stop cleanly.
        alive = [p for p in (*reversed(running.workers), running.edge) if p.process.poll() is None]
        codes = [p.stop() for p in alive]
    assert codes == [0] * len(alive), (codes, running.logs())


# --- SIGKILL in the middle of a stream -------------------------------------

SEED = 20261123
STREAM_ENDPOINTS = 10
STREAM_WRITES = 240
USERS = ("u-a", "u-b", "u-c")  # at most 10 endpoints each: the 15-per-user rule stays out


@dataclass(frozen=True)
class Write:
    via: Literal["UpdateEndpoint", "PutEvents"]
    endpoint_id: str
    body: dict[str, Any]


def stream(seed: int) -> list[Write]:
    """A known sequence of partial writes, each endpoint written many times."""
    rng = random.Random(seed)
    ids = [f"ep-{n}/{'ü' * (n % 3)} x" for n in range(STREAM_ENDPOINTS)]

    def some(keys: tuple[str, ...]) -> list[str]:
        return rng.sample(keys, rng.randint(1, len(keys)))

    writes = []
    for n in range(STREAM_WRITES):
        body: dict[str, Any] = {}
        if rng.random() < 0.4:
            body["Address"] = f"addr-{n}"
        if rng.random() < 0.3:
            body["ChannelType"] = rng.choice(["APNS", "GCM", "SMS", "EMAIL"])
        if rng.random() < 0.5:
            body["Attributes"] = {k: [f"{k}{n}"] for k in some(("a", "b", "c", "d"))}
        if rng.random() < 0.4:
            body["Metrics"] = {k: float(n) for k in some(("m1", "m2", "m3"))}
        if rng.random() < 0.3:
            body["Demographic"] = {k: f"{k}-{n}" for k in some(("Platform", "AppVersion", "Locale"))}
        if rng.random() < 0.3:
            body["Location"] = {k: f"{k}-{n}" for k in some(("City", "Country", "Region"))}
        if rng.random() < 0.2:
            body["OptOut"] = rng.choice(["ALL", "NONE"])
        if rng.random() < 0.2:
            body["EndpointStatus"] = rng.choice(["ACTIVE", "INACTIVE"])
        if rng.random() < 0.3:
            body["RequestId"] = f"client-{n}"
        user: dict[str, Any] = {}
        if rng.random() < 0.3:
            user["UserId"] = rng.choice(USERS)
        if rng.random() < 0.3:
            user["UserAttributes"] = {k: [f"{k}{n}"] for k in some(("x", "y"))}
        if user:
            body["User"] = user
        via: Literal["UpdateEndpoint", "PutEvents"] = "PutEvents" if rng.random() < 0.5 else "UpdateEndpoint"
        writes.append(Write(via, rng.choice(ids), body))
    return writes


def expect(state: dict[str, Any] | None, body: dict[str, Any], request_id: str) -> dict[str, Any]:
    """The reference merge, from the documented rules alone: members sent
    overwrite, keys and sub-members sent replace, the rest is kept."""
    doc = dict(state or {})
    for member, value in body.items():
        if member in ("Attributes", "Metrics", "Demographic", "Location"):
            doc[member] = {**doc.get(member, {}), **value}
        elif member == "User":
            user = dict(doc.get("User", {}))
            if "UserId" in value:
                user["UserId"] = value["UserId"]
            if "UserAttributes" in value:
                user["UserAttributes"] = {**user.get("UserAttributes", {}), **value["UserAttributes"]}
            doc["User"] = user
        elif member != "RequestId":
            doc[member] = value
    doc.setdefault("EndpointStatus", "ACTIVE")
    doc["RequestId"] = body.get("RequestId", request_id)
    return doc


def send(client: Any, app_id: str, write: Write) -> str:
    """One write, which must be accepted; → the request's ID."""
    if write.via == "UpdateEndpoint":
        response = client.update_endpoint(
            ApplicationId=app_id, EndpointId=write.endpoint_id, EndpointRequest=write.body
        )
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
        return str(response["MessageBody"]["RequestID"])
    response = client.put_events(
        ApplicationId=app_id,
        EventsRequest={"BatchItem": {write.endpoint_id: {"Endpoint": write.body, "Events": {"e": event()}}}},
    )
    assert response["EventsResponse"]["Results"][write.endpoint_id]["EndpointItemResponse"] == ACCEPTED
    return str(response["ResponseMetadata"]["RequestId"])


def stored(client: Any, app_id: str, endpoint_id: str) -> dict[str, Any] | None:
    found = endpoint_or_none(client, app_id, endpoint_id)
    if found is None:
        return None
    return {
        k: v
        for k, v in found.items()
        if k not in ("ApplicationId", "Id", "CohortId", "CreationDate", "EffectiveDate")
    }


def assert_store_equals(
    topology: Topology, client: Any, app_id: str, oracle: dict[str, dict[str, Any]]
) -> None:
    """Until every endpoint of ``oracle`` reads as it says; the processes'
    logs in the failure if that never comes."""

    def everything() -> dict[str, dict[str, Any] | None]:
        return {endpoint_id: stored(client, app_id, endpoint_id) for endpoint_id in oracle}

    try:
        eventually(everything, lambda found: found == oracle, "every write applied", APPLIED_WITHIN_S)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{topology.logs()}") from exc


@pytest.mark.parametrize("topology", ["sqlite", "postgres"], indirect=True)
def test_sigkilled_worker_loses_nothing(topology: Topology) -> None:
    client = topology.edge.client()
    app_id = client.create_app(CreateApplicationRequest={"Name": "sigkill"})["ApplicationResponse"]["Id"]
    writes = stream(SEED)
    warm_at, kill_at, restart_at = 10, len(writes) // 3, 2 * len(writes) // 3
    oracle: dict[str, dict[str, Any]] = {}
    killed = topology.worker
    for n, write in enumerate(writes):
        if n == warm_at:
            # From here on the stream races a worker that has joined its
            # group and applies (and commits) as the writes arrive.
            eventually(
                lambda: metric(killed, 'ingest_endpoint_records_total{outcome="applied"}'),
                lambda applied: applied > 0,
                "the first worker applying",
                APPLIED_WITHIN_S,
            )
        if n == kill_at:
            # Right after a 202: the last writes may be fetched, applied or
            # committed, or not yet.
            assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
        if n == restart_at:
            topology.start_worker()
        request_id = send(client, app_id, write)
        oracle[write.endpoint_id] = expect(oracle.get(write.endpoint_id), write.body, request_id)
    assert_store_equals(topology, client, app_id, oracle)
    assert metric(topology.worker, 'ingest_endpoint_records_total{outcome="applied"}') > 0


@pytest.mark.parametrize("topology", ["sqlite", "postgres"], indirect=True)
def test_workers_joining_and_leaving_mid_stream_lose_nothing(topology: Topology) -> None:
    """A second worker joins the group mid-stream (the partitions are split
    between the two, while batches are being written), then the first stops
    (SIGTERM: it drains, commits and leaves; the second takes every
    partition). Both exit cleanly, and every write is applied."""
    client = topology.edge.client()
    app_id = client.create_app(CreateApplicationRequest={"Name": "rebalance"})["ApplicationResponse"]["Id"]
    writes = stream(SEED + 1)
    warm_at, join_at, leave_at = 10, len(writes) // 3, 2 * len(writes) // 3
    oracle: dict[str, dict[str, Any]] = {}
    first = topology.worker
    applied = 'ingest_endpoint_records_total{outcome="applied"}'
    for n, write in enumerate(writes):
        if n == warm_at:
            eventually(lambda: metric(first, applied), lambda got: got > 0, "the first worker applying", 20)
        if n == join_at:
            topology.start_worker()
        if n == leave_at:
            assert first.stop() == 0, topology.logs()
        request_id = send(client, app_id, write)
        oracle[write.endpoint_id] = expect(oracle.get(write.endpoint_id), write.body, request_id)
    assert_store_equals(topology, client, app_id, oracle)
    assert metric(topology.worker, applied) > 0


# --- consumer lag -------------------------------------------------------------


class GatedStore(SqliteStore):
    """Fault injection: a store whose batch writes each wait for a permit
    from the test, as a slow store would make them wait."""

    permits: asyncio.Semaphore

    async def apply_endpoint_batch(self, records: Sequence[tuple[EndpointRecord, int]]) -> BatchOutcome:
        await self.permits.acquire()
        return await super().apply_endpoint_batch(records)


async def until(check: Callable[[], bool], what: str, within_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # polling a metric


async def test_lag_batch_size_and_write_time_are_reported(tmp_path: Path, broker: str) -> None:
    settings = Settings()
    await clients.ensure_topics(settings, broker)
    codec = Codec()
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for n in range(LAG_RECORDS):  # one endpoint, so one partition
            upsert = EndpointUpsert("app", "ep", str(n), T0_MS + n, "UPDATE_ENDPOINT", address=str(n))
            sent = await producer.send_and_wait(ENDPOINTS_TOPIC, codec.encode_endpoint(upsert), key=b"app:ep")
    finally:
        await producer.stop()
    store = await GatedStore.open(tmp_path / "store.sqlite3")
    store.permits = asyncio.Semaphore(0)
    registry = CollectorRegistry()
    worker = EndpointWorker(
        clients.consumer(settings, broker, group_id="lag"),
        clients.deadletter_producer(settings, broker, idempotence=False),
        store,
        codec=codec,
        metrics=WorkerMetrics(registry),
        max_records=LAG_BATCH,
        drain_timeout_s=5,
    )

    def lag() -> float | None:
        labels = {"topic": ENDPOINTS_TOPIC, "partition": str(sent.partition)}
        return registry.get_sample_value("ingest_consumer_lag_records", labels)

    def applied() -> float:
        return registry.get_sample_value("ingest_endpoint_records_total", {"outcome": "applied"}) or 0.0

    running = asyncio.create_task(worker.run())
    try:
        store.permits.release()  # one batch
        await until(lambda: lag() is not None, "the first lag figure")
        assert 0 < applied() <= LAG_BATCH
        assert lag() == LAG_RECORDS - applied()
        for _ in range(LAG_RECORDS):
            store.permits.release()
        await until(lambda: applied() == LAG_RECORDS, "every record applied")
        await until(lambda: lag() == 0, "no lag")
        batches = registry.get_sample_value("ingest_endpoint_batch_records_count") or 0.0
        assert registry.get_sample_value("ingest_endpoint_batch_records_sum") == LAG_RECORDS
        assert batches >= LAG_RECORDS / LAG_BATCH
        assert registry.get_sample_value("ingest_endpoint_write_seconds_count") == batches
    finally:
        worker.stop()
        for _ in range(LAG_RECORDS):
            store.permits.release()
        await running
        await store.close()


# --- a record that does not decode -----------------------------------------


async def produce_raw(bootstrap: str, key: bytes, values: list[bytes | None]) -> list[tuple[int, int]]:
    """Produce ``values`` under ``key`` as any client could; → (partition, offset) each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        placed = []
        for value in values:
            sent = await producer.send_and_wait(ENDPOINTS_TOPIC, value, key=key)
            placed.append((sent.partition, sent.offset))
        return placed
    finally:
        await producer.stop()


def wait_applied(topology: Topology, client: Any, app_id: str, endpoint_id: str, request_id: str) -> None:
    """Until the write with ``request_id`` is readable; fails at once if the worker dies."""
    worker = topology.worker

    def read() -> dict[str, Any] | None:
        if worker.process.poll() is not None:
            raise AssertionError(f"the worker exited {worker.process.returncode}:\n{worker.log()}")
        return endpoint_or_none(client, app_id, endpoint_id)

    try:
        eventually(
            read,
            lambda ep: ep is not None and ep["RequestId"] == request_id,
            f"the write to {endpoint_id!r} after the poison",
            APPLIED_WITHIN_S,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{topology.logs()}") from exc


def poison_then_write(
    topology: Topology, name: str, values: list[bytes | None]
) -> tuple[bytes, list[tuple[int, int]]]:
    """Produce ``values`` keyed like an endpoint, then UpdateEndpoint that
    endpoint (so the same partition, after them) and wait until it is readable.
    → (key, (partition, offset) of each value)."""
    client = topology.edge.client()
    app_id = client.create_app(CreateApplicationRequest={"Name": name})["ApplicationResponse"]["Id"]
    endpoint_id = f"{name}/ü"
    key = f"{app_id}:{endpoint_id}".encode()
    placed = asyncio.run(produce_raw(topology.bootstrap, key, values))
    assert len({partition for partition, _ in placed}) == 1
    request_id = client.update_endpoint(
        ApplicationId=app_id, EndpointId=endpoint_id, EndpointRequest={"Address": "after the poison"}
    )["MessageBody"]["RequestID"]
    wait_applied(topology, client, app_id, endpoint_id, request_id)

    # The write that got through sits behind the poison in the same partition.
    partition, last = placed[-1]
    after = asyncio.run(
        read_partition(
            topology.bootstrap,
            TopicPartition(ENDPOINTS_TOPIC, partition),
            last + 1,
            lambda records: any(r.key == key for r in records),
            10.0,
        )
    )
    assert any(r.key == key for r in after)
    return key, placed


def assert_dead_lettered(
    topology: Topology,
    key: bytes,
    values: list[bytes | None],
    placed: list[tuple[int, int]],
    reasons: list[str],
) -> None:
    dead = asyncio.run(
        read_partition(
            topology.bootstrap,
            TopicPartition(DEADLETTER_TOPIC, 0),
            0,
            lambda records: len(records) >= len(values),
            10.0,
        )
    )
    assert_dead_letters(
        dead, key=key, values=values, reasons=reasons, origin_topic=ENDPOINTS_TOPIC, placed=placed
    )
    samples = 'ingest_endpoint_records_total{outcome="dead_lettered"}'
    assert metric(topology.worker, samples) == len(values)


def test_undecodable_records_are_dead_lettered_and_the_partition_moves_on(topology: Topology) -> None:
    valid = Codec().encode_endpoint(EndpointUpsert("app", "e", "r", 0, "UPDATE_ENDPOINT", address="never"))
    garbage: dict[bytes, str] = {
        b"\x00\x01 not avro at all": "no C3 01 marker",
        valid[:2] + b"\xde\xad\xbe\xef\xde\xad\xbe\xef" + valid[10:]: "unknown schema fingerprint",
        valid[:-3]: "body does not decode",
    }
    values: list[bytes | None] = list(garbage)
    key, placed = poison_then_write(topology, "garbage", values)
    assert_dead_lettered(topology, key, values, placed, list(garbage.values()))
    assert topology.worker.request("GET", "/healthz")[0] == 200
    assert topology.worker.request("GET", "/readyz")[0] == 200


# Records any producer can write that the worker cannot apply: each goes
# where the undecodable ones go, and the worker keeps running.
UNAPPLIABLE = [
    pytest.param(
        None,
        "",
        id="null-value",
    ),
    pytest.param(
        Codec().encode_endpoint(EndpointUpsert("app", "e", "r", 2**62, "UPDATE_ENDPOINT")),
        "",
        id="received-at-out-of-range",
    ),
]


@pytest.mark.parametrize(("value", "reason"), UNAPPLIABLE)
def test_unappliable_record_is_dead_lettered_and_the_partition_moves_on(
    topology: Topology, value: bytes | None, reason: str
) -> None:
    key, placed = poison_then_write(topology, "unappliable", [value])
    assert_dead_lettered(topology, key, [value], placed, [reason])


# --- `ingest run` stops without losing a write -----------------------------

SINGLES = 60
BATCHES = 2
PER_BATCH = 100


def test_clean_stop_of_ingest_run_applies_every_accepted_write(tmp_path: Path) -> None:
    running = start_pipeline(tmp_path)
    try:
        client = running.client()
        app_id = client.create_app(CreateApplicationRequest={"Name": "clean-stop"})["ApplicationResponse"][
            "Id"
        ]
        # Once this is readable the worker has joined its group and is consuming:
        # the writes below race a running worker, not one still starting.
        client.update_endpoint(ApplicationId=app_id, EndpointId="warm-up", EndpointRequest={})
        eventually(
            lambda: endpoint_or_none(client, app_id, "warm-up"),
            lambda ep: ep is not None,
            "the worker applying a first write",
            APPLIED_WITHIN_S,
        )
        written = ["warm-up"]
        for n in range(SINGLES):
            endpoint_id = f"single-{n}-{uuid.uuid4().hex[:6]}"
            client.update_endpoint(
                ApplicationId=app_id, EndpointId=endpoint_id, EndpointRequest={"Address": str(n)}
            )
            written.append(endpoint_id)
        # The last writes are batches: the most records in flight at SIGTERM.
        for b in range(BATCHES):
            items = [{"Id": f"batch-{b}-{i}", "Address": f"{b}-{i}"} for i in range(PER_BATCH)]
            response = client.update_endpoints_batch(
                ApplicationId=app_id, EndpointBatchRequest={"Item": items}
            )
            assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
            written.extend(item["Id"] for item in items)
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(60) == 0, running.log()
    finally:
        running.stop(signal.SIGKILL)

    with contextlib.closing(sqlite3.connect(running.data_dir / "ingest.sqlite3")) as db:
        rows = db.execute("SELECT endpoint_id, deleted FROM endpoints WHERE app_id = ?", (app_id,)).fetchall()
    assert len(written) == 1 + SINGLES + BATCHES * PER_BATCH
    missing = set(written) - {endpoint_id for endpoint_id, _ in rows}
    assert not missing, f"{len(missing)} accepted writes never reached the store\n{running.log()}"
    assert all(deleted == 0 for _, deleted in rows)
    assert "stopped cleanly" in running.log()
