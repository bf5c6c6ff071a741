"""PostgreSQL stopped for a few seconds under a stream of endpoint writes:
the worker holds its batch, readiness goes false, then it catches up with
nothing lost. Stops and restarts the test cluster of scripts/postgres.sh."""

from __future__ import annotations

import glob
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Pipeline, start_pipeline

PG_DIR = "/tmp/ingest-pg"
PG_PORT = 55432
OUTAGE_S = 4.0


def pg_ctl(*args: str) -> None:
    binary = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]
    command = [binary, "-D", f"{PG_DIR}/data", *args]
    if os.getuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


def start_postgres() -> None:
    pg_ctl(
        "-l", f"{PG_DIR}/log", "-w", "-o", f"-p {PG_PORT} -k {PG_DIR} -c listen_addresses=127.0.0.1", "start"
    )


@pytest.fixture
def on_postgres(tmp_path: Path) -> Any:
    url = os.environ.get("INGEST_TEST_POSTGRES_URL")
    if not url:
        pytest.fail("INGEST_TEST_POSTGRES_URL is not set: run the tests with scripts/test.sh")
    # The app lookup is cached for the whole outage, so the edge keeps
    # accepting writes into Kafka while the store is down.
    running = start_pipeline(tmp_path, INGEST_STORE_URL=url, INGEST_APP_CACHE_TTL_S="120")
    yield running
    running.stop()


def readyz(pipeline: Pipeline) -> int:
    return pipeline.request("GET", "/readyz", timeout_s=5)[0]


def test_postgres_outage_holds_then_catches_up(on_postgres: Pipeline) -> None:
    client = on_postgres.client()
    app_id = client.create_app(CreateApplicationRequest={"Name": "pg-outage"})["ApplicationResponse"]["Id"]
    client.get_app(ApplicationId=app_id)  # cached by the edge from here on
    written: dict[str, str] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def stream() -> None:
        n = 0
        while not stop.is_set():
            endpoint_id = f"device-{n % 40}"
            try:
                client.update_endpoint(
                    ApplicationId=app_id, EndpointId=endpoint_id, EndpointRequest={"Address": f"v{n}"}
                )
            except BaseException as exc:
                errors.append(exc)
                return
            written[endpoint_id] = f"v{n}"
            n += 1

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        time.sleep(1.0)  # a stream is flowing before the outage
        pg_ctl("-m", "fast", "-w", "stop")
        try:
            deadline = time.monotonic() + OUTAGE_S
            saw_not_ready = False
            while time.monotonic() < deadline:
                saw_not_ready = saw_not_ready or readyz(on_postgres) == 503
                time.sleep(0.1)
            assert saw_not_ready, "readiness never went false while PostgreSQL was down"
        finally:
            start_postgres()
        time.sleep(1.0)  # the stream goes on after the outage
    finally:
        stop.set()
        writer.join(30)
    assert not errors, errors
    assert len(written) == 40

    deadline = time.monotonic() + 60
    while readyz(on_postgres) != 200:
        assert time.monotonic() < deadline, "never ready again after PostgreSQL came back"
        time.sleep(0.1)
    pending = dict(written)
    while pending and time.monotonic() < deadline:
        for endpoint_id, address in list(pending.items()):
            try:
                got = client.get_endpoint(ApplicationId=app_id, EndpointId=endpoint_id)["EndpointResponse"]
            except client.exceptions.NotFoundException:
                continue
            if got.get("Address") == address:
                del pending[endpoint_id]
        time.sleep(0.1)
    assert not pending, f"{len(pending)} endpoints never caught up: {sorted(pending)[:5]}"
    metrics = on_postgres.request("GET", "/metrics")[2].decode()
    retries = [
        line for line in metrics.splitlines() if line.startswith("ingest_endpoint_store_retries_total ")
    ]
    assert retries and float(retries[0].split()[1]) >= 1
