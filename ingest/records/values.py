"""The values that flow through the write path: frozen, slotted, no I/O.

JSON dicts exist only at the HTTP edge and Avro dicts only in the codec; in
between, a request is these records. They are NamedTuples: immutable, with no
per-instance dict, and built about 4x faster than frozen dataclasses, which
matters at a hundred records a request. For every optional member ``None`` means
"the client did not send it" and an empty string or mapping means "sent empty":
the endpoint store keeps what was not sent and overwrites what was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple, get_args

Source = Literal["PUT_EVENTS", "UPDATE_ENDPOINT", "UPDATE_ENDPOINTS_BATCH"]

# Epoch milliseconds of 0001-01-01 and 9999-12-31T23:59:59.999 UTC: what
# Python's datetime (and an ISO 8601 EffectiveDate) can express, and so the
# times a record may carry (validation refuses others; decoding too).
MIN_MS = -62135596800000
MAX_MS = 253402300799999

# Why an item was answered 400: a closed set, so it can label a metric.
RejectReason = Literal[
    "missing_field",
    "wrong_type",
    "bad_timestamp",
    "bad_value",
    "too_many_keys",
    "key_too_long",
    "value_too_long",
    "too_many_values",
    "too_large",
]
REJECT_REASONS: tuple[RejectReason, ...] = get_args(RejectReason)


class Invalid(NamedTuple):
    """An item that breaks a rule; answered ``{"StatusCode": 400, "Message": message}``."""

    reason: RejectReason
    message: str


class Demographic(NamedTuple):
    app_version: str | None = None
    locale: str | None = None
    make: str | None = None
    model: str | None = None
    model_version: str | None = None
    platform: str | None = None
    platform_version: str | None = None
    timezone: str | None = None


class Location(NamedTuple):
    city: str | None = None
    country: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    postal_code: str | None = None
    region: str | None = None


def pinpoint_members(record: type[tuple[object, ...]]) -> tuple[str, ...]:
    """The Pinpoint member name of each field, in field order: ``postal_code`` → ``PostalCode``."""
    return tuple("".join(part.capitalize() for part in name.split("_")) for name in record._fields)  # type: ignore[attr-defined]


DEMOGRAPHIC_MEMBERS = pinpoint_members(Demographic)
LOCATION_MEMBERS = pinpoint_members(Location)


class EndpointUpsert(NamedTuple):
    """One endpoint write. The store overwrites the members it carries (not
    ``None``), keeps the others, and within a mapping replaces only the keys sent.
    """

    app_id: str
    endpoint_id: str
    request_id: str
    received_at_ms: int
    source: Source
    address: str | None = None
    attributes: Mapping[str, Sequence[str]] | None = None
    channel_type: str | None = None
    demographic: Demographic | None = None
    effective_date: str | None = None
    effective_date_ms: int | None = None
    endpoint_status: str | None = None
    location: Location | None = None
    metrics: Mapping[str, float] | None = None
    opt_out: str | None = None
    client_request_id: str | None = None
    user_id: str | None = None
    user_attributes: Mapping[str, Sequence[str]] | None = None


class Session(NamedTuple):
    id: str
    start_timestamp: str
    stop_timestamp: str | None = None
    duration_ms: int | None = None


class EndpointContext(NamedTuple):
    """What the batch's Endpoint said about the device when the event arrived."""

    user_id: str | None = None
    channel_type: str | None = None
    demographic: Demographic | None = None
    location: Location | None = None


class Event(NamedTuple):
    """One event. ``(app_id, endpoint_id, event_id)`` is its idempotency key:
    clients resend the same event ID on every retry, so consumers dedupe on it.
    """

    app_id: str
    endpoint_id: str
    event_id: str
    request_id: str
    received_at_ms: int
    event_type: str
    timestamp: str
    timestamp_ms: int
    session: Session | None = None
    attributes: Mapping[str, str] | None = None
    metrics: Mapping[str, float] | None = None
    app_package_name: str | None = None
    app_title: str | None = None
    app_version_code: str | None = None
    client_sdk_version: str | None = None
    sdk_name: str | None = None
    endpoint: EndpointContext | None = None


class EndpointBatch(NamedTuple):
    """One ``BatchItem`` entry of PutEvents after validation: the endpoint and
    each event decided on its own, in the order the client sent them."""

    endpoint_id: str
    endpoint: EndpointUpsert | Invalid
    events: tuple[tuple[str, Event | Invalid], ...]


class EndpointDelete(NamedTuple):
    """A tombstone on ``ingest.endpoints``, keyed like the upserts."""

    app_id: str
    endpoint_id: str
    request_id: str
    received_at_ms: int


class OutRecord(NamedTuple):
    """One record to produce: Avro bytes keyed ``"{app_id}:{endpoint_id}"``.
    A NamedTuple like the rest: a frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__``, 3 % of the edge's CPU at one
    record an event."""

    topic: str
    key: bytes
    value: bytes
