"""The bytes on Kafka are a contract with every consumer, so they are pinned.

A round-trip test passes whatever order or type a schema's fields have, as
long as writer and reader agree; consumers built from an older copy of
``schemas/`` do not. So each schema's CRC-64-AVRO fingerprint is pinned (any
change to its Parsing Canonical Form: a field renamed, reordered or retyped,
a union's branches swapped), and per schema a fully populated record and a
minimal one are pinned as the exact bytes the Codec writes, which plain
fastavro reads back to the expected datum. Changing a schema on purpose means
a new schema (new name or version) beside the old, and new golden rows here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from ingest.records.codec import Codec, schema_dir
from ingest.records.values import (
    Demographic,
    EndpointContext,
    EndpointDelete,
    EndpointUpsert,
    Event,
    Location,
    Session,
)

# Module globals rather than fixtures, so these checks can be pointed at an
# edited copy of schemas/ by hand, to see which of them a change trips.
SCHEMA_DIR = schema_dir()
CODEC = Codec(SCHEMA_DIR)

# CRC-64-AVRO of each schema's Parsing Canonical Form, in wire byte order
# (what follows the C3 01 marker).
FINGERPRINTS = {
    "endpoint.avsc": "290e42d4b3f5ff46",
    "endpoint_delete.avsc": "c0387cbdc9f1a6b0",
    "event.avsc": "8cd78d3bcbffd89a",
}


class Golden(NamedTuple):
    """One pinned record: its schema file, the record, and its encoding."""

    schema_file: str
    record: Event | EndpointUpsert | EndpointDelete
    hex: str


def _encode(record: Event | EndpointUpsert | EndpointDelete) -> bytes:
    if isinstance(record, Event):
        return CODEC.encode_event(record)
    if isinstance(record, EndpointUpsert):
        return CODEC.encode_endpoint(record)
    return CODEC.encode_delete(record)


def _decode(record: Event | EndpointUpsert | EndpointDelete) -> Callable[[bytes], object]:
    """The reader of the topic ``record`` goes to."""
    return CODEC.decode_event if isinstance(record, Event) else CODEC.decode_endpoint_record


DEMOGRAPHIC = Demographic(
    app_version="2.4.1",
    locale="de_DE",
    make="Google",
    model="Pixel 8",
    model_version="8a",
    platform="android",
    platform_version="14",
    timezone="Europe/Berlin",
)
LOCATION = Location(
    city="München",
    country="DE",
    latitude=48.1375,
    longitude=-11.575,
    postal_code="80331",
    region="BY",
)

GOLDEN: dict[str, Golden] = {
    "event-full": Golden(
        "event.avsc",
        Event(
            app_id="app1",
            endpoint_id="u 1/2",
            event_id="0d0e4c6c-7f39-4d8c-9d5a-1e2f3a4b5c6d",
            request_id="req-1",
            received_at_ms=1_767_225_600_123,
            event_type="_session.start",
            timestamp="2026-01-01T00:00:00.120Z",
            timestamp_ms=1_767_225_600_120,
            session=Session(
                id="s-1",
                start_timestamp="2026-01-01T00:00:00Z",
                stop_timestamp="2026-01-01T00:05:00Z",
                duration_ms=300_000,
            ),
            attributes={"screen": "Kasse", "": "empty key"},
            metrics={"price": 9.99, "count": -2.0},
            app_package_name="com.example.app",
            app_title="Example",
            app_version_code="241",
            client_sdk_version="6.0.0",
            sdk_name="aws-amplify-js",
            endpoint=EndpointContext(
                user_id="user-ü",
                channel_type="GCM",
                demographic=DEMOGRAPHIC,
                location=LOCATION,
            ),
        ),
        (
            "c3018cd78d3bcbffd89a08617070310a7520312f324830643065346336632d376633392d346438632d396435"
            "612d3165326633613462356336640a7265712d31f6a1d5edee661c5f73657373696f6e2e7374617274303230"
            "32362d30312d30315430303a30303a30302e3132305af0a1d5edee660206732d3128323032362d30312d3031"
            "5430303a30303a30305a0228323032362d30312d30315430303a30353a30305a02c0cf2402040c7363726565"
            "6e0a4b617373650012656d707479206b65790002040a70726963657b14ae47e1fa23400a636f756e74000000"
            "00000000c000021e636f6d2e6578616d706c652e617070020e4578616d706c650206323431020a362e302e30"
            "021c6177732d616d706c6966792d6a7302020e757365722dc3bc020647434d02020a322e342e31020a64655f"
            "4445020c476f6f676c65020e506978656c203802043861020e616e64726f696402043134021a4575726f7065"
            "2f4265726c696e0202104dc3bc6e6368656e02044445029a999999991148400266666666662627c0020a3830"
            "33333102044259"
        ),
    ),
    "event-minimal": Golden(
        "event.avsc",
        Event(
            app_id="a",
            endpoint_id="e",
            event_id="1",
            request_id="r",
            received_at_ms=0,
            event_type="t",
            timestamp="1969-12-31T23:59:59.999Z",
            timestamp_ms=-1,
        ),
        (
            "c3018cd78d3bcbffd89a026102650231027200027430313936392d31322d33315432333a35393a35392e3939"
            "395a01000000000000000000"
        ),
    ),
    "endpoint-full": Golden(
        "endpoint.avsc",
        EndpointUpsert(
            app_id="app1",
            endpoint_id="u 1/2",
            request_id="req-2",
            received_at_ms=1_767_225_600_123,
            source="UPDATE_ENDPOINTS_BATCH",
            address="fcm-token-ä",
            attributes={"interests": ["cats", "dogs"], "none": []},
            channel_type="GCM",
            demographic=DEMOGRAPHIC,
            effective_date="2026-01-01T00:00:00Z",
            effective_date_ms=1_767_225_600_000,
            endpoint_status="ACTIVE",
            location=LOCATION,
            metrics={"score": 0.5},
            opt_out="NONE",
            client_request_id="client-req",
            user_id="user-ü",
            user_attributes={"plan": ["pro"]},
        ),
        (
            "c301290e42d4b3f5ff4608617070310a7520312f320a7265712d32f6a1d5edee6604021866636d2d746f6b65"
            "6e2dc3a4020412696e7465726573747304086361747308646f677300086e6f6e650000020647434d02020a32"
            "2e342e31020a64655f4445020c476f6f676c65020e506978656c203802043861020e616e64726f6964020431"
            "34021a4575726f70652f4265726c696e0228323032362d30312d30315430303a30303a30305a0280a0d5edee"
            "66020c4143544956450202104dc3bc6e6368656e02044445029a999999991148400266666666662627c0020a"
            "38303333310204425902020a73636f7265000000000000e03f0002084e4f4e450214636c69656e742d726571"
            "020e757365722dc3bc020208706c616e020670726f0000"
        ),
    ),
    "endpoint-minimal": Golden(
        "endpoint.avsc",
        EndpointUpsert(
            app_id="a",
            endpoint_id="e",
            request_id="r",
            received_at_ms=0,
            source="PUT_EVENTS",
        ),
        "c301290e42d4b3f5ff46026102650272000000000000000000000000000000",
    ),
    # EndpointDelete has no optional member: "full" is long values and a
    # non-ASCII ID, "minimal" empty strings and zero.
    "endpoint_delete-full": Golden(
        "endpoint_delete.avsc",
        EndpointDelete(
            app_id="app1",
            endpoint_id="gerät/1",
            request_id="req-3",
            received_at_ms=1_767_225_600_123,
        ),
        "c301c0387cbdc9f1a6b0086170703110676572c3a4742f310a7265712d33f6a1d5edee66",
    ),
    "endpoint_delete-minimal": Golden(
        "endpoint_delete.avsc",
        EndpointDelete(app_id="", endpoint_id="", request_id="", received_at_ms=0),
        "c301c0387cbdc9f1a6b000000000",
    ),
}


def _datum(value: Any) -> Any:
    """A record → the Avro datum fastavro gives for it (NamedTuples as dicts)."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {name: _datum(getattr(value, name)) for name in value._fields}
    if isinstance(value, Mapping):
        return {key: _datum(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_datum(item) for item in value]
    return value


def _parsed(schema_file: str) -> Any:
    return fastavro.parse_schema(json.loads((SCHEMA_DIR / schema_file).read_text()))


def test_every_schema_is_pinned() -> None:
    """A new schema file needs a pinned fingerprint and golden records."""
    files = sorted(path.name for path in SCHEMA_DIR.glob("*.avsc"))
    assert files == sorted(FINGERPRINTS)
    assert sorted({golden.schema_file for golden in GOLDEN.values()}) == files


@pytest.mark.parametrize("schema_file", sorted(FINGERPRINTS))
def test_schema_fingerprint_is_pinned(schema_file: str) -> None:
    canonical = to_parsing_canonical_form(_parsed(schema_file))
    assert fingerprint(canonical, "CRC-64-AVRO") == FINGERPRINTS[schema_file]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_codec_writes_the_golden_bytes(name: str) -> None:
    golden = GOLDEN[name]
    assert _encode(golden.record).hex() == golden.hex


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_fastavro_reads_the_golden_bytes(name: str) -> None:
    """What a consumer holding only the .avsc file sees."""
    golden = GOLDEN[name]
    data = bytes.fromhex(golden.hex)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10].hex() == FINGERPRINTS[golden.schema_file]
    body = io.BytesIO(data[10:])
    datum = fastavro.schemaless_reader(body, _parsed(golden.schema_file), None)
    assert body.tell() == len(data) - 10
    assert datum == _datum(golden.record)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_fastavro_writes_the_golden_body(name: str) -> None:
    """The Codec's generated writer is byte-for-byte fastavro's."""
    golden = GOLDEN[name]
    out = io.BytesIO()
    fastavro.schemaless_writer(out, _parsed(golden.schema_file), _datum(golden.record))
    assert out.getvalue().hex() == golden.hex[20:]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_workers_read_the_golden_bytes(name: str) -> None:
    golden = GOLDEN[name]
    assert _decode(golden.record)(bytes.fromhex(golden.hex)) == golden.record
