"""ingest.codec: records round-trip through Avro single-object encoding, any
consumer decodes them with the .avsc files and plain fastavro alone, the
generated readers give back exactly the records fastavro reads, and anything
else decodes to DecodeError."""

from __future__ import annotations

import io
import json
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, get_args

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest.errors import DecodeError
from ingest.records.avro import AvroDecodeError, compile_decoder, write_long
from ingest.records.codec import (
    DELETE_SCHEMA,
    ENDPOINT_SCHEMA,
    EVENT_SCHEMA,
    HEADER_BYTES,
    MARKER,
    MAX_MS,
    MIN_MS,
    RECORD_TYPES,
    Codec,
    endpoint_datum,
    event_datum,
)
from ingest.records.values import (
    Demographic,
    EndpointContext,
    EndpointDelete,
    EndpointUpsert,
    Event,
    Location,
    Session,
    Source,
)

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
SCHEMA_FILES = sorted(SCHEMAS.glob("*.avsc"))
CODEC = Codec()
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies over ingest.records --------------------------------------------

# Any unicode but surrogates (category Cs), which UTF-8, and so Avro's
# string, cannot carry.
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
doubles = st.floats(allow_nan=False, allow_infinity=False)


def optional(filled: st.SearchStrategy[Any], empty: Any = None) -> st.SearchStrategy[Any]:
    """Not sent (None), sent empty (``empty``, when the type has one), or filled."""
    choices = [st.none(), filled] if empty is None else [st.none(), st.just(empty), filled]
    return st.one_of(*choices)


optional_texts = optional(texts, "")
optional_longs = optional(longs)
optional_doubles = optional(doubles)
text_maps = optional(st.dictionaries(texts, texts, max_size=4), {})
double_maps = optional(st.dictionaries(texts, doubles, max_size=4), {})
multi_maps = optional(st.dictionaries(texts, st.lists(texts, max_size=3), max_size=4), {})


def _all_texts(record: type[Any]) -> st.SearchStrategy[Any]:
    """A record whose members are all ``str | None``."""
    return st.builds(record, **{name: optional_texts for name in record._fields})


demographics = optional(_all_texts(Demographic))
locations = optional(
    st.builds(
        Location,
        city=optional_texts,
        country=optional_texts,
        latitude=optional_doubles,
        longitude=optional_doubles,
        postal_code=optional_texts,
        region=optional_texts,
    )
)
sessions = optional(
    st.builds(
        Session,
        id=texts,
        start_timestamp=texts,
        stop_timestamp=optional_texts,
        duration_ms=optional_longs,
    )
)
contexts = optional(
    st.builds(
        EndpointContext,
        user_id=optional_texts,
        channel_type=optional_texts,
        demographic=demographics,
        location=locations,
    )
)
events = st.builds(
    Event,
    app_id=texts,
    endpoint_id=texts,
    event_id=texts,
    request_id=texts,
    received_at_ms=longs,
    event_type=texts,
    timestamp=texts,
    timestamp_ms=longs,
    session=sessions,
    attributes=text_maps,
    metrics=double_maps,
    app_package_name=optional_texts,
    app_title=optional_texts,
    app_version_code=optional_texts,
    client_sdk_version=optional_texts,
    sdk_name=optional_texts,
    endpoint=contexts,
)
upserts = st.builds(
    EndpointUpsert,
    app_id=texts,
    endpoint_id=texts,
    request_id=texts,
    received_at_ms=longs,
    source=st.sampled_from(get_args(Source)),
    address=optional_texts,
    attributes=multi_maps,
    channel_type=optional_texts,
    demographic=demographics,
    effective_date=optional_texts,
    effective_date_ms=optional_longs,
    endpoint_status=optional_texts,
    location=locations,
    metrics=double_maps,
    opt_out=optional_texts,
    client_request_id=optional_texts,
    user_id=optional_texts,
    user_attributes=multi_maps,
)


def _event_bytes(event: Event) -> bytes:
    return CODEC.encode_event(event)


def _upsert_bytes(upsert: EndpointUpsert) -> bytes:
    return CODEC.encode_endpoint(upsert)


deletes = st.builds(EndpointDelete, app_id=texts, endpoint_id=texts, request_id=texts, received_at_ms=longs)


def _delete_bytes(delete: EndpointDelete) -> bytes:
    return CODEC.encode_delete(delete)


