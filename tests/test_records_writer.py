"""The generated writers' shortcuts: records unpacked by position, and the
members one request shares encoded once per object. Output stays what
fastavro writes, whichever records came before."""

from __future__ import annotations

import io
from typing import Any, NamedTuple

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.records.avro import compile_encoder
from ingest.records.codec import EVENT_SCHEMA, event_datum
from tests.test_codec import CODEC, FAST, events, longs, texts

SCHEMA: Any = fastavro.parse_schema(
    {
        "type": "record",
        "name": "test.Pair",
        "fields": [{"name": "name", "type": ["null", "string"]}, {"name": "total", "type": "long"}],
    }
)


class Pair(NamedTuple):
    total: int  # not the schema's order: unpacked by name, written in the schema's
    name: str | None


def fastavro_bytes(schema: Any, datum: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, datum)
    return out.getvalue()


@FAST
@given(st.lists(st.tuples(st.sampled_from([None, "a", "é" * 70]) | texts, longs), max_size=10))
def test_shared_fields_encode_as_fastavro_after_any_records(pairs: list[tuple[str | None, int]]) -> None:
    encode = compile_encoder(SCHEMA, {"Pair": Pair}, frozenset(("name", "total")))
    for name, total in pairs:
        out = bytearray()
        encode(out, Pair(total, name))
        assert bytes(out) == fastavro_bytes(SCHEMA, {"name": name, "total": total})


@FAST
@given(st.lists(events, min_size=1, max_size=6), st.data())
def test_events_of_one_request_encode_as_fastavro(batch: list[Any], data: st.DataObject) -> None:
    """The request's members are one object in each of its events, as
    validation builds them; every event still encodes as itself."""
    first = batch[0]
    shared = [
        e._replace(app_id=first.app_id, request_id=first.request_id, received_at_ms=first.received_at_ms)
        if data.draw(st.booleans())
        else e
        for e in batch
    ]
    schema = CODEC.schema(EVENT_SCHEMA)
    for event in shared:
        assert CODEC.encode_event(event)[10:] == fastavro_bytes(schema, event_datum(event))


def test_a_class_of_other_fields_is_refused_at_compile_time() -> None:
    class Other(NamedTuple):
        name: str
        amount: int

    with pytest.raises(ValueError, match=r"Other is not a NamedTuple of the fields of test\.Pair"):
        compile_encoder(SCHEMA, {"Pair": Other})
