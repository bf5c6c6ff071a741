"""The one settings object, read once from ``INGEST_*`` environment variables.

It earns its size (about 400 lines): every knob of every process with its
default, its unit and the reason for its value, and the checks that name a
bad variable at start-up.

This is the only module that reads ``os.environ``. Every component takes the
values it needs as keyword arguments carrying their unit; nothing reads the
environment later. A bad value fails start-up with a message naming the
variable (:class:`ingest.errors.SettingsError`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from ingest.api.limits import ClientAddress
from ingest.errors import SettingsError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
AuthMode = Literal["sigv4", "off"]
EmbeddedStorage = Literal["s3rver", "memory"]

PREFIX = "INGEST_"

# Pinpoint's PutEvents quota is "4 MB" per request; we read it as MiB, the
# larger reading, so no request Pinpoint took is refused here.
PINPOINT_MAX_BODY_BYTES = 4 * 1024 * 1024

# INGEST_AUTH_MASTER_KEY decodes to this many bytes (an AES-256 key).
MASTER_KEY_BYTES = 32
# GetId's token bucket holds this many requests per client address.
GETID_BURST = 10
# Partitions of each main topic unless INGEST_KAFKA_PARTITIONS says: on a
# Kafka cluster, room for several workers of a role; on the embedded broker,
# which runs one worker of each role, one. Tansu answers each fetch that finds
# records by listing every batch the partition holds, and stores a batch per
# partition a produce request touches, so eight partitions cost it eight
# times the batches and the listings for no parallelism (one `ingest run`,
# the same load: saturation 29k → 36k events/s, the produce round trip at
# half of it 13 → 5 ms; load/benchmark-notes.md).
CLUSTER_PARTITIONS = 8
EMBEDDED_PARTITIONS = 1
# Bounds of INGEST_KAFKA_SESSION_TIMEOUT_MS: a heartbeat goes a third of it
# apart, and under a second of slack a busy two-core machine drops members
# that are alive; above five minutes a dead worker's partitions sit unread.
MIN_SESSION_TIMEOUT_MS = 1_000
MAX_SESSION_TIMEOUT_MS = 300_000
# Bounds of INGEST_WORKER_FETCH_WAIT_MS: below 10 ms an idle worker all but
# spins; the most is also the wait of a worker that is behind
# (clients.FETCH_MAX_WAIT_BEHIND_MS), and one that keeps up waits no longer.
MIN_FETCH_WAIT_MS = 10
MAX_FETCH_WAIT_MS = 5_000

T = TypeVar("T")

# The jobs settings' ranges: (name, lowest, highest), each inclusive.
_JOB_RANGES: tuple[tuple[str, float, float], ...] = (
    ("job_max_running", 1, 256),
    ("job_max_running_per_app", 1, 256),
    ("job_max_unfinished_per_app", 1, 1000),
    ("job_max_object_bytes", 1024, 1 << 40),
    ("job_max_row_bytes", 1024, 16 << 20),
    ("job_retries", 0, 100),
    ("job_lease_s", 1, 3600),
    ("job_poll_s", 0.01, 60),
    ("job_checkpoint_rows", 1, 100_000),
    ("job_export_piece_endpoints", 1, 1_000_000),
    ("job_aws_threads", 1, 256),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of every process. Field ``foo_bar`` is ``INGEST_FOO_BAR``."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    log_level: LogLevel = "INFO"

    # Kafka. ``None`` bootstrap means "start the embedded broker" in `ingest run`
    # and is an error for `ingest edge`.
    kafka_bootstrap: str | None = None
    # Where the embedded broker keeps its log: ``s3rver`` on disk under
    # ``{data_dir}/kafka`` (survives a crash), or ``memory`` (lost with the
    # process; RAM grows with every record: tests and benchmarks).
    embedded_storage: EmbeddedStorage = "s3rver"
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = dataclasses.field(default=None, repr=False)
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    # aiokafka's idempotent producer needs InitProducerId v3+ on the broker side
    # (real Kafka has it; Tansu does not), so it is on by default and `ingest run`
    # turns it off for the embedded broker.
    kafka_idempotence: bool = True
    # Both main topics get this many partitions so one worker owns all of an
    # endpoint's history; unset, CLUSTER_PARTITIONS, or EMBEDDED_PARTITIONS with
    # the embedded broker (``topic_partitions``).
    kafka_partitions: int | None = None
    kafka_replication_factor: int = 1
    kafka_compression: Compression = "none"
    # One Kafka record batch per partition carries every record that arrived
    # while the previous one was in flight; 1 MiB is Kafka's default
    # message.max.bytes, the largest batch a default broker takes.
    kafka_max_batch_bytes: int = 1024 * 1024
    kafka_linger_ms: int = 0
    # How long aiokafka keeps retrying a batch before failing it; longer than
    # the produce deadline so a slow ack still frees its buffer space.
    kafka_request_timeout_ms: int = 30_000
    # How long the group coordinator waits for a worker's heartbeat (sent a
    # third of this apart) before it hands the worker's partitions to another
    # member, or to the same worker started again: a SIGKILLed worker's
    # records wait this long, and more, before anyone reads them. aiokafka's
    # default; a Kafka cluster refuses values outside its brokers'
    # group.min/max.session.timeout.ms (6 s and 30 min by default).
    kafka_session_timeout_ms: int = 10_000

    # Edge.
    produce_timeout_s: float = 5.0
    max_body_bytes: int = PINPOINT_MAX_BODY_BYTES
    # API requests the edge works on at once; past it, 429 as they are read.
    # Small on purpose: the edge is one event loop, and every admitted request
    # lengthens the pass that must also read, and refuse, the next ones. At
    # four times saturation (python -m bench --part overload) 32 answered
    # 429s in ~4 ms with accepted p99 ~150 ms; 512 let accepted requests wait
    # seconds and refused almost nothing.
    max_in_flight_requests: int = 32
    # An API request that waited longer than this behind other work before
    # the edge could start on it is answered 429 instead (the loop is
    # overloaded; an answer that late helps no one).
    max_queue_delay_ms: int = 500
    producer_buffer_bytes: int = 64 * 1024 * 1024
    drain_timeout_s: float = 20.0
    app_cache_ttl_s: float = 5.0
    # Apps a deployment holds: Pinpoint's default quota ("Apps per account",
    # 100); CreateApp past it answers 400.
    max_apps: int = 100
    region: str = "us-east-1"
    account_id: str = "000000000000"

    # `ingest run`: how many `ingest edge` processes it supervises, sharing
    # the API port (SO_REUSEPORT), beside one process per worker role.
    # ``None``: one per CPU this process may run on. ``0``: no child
    # processes; the edge and the workers share the one interpreter (the
    # smallest footprint). Edges racing each other on the embedded broker's
    # partitions are safe: the workers wait out the gaps it shows
    # (ingest.kafka.gapless).
    edge_processes: int | None = None

    # Workers: records per poll, and so per store transaction.
    worker_max_records: int = 5000
    # A worker that fetched and wrote nothing this long while it has work
    # left (records on a partition of its own, or no partition at all) fails,
    # so that its supervisor (Kubernetes, `ingest run`) starts it again: a
    # consumer stuck after a rebalance never recovers by itself. Well above a
    # rebalance and a store retry's backoff.
    worker_stall_timeout_s: float = 120.0
    # While a worker keeps up (a poll that took all the broker had), the least
    # time from one of its polls to its next fetch (ingest.kafka.pacing): a
    # fetch that finds records costs the broker a listing of every batch the
    # partition holds (Tansu), which held up the edge's acks more the longer a
    # run went on. A record waits up to this much more before its worker reads
    # it; 0 fetches again at once.
    worker_fetch_interval_ms: int = 100
    # While a worker is caught up, how long the broker may hold its fetch
    # waiting for a record. Tansu answers a waiting fetch only when the wait
    # ends, so this is also how long a new record may wait there; each wait
    # that ends empty is a fetch round for the broker and the worker, which is
    # most of what an idle pipeline costs (ingest.kafka.pacing). Kafka answers
    # as soon as a record arrives.
    worker_fetch_wait_ms: int = 50
    # KPI worker: UTC days (today included) whose event IDs are kept to
    # deduplicate on. An event dated before them is not aggregated, since a
    # retry of it could no longer be recognised. A week covers a device that
    # was offline for days and then sends its queued events, at the cost of
    # one stored mark per event of the window.
    dedupe_retention_days: int = 7

    # Streams worker (event streams). How often it reads which app streams
    # where; a record that arrived after the last read has it read again
    # before the record is passed over, so this bounds only how soon a
    # change to a stream is seen when no new records come.
    stream_config_refresh_s: float = 2.0
    # A destination that keeps failing this long is parked: its apps'
    # events wait (nothing is dropped) while every other stream delivers on.
    # Long enough to ride out a throttling burst, short enough that other
    # apps' streams barely notice.
    stream_park_after_s: float = 10.0
    # Deliver to Kinesis and Firehose as the stream's RoleArn (STS
    # AssumeRole with the process's own credentials), as Pinpoint did; off,
    # the process's own credentials deliver (one account, no cross-account
    # roles).
    stream_assume_role: bool = True
    # Calls to AWS in flight at once (botocore runs in a thread each).
    stream_aws_threads: int = 8
    # The AWS accounts (12-digit IDs, comma-separated) whose Kinesis and
    # Firehose streams and IAM roles an event stream may name; empty: any.
    # The worker's AWS identity can assume whatever roles trust it, so on a
    # deployment shared by several teams this keeps one team's admin from
    # pointing its app's events at a stream, or a role, of another account.
    stream_allowed_accounts: str = ""

    # Jobs worker (import and export jobs, ingest.jobs). ``file://`` URLs
    # name files under these directories only (None: ``{data_dir}/import``
    # and ``{data_dir}/export``): a path leaving it, by ``..`` or through a
    # symlink, is refused.
    job_import_dir: Path | None = None
    job_export_dir: Path | None = None
    # Read and write ``s3://`` as the job's RoleArn (STS AssumeRole with the
    # process's own credentials), as Pinpoint did; off, as the process.
    job_assume_role: bool = True
    # Jobs running at once in the deployment (every replica together), and
    # of one app: a claim past either waits. Small: each job is one stream
    # of rows into Kafka, and the endpoint worker applies them all.
    job_max_running: int = 4
    job_max_running_per_app: int = 1
    # Jobs of one app not yet finished (waiting or running): CreateImportJob
    # and CreateExportJob past it answer 429, so no app queues without end.
    # Pinpoint allowed 10 import jobs at once.
    job_max_unfinished_per_app: int = 10
    # An object (an import file, compressed or not, and what it decompresses
    # to) larger than this fails its piece: Pinpoint's 1 GB import file limit.
    job_max_object_bytes: int = 1024 * 1024 * 1024
    # A line (JSON) or row (CSV) longer than this is a failed row, read past.
    # An endpoint is at most 15 KB; this leaves room for whitespace.
    job_max_row_bytes: int = 256 * 1024
    # Attempts after the first, with capped exponential backoff, of an S3
    # or file call or a Kafka produce that failed in a way that may pass;
    # then the job fails, saying why.
    job_retries: int = 5
    # How long a claimed job stays its replica's without a renewal (renewed
    # every third of it): a replica that died has its jobs resumed by
    # another after at most this.
    job_lease_s: float = 30.0
    # How often an idle replica looks for a job to claim.
    job_poll_s: float = 1.0
    # Rows an import sends to Kafka, and has acknowledged, before it saves
    # its cursor; endpoints an export writes a piece (one object).
    job_checkpoint_rows: int = 1000
    job_export_piece_endpoints: int = 10_000
    # Calls to S3 in flight at once (botocore runs in a thread each).
    job_aws_threads: int = 8

    # Store. ``None`` means SQLite at ``{data_dir}/ingest.sqlite3``.
    store_url: str | None = None

    # Authentication. ``off`` serves every request unverified (local
    # experiments only; a warning is logged at start).
    auth: AuthMode = "sigv4"
    # base64url of 32 bytes: encrypts stored secrets and MACs session tokens
    # and identity IDs. ``None``: ``{data_dir}/master.key``, generated (mode
    # 0600) on first start. Every process of one deployment needs the same key.
    # Decoded (and a bad value refused) by ingest.keys.MasterKey.load, never
    # echoed.
    auth_master_key: str | None = dataclasses.field(default=None, repr=False)
    # How often an edge reloads keys and identity pools: a new or revoked key
    # is seen within this.
    auth_refresh_s: float = 2.0
    # X-Amz-Date tolerance, AWS's 15 minutes.
    auth_max_skew_s: float = 900.0
    # Lifetime of Cognito-style temporary credentials (Cognito's is an hour).
    credentials_ttl_s: int = 3600
    # The console (/console/): a session ends after this long without a
    # request the user made (the page's own refreshes do not count), and in
    # any case this long after sign-in. 30 minutes of inactivity is OWASP's
    # upper figure for low-risk applications; 12 hours is a working day.
    console_idle_timeout_s: int = 1800
    console_session_max_s: int = 43200
    # A Prometheus text endpoint holding the streams worker's ingest_stream_*
    # samples, which the console shows as delivery health (`ingest run` sets
    # its own /metrics for its edges); unset: the console says it has none.
    console_stream_metrics_url: str | None = None
    # GetId token bucket per client address: this rate, a burst of GETID_BURST.
    getid_per_address_per_s: float = 1.0
    # Comma-separated browser origins (or ``*``) allowed on the ingest
    # operations and the credentials endpoint; admin and read operations never
    # answer CORS.
    cors_origins: str = "*"
    # Rate limits per edge process, token buckets holding one second's worth
    # (0 turns one off): events per second per app (PutEvents), requests
    # per second per client address (every API operation). Past either: 429
    # TooManyRequestsException with Retry-After. The defaults are above what
    # one process serves from one app and one address, so only an operator's
    # lower setting limits anyone.
    rate_limit_app_events_per_s: float = 200_000.0
    rate_limit_address_requests_per_s: float = 20_000.0
    # Comma-separated addresses or CIDR networks of the proxies in front of
    # the edge: a request from one has its client address read from
    # X-Forwarded-For (the right-most entry that is not a trusted proxy);
    # from anywhere else X-Forwarded-For is ignored.
    trusted_proxies: str = ""
    # The listener of /healthz, /readyz and /metrics (0 = any free port); the
    # public port serves only the API.
    probe_host: str = "127.0.0.1"
    probe_port: int = 9090

    # The HTTP server's limits (ingest.api.server): a request's headers must
    # arrive within the header timeout of its first byte; a kept-alive
    # connection idle this long is closed; a body gets the body timeout, then
    # must keep up the minimum rate (bytes/s), or 408. Larger URLs get 414,
    # more or larger headers 431. Connections are capped per process (lowered
    # to fit the descriptor limit); bodies held at once share a byte budget
    # (429 past it).
    http_header_timeout_s: float = 10.0
    http_idle_timeout_s: float = 20.0
    http_body_timeout_s: float = 10.0
    http_min_body_rate: int = 16 * 1024
    http_max_url_bytes: int = 8 * 1024
    http_max_headers: int = 100
    http_max_header_bytes: int = 32 * 1024
    http_max_connections: int = 10_000
    http_body_budget_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        _check(self.port, 0 <= self.port <= 65535, "port", "a TCP port 0-65535")
        _check(
            self.kafka_partitions,
            self.kafka_partitions is None or self.kafka_partitions >= 1,
            "kafka_partitions",
            ">= 1",
        )
        _check(
            self.kafka_replication_factor,
            self.kafka_replication_factor >= 1,
            "kafka_replication_factor",
            ">= 1",
        )
        _check(
            self.kafka_max_batch_bytes,
            self.kafka_max_batch_bytes >= 64 * 1024,
            "kafka_max_batch_bytes",
            ">= 65536",
        )
        _check(self.kafka_linger_ms, self.kafka_linger_ms >= 0, "kafka_linger_ms", ">= 0")
        _check(
            self.kafka_session_timeout_ms,
            MIN_SESSION_TIMEOUT_MS <= self.kafka_session_timeout_ms <= MAX_SESSION_TIMEOUT_MS,
            "kafka_session_timeout_ms",
            f"{MIN_SESSION_TIMEOUT_MS}-{MAX_SESSION_TIMEOUT_MS}",
        )
        _check(
            self.produce_timeout_s,
            0 < self.produce_timeout_s * 1000 < self.kafka_request_timeout_ms,
            "produce_timeout_s",
            "> 0 and below INGEST_KAFKA_REQUEST_TIMEOUT_MS",
        )
        _check(
            self.max_body_bytes,
            1024 <= self.max_body_bytes <= 64 * 1024 * 1024,
            "max_body_bytes",
            "1 KiB - 64 MiB",
        )
        _check(
            self.max_in_flight_requests,
            self.max_in_flight_requests >= 1,
            "max_in_flight_requests",
            ">= 1",
        )
        _check(
            self.max_queue_delay_ms, 1 <= self.max_queue_delay_ms <= 60_000, "max_queue_delay_ms", "1-60000"
        )
        _check(
            self.producer_buffer_bytes,
            self.producer_buffer_bytes >= 2 * self.max_body_bytes,
            "producer_buffer_bytes",
            "at least twice INGEST_MAX_BODY_BYTES",
        )
        _check(
            self.worker_max_records, 1 <= self.worker_max_records <= 100_000, "worker_max_records", "1-100000"
        )
        if self.edge_processes is not None:
            _check(self.edge_processes, 0 <= self.edge_processes <= 256, "edge_processes", "0-256")
        _check(
            self.worker_fetch_interval_ms,
            0 <= self.worker_fetch_interval_ms <= 10_000,
            "worker_fetch_interval_ms",
            "0-10000",
        )
        _check(
            self.worker_fetch_wait_ms,
            MIN_FETCH_WAIT_MS <= self.worker_fetch_wait_ms <= MAX_FETCH_WAIT_MS,
            "worker_fetch_wait_ms",
            f"{MIN_FETCH_WAIT_MS}-{MAX_FETCH_WAIT_MS}",
        )
        _check(
            self.worker_stall_timeout_s,
            0 < self.worker_stall_timeout_s <= 86400,
            "worker_stall_timeout_s",
            "> 0 and <= 86400",
        )
        _check(
            self.stream_config_refresh_s,
            0 < self.stream_config_refresh_s <= 3600,
            "stream_config_refresh_s",
            "> 0 and <= 3600",
        )
        _check(
            self.stream_park_after_s, 0 <= self.stream_park_after_s <= 3600, "stream_park_after_s", "0-3600"
        )
        _check(self.stream_aws_threads, 1 <= self.stream_aws_threads <= 256, "stream_aws_threads", "1-256")
        _check(
            self.stream_allowed_accounts,
            all(re.fullmatch(r"[0-9]{12}", a) for a in self.stream_accounts),
            "stream_allowed_accounts",
            "comma-separated 12-digit AWS account IDs",
        )
        _check(self.dedupe_retention_days, self.dedupe_retention_days >= 1, "dedupe_retention_days", ">= 1")
        for name, low, high in _JOB_RANGES:
            value = getattr(self, name)
            _check(value, low <= value <= high, name, f"{_number(low)}-{_number(high)}")
        _check(
            self.job_max_running_per_app,
            self.job_max_running_per_app <= self.job_max_running,
            "job_max_running_per_app",
            "at most INGEST_JOB_MAX_RUNNING",
        )
        _check(self.drain_timeout_s, self.drain_timeout_s > 0, "drain_timeout_s", "> 0")
        _check(self.app_cache_ttl_s, self.app_cache_ttl_s >= 0, "app_cache_ttl_s", ">= 0")
        _check(self.max_apps, 1 <= self.max_apps <= 1_000_000, "max_apps", "1-1000000")
        _check(self.auth_refresh_s, 0 < self.auth_refresh_s <= 3600, "auth_refresh_s", "> 0 and <= 3600")
        _check(self.auth_max_skew_s, 0 < self.auth_max_skew_s <= 86400, "auth_max_skew_s", "> 0 and <= 86400")
        _check(self.credentials_ttl_s, 60 <= self.credentials_ttl_s <= 43200, "credentials_ttl_s", "60-43200")
        _check(
            self.console_idle_timeout_s,
            60 <= self.console_idle_timeout_s <= 86400,
            "console_idle_timeout_s",
            "60-86400",
        )
        _check(
            self.console_session_max_s,
            self.console_idle_timeout_s <= self.console_session_max_s <= 7 * 86400,
            "console_session_max_s",
            "at least INGEST_CONSOLE_IDLE_TIMEOUT_S and at most 604800 (7 days)",
        )
        _check(
            self.console_stream_metrics_url,
            self.console_stream_metrics_url is None
            or re.fullmatch(r"http://[^/\s]+(/\S*)?", self.console_stream_metrics_url) is not None,
            "console_stream_metrics_url",
            "an http:// URL",
        )
        _check(
            self.getid_per_address_per_s,
            self.getid_per_address_per_s > 0,
            "getid_per_address_per_s",
            "> 0",
        )
        _check(self.probe_port, 0 <= self.probe_port <= 65535, "probe_port", "a TCP port 0-65535")
        for name in ("rate_limit_app_events_per_s", "rate_limit_address_requests_per_s"):
            value = getattr(self, name)
            _check(value, 0 <= value <= 1e9, name, "0 (off) to 1e9")
        try:
            ClientAddress.parse(self.trusted_proxies)
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}TRUSTED_PROXIES: {exc}") from exc
        for name in ("http_header_timeout_s", "http_idle_timeout_s", "http_body_timeout_s"):
            value = getattr(self, name)
            _check(value, 0 < value <= 3600, name, "> 0 and <= 3600")
        _check(self.http_min_body_rate, self.http_min_body_rate >= 1, "http_min_body_rate", ">= 1")
        _check(
            self.http_max_url_bytes,
            256 <= self.http_max_url_bytes <= 1 << 20,
            "http_max_url_bytes",
            "256-1048576",
        )
        _check(self.http_max_headers, 8 <= self.http_max_headers <= 10_000, "http_max_headers", "8-10000")
        _check(
            self.http_max_header_bytes,
            self.http_max_url_bytes <= self.http_max_header_bytes <= 16 << 20,
            "http_max_header_bytes",
            "at least INGEST_HTTP_MAX_URL_BYTES and at most 16 MiB",
        )
        _check(self.http_max_connections, self.http_max_connections >= 1, "http_max_connections", ">= 1")
        _check(
            self.http_body_budget_bytes,
            self.http_body_budget_bytes >= self.max_body_bytes,
            "http_body_budget_bytes",
            "at least INGEST_MAX_BODY_BYTES",
        )
        _check(self.cors_origins, len(self.cors_origins) <= 4096, "cors_origins", "at most 4096 characters")
        if self.kafka_security_protocol.startswith("SASL"):
            if self.kafka_sasl_mechanism is None:
                raise SettingsError(
                    f"{PREFIX}KAFKA_SASL_MECHANISM is required with "
                    f"{PREFIX}KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}"
                )
            if self.kafka_sasl_username is None or self.kafka_sasl_password is None:
                raise SettingsError(
                    f"{PREFIX}KAFKA_SASL_USERNAME and {PREFIX}KAFKA_SASL_PASSWORD are required "
                    f"with {PREFIX}KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}"
                )

    @property
    def topic_partitions(self) -> int:
        """``kafka_partitions``, with ``None`` read as CLUSTER_PARTITIONS, or
        EMBEDDED_PARTITIONS with the embedded broker."""
        if self.kafka_partitions is not None:
            return self.kafka_partitions
        return EMBEDDED_PARTITIONS if self.kafka_bootstrap is None else CLUSTER_PARTITIONS

    @property
    def edge_process_count(self) -> int:
        """``edge_processes``, with ``None`` read as the CPUs this process may use."""
        if self.edge_processes is not None:
            return self.edge_processes
        return len(os.sched_getaffinity(0))

    @property
    def stream_accounts(self) -> frozenset[str]:
        """``stream_allowed_accounts`` as a set; empty: any account."""
        return frozenset(a.strip() for a in self.stream_allowed_accounts.split(",") if a.strip())

    @property
    def import_dir(self) -> Path:
        """Where ``file://`` imports may read (``job_import_dir``)."""
        return self.job_import_dir or self.data_dir / "import"

    @property
    def export_dir(self) -> Path:
        """Where ``file://`` exports may write (``job_export_dir``)."""
        return self.job_export_dir or self.data_dir / "export"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "ingest.sqlite3"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read every ``INGEST_*`` variable once; ``overrides`` (CLI flags) win.

        Raises :class:`SettingsError` naming the variable for a bad value or an
        ``INGEST_*`` variable no setting knows (a typo must not pass silently).
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for var, raw in env.items():
            if not var.startswith(PREFIX):
                continue
            name = var[len(PREFIX) :].lower()
            parse = _FIELD_PARSERS.get(name)
            if parse is None:
                raise SettingsError(f"{var} is not a setting this version knows")
            values[name] = parse(var, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)  # type: ignore[arg-type]
        except TypeError as exc:
            raise SettingsError(str(exc)) from exc

    @classmethod
    def names(cls) -> frozenset[str]:
        """Every environment variable a setting is read from."""
        return frozenset(PREFIX + f.name.upper() for f in dataclasses.fields(cls))


