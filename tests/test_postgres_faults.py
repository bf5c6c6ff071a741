"""PostgreSQL stopped for a few seconds under a stream of endpoint writes:
the worker holds its batch, readiness goes false, then it catches up with
nothing lost. Stops and restarts a cluster of its own (tests/postgres.py), so
tests running beside it (pytest-xdist) keep theirs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Pipeline, endpoint_or_none, eventually, start_pipeline
from tests.postgres import Cluster, private_cluster
from tests.samples import metric

OUTAGE_S = 4.0
# Generous for a loaded machine: 40 writes take well under a second here,
# and the worker joins its consumer group in a few.
STREAM_WITHIN_S = 30.0


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with private_cluster() as running:
        yield running


@pytest.fixture
def on_postgres(tmp_path: Path, cluster: Cluster) -> Any:
    # The app lookup is cached for the whole outage, so the edge keeps
    # accepting writes into Kafka while the store is down.
    running = start_pipeline(tmp_path, INGEST_STORE_URL=cluster.url, INGEST_APP_CACHE_TTL_S="120")
    yield running
    running.stop()


def readyz(pipeline: Pipeline) -> int:
    return pipeline.request("GET", "/readyz", timeout_s=5)[0]


def test_postgres_outage_holds_then_catches_up(on_postgres: Pipeline, cluster: Cluster) -> None:
    client = on_postgres.client()
    app_id = client.create_app(CreateApplicationRequest={"Name": "pg-outage"})["ApplicationResponse"]["Id"]
    client.get_app(ApplicationId=app_id)  # cached by the edge from here on
    written: dict[str, str] = {}
    sent = 0
    stop = threading.Event()
    errors: list[BaseException] = []

    def stream() -> None:
        nonlocal sent
        while not stop.is_set():
            endpoint_id = f"device-{sent % 40}"
            try:
                client.update_endpoint(
                    ApplicationId=app_id, EndpointId=endpoint_id, EndpointRequest={"Address": f"v{sent}"}
                )
            except BaseException as exc:
                errors.append(exc)
                return
            written[endpoint_id] = f"v{sent}"
            sent += 1

    def writes_past(count: int, what: str) -> None:
        eventually(lambda: sent, lambda n: n >= count or bool(errors), what, within_s=STREAM_WITHIN_S)

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        writes_past(40, "a stream over every endpoint before the outage")
        # ... and flowing through the worker into the store.
        eventually(
            lambda: endpoint_or_none(client, app_id, "device-39"),
            lambda got: got is not None,
            "the worker applying the stream before the outage",
            within_s=STREAM_WITHIN_S,
        )
        cluster.stop()
        try:
            deadline = time.monotonic() + OUTAGE_S
            saw_not_ready = False
            while time.monotonic() < deadline:
                saw_not_ready = saw_not_ready or readyz(on_postgres) == 503
                time.sleep(0.1)
            assert saw_not_ready, "readiness never went false while PostgreSQL was down"
        finally:
            cluster.start()
        writes_past(sent + 40, "the stream going on after the outage")
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
    assert metric(on_postgres, "ingest_endpoint_store_retries_total") >= 1
