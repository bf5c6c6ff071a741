"""Issue 13's fault matrix, each case accounted end to end, on the deployment
topology: a Tansu broker of the test's own, `ingest edge`, `ingest worker
endpoints` and `ingest worker kpis` as separate processes, PostgreSQL as the
store (a database of the case's own on the test server, or a cluster of its
own for the cases that restart it or fill its disk).

Writer threads stream SigV4-signed PutEvents (events and the endpoint they
come from) and UpdateEndpoint calls through boto3, every event and endpoint
ID unique, and retry as SDKs do: events answered 500, and whole requests
answered 429 or 500, timed out or cut off, go again with the same IDs and
content. One fault hits the deployment in the middle of the stream; traffic
goes on a few seconds after it, stops, the workers catch up, and then:

* every event answered Accepted is counted exactly once in
  ``events-grouped-by-event-type`` and marked once in the store, and
  nothing is counted or marked that was never sent;
* every endpoint write answered 202 is in the store as written, and the
  UpdateEndpoint ones read back through GetEndpoint;
* the edge answered only 202, 429 and, where the fault can cause them and
  only while it lasts, 500 (per item or for a whole request): never
  502/503/504 nor anything else (README, "Whole-request errors").

Each test starts its own processes and signals only those, by PID.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg
import orjson
import pytest
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from ingest.kafka.broker import EmbeddedBroker
from load.ledger import kpi_counts
from tests import postgres
from tests.conftest import Pipeline, eventually, start_ingest
from tests.samples import metric
from tests.test_store_conditions import can_mount
from tests.test_worker_faults import start_role

# Long runs whose lines the rest of the suite reaches (tests/conftest.py).
pytestmark = pytest.mark.untraced


# --- the stream ---------------------------------------------------------------

WRITERS = 4
# Calls a second per writer: a steady stream (about 300 events/s in all)
# that leaves the two cores to the five processes under test.
CALLS_PER_S = 10.0
ENDPOINTS_PER_BATCH = 2
EVENTS_PER_ENDPOINT = 5
UPDATE_SHARE = 0.25  # of calls, UpdateEndpoint; the rest PutEvents
EVENT_TYPES = ("fm.open", "fm.tap", "fm.close")
# An SDK's retry: jittered backoff doubling from 100 ms to 1 s, for at most
# this long per call (the longest outage here is a few seconds).
BACKOFF_S = (0.1, 1.0)
RETRY_FOR_S = 30.0
CLIENT_TIMEOUT_S = 10.0

# --- the timeline -------------------------------------------------------------

WARM_S = 3.5  # stream before the fault
AFTER_S = 4.5  # stream after it
# 500s a fault causes may be answered a little after it ends: requests
# waiting on a produce deadline, a pool reconnecting to the store.
RECOVERY_S = 5.0
# A killed worker's partitions come back after its group session runs out
# (aiokafka's 10 s), then the backlog drains.
CATCH_UP_S = 60.0
SETTLE_S = 1.0  # a matching count must hold this long: late duplicates would show
DRAIN_TIMEOUT_S = 5
FREEZE_S = 4.0
PRODUCE_TIMEOUT_S = 1.0  # in the freeze case: 500s within the freeze
OUTAGE_S = 3.0
DISK_MIB = 32
FULL_FOR_S = 3.0  # the disk stays full this long once a worker says so


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Books:
    """What the clients sent and heard; writer threads add under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[tuple[str, str], str] = field(default_factory=dict)  # (endpoint, event ID) → type
    accepted: dict[tuple[str, str], str] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)  # answered 202 → its Address
    updated: set[str] = field(default_factory=set)  # of those, by UpdateEndpoint
    # (monotonic time of the answer, "request" or "item", status or exception name)
    answers: list[tuple[float, str, int | str]] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)

    def heard(self, kind: str, status: int | str) -> None:
        with self.lock:
            self.answers.append((time.monotonic(), kind, status))

    def statuses(self, kind: str) -> Counter[int | str]:
        return Counter(status for _, k, status in self.answers if k == kind)

    def accepted_by_type(self) -> Counter[str]:
        return Counter(self.accepted.values())


