"""ingest.settings: every field's type has a parser, so every ``INGEST_*``
variable can be set; an empty optional variable means None."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingest.errors import SettingsError
from ingest.settings import CLUSTER_PARTITIONS, EMBEDDED_PARTITIONS, Settings, _parser

# One valid value per variable, unlike its default, and what it parses to.
# A new setting must be added here: the first test fails until it is.
EVERY_VARIABLE: dict[str, tuple[str, object]] = {
    "INGEST_HOST": ("0.0.0.0", "0.0.0.0"),
    "INGEST_PORT": ("9000", 9000),
    "INGEST_DATA_DIR": ("/var/lib/ingest", Path("/var/lib/ingest")),
    "INGEST_LOG_LEVEL": ("DEBUG", "DEBUG"),
    "INGEST_KAFKA_BOOTSTRAP": ("127.0.0.1:9092", "127.0.0.1:9092"),
    "INGEST_EMBEDDED_STORAGE": ("memory", "memory"),
    "INGEST_KAFKA_SECURITY_PROTOCOL": ("SASL_SSL", "SASL_SSL"),
    "INGEST_KAFKA_SASL_MECHANISM": ("SCRAM-SHA-512", "SCRAM-SHA-512"),
    "INGEST_KAFKA_SASL_USERNAME": ("ingest", "ingest"),
    "INGEST_KAFKA_SASL_PASSWORD": ("secret", "secret"),
    "INGEST_KAFKA_SSL_CAFILE": ("/etc/kafka/ca.pem", Path("/etc/kafka/ca.pem")),
    "INGEST_KAFKA_SSL_CERTFILE": ("/etc/kafka/cert.pem", Path("/etc/kafka/cert.pem")),
    "INGEST_KAFKA_SSL_KEYFILE": ("/etc/kafka/key.pem", Path("/etc/kafka/key.pem")),
    "INGEST_KAFKA_IDEMPOTENCE": ("off", False),
    "INGEST_KAFKA_PARTITIONS": ("3", 3),
    "INGEST_KAFKA_REPLICATION_FACTOR": ("3", 3),
    "INGEST_KAFKA_COMPRESSION": ("lz4", "lz4"),
    "INGEST_KAFKA_MAX_BATCH_BYTES": ("65536", 65536),
    "INGEST_KAFKA_LINGER_MS": ("5", 5),
    "INGEST_KAFKA_REQUEST_TIMEOUT_MS": ("40000", 40000),
    "INGEST_KAFKA_SESSION_TIMEOUT_MS": ("6000", 6000),
    "INGEST_PRODUCE_TIMEOUT_S": ("2.5", 2.5),
    "INGEST_MAX_BODY_BYTES": ("2048", 2048),
    "INGEST_MAX_IN_FLIGHT_REQUESTS": ("64", 64),
    "INGEST_MAX_QUEUE_DELAY_MS": ("250", 250),
    "INGEST_PRODUCER_BUFFER_BYTES": ("1048576", 1048576),
    "INGEST_DRAIN_TIMEOUT_S": ("10", 10.0),
    "INGEST_APP_CACHE_TTL_S": ("0", 0.0),
    "INGEST_MAX_APPS": ("3", 3),
    "INGEST_REGION": ("eu-central-1", "eu-central-1"),
    "INGEST_ACCOUNT_ID": ("123456789012", "123456789012"),
    "INGEST_EDGE_PROCESSES": ("4", 4),
    "INGEST_WORKER_MAX_RECORDS": ("100", 100),
    "INGEST_WORKER_STALL_TIMEOUT_S": ("30", 30.0),
    "INGEST_WORKER_FETCH_INTERVAL_MS": ("0", 0),
    "INGEST_WORKER_FETCH_WAIT_MS": ("200", 200),
    "INGEST_STREAM_CONFIG_REFRESH_S": ("0.5", 0.5),
    "INGEST_STREAM_PARK_AFTER_S": ("3", 3.0),
    "INGEST_STREAM_ASSUME_ROLE": ("false", False),
    "INGEST_STREAM_AWS_THREADS": ("4", 4),
    "INGEST_STREAM_ALLOWED_ACCOUNTS": ("123456789012", "123456789012"),
    "INGEST_JOB_IMPORT_DIR": ("/srv/in", Path("/srv/in")),
    "INGEST_JOB_EXPORT_DIR": ("/srv/out", Path("/srv/out")),
    "INGEST_JOB_ASSUME_ROLE": ("false", False),
    "INGEST_JOB_MAX_RUNNING": ("8", 8),
    "INGEST_JOB_MAX_RUNNING_PER_APP": ("2", 2),
    "INGEST_JOB_MAX_UNFINISHED_PER_APP": ("3", 3),
    "INGEST_JOB_MAX_OBJECT_BYTES": ("2048", 2048),
    "INGEST_JOB_MAX_ROW_BYTES": ("4096", 4096),
    "INGEST_JOB_RETRIES": ("0", 0),
    "INGEST_JOB_LEASE_S": ("2", 2.0),
    "INGEST_JOB_POLL_S": ("0.1", 0.1),
    "INGEST_JOB_CHECKPOINT_ROWS": ("200", 200),
    "INGEST_JOB_EXPORT_PIECE_ENDPOINTS": ("500", 500),
    "INGEST_JOB_AWS_THREADS": ("2", 2),
    "INGEST_DEDUPE_RETENTION_DAYS": ("30", 30),
    "INGEST_STORE_URL": ("postgresql://127.0.0.1/ingest", "postgresql://127.0.0.1/ingest"),
    "INGEST_AUTH": ("off", "off"),
    "INGEST_AUTH_MASTER_KEY": ("A" * 43, "A" * 43),
    "INGEST_AUTH_REFRESH_S": ("0.5", 0.5),
    "INGEST_AUTH_MAX_SKEW_S": ("300", 300.0),
    "INGEST_CREDENTIALS_TTL_S": ("900", 900),
    "INGEST_GETID_PER_ADDRESS_PER_S": ("5", 5.0),
    "INGEST_CONSOLE_IDLE_TIMEOUT_S": ("600", 600),
    "INGEST_CONSOLE_SESSION_MAX_S": ("3600", 3600),
    "INGEST_CONSOLE_STREAM_METRICS_URL": (
        "http://stream-worker:9090/metrics",
        "http://stream-worker:9090/metrics",
    ),
    "INGEST_CORS_ORIGINS": ("https://app.example.com", "https://app.example.com"),
    "INGEST_PROBE_HOST": ("0.0.0.0", "0.0.0.0"),
    "INGEST_PROBE_PORT": ("0", 0),
    "INGEST_RATE_LIMIT_APP_EVENTS_PER_S": ("1000", 1000.0),
    "INGEST_RATE_LIMIT_ADDRESS_REQUESTS_PER_S": ("0", 0.0),
    "INGEST_TRUSTED_PROXIES": ("10.0.0.0/8,192.0.2.1", "10.0.0.0/8,192.0.2.1"),
    "INGEST_HTTP_HEADER_TIMEOUT_S": ("5", 5.0),
    "INGEST_HTTP_IDLE_TIMEOUT_S": ("75", 75.0),
    "INGEST_HTTP_BODY_TIMEOUT_S": ("3", 3.0),
    "INGEST_HTTP_MIN_BODY_RATE": ("1024", 1024),
    "INGEST_HTTP_MAX_URL_BYTES": ("4096", 4096),
    "INGEST_HTTP_MAX_HEADERS": ("50", 50),
    "INGEST_HTTP_MAX_HEADER_BYTES": ("16384", 16384),
    "INGEST_HTTP_MAX_CONNECTIONS": ("100", 100),
    "INGEST_HTTP_BODY_BUDGET_BYTES": ("1048576", 1048576),
}


def test_every_variable_is_read_into_its_type() -> None:
    assert set(EVERY_VARIABLE) == Settings.names()
    loaded = Settings.from_env({var: raw for var, (raw, _) in EVERY_VARIABLE.items()})
    defaults = Settings()
    for var, (_, expected) in EVERY_VARIABLE.items():
        name = var.removeprefix("INGEST_").lower()
        value = getattr(loaded, name)
        assert (value, type(value)) == (expected, type(expected)), var
        assert value != getattr(defaults, name), f"{var}: pick a value unlike the default"


@pytest.mark.parametrize("var", ["INGEST_KAFKA_BOOTSTRAP", "INGEST_KAFKA_SASL_MECHANISM", "INGEST_STORE_URL"])
def test_an_empty_optional_variable_means_none(var: str) -> None:
    name = var.removeprefix("INGEST_").lower()
    assert getattr(Settings.from_env({var: ""}), name) is None


@pytest.mark.parametrize(
    ("var", "raw", "message"),
    [
        ("INGEST_PORT", "", "expected a value of type int"),
        ("INGEST_DRAIN_TIMEOUT_S", "soon", "expected a value of type float"),
        ("INGEST_KAFKA_IDEMPOTENCE", "maybe", "expected true or false"),
        ("INGEST_KAFKA_SASL_MECHANISM", "GSSAPI", "expected one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    ],
)
def test_a_bad_value_says_what_was_expected(var: str, raw: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(f"{var}='{raw}': {message}")):
        Settings.from_env({var: raw})


@pytest.mark.parametrize("hint", [complex, list[str], int | str, int | str | None, None])
def test_a_field_type_without_a_parser_fails_when_settings_is_defined(hint: object) -> None:
    """So a new field of such a type breaks every test, not a deployment."""
    with pytest.raises(TypeError, match=r"Settings\.new_field"):
        _parser("new_field", hint)


SESSION_BOUNDS = "at least INGEST_CONSOLE_IDLE_TIMEOUT_S and at most 604800 (7 days)"


def test_the_master_key_is_not_in_the_repr() -> None:
    assert "A" * 43 not in repr(Settings(auth_master_key="A" * 43))


@pytest.mark.parametrize(
    ("var", "raw", "expected"),
    [
        ("INGEST_STREAM_CONFIG_REFRESH_S", "0", "> 0 and <= 3600"),
        ("INGEST_STREAM_CONFIG_REFRESH_S", "86400", "> 0 and <= 3600"),
        ("INGEST_STREAM_PARK_AFTER_S", "-1", "0-3600"),
        ("INGEST_STREAM_AWS_THREADS", "0", "1-256"),
        ("INGEST_STREAM_AWS_THREADS", "100000", "1-256"),
        ("INGEST_STREAM_ALLOWED_ACCOUNTS", "123456789012,me", "comma-separated 12-digit AWS account IDs"),
        ("INGEST_CONSOLE_IDLE_TIMEOUT_S", "59", "60-86400"),
        ("INGEST_CONSOLE_IDLE_TIMEOUT_S", "86401", "60-86400"),
        ("INGEST_CONSOLE_SESSION_MAX_S", "600", SESSION_BOUNDS),
        ("INGEST_CONSOLE_SESSION_MAX_S", "604801", SESSION_BOUNDS),
        ("INGEST_CONSOLE_STREAM_METRICS_URL", "https://metrics.example/metrics", "an http:// URL"),
        ("INGEST_JOB_MAX_RUNNING", "0", "1-256"),
        ("INGEST_JOB_MAX_RUNNING_PER_APP", "0", "1-256"),
        ("INGEST_JOB_MAX_UNFINISHED_PER_APP", "0", "1-1000"),
        ("INGEST_JOB_MAX_UNFINISHED_PER_APP", "1001", "1-1000"),
        ("INGEST_JOB_MAX_OBJECT_BYTES", "10", "1024-1099511627776"),
        ("INGEST_JOB_MAX_ROW_BYTES", "100", "1024-16777216"),
        ("INGEST_JOB_RETRIES", "-1", "0-100"),
        ("INGEST_JOB_RETRIES", "1000", "0-100"),
        ("INGEST_JOB_LEASE_S", "0.5", "1-3600"),
        ("INGEST_JOB_POLL_S", "0", "0.01-60"),
        ("INGEST_JOB_CHECKPOINT_ROWS", "0", "1-100000"),
        ("INGEST_JOB_EXPORT_PIECE_ENDPOINTS", "0", "1-1000000"),
        ("INGEST_JOB_AWS_THREADS", "0", "1-256"),
        ("INGEST_WORKER_FETCH_INTERVAL_MS", "-1", "0-10000"),
        ("INGEST_WORKER_FETCH_INTERVAL_MS", "10001", "0-10000"),
        ("INGEST_KAFKA_SESSION_TIMEOUT_MS", "999", "1000-300000"),
        ("INGEST_KAFKA_SESSION_TIMEOUT_MS", "300001", "1000-300000"),
        ("INGEST_WORKER_FETCH_WAIT_MS", "9", "10-5000"),
        ("INGEST_WORKER_FETCH_WAIT_MS", "5001", "10-5000"),
    ],
)
def test_a_setting_out_of_its_range_is_refused(var: str, raw: str, expected: str) -> None:
    """The message names the variable, the value as read (a float with its
    ``.0``, a string quoted) and what was expected."""
    shown = "'?" + re.escape(raw) + r"(\.0)?'?"
    with pytest.raises(
        SettingsError, match=re.escape(f"{var}=") + shown + re.escape(f": expected {expected}")
    ):
        Settings.from_env({var: raw})


def test_the_main_topics_have_one_partition_on_the_embedded_broker_unless_set() -> None:
    assert Settings().topic_partitions == EMBEDDED_PARTITIONS == 1
    assert Settings(kafka_bootstrap="kafka:9092").topic_partitions == CLUSTER_PARTITIONS == 8
    assert Settings(kafka_partitions=3).topic_partitions == 3
    assert Settings(kafka_bootstrap="kafka:9092", kafka_partitions=1).topic_partitions == 1
    with pytest.raises(SettingsError, match=re.escape("INGEST_KAFKA_PARTITIONS=0: expected >= 1")):
        Settings.from_env({"INGEST_KAFKA_PARTITIONS": "0"})


def test_more_jobs_an_app_than_in_the_deployment_is_refused() -> None:
    with pytest.raises(
        SettingsError, match="INGEST_JOB_MAX_RUNNING_PER_APP=5: expected at most INGEST_JOB_MAX_RUNNING"
    ):
        Settings.from_env({"INGEST_JOB_MAX_RUNNING": "4", "INGEST_JOB_MAX_RUNNING_PER_APP": "5"})


def test_file_urls_are_confined_under_the_data_dir_unless_set() -> None:
    settings = Settings(data_dir=Path("/srv/ingest"))
    assert (settings.import_dir, settings.export_dir) == (
        Path("/srv/ingest/import"),
        Path("/srv/ingest/export"),
    )
    assert Settings(job_import_dir=Path("/in")).import_dir == Path("/in")
