"""`ingest run` supervising its roles as processes (ingest/supervise.py):
a child SIGKILLed is restarted and readiness recovers; SIGTERM drains every
role in order and loses nothing (counted through the KPI API after a
restart, with the broker's log gone); SIGKILL of the parent leaves no
process behind; /metrics covers every process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from ingest.api.probes import http_get
from ingest.errors import SettingsError, SupervisorError
from ingest.launch import Status
from ingest.logs import process_format
from ingest.metrics import SupervisorMetrics
from ingest.settings import Settings
from ingest.supervise import Supervised, Supervisor, _labelled, _Merged, children_of
from load import cpu
from tests.conftest import ROOT, Pipeline, clean_env, eventually, kpi_events, start_ingest, start_pipeline
from tests.samples import samples_named

WORKERS = ("worker-endpoints", "worker-kpis", "worker-streams", "worker-jobs")
# INGEST_EDGE_PROCESSES unset: an edge per CPU, on the embedded broker too.
ROLES = (*(f"edge-{n}" for n in range(len(os.sched_getaffinity(0)))), *WORKERS)
TWO_EDGES = ("edge-0", "edge-1", *WORKERS)
# A restart: the backoff's first step (0.5 s) plus an interpreter's start-up,
# on a CI machine running other tests beside this one.
RESTART_WITHIN_S = 60.0


def status_of(pipeline: Pipeline) -> Status:
    return pipeline.launched.reread_status()


def events_body(endpoint_id: str, count: int) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    events = {str(uuid.uuid4()): {"EventType": "supervised", "Timestamp": now} for _ in range(count)}
    return {"BatchItem": {endpoint_id: {"Endpoint": {}, "Events": events}}}


def put_accepted(client: Any, app_id: str, count: int = 20) -> int:
    """One PutEvents of ``count`` events from a fresh endpoint; → how many were Accepted."""
    endpoint_id = str(uuid.uuid4())
    answer = client.put_events(ApplicationId=app_id, EventsRequest=events_body(endpoint_id, count))
    items = answer["EventsResponse"]["Results"][endpoint_id]["EventsItemResponse"]
    return sum(1 for item in items.values() if item["StatusCode"] == 202)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] not in ("Z", "X")


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Any:
    running = start_pipeline(tmp_path_factory.mktemp("supervised"), INGEST_EDGE_PROCESSES="")
    yield running
    assert running.stop() == 0, running.log()[-5000:]


@pytest.fixture(scope="module")
def app_id(supervised: Pipeline) -> str:
    created = supervised.client().create_app(CreateApplicationRequest={"Name": "supervised"})
    return str(created["ApplicationResponse"]["Id"])


def test_every_role_is_a_process_of_its_own(supervised: Pipeline, app_id: str) -> None:
    status = status_of(supervised)
    assert tuple(child.name for child in status.children) == ROLES
    pids = {child.pid for child in status.children}
    assert len(pids) == len(ROLES) and supervised.process.pid not in pids
    assert status.broker is not None and status.broker.pid not in pids
    assert put_accepted(supervised.client(), app_id) == 20


def test_two_edges_share_the_port_with_a_kafka_of_its_own(broker: str, tmp_path: Path) -> None:
    """With INGEST_KAFKA_BOOTSTRAP, INGEST_EDGE_PROCESSES edges; fresh
    connections, each its own PutEvents, are spread over both by the kernel
    (all 40 on one: a chance of 2**-39), and the KPI worker counts all 40."""
    running = start_pipeline(
        tmp_path, INGEST_KAFKA_BOOTSTRAP=broker, INGEST_KAFKA_IDEMPOTENCE="false", INGEST_EDGE_PROCESSES="2"
    )
    try:
        status = status_of(running)
        assert tuple(child.name for child in status.children) == TWO_EDGES
        assert status.broker is None and status.kafka == broker
        client = running.client()
        app_id = str(client.create_app(CreateApplicationRequest={"Name": "two"})["ApplicationResponse"]["Id"])
        for _ in range(40):
            assert put_accepted(running.client(), app_id, 1) == 1
        by_edge: dict[str, float] = {}
        for sample in samples_named(running, "ingest_"):
            if sample.name == "ingest_http_requests_total" and sample.labels.get("route") == "PutEvents":
                process = sample.labels["process"]
                by_edge[process] = by_edge.get(process, 0.0) + sample.value
        assert set(by_edge) == {"edge-0", "edge-1"} and all(v >= 1 for v in by_edge.values()), by_edge
        eventually(lambda: kpi_events(running, app_id), lambda n: n == 40, "every event counted")
    finally:
        assert running.stop() == 0, running.log()[-5000:]


def test_metrics_cover_every_process_labelled_by_it(supervised: Pipeline) -> None:
    seen = {sample.labels.get("process") for sample in samples_named(supervised, "ingest_")}
    assert {"run", *ROLES} <= seen, seen
    ready = {
        s.labels["process"]: s.value
        for s in samples_named(supervised, "ingest_")
        if s.name == "ingest_process_ready"
    }
    assert ready == dict.fromkeys(ROLES, 1.0), ready


@pytest.mark.parametrize("role", ["edge-0", "worker-kpis"])
def test_a_child_sigkilled_is_restarted_and_readiness_recovers(
    supervised: Pipeline, app_id: str, role: str
) -> None:
    client = supervised.client()
    before = kpi_events(supervised, app_id)
    victim = status_of(supervised).child(role).pid
    os.kill(victim, signal.SIGKILL)
    eventually(
        lambda: status_of(supervised).child(role).pid,
        lambda pid: pid != victim,
        f"{role} started again",
        within_s=RESTART_WITHIN_S,
    )
    eventually(supervised.launched.ready, bool, "/readyz of ingest run 200 again", within_s=RESTART_WITHIN_S)
    assert not alive(victim)
    accepted = sum(put_accepted(client, app_id) for _ in range(5))
    assert accepted == 100
    eventually(
        lambda: kpi_events(supervised, app_id),
        lambda total: total >= before + accepted,
        "events accepted after the restart counted",
        within_s=RESTART_WITHIN_S,
    )
    restarts = [
        s.value
        for s in samples_named(supervised, "ingest_")
        if s.name == "ingest_process_restarts_total" and s.labels.get("process") == role
    ]
    assert restarts == [1.0], restarts
    assert f"{role} (pid {victim}) exited on SIGKILL" in supervised.log()


def test_sigterm_drains_every_role_in_order_and_loses_nothing(tmp_path: Path) -> None:
    """Events sent right up to the SIGTERM, through two edges appending to
    the embedded broker's partition at once: every Accepted one is counted.
    The broker keeps its log in memory, so whatever the workers had not
    applied before the broker stopped would be gone after the restart."""
    running = start_pipeline(tmp_path, INGEST_EDGE_PROCESSES="2")
    client = running.client()
    app_id = str(client.create_app(CreateApplicationRequest={"Name": "drained"})["ApplicationResponse"]["Id"])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        accepted = sum(pool.map(lambda _: put_accepted(running.client(), app_id, 50), range(40)))
    assert accepted == 2000
    assert running.stop() == 0, running.log()[-5000:]
    log = running.log()
    order = [
        "draining: the edges first",
        "edge-0 (pid",
        "[worker-kpis] ingest.process: SIGTERM received",
        "KPI worker drained to the end of its partitions",
        "worker-kpis (pid",
        "embedded Kafka broker stopped",
        "ingest.supervise: stopped cleanly",
    ]
    positions = [log.find(line, log.find("draining: the edges first")) for line in order]
    assert -1 not in positions and positions == sorted(positions), list(zip(order, positions, strict=True))
    edges_stopped = log.find("edge-0 (pid", positions[0])
    assert edges_stopped < log.find("[worker-endpoints] ingest.process: SIGTERM received"), log[-5000:]
    again = start_ingest(
        tmp_path,
        ["run", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(running.data_dir)],
        port=0,
        data_dir=running.data_dir,
        env={},
    )
    try:
        assert kpi_events(again, app_id) == accepted
    finally:
        assert again.stop() == 0, again.log()[-5000:]


def test_sigkill_of_the_parent_leaves_no_process_behind(tmp_path: Path) -> None:
    """With the durable default (s3rver, a node process) as well as the
    broker, both edges and both workers."""
    running = start_pipeline(tmp_path, INGEST_EMBEDDED_STORAGE="s3rver")
    tree = set(cpu.sample(running.process.pid).processes) - {running.process.pid}
    status = status_of(running)
    assert {child.pid for child in status.children} <= tree and status.broker is not None
    assert status.broker.pid in tree and len(tree) >= 6, tree  # 4 children, tansu, s3rver
    running.stop(signal.SIGKILL)
    eventually(lambda: {pid for pid in tree if alive(pid)}, lambda left: not left, "every child gone")


async def test_a_child_that_exits_before_it_serves_fails_the_start_naming_it(tmp_path: Path) -> None:
    """During start-up a child's exit is a failure of `ingest run` (a bad
    configuration must not restart forever), and the children that did
    start are stopped."""
    sleeper = Supervised(
        "worker-kpis", [sys.executable, "-c", "import time; time.sleep(600)"], {}, tmp_path / "a"
    )
    failing = Supervised("edge-0", [sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path / "b")
    supervisor = Supervisor(
        [sleeper, failing],
        drain_timeout_s=1.0,
        metrics=SupervisorMetrics(CollectorRegistry()),
        changed=lambda: None,
    )
    with pytest.raises(SupervisorError, match="edge-0 exited 3 before it served"):
        await supervisor.__aenter__()
    assert not sleeper.running and not alive(sleeper.pid)


def test_edge_processes_setting() -> None:
    assert Settings(kafka_bootstrap="kafka:9092", edge_processes=3).edge_process_count == 3
    assert Settings(kafka_bootstrap="kafka:9092").edge_process_count == len(os.sched_getaffinity(0))
    assert Settings().edge_process_count == len(os.sched_getaffinity(0))
    assert Settings(edge_processes=0).edge_process_count == 0
    with pytest.raises(SettingsError, match="INGEST_EDGE_PROCESSES"):
        Settings.from_env({"INGEST_EDGE_PROCESSES": "-1"})


def test_a_process_name_must_be_a_role_name() -> None:
    assert "[edge-0]" in process_format("edge-0")
    with pytest.raises(ValueError, match="process name"):
        process_format("edge\n0")


def test_merged_metrics_keep_one_family_per_name_and_a_process_label_each() -> None:
    def family(value: float, **labels: str) -> Metric:
        metric = Metric("ingest_x", "doc", "gauge")
        metric.add_sample("ingest_x", labels, value)
        return metric

    merged = _Merged(
        [
            *_labelled([family(1.0)], "edge-0"),
            *_labelled([family(2.0)], "edge-1"),
            *_labelled([family(3.0, process="edge-1")], "run"),
        ]
    )
    (only,) = merged.collect()
    assert [(s.labels["process"], s.value) for s in only.samples] == [
        ("edge-0", 1.0),
        ("edge-1", 2.0),
        ("edge-1", 3.0),
    ]


async def test_a_probe_answer_that_is_not_http_is_an_error_not_a_crash() -> None:
    """Whatever listens on a child's probe port, the poll gets a ValueError
    (not ready), never another exception that would end the poll task."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"garbage\r\n\r\n{}")
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ValueError, match="not an HTTP answer"):
            await http_get(("127.0.0.1", port), "/readyz", max_bytes=1024, timeout_s=2.0)


def test_a_process_name_on_the_command_line_must_be_a_role_name() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ingest", "edge", "--process-name", "edge 0\x1b[2J"],
        env=clean_env(),
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2 and b"--process-name" in done.stderr


def test_the_jobs_worker_is_a_child_of_its_own_with_any_broker(tmp_path: Path) -> None:
    """The embedded broker runs the roles a Kafka cluster does: its gaps are
    waited out by the consumers (ingest.kafka.gapless), so the jobs' producer
    beside the edges' is safe."""
    settings = Settings(data_dir=tmp_path, edge_processes=2)
    children = children_of(settings, bootstrap="127.0.0.1:9092", idempotence=False, port=1)
    commands = {child.name: child.argv[child.argv.index("-m") + 2 :] for child in children}
    assert tuple(commands) == TWO_EDGES
    assert commands["worker-jobs"][:2] == ["worker", "jobs"]
    assert all(commands[edge][:2] == ["edge", "--reuse-port"] for edge in ("edge-0", "edge-1"))
