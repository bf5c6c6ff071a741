"""Fixtures that run the real thing: `ingest run` as a subprocess (embedded
Tansu broker, SQLite, the edge) driven by boto3's pinpoint client."""

from __future__ import annotations

import asyncio
import configparser
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import boto3
import coverage
import hypothesis
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from ingest.kafka.broker import EmbeddedBroker
from ingest.launch import Launched, launch
from tests import aws, postgres

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
T = TypeVar("T")


# The files that take longest, longest first (their tests' seconds summed,
# measured with `pytest -n 4 --durations=0`): scripts/test.sh hands files to
# its workers in collection order (--no-loadscope-reorder), so these start
# first and the short files fill the end, rather than xdist's order (files
# with the most tests first), which left a few long files for the last
# minutes with two of four workers idle.
SLOWEST_FILES = (
    "test_fault_matrix.py",
    "test_deploy.py",
    "test_stream_worker.py",
    "test_worker_faults.py",
    "test_app_lifecycle.py",
    "test_kpi_store.py",
    "test_kpi_worker.py",
    "test_store.py",
    "test_load.py",
    "test_gapless.py",
    "test_console_browser.py",
    "test_embedded_durability.py",
    "test_faults.py",
    "test_codec.py",
    "test_supervisor.py",
    "test_segment_eval.py",
    "test_stream_record.py",
    "test_jobs.py",
    "test_projection.py",
    "test_fuzz.py",
    "test_endpoints_api.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# A property test's first examples run under the coverage tracer, the rest
# with it paused (pause_coverage below):
# under the tracer the in-process Hypothesis tests took 2.2 times the CPU
# (tests/test_stream_record.py: 21.9 → 45.1 CPU-s beside one load test), the
# largest part of what coverage added to a CI run on two cores, while the
# lines they reach are reached by their first examples (the explicit ones
# come first). The `ingest` subprocesses they start stay measured throughout.
TRACED_EXAMPLES = 10


def active_coverage(config: pytest.Config) -> Any | None:
    """pytest-cov's controller when it is tracing this process, else None
    (a run without --cov, or already paused)."""
    controller = getattr(config.pluginmanager.getplugin("_cov"), "cov_controller", None)
    return controller if getattr(controller, "started", False) else None


def pause_coverage(controller: Any) -> Callable[[], None]:
    """Pause pytest-cov's tracer and every Coverage started beneath it; →
    what resumes them. An xdist worker is itself a subprocess, so coverage's
    .pth has started its own Coverage there (patch = subprocess), and pausing
    only pytest-cov's hands tracing back to the one beneath."""
    controller.pause()
    paused: list[coverage.Coverage] = []
    # Bounded: a Coverage whose stop() left it on the stack must not loop here.
    while (current := coverage.Coverage.current()) is not None and len(paused) < 8:
        current.stop()
        paused.append(current)

    def resume() -> None:
        for beneath in reversed(paused):
            beneath.start()
        controller.resume()

    return resume


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    handle = getattr(getattr(item, "obj", None), "hypothesis", None)
    controller = active_coverage(item.config)
    if handle is None or controller is None:
        yield
        return
    inner = handle.inner_test
    calls = 0
    resume: Callable[[], None] | None = None

    def traced_first(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls, resume
        calls += 1
        if calls == TRACED_EXAMPLES + 1:
            resume = pause_coverage(controller)
        return inner(*args, **kwargs)

    handle.inner_test = traced_first
    try:
        yield
    finally:
        handle.inner_test = inner
        if resume is not None:
            resume()


# A module marked `untraced` runs without the coverage tracer, in the test
# process and in the subprocesses it starts: the long load and fault runs
# whose lines the rest of the suite reaches. Measured per file, the three
# marked reach 19 lines no other file does (of about 12,000) and cost 34 CPU-s
# more under the tracer (118 against 84), about a tenth of what coverage adds
# to the suite. A session-scoped server first started inside such a module
# would stay untraced for the rest of the session, so the marked modules use
# none (`pipeline`, `moto_server`, ...).
@pytest.fixture(scope="module", autouse=True)
def _untraced_module(request: pytest.FixtureRequest) -> Iterator[None]:
    controller = active_coverage(request.config)
    if request.node.get_closest_marker("untraced") is None or controller is None:
        yield
        return
    config = os.environ.pop(aws.TRACED_CHILD_ENV, None)
    resume = pause_coverage(controller)
    try:
        yield
    finally:
        resume()
        if config is not None:
            os.environ[aws.TRACED_CHILD_ENV] = config


@dataclass
class Pipeline:
    """One `ingest` process and what tests need to reach and hurt it."""

    launched: Launched
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    issued: tuple[str, str] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.launched.process

    @property
    def port(self) -> int:
        return self.launched.port

    @property
    def url(self) -> str:
        return self.launched.url

    @property
    def log_path(self) -> Path:
        return self.launched.log_path

    def log(self) -> str:
        return self.launched.log()

    @property
    def bootstrap(self) -> str:
        """The Kafka bootstrap the process uses, from its status file."""
        assert self.launched.status.kafka, self.launched.status
        return self.launched.status.kafka

    @property
    def broker_pid(self) -> int:
        """The embedded broker's PID (`ingest run` without a bootstrap)."""
        assert self.launched.status.broker, self.launched.status
        return self.launched.status.broker.pid

    def credentials(self) -> tuple[str, str]:
        """An admin key: the one `ingest run` made on its first start (its
        shared credentials file, profile ``ingest``), else (`ingest edge`) one
        issued with `ingest keys create` on the same store, once the process
        sees it."""
        path = self.data_dir / "credentials"
        if path.exists():
            parser = configparser.ConfigParser()
            parser.read(path)
            profile = parser["ingest"]
            return profile["aws_access_key_id"], profile["aws_secret_access_key"]
        if self.issued is None:
            self.issued = self.create_key("admin")
        return self.issued

    def create_key(self, scope: str, *apps: str, visible: bool = True) -> tuple[str, str]:
        """`ingest keys create` on this process's store and master key; with
        ``visible``, returns once the running process accepts the key."""
        created = run_cli(
            self,
            "keys",
            "create",
            "--name",
            f"test-{scope}",
            "--scope",
            scope,
            *(arg for app in apps for arg in ("--app", app)),
        )
        key = (created["AccessKeyId"], created["SecretAccessKey"])
        if visible:
            eventually(
                lambda: self.request("GET", "/v1/apps", credentials=key)[1].get("x-amzn-errortype"),
                lambda error: error != "UnrecognizedClientException",
                f"the new {scope} key known to the edge",
            )
        return key

    def client(
        self, credentials: tuple[str, str] | None = None, *, region: str = "us-east-1", **config: Any
    ) -> Any:
        """boto3's pinpoint client, signing with ``credentials`` (default: the
        admin key) for ``region`` (which the ARNs of apps it creates name)."""
        access_key_id, secret = credentials or self.credentials()
        return boto3.client(
            "pinpoint",
            endpoint_url=self.url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret,
            config=Config(**({"retries": {"total_max_attempts": 1}, "read_timeout": 30} | config)),
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30.0,
        *,
        sign: bool = True,
        credentials: tuple[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """A raw HTTP request, for what boto3 will not send (broken bodies),
        SigV4-signed by botocore (with the admin key unless ``credentials``
        are given) unless ``sign`` is off."""
        headers = dict(headers or {})
        if sign:
            key = credentials or self.credentials()
            headers = signed_headers(key, method, f"{self.url}{path}", body, headers)
        host, port = (
            self.launched.probes if path.split("?")[0] in PROBE_PATHS else (self.launched.host, self.port)
        )
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        self.launched.wait_ready(timeout_s)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Signal our own process by its PID and wait; resume a frozen broker first."""
        return self.launched.stop(sig, timeout_s)


# Served on each process's probe listener, not its API port.
PROBE_PATHS = frozenset(("/healthz", "/readyz", "/metrics"))


def run_cli(process: Pipeline, *args: str) -> Any:
    """`python -m ingest <args>` with ``process``'s settings and data dir → its
    JSON output (None for a command that prints nothing)."""
    env = clean_env(**({"INGEST_DATA_DIR": str(process.data_dir)} | process.env))
    done = subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return orjson.loads(done.stdout) if done.stdout.strip() else None


def signed_headers(
    credentials: tuple[str, str], method: str, url: str, body: bytes | None, headers: dict[str, str]
) -> dict[str, str]:
    """``headers`` plus botocore's SigV4 signature of the request (service
    mobiletargeting, us-east-1), as an AWS SDK would send them."""
    request = AWSRequest(method=method, url=url, data=body or b"", headers=headers)
    SigV4Auth(Credentials(*credentials), "mobiletargeting", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without INGEST_* settings, plus ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")} | extra


# What every `ingest` a test starts has unless the test says otherwise:
# probes on a free port of each process's own (9090 by default); the app
# quota a test's own to set (the test PostgreSQL keeps its apps from run to
# run, tests/test_app_lifecycle.py); and the embedded broker in memory, which
# is what the API tests need of it. The durable default (s3rver) has its own
# tests (tests/test_embedded_durability.py) and costs each `ingest run` a
# node process and several times the broker CPU. `ingest run` supervises one
# edge process, not one per core: the suite runs several pipelines at once on
# two cores, and tests/test_supervisor.py runs two edges. A worker's consumer
# group waits 3 s rather than 10 for a heartbeat: each worker's first join
# takes half that on the embedded broker, and a SIGKILLed worker started again
# reads its partitions after about 1.5 times it (7 s rather than 18). A
# caught-up worker's fetch waits 200 ms rather than 50: an idle pipeline, what
# a module's shared one mostly is, then keeps 7 % of a core busy rather than
# 11 %, and a record reaches its worker 50 rather than 17 ms after it is sent
# (medians; load/benchmark-notes.md, "What an idle `ingest run` costs").
TEST_DEFAULTS = {
    "INGEST_PROBE_PORT": "0",
    "INGEST_MAX_APPS": "1000000",
    "INGEST_EMBEDDED_STORAGE": "memory",
    "INGEST_EDGE_PROCESSES": "1",
    "INGEST_KAFKA_SESSION_TIMEOUT_MS": "3000",
    "INGEST_WORKER_FETCH_WAIT_MS": "200",
}


def start_ingest(tmp: Path, args: list[str], *, port: int, data_dir: Path, env: dict[str, str]) -> Pipeline:
    """`python -m ingest <args>` with this environment less INGEST_*, plus
    ``env``; returns once its /readyz answers 200 (:func:`ingest.launch.launch`)."""
    log_path = tmp / f"{'-'.join(args[:2])}-{port}.log"
    launched = launch(
        [sys.executable, "-m", "ingest", *args],
        env=clean_env(**(TEST_DEFAULTS | env)),
        log_path=log_path,
        cwd=ROOT,
        timeout_s=START_TIMEOUT_S,
    )
    return Pipeline(launched, data_dir, env)


def start_pipeline(tmp: Path, **env: str) -> Pipeline:
    """`ingest run` on a port of its choosing with its own data dir."""
    tmp.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=tmp))
    args = ["run", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)]
    return start_ingest(data_dir, args, port=0, data_dir=data_dir, env=env)


def eventually(read: Callable[[], T], done: Callable[[T], bool], what: str, within_s: float = 15.0) -> T:
    """Call ``read`` until ``done`` holds for its answer; fail after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within_s:g} s; last read {value!r}")
        time.sleep(0.05)  # between polls, not instead of one


def kpi_events(pipeline: Pipeline, app_id: str) -> float:
    """Events of ``app_id`` the KPI API counts (events-grouped-by-date, a day either side of now)."""
    start_time = datetime.now(UTC) - timedelta(days=1)
    response = pipeline.client().get_application_date_range_kpi(
        ApplicationId=app_id,
        KpiName="events-grouped-by-date",
        StartTime=start_time,
        EndTime=datetime.now(UTC) + timedelta(days=1),
    )
    rows = response["ApplicationDateRangeKpiResponse"]["KpiResult"]["Rows"]
    return sum(float(row["Values"][0]["Value"]) for row in rows)


def endpoint_or_none(client: Any, app_id: str, endpoint_id: str) -> dict[str, Any] | None:
    """GetEndpoint's EndpointResponse, or None for NotFoundException."""
    try:
        return dict(client.get_endpoint(ApplicationId=app_id, EndpointId=endpoint_id)["EndpointResponse"])
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "NotFoundException":
            return None
        raise


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """The shared pipeline for tests that do not hurt it."""
    running = start_pipeline(tmp_path_factory.mktemp("shared"))
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="session")
def pinpoint(pipeline: Pipeline) -> Any:
    return pipeline.client()


@pytest.fixture(scope="session")
def unvalidated(pipeline: Pipeline) -> Any:
    """boto3 with its client-side checks off, to send what only other SDKs send."""
    return pipeline.client(parameter_validation=False)


@pytest.fixture
def app_id(pinpoint: Any) -> str:
    created = pinpoint.create_app(CreateApplicationRequest={"Name": "test"})
    return str(created["ApplicationResponse"]["Id"])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A Tansu broker of our own (memory engine) → its bootstrap address."""
    with asyncio.Runner() as runner:
        embedded = EmbeddedBroker(log_path=tmp_path / "tansu.log")
        runner.run(embedded.start())
        try:
            yield embedded.bootstrap
        finally:
            runner.run(embedded.stop())


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL's URL: ``INGEST_TEST_POSTGRES_URL``, else the
    cluster scripts/postgres.sh finds or starts; under xdist, a database of
    this worker's own (tests/postgres.py)."""
    return postgres.session_url()


# Hypothesis: `ci` (chosen when CI=true) is reproducible, the same examples on
# every run, so a red CI is a red laptop; `dev` is the default. Tests that
# name their own max_examples keep it under either profile.
hypothesis.settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.register_profile(
    "dev", max_examples=50, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
hypothesis.settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "dev")
)


# Event streams' AWS services on loopback (tests/aws.py): one of each per
# session (per xdist worker), each on a free 127.0.0.1 port.
@pytest.fixture(scope="session")
def kinesalite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[aws.Kinesalite]:
    """kinesalite (Kinesis on LevelDB), its data kept across stop() and start()."""
    with aws.Kinesalite(tmp_path_factory.mktemp("kinesalite")) as server:
        yield server


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[aws.MotoServer]:
    """moto's server mode: Firehose into its S3, and STS."""
    with aws.MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[str, str]:
    """botocore with dummy keys (returned) and no way to real AWS
    (:func:`tests.aws.offline_env`); a test sets AWS_ENDPOINT_URL_<SERVICE>."""
    return aws.offline_env(monkeypatch, tmp_path)
