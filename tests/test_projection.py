"""The projection readers (``avro.compile_projection``) and the KPI worker's
reading of events: a projection gives the full reader's record with the
skipped fields replaced by placeholders, accepts whatever the full reader
accepts, and the KPIs of events read so are the KPIs of the full events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ingest.errors import DecodeError
from ingest.folds import kpis
from ingest.metrics import KpiWorkerMetrics
from ingest.records.avro import AvroDecodeError, compile_decoder, compile_projection
from ingest.records.codec import (
    DELETE_SCHEMA,
    ENDPOINT_SCHEMA,
    EVENT_SCHEMA,
    HEADER_BYTES,
    MAX_MS,
    RECORD_TYPES,
)
from ingest.records.values import EndpointUpsert, Event
from ingest.store.base import context_user, fresh_events
from ingest.workers.sinks import KpiSink
from tests.test_codec import CODEC, FAST, deletes, events, upserts

WRITERS: dict[str, Callable[[Any], bytes]] = {
    EVENT_SCHEMA: CODEC.encode_event,
    ENDPOINT_SCHEMA: CODEC.encode_endpoint,
    DELETE_SCHEMA: CODEC.encode_delete,
}
RECORDS = {EVENT_SCHEMA: events, ENDPOINT_SCHEMA: upserts, DELETE_SCHEMA: deletes}


def _projected(record: Any, fields: dict[str, frozenset[str]]) -> Any:
    """What a projection should read of ``record``: each skipped field its
    class's default, else its value's type's zero; nested records likewise."""
    cls = type(record)
    kept = fields.get(cls.__name__)
    values = []
    for name in cls._fields:
        value = getattr(record, name)
        if kept is not None and name not in kept:
            value = cls._field_defaults[name] if name in cls._field_defaults else type(value)()
        elif isinstance(value, tuple) and hasattr(value, "_fields"):
            value = _projected(value, fields)
        values.append(value)
    return cls(*values)


def _subsets(record: type[Any]) -> st.SearchStrategy[dict[str, frozenset[str]]]:
    """Random fields to keep of a record and of the records nested in it
    (an upsert's source, an enum, has no placeholder: it is always kept)."""
    names = [record.__name__, "Session", "EndpointContext", "Demographic", "Location"]
    always = {"EndpointUpsert": frozenset({"source"})}
    return st.fixed_dictionaries({}, optional={name: _kept(name, always.get(name)) for name in names})


def _kept(record: str, always: frozenset[str] | None) -> st.SearchStrategy[frozenset[str]]:
    fields = st.frozensets(st.sampled_from(RECORD_TYPES[record]._fields))
    return fields if always is None else fields.map(always.union)


@FAST
@given(data=st.data(), schema=st.sampled_from(sorted(WRITERS)))
def test_a_projection_reads_the_full_record_with_placeholders(data: st.DataObject, schema: str) -> None:
    record = data.draw(RECORDS[schema], label="record")
    fields = data.draw(_subsets(type(record)), label="fields")
    encoded = WRITERS[schema](record)
    project = compile_projection(CODEC.schema(schema), RECORD_TYPES, fields)
    assert project(encoded, HEADER_BYTES) == (_projected(record, fields), len(encoded))


@FAST
@given(data=st.data(), schema=st.sampled_from(sorted(WRITERS)))
def test_a_projection_accepts_what_the_full_reader_accepts(data: st.DataObject, schema: str) -> None:
    """Damaged records: whatever the full reader reads, the projection reads
    the same of; what it refuses, it refuses with AvroDecodeError only."""
    record = data.draw(RECORDS[schema], label="record")
    fields = data.draw(_subsets(type(record)), label="fields")
    body = bytearray(WRITERS[schema](record)[HEADER_BYTES:])
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        if body:
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    body = body[: data.draw(st.integers(0, len(body)), label="cut")]
    full = compile_decoder(CODEC.schema(schema), RECORD_TYPES)
    project = compile_projection(CODEC.schema(schema), RECORD_TYPES, fields)
    try:
        whole, end = full(bytes(body), 0)
    except AvroDecodeError:
        try:
            project(bytes(body), 0)
        except AvroDecodeError:
            pass
        return
    assert project(bytes(body), 0) == (_projected(whole, fields), end)