# Schema full name → (records of it, encoder, expected datum).
WRITERS: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], bytes], Callable[[Any], dict[str, Any]]]] = {
    EVENT_SCHEMA: (events, _event_bytes, event_datum),
    ENDPOINT_SCHEMA: (upserts, _upsert_bytes, endpoint_datum),
    DELETE_SCHEMA: (deletes, _delete_bytes, lambda d: d._asdict()),
}
any_record = st.one_of(events.map(_event_bytes), upserts.map(_upsert_bytes), deletes.map(_delete_bytes))


EVENT = Event(
    app_id="a",
    endpoint_id="e",
    event_id="x",
    request_id="r",
    received_at_ms=0,
    event_type="t",
    timestamp="2024-01-01T00:00:00Z",
    timestamp_ms=1_704_067_200_000,
)
UPSERT = EndpointUpsert(app_id="a", endpoint_id="e", request_id="r", received_at_ms=0, source="PUT_EVENTS")
# Its last bytes are a string's: a reader that trusted a cut-short slice would return.
EVENT_ENDING_IN_A_STRING = EVENT._replace(endpoint=EndpointContext(location=Location(region="Oslo")))


def _typed(value: Any) -> Any:
    """``value`` with its types spelled out, to compare decoded records: a
    NamedTuple equals any tuple of its values, and -0.0 equals 0.0."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return (type(value).__name__, *(_typed(item) for item in value))
    if isinstance(value, dict):
        return ("dict", [(key, _typed(item)) for key, item in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(item) for item in value])
    if isinstance(value, float):
        return ("float", value.hex())
    return (type(value).__name__, value)


def _in_range(*times: int | None) -> bool:
    return all(t is None or MIN_MS <= t <= MAX_MS for t in times)


@FAST
@given(record=st.one_of(upserts, deletes))
def test_endpoint_records_decode_back_to_themselves(record: EndpointUpsert | EndpointDelete) -> None:
    encoded = _upsert_bytes(record) if isinstance(record, EndpointUpsert) else _delete_bytes(record)
    if _in_range(record.received_at_ms, getattr(record, "effective_date_ms", None)):
        assert _typed(CODEC.decode_endpoint_record(encoded)) == _typed(record)
    else:  # a time no record of ours can carry is refused, and so dead-lettered
        with pytest.raises(DecodeError, match="outside years 1-9999"):
            CODEC.decode_endpoint_record(encoded)


@FAST
@given(event=events)
def test_events_decode_back_to_themselves(event: Event) -> None:
    encoded = _event_bytes(event)
    if _in_range(event.received_at_ms, event.timestamp_ms):
        assert _typed(CODEC.decode_event(encoded)) == _typed(event)
    else:
        with pytest.raises(DecodeError, match="outside years 1-9999"):
            CODEC.decode_event(encoded)


@pytest.mark.parametrize("field", ["received_at_ms", "timestamp_ms"])
def test_event_times_are_kept_within_years_1_to_9999(field: str) -> None:
    def at(millis: int) -> bytes:
        changes: dict[str, Any] = {field: millis}
        return _event_bytes(EVENT._replace(**changes))

    for millis in (MIN_MS, MAX_MS):
        assert getattr(CODEC.decode_event(at(millis)), field) == millis
    for millis in (MIN_MS - 1, MAX_MS + 1):
        with pytest.raises(DecodeError, match=f"{field}={millis} is outside years 1-9999"):
            CODEC.decode_event(at(millis))


def test_an_event_is_not_an_endpoint_record() -> None:
    with pytest.raises(DecodeError, match="not an endpoint record"):
        CODEC.decode_endpoint_record(_event_bytes(EVENT))


@pytest.mark.parametrize("kind", ["upsert", "delete"])
def test_an_endpoint_record_is_not_an_event(kind: str) -> None:
    encoded = _upsert_bytes(UPSERT) if kind == "upsert" else _delete_bytes(EndpointDelete("a", "e", "r", 0))
    with pytest.raises(DecodeError, match="not an event"):
        CODEC.decode_event(encoded)


# --- round trip through ingest.codec -------------------------------------------


@FAST
@given(event=events)
def test_event_round_trips(event: Event) -> None:
    assert CODEC.decode(CODEC.encode_event(event)) == (EVENT_SCHEMA, event_datum(event))


@FAST
@given(upsert=upserts)
def test_endpoint_upsert_round_trips(upsert: EndpointUpsert) -> None:
    assert CODEC.decode(CODEC.encode_endpoint(upsert)) == (ENDPOINT_SCHEMA, endpoint_datum(upsert))


@FAST
@given(data=st.data())
def test_records_sharing_nested_records_round_trip_in_any_order(data: st.DataObject) -> None:
    """A batch's events share one EndpointContext object (and records may share
    a Session, Demographic or Location); each still encodes as itself."""
    shared_contexts = data.draw(st.lists(contexts, min_size=1, max_size=3), label="contexts")
    shared_sessions = data.draw(st.lists(sessions, min_size=1, max_size=3), label="sessions")
    batch = data.draw(
        st.lists(
            st.builds(
                lambda event, endpoint, session: event._replace(endpoint=endpoint, session=session),
                events,
                endpoint=st.sampled_from(shared_contexts),
                session=st.sampled_from(shared_sessions),
            ),
            max_size=8,
        ),
        label="events",
    )
    for event in batch:
        assert CODEC.decode(CODEC.encode_event(event)) == (EVENT_SCHEMA, event_datum(event))


# --- any consumer: the .avsc files and plain fastavro ----------------------------


def _parse(path: Path) -> Any:
    return fastavro.parse_schema(json.loads(path.read_text()))


def _fingerprint(parsed: Any) -> bytes:
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


KNOWN_FINGERPRINTS = sorted(_fingerprint(_parse(path)) for path in SCHEMA_FILES)


def test_every_schema_file_has_a_writer() -> None:
    assert {_parse(path)["name"] for path in SCHEMA_FILES} == set(WRITERS)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda path: path.name)
@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_records_decode_with_the_avsc_file_and_plain_fastavro(path: Path, data: st.DataObject) -> None:
    parsed = _parse(path)
    records, encode, expected = WRITERS[parsed["name"]]
    record = data.draw(records, label="record")

    encoded = encode(record)

    assert encoded.startswith(b"\xc3\x01" + _fingerprint(parsed))
    body = io.BytesIO(encoded[HEADER_BYTES:])
    assert fastavro.schemaless_reader(body, parsed, None) == expected(record)
    assert body.read() == b"", "the record is the whole message"
    # And the body is exactly what fastavro itself writes for that datum.
    written = io.BytesIO()
    fastavro.schemaless_writer(written, parsed, expected(record))
    assert encoded[HEADER_BYTES:] == written.getvalue()


# --- the generated readers: exactly what fastavro reads ----------------------------


def _from_datum(schema: Any, value: Any) -> Any:
    """fastavro's datum of ``schema`` mapped onto our records."""
    if isinstance(schema, list):
        return None if value is None else _from_datum(schema[1 - schema.index("null")], value)
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(kind, (dict, list)):
        return _from_datum(kind, value)
    if kind == "record":
        cls = RECORD_TYPES[schema["name"].rpartition(".")[2]]
        return cls(**{f["name"]: _from_datum(f["type"], value[f["name"]]) for f in schema["fields"]})
    if kind == "array":
        return [_from_datum(schema["items"], item) for item in value]
    if kind == "map":
        return {key: _from_datum(schema["values"], item) for key, item in value.items()}
    return value


