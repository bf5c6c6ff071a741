"""One delivery call to one destination, for each of the three kinds, and
the limits each service puts on a call.

A :class:`Sender` takes records already converted to the stream's JSON and
answers, per record, None (delivered) or the :class:`RecordFailure` the
service named; a call that fails as a whole raises
:class:`~ingest.errors.DeliveryError`. Retrying, backing off and holding
records back are the worker's (:mod:`ingest.streams.worker`).

* Kinesis Data Streams: ``PutRecords``, the partition key the endpoint ID
  (so one endpoint's events land on one shard, in order);
* Firehose: ``PutRecordBatch``, each record one JSON object terminated by a
  newline (what S3 delivery and Athena's JSON SerDe read);
* Kafka: the topic on the pipeline's own cluster, JSON values keyed
  ``"{app_id}:{endpoint_id}"`` like the pipeline's own topics, acks=all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from ingest.errors import DeliveryError
from ingest.kafka.publish import key_hash
from ingest.streams.aws import (
    FIREHOSE_MAX_RECORD_BYTES,
    FIREHOSE_MAX_RECORDS,
    FIREHOSE_MAX_REQUEST_BYTES,
    KINESIS_MAX_RECORD_BYTES,
    KINESIS_MAX_RECORDS,
    KINESIS_MAX_REQUEST_BYTES,
    AwsDelivery,
    RecordFailure,
)
from ingest.streams.destinations import Destination, Kind

log = logging.getLogger(__name__)

# One produce request of aiokafka is at most 1 MiB by default
# (max_request_size); a record, with its key and framing, must fit in one.
KAFKA_MAX_RECORD_BYTES = 1024 * 1024 - 1024
# Records of one Kafka "call": what the worker awaits at once.
KAFKA_MAX_RECORDS = 500
KAFKA_MAX_REQUEST_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """What one call to a destination may carry."""

    max_records: int
    max_request_bytes: int
    max_record_bytes: int
    """Of one record as :func:`counted` counts it."""


LIMITS: dict[Kind, Limits] = {
    "kinesis": Limits(KINESIS_MAX_RECORDS, KINESIS_MAX_REQUEST_BYTES, KINESIS_MAX_RECORD_BYTES),
    "firehose": Limits(FIREHOSE_MAX_RECORDS, FIREHOSE_MAX_REQUEST_BYTES, FIREHOSE_MAX_RECORD_BYTES),
    "kafka": Limits(KAFKA_MAX_RECORDS, KAFKA_MAX_REQUEST_BYTES, KAFKA_MAX_RECORD_BYTES),
}


@dataclass(frozen=True, slots=True)
class Target:
    """Where a stream delivers, and as whom: a lane of the worker per target."""

    destination: Destination
    role_arn: str
    external_id: str | None


class Item(NamedTuple):
    """One record to deliver, and where it came from on ``ingest.events``."""

    partition: int
    offset: int
    key: bytes
    """The Kafka key, ``"{app_id}:{endpoint_id}"``."""
    endpoint_id: str
    data: bytes
    """The stream's JSON of the event (:func:`ingest.streams.record.encode`)."""
    size: int
    """Bytes its lane's service counts against its limits (:func:`counted`),
    computed once: every call's cut reads it."""


def counted(kind: Kind, key: bytes, endpoint_id: str, data: bytes) -> int:
    """Bytes the service counts against its limits: Kinesis the data and
    the partition key, Firehose the data and its newline, Kafka the value
    and the key."""
    if kind == "kinesis":
        return len(data) + len(endpoint_id.encode())
    if kind == "firehose":
        return len(data) + 1
    return len(data) + len(key)


def chunks(items: Sequence[Item], kind: Kind) -> list[list[Item]]:
    """``items`` in order, cut into calls within the kind's limits. Every
    item must fit a call alone (the worker dead-letters those that don't)."""
    limits = LIMITS[kind]
    out: list[list[Item]] = []
    chunk: list[Item] = []
    used = 0
    for item in items:
        size = item.size
        if chunk and (len(chunk) >= limits.max_records or used + size > limits.max_request_bytes):
            out.append(chunk)
            chunk, used = [], 0
        chunk.append(item)
        used += size
    if chunk:
        out.append(chunk)
    return out


