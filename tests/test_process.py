"""Settings, the CLI, `ingest edge` against an external broker, and arbitrary
bodies over HTTP never yielding a 500."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.errors import SettingsError
from ingest.kafka.broker import free_port
from ingest.settings import Settings
from tests.conftest import ROOT, Pipeline, clean_env, start_ingest
from tests.test_api import ACCEPTED, event, put

# Generous for a loaded CI machine: a stop with nothing in flight takes well
# under a second; this only bounds a hang.
STOP_WITHIN_S = 30.0


def test_settings_read_from_env_with_overrides() -> None:
    loaded = Settings.from_env(
        {
            "INGEST_PORT": "9000",
            "INGEST_KAFKA_IDEMPOTENCE": "false",
            "INGEST_KAFKA_COMPRESSION": "zstd",
            "PATH": "/x",
        },
        host="0.0.0.0",
    )
    assert (loaded.port, loaded.kafka_idempotence, loaded.kafka_compression, loaded.host) == (
        9000,
        False,
        "zstd",
        "0.0.0.0",
    )
    assert Settings.from_env({"INGEST_PORT": "9000"}, port=1234).port == 1234


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"INGEST_PORT": "eighty"}, "INGEST_PORT"),
        ({"INGEST_PORT": "70000"}, "INGEST_PORT"),
        ({"INGEST_KAFKA_COMPRESSION": "brotli"}, "INGEST_KAFKA_COMPRESSION"),
        ({"INGEST_KAFKA_IDEMPOTENCE": "perhaps"}, "INGEST_KAFKA_IDEMPOTENCE"),
        ({"INGEST_PRODUCE_TIMEOUT_S": "-1"}, "INGEST_PRODUCE_TIMEOUT_S"),
        ({"INGEST_PRODUCE_TIMEOUT_S": "60"}, "INGEST_PRODUCE_TIMEOUT_S"),
        ({"INGEST_KAFKA_PARTITONS": "3"}, "INGEST_KAFKA_PARTITONS"),
        ({"INGEST_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "INGEST_KAFKA_SASL_MECHANISM"),
        ({"INGEST_PRODUCER_BUFFER_BYTES": "1000"}, "INGEST_PRODUCER_BUFFER_BYTES"),
        ({"INGEST_WORKER_STALL_TIMEOUT_S": "0"}, "INGEST_WORKER_STALL_TIMEOUT_S"),
        ({"INGEST_EDGE_PROCESSES": "257", "INGEST_KAFKA_BOOTSTRAP": "kafka:9092"}, "INGEST_EDGE_PROCESSES"),
    ],
)
def test_bad_setting_names_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def run_ingest(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        env=clean_env(**env),
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_cli_bad_setting_fails_start_up_naming_it() -> None:
    done = run_ingest("run", INGEST_MAX_IN_FLIGHT_REQUESTS="lots")
    assert done.returncode == 2
    assert b"INGEST_MAX_IN_FLIGHT_REQUESTS='lots'" in done.stderr


def test_edge_requires_a_bootstrap() -> None:
    done = run_ingest("edge")
    assert done.returncode != 0 and b"INGEST_KAFKA_BOOTSTRAP" in done.stderr


def test_edge_alone_against_an_external_broker(pipeline: Pipeline, tmp_path: Path) -> None:
    """`ingest edge` with INGEST_KAFKA_BOOTSTRAP: here the pipeline's broker."""
    port = free_port()
    env = {
        "INGEST_KAFKA_BOOTSTRAP": pipeline.bootstrap,
        "INGEST_KAFKA_IDEMPOTENCE": "false",
        "INGEST_DATA_DIR": str(tmp_path),
        "INGEST_PORT": str(port),
    }
    edge = start_ingest(tmp_path, ["edge"], port=port, data_dir=tmp_path, env=env)
    try:
        client = edge.client()
        app_id = client.create_app(CreateApplicationRequest={"Name": "edge-only"})["ApplicationResponse"][
            "Id"
        ]
        results = put(client, app_id, {"d": {"Endpoint": {}, "Events": {"e": event()}}})
        assert results["d"]["EventsItemResponse"]["e"] == ACCEPTED
        assert "embedded Kafka broker" not in edge.log()
    finally:
        assert edge.stop() == 0, edge.log()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "EventType": json_values | st.text(max_size=20),
        "Timestamp": json_values | st.sampled_from(["2026-11-20T10:00:00Z", "2026-13-40", ""]),
        "Session": json_values
        | st.fixed_dictionaries(
            {}, optional={"Id": json_values, "StartTimestamp": json_values, "Duration": json_values}
        ),
        "Attributes": json_values
        | st.dictionaries(st.text(max_size=60), st.text(max_size=210) | json_values, max_size=45),
        "Metrics": json_values | st.dictionaries(st.text(max_size=60), json_values, max_size=45),
    },
)
endpoint_like = json_values | st.fixed_dictionaries(
    {},
    optional={
        "Attributes": json_values,
        "Location": json_values,
        "User": json_values,
        "ChannelType": json_values,
        "EffectiveDate": json_values,
        "Demographic": json_values,
    },
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "BatchItem": st.dictionaries(
                st.text(max_size=20),
                json_values
                | st.fixed_dictionaries(
                    {},
                    optional={
                        "Endpoint": endpoint_like,
                        "Events": json_values
                        | st.dictionaries(st.text(max_size=20), event_like | json_values, max_size=8),
                    },
                ),
                max_size=6,
            )
        }
    ),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=bodies)