def _fastavro_record(parsed: Any, body: bytes) -> Any:
    """The record fastavro reads from ``body``, which must be all of it."""
    stream = io.BytesIO(body)
    datum = fastavro.schemaless_reader(stream, parsed, None)
    assert stream.read() == b"", "fastavro read all of the body"
    return _from_datum(parsed, datum)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda path: path.name)
@FAST
@given(data=st.data())
def test_generated_decoder_gives_back_the_encoded_record(path: Path, data: st.DataObject) -> None:
    parsed = _parse(path)
    records, encode, _ = WRITERS[parsed["name"]]
    decode = compile_decoder(parsed, RECORD_TYPES)
    record = data.draw(records, label="record")
    encoded = encode(record)

    decoded, end = decode(encoded, HEADER_BYTES)

    assert end == len(encoded)
    assert _typed(decoded) == _typed(record)
    assert _typed(decoded) == _typed(_fastavro_record(parsed, encoded[HEADER_BYTES:]))


def _write_in_blocks(schema: Any, value: Any, out: bytearray, per_block: int) -> None:
    """Avro binary of ``value`` with every array and map written as blocks of
    ``per_block`` items, alternately with a negative count (followed by the
    block's size in bytes, as the spec allows any writer to) and a positive
    one; everything else is written by fastavro."""
    if isinstance(schema, list):
        branch = 1 - schema.index("null")
        if value is None:
            write_long(out, 1 - branch)
        else:
            write_long(out, branch)
            _write_in_blocks(schema[branch], value, out, per_block)
        return
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(kind, (dict, list)):
        _write_in_blocks(kind, value, out, per_block)
    elif kind == "record":
        for field in schema["fields"]:
            _write_in_blocks(field["type"], value[field["name"]], out, per_block)
    elif kind == "enum":
        write_long(out, schema["symbols"].index(value))
    elif kind in ("array", "map"):
        items = list(value) if kind == "array" else list(value.items())
        for number, start in enumerate(range(0, len(items), per_block)):
            block = bytearray()
            for item in items[start : start + per_block]:
                if kind == "array":
                    _write_in_blocks(schema["items"], item, block, per_block)
                else:
                    _write_in_blocks("string", item[0], block, per_block)
                    _write_in_blocks(schema["values"], item[1], block, per_block)
            count = len(items[start : start + per_block])
            if number % 2 == 0:
                write_long(out, -count)
                write_long(out, len(block))
            else:
                write_long(out, count)
            out += block
        write_long(out, 0)
    else:
        written = io.BytesIO()
        fastavro.schemaless_writer(written, fastavro.parse_schema(kind), value)
        out += written.getvalue()


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda path: path.name)
@FAST
@given(data=st.data())
def test_blocks_with_negative_counts_decode(path: Path, data: st.DataObject) -> None:
    parsed = _parse(path)
    records, _, expected = WRITERS[parsed["name"]]
    decode = compile_decoder(parsed, RECORD_TYPES)
    record = data.draw(records, label="record")
    written = bytearray()
    _write_in_blocks(parsed, expected(record), written, data.draw(st.integers(1, 3), label="per_block"))
    body = bytes(written)
    # The bytes are what the spec means: fastavro reads the record back.
    assert _typed(_fastavro_record(parsed, body)) == _typed(record)

    decoded, end = decode(body, 0)

    assert end == len(body)
    assert _typed(decoded) == _typed(record)


