"""An accepted event → the record an event stream delivers: Pinpoint's app-event JSON. Pure.

The shape is the one Pinpoint's developer guide documents ("App event data
stream from Amazon Pinpoint", ``event-streams-data-app``), which migrating
users' Athena tables, Firehose → S3 jobs and Lambda consumers parse; README.md
("Event streams: the record") maps every key to its source and
``schemas/event-stream.schema.json`` holds it to that.

What was not sent is left out, never written as ``null``. The objects
Pinpoint writes even when it knows nothing for them stay, empty:
``application.sdk``, ``device.platform``, ``session`` (its campaign and
journey examples show ``"sdk": {}``, ``"platform": {}``, ``"session": {}``),
and ``attributes`` and ``metrics``. So ``record["session"].get("session_id")``
works on every record, as it does on Pinpoint's.

Two keys are ours: ``endpoint`` (the event's endpoint in Pinpoint's
EndpointResponse JSON, below) and ``ingest`` (the client's event ID and the
PutEvents request ID): a record may be delivered more than once, and a
client resends the same event ID on every retry, so consumers deduplicate on
``(application.app_id, client.client_id, ingest.event_id)``. Consumers that ignore unknown keys are
unaffected.

The device, ``application.version_name`` and ``endpoint`` come from the
endpoint as the store held it when the streams worker read the event (Pinpoint
filled them from its stored endpoint: Amplify JS sends ``"Endpoint": {}`` with
its events and describes the device with UpdateEndpoint), overlaid with what
the event's batch Endpoint said, member by member (``ChannelType``, each
``Demographic`` and ``Location`` member, ``User.UserId``): the device sent
that with this very event. Without a stored endpoint they come from the batch
Endpoint alone.

The record shares the event's ``attributes`` and ``metrics`` dicts, and the
stored endpoint's nested mappings, rather than copying them (this runs once
per event delivered): do not mutate it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import orjson

from ingest.folds.endpoints import EndpointState, endpoint_response, merge_members
from ingest.records.validate import parse_timestamp
from ingest.records.values import (
    DEMOGRAPHIC_MEMBERS,
    LOCATION_MEMBERS,
    Demographic,
    EndpointContext,
    Event,
    Location,
    Session,
)

# The version of Pinpoint's app-event JSON this record follows: the one in
# the documented app-event example (campaign and journey events say 3.1).
EVENT_VERSION = "3.0"
# The JSON Schema of the record, in ``schemas/`` beside the Avro schemas
# (``ingest.records.codec.schema_dir()`` finds it in a wheel or a checkout).
SCHEMA_FILE = "event-stream.schema.json"

# A locale of a language and a country, as SDKs send it: "en_US" (Android,
# iOS, Pinpoint's example), "en-US" (BCP 47, browsers). Anything else
# ("en", "zh_Hant_TW", "es-419") is passed on as its code alone rather
# than split wrongly.
_LANGUAGE_COUNTRY = re.compile(r"([A-Za-z]{2,3})[_-]([A-Za-z]{2})")

V = TypeVar("V")


def stream_record(event: Event, endpoint: EndpointState | None = None) -> dict[str, Any]:
    """The event as Pinpoint's app-event JSON, plus ``endpoint`` and ``ingest``.

    ``endpoint`` is the event's endpoint as stored (``Store.get_endpoints``),
    or None when the store has none: then the record is made of the event
    alone. One of another app or endpoint ID than the event's, or a deleted
    one, is ignored (the record is as without one) rather than refused: it
    is the caller's slip, which must never put another device in a record,
    and raising would stall the stream on it.

    Never raises for an Event the validator produces with any stored
    endpoint the fold produces (a property test holds it to that, and to
    ``schemas/event-stream.schema.json``). A session timestamp that does not
    parse as ISO 8601 is left out, not fatal.
    """
    described = _described(event, endpoint)
    return _record(event, described, _device(described.get("Demographic")), _session(event.session))


def _described(event: Event, endpoint: EndpointState | None) -> dict[str, Any]:
    """The record's ``endpoint``: the stored one overlaid with the event's
    context, or the context alone (see :func:`stream_record`)."""
    if (
        endpoint is None
        or endpoint.endpoint_id != event.endpoint_id
        or endpoint.app_id != event.app_id
        or endpoint.deleted
    ):
        return _endpoint(event.endpoint_id, event.endpoint)
    return _overlaid(endpoint, event.endpoint)


def _session(session: Session | None) -> dict[str, Any]:
    """The record's ``session``: its ID and the timestamps that parse."""
    out: dict[str, Any] = {}
    if session is not None:
        out["session_id"] = session.id
        start = parse_timestamp(session.start_timestamp)
        if start is not None:
            out["start_timestamp"] = start
        if session.stop_timestamp is not None:
            stop = parse_timestamp(session.stop_timestamp)
            if stop is not None:
                out["stop_timestamp"] = stop
    return out


