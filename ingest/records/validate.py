"""Pinpoint request bodies → records, each item judged on its own. Pure.

It earns its size (about 750 lines): it is Pinpoint's quota table, rule by
rule, for every member of an endpoint and an event, each rule a short
function with its own message. Kept together, the rules read against the
published quotas in one place, and every operation (PutEvents, UpdateEndpoint,
UpdateEndpointsBatch) shares the same ones. An event, the edge's most frequent
item, is first tested in a few expressions; anything unusual goes through
those rules in turn, so every message comes from one place.

Every function here takes parsed JSON of any shape and either returns records
or raises :class:`ingest.errors.BadRequest` when the body as a whole is
unusable. Inside PutEvents one bad endpoint or event becomes an
:class:`~ingest.records.Invalid` beside the good ones; it never fails the batch.
No input makes these functions raise anything else (a property test holds them
to that).

Limits are Pinpoint's published quotas (DESIGN.md, "Quotas").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple, NoReturn

import orjson

from ingest.errors import BadRequest
from ingest.records.values import (
    DEMOGRAPHIC_MEMBERS,
    LOCATION_MEMBERS,
    MAX_MS,
    MIN_MS,
    Demographic,
    EndpointBatch,
    EndpointContext,
    EndpointUpsert,
    Event,
    Invalid,
    Location,
    RejectReason,
    Session,
    Source,
)

MAX_EVENTS_PER_REQUEST = 100
# Pinpoint does not publish a cap on endpoints per PutEvents; each carries at
# least an upsert, so the same 100 bounds the work one request can cause.
MAX_ENDPOINTS_PER_REQUEST = 100
MAX_BATCH_ITEMS = 100
MAX_EVENT_BYTES = 1000 * 1024
MAX_EVENT_KEYS = 40
MAX_KEY_CHARS = 50
MAX_EVENT_VALUE_CHARS = 200
MAX_ENDPOINT_VALUE_CHARS = 100
MAX_VALUES_PER_ATTRIBUTE = 50
MAX_ENDPOINT_ATTRIBUTES = 250
MAX_ENDPOINT_BYTES = 15 * 1024
MAX_APP_NAME_CHARS = 128
MAX_LONG = 2**63 - 1
# Endpoint, event, user and session IDs. Pinpoint publishes no length for
# them (research/pinpoint-compat.md §2 lists every quota found). What SDKs
# send is far shorter: UUIDs (36 characters) for endpoint and event IDs,
# Cognito identity IDs (about 46) as user IDs, "<8>-<8>-yyyyMMdd-HHmmssSSS"
# (35) or a UUID as session IDs. 256 also holds any e-mail address (at most
# 254 by RFC 5321) an app may use as a user ID. Past it an ID is refused
# before it becomes a Kafka key or a dedupe mark, whose cost grows with it.
MAX_ID_CHARS = 256
# orjson reads every number a double can hold; it refuses the rest with this
# message. Such a body is refused whole, in that one parse, except that an
# integer in a body this small is read exactly by the standard parser: a
# second parse of at most 64 KiB costs under a millisecond.
_OVERFLOW = "number is infinity when parsed as double"
EXACT_PARSE_MAX_BYTES = 64 * 1024
_INTEGER = re.compile(r"-?[0-9]+(?![0-9.eE])")

CHANNEL_TYPES = frozenset(
    (
        "PUSH",
        "GCM",
        "APNS",
        "APNS_SANDBOX",
        "APNS_VOIP",
        "APNS_VOIP_SANDBOX",
        "ADM",
        "SMS",
        "VOICE",
        "EMAIL",
        "BAIDU",
        "CUSTOM",
        "IN_APP",
    )
)
ENDPOINT_STATUSES = frozenset(("ACTIVE", "INACTIVE"))
OPT_OUTS = frozenset(("ALL", "NONE"))

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Reject(Exception):
    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _reject(reason: RejectReason, message: str) -> NoReturn:
    raise _Reject(reason, message)


def parse_timestamp(value: str) -> int | None:
    """ISO 8601 → epoch milliseconds UTC; no offset means UTC; None if
    unparseable, or if the instant is outside years 1-9999 UTC (an offset
    can move a valid local time there, ``0001-01-01T00:00:00+23:59``, and
    no record may carry it: the workers could not read it back)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        since = parsed - _EPOCH
    except OverflowError:
        return None
    # The floor of the timedelta in milliseconds, without dividing one
    # timedelta by another (a third cheaper; microseconds are never negative).
    millis = (since.days * 86_400 + since.seconds) * 1000 + since.microseconds // 1000
    return millis if MIN_MS <= millis <= MAX_MS else None


