"""Read a topic to its end and decode with fastavro and schemas/ alone.

Deliberately independent of ``ingest.codec``: it shows any consumer can decode
what the edge writes with nothing but the ``.avsc`` files.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def schemas_by_header() -> dict[bytes, Any]:
    found = {}
    for path in SCHEMAS.glob("*.avsc"):
        parsed = fastavro.parse_schema(json.loads(path.read_text()))
        fp = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
        found[b"\xc3\x01" + bytes.fromhex(fp)] = parsed
    return found


def decode(value: bytes, schemas: dict[bytes, Any]) -> dict[str, Any]:
    schema = schemas[value[:10]]
    datum = fastavro.schemaless_reader(io.BytesIO(value[10:]), schema, None)
    assert isinstance(datum, dict)
    return datum


async def _read_raw(bootstrap: str, topic: str, timeout_s: float, *, missing_ok: bool) -> list[Any]:
    """Every record on ``topic`` up to the high watermark seen on fetch (Tansu's
    ListOffsets(latest) is wrong, so end offsets come from fetch responses).
    ``missing_ok``: a topic not there yet (or whose partitions the broker
    does not list yet) has no records, rather than failing."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: list[Any] = []
    try:
        if missing_ok and topic not in await consumer.topics():
            return out
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if missing_ok and not partitions:
            return out
        assert partitions, f"{topic} has no partitions"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        idle_polls = 0
        while loop.time() < deadline and idle_polls < 3:
            batch = await consumer.getmany(timeout_ms=300, max_records=10_000)
            got = sum(len(records) for records in batch.values())
            for records in batch.values():
                out.extend(records)
            caught_up = True
            for tp in partitions:
                high = consumer.highwater(tp)
                caught_up = caught_up and (high is None or await consumer.position(tp) >= high)
            idle_polls = idle_polls + 1 if got == 0 and caught_up else 0
    finally:
        await consumer.stop()
    return out


def read_topic(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list[tuple[bytes, dict[str, Any]]]:
    """Every record on ``topic``, each (key, its Avro datum)."""
    schemas = schemas_by_header()
    records = asyncio.run(_read_raw(bootstrap, topic, timeout_s, missing_ok=False))
    return [(r.key, decode(r.value, schemas)) for r in records]


def read_raw(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list[Any]:
    """Every record on ``topic`` as aiokafka gives it; none if the topic is not there yet."""
    return asyncio.run(_read_raw(bootstrap, topic, timeout_s, missing_ok=True))


async def read_partition(
    bootstrap: str, tp: TopicPartition, start: int, done: Callable[[list[Any]], bool], within_s: float
) -> list[Any]:
    """Records of one partition from ``start`` until ``done`` holds or ``within_s`` passes."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = asyncio.get_running_loop().time() + within_s
        while not done(records) and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=300)
            records.extend(batch.get(tp, []))
    finally:
        await consumer.stop()
    return records


def assert_dead_letters(
    dead: list[Any],
    *,
    key: bytes,
    values: list[bytes | None],
    reasons: list[str],
    origin_topic: str,
    placed: list[tuple[int, int]],
) -> None:
    """``dead`` (records read from the dead-letter topic) are ``values``, in
    order, each with its key, a reason naming ``reasons``' entry, and the
    origin headers of its (partition, offset) in ``placed`` on ``origin_topic``."""
    assert [r.value for r in dead] == values
    for record, reason, (partition, offset) in zip(dead, reasons, placed, strict=True):
        headers = {name: raw.decode() for name, raw in record.headers}
        assert record.key == key
        assert reason in headers["ingest-reason"], headers
        assert headers["ingest-origin-topic"] == origin_topic
        assert headers["ingest-origin-partition"] == str(partition)
        assert headers["ingest-origin-offset"] == str(offset)