def _record(
    event: Event, described: dict[str, Any], device: dict[str, Any], session: dict[str, Any]
) -> dict[str, Any]:
    """The record of ``event`` around its ``endpoint``, ``device`` and
    ``session`` objects, which it takes as they are (they may be shared)."""
    demographic: Mapping[str, Any] | None = described.get("Demographic")
    sdk: dict[str, str] = {}
    if event.sdk_name is not None:
        sdk["name"] = event.sdk_name
    if event.client_sdk_version is not None:
        sdk["version"] = event.client_sdk_version
    application: dict[str, Any] = {"app_id": event.app_id}
    if event.app_package_name is not None:
        application["package_name"] = event.app_package_name
    application["sdk"] = sdk
    if event.app_title is not None:
        application["title"] = event.app_title
    if demographic and (app_version := demographic.get("AppVersion")) is not None:
        application["version_name"] = app_version
    if event.app_version_code is not None:
        application["version_code"] = event.app_version_code
    return {
        "event_type": event.event_type,
        "event_timestamp": event.timestamp_ms,
        "arrival_timestamp": event.received_at_ms,
        "event_version": EVENT_VERSION,
        "application": application,
        "client": {"client_id": event.endpoint_id},
        "device": device,
        "session": session,
        "attributes": _dict(event.attributes),
        "metrics": _dict(event.metrics),
        "endpoint": described,
        "ingest": {"event_id": event.event_id, "request_id": event.request_id},
    }


def encode(event: Event, endpoint: EndpointState | None = None) -> bytes:
    """:func:`stream_record` as compact JSON in UTF-8, without a trailing
    newline (a Firehose record gets its newline delimiter where it is sent).

    Never raises for an Event the validator produces, with any stored
    endpoint the fold produces. (A NaN or infinity, which validation
    refuses, orjson would write as ``null``.)"""
    return orjson.dumps(stream_record(event, endpoint))


class Converter:
    """:func:`encode` for the events of one poll, each record's bytes the
    same, with what depends on the endpoint or the session alone built once:
    the ``endpoint`` and ``device`` objects once per (app, endpoint, the
    event's endpoint context), the ``session`` object once per session, and
    shared by the records that have them (orjson writes each record at once,
    and nothing changes them). A device's events come in runs under one
    context and one session, and overlaying a stored endpoint costs more than
    the rest of a record (about 2.3 µs of 6.2).

    ``stored`` is the poll's stored endpoints by (app ID, endpoint ID), as
    ``Store.get_endpoints`` gives them. What it builds is held until it is
    dropped: one Converter a poll, so at most a poll's worth."""

    def __init__(self, stored: Mapping[tuple[str, str], EndpointState]) -> None:
        self._stored = stored
        self._parts: dict[tuple[str, str, EndpointContext | None], tuple[dict[str, Any], dict[str, Any]]] = {}
        self._sessions: dict[Session | None, dict[str, Any]] = {}

    def encode(self, event: Event) -> bytes:
        key = (event.app_id, event.endpoint_id, event.endpoint)
        parts = self._parts.get(key)
        if parts is None:
            described = _described(event, self._stored.get((event.app_id, event.endpoint_id)))
            parts = self._parts[key] = (described, _device(described.get("Demographic")))
        session = self._sessions.get(event.session)
        if session is None:
            session = self._sessions[event.session] = _session(event.session)
        return orjson.dumps(_record(event, *parts, session))


