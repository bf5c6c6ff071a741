"""Kafka connection settings → aiokafka clients, topic names and topic setup."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, UnknownError
from aiokafka.helpers import create_ssl_context
from prometheus_client import Counter

from ingest.errors import BrokerError
from ingest.kafka.gapless import GaplessConsumer
from ingest.settings import MAX_FETCH_WAIT_MS, Settings

log = logging.getLogger(__name__)

EVENTS_TOPIC = "ingest.events"
ENDPOINTS_TOPIC = "ingest.endpoints"
DEADLETTER_TOPIC = "ingest.deadletter"
# Consumer groups: one per worker role, each reading its topic in full.
ENDPOINTS_GROUP = "ingest-endpoints"
KPIS_GROUP = "ingest-kpis"
STREAMS_GROUP = "ingest-streams"
# The dead-letter topic is unkeyed and low-volume: one partition keeps it in
# the order records failed.
DEADLETTER_PARTITIONS = 1
# How long a fetch may take while the consumer is behind (records beyond its
# position on the broker): Tansu gives up listing a partition's batches when
# the fetch's wait has passed and then answers nothing, so a backlog whose
# listing took longer than the short wait (INGEST_WORKER_FETCH_WAIT_MS) left
# its consumer stuck for good (measured: about 1,100 batches on s3rver after
# a crash of `ingest run` under load). With records there, the broker
# answers as soon as it has them. The caught-up wait may be set up to it.
FETCH_MAX_WAIT_BEHIND_MS = MAX_FETCH_WAIT_MS


def connection_options(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """Options every aiokafka client of ours shares: bootstrap, TLS, SASL."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=None if settings.kafka_ssl_cafile is None else str(settings.kafka_ssl_cafile),
            certfile=None if settings.kafka_ssl_certfile is None else str(settings.kafka_ssl_certfile),
            keyfile=None if settings.kafka_ssl_keyfile is None else str(settings.kafka_ssl_keyfile),
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def producer(
    settings: Settings, bootstrap: str, *, idempotence: bool, client_id: str = "ingest-edge"
) -> AIOKafkaProducer:
    """A producer of record batches its owner builds (the edge's Publisher,
    the streams worker's KafkaSender): acks=all, batches up to
    INGEST_KAFKA_MAX_BATCH_BYTES, bounded retry time."""
    return AIOKafkaProducer(
        **connection_options(settings, bootstrap),
        acks="all",
        enable_idempotence=idempotence,
        compression_type=None if settings.kafka_compression == "none" else settings.kafka_compression,
        max_batch_size=settings.kafka_max_batch_bytes,
        linger_ms=settings.kafka_linger_ms,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        client_id=client_id,
    )


def consumer(
    settings: Settings, bootstrap: str, *, group_id: str, gaps: Counter | None = None
) -> GaplessConsumer:
    """A group member that commits by hand, after its store write, and never
    moves past an offset the broker has not shown yet (:mod:`ingest.kafka.gapless`;
    ``gaps`` counts those it held at)."""
    return GaplessConsumer(
        **connection_options(settings, bootstrap),
        gaps=gaps,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=group_id,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=50 * 1024 * 1024,
        # How long the broker may hold an empty fetch while the worker keeps
        # up (INGEST_WORKER_FETCH_WAIT_MS; ingest.kafka.pacing reads it back
        # from the consumer). aiokafka's 500 ms default put a quarter second
        # between a write and its read-back on Tansu; our default 50 ms costs a
        # few idle fetches a second.
        fetch_max_wait_ms=settings.worker_fetch_wait_ms,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_session_timeout_ms // 3,
    )


def deadletter_producer(settings: Settings, bootstrap: str, *, idempotence: bool) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **connection_options(settings, bootstrap),
        acks="all",
        enable_idempotence=idempotence,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        client_id="ingest-deadletter",
    )


def admin(settings: Settings, bootstrap: str, *, client_id: str) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection_options(settings, bootstrap), client_id=client_id)


async def ensure_topics(settings: Settings, bootstrap: str) -> None:
    """Create the three topics if missing; check both main topics have the same
    partition count (one worker must own all of an endpoint's history)."""
    setup = admin(settings, bootstrap, client_id="ingest-setup")
    wanted = {
        EVENTS_TOPIC: settings.topic_partitions,
        ENDPOINTS_TOPIC: settings.topic_partitions,
        DEADLETTER_TOPIC: DEADLETTER_PARTITIONS,
    }
    try:
        await setup.start()
        existing = set(await setup.list_topics())
        missing = [
            NewTopic(name, count, settings.kafka_replication_factor)
            for name, count in wanted.items()
            if name not in existing
        ]
        if missing:
            try:
                await setup.create_topics(missing)
            except TopicAlreadyExistsError:
                log.info("topics were created concurrently by another process")
            log.info("created topics %s", ", ".join(t.name for t in missing))
        described = await setup.describe_topics([EVENTS_TOPIC, ENDPOINTS_TOPIC])
    except KafkaError as exc:
        raise BrokerError(f"could not set up topics on {bootstrap}: {exc!r}") from exc
    finally:
        await setup.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described}
    if counts.get(EVENTS_TOPIC) != counts.get(ENDPOINTS_TOPIC):
        raise BrokerError(
            f"{EVENTS_TOPIC} and {ENDPOINTS_TOPIC} must have the same partition count; found {counts}"
        )


async def start_producer(producer: Any) -> None:
    """``producer.start()``; BrokerError naming INGEST_KAFKA_IDEMPOTENCE when
    the broker refuses an idempotent producer (Tansu answers InitProducerId
    with UnknownError, the only request of an idempotent start that can), with
    what half started closed."""
    try:
        await producer.start()
    except UnknownError as exc:
        with contextlib.suppress(Exception):  # closing what half-started; the refusal is the story
            await producer.stop()
        raise BrokerError(
            "the Kafka broker refused an idempotent producer (InitProducerId answered "
            f"{type(exc).__name__}); set INGEST_KAFKA_IDEMPOTENCE=false for a broker "
            "without idempotent producers (Tansu)"
        ) from exc