class Sender(Protocol):
    async def send(self, target: Target, items: Sequence[Item]) -> list[RecordFailure | None]:
        """One call: per item, None when delivered, else why not. Raises
        DeliveryError when the call as a whole failed (nothing delivered, as
        far as the caller can tell)."""
        ...


class KinesisSender:
    def __init__(self, aws: AwsDelivery) -> None:
        self._aws = aws

    async def send(self, target: Target, items: Sequence[Item]) -> list[RecordFailure | None]:
        return await self._aws.put_records(
            target.destination,
            target.role_arn,
            target.external_id,
            [(item.endpoint_id, item.data) for item in items],
        )


class FirehoseSender:
    def __init__(self, aws: AwsDelivery) -> None:
        self._aws = aws

    async def send(self, target: Target, items: Sequence[Item]) -> list[RecordFailure | None]:
        return await self._aws.put_record_batch(
            target.destination,
            target.role_arn,
            target.external_id,
            [item.data + b"\n" for item in items],
        )


class KafkaSender:
    """Produces to topics of the pipeline's own cluster, creating a topic
    (``partitions`` of them) the first time a stream names it."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        admin: AIOKafkaAdminClient,
        *,
        partitions: int,
        replication_factor: int,
        timeout_s: float,
    ) -> None:
        self._producer = producer
        self._admin = admin
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._timeout_s = timeout_s
        self._known: set[str] = set()

    async def send(self, target: Target, items: Sequence[Item]) -> list[RecordFailure | None]:
        topic = target.destination.name
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._ensure(topic)
                count = len(await self._producer.partitions_for(topic))
                await asyncio.gather(*[await ack for ack in self._batches(topic, count, items)])
        except TimeoutError as exc:
            raise DeliveryError(
                f"Kafka topic {topic}: no acknowledgement in {self._timeout_s:.0f} s",
                reason="unavailable",
                retriable=True,
            ) from exc
        except KafkaError as exc:
            raise DeliveryError(
                f"Kafka topic {topic}: {type(exc).__name__}", reason="unavailable", retriable=True
            ) from exc
        return [None] * len(items)

    def _batches(self, topic: str, count: int, items: Sequence[Item]) -> list[Awaitable[Any]]:
        """Hand ``items`` to the producer as record batches, one open batch a
        partition (aiokafka's per-record ``send()`` costs 15-25 µs of CPU, a
        batch append about 2), each item on the partition its key hashes to
        as aiokafka's default partitioner would put it; → an awaitable per
        batch, each giving the batch's acknowledgement. A key's records keep
        their order: one partition, appended and handed over in order."""
        producer = self._producer
        open_batches: dict[int, Any] = {}
        handed: list[Awaitable[Any]] = []
        for item in items:
            partition = (key_hash(item.key) & 0x7FFFFFFF) % count
            batch = open_batches.get(partition)
            if batch is None:
                batch = open_batches[partition] = producer.create_batch()
            if batch.append(timestamp=None, key=item.key, value=item.data) is None:
                handed.append(producer.send_batch(batch, topic, partition=partition))
                batch = open_batches[partition] = producer.create_batch()
                batch.append(timestamp=None, key=item.key, value=item.data)
        handed += [producer.send_batch(b, topic, partition=p) for p, b in open_batches.items()]
        return handed

    async def _ensure(self, topic: str) -> None:
        if topic in self._known:
            return
        if topic not in set(await self._admin.list_topics()):
            try:
                await self._admin.create_topics([NewTopic(topic, self._partitions, self._replication_factor)])
                log.info("created topic %s for an event stream", topic)
            except TopicAlreadyExistsError:
                pass  # another worker made it first
        self._known.add(topic)
