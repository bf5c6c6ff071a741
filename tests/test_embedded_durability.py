"""The embedded mode's durability (README: "What the embedded mode can lose"):
`ingest run` on its default storage, the broker's log on disk through s3rver,
SIGKILLed under load and restarted on the same data dir loses nothing it
answered Accepted and counts nothing twice; the broker's memory does not grow
with the records it holds, and consumed batches are deleted from disk."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingest.kafka.broker import s3rver_command
from load.chaos import free_port
from tests.conftest import Pipeline, eventually, kpi_events, start_ingest
from tests.samples import rss_kb

EVENTS_PER_BATCH = 50
# The KPI worker catches up on a restarted broker within seconds here.
COUNTED_WITHIN_S = 60.0
# Bounds on the resident memory of the broker's two processes over a steady
# run: their size after start-up (tansu ~20 MB, s3rver ~110 MB under load)
# with room for allocator noise, far below what the records sent would take
# in RAM (the memory engine: about 600 bytes of RSS per event held).
TANSU_RSS_LIMIT_KB = 64 * 1024
OBJECT = "._S3rver_object"  # s3rver's suffix of an object's bytes
S3RVER_RSS_LIMIT_KB = 256 * 1024
# The steady run: events held by the broker, and its shortest and longest span.
STEADY_EVENTS = 5000
STEADY_MIN_S = 20.0
STEADY_MAX_S = 90.0


# Every `ingest run` a test here started, so a failing test leaves none running.
STARTED: list[Pipeline] = []


@pytest.fixture(autouse=True)
def _stop_what_was_started() -> Iterator[None]:
    yield
    while STARTED:
        pipeline = STARTED.pop()
        if pipeline.process.poll() is None:
            pipeline.stop(signal.SIGKILL)  # the kernel takes tansu and s3rver with it


def start(data_dir: Path, port: int) -> Pipeline:
    """`ingest run` on its default embedded storage (s3rver) on ``port``."""
    args = ["run", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    started = start_ingest(
        data_dir, args, port=port, data_dir=data_dir, env={"INGEST_EMBEDDED_STORAGE": "s3rver"}
    )
    STARTED.append(started)
    return started


def batch(n: int) -> tuple[str, dict[str, Any]]:
    """One endpoint's PutEvents body of EVENTS_PER_BATCH events dated now."""
    endpoint = f"ep-{n % 20}"
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    events = {uuid.uuid4().hex: {"EventType": "level_up", "Timestamp": now} for _ in range(EVENTS_PER_BATCH)}
    return endpoint, {"BatchItem": {endpoint: {"Endpoint": {}, "Events": events}}}