def test_arbitrary_bodies_never_yield_a_500(pipeline: Pipeline, app_id: str, body: Any) -> None:
    raw = json.dumps(body).encode()  # json, not orjson: integers beyond 64 bits too
    status, headers, payload = pipeline.request(
        "POST", f"/v1/apps/{app_id}/events", raw, {"Content-Type": "application/json"}
    )
    assert status in (202, 400), (status, payload)
    if status == 400:
        assert headers["x-amzn-errortype"] == "BadRequestException"
        return
    results = orjson.loads(payload)["Results"]
    assert set(results) == set(body["BatchItem"])
    for endpoint_id, item in body["BatchItem"].items():
        answered = results[endpoint_id]
        assert answered["EndpointItemResponse"]["StatusCode"] in (202, 400)
        events = item.get("Events") if isinstance(item, dict) else None
        # Every event ID sent gets a status, whatever its endpoint's fate.
        assert set(answered["EventsItemResponse"]) == (set(events) if isinstance(events, dict) else set())
        for status_item in answered["EventsItemResponse"].values():
            assert status_item["StatusCode"] in (202, 400)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=json_values, operation=st.sampled_from(["PUT endpoints/x", "PUT endpoints", "POST apps"]))
def test_arbitrary_bodies_on_other_operations(
    pipeline: Pipeline, app_id: str, body: Any, operation: str
) -> None:
    method, path = operation.split(" ")
    url = "/v1/apps" if path == "apps" else f"/v1/apps/{app_id}/{path}"
    status, headers, _ = pipeline.request(
        method, url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    assert status in (201, 202, 400), status
    if status == 400:
        assert headers["x-amzn-errortype"] == "BadRequestException"


def test_wait_for_edge_is_quick_to_refuse_after_stop(tmp_path: Path) -> None:
    from tests.conftest import start_pipeline

    running = start_pipeline(tmp_path)
    # A clean exit within the deadline; past it stop() kills, and the code is -9.
    assert running.stop(signal.SIGINT, timeout_s=STOP_WITHIN_S) == 0
    with pytest.raises(OSError):
        running.request("GET", "/healthz", timeout_s=2)


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in Settings.names() if f"`{name}`" not in readme)
    assert not missing, f"README's settings table lacks {missing}"


def test_migrate_brings_a_fresh_store_up_to_date(tmp_path: Path) -> None:
    import sqlite3

    from ingest.store.sqlite import MIGRATIONS

    path = tmp_path / "fresh.sqlite3"
    done = run_ingest("migrate", INGEST_STORE_URL=f"sqlite:///{path}")
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(path) as db:
        (version,) = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    assert version == len(MIGRATIONS)
    assert run_ingest("migrate", INGEST_STORE_URL=f"sqlite:///{path}").returncode == 0  # idempotent


@pytest.mark.parametrize(
    ("imports", "heavy"),
    [
        # An endpoint or KPI worker, and `ingest run`'s supervisor.
        (
            "ingest.cli, ingest.process, ingest.supervise",
            ("botocore", "ingest.api.app", "ingest.jobs.worker", "ingest.streams.worker"),
        ),
        # An edge (the jobs worker it may run beside it loads botocore then).
        (
            "ingest.cli, ingest.process, ingest.api.app",
            ("botocore", "ingest.jobs.worker", "ingest.streams.worker"),
        ),
    ],
    ids=["worker", "edge"],
)
def test_a_role_loads_only_what_it_runs(imports: str, heavy: tuple[str, ...]) -> None:
    """What only some roles run is imported where it is built (ingest.process):
    0.1-0.2 CPU-s a process start, and a worker about 10 MB less resident."""
    probe = f"import sys, {imports}; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=clean_env(), cwd=ROOT, check=True
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