def _dict(mapping: Mapping[str, V] | None) -> dict[str, V]:
    """``{}`` for None, else the mapping as a dict: itself when it is one (the
    validator and the codec give dicts), a copy otherwise (orjson writes dicts only)."""
    if mapping is None:
        return {}
    return mapping if type(mapping) is dict else dict(mapping)


def _device(demographic: Mapping[str, Any] | None) -> dict[str, Any]:
    """``device`` of the record's endpoint's Demographic (Pinpoint's members)."""
    platform: dict[str, str] = {}
    if not demographic:
        return {"platform": platform}
    device: dict[str, Any] = {}
    if (locale := demographic.get("Locale")) is not None:
        device["locale"] = _locale(locale)
    if (make := demographic.get("Make")) is not None:
        device["make"] = make
    if (model := demographic.get("Model")) is not None:
        device["model"] = model
    if (name := demographic.get("Platform")) is not None:
        platform["name"] = name
    if (version := demographic.get("PlatformVersion")) is not None:
        platform["version"] = version
    device["platform"] = platform
    return device


def _locale(code: str) -> dict[str, str]:
    """``{"code": "en_US", "country": "US", "language": "en"}``; the code alone
    when it is not a language and a country."""
    match = _LANGUAGE_COUNTRY.fullmatch(code)
    if match is None:
        return {"code": code}
    return {"code": code, "country": match[2].upper(), "language": match[1].lower()}


def _endpoint(endpoint_id: str, context: EndpointContext | None) -> dict[str, Any]:
    """The batch's Endpoint as Pinpoint writes an endpoint: the members it sent
    that the event carries (its ID, channel, demographic, location, user ID)."""
    endpoint: dict[str, Any] = {"Id": endpoint_id}
    if context is None:  # the batch's Endpoint was refused: only its ID is known
        return endpoint
    if context.channel_type is not None:
        endpoint["ChannelType"] = context.channel_type
    if context.demographic is not None:
        endpoint["Demographic"] = _members(context.demographic, DEMOGRAPHIC_MEMBERS)
    if context.location is not None:
        endpoint["Location"] = _members(context.location, LOCATION_MEMBERS)
    if context.user_id is not None:
        endpoint["User"] = {"UserId": context.user_id}
    return endpoint


def _overlaid(stored: EndpointState, context: EndpointContext | None) -> dict[str, Any]:
    """The stored endpoint's EndpointResponse with each member the event's
    context sent written over it: the context is what the device said with
    this very event. Nested mappings the context changes are copied, never
    changed in place (they are the stored state's)."""
    endpoint = endpoint_response(stored)
    if context is None:  # the batch's Endpoint was refused: nothing to overlay
        return endpoint
    if context.channel_type is not None:
        endpoint["ChannelType"] = context.channel_type
    if context.demographic is not None:
        endpoint["Demographic"] = merge_members(
            endpoint.get("Demographic"), context.demographic, DEMOGRAPHIC_MEMBERS
        )
    if context.location is not None:
        endpoint["Location"] = merge_members(endpoint.get("Location"), context.location, LOCATION_MEMBERS)
    if context.user_id is not None:
        endpoint["User"] = {**(endpoint.get("User") or {}), "UserId": context.user_id}
    return endpoint


def _members(record: Demographic | Location, names: Sequence[str]) -> dict[str, Any]:
    """A Demographic or Location as Pinpoint's members (``PostalCode``), those sent."""
    return {name: value for name, value in zip(names, record, strict=True) if value is not None}