def test_a_map_written_with_negative_counts_decodes() -> None:
    """One worked example of the above: {"a": ["x"], "b": []} as two blocks."""
    record = UPSERT._replace(attributes={"a": ["x"], "b": []})
    encoded = _upsert_bytes(record)
    # Union branch 1, one block of 2 entries: "a" → [one block of 1: "x"], "b" → [], end.
    plain = b"\x02" + b"\x04" + b"\x02a" + b"\x02\x02x\x00" + b"\x02b\x00" + b"\x00"
    assert plain in encoded
    # The same with every block's count negative and followed by its size in bytes.
    blocked = b"\x02" + b"\x01\x0e" + b"\x02a" + b"\x01\x04\x02x\x00" + b"\x01\x06" + b"\x02b\x00" + b"\x00"
    rewritten = encoded.replace(plain, blocked)
    assert _fastavro_record(CODEC.schema(ENDPOINT_SCHEMA), rewritten[HEADER_BYTES:]) == record
    assert _typed(CODEC.decode_endpoint_record(rewritten)) == _typed(record)


class _Reordered(NamedTuple):
    request_id: str
    received_at_ms: int
    endpoint_id: str
    app_id: str


def test_records_are_built_in_their_own_field_order() -> None:
    decode = compile_decoder(CODEC.schema(DELETE_SCHEMA), {"EndpointDelete": _Reordered})
    encoded = _delete_bytes(EndpointDelete(app_id="a", endpoint_id="e", request_id="r", received_at_ms=7))
    decoded, _ = decode(encoded, HEADER_BYTES)
    assert _typed(decoded) == _typed(
        _Reordered(request_id="r", received_at_ms=7, endpoint_id="e", app_id="a")
    )


def _fields(*names: str) -> type[Any]:
    """A NamedTuple class of these fields."""
    cls: type[Any] = namedtuple("Fields", names)  # type: ignore[misc]
    return cls


