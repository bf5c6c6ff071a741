"""The status file a serving `ingest` process writes, and the launcher that
reads it (`ingest.launch`): what tests, benches and the load harness rely on
to find a process's port, its broker and its broker's PID."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ingest.launch import LaunchError, Status, launch, write_status
from tests.conftest import ROOT, clean_env, start_pipeline


def test_status_round_trips_and_is_written_whole(tmp_path: Path) -> None:
    status = Status(pid=7, http="127.0.0.1:8080", kafka="127.0.0.1:9092", broker=None)
    path = tmp_path / "status.json"
    write_status(path, status)
    assert Status.from_json(path.read_bytes()) == status
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary left behind


def test_ingest_run_on_port_0_says_where_it_listens_and_which_broker_is_its_own(tmp_path: Path) -> None:
    running = start_pipeline(tmp_path)
    status = running.launched.status
    status_path = running.log_path.with_name(f"{running.log_path.stem}.status.json")
    try:
        assert status.pid == running.process.pid
        assert running.port > 0 and status.http == f"127.0.0.1:{running.port}"
        assert status.broker is not None and status.kafka == status.broker.bootstrap
        # The broker is a child of `ingest run`: signalling it by PID is safe.
        stat = Path(f"/proc/{status.broker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[1]) == running.process.pid
        assert status_path.exists()
    finally:
        assert running.stop() == 0, running.log()
    assert not status_path.exists()  # removed on a clean stop


def test_a_process_that_exits_fails_the_launch_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(LaunchError) as failed:
        launch(
            [sys.executable, "-m", "ingest", "edge", "--port", "0"],
            env=clean_env(),
            log_path=tmp_path / "edge.log",
            cwd=ROOT,
        )
    message = str(failed.value)
    assert "ingest edge exited 1" in message and "INGEST_KAFKA_BOOTSTRAP" in message