class Writer(threading.Thread):
    """One client: a call every 1/CALLS_PER_S s until ``stop``, each retried
    until decided; what it sent and heard goes to ``books``."""

    def __init__(self, name: str, client: Any, app_id: str, books: Books, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.client, self.app_id, self.books, self.stop = client, app_id, books, stop
        self.rng = random.Random(name)
        self.last: int | str | None = None  # what this writer heard last

    def run(self) -> None:
        due = time.monotonic()
        n = 0
        while not self.stop.is_set():
            n += 1
            if self.rng.random() < UPDATE_SHARE:
                self.update_endpoint(f"{self.name}-u{n}")
            else:
                self.put_events(n)
            due = max(due + 1 / CALLS_PER_S, time.monotonic() - 1.0)
            self.stop.wait(max(0.0, due - time.monotonic()))

    def call(self, send: Callable[[], Any]) -> Any | None:
        """``send()`` → its response, or None (recorded) for a refusal or a
        broken call."""
        response = None
        try:
            response = send()
            self.last = response["ResponseMetadata"]["HTTPStatusCode"]
        except ClientError as exc:
            self.last = exc.response["ResponseMetadata"]["HTTPStatusCode"]
        except (BotoConnectionError, HTTPClientError) as exc:
            self.last = type(exc).__name__
        self.books.heard("request", self.last)
        return response

    def retrying(self, attempt: Callable[[], bool], what: str) -> None:
        """``attempt()`` until it says all is decided, with backoff; give up
        after RETRY_FOR_S or on an answer no SDK retries."""
        deadline = time.monotonic() + RETRY_FOR_S
        backoff = BACKOFF_S[0]
        while not attempt():
            if time.monotonic() > deadline or self.last in (400, 403, 404, 413):
                with self.books.lock:
                    self.books.gave_up.append(f"{what}: last heard {self.last!r}")
                return
            time.sleep(backoff * self.rng.uniform(0.5, 1.0))
            backoff = min(2 * backoff, BACKOFF_S[1])

    def update_endpoint(self, endpoint_id: str) -> None:
        address = f"addr-{endpoint_id}"

        def attempt() -> bool:
            response = self.call(
                lambda: self.client.update_endpoint(
                    ApplicationId=self.app_id,
                    EndpointId=endpoint_id,
                    EndpointRequest={"ChannelType": "GCM", "Address": address},
                )
            )
            if response is None:
                return False
            with self.books.lock:
                self.books.endpoints[endpoint_id] = address
                self.books.updated.add(endpoint_id)
            return True

        self.retrying(attempt, f"UpdateEndpoint {endpoint_id}")

    def put_events(self, n: int) -> None:
        profiles: dict[str, dict[str, Any]] = {}
        undecided: dict[str, dict[str, dict[str, Any]]] = {}  # endpoint → event ID → event
        for e in range(ENDPOINTS_PER_BATCH):
            endpoint_id = f"{self.name}-p{n}-{e}"
            profiles[endpoint_id] = {"ChannelType": "GCM", "Address": f"addr-{endpoint_id}"}
            undecided[endpoint_id] = {}
            for _ in range(EVENTS_PER_ENDPOINT):
                event_type = self.rng.choice(EVENT_TYPES)
                event_id = str(uuid.uuid4())
                undecided[endpoint_id][event_id] = {"EventType": event_type, "Timestamp": now_iso()}
                with self.books.lock:
                    self.books.sent[endpoint_id, event_id] = event_type
        endpoints_undecided = set(profiles)

        def attempt() -> bool:
            # Like an SDK: the undecided events again, each with its endpoint.
            batch = {
                endpoint_id: {"Endpoint": profiles[endpoint_id], "Events": events}
                for endpoint_id, events in undecided.items()
                if events or endpoint_id in endpoints_undecided
            }
            response = self.call(
                lambda: self.client.put_events(ApplicationId=self.app_id, EventsRequest={"BatchItem": batch})
            )
            if response is None:
                return False
            for endpoint_id, item in response["EventsResponse"]["Results"].items():
                status = item["EndpointItemResponse"]["StatusCode"]
                self.books.heard("item", status)
                if status == 202 and endpoint_id in endpoints_undecided:
                    endpoints_undecided.discard(endpoint_id)
                    with self.books.lock:
                        self.books.endpoints[endpoint_id] = profiles[endpoint_id]["Address"]
                for event_id, answer in item.get("EventsItemResponse", {}).items():
                    self.books.heard("item", answer["StatusCode"])
                    if answer["StatusCode"] == 500:
                        continue  # sent again
                    event = undecided[endpoint_id].pop(event_id)
                    if answer == {"StatusCode": 202, "Message": "Accepted"}:
                        with self.books.lock:
                            self.books.accepted[endpoint_id, event_id] = event["EventType"]
            return not endpoints_undecided and not any(undecided.values())

        self.retrying(attempt, f"PutEvents {self.name} #{n}")


# --- the deployment -----------------------------------------------------------


@dataclass
class Store:
    """The store's URL, and the cluster when it is the case's own."""

    url: str
    cluster: postgres.Cluster | None = None


@contextlib.contextmanager
def database_of_its_own() -> Iterator[Store]:
    """A fresh database on the test PostgreSQL, dropped afterwards."""
    server = postgres.session_url()
    name = f"fault_matrix_{uuid.uuid4().hex[:8]}"
    asyncio.run(postgres.create_database(server, name))
    try:
        yield Store(postgres.with_database(server, name))
    finally:
        asyncio.run(sql(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def cluster_of_its_own() -> Iterator[Store]:
    with postgres.private_cluster() as cluster:
        yield Store(cluster.url, cluster)


@contextlib.contextmanager
def small_disk() -> Iterator[Store]:
    """A cluster of its own whose store database keeps its tables on a
    DISK_MIB tmpfs (a tablespace; the catalog and the WAL stay on the
    ordinary disk, so a full tablespace fails writes, not the server)."""
    if not can_mount():
        pytest.skip("needs a mount namespace (root) for a small file system")
    with postgres.private_cluster(tmpfs_mib=DISK_MIB) as cluster:
        asyncio.run(sql(cluster.url, f"CREATE TABLESPACE small LOCATION '{cluster.tmpfs}'"))
        asyncio.run(sql(cluster.url, "CREATE DATABASE small_disk"))
        asyncio.run(sql(cluster.url, "ALTER DATABASE small_disk SET default_tablespace = small"))
        yield Store(postgres.with_database(cluster.url, "small_disk"), cluster)


async def sql(url: str, statement: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(statement, *args))
    finally:
        await connection.close()


@dataclass
class Deployment:
    tmp: Path
    env: dict[str, str]
    broker: EmbeddedBroker
    store: Store
    edge: Pipeline
    key: tuple[str, str] = ("", "")
    workers: dict[str, Pipeline] = field(default_factory=dict)
    started: list[Pipeline] = field(default_factory=list)

    def start_worker(self, role: Literal["endpoints", "kpis"]) -> Pipeline:
        worker = start_role(self.tmp, ["worker", role], self.env)
        self.workers[role] = worker
        self.started.append(worker)
        return worker

    def restart_edge(self) -> Pipeline:
        """A new edge on the old one's port, so clients keep their URL."""
        port = self.edge.port
        tmp = self.tmp / f"edge-{len(self.started)}"
        tmp.mkdir()
        env = {**self.env, "INGEST_PORT": str(port)}
        self.edge = start_ingest(tmp, ["edge"], port=port, data_dir=self.tmp, env=env)
        self.started.append(self.edge)
        return self.edge

    def client(self) -> Any:
        return self.edge.client(self.key, read_timeout=CLIENT_TIMEOUT_S, connect_timeout=2)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path}\n{p.log()[-6000:]}" for p in self.started)


@contextlib.contextmanager
def deploy(tmp: Path, store: Store, extra_env: dict[str, str]) -> Iterator[Deployment]:
    with asyncio.Runner() as runner:
        broker = EmbeddedBroker(log_path=tmp / "tansu.log")
        runner.run(broker.start())
        try:
            env = {
                "INGEST_KAFKA_BOOTSTRAP": broker.bootstrap,
                "INGEST_KAFKA_IDEMPOTENCE": "false",
                "INGEST_STORE_URL": store.url,
                "INGEST_DATA_DIR": str(tmp),
                "INGEST_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
                **extra_env,
            }
            # The edge first: it migrates the store the others open.
            edge = start_role(tmp, ["edge"], env)
            running = Deployment(tmp, env, broker, store, edge, started=[edge])
            codes: list[int] = []
            alive: list[Pipeline] = []
            try:
                # The key and both workers side by side: each waits seconds.
                with concurrent.futures.ThreadPoolExecutor(3) as pool:
                    key = pool.submit(edge.credentials)
                    workers = [pool.submit(running.start_worker, role) for role in ("endpoints", "kpis")]
                running.key = key.result()
                for worker in workers:
                    worker.result()
                yield running
            finally:
                if broker.pid is not None:
                    os.kill(broker.pid, signal.SIGCONT)  # in case the test froze it
                # What the test killed is gone; the rest must stop cleanly.
                alive = [p for p in reversed(running.started) if p.process.poll() is None]
                codes = [p.stop() for p in alive]
            assert codes == [0] * len(alive), (codes, running.logs())
        finally:
            runner.run(broker.stop())


# --- the faults ---------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    start: float
    end: float


def freeze_broker(deployment: Deployment, books: Books) -> Window:
    pid = deployment.broker.pid
    assert pid is not None
    start = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(FREEZE_S)
    finally:
        os.kill(pid, signal.SIGCONT)
    window = Window(start, time.monotonic())
    # The fault bit: Kafka's silence became 500s, per item or whole.
    assert books.statuses("item")[500] + books.statuses("request")[500] > 0, books.statuses("request")
    return window


# What a worker's /metrics says once it has written to the store.
WORKING = {
    "endpoints": 'ingest_endpoint_records_total{outcome="applied"}',
    "kpis": 'ingest_kpi_events_total{outcome="aggregated"}',
}


def kill_worker(role: Literal["endpoints", "kpis"]) -> Callable[[Deployment, Books], Window]:
    def inject(deployment: Deployment, books: Books) -> Window:
        worker = deployment.workers[role]
        # Killed while it works through the stream, not while still joining.
        eventually(lambda: metric(worker, WORKING[role]), lambda n: n > 0, f"the {role} worker writing")
        start = time.monotonic()
        assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
        time.sleep(1.0)
        deployment.start_worker(role)
        return Window(start, time.monotonic())

    return inject


def restart_postgres(deployment: Deployment, books: Books) -> Window:
    cluster = deployment.store.cluster
    assert cluster is not None
    start = time.monotonic()
    cluster.stop()
    try:
        time.sleep(OUTAGE_S)
    finally:
        cluster.start()
    window = Window(start, time.monotonic())
    # The fault bit: the workers held their batches and retried.
    retries = (
        metric(deployment.workers["endpoints"], "ingest_endpoint_store_retries_total"),
        metric(deployment.workers["kpis"], "ingest_kpi_store_retries_total"),
    )
    assert sum(retries) > 0, retries
    return window


def sigterm_edge(deployment: Deployment, books: Books) -> Window:
    old = deployment.edge
    start = time.monotonic()
    old.process.send_signal(signal.SIGTERM)
    assert old.process.wait(DRAIN_TIMEOUT_S * 4) == 0, old.log()
    assert "stopped cleanly" in old.log()
    deployment.restart_edge()
    return Window(start, time.monotonic())


def fill_disk(deployment: Deployment, books: Books) -> Window:
    cluster = deployment.store.cluster
    assert cluster is not None
    filler = cluster.tmpfs / "filler"
    # The tmpfs is only in the server's mount namespace.
    enter = ["nsenter", "-t", str(cluster.postmaster_pid), "-m", "--"]
    start = time.monotonic()
    subprocess.run([*enter, "dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True, check=False)
    try:

        def reasons() -> list[bytes]:
            return [w.request("GET", "/readyz", sign=False)[2] for w in deployment.workers.values()]

        eventually(
            reasons,
            lambda found: any(b"the store's disk is full" in body for body in found),
            "a worker naming the full disk in its readiness",
            within_s=20,
        )
        time.sleep(FULL_FOR_S)
    finally:
        subprocess.run([*enter, "rm", "-f", str(filler)], check=True, capture_output=True)
    return Window(start, time.monotonic())


@dataclass(frozen=True)
class Fault:
    inject: Callable[[Deployment, Books], Window]
    during: frozenset[int | str] = frozenset()  # what the edge may answer while it lasts, besides 202 and 429
    store: Callable[[], contextlib.AbstractContextManager[Store]] = database_of_its_own
    env: dict[str, str] = field(default_factory=dict)


FAULTS = {
    "broker-frozen": Fault(
        freeze_broker, frozenset({500}), env={"INGEST_PRODUCE_TIMEOUT_S": str(PRODUCE_TIMEOUT_S)}
    ),
    "endpoint-worker-sigkilled": Fault(kill_worker("endpoints")),
    "kpi-worker-sigkilled": Fault(kill_worker("kpis")),
    # The edge reads apps from the store (cached 5 s): 500 while it is down.
    "postgres-restarted": Fault(restart_postgres, frozenset({500}), cluster_of_its_own),
    # Between the old edge's listener closing and the new one's opening.
    "edge-sigtermed": Fault(sigterm_edge, frozenset({"EndpointConnectionError", "ConnectionClosedError"})),
    "disk-full": Fault(fill_disk, store=small_disk),
}


# --- the accounting -----------------------------------------------------------


def counted(client: Any, app_id: str) -> dict[str, int]:
    now = datetime.datetime.now(datetime.UTC)
    response = client.get_application_date_range_kpi(
        ApplicationId=app_id,
        KpiName="events-grouped-by-event-type",
        StartTime=now - datetime.timedelta(days=1),
        EndTime=now + datetime.timedelta(days=1),
    )
    return kpi_counts(response["ApplicationDateRangeKpiResponse"])


def stored_endpoints(deployment: Deployment, app_id: str) -> dict[str, str | None]:
    rows = asyncio.run(
        sql(
            deployment.store.url,
            "SELECT endpoint_id, document FROM endpoints WHERE app_id = $1 AND NOT deleted",
            app_id,
        )
    )
    return {row["endpoint_id"]: orjson.loads(row["document"]).get("Address") for row in rows}


def assert_accounted(deployment: Deployment, app_id: str, books: Books) -> None:
    """Once the workers have caught up: each accepted event counted and marked
    once, nothing else; each accepted endpoint write stored as written."""
    client = deployment.client()
    expected = dict(books.accepted_by_type())
    found = eventually(
        lambda: counted(client, app_id), lambda got: got == expected, "the KPI counts", CATCH_UP_S
    )
    time.sleep(SETTLE_S)
    assert counted(client, app_id) == found, "counted again after matching: a late duplicate"
    rows = asyncio.run(
        sql(deployment.store.url, "SELECT endpoint_id, event_id FROM event_marks WHERE app_id = $1", app_id)
    )
    marks = [(row["endpoint_id"], row["event_id"]) for row in rows]
    assert len(marks) == len(set(marks)) == sum(found.values())
    assert set(books.accepted) <= set(marks) <= set(books.sent)

    want = dict(books.endpoints)
    eventually(
        lambda: stored_endpoints(deployment, app_id),
        lambda got: all(got.get(endpoint_id) == address for endpoint_id, address in want.items()),
        "every accepted endpoint write in the store",
        CATCH_UP_S,
    )
    for endpoint_id in sorted(books.updated):
        got = client.get_endpoint(ApplicationId=app_id, EndpointId=endpoint_id)["EndpointResponse"]
        assert got["Address"] == want[endpoint_id], endpoint_id


def assert_only_promised_statuses(books: Books, window: Window, during: frozenset[int | str]) -> None:
    """202 and 429 (what a busy or draining edge answers) at any time; what
    the fault may cause (``during``) only while it lasts; nothing else."""
    unpromised = Counter(
        (kind, status, round(at - window.end, 1))
        for at, kind, status in books.answers
        if status not in (202, 429)
        and not (status in during and window.start <= at <= window.end + RECOVERY_S)
    )
    assert not unpromised, f"(kind, status, s after the fault's end): {unpromised.most_common(10)}"


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
def test_fault_loses_and_duplicates_nothing(tmp_path: Path, fault: Fault) -> None:
    with fault.store() as store, deploy(tmp_path, store, fault.env) as deployment:
        app_id = deployment.client().create_app(CreateApplicationRequest={"Name": "fault-matrix"})[
            "ApplicationResponse"
        ]["Id"]
        books = Books()
        stop = threading.Event()
        writers = [Writer(f"w{n}", deployment.client(), app_id, books, stop) for n in range(WRITERS)]
        for writer in writers:
            writer.start()
        try:
            time.sleep(WARM_S)
            assert books.accepted, (books.statuses("request"), deployment.logs())
            window = fault.inject(deployment, books)
            time.sleep(AFTER_S)
        finally:
            stop.set()
            for writer in writers:
                writer.join(RETRY_FOR_S + CLIENT_TIMEOUT_S)
        assert not any(writer.is_alive() for writer in writers)
        try:
            assert not books.gave_up, books.gave_up[:5]
            assert_accounted(deployment, app_id, books)
            assert_only_promised_statuses(books, window, fault.during)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{deployment.logs()}") from exc