def _number(value: float) -> str:
    """A bound as a setting's text would say it: 1099511627776, not 1.09951e+12."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _check(value: object, ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise SettingsError(f"{PREFIX}{name.upper()}={value!r}: expected {expected}")


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("true or false")


# The field types a variable can be parsed into, besides Literals of strings.
_PARSERS: dict[object, Callable[[str], object]] = {
    str: str,
    int: int,
    float: float,
    Path: Path,
    bool: _parse_bool,
}


def _parser(name: str, hint: object) -> Callable[[str, str], object]:
    """The parser of field ``name``'s variable, ``(var, raw) → value``, from
    its resolved type. A type it cannot parse raises TypeError here, when the
    module is imported, rather than when a deployment first sets the variable."""
    args = get_args(hint)
    optional = get_origin(hint) in (Union, UnionType) and type(None) in args
    if optional and len(args) != 2:
        raise TypeError(f"Settings.{name}: {hint} is not one type or None")
    base = next(arg for arg in args if arg is not type(None)) if optional else hint
    literal: tuple[object, ...] = get_args(base) if get_origin(base) is Literal else ()
    if literal and not all(isinstance(choice, str) for choice in literal):
        raise TypeError(f"Settings.{name}: {hint} is not a Literal of strings")
    convert = _PARSERS.get(base)
    if not literal and convert is None:
        raise TypeError(f"Settings.{name}: no parser for {hint}")
    type_name = getattr(base, "__name__", str(base))

    def parse(var: str, raw: str) -> object:
        if optional and raw == "":
            return None
        if literal:
            if raw not in literal:
                raise SettingsError(f"{var}={raw!r}: expected one of {', '.join(map(str, literal))}")
            return raw
        assert convert is not None
        try:
            return convert(raw)
        except ValueError as exc:
            expected = str(exc) if base is bool else f"a value of type {type_name}"
            raise SettingsError(f"{var}={raw!r}: expected {expected}") from exc

    return parse


# Field name → parser, from the resolved types (PEP 563 leaves strings in
# ``__annotations__``; get_type_hints evaluates them).
_FIELD_PARSERS = {name: _parser(name, hint) for name, hint in get_type_hints(Settings).items()}
