"""The AWS services event streams deliver to, for real, on loopback:
kinesalite (npm, tests/js: Kinesis on LevelDB), moto's server mode (Firehose
delivering into its S3, STS AssumeRole) and a fault-injecting proxy in front
of kinesalite. Every server listens on 127.0.0.1 only, runs in a session of
its own, dies with the test process and is stopped by its PID.

botocore and boto3 talk to them with dummy credentials; :func:`offline_env`
makes sure nothing in a test can reach real AWS.
"""

from __future__ import annotations

import base64
import functools
import http.client
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import boto3
import orjson
import pytest
from botocore.config import Config

from ingest.kafka.broker import die_with_parent, free_port

ROOT = Path(__file__).resolve().parent.parent
KINESALITE_JS = ROOT / "tests" / "js" / "kinesalite.cjs"
HOST = "127.0.0.1"
REGION = "us-east-1"
# What the servers' own clients sign with; moto maps any unknown key to its
# default account, 123456789012.
DUMMY_KEY = ("testing-key-id", "testing-secret")
MOTO_ACCOUNT = "123456789012"
# A cold start of moto (Flask, every service's URL map) on a busy machine.
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.02
# Where AWS_ENDPOINT_URL points when a test names no endpoint: the discard
# port on loopback, which refuses connections, never an AWS host.
NOWHERE = f"http://{HOST}:9"

# (access key ID, secret, session token)
Credentials = tuple[str, str, str | None]


def offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[str, str]:
    """An environment in which botocore finds dummy keys and no AWS: no
    profile, empty config and credentials files, no instance metadata, no
    web identity or container credentials, and every service's endpoint on
    loopback (``AWS_ENDPOINT_URL``, which ``AWS_ENDPOINT_URL_<SERVICE>``
    set by a test overrides). Returns the (access key ID, secret) set."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "aws-empty-config"
    empty.write_text("")
    # Shaped as AWS's are: 20 characters from AKIA, a 40-character secret.
    key_id, secret = "AKIATESTINGKEYID0001", base64.b64encode(os.urandom(30)).decode()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", NOWHERE)
    return key_id, secret


def loopback_env(directory: Path, key_id: str) -> dict[str, str]:
    """What a pipeline a test starts needs to reach AWS on loopback only:
    dummy keys (``key_id``), empty AWS config files (made in ``directory``),
    no instance metadata, every endpoint at :data:`NOWHERE` unless the test
    adds an ``AWS_ENDPOINT_URL_<SERVICE>``."""
    empty = directory / "aws-empty"
    empty.write_text("")
    return {
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": "not-a-secret-of-anyone-0000000000000000",
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": NOWHERE,
    }


# What makes a Python child start under the coverage tracer (coverage's .pth,
# patch = subprocess in pyproject.toml).
TRACED_CHILD_ENV = "COVERAGE_PROCESS_CONFIG"


def untraced_env() -> dict[str, str]:
    """This process's environment without TRACED_CHILD_ENV: for the
    processes that are not the code under test (moto, pip), which ran twice
    as slow under the tracer for nothing measured."""
    return {k: v for k, v in os.environ.items() if k != TRACED_CHILD_ENV}


class Server:
    """A child process serving HTTP on a loopback port of its own: ``start()``
    returns once it answers (polled, bounded), ``stop()`` ends it by its PID
    (SIGTERM, then SIGKILL after a bound). ``start()`` again uses the same
    port. A context manager."""

    def __init__(self, name: str, command: list[str], *, port: int, log_path: Path) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self._command = command
        self._process: subprocess.Popen[bytes] | None = None
        self.started_in_s = 0.0
        """How long the last start() took, until the server answered."""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError(f"{self.name} is running already")
        began = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command,
                env=untraced_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=functools.partial(die_with_parent, os.getpid()),
            )
        try:
            self._wait_answering(began + READY_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - began

    def _wait_answering(self, deadline: float) -> None:
        assert self._process is not None
        while True:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(f"{self.name} exited with code {code}: {self.log()[-2000:]}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=1.0)
                try:
                    conn.request("GET", "/")
                    conn.getresponse().read()
                finally:
                    conn.close()
                return
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} did not answer on {self.url} within {READY_TIMEOUT_S:g} s: "
                        f"{self.log()[-2000:]}"
                    ) from None
                time.sleep(POLL_S)  # between polls of a port not yet serving

    def stop(self) -> None:
        """Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def client(service: str, url: str, *, region: str = REGION, credentials: Credentials | None = None) -> Any:
    """A boto3 client of ``service`` at ``url``: the harness's own, with
    dummy keys unless ``credentials`` are given, and one attempt per call."""
    key_id, secret, token = credentials or (*DUMMY_KEY, None)
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30),
    )


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """A record read back from a Kinesis shard."""

    shard_id: str
    partition_key: str
    data: bytes
    sequence_number: str


