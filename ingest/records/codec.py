"""Records ↔ Avro single-object encoding. Pure; schemas parsed once.

Every value on ``ingest.events`` and ``ingest.endpoints`` is Avro's
single-object encoding: the marker ``C3 01``, the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then the
binary body. Any consumer decodes a record with the ``schemas/*.avsc`` files
alone: fingerprint → schema → ``schemaless_reader``.

Encoding and the workers' decoding use writers and readers generated from
the same schemas (:mod:`ingest.avro`): the writers are byte-for-byte what
fastavro writes and about 20x cheaper; the readers build our records straight
from the bytes, refuse whatever fastavro would refuse and more, and are
about 3x cheaper than fastavro plus building the records from its dicts.
:meth:`Codec.decode` is still plain fastavro, giving the Avro datum any
consumer sees.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, NamedTuple

import fastavro
from fastavro.schema import fingerprint as schema_fingerprint
from fastavro.schema import to_parsing_canonical_form

from ingest.errors import DecodeError
from ingest.records.avro import AvroDecodeError, Decoder, compile_decoder, compile_encoder
from ingest.records.values import MAX_MS as MAX_MS  # the codec refuses times outside these
from ingest.records.values import MIN_MS as MIN_MS
from ingest.records.values import (
    Demographic,
    EndpointContext,
    EndpointDelete,
    EndpointUpsert,
    Event,
    Location,
    Session,
)

MARKER = b"\xc3\x01"
HEADER_BYTES = len(MARKER) + 8
# An event's endpoint context, its last field, is the same bytes for every
# event of a device's batch: the event reader remembers this many of them
# (the value read, shared): a few hundred bytes each with the key, 2 KiB at
# most (avro.TAIL_MEMO_MAX_BYTES), so under 10 MB.
TAIL_MEMO_ENTRIES = 4096
EVENT_SCHEMA = "ingest.v1.Event"
ENDPOINT_SCHEMA = "ingest.v1.EndpointUpsert"
DELETE_SCHEMA = "ingest.v1.EndpointDelete"


# The members mostly one object from one record to the next, encoded once per
# object: a request's IDs and arrival time (one object in all its records),
# and an event's app strings (validation gives a batch's equal ones one object).
SHARED_MEMBERS = frozenset(
    (
        "app_id",
        "endpoint_id",
        "request_id",
        "received_at_ms",
        "app_package_name",
        "app_title",
        "app_version_code",
        "client_sdk_version",
        "sdk_name",
    )
)

# The record class of each Avro record's short name, for the generated readers.
RECORD_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (Event, Session, EndpointContext, EndpointUpsert, Demographic, Location, EndpointDelete)
}


def fingerprint(canonical_form: str) -> bytes:
    """CRC-64-AVRO of a schema's Parsing Canonical Form, little-endian (Avro spec).

    fastavro's hex already lists the bytes in the spec's little-endian order."""
    return bytes.fromhex(schema_fingerprint(canonical_form, "CRC-64-AVRO"))


class _RecordReader(NamedTuple):
    """A generated reader of one schema, and the epoch-millisecond fields of
    its records that must lie within years 1-9999."""

    name: str
    decode: Decoder
    times: tuple[str, ...]


def schema_dir() -> Path:
    """``schemas/`` inside an installed wheel, else at the source tree's root."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "schemas", package.parent / "schemas"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("schemas/ not found beside the ingest package")


