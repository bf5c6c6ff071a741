"""Every Prometheus metric the project exports, declared once.

Labels are small closed sets (route, status, outcome, reason, topic), never
IDs. Components receive a :class:`Metrics` built on a registry, so tests read
samples from a fresh ``CollectorRegistry``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Edge latencies run from sub-millisecond (a 202 from a warm producer) to the
# produce deadline (5 s by default); buckets cover both ends.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The edge's metrics. Outcomes: ``accepted`` (Kafka acknowledged it),
    ``rejected`` (400, ``reason`` says which rule), ``failed`` (no ack within the
    produce deadline: 500, the client retries)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # Counter: HTTP requests answered, by Pinpoint operation and status code.
        self.requests = Counter(
            "ingest_http_requests",
            "HTTP requests answered, by operation (route) and status code.",
            ["route", "status"],
            registry=registry,
        )
        # Histogram: time from request start to response, by operation.
        self.request_seconds = Histogram(
            "ingest_http_request_seconds",
            "Time from request start to response sent, by operation.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        # Gauge: requests admitted and not yet answered.
        self.in_flight = Gauge(
            "ingest_http_in_flight_requests",
            "Requests admitted and not yet answered.",
            registry=registry,
        )
        # Counter: requests refused with 429 before any work, by the limit hit.
        self.overloaded = Counter(
            "ingest_overload_rejections",
            "Requests answered 429 TooManyRequests, by the limit that was full.",
            ["limit"],
            registry=registry,
        )
        # Counter: API requests refused 403, by why (a closed set).
        self.auth_refusals = Counter(
            "ingest_auth_refusals",
            "API requests refused 403, by reason: missing (unsigned), unknown_key, bad_signature, "
            "expired (clock skew beyond the limit), out_of_scope (the key may not do that), "
            "bad_token (a session token that is not ours or has expired).",
            ["reason"],
            registry=registry,
        )
        # Counter: PutEvents events by outcome and rejection reason.
        self.events = Counter(
            "ingest_events",
            "Events by outcome (accepted, rejected, failed) and rejection reason.",
            ["outcome", "reason"],
            registry=registry,
        )
        # Counter: endpoint writes (PutEvents Endpoint, UpdateEndpoint(s)) by outcome.
        self.endpoints = Counter(
            "ingest_endpoints",
            "Endpoint writes by outcome (accepted, rejected, failed) and rejection reason.",
            ["outcome", "reason"],
            registry=registry,
        )
        # Histogram: time from a record batch's hand-over to the producer to its ack.
        self.produce_seconds = Histogram(
            "ingest_kafka_produce_seconds",
            "Time from handing a record batch to the Kafka producer to its acks=all ack.",
            ["topic"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        # Counter: record batches produced, by topic and outcome (acked, failed).
        self.produce_batches = Counter(
            "ingest_kafka_produce_batches",
            "Record batches sent to Kafka, by topic and outcome (acked, failed).",
            ["topic", "outcome"],
            registry=registry,
        )
        # Gauge: bytes of records waiting for a Kafka ack.
        self.buffer_bytes = Gauge(
            "ingest_producer_buffer_bytes",
            "Bytes of records handed to the producer and not yet acknowledged.",
            registry=registry,
        )
        # Gauge: the bound on ingest_producer_buffer_bytes; past it requests get 429.
        self.buffer_limit_bytes = Gauge(
            "ingest_producer_buffer_limit_bytes",
            "Bound on ingest_producer_buffer_bytes; past it requests are answered 429.",
            registry=registry,
        )
        # Gauge: 1 while /readyz answers 200.
        self.ready = Gauge(
            "ingest_ready",
            "1 while the process is ready (producer healthy, not draining), else 0.",
            registry=registry,
        )


# Records per store transaction: from one record to the most a poll may
# return (INGEST_WORKER_MAX_RECORDS is at most 100,000).
BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000, 100000)


class HttpMetrics:
    """Every listener's connections (``listener``: ``api`` or ``probes``) and
    what was refused at the door, before any app saw a request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Gauge: open connections per listener.
        self.connections = Gauge(
            "ingest_http_connections",
            "Open client connections, by listener (api, probes).",
            ["listener"],
            registry=registry,
        )
        # Counter: requests or connections refused by the HTTP server itself.
        self.refused = Counter(
            "ingest_http_refusals",
            "Requests or connections refused by the HTTP server before the app, by listener and reason: "
            "connections (cap reached), malformed, url (414), headers (431), body_size (413), "
            "budget (body bytes in flight, 429), shed (the app's admission full, 429), pipelined, "
            "header_timeout and body_timeout (408).",
            ["listener", "reason"],
            registry=registry,
        )


