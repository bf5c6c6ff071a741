"""Faults on the real broker: frozen with SIGSTOP, overload, and drains.

Each test runs its own `ingest run` (they hurt it) and signals only processes
it started, by PID.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from tests.conftest import Pipeline, eventually, start_pipeline
from tests.samples import metric
from tests.test_api import ACCEPTED, event, put

PRODUCE_TIMEOUT_S = 1.0


@pytest.fixture
def fragile(tmp_path: Path) -> Iterator[Pipeline]:
    running = start_pipeline(tmp_path, INGEST_PRODUCE_TIMEOUT_S=str(PRODUCE_TIMEOUT_S))
    yield running
    running.stop(signal.SIGKILL)


def batch(prefix: str, endpoints: int = 2, events: int = 5) -> dict[str, Any]:
    return {
        f"{prefix}-ep{e}": {
            "Endpoint": {"Address": "a"},
            "Events": {f"{prefix}-{e}-{i}": event() for i in range(events)},
        }
        for e in range(endpoints)
    }


def statuses(results: dict[str, Any]) -> set[int]:
    found = set()
    for item in results.values():
        found.add(item["EndpointItemResponse"]["StatusCode"])
        found.update(s["StatusCode"] for s in item["EventsItemResponse"].values())
    return found


def test_frozen_broker_gives_per_item_500_within_deadline(fragile: Pipeline) -> None:
    # A client that gives up 2 s past the produce deadline still hears the 500s.
    client = fragile.client(read_timeout=PRODUCE_TIMEOUT_S + 2.0)
    app_id = client.create_app(CreateApplicationRequest={"Name": "frozen"})["ApplicationResponse"]["Id"]
    assert statuses(put(client, app_id, batch("warm"))) == {202}

    os.kill(fragile.broker_pid, signal.SIGSTOP)
    try:
        results = put(client, app_id, batch("frozen"))
        assert statuses(results) == {500}
        item = next(iter(results.values()))
        assert "retry" in item["EndpointItemResponse"]["Message"]
        assert len(item["EventsItemResponse"]) == 5

        # A single-item write answers a whole-request 500, never 502/503/504.
        with pytest.raises(ClientError) as exc:
            client.update_endpoint(ApplicationId=app_id, EndpointId="e", EndpointRequest={})
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert exc.value.response["Error"]["Code"] == "InternalServerErrorException"

        status, _, body = fragile.request("GET", "/readyz")
        assert status == 503 and b"producer" in body
    finally:
        os.kill(fragile.broker_pid, signal.SIGCONT)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if statuses(put(client, app_id, batch("after"))) == {202}:
            break
    else:
        pytest.fail("never accepted again after the broker resumed")
    fragile.wait_ready(10)


def test_overload_answers_429_quickly(tmp_path: Path) -> None:
    running = start_pipeline(
        tmp_path,
        INGEST_PRODUCE_TIMEOUT_S="3",
        INGEST_MAX_IN_FLIGHT_REQUESTS="2",
        INGEST_MAX_BODY_BYTES="65536",
        INGEST_PRODUCER_BUFFER_BYTES="131072",
    )
    try:
        client = running.client()
        app_id = client.create_app(CreateApplicationRequest={"Name": "overload"})["ApplicationResponse"]["Id"]
        os.kill(running.broker_pid, signal.SIGSTOP)
        # Two requests hold both in-flight slots while the broker is frozen.
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(put, client, app_id, batch(f"held{n}", 1, 1)) for n in range(2)]
            deadline = time.monotonic() + 5
            while metric(running, "ingest_http_in_flight_requests") != 2:
                assert time.monotonic() < deadline, "requests never got in flight"
            # Refused before anything in flight is answered: a client that
            # waits less than the produce deadline (3 s) hears the 429.
            impatient = running.client(read_timeout=2.0)
            with pytest.raises(ClientError) as exc:
                put(impatient, app_id, batch("third", 1, 1))
            assert exc.value.response["Error"]["Code"] == "TooManyRequestsException"
            assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
            for future in held:
                assert statuses(future.result()) == {500}

        # The producer buffer is bounded too: records waiting for an ack fill
        # it, and the next request is refused whole rather than queued.
        padding = {f"a{i}": "x" * 190 for i in range(39)}
        refused = 0
        for n in range(12):
            try:
                put(
                    client,
                    app_id,
                    {
                        f"b{n}": {
                            "Endpoint": {},
                            "Events": {
                                f"b{n}-{i}": event(Attributes=padding, Metrics=None) for i in range(4)
                            },
                        }
                    },
                )
            except ClientError as exc_info:
                assert exc_info.response["Error"]["Code"] == "TooManyRequestsException"
                refused += 1
        assert refused > 0
        assert metric(running, 'ingest_overload_rejections_total{limit="buffer"}') >= 1
        assert metric(running, 'ingest_overload_rejections_total{limit="in_flight"}') == 1
    finally:
        running.stop(signal.SIGKILL)


def test_sigterm_lets_in_flight_requests_finish(fragile: Pipeline) -> None:
    client = fragile.client()
    app_id = client.create_app(CreateApplicationRequest={"Name": "drain"})["ApplicationResponse"]["Id"]
    os.kill(fragile.broker_pid, signal.SIGSTOP)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(put, client, app_id, batch(f"d{n}", 1, 3)) for n in range(4)]
        deadline = time.monotonic() + 5
        while metric(fragile, "ingest_http_in_flight_requests") != 4:
            assert time.monotonic() < deadline
        fragile.process.send_signal(signal.SIGTERM)
        # The signal lands while the requests are held.
        eventually(fragile.log, lambda log: "SIGTERM received" in log, "SIGTERM handled", within_s=10)
        os.kill(fragile.broker_pid, signal.SIGCONT)
        results = [f.result(timeout=30) for f in futures]
    # Resumed before the produce deadline: every in-flight event was acked.
    for result in results:
        for item in result.values():
            assert item["EndpointItemResponse"] == ACCEPTED
            assert all(s == ACCEPTED for s in item["EventsItemResponse"].values())
    assert fragile.process.wait(30) == 0
    log = fragile.log()
    assert (
        log.index("SIGTERM received")
        < log.index("embedded Kafka broker stopped")
        < log.rindex("stopped cleanly")  # `ingest run`'s own, after its children's
    )


def test_sigterm_under_a_stream_gives_only_real_statuses(tmp_path: Path) -> None:
    running = start_pipeline(tmp_path)
    client = running.client()
    app_id = client.create_app(CreateApplicationRequest={"Name": "stream"})["ApplicationResponse"]["Id"]
    answered: list[set[int]] = []
    refused: list[str] = []
    stop = threading.Event()

    def stream(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                answered.append(statuses(put(client, app_id, batch(f"s{worker}-{n}", 2, 10))))
            except ClientError as exc:
                answered.append({exc.response["ResponseMetadata"]["HTTPStatusCode"]})
            except (BotoConnectionError, HTTPClientError) as exc:
                # Refused (listener closed) or an idle keep-alive connection
                # closed as the request went out: the server never started on
                # it (the server closes only idle connections on shutdown).
                refused.append(type(exc).__name__)
                return

    threads = [threading.Thread(target=stream, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(answered) < 30:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(30) == 0
    stop.set()
    for t in threads:
        t.join(30)
    seen = set().union(*answered)
    assert seen <= {202, 429}, seen
    assert 202 in seen


def test_sigkill_of_ingest_run_takes_the_embedded_broker_with_it(tmp_path: Path) -> None:
    running = start_pipeline(tmp_path)
    broker_pid = running.broker_pid
    running.process.kill()
    running.process.wait(30)
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(broker_pid, 0)
        except ProcessLookupError:
            break  # gone: no orphan left holding its memory
        state = Path(f"/proc/{broker_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break  # dead, waiting to be reaped by init
        assert time.monotonic() < deadline, "the embedded broker outlived a SIGKILLed ingest run"
        time.sleep(0.05)