class Codec:
    """Encodes records for Kafka and decodes what any producer of ours wrote."""

    def __init__(self, directory: Path | None = None) -> None:
        directory = directory or schema_dir()
        self._by_name: dict[str, tuple[bytes, Any]] = {}
        self._by_fingerprint: dict[bytes, tuple[str, Any]] = {}
        for path in sorted(directory.glob("*.avsc")):
            parsed: Any = fastavro.parse_schema(json.loads(path.read_text()))
            name = str(parsed["name"])
            header = MARKER + fingerprint(to_parsing_canonical_form(parsed))
            self._by_name[name] = (header, parsed)
            self._by_fingerprint[header[2:]] = (name, parsed)
        self._event_header, event_schema = self._by_name[EVENT_SCHEMA]
        self._endpoint_header, endpoint_schema = self._by_name[ENDPOINT_SCHEMA]
        self._delete_header, delete_schema = self._by_name[DELETE_SCHEMA]
        self._write_event = compile_encoder(event_schema, RECORD_TYPES, SHARED_MEMBERS)
        self._write_endpoint = compile_encoder(endpoint_schema, RECORD_TYPES, SHARED_MEMBERS)
        self._write_delete = compile_encoder(delete_schema, RECORD_TYPES, SHARED_MEMBERS)
        event_reader = _RecordReader(
            EVENT_SCHEMA,
            compile_decoder(event_schema, RECORD_TYPES, tail_memo=TAIL_MEMO_ENTRIES),
            ("received_at_ms", "timestamp_ms"),
        )
        endpoint_reader = _RecordReader(
            ENDPOINT_SCHEMA,
            compile_decoder(endpoint_schema, RECORD_TYPES),
            ("received_at_ms", "effective_date_ms"),
        )
        delete_reader = _RecordReader(
            DELETE_SCHEMA, compile_decoder(delete_schema, RECORD_TYPES), ("received_at_ms",)
        )
        # Fingerprint → reader, per topic: what a consumer of that topic accepts.
        self._event_readers = {self._event_header[2:]: event_reader}
        self._endpoint_readers = {
            self._endpoint_header[2:]: endpoint_reader,
            self._delete_header[2:]: delete_reader,
        }

    def schema(self, name: str) -> Any:
        """The parsed schema of a full name (``ingest.v1.Event``)."""
        return self._by_name[name][1]

    def encode_event(self, event: Event) -> bytes:
        out = bytearray(self._event_header)
        self._write_event(out, event)
        return bytes(out)

    def encode_endpoint(self, upsert: EndpointUpsert) -> bytes:
        out = bytearray(self._endpoint_header)
        self._write_endpoint(out, upsert)
        return bytes(out)

    def encode_delete(self, delete: EndpointDelete) -> bytes:
        out = bytearray(self._delete_header)
        self._write_delete(out, delete)
        return bytes(out)

    def decode_endpoint_record(self, data: bytes | None) -> EndpointUpsert | EndpointDelete:
        """A value of ``ingest.endpoints`` → its record; DecodeError otherwise,
        including times a record of ours cannot carry (beyond years 1-9999)."""
        record: EndpointUpsert | EndpointDelete = self._read(
            data, self._endpoint_readers, "an endpoint record"
        )
        return record

    def decode_event(self, data: bytes | None) -> Event:
        """A value of ``ingest.events`` → its Event; DecodeError otherwise,
        including times a record of ours cannot carry (beyond years 1-9999)."""
        event: Event = self._read(data, self._event_readers, "an event")
        return event

    def _read(self, data: bytes | None, readers: dict[bytes, _RecordReader], wanted: str) -> Any:
        """The whole of ``data`` as a record of one of ``readers``' schemas."""
        data, fp = self._header(data)
        reader = readers.get(fp)
        if reader is None:
            raise DecodeError(f"{self._by_fingerprint[fp][0]} is not {wanted}")
        try:
            record, end = reader.decode(data, HEADER_BYTES)
        except AvroDecodeError as exc:
            raise DecodeError(f"{reader.name} body does not decode: {exc}") from exc
        if end != len(data):
            raise DecodeError(f"{reader.name} record is followed by {len(data) - end} stray bytes")
        for field in reader.times:
            millis = getattr(record, field)
            if millis is not None and not MIN_MS <= millis <= MAX_MS:
                raise DecodeError(f"{reader.name}.{field}={millis} is outside years 1-9999")
        return record

    def _header(self, data: bytes | None) -> tuple[bytes, bytes]:
        """→ (data, its schema fingerprint) if ``data`` is single-object
        encoding of a known schema; DecodeError otherwise."""
        if data is None:
            raise DecodeError("a null value (a Kafka tombstone) is not a record of ours")
        if len(data) < HEADER_BYTES or data[:2] != MARKER:
            raise DecodeError("not Avro single-object encoding (no C3 01 marker)")
        fp = data[2:HEADER_BYTES]
        if fp not in self._by_fingerprint:
            raise DecodeError(f"unknown schema fingerprint {fp.hex()}")
        return data, fp

    def decode(self, data: bytes | None) -> tuple[str, dict[str, Any]]:
        """→ (schema full name, Avro datum), with fastavro: what any consumer
        of the .avsc files sees. DecodeError for anything else."""
        data, fp = self._header(data)
        name, parsed = self._by_fingerprint[fp]
        body = io.BytesIO(data[HEADER_BYTES:])
        try:
            datum = fastavro.schemaless_reader(body, parsed, None)
        except (EOFError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise DecodeError(f"{name} body does not decode: {exc}") from exc
        if body.tell() != len(data) - HEADER_BYTES:
            raise DecodeError(
                f"{name} record is followed by {len(data) - HEADER_BYTES - body.tell()} stray bytes"
            )
        if not isinstance(datum, dict):
            raise DecodeError(f"{name} body is not a record")
        return name, datum


def _flat(value: Any) -> dict[str, Any] | None:
    """A flat slotted record (Demographic, Location, Session) → Avro datum."""
    if value is None:
        return None
    return {name: getattr(value, name) for name in value._fields}


def _context(context: EndpointContext | None) -> dict[str, Any] | None:
    if context is None:
        return None
    return {
        "user_id": context.user_id,
        "channel_type": context.channel_type,
        "demographic": _flat(context.demographic),
        "location": _flat(context.location),
    }


def event_datum(event: Event) -> dict[str, Any]:
    datum = {name: getattr(event, name) for name in Event._fields}
    datum["session"] = _flat(event.session)
    datum["endpoint"] = _context(event.endpoint)
    return datum


def endpoint_datum(upsert: EndpointUpsert) -> dict[str, Any]:
    datum = {name: getattr(upsert, name) for name in EndpointUpsert._fields}
    datum["demographic"] = _flat(upsert.demographic)
    datum["location"] = _flat(upsert.location)
    return datum