@pytest.mark.parametrize(
    ("name", "cls", "match"),
    [
        ("Demographic", _fields(*Demographic._fields[:-1]), "record Demographic has fields"),
        ("Demographic", _fields(*Demographic._fields, "extra"), "record Demographic has fields"),
        ("EndpointDelete", _fields("app_id", "endpoint_id", "request_id", "received_at"), "has fields"),
        ("EndpointDelete", _fields("app_id", "endpoint_id", "request_id"), "has fields"),
    ],
    ids=["a field too few", "a field too many", "a field renamed", "top record, a field too few"],
)
def test_compile_decoder_refuses_a_class_whose_fields_differ(name: str, cls: type[Any], match: str) -> None:
    schema = CODEC.schema(ENDPOINT_SCHEMA if name == "Demographic" else DELETE_SCHEMA)
    with pytest.raises(ValueError, match=match):
        compile_decoder(schema, {**RECORD_TYPES, name: cls})


def test_compile_decoder_refuses_a_missing_class_or_one_not_a_namedtuple() -> None:
    types = {name: cls for name, cls in RECORD_TYPES.items() if name != "Location"}
    with pytest.raises(ValueError, match="no class given for record Location"):
        compile_decoder(CODEC.schema(ENDPOINT_SCHEMA), types)
    with pytest.raises(TypeError, match="not a NamedTuple"):
        compile_decoder(CODEC.schema(DELETE_SCHEMA), {"EndpointDelete": dict})


class One(NamedTuple):
    value: Any


def _one(avro_type: Any) -> Any:
    """A parsed record schema ``One`` of one field ``value``."""
    return fastavro.parse_schema(
        {"type": "record", "name": "t.One", "fields": [{"name": "value", "type": avro_type}]}
    )


@pytest.mark.parametrize(
    "avro_type",
    [
        {"type": "fixed", "name": "F", "size": 4},
        ["null", "string", "long"],
        ["string", "long"],
        {"type": "long", "logicalType": "timestamp-millis"},
        {"type": "array", "items": {"type": "fixed", "name": "G", "size": 2}},
    ],
    ids=repr,
)
def test_compile_decoder_refuses_a_type_it_cannot_read(avro_type: Any) -> None:
    with pytest.raises(ValueError, match="supported"):
        compile_decoder(_one(avro_type), {"One": One})


ENUM = {"type": "enum", "name": "E", "symbols": ["A", "B"]}


@pytest.mark.parametrize(
    ("avro_type", "body", "match"),
    [
        ("string", b"", "the data ends inside the record"),
        ("string", b"\x0aab", "a length 5 past the end"),
        ("bytes", b"\x0aab", "a length 5 past the end"),
        ("string", b"\x82\x01" + b"\x00" * 64, "a length 65 past the end"),
        ("string", b"\x01" + b"\x00" * 8, "a negative length -1"),
        ("bytes", b"\xff\x01" + b"\x00" * 8, "a negative length -128"),
        (["null", "string"], b"", "the data ends inside the record"),
        (["null", "string"], b"\x04\x00", "a union index 2 of a two-branch union"),
        (["null", "string"], b"\x01\x00", "a union index -1 of a two-branch union"),
        (["null", "string"], b"\x84\x00\x00", "a union index 2 of a two-branch union"),
        (ENUM, b"\x04", "an enum index 2 of 2 symbols"),
        (ENUM, b"\x01", "an enum index -1 of 2 symbols"),
        (ENUM, b"\x80\x01", "an enum index 64 of 2 symbols"),
        ("string", b"\x02\xff", "a string is not UTF-8"),
        ("string", b"\x06\xed\xa0\x80", "a string is not UTF-8"),  # an encoded surrogate
        ("double", b"\x00" * 7, "the data ends inside the record"),
        ("float", b"\x00" * 3, "the data ends inside the record"),
        (["null", "double"], b"\x02" + b"\x00" * 7, "the data ends inside the record"),
        ("long", b"\x80\x80", "a varint runs past the end"),
        ("long", b"\xff" * 9 + b"\x7f", "a varint beyond 64 bits"),
        ("long", b"\x80" * 10 + b"\x00", "a varint longer than 10 bytes"),
        ("int", b"\x80\x80\x80\x80\x10", "an int 2147483648 beyond 32 bits"),
        ("boolean", b"\x02", "a boolean byte 2"),
        ({"type": "map", "values": "string"}, b"\x7e", "a block of 63 items past the end"),
        ({"type": "array", "items": "double"}, b"\x02" + b"\x00" * 7, "a block of 1 items past the end"),
        ({"type": "array", "items": "long"}, b"\x03", "a varint runs past the end"),
        ({"type": "array", "items": "long"}, b"\x02\x02", "the data ends inside the record"),
    ],
    ids=repr,
)
def test_decoder_refuses_malformed_bytes_with_one_error(avro_type: Any, body: bytes, match: str) -> None:
    decode = compile_decoder(_one(avro_type), {"One": One})
    with pytest.raises(AvroDecodeError, match=match):
        decode(body, 0)


