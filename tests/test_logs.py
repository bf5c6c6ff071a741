"""The log is one safe line per record: control characters escaped, URL
secrets redacted, repeated warnings rate-limited with a count (ingest/logs.py);
and the same seen from outside, in the log of a running `ingest`."""

from __future__ import annotations

import io
import logging
import re
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest import logs
from ingest.kafka.broker import free_port
from tests.conftest import ROOT, clean_env, start_pipeline

# A record's first line as the formatter writes it (naming its process when
# `ingest run` supervises it).
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ (\[[a-z0-9-]+\] )?[\w.]+: ")
# What the tests look for in a log: any raw control character but the line break.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
FORGED = "2026-12-01 09:00:00,000 INFO ingest.process: stopped cleanly"
HOSTILE = f"\x1b[2J\x1b[H\r\n{FORGED}\n\x9b31m\u2028\x00"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def captured(clock: Clock) -> Iterator[tuple[logging.Logger, logs.SafeHandler, io.StringIO]]:
    """A logger of its own writing through a SafeHandler into a string."""
    stream = io.StringIO()
    handler = logs.SafeHandler(stream, repeats=logs.RepeatFilter(clock=clock))
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, handler, stream
    logger.removeHandler(handler)


def assert_clean(text: str) -> list[str]:
    """Every line is a record's first line or an indented continuation, with
    no raw control character → the lines."""
    assert not RAW_CONTROL.search(text), repr(text)
    lines = text.splitlines()
    for line in lines:
        assert RECORD.match(line) or line.startswith("  "), repr(line)
    return lines


# --- Escaping ---------------------------------------------------------------


def test_control_characters_in_args_are_escaped_and_a_record_stays_one_line(
    captured: tuple[logging.Logger, logs.SafeHandler, io.StringIO],
) -> None:
    logger, _, stream = captured
    logger.warning("refused app %s (%r)", HOSTILE, HOSTILE)
    lines = assert_clean(stream.getvalue())
    assert len(lines) == 1
    assert "\\x1b[2J" in lines[0] and "\\r\\n" in lines[0] and "\\x9b" in lines[0] and "\\u2028" in lines[0]
    assert not any(line.startswith(FORGED) for line in lines)


def test_control_characters_in_the_message_itself_are_escaped(
    captured: tuple[logging.Logger, logs.SafeHandler, io.StringIO],
) -> None:
    logger, _, stream = captured
    logger.error(f"built from client text: {HOSTILE}")  # noqa: G004 - the careless call site under test
    lines = assert_clean(stream.getvalue())
    assert len(lines) == 1 and "stopped cleanly" in lines[0]


def test_exception_text_keeps_its_lines_but_cannot_forge_a_record(
    captured: tuple[logging.Logger, logs.SafeHandler, io.StringIO],
) -> None:
    logger, _, stream = captured
    try:
        raise ValueError(f"bad key {HOSTILE}")
    except ValueError:
        logger.exception("unexpected error on %s", "PutEvents")
    logger.warning("stack", stack_info=True)
    lines = assert_clean(stream.getvalue())
    records = [line for line in lines if RECORD.match(line)]
    assert [r.split(": ", 1)[1] for r in records] == ["unexpected error on PutEvents", "stack"]
    assert any("Traceback (most recent call last):" in line for line in lines)
    assert any("ValueError: bad key \\x1b[2J" in line for line in lines)
    assert any(line.strip() == FORGED for line in lines)  # there, but indented: a continuation


@given(st.text())
def test_any_text_in_any_place_makes_one_clean_line(text: str) -> None:
    record = logging.LogRecord(text, logging.WARNING, text, 1, "%s " + text.replace("%", "%%"), (text,), None)
    line = logs.SafeFormatter(logs.FORMAT).format(record)
    assert "\n" not in line and not RAW_CONTROL.search(line)


# --- Redaction --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:p@h/db?password=x", "postgresql://u:***@h/db?password=***"),
        (
            "store: postgres://ingest:s3cr%40t@db.internal:5432/ingest?sslmode=require&password=x, ready",
            "store: postgres://ingest:***@db.internal:5432/ingest?sslmode=***&password=***, ready",
        ),
        ("sqlite:///var/lib/ingest/s.db?password=hunter2", "sqlite:///var/lib/ingest/s.db?password=***"),
        ("'https://u:p@ss@h/x?token' refused", "'https://u:***@h/x?***' refused"),
        (
            "s3://key:secret@bucket/p?X-Amz-Signature=abc#frag",
            "s3://key:***@bucket/p?X-Amz-Signature=***#frag",
        ),
        (
            "postgresql://postgres@127.0.0.1:55432/ingest_test",
            "postgresql://postgres@127.0.0.1:55432/ingest_test",
        ),
        (
            "Kafka at 127.0.0.1:9092; http://127.0.0.1:8080/v1/apps",
            "Kafka at 127.0.0.1:9092; http://127.0.0.1:8080/v1/apps",
        ),
        ("a=1&b=2 is not a URL", "a=1&b=2 is not a URL"),
    ],
)
def test_url_passwords_and_query_values_are_redacted(text: str, expected: str) -> None:
    assert logs.redacted(text) == expected