class Sender:
    """PutEvents in a loop from a thread; remembers every event answered 202."""

    def __init__(self, pipeline: Pipeline, app_id: str) -> None:
        self.client = pipeline.client(read_timeout=5, connect_timeout=2)
        self.pipeline = pipeline
        self.error: BaseException | None = None
        self.app_id = app_id
        self.accepted: set[str] = set()
        self.answered: dict[str, Any] = {}  # the last fully accepted request, for a re-send
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sender")

    def wait_for(self, accepted: int, within_s: float = 60.0) -> None:
        try:
            eventually(
                lambda: len(self.accepted), lambda n: n >= accepted, f"{accepted} events accepted", within_s
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last error {self.error!r}\n{self.pipeline.log()[-6000:]}") from None

    def _run(self) -> None:
        n = 0
        body: dict[str, Any] | None = None
        while not self.stopping.is_set():
            if body is None:
                _, body = batch(n)
                n += 1
            try:
                answer = self.client.put_events(ApplicationId=self.app_id, EventsRequest=body)
            except Exception as exc:
                self.error = exc
                # The server is down or restarting, and the batch may or may not
                # be in Kafka: sent again with the same IDs until answered, as
                # an SDK does, so every event sent ends up answered.
                time.sleep(0.05)
                continue
            results = answer["EventsResponse"]["Results"]
            done = True
            for result in results.values():
                for event_id, status in result["EventsItemResponse"].items():
                    if status["StatusCode"] == 202:
                        self.accepted.add(event_id)
                    else:  # a per-item 500: not acknowledged in time, sent again
                        done = False
            if done:
                self.answered, body = body, None


def sigkill(pipeline: Pipeline) -> None:
    """SIGKILL `ingest run` by its PID; the kernel takes tansu and s3rver with it."""
    os.kill(pipeline.process.pid, signal.SIGKILL)
    pipeline.process.wait(30)


def test_sigkill_under_load_loses_nothing_accepted_and_counts_nothing_twice(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    running = start(data_dir, port)
    app_id = running.client().create_app(CreateApplicationRequest={"Name": "durable"})["ApplicationResponse"][
        "Id"
    ]
    sender = Sender(running, app_id)
    sender.thread.start()
    try:
        for _ in range(2):
            # Killed with thousands of events accepted since the last start,
            # most of them still on their way through Kafka to the workers.
            sender.wait_for(len(sender.accepted) + 2000)
            sigkill(running)
            running = start(data_dir, port)
            sender.pipeline = running
        sender.wait_for(len(sender.accepted) + 500)
    finally:
        sender.stopping.set()
        sender.thread.join(30)
    # An SDK that re-sends a batch it had an answer for: the same IDs, counted once.
    running.client().put_events(ApplicationId=app_id, EventsRequest=sender.answered)
    accepted = len(sender.accepted)
    counted = eventually(
        lambda: kpi_events(running, app_id),
        lambda n: n >= accepted,
        "every accepted event counted",
        COUNTED_WITHIN_S,
    )
    time.sleep(1)  # anything the workers still had would show now
    assert kpi_events(running, app_id) == counted == accepted, (counted, accepted)
    assert running.stop() == 0, running.log()


def s3rver_pid(pipeline: Pipeline) -> int:
    """The node child of `ingest run` (s3rver, beside the broker and the supervised roles)."""
    pid = pipeline.process.pid
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    (node,) = [c for c in children if b"s3rver" in Path(f"/proc/{c}/cmdline").read_bytes()]
    return node


def batch_files(data_dir: Path, topic: str) -> int:
    return sum(
        1 for _ in (data_dir / "kafka").rglob(f"topics/{topic}/partitions/*/records/*.batch._S3rver_object")
    )


def test_broker_memory_and_disk_stay_bounded_over_a_steady_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    running = start(data_dir, free_port())
    node = s3rver_pid(running)
    app_id = running.client().create_app(CreateApplicationRequest={"Name": "steady"})["ApplicationResponse"][
        "Id"
    ]
    sender = Sender(running, app_id)
    samples: list[tuple[int, int]] = []
    sender.thread.start()
    try:
        # The run is as long as it takes to hold STEADY_EVENTS (a volume, not a
        # rate: a loaded CI machine sent 3,900 in 20 s), and at least
        # STEADY_MIN_S so the samples span the broker's retention passes.
        started = time.monotonic()
        while time.monotonic() - started < STEADY_MAX_S:
            samples.append((rss_kb(running.broker_pid), rss_kb(node)))
            if len(sender.accepted) >= STEADY_EVENTS and time.monotonic() - started >= STEADY_MIN_S:
                break
            time.sleep(1)
    finally:
        sender.stopping.set()
        sender.thread.join(30)
    accepted = len(sender.accepted)
    assert accepted >= STEADY_EVENTS, (accepted, repr(sender.error), running.log()[-6000:])
    assert max(tansu for tansu, _ in samples) < TANSU_RSS_LIMIT_KB, samples
    assert max(s3 for _, s3 in samples) < S3RVER_RSS_LIMIT_KB, samples
    eventually(
        lambda: kpi_events(running, app_id), lambda n: n == accepted, "every event counted", COUNTED_WITHIN_S
    )
    # Once both groups have committed past them, the retention pass deletes
    # all but each partition's last batch (8 partitions).
    eventually(
        lambda: batch_files(data_dir, "ingest.events"), lambda n: n <= 8, "consumed batches deleted", 15
    )
    assert running.stop() == 0, running.log()


def test_s3rver_rewrites_an_etag_a_kill_left_stale_before_it_serves(tmp_path: Path) -> None:
    """A kill between an object and its .md5 leaves the old ETag; Tansu's
    conditional PUTs would then be refused for ever (produces stall after a
    restart). The wrapper rewrites it from the bytes at start."""
    obj = tmp_path / "kafka" / "tansu" / "clusters" / "c" / f"watermark.json{OBJECT}"
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b'{"offset": 7}')
    stale = obj.with_name(obj.name + ".md5")
    stale.write_text(hashlib.md5(b'{"offset": 6}').hexdigest())
    process = subprocess.Popen(
        [*s3rver_command(), str(tmp_path / "kafka"), "127.0.0.1", str(free_port()), "tansu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().decode() for _ in range(2)]
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
    assert "1 stale ETag(s) rewritten" in lines[0], lines
    assert "listening" in lines[1], lines
    assert stale.read_text() == hashlib.md5(b'{"offset": 7}').hexdigest()