@pytest.mark.parametrize(
    ("avro_type", "body", "value"),
    [
        (["null", "string"], b"\x82\x00\x02x", "x"),  # an over-long union index
        (["null", "string"], b"\x80\x00", None),
        ("string", b"\x82\x00x", "x"),  # an over-long length
        ("long", b"\xff" * 9 + b"\x01", -(2**63)),
        ("long", b"\xfe" + b"\xff" * 8 + b"\x01", 2**63 - 1),
        ("int", b"\xff\xff\xff\xff\x0f", -(2**31)),
        ("boolean", b"\x01", True),
        ("float", b"\x00\x00\xc0\x3f", 1.5),
        (ENUM, b"\x82\x00", "B"),
        ({"type": "map", "values": "long"}, b"\x02\x02a\x02\x02\x02a\x04\x00", {"a": 2}),  # last key wins
        ({"type": "array", "items": "string"}, b"\x03\x08\x02x\x02y\x00", ["x", "y"]),  # count -2, 4 bytes
    ],
    ids=repr,
)
def test_decoder_reads_unusual_but_valid_bytes_as_fastavro_does(
    avro_type: Any, body: bytes, value: Any
) -> None:
    decode = compile_decoder(_one(avro_type), {"One": One})
    assert decode(body, 0) == (One(value), len(body))
    assert fastavro.schemaless_reader(io.BytesIO(body), _one(avro_type), None) == {"value": value}


# --- everything else is DecodeError --------------------------------------------


def _decode_or_decode_error(data: bytes) -> None:
    """Random bytes may, rarely, be a record; then it must be one of ours."""
    try:
        name, datum = CODEC.decode(data)
    except DecodeError:
        return
    assert name in WRITERS
    assert isinstance(datum, dict)


@FAST
@given(data=st.binary())
def test_decode_answers_arbitrary_bytes_with_decode_error(data: bytes) -> None:
    _decode_or_decode_error(data)


@FAST
@given(fp=st.sampled_from(KNOWN_FINGERPRINTS), body=st.binary(max_size=200))
def test_decode_answers_a_known_header_and_arbitrary_body_with_decode_error(fp: bytes, body: bytes) -> None:
    _decode_or_decode_error(MARKER + fp + body)


@FAST
@given(encoded=any_record, data=st.data())
def test_decode_refuses_a_truncated_record(encoded: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1), label="cut")
    with pytest.raises(DecodeError):
        CODEC.decode(encoded[:cut])


@FAST
@given(encoded=any_record, extra=st.binary(min_size=1, max_size=16))
def test_decode_refuses_stray_bytes_after_a_record(encoded: bytes, extra: bytes) -> None:
    with pytest.raises(DecodeError, match="stray bytes"):
        CODEC.decode(encoded + extra)


@FAST
@given(
    encoded=any_record, fp=st.binary(min_size=8, max_size=8).filter(lambda fp: fp not in KNOWN_FINGERPRINTS)
)
def test_decode_refuses_an_unknown_fingerprint(encoded: bytes, fp: bytes) -> None:
    with pytest.raises(DecodeError, match="unknown schema fingerprint"):
        CODEC.decode(MARKER + fp + encoded[HEADER_BYTES:])


# The generated readers, by the fingerprint of their schema.
DECODERS = {_fingerprint(_parse(path)): compile_decoder(_parse(path), RECORD_TYPES) for path in SCHEMA_FILES}
EVENT_FINGERPRINT = _fingerprint(CODEC.schema(EVENT_SCHEMA))


def _read(data: bytes) -> Event | EndpointUpsert | EndpointDelete:
    """The reader of the topic a record of this fingerprint goes to."""
    if data[2:HEADER_BYTES] == EVENT_FINGERPRINT:
        return CODEC.decode_event(data)
    return CODEC.decode_endpoint_record(data)


def _read_or_decode_error(data: bytes) -> None:
    """Bytes the readers take must be a whole record that fastavro reads the same."""
    try:
        record = _read(data)
    except DecodeError:
        return
    name, datum = CODEC.decode(data)
    assert _typed(record) == _typed(_from_datum(CODEC.schema(name), datum))