def json_body(raw: bytes) -> Any:
    """Parse a request body, once; BadRequest when it is not JSON text in
    UTF-8, or holds a number no double can hold (``1e999``).

    The one exception to a single parse: orjson refuses integers past a
    double's range, and a body of at most EXACT_PARSE_MAX_BYTES holding one is
    read again by the exact standard parser, so such an integer fails only
    the item that holds it (a metric) or nothing (a member we ignore).
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        first = exc
    if not (
        first.msg == _OVERFLOW
        and len(raw) <= EXACT_PARSE_MAX_BYTES
        and _INTEGER.match(first.doc, first.pos) is not None
    ):
        raise BadRequest(f"Request body is not valid JSON: {first}") from first
    try:
        # Decoded first: json.loads would also take UTF-16 and UTF-32.
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        # Lone surrogates parse here but cannot be re-encoded as UTF-8.
        json.dumps(body, ensure_ascii=False).encode()
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"Request body is not valid JSON: {first}") from exc
    return body


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _json_size(value: Any, where: str) -> int:
    """Serialized size of an item, to hold it to a byte quota."""
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError:  # orjson writes 255 levels and refuses odd numbers
        pass
    try:
        return len(json.dumps(value, ensure_ascii=False).encode())
    except (RecursionError, ValueError):
        _reject("bad_value", f"{where} nests too deeply to measure")


# --- small typed readers ---------------------------------------------------


def _string(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not str:
        _reject("wrong_type", f"{where}{key} must be a string")
    return value


def _required_string(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None or value == "":
        _reject("missing_field", f"{where}{key} is required")
    if type(value) is not str:
        _reject("wrong_type", f"{where}{key} must be a string")
    return value


def _timestamp(obj: Mapping[str, Any], key: str, where: str, *, required: bool) -> tuple[str, int] | None:
    text = obj.get(key)
    if type(text) is str and text:  # the usual case, decided in one parse
        millis = parse_timestamp(text)
        if millis is not None:
            return text, millis
    text = _required_string(obj, key, where) if required else _string(obj, key, where)
    if text is None:
        return None
    millis = parse_timestamp(text)
    if millis is None:
        _reject("bad_timestamp", f"{where}{key} is not an ISO 8601 timestamp: {text[:64]!r}")
    return text, millis


def _object(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict:
        _reject("wrong_type", f"{where} must be an object")
    return value


def _number(value: Any, where: str) -> float:
    if type(value) is float:
        if math.isfinite(value):
            return value
    elif type(value) is int:
        try:
            return float(value)
        except OverflowError:
            pass
    _reject("wrong_type", f"{where} must be a finite number")


def _check_id(value: str, what: str) -> None:
    if len(value) > MAX_ID_CHARS:
        _reject("value_too_long", f"{what} is {len(value)} characters; at most {MAX_ID_CHARS}")


def check_id(value: str, what: str) -> str:
    """``value`` if it is short enough to be an ID; BadRequest otherwise (a
    path label: it fails the request, before anything is read or produced)."""
    if len(value) > MAX_ID_CHARS:
        raise BadRequest(f"{what} is {len(value)} characters; at most {MAX_ID_CHARS}")
    return value


def _check_key(key: str, where: str) -> None:
    if not 0 < len(key) <= MAX_KEY_CHARS:
        _reject("key_too_long", f"{where} key {key[:64]!r} must be 1-{MAX_KEY_CHARS} characters")


def _metrics(value: Any, where: str) -> dict[str, float]:
    metrics = _object(value, where)
    for key, number in metrics.items():
        # The usual item, a short key and a finite double (x - x is NaN for
        # infinities), in one test.
        if not (type(number) is float and 0 < len(key) <= MAX_KEY_CHARS and number - number == 0.0):
            break
    else:
        return metrics  # already what the rules make of it: no copy
    out: dict[str, float] = {}
    for key, number in metrics.items():
        _check_key(key, where)
        out[key] = _number(number, f"{where}.{key}")
    return out


def _multi_attributes(value: Any, where: str) -> dict[str, list[str]]:
    """Endpoint and user attributes: name → list of at most 50 short strings."""
    attributes = _object(value, where)
    for key, values in attributes.items():
        _check_key(key, where)
        if type(values) is not list:
            _reject("wrong_type", f"{where}.{key} must be a list of strings")
        if len(values) > MAX_VALUES_PER_ATTRIBUTE:
            _reject(
                "too_many_values",
                f"{where}.{key} has {len(values)} values; at most {MAX_VALUES_PER_ATTRIBUTE}",
            )
        for item in values:
            if type(item) is not str:
                _reject("wrong_type", f"{where}.{key} must be a list of strings")
            if len(item) > MAX_ENDPOINT_VALUE_CHARS:
                _reject(
                    "value_too_long",
                    f"{where}.{key} has a value over {MAX_ENDPOINT_VALUE_CHARS} characters",
                )
    return attributes


def _enum(obj: Mapping[str, Any], key: str, allowed: frozenset[str], where: str) -> str | None:
    value = _string(obj, key, where)
    if value is not None and value not in allowed:
        _reject("bad_value", f"{where}{key} must be one of {', '.join(sorted(allowed))}")
    return value


# --- endpoints -------------------------------------------------------------


def _demographic(value: Any) -> Demographic:
    d = _object(value, "Demographic")
    return Demographic._make(_string(d, member, "Demographic.") for member in DEMOGRAPHIC_MEMBERS)


def _coordinate(obj: Mapping[str, Any], key: str, bound: float) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    number = _number(value, f"Location.{key}")
    if not -bound <= number <= bound:
        _reject("bad_value", f"Location.{key} must be between -{bound:g} and {bound:g}")
    return number


# Degrees either side of zero.
_COORDINATE_BOUNDS = {"Latitude": 90.0, "Longitude": 180.0}


def _location(value: Any) -> Location:
    loc = _object(value, "Location")
    return Location._make(
        _coordinate(loc, member, _COORDINATE_BOUNDS[member])
        if member in _COORDINATE_BOUNDS
        else _string(loc, member, "Location.")
        for member in LOCATION_MEMBERS
    )


def _endpoint(
    value: Any,
    *,
    app_id: str,
    endpoint_id: str,
    request_id: str,
    received_at_ms: int,
    source: Source,
) -> EndpointUpsert:
    ep = _object(value, "Endpoint")
    if not endpoint_id:
        _reject("missing_field", "Endpoint ID must not be empty")
    _check_id(endpoint_id, "Endpoint ID")
    attributes = None if ep.get("Attributes") is None else _multi_attributes(ep["Attributes"], "Attributes")
    metrics = None if ep.get("Metrics") is None else _metrics(ep["Metrics"], "Metrics")
    user_id = None
    user_attributes = None
    if ep.get("User") is not None:
        user = _object(ep["User"], "User")
        user_id = _string(user, "UserId", "User.")
        if user_id is not None:
            _check_id(user_id, "User.UserId")
        if user.get("UserAttributes") is not None:
            user_attributes = _multi_attributes(user["UserAttributes"], "User.UserAttributes")
    keys = len(attributes or ()) + len(metrics or ()) + len(user_attributes or ())
    if keys > MAX_ENDPOINT_ATTRIBUTES:
        _reject(
            "too_many_keys",
            f"Endpoint has {keys} attributes, metrics and user attributes; at most {MAX_ENDPOINT_ATTRIBUTES}",
        )
    if keys and _json_size(ep, "Endpoint") > MAX_ENDPOINT_BYTES:
        _reject("too_large", f"Endpoint is larger than {MAX_ENDPOINT_BYTES} bytes")
    effective = _timestamp(ep, "EffectiveDate", "", required=False)
    return EndpointUpsert(
        app_id=app_id,
        endpoint_id=endpoint_id,
        request_id=request_id,
        received_at_ms=received_at_ms,
        source=source,
        address=_string(ep, "Address", ""),
        attributes=attributes,
        channel_type=_enum(ep, "ChannelType", CHANNEL_TYPES, ""),
        demographic=None if ep.get("Demographic") is None else _demographic(ep["Demographic"]),
        effective_date=None if effective is None else effective[0],
        effective_date_ms=None if effective is None else effective[1],
        endpoint_status=_enum(ep, "EndpointStatus", ENDPOINT_STATUSES, ""),
        location=None if ep.get("Location") is None else _location(ep["Location"]),
        metrics=metrics,
        opt_out=_enum(ep, "OptOut", OPT_OUTS, ""),
        client_request_id=_string(ep, "RequestId", ""),
        user_id=user_id,
        user_attributes=user_attributes,
    )


def endpoint_upsert(
    value: Any,
    *,
    app_id: str,
    endpoint_id: str,
    request_id: str,
    received_at_ms: int,
    source: Source,
) -> EndpointUpsert | Invalid:
    """One endpoint body (PublicEndpoint / EndpointRequest) → upsert or Invalid."""
    try:
        return _endpoint(
            value,
            app_id=app_id,
            endpoint_id=endpoint_id,
            request_id=request_id,
            received_at_ms=received_at_ms,
            source=source,
        )
    except _Reject as exc:
        return Invalid(exc.reason, exc.message)


# --- events ----------------------------------------------------------------


def _session(value: Any) -> Session:
    s = _object(value, "Session")
    sid = _required_string(s, "Id", "Session.")
    _check_id(sid, "Session.Id")
    start = _timestamp(s, "StartTimestamp", "Session.", required=True)
    stop = _timestamp(s, "StopTimestamp", "Session.", required=False)
    duration = s.get("Duration")
    if duration is not None and (type(duration) is not int or not 0 <= duration <= MAX_LONG):
        _reject("bad_value", "Session.Duration must be a whole number of milliseconds >= 0")
    assert start is not None  # required=True never returns None
    return Session(
        id=sid,
        start_timestamp=start[0],
        stop_timestamp=None if stop is None else stop[0],
        duration_ms=duration,
    )


class _Repeats:
    """What the last event of a batch carried, so that a repeat is one object:
    its app's strings (AppPackageName and the rest, mostly equal in every
    event of a batch), and its valid Session and the members it was read from.
    The events of one batch mostly carry the same session; one whose members
    are the same (strings equal, Duration equal and of the same type, since
    ``1 == 1.0 == True``) is that Session again, not read twice, and the one
    object lets the encoder write it once (:mod:`ingest.records.avro`
    remembers nested records by identity). Only the members read are
    compared, so no other member can make the comparison costly."""

    __slots__ = ("members", "session", "strings")

    def __init__(self) -> None:
        self.members: tuple[Any, ...] = ()
        self.session: Session | None = None
        self.strings: tuple[Any, ...] = ()

    def same_strings(self, strings: tuple[Any, ...]) -> tuple[Any, ...]:
        """``strings``, or the equal tuple of the last event (equal strings
        are equal values whatever the object, and the encoder writes a
        repeated object once: :data:`ingest.records.codec.SHARED_MEMBERS`)."""
        if strings == self.strings:
            return self.strings
        self.strings = strings
        return strings

    def read(self, value: Any) -> Session:
        if type(value) is not dict:
            return _session(value)  # refused: Session must be an object
        duration = value.get("Duration")
        members = (
            value.get("Id"),
            value.get("StartTimestamp"),
            value.get("StopTimestamp"),
            type(duration),
            duration,
        )
        if members == self.members and self.session is not None:
            return self.session
        session = _session(value)
        self.members, self.session = members, session
        return session


def _event_attributes(value: Any) -> dict[str, str]:
    attributes = _object(value, "Attributes")
    for key, text in attributes.items():
        # The usual item in one test; anything else through the rules in turn.
        if type(text) is str and 0 < len(key) <= MAX_KEY_CHARS and len(text) <= MAX_EVENT_VALUE_CHARS:
            continue
        _check_key(key, "Attributes")
        if type(text) is not str:
            _reject("wrong_type", f"Attributes.{key} must be a string")
        if len(text) > MAX_EVENT_VALUE_CHARS:
            _reject(
                "value_too_long",
                f"Attributes.{key} is over {MAX_EVENT_VALUE_CHARS} characters",
            )
    return attributes


# An event's optional string members, in the order their rules are checked.
_EVENT_STRINGS = ("AppPackageName", "AppTitle", "AppVersionCode", "ClientSdkVersion", "SdkName")
_STRING_OR_NONE = frozenset((str, type(None)))
# A NamedTuple's own __new__ is a Python function taking keywords; this
# builds the same tuple without that frame (every field given, in order).
_new = tuple.__new__


class _Batch(NamedTuple):
    """What every event of one BatchItem entry shares."""

    app_id: str
    endpoint_id: str
    request_id: str
    received_at_ms: int
    context: EndpointContext | None
    check_size: bool
    repeats: _Repeats


def _event(ev: Any, event_id: str, batch: _Batch) -> Event:
    """One event's rules, in the order their messages are documented: the
    object, its ID, EventType, Timestamp, Attributes, Metrics, their count,
    its size, Session, then each optional string."""
    if type(ev) is not dict:
        _reject("wrong_type", "Event must be an object")
    if not event_id:
        _reject("missing_field", "Event ID must not be empty")
    _check_id(event_id, "Event ID")
    get = ev.get
    event_type = get("EventType")
    if type(event_type) is not str or not event_type:
        event_type = _required_string(ev, "EventType", "")
    stamp = _timestamp(ev, "Timestamp", "", required=True)
    assert stamp is not None  # required=True never returns None
    attributes = get("Attributes")
    if attributes is not None:
        attributes = _event_attributes(attributes)
    metrics = get("Metrics")
    if metrics is not None:
        metrics = _metrics(metrics, "Metrics")
    keys = len(attributes or ()) + len(metrics or ())
    if keys > MAX_EVENT_KEYS:
        _reject(
            "too_many_keys",
            f"Event has {keys} attributes and metrics; at most {MAX_EVENT_KEYS}",
        )
    if batch.check_size and _json_size(ev, "Event") > MAX_EVENT_BYTES:
        _reject("too_large", f"Event is larger than {MAX_EVENT_BYTES} bytes")
    session = get("Session")
    if session is not None:
        session = batch.repeats.read(session)
    strings = (
        get("AppPackageName"),
        get("AppTitle"),
        get("AppVersionCode"),
        get("ClientSdkVersion"),
        get("SdkName"),
    )
    if not _STRING_OR_NONE.issuperset(map(type, strings)):
        for member, text in zip(_EVENT_STRINGS, strings, strict=True):
            if text is not None and type(text) is not str:
                _reject("wrong_type", f"{member} must be a string")
    package, title, version, sdk_version, sdk = batch.repeats.same_strings(strings)
    event: Event = _new(
        Event,
        (
            batch.app_id,
            batch.endpoint_id,
            event_id,
            batch.request_id,
            batch.received_at_ms,
            event_type,
            stamp[0],
            stamp[1],
            session,
            attributes,
            metrics,
            package,
            title,
            version,
            sdk_version,
            sdk,
            batch.context,
        ),
    )
    return event


def _context(upsert: EndpointUpsert | Invalid) -> EndpointContext | None:
    if isinstance(upsert, Invalid):
        return None
    return EndpointContext(
        user_id=upsert.user_id,
        channel_type=upsert.channel_type,
        demographic=upsert.demographic,
        location=upsert.location,
    )


def put_events(
    body: Any,
    *,
    app_id: str,
    request_id: str,
    received_at_ms: int,
    body_bytes: int,
) -> list[EndpointBatch]:
    """A PutEvents body (``{"BatchItem": …}``) → one EndpointBatch per endpoint.

    Raises BadRequest only when the body as a whole is unusable: not an object,
    no ``BatchItem`` object, more than 100 events or endpoints. Everything
    else is decided per endpoint and per event.
    """
    if type(body) is not dict:
        raise BadRequest("Request body must be a JSON object")
    batch_item = body.get("BatchItem")
    if type(batch_item) is not dict:
        raise BadRequest("BatchItem is required and must be an object of endpoint ID to EventsBatch")
    if len(batch_item) > MAX_ENDPOINTS_PER_REQUEST:
        raise BadRequest(
            f"BatchItem has {len(batch_item)} endpoints; at most {MAX_ENDPOINTS_PER_REQUEST} per request"
        )
    total = sum(
        len(item["Events"])
        for item in batch_item.values()
        if type(item) is dict and type(item.get("Events")) is dict
    )
    if total > MAX_EVENTS_PER_REQUEST:
        raise BadRequest(f"Request has {total} events; at most {MAX_EVENTS_PER_REQUEST} per request")
    # Only a body over the per-event quota can hold an event over it.
    check_size = body_bytes > MAX_EVENT_BYTES
    batches: list[EndpointBatch] = []
    for endpoint_id, item in batch_item.items():
        if type(item) is not dict:
            batches.append(
                EndpointBatch(
                    endpoint_id,
                    Invalid("wrong_type", f"BatchItem.{endpoint_id[:64]} must be an object"),
                    (),
                )
            )
            continue
        raw_endpoint = item.get("Endpoint")
        upsert: EndpointUpsert | Invalid
        if raw_endpoint is None:
            upsert = Invalid("missing_field", "Endpoint is required (send {} for no changes)")
        else:
            upsert = endpoint_upsert(
                raw_endpoint,
                app_id=app_id,
                endpoint_id=endpoint_id,
                request_id=request_id,
                received_at_ms=received_at_ms,
                source="PUT_EVENTS",
            )
        raw_events = item.get("Events")
        if type(raw_events) is not dict:
            if not isinstance(upsert, Invalid):
                upsert = Invalid("missing_field", "Events is required and must be an object")
            batches.append(EndpointBatch(endpoint_id, upsert, ()))
            continue
        shared = _Batch(
            app_id, endpoint_id, request_id, received_at_ms, _context(upsert), check_size, _Repeats()
        )
        # The endpoint ID's own rules fail each of its events the same way.
        bad_id: Invalid | None = None
        try:
            if not endpoint_id:
                _reject("missing_field", "Endpoint ID must not be empty")
            _check_id(endpoint_id, "Endpoint ID")
        except _Reject as exc:
            bad_id = Invalid(exc.reason, exc.message)
        events: list[tuple[str, Event | Invalid]] = []
        for event_id, raw in raw_events.items():
            if bad_id is not None:
                events.append((event_id, bad_id))
                continue
            try:
                decided: Event | Invalid = _event(raw, event_id, shared)
            except _Reject as exc:
                decided = Invalid(exc.reason, exc.message)
            events.append((event_id, decided))
        batches.append(EndpointBatch(endpoint_id, upsert, tuple(events)))
    return batches


def update_endpoint(
    body: Any, *, app_id: str, endpoint_id: str, request_id: str, received_at_ms: int
) -> EndpointUpsert:
    """An UpdateEndpoint body → upsert; BadRequest naming the rule otherwise."""
    decided = endpoint_upsert(
        body,
        app_id=app_id,
        endpoint_id=endpoint_id,
        request_id=request_id,
        received_at_ms=received_at_ms,
        source="UPDATE_ENDPOINT",
    )
    if isinstance(decided, Invalid):
        raise BadRequest(decided.message)
    return decided


def update_endpoints_batch(
    body: Any, *, app_id: str, request_id: str, received_at_ms: int
) -> list[EndpointUpsert]:
    """An UpdateEndpointsBatch body (``{"Item": [...]}``) → upserts.

    The response has no per-item status, so one invalid item rejects the
    request with BadRequest naming its index; nothing of it is written.
    """
    if type(body) is not dict or type(body.get("Item")) is not list:
        raise BadRequest("Item is required and must be a list of endpoints")
    items = body["Item"]
    if len(items) > MAX_BATCH_ITEMS:
        raise BadRequest(f"Item has {len(items)} endpoints; at most {MAX_BATCH_ITEMS}")
    upserts: list[EndpointUpsert] = []
    for index, item in enumerate(items):
        endpoint_id = item.get("Id") if type(item) is dict else None
        if type(endpoint_id) is not str or not endpoint_id:
            raise BadRequest(f"Item[{index}].Id is required and must be a string")
        decided = endpoint_upsert(
            item,
            app_id=app_id,
            endpoint_id=endpoint_id,
            request_id=request_id,
            received_at_ms=received_at_ms,
            source="UPDATE_ENDPOINTS_BATCH",
        )
        if isinstance(decided, Invalid):
            raise BadRequest(f"Item[{index}]: {decided.message}")
        upserts.append(decided)
    return upserts


def create_app(body: Any) -> tuple[str, dict[str, str]]:
    """A CreateApp body (``{"Name": …, "tags": {…}}``) → (name, tags)."""
    if type(body) is not dict:
        raise BadRequest("Request body must be a JSON object")
    name = body.get("Name")
    if type(name) is not str or not 0 < len(name) <= MAX_APP_NAME_CHARS:
        raise BadRequest(f"Name is required: a string of 1-{MAX_APP_NAME_CHARS} characters")
    tags = body.get("tags") or {}
    if type(tags) is not dict or any(type(v) is not str for v in tags.values()):
        raise BadRequest("tags must be an object of string values")
    check_tags(tags)
    return name, tags


# AWS's tag rules (Tagging AWS resources, "Tag naming limits and
# requirements"): at most 50 tags a resource, keys of 1-128 characters and
# values of at most 256 (Unicode characters, as Python counts them), and
# the ``aws:`` prefix, in any case, reserved for AWS's own tags.
MAX_TAGS = 50
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 256
RESERVED_TAG_PREFIX = "aws:"


def check_tags(tags: dict[str, str]) -> None:
    """BadRequest naming the first rule of AWS's that ``tags`` breaks."""
    if len(tags) > MAX_TAGS:
        raise BadRequest(f"tags: at most {MAX_TAGS} tags per resource, not {len(tags)}")
    for key, value in tags.items():
        if not 1 <= len(key) <= MAX_TAG_KEY_CHARS:
            raise BadRequest(f"tags: a tag key must be 1-{MAX_TAG_KEY_CHARS} characters, not {len(key)}")
        if key[: len(RESERVED_TAG_PREFIX)].lower() == RESERVED_TAG_PREFIX:
            raise BadRequest(f"tags: the prefix {RESERVED_TAG_PREFIX!r} is reserved for AWS")
        if len(value) > MAX_TAG_VALUE_CHARS:
            raise BadRequest(
                f"tags: a tag value must be at most {MAX_TAG_VALUE_CHARS} characters, not {len(value)}"
            )