class Kinesalite(Server):
    """kinesalite on a free loopback port over LevelDB in ``directory``, so a
    ``stop()`` and ``start()`` keep every stream and record (a test that
    stops the session's one starts it again). Streams become ACTIVE at once
    (``--createStreamMs 0``). Run by tests/js/kinesalite.cjs, which binds
    127.0.0.1 only: kinesalite's own cli.js listens on every interface."""

    def __init__(self, directory: Path) -> None:
        node = shutil.which("node")
        if node is None or not (ROOT / "tests" / "js" / "node_modules" / "kinesalite").is_dir():
            raise RuntimeError("kinesalite is not installed: run scripts/setup.sh")
        port = free_port(HOST)
        data = directory / "leveldb"
        data.mkdir(parents=True, exist_ok=True)
        command = [node, str(KINESALITE_JS), "--host", HOST, "--port", str(port), "--path", str(data)]
        command += ["--createStreamMs", "0", "--deleteStreamMs", "0", "--updateStreamMs", "0"]
        # kinesalite refuses more than 10 shards an "account" by default; a
        # session makes a stream per test.
        command += ["--shardLimit", "100000"]
        super().__init__("kinesalite", command, port=port, log_path=directory / "kinesalite.log")

    def client(self) -> Any:
        return client("kinesis", self.url)

    def create_stream(self, shards: int = 1, name: str | None = None) -> str:
        """A new stream of ``shards`` shards, once ACTIVE → its name."""
        name = name or f"stream-{uuid.uuid4().hex[:12]}"
        kinesis = self.client()
        kinesis.create_stream(StreamName=name, ShardCount=shards)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
            "StreamStatus"
        ] != ("ACTIVE"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream {name} not ACTIVE within {READY_TIMEOUT_S:g} s")
            time.sleep(POLL_S)  # between polls of the stream's status
        return name

    def read_stream(self, name: str) -> list[StreamRecord]:
        """Every record of every shard (TRIM_HORIZON to the end), shard by
        shard, each shard's in sequence order."""
        kinesis = self.client()
        records: list[StreamRecord] = []
        for shard in kinesis.list_shards(StreamName=name)["Shards"]:
            shard_id = shard["ShardId"]
            iterator = kinesis.get_shard_iterator(
                StreamName=name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            # kinesalite reads straight from its store: an empty page is the end.
            for _ in range(10_000):
                page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
                if not page["Records"]:
                    break
                records += [
                    StreamRecord(shard_id, r["PartitionKey"], r["Data"], r["SequenceNumber"])
                    for r in page["Records"]
                ]
                iterator = page["NextShardIterator"]
            else:
                raise RuntimeError(f"shard {shard_id} of {name} did not end")
        return records


class MotoServer(Server):
    """moto's server mode on a free loopback port: Firehose (whose
    PutRecordBatch writes each call's records, concatenated with nothing
    between them, as one object into the destination's S3 bucket, at once),
    S3, and STS (AssumeRole of any role ARN). moto keeps its state in memory
    and files each resource under the account of the caller's key: an
    assumed role's credentials reach the role's account, any other key
    :data:`MOTO_ACCOUNT`."""

    def __init__(self, directory: Path) -> None:
        port = free_port(HOST)
        command = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
        super().__init__("moto_server", command, port=port, log_path=directory / "moto.log")

    def client(self, service: str, *, region: str = REGION, credentials: Credentials | None = None) -> Any:
        return client(service, self.url, region=region, credentials=credentials)

    def assume_role(self, role_arn: str) -> Credentials:
        """Credentials of ``role_arn`` (any role: moto does not check), to set
        up resources in the role's account."""
        issued = self.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="test-setup")["Credentials"]
        return issued["AccessKeyId"], issued["SecretAccessKey"], issued["SessionToken"]

    def assumed_roles(self) -> list[dict[str, Any]]:
        """Every AssumeRole moto answered, from its state dump: role_arn,
        session_name, external_id, access_key_id, secret_access_key,
        session_token, account_id."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            conn.request("GET", "/moto-api/data.json")
            state = orjson.loads(conn.getresponse().read())
        finally:
            conn.close()
        return list(state.get("sts", {}).get("AssumedRole", []))

    def create_delivery_stream(
        self, *, region: str = REGION, credentials: Credentials | None = None, name: str | None = None
    ) -> tuple[str, str]:
        """A DirectPut delivery stream with an ExtendedS3 destination into a
        new bucket, in the account of ``credentials`` → (stream name, bucket)."""
        suffix = uuid.uuid4().hex[:12]
        name = name or f"delivery-{suffix}"
        bucket = f"events-{suffix}"
        self.client("s3", credentials=credentials).create_bucket(Bucket=bucket)
        firehose = self.client("firehose", region=region, credentials=credentials)
        firehose.create_delivery_stream(
            DeliveryStreamName=name,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": f"arn:aws:iam::{MOTO_ACCOUNT}:role/firehose-delivery",
                "BucketARN": f"arn:aws:s3:::{bucket}",
                "Prefix": "events/",
            },
        )
        status = firehose.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]
        assert status["DeliveryStreamStatus"] == "ACTIVE", status
        return name, bucket

    def delivered(self, bucket: str, *, credentials: Credentials | None = None) -> list[bytes]:
        """Every object Firehose wrote into ``bucket``, by key (so by second
        of delivery; calls within one second in no particular order)."""
        s3 = self.client("s3", credentials=credentials)
        bodies: list[bytes] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                bodies.append(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        return bodies


@dataclass(frozen=True, slots=True)
class Call:
    """One request the proxy received."""

    target: str
    """X-Amz-Target, e.g. ``Kinesis_20131202.PutRecords``."""
    access_key_id: str | None
    session_token: str | None
    records: tuple[bytes, ...] = ()
    """PutRecords: each record's data, in order."""


@dataclass
class _Fault:
    status: int
    code: str
    message: str
    remaining: int | None


# (a record's data, how many times the proxy has seen that data, this time
# included) → the ErrorCode to fail it with, or None to forward it.
RecordFault = Callable[[bytes, int], str | None]


def first_attempts(
    data: Collection[bytes], code: str = "ProvisionedThroughputExceededException"
) -> RecordFault:
    """A record fault: fail each record whose data is in ``data`` the first
    time the proxy sees it."""
    chosen = frozenset(data)
    return lambda record, attempt: code if record in chosen and attempt == 1 else None


_PUT_RECORDS = "Kinesis_20131202.PutRecords"
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
_HOP_HEADERS = frozenset(("host", "content-length", "connection", "keep-alive", "transfer-encoding"))


@dataclass
class _State:
    record_fault: RecordFault | None = None
    faults: list[_Fault] = field(default_factory=list)
    stall: threading.Event | None = None
    calls: list[Call] = field(default_factory=list)
    attempts: Counter[bytes] = field(default_factory=Counter)
    forwarded: Counter[bytes] = field(default_factory=Counter)
    injected: list[bytes] = field(default_factory=list)


class FaultyKinesis:
    """A proxy in front of a real Kinesis (kinesalite) that only injects
    faults; what it forwards, kinesalite delivers.

    * ``record_fault`` (e.g. :func:`first_attempts`): the PutRecords records
      it picks are not forwarded and come back failed at their index, with
      its ErrorCode, FailedRecordCount counting them; the rest go to
      kinesalite and its per-record answers are kept.
    * :meth:`fail_calls`: the next ``count`` calls (or every one) answered
      with a whole-call error, e.g. 503 ServiceUnavailableException or 400
      ProvisionedThroughputExceededException, none forwarded.
    * :meth:`stall_calls`: calls held (unanswered) until :meth:`release`.

    It records every call (:attr:`calls`, with the access key ID and token
    it was signed with), how often it saw each record's data
    (:attr:`attempts`), forwarded it (:attr:`forwarded`) or failed it
    (:attr:`injected`). A context manager, on a free loopback port."""

    def __init__(self, upstream: str, *, record_fault: RecordFault | None = None) -> None:
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", upstream)
        if match is None:
            raise ValueError(f"the upstream must be on {HOST}: {upstream}")
        self._upstream_port = int(match[1])
        self._lock = threading.Lock()
        self._state = _State(record_fault=record_fault)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, headers, answer = proxy._handle(dict(self.headers.items()), body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the proxy's record of calls is :attr:`calls`."""

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def __enter__(self) -> FaultyKinesis:
        # A short poll: stop() waits for serve_forever to see it.
        serve = functools.partial(self._server.serve_forever, poll_interval=0.05)
        self._thread = threading.Thread(target=serve, name="faulty-kinesis", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Idempotent; releases any stalled call first."""
        self.release()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._server.shutdown()
            thread.join(STOP_TIMEOUT_S)
            self._server.server_close()

    def fail_calls(
        self, status: int, code: str, *, count: int | None = None, message: str | None = None
    ) -> None:
        """Answer the next ``count`` calls (None: every call) with ``status``
        and the JSON error ``code``."""
        with self._lock:
            self._state.faults.append(_Fault(status, code, message or f"injected {code}", count))

    def fail_records(self, fault: RecordFault) -> None:
        """From now on, fail the PutRecords records ``fault`` picks (see ``record_fault``)."""
        with self._lock:
            self._state.record_fault = fault

    def clear_faults(self) -> None:
        with self._lock:
            self._state.faults.clear()
            self._state.record_fault = None

    def stall_calls(self) -> None:
        """Hold every call from now on until :meth:`release` (each at most
        :data:`READY_TIMEOUT_S`, then forwarded)."""
        with self._lock:
            self._state.stall = threading.Event()

    def release(self) -> None:
        with self._lock:
            stall, self._state.stall = self._state.stall, None
        if stall is not None:
            stall.set()

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._state.calls)

    @property
    def attempts(self) -> Counter[bytes]:
        with self._lock:
            return Counter(self._state.attempts)

    @property
    def forwarded(self) -> Counter[bytes]:
        with self._lock:
            return Counter(self._state.forwarded)

    @property
    def injected(self) -> list[bytes]:
        with self._lock:
            return list(self._state.injected)

    def _handle(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        lower = {name.lower(): value for name, value in headers.items()}
        target = lower.get("x-amz-target", "")
        credential = _CREDENTIAL.search(lower.get("authorization", ""))
        request = orjson.loads(body) if target == _PUT_RECORDS else {}
        datas = tuple(base64.b64decode(r["Data"]) for r in request.get("Records", []))
        call = Call(target, credential[1] if credential else None, lower.get("x-amz-security-token"), datas)
        with self._lock:
            self._state.calls.append(call)
            self._state.attempts.update(datas)
            stall = self._state.stall
            fault = self._take_fault()
        if stall is not None:
            stall.wait(READY_TIMEOUT_S)
        if fault is not None:
            error = orjson.dumps({"__type": fault.code, "message": fault.message})
            return fault.status, {"Content-Type": "application/x-amz-json-1.1"}, error
        if target != _PUT_RECORDS:
            return self._forward(headers, body)
        return self._put_records(headers, request, datas)

    def _take_fault(self) -> _Fault | None:
        """Under the lock: the whole-call fault for this call, if any."""
        faults = self._state.faults
        if not faults:
            return None
        fault = faults[0]
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining == 0:
                faults.pop(0)
        return fault

    def _put_records(
        self, headers: dict[str, str], request: dict[str, Any], datas: tuple[bytes, ...]
    ) -> tuple[int, dict[str, str], bytes]:
        failed: dict[int, str] = {}
        with self._lock:
            fault = self._state.record_fault
            if fault is not None:
                for index, data in enumerate(datas):
                    code = fault(data, self._state.attempts[data])
                    if code is not None:
                        failed[index] = code
                        self._state.injected.append(data)
        kept = [record for index, record in enumerate(request["Records"]) if index not in failed]
        upstream: list[dict[str, Any]] = []
        upstream_failed = 0
        answer_headers = {"Content-Type": "application/x-amz-json-1.1"}
        if kept:
            status, answer_headers, answer = self._forward(headers, orjson.dumps(request | {"Records": kept}))
            if status != 200:
                return status, answer_headers, answer
            parsed = orjson.loads(answer)
            upstream, upstream_failed = parsed["Records"], parsed.get("FailedRecordCount", 0)
            with self._lock:
                self._state.forwarded.update(
                    base64.b64decode(record["Data"])
                    for record, result in zip(kept, upstream, strict=True)
                    if "ErrorCode" not in result
                )
        answers = iter(upstream)
        results = [
            {"ErrorCode": failed[index], "ErrorMessage": f"Rate exceeded for record {index} (injected)"}
            if index in failed
            else next(answers)
            for index in range(len(datas))
        ]
        merged = {"FailedRecordCount": upstream_failed + len(failed), "Records": results}
        return 200, answer_headers, orjson.dumps(merged)

    def _forward(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        """The request, as it came but for ``body``, to kinesalite → its answer.
        (kinesalite checks a signature's form, not its value.)"""
        conn = http.client.HTTPConnection(HOST, self._upstream_port, timeout=30)
        try:
            sent = {name: value for name, value in headers.items() if name.lower() not in _HOP_HEADERS}
            conn.request("POST", "/", body=body, headers=sent)
            response = conn.getresponse()
            answer = response.read()
            kept = {name: value for name, value in response.getheaders() if name.lower() not in _HOP_HEADERS}
            return response.status, kept, answer
        finally:
            conn.close()