@FAST
@given(fp=st.sampled_from(KNOWN_FINGERPRINTS), body=st.binary(max_size=200))
def test_readers_answer_a_known_header_and_arbitrary_body_with_decode_error_or_a_record(
    fp: bytes, body: bytes
) -> None:
    _read_or_decode_error(MARKER + fp + body)


@FAST
@given(encoded=any_record, data=st.data())
def test_readers_take_a_corrupted_record_as_fastavro_does_or_refuse_it(
    encoded: bytes, data: st.DataObject
) -> None:
    corrupted = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        at = data.draw(st.integers(HEADER_BYTES, len(corrupted)), label="at")
        byte = data.draw(st.integers(0, 255), label="byte")
        edit = data.draw(st.sampled_from(["replace", "insert", "delete"]), label="edit")
        if edit == "insert":
            corrupted.insert(at, byte)
        elif at < len(corrupted) and edit == "replace":
            corrupted[at] = byte
        elif at < len(corrupted):
            del corrupted[at]
    _read_or_decode_error(bytes(corrupted))


@FAST
@given(encoded=any_record)
@example(encoded=_event_bytes(EVENT_ENDING_IN_A_STRING))
def test_readers_refuse_every_truncation_of_a_record(encoded: bytes) -> None:
    decode = DECODERS[encoded[2:HEADER_BYTES]]
    for cut in range(len(encoded)):
        with pytest.raises(DecodeError):
            _read(encoded[:cut])
        if cut >= HEADER_BYTES:  # and the generated reader itself never reads past the end
            with pytest.raises(AvroDecodeError):
                decode(encoded[:cut], HEADER_BYTES)


@FAST
@given(encoded=any_record, extra=st.binary(min_size=1, max_size=16))
def test_readers_refuse_stray_bytes_after_a_record(encoded: bytes, extra: bytes) -> None:
    with pytest.raises(DecodeError, match=f"followed by {len(extra)} stray bytes"):
        _read(encoded + extra)


@FAST
@given(
    encoded=any_record, fp=st.binary(min_size=8, max_size=8).filter(lambda fp: fp not in KNOWN_FINGERPRINTS)
)
def test_readers_refuse_an_unknown_fingerprint(encoded: bytes, fp: bytes) -> None:
    for read in (CODEC.decode_event, CODEC.decode_endpoint_record):
        with pytest.raises(DecodeError, match="unknown schema fingerprint"):
            read(MARKER + fp + encoded[HEADER_BYTES:])


@pytest.mark.parametrize(
    "data",
    [None, b"", b"\xc3", MARKER, MARKER + b"\x00" * 7, b"\xc3\x02" + b"\x00" * 20, b"{}", b"\x00" * 64],
    ids=repr,
)
@pytest.mark.parametrize("decode", ["decode", "decode_event", "decode_endpoint_record"])
def test_decode_refuses_what_is_not_single_object_encoding(data: bytes | None, decode: str) -> None:
    with pytest.raises(DecodeError):
        getattr(CODEC, decode)(data)


# --- "not sent" is not "sent empty" ----------------------------------------------


@pytest.mark.parametrize(("member", "empty"), [("attributes", {}), ("metrics", {}), ("app_title", "")])
def test_event_member_not_sent_and_sent_empty_decode_apart(member: str, empty: Any) -> None:
    not_sent = CODEC.decode(CODEC.encode_event(EVENT))[1]
    sent_empty = CODEC.decode(CODEC.encode_event(EVENT._replace(**{member: empty})))[1]
    assert not_sent[member] is None
    assert sent_empty[member] == empty


@pytest.mark.parametrize(
    ("member", "empty"),
    [("attributes", {}), ("user_attributes", {}), ("metrics", {}), ("address", "")],
)
def test_endpoint_member_not_sent_and_sent_empty_decode_apart(member: str, empty: Any) -> None:
    not_sent = CODEC.decode(CODEC.encode_endpoint(UPSERT))[1]
    sent_empty = CODEC.decode(CODEC.encode_endpoint(UPSERT._replace(**{member: empty})))[1]
    assert not_sent[member] is None
    assert sent_empty[member] == empty


def test_an_attribute_sent_with_no_values_decodes_as_an_empty_list() -> None:
    upsert = UPSERT._replace(attributes={"interests": []})
    assert CODEC.decode(CODEC.encode_endpoint(upsert))[1]["attributes"] == {"interests": []}