def offset_gaps(registry: CollectorRegistry, name: str) -> Counter:
    """Offset gaps a worker's consumer held at, by outcome: filled (the
    broker showed the missing records, read in order) or passed (still
    missing after the consumer's patience: records that may never be read;
    alert on it)."""
    return Counter(
        name,
        "Offset gaps a worker's consumer held at until the broker showed the records, by outcome: "
        "filled (read in order) or passed (still missing after the patience; possibly lost).",
        ["topic", "outcome"],
        registry=registry,
    )


class ConsumerMetrics:
    """What every consumer worker reports, labelled by its topic. Registered
    once per registry: `ingest run` runs both workers in one process, so they
    share one of these."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Gauge: records between the next offset to apply and the high watermark.
        self.lag = Gauge(
            "ingest_consumer_lag_records",
            "Records not yet applied, per partition (fetch high watermark minus the next offset to apply).",
            ["topic", "partition"],
            registry=registry,
        )
        # Counter: offset gaps the consumer held at (ingest.kafka.gapless).
        self.offset_gaps = offset_gaps(registry, "ingest_consumer_offset_gaps")


class WorkerMetrics:
    """The endpoint worker's metrics. ``consumer`` is the registry's shared
    :class:`ConsumerMetrics`; without one, this builds it (one worker alone)."""

    def __init__(self, registry: CollectorRegistry, consumer: ConsumerMetrics | None = None) -> None:
        self.lag = (consumer or ConsumerMetrics(registry)).lag
        # Counter: endpoint records by what the fold did with them.
        self.records = Counter(
            "ingest_endpoint_records",
            "Endpoint records by outcome: applied, superseded (version guard), deleted, "
            "deleted_app (of an app deleted since), dead_lettered.",
            ["outcome"],
            registry=registry,
        )
        # Counter: endpoints made INACTIVE by the 15-endpoints-per-user rule.
        self.deactivated = Counter(
            "ingest_endpoints_deactivated",
            "Endpoints made INACTIVE and stripped of their UserId by the 15-per-user rule.",
            registry=registry,
        )
        # Histogram: records per applied batch.
        self.batch_size = Histogram(
            "ingest_endpoint_batch_records",
            "Records per batch written to the store.",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000),
            registry=registry,
        )
        # Histogram: time of one store transaction.
        self.write_seconds = Histogram(
            "ingest_endpoint_write_seconds",
            "Time of one store transaction applying a batch.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        # Counter: store writes that failed and were retried.
        self.store_retries = Counter(
            "ingest_endpoint_store_retries",
            "Store writes that failed and will be retried after a backoff.",
            registry=registry,
        )


class KpiWorkerMetrics:
    """The KPI worker's metrics. ``consumer`` as for :class:`WorkerMetrics`."""

    def __init__(self, registry: CollectorRegistry, consumer: ConsumerMetrics | None = None) -> None:
        self.lag = (consumer or ConsumerMetrics(registry)).lag
        # Counter: events by what the KPI worker did with them.
        self.records = Counter(
            "ingest_kpi_events",
            "Events read by the KPI worker, by outcome: aggregated (counted once), duplicate (event ID "
            "seen already), too_old (dated before the dedupe window), too_new (dated more than a day "
            "ahead of the worker's clock), deleted_app (of an app deleted since), dead_lettered "
            "(undecodable or unappliable).",
            ["outcome"],
            registry=registry,
        )
        # Histogram: events per KPI store transaction.
        self.batch_size = Histogram(
            "ingest_kpi_batch_events",
            "Events per batch written to the KPI aggregates in one store transaction.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        # Histogram: time of one KPI store transaction.
        self.write_seconds = Histogram(
            "ingest_kpi_write_seconds",
            "Time of one store transaction deduplicating and aggregating a batch of events.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        # Counter: KPI store writes that failed and were retried.
        self.store_retries = Counter(
            "ingest_kpi_store_retries",
            "KPI store writes that failed and will be retried after a backoff.",
            registry=registry,
        )
        # Counter: dedupe marks dropped as their day left the window.
        self.marks_expired = Counter(
            "ingest_kpi_dedupe_marks_expired",
            "Event dedupe marks dropped because their day left the INGEST_DEDUPE_RETENTION_DAYS window.",
            registry=registry,
        )


class StreamMetrics:
    """The streams worker's metrics. ``destination`` is the stream's kind
    (kinesis, firehose, kafka); ``reason`` a delivery failure's
    (:data:`ingest.streams.aws.Reason`) or a dead letter's (too_large,
    undecodable): closed sets, never ARNs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Counter: offset gaps the streams worker's consumer held at.
        self.offset_gaps = offset_gaps(registry, "ingest_stream_offset_gaps")
        # Counter: records a destination acknowledged.
        self.delivered = Counter(
            "ingest_stream_delivered_records",
            "Event-stream records the destination acknowledged, by destination kind.",
            ["destination"],
            registry=registry,
        )
        # Counter: records sent again after a partial failure named them.
        self.retried = Counter(
            "ingest_stream_retried_records",
            "Event-stream records sent again because the destination's answer named them as failed.",
            ["destination"],
            registry=registry,
        )
        # Counter: failed delivery calls and failed records, by reason.
        self.failures = Counter(
            "ingest_stream_failures",
            "Event-stream delivery failures: whole calls and single records the destination refused, "
            "by destination kind and reason (throttled, unavailable, not_found, access_denied, "
            "credentials, invalid, other). Each is retried; none is dropped.",
            ["destination", "reason"],
            registry=registry,
        )
        # Counter: records sent to ingest.deadletter instead of the stream.
        self.dead_lettered = Counter(
            "ingest_stream_dead_lettered_records",
            "Events dead-lettered instead of streamed, by destination kind and reason: too_large (over "
            "the service's record limit as JSON) or undecodable.",
            ["destination", "reason"],
            registry=registry,
        )
        # Gauge: destinations parked now.
        self.parked = Gauge(
            "ingest_stream_parked_destinations",
            "Stream targets that could not deliver for INGEST_STREAM_PARK_AFTER_S and wait, their apps' "
            "events held (other targets deliver on), by destination kind.",
            ["destination"],
            registry=registry,
        )
        # Gauge: records left for the furthest-behind target of each kind.
        self.lag = Gauge(
            "ingest_stream_lag_records",
            "Records of ingest.events past the furthest-behind target of each destination kind "
            "(the fetch high watermark minus its next offset, over the worker's partitions).",
            ["destination"],
            registry=registry,
        )
        # Histogram: time of one delivery call that got an answer.
        self.call_seconds = Histogram(
            "ingest_stream_call_seconds",
            "Time of one delivery call (PutRecords, PutRecordBatch, a Kafka produce) that was answered.",
            ["destination"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        # Counter: failed store reads (the configuration, a batch's stored endpoints).
        self.config_failures = Counter(
            "ingest_stream_config_failures",
            "Store reads of the streams worker that failed: the apps' event streams (the ones in hand "
            "are kept) or a batch's stored endpoints (its records streamed without them).",
            registry=registry,
        )


class SupervisorMetrics:
    """`ingest run`'s own, beside its children's (``process`` is a role name
    of its configuration: ``edge-0`` … ``edge-N``, ``worker-endpoints``,
    ``worker-kpis``; a closed set, one per supervised process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Counter: a supervised process exited while not draining and was started again.
        self.restarts = Counter(
            "ingest_process_restarts",
            "Supervised processes that exited while `ingest run` was not draining, and were started again.",
            ["process"],
            registry=registry,
        )
        # Gauge: whether a supervised process's /readyz answered 200 at the last poll.
        self.ready = Gauge(
            "ingest_process_ready",
            "1 while the supervised process's /readyz answered 200 at the last poll, else 0.",
            ["process"],
            registry=registry,
        )
        # Counter: /metrics scrapes of a supervised process that failed (its samples left out).
        self.scrape_failures = Counter(
            "ingest_process_scrape_failures",
            "Scrapes of a supervised process's /metrics that failed or timed out; its samples were "
            "left out of that answer.",
            ["process"],
            registry=registry,
        )


class JobMetrics:
    """The jobs worker's metrics. ``type`` is IMPORT or EXPORT, ``status``
    COMPLETED or FAILED, ``outcome`` imported, failed or exported: closed
    sets, never job or app IDs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Gauge: jobs this process runs now.
        self.running = Gauge(
            "ingest_jobs_running",
            "Import and export jobs this process holds and runs now.",
            registry=registry,
        )
        # Counter: jobs that ended here, by type and final status.
        self.finished = Counter(
            "ingest_jobs_finished",
            "Import and export jobs this process took to their end, by type and JobStatus "
            "(COMPLETED, FAILED).",
            ["type", "status"],
            registry=registry,
        )
        # Counter: rows checkpointed (imports) and endpoints written (exports).
        self.rows = Counter(
            "ingest_job_rows",
            "Rows an import checkpointed after Kafka acknowledged them (imported, or failed: a bad row) "
            "and endpoints an export wrote (exported). A row done again after a restart counts again.",
            ["type", "outcome"],
            registry=registry,
        )
