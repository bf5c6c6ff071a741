"""Endpoint state: Pinpoint's upsert semantics as a pure fold. No I/O.

``apply`` folds one record of ``ingest.endpoints`` into an endpoint's state:

* members an upsert carries overwrite, members it omits are kept; inside
  ``Demographic`` and ``Location`` each sub-member sent overwrites; inside
  ``Attributes``, ``Metrics`` and ``User.UserAttributes`` each key sent replaces
  that key's value and keys not sent are kept;
* a version guard — (EffectiveDate sent or else the receive time, Kafka
  offset) — skips an upsert older than the state: an offline batch or a
  replay never clobbers newer state. An EffectiveDate later than the receive
  time counts as the receive time: a device whose clock runs ahead must not
  lock out every later write. Re-applying the record that made the
  state gives the same state, so at-least-once delivery is safe;
* a delete leaves a tombstone carrying the newest version seen, so an older
  upsert replayed after it stays deleted while a newer one re-creates the
  endpoint (with a new CreationDate);
* server-set members: ``ApplicationId``, ``Id``, ``CohortId`` (a stable hash of
  the ID, "0"-"99"), ``CreationDate`` (first write), ``EffectiveDate``,
  ``RequestId`` (the client's, else the request's), ``EndpointStatus``
  (ACTIVE unless set).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from ingest.records import Demographic, EndpointUpsert, Location

COHORTS = 100
MAX_ENDPOINTS_PER_USER = 15

Outcome = Literal["applied", "superseded"]


class Version(NamedTuple):
    """Orders writes to one endpoint: effective time, then Kafka offset."""

    effective_ms: int
    offset: int


class EndpointDelete(NamedTuple):
    """A tombstone on ``ingest.endpoints``, keyed like the upserts."""

    app_id: str
    endpoint_id: str
    request_id: str
    received_at_ms: int


class EndpointState(NamedTuple):
    """What the store keeps per endpoint. ``document`` holds the Pinpoint
    members in EndpointResponse shape without the server-set ones."""

    app_id: str
    endpoint_id: str
    version: Version
    deleted: bool
    creation_date: str
    effective_date: str
    request_id: str
    document: Mapping[str, Any]

    @property
    def user_id(self) -> str | None:
        user = self.document.get("User")
        return None if user is None else user.get("UserId")


def cohort_id(endpoint_id: str) -> str:
    digest = hashlib.blake2b(endpoint_id.encode(), digest_size=8).digest()
    return str(int.from_bytes(digest, "big") % COHORTS)


def iso_ms(millis: int) -> str:
    return (
        datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


_DEMOGRAPHIC = {
    "app_version": "AppVersion",
    "locale": "Locale",
    "make": "Make",
    "model": "Model",
    "model_version": "ModelVersion",
    "platform": "Platform",
    "platform_version": "PlatformVersion",
    "timezone": "Timezone",
}
_LOCATION = {
    "city": "City",
    "country": "Country",
    "latitude": "Latitude",
    "longitude": "Longitude",
    "postal_code": "PostalCode",
    "region": "Region",
}


def _merge_members(old: Any, new: Demographic | Location, names: Mapping[str, str]) -> dict[str, Any]:
    merged = dict(old or {})
    for field, member in names.items():
        value = getattr(new, field)
        if value is not None:
            merged[member] = value
    return merged


def _merge_keys(old: Any, new: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(old or {})
    merged.update({k: list(v) if isinstance(v, (list, tuple)) else v for k, v in new.items()})
    return merged


def apply(state: EndpointState | None, upsert: EndpointUpsert, offset: int) -> tuple[EndpointState, Outcome]:
    """Fold one upsert at ``offset`` into ``state`` (None: never seen)."""
    effective_ms = upsert.received_at_ms
    if upsert.effective_date_ms is not None:
        effective_ms = min(upsert.effective_date_ms, upsert.received_at_ms)
    version = Version(effective_ms, offset)
    if state is not None and version < state.version:
        return state, "superseded"
    fresh = state is None or state.deleted
    doc: dict[str, Any] = {} if fresh or state is None else dict(state.document)
    for field, member in (
        ("address", "Address"),
        ("channel_type", "ChannelType"),
        ("endpoint_status", "EndpointStatus"),
        ("opt_out", "OptOut"),
    ):
        value = getattr(upsert, field)
        if value is not None:
            doc[member] = value
    if upsert.attributes is not None:
        doc["Attributes"] = _merge_keys(doc.get("Attributes"), upsert.attributes)
    if upsert.metrics is not None:
        doc["Metrics"] = _merge_keys(doc.get("Metrics"), upsert.metrics)
    if upsert.demographic is not None:
        doc["Demographic"] = _merge_members(doc.get("Demographic"), upsert.demographic, _DEMOGRAPHIC)
    if upsert.location is not None:
        doc["Location"] = _merge_members(doc.get("Location"), upsert.location, _LOCATION)
    if upsert.user_id is not None or upsert.user_attributes is not None:
        user = dict(doc.get("User") or {})
        if upsert.user_id is not None:
            user["UserId"] = upsert.user_id
        if upsert.user_attributes is not None:
            user["UserAttributes"] = _merge_keys(user.get("UserAttributes"), upsert.user_attributes)
        doc["User"] = user
    doc.setdefault("EndpointStatus", "ACTIVE")
    return (
        EndpointState(
            app_id=upsert.app_id,
            endpoint_id=upsert.endpoint_id,
            version=version,
            deleted=False,
            creation_date=iso_ms(upsert.received_at_ms) if fresh or state is None else state.creation_date,
            effective_date=upsert.effective_date
            if upsert.effective_date is not None
            else iso_ms(effective_ms),
            request_id=upsert.client_request_id or upsert.request_id,
            document=doc,
        ),
        "applied",
    )


def apply_delete(state: EndpointState | None, delete: EndpointDelete, offset: int) -> EndpointState:
    """A delete applies in log order whatever its time (a privacy request
    must win). Replays are recognised by offset: records of one endpoint share
    a partition, so a delete at an offset below the record that made the
    current state was applied before, and applying it again would wipe what
    came after it. The tombstone keeps the newest effective time seen, so older
    upserts stay superseded, and the delete's offset."""
    if state is not None and offset < state.version.offset:
        return state
    effective_ms = (
        delete.received_at_ms if state is None else max(state.version.effective_ms, delete.received_at_ms)
    )
    version = Version(effective_ms, offset)
    return EndpointState(
        app_id=delete.app_id,
        endpoint_id=delete.endpoint_id,
        version=version,
        deleted=True,
        creation_date=state.creation_date if state is not None else iso_ms(delete.received_at_ms),
        effective_date=iso_ms(version.effective_ms),
        request_id=delete.request_id,
        document={},
    )


def deactivated(state: EndpointState) -> EndpointState:
    """The 16th-endpoint rule's effect on the oldest: INACTIVE, no UserId."""
    doc = dict(state.document)
    user = {k: v for k, v in (doc.get("User") or {}).items() if k != "UserId"}
    if user:
        doc["User"] = user
    else:
        doc.pop("User", None)
    doc["EndpointStatus"] = "INACTIVE"
    return state._replace(document=doc)


def response(state: EndpointState) -> dict[str, Any]:
    """Pinpoint's EndpointResponse for a live endpoint."""
    return {
        **state.document,
        "ApplicationId": state.app_id,
        "Id": state.endpoint_id,
        "CohortId": cohort_id(state.endpoint_id),
        "CreationDate": state.creation_date,
        "EffectiveDate": state.effective_date,
        "RequestId": state.request_id,
    }
