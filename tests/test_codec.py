"""ingest.codec: records round-trip through Avro single-object encoding, any
consumer decodes them with the .avsc files and plain fastavro alone, and
anything else decodes to DecodeError."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.codec import (
    DELETE_SCHEMA,
    ENDPOINT_SCHEMA,
    EVENT_SCHEMA,
    HEADER_BYTES,
    MARKER,
    MAX_MS,
    MIN_MS,
    Codec,
    DecodeError,
    endpoint_datum,
    event_datum,
)
from ingest.endpoints import EndpointDelete
from ingest.records import (
    Demographic,
    EndpointContext,
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


@FAST
@given(record=st.one_of(upserts, deletes))
def test_endpoint_records_decode_back_to_themselves(record: EndpointUpsert | EndpointDelete) -> None:
    encoded = _upsert_bytes(record) if isinstance(record, EndpointUpsert) else _delete_bytes(record)
    times = [record.received_at_ms, getattr(record, "effective_date_ms", None)]
    if all(t is None or MIN_MS <= t <= MAX_MS for t in times):
        assert CODEC.decode_endpoint_record(encoded) == record
    else:  # a time no record of ours can carry is refused, and so dead-lettered
        with pytest.raises(DecodeError, match="outside years 1-9999"):
            CODEC.decode_endpoint_record(encoded)


def test_an_event_is_not_an_endpoint_record() -> None:
    with pytest.raises(DecodeError, match="not an endpoint record"):
        CODEC.decode_endpoint_record(_event_bytes(EVENT))


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


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc3", MARKER, MARKER + b"\x00" * 7, b"\xc3\x02" + b"\x00" * 20, b"{}", b"\x00" * 64],
    ids=repr,
)
def test_decode_refuses_what_is_not_single_object_encoding(data: bytes) -> None:
    with pytest.raises(DecodeError):
        CODEC.decode(data)


# --- "not sent" is not "sent empty" ----------------------------------------------

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