SINK = KpiSink(None, codec=CODEC, metrics=KpiWorkerMetrics(CollectorRegistry()), retention_days=7)  # type: ignore[arg-type]
# Events whose types the KPIs tell apart, attributes and metrics that count.
kpi_events = st.builds(
    lambda event, kind, attributes, metrics: event._replace(
        event_type=kind,
        timestamp_ms=event.timestamp_ms % MAX_MS,
        received_at_ms=event.received_at_ms % MAX_MS,
        attributes=attributes,
        metrics=metrics,
    ),
    events,
    st.sampled_from([kpis.PURCHASE, kpis.PUSH_OPENED, kpis.SESSION_STOP, *kpis.AUTH_EVENTS, "other"]),
    st.one_of(st.none(), st.fixed_dictionaries({}, optional={"_currency": st.text(max_size=3)})),
    st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {}, optional={"_item_price": st.floats(0, 1e4), "_quantity": st.floats(0, 1e3)}
        ),
    ),
)


@FAST
@given(batch=st.lists(kpi_events, max_size=20))
def test_the_kpi_worker_reading_gives_the_kpis_of_the_full_events(batch: list[Event]) -> None:
    read = [SINK.decode(CODEC.encode_event(event)) for event in batch]
    oldest, newest = -(10**9), 10**9
    full = fresh_events(batch, oldest, newest, kpis.EventOutcome())
    projected = fresh_events(read, oldest, newest, kpis.EventOutcome())
    assert list(full) == list(projected)
    assert kpis.effects((e, context_user(e)) for e in full.values()) == kpis.effects(
        (e, context_user(e)) for e in projected.values()
    )


@FAST
@given(event=kpi_events)
def test_the_kpi_worker_skips_what_no_kpi_reads(event: Event) -> None:
    read = SINK.decode(CODEC.encode_event(event))
    if event.event_type in kpis.DETAILED_TYPES:
        assert read == event
    else:
        assert read == _projected(event, kpis.EVENT_FIELDS)
        assert read.request_id == "" and read.attributes is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"\xc3\x01",
        CODEC.encode_endpoint(EndpointUpsert("app", "ep", "req", 0, "UPDATE_ENDPOINT")),
        CODEC.encode_event(Event("a", "e", "i", "r", 0, "t", "s", 0))[:-3],
        CODEC.encode_event(Event("a", "e", "i", "r", 0, "t", "s", 0)) + b"\x00",
        CODEC.encode_event(Event("a", "e", "i", "r", 0, "t", "s", MAX_MS + 1)),
    ],
)
def test_the_kpi_worker_refuses_what_the_codec_refuses(value: bytes | None) -> None:
    with pytest.raises(DecodeError) as codec:
        CODEC.decode_event(value)
    with pytest.raises(DecodeError) as sink:
        SINK.decode(value)
    assert str(sink.value) == str(codec.value)


class _Two(NamedTuple):
    kept: int
    tags: list[str]


def test_compile_projection_refuses_fields_it_cannot_skip_or_that_are_not_there() -> None:
    schema = {
        "type": "record",
        "name": "Two",
        "fields": [
            {"name": "kept", "type": "long"},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
        ],
    }
    with pytest.raises(ValueError, match="no default"):
        compile_projection(schema, {"Two": _Two}, {"Two": frozenset({"kept"})})
    with pytest.raises(ValueError, match="no fields"):
        compile_projection(schema, {"Two": _Two}, {"Two": frozenset({"kept", "tags", "other"})})
    # Whole, it reads as compile_decoder does.
    encoded = b"\x04\x02\x02a\x00"
    assert compile_projection(schema, {"Two": _Two}, {})(encoded, 0) == (_Two(2, ["a"]), 5)