def test_redaction_is_applied_to_every_record_and_its_exception(
    captured: tuple[logging.Logger, logs.SafeHandler, io.StringIO],
) -> None:
    logger, _, stream = captured
    url = "postgresql://ingest:hunter2@db/ingest?password=hunter2"
    logger.info("store: %s", url)
    try:
        raise OSError(f"cannot connect to {url}")
    except OSError:
        logger.exception("store unavailable")
    text = stream.getvalue()
    assert "hunter2" not in text
    assert text.count("postgresql://ingest:***@db/ingest?password=***") == 2


# --- Repeated warnings ------------------------------------------------------


def test_a_burst_of_one_warning_writes_a_bounded_number_of_lines_and_a_count(
    captured: tuple[logging.Logger, logs.SafeHandler, io.StringIO], clock: Clock
) -> None:
    logger, handler, stream = captured
    for n in range(3000):
        clock.now = n / 1000  # 3,000 in 3 s, within one window
        logger.warning("malformed request from %s", f"10.0.0.{n % 250}")
    assert len(stream.getvalue().splitlines()) == logs.REPEAT_BURST
    clock.now = 3 + logs.REPEAT_WINDOW_S
    logger.info("later")  # the next record after the window brings the count
    lines = assert_clean(stream.getvalue())
    assert len(lines) == logs.REPEAT_BURST + 2
    more = 3000 - logs.REPEAT_BURST - 1
    assert lines[-2].endswith(
        f"malformed request from 10.0.0.249 (and {more:,} more like it in the last 10 s)"
    )
    assert lines[-1].endswith("later")
    handler.close()
    assert len(stream.getvalue().splitlines()) == logs.REPEAT_BURST + 2  # nothing left to report


def test_the_count_is_written_at_close_when_nothing_follows(
    captured: tuple[logging.Logger, logs.SafeHandler, io.StringIO],
) -> None:
    logger, handler, stream = captured
    for _ in range(logs.REPEAT_BURST + 3):
        logger.warning("store error on %s: %s", "PutEvents", "disk full")
    handler.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == logs.REPEAT_BURST + 1
    assert lines[-1].endswith("store error on PutEvents: disk full (and 2 more like it in the last 10 s)")


def test_limits_are_per_template_and_spare_info_and_a_new_window(
    captured: tuple[logging.Logger, logs.SafeHandler, io.StringIO], clock: Clock
) -> None:
    logger, _, stream = captured
    for _ in range(50):
        logger.warning("one %s", "x")
        logger.warning("another %s", "y")
        logger.info("progress %s", "z")
    lines = stream.getvalue().splitlines()
    assert sum("one x" in line for line in lines) == logs.REPEAT_BURST
    assert sum("another y" in line for line in lines) == logs.REPEAT_BURST
    assert sum("progress z" in line for line in lines) == 50
    clock.now = logs.REPEAT_WINDOW_S
    logger.warning("one %s", "x")
    lines = stream.getvalue().splitlines()
    # The old window's report, then the new window's first record in full.
    assert lines[-3].endswith("one x (and 44 more like it in the last 10 s)")
    assert lines[-2].endswith("another y (and 44 more like it in the last 10 s)")
    assert lines[-1].endswith(": one x")


def test_the_template_table_is_bounded_and_evicting_keeps_counts(clock: Clock) -> None:
    repeats = logs.RepeatFilter(clock=clock, burst=1)
    first = logging.LogRecord("a", logging.WARNING, "", 1, "first", None, None)
    assert repeats.filter(first) and not repeats.filter(first)
    for n in range(logs.MAX_TEMPLATES + 10):
        repeats.filter(logging.LogRecord("a", logging.WARNING, "", 1, f"t{n}", None, None))
    assert len(repeats._windows) <= logs.MAX_TEMPLATES
    assert first in repeats.due()  # evicted, and its one suppressed record reported


def test_configure_installs_one_safe_handler_on_the_root() -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        logs.configure("WARNING")
        assert [type(h) for h in root.handlers] == [logs.SafeHandler] and root.level == logging.WARNING
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)


# --- A running `ingest` ---------------------------------------------------------

MALFORMED = 3000


def send_malformed(port: int) -> None:
    """One request httptools refuses (the server warns and answers 400)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x1b[2J\x00 /\r\nHTTP/1.1\r\n\r\n")
        while sock.recv(4096):
            pass


def test_hostile_text_and_a_flood_of_malformed_requests_leave_a_clean_bounded_log(tmp_path: Path) -> None:
    running = start_pipeline(tmp_path)
    try:
        app = urllib.parse.quote("\x1b[2J" + HOSTILE, safe="")
        status, _, _ = running.request("GET", f"/v1/apps/{app}")
        assert status in (400, 404), status
        # The credential scope of a presigned URL is logged before it is
        # verified; the region is the client's.
        region = urllib.parse.quote("us-east-1\x1b[2J\x9b31m", safe="")
        credential = f"AKIAHOSTILE%2F20261201%2F{region}%2Fmobiletargeting%2Faws4_request"
        status, _, _ = running.request("GET", f"/v1/apps?X-Amz-Credential={credential}", sign=False)
        assert status == 403, status
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send_malformed, [running.port] * MALFORMED, timeout=120))
        assert running.request("GET", "/v1/apps")[0] == 200  # still serving
    finally:
        assert running.stop() == 0, running.log()
    log = running.log()
    assert "AKIAHOSTILE" in log and "\\x1b[2J\\x9b31m" in log  # the vector reached the log, escaped
    lines = assert_clean(log)
    assert not any(line.startswith(FORGED) for line in lines)
    warnings = [line for line in lines if " WARNING " in line]
    invalid = [line for line in warnings if "Malformed HTTP request" in line]
    # One window's burst, maybe a second's, and the count at the end.
    assert 1 <= len(invalid) <= 3 * logs.REPEAT_BURST, invalid
    assert len(warnings) <= 4 * logs.REPEAT_BURST, warnings
    counted = sum(int(m.replace(",", "")) for m in re.findall(r"\(and ([\d,]+) more like it", log))
    assert counted + len(invalid) == MALFORMED, (counted, invalid)


def store_logged(tmp_path: Path, store_url: str) -> str:
    running = start_pipeline(tmp_path, INGEST_STORE_URL=store_url)
    assert running.stop() == 0, running.log()
    return running.log()


def test_a_sqlite_store_urls_password_is_never_logged(tmp_path: Path) -> None:
    log = store_logged(tmp_path, f"sqlite:///{tmp_path}/store.sqlite3?password=hunter2")
    assert "hunter2" not in log
    assert f"store: sqlite:///{tmp_path}/store.sqlite3?password=***" in log


def test_a_postgresql_store_urls_password_is_never_logged(tmp_path: Path, postgres_url: str) -> None:
    # The test server trusts loopback, so it ignores the password it is given.
    parts = urllib.parse.urlsplit(postgres_url)
    netloc = f"{parts.username or 'postgres'}:hunter2@{parts.hostname}:{parts.port}"
    url = urllib.parse.urlunsplit(parts._replace(netloc=netloc, query="password=hunter3"))
    log = store_logged(tmp_path, url)
    assert "hunter2" not in log and "hunter3" not in log
    assert "password=***" in log and ":***@" in log


# --- A broker without idempotent producers ------------------------------------


@pytest.mark.parametrize("role", [["edge"], ["worker", "kpis"], ["worker", "endpoints"]], ids=" ".join)
def test_edge_against_a_broker_refusing_idempotence_fails_with_one_line_naming_the_setting(
    broker: str, tmp_path: Path, role: list[str]
) -> None:
    env = {
        "INGEST_KAFKA_BOOTSTRAP": broker,
        "INGEST_KAFKA_IDEMPOTENCE": "true",
        "INGEST_DATA_DIR": str(tmp_path),
        "INGEST_PORT": str(free_port()),
        "INGEST_PROBE_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ingest", *role],
        env=clean_env(**env),
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode != 0, stderr
    assert "Traceback" not in stderr, stderr
    naming = [line for line in stderr.splitlines() if "INGEST_KAFKA_IDEMPOTENCE" in line]
    assert len(naming) == 1, stderr
    assert " ERROR ingest: " in naming[0] and "INGEST_KAFKA_IDEMPOTENCE=false" in naming[0]
    assert "Unclosed AIOKafkaProducer" not in stderr, stderr
