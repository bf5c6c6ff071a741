"""Endpoint state: Pinpoint's upsert semantics as a pure fold. No I/O.

``apply`` folds one record of ``ingest.endpoints`` into an endpoint's state:

* members an upsert carries overwrite, members it omits are kept; inside
  ``Demographic`` and ``Location`` each sub-member sent overwrites; inside
  ``Attributes``, ``Metrics`` and ``User.UserAttributes`` each key sent replaces
  that key's value and keys not sent are kept;
* a version guard — (EffectiveDate sent or else the receive time, Kafka
  offset) — skips an upsert no newer than the state: an offline batch or a
  replay never clobbers newer state, and the record that made the state,
  redelivered, changes nothing, so at-least-once delivery is safe. An
  EffectiveDate later than the receive time counts as the receive time: a
  device whose clock runs ahead must not lock out every later write;
* a delete leaves a tombstone carrying the newest version seen, so an older
  upsert replayed after it stays deleted while a newer one re-creates the
  endpoint (with a new CreationDate);
* server-set members: ``ApplicationId``, ``Id``, ``CohortId`` (a stable hash of
  the ID, "0"-"99"), ``CreationDate`` (first write), ``EffectiveDate``,
  ``RequestId`` (the client's, else the request's), ``EndpointStatus``
  (ACTIVE unless set);
* a user holds at most 15 live endpoints: when a 16th joins, the oldest
  becomes INACTIVE and loses its UserId, record by record (``fold``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from ingest.records.values import (
    DEMOGRAPHIC_MEMBERS,
    LOCATION_MEMBERS,
    Demographic,
    EndpointDelete,
    EndpointUpsert,
    Location,
)

COHORTS = 100
MAX_ENDPOINTS_PER_USER = 15

Outcome = Literal["applied", "superseded"]
Key = tuple[str, str]
"""(app ID, endpoint ID)"""
UserKey = tuple[str, str]
"""(app ID, user ID)"""


class Version(NamedTuple):
    """Orders writes to one endpoint: effective time, then Kafka offset."""

    effective_ms: int
    offset: int


EndpointRecord = EndpointUpsert | EndpointDelete
"""A record of ``ingest.endpoints``."""


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


def endpoint_response(state: EndpointState) -> dict[str, Any]:
    """Pinpoint's EndpointResponse of a live endpoint: its document and the
    server-set members. GetEndpoint and the deletes answer it; event streams
    write it as a record's ``endpoint``. Shares the document's nested
    mappings (``Attributes``, ``Demographic``, ``User``, …): do not mutate it."""
    return {
        **state.document,
        "ApplicationId": state.app_id,
        "Id": state.endpoint_id,
        "CohortId": cohort_id(state.endpoint_id),
        "CreationDate": state.creation_date,
        "EffectiveDate": state.effective_date,
        "RequestId": state.request_id,
    }


def cohort_id(endpoint_id: str) -> str:
    digest = hashlib.blake2b(endpoint_id.encode(), digest_size=8).digest()
    return str(int.from_bytes(digest, "big") % COHORTS)


def iso_ms(millis: int) -> str:
    """Epoch milliseconds → ``2026-11-23T09:15:02.123Z``."""
    seconds, millis = divmod(millis, 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    # Records of one batch arrive within seconds of each other, so the
    # calendar arithmetic is done once a second rather than once a record.
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None).isoformat(timespec="seconds")


_new = tuple.__new__  # builds a NamedTuple without the Python frame of its __new__


def merge_members(old: Any, new: Demographic | Location, members: tuple[str, ...]) -> dict[str, Any]:
    """``old`` (a stored Demographic or Location, or None) as a new dict with
    each member ``new`` carries (not None) overwritten: what an upsert does,
    and what an event's endpoint context does to its stored endpoint in an
    event stream's record."""
    merged = dict(old) if old else {}
    for member, value in zip(members, new, strict=True):
        if value is not None:
            merged[member] = value
    return merged


def _merge_lists(old: Any, new: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    merged = dict(old) if old else {}
    for key, values in new.items():
        merged[key] = values if type(values) is list else list(values)
    return merged


def _merge_numbers(old: Any, new: Mapping[str, float]) -> dict[str, Any]:
    merged = dict(old) if old else {}
    merged.update(new)
    return merged


def apply(state: EndpointState | None, upsert: EndpointUpsert, offset: int) -> tuple[EndpointState, Outcome]:
    """Fold one upsert at ``offset`` into ``state`` (None: never seen). An
    upsert no newer than the state (the record that made it, redelivered,
    included) is superseded and changes nothing.

    The worker's hottest function: fields are unpacked once, in
    EndpointUpsert's order, rather than looked up one by one."""
    (
        app_id,
        endpoint_id,
        request_id,
        received_at_ms,
        _source,
        address,
        attributes,
        channel_type,
        demographic,
        effective_date,
        effective_date_ms,
        endpoint_status,
        location,
        metrics,
        opt_out,
        client_request_id,
        user_id,
        user_attributes,
    ) = upsert
    effective_ms = received_at_ms
    if effective_date_ms is not None and effective_date_ms < effective_ms:
        effective_ms = effective_date_ms
    version: Version = _new(Version, (effective_ms, offset))
    if state is not None and version <= state.version:
        return state, "superseded"
    fresh = state is None or state.deleted
    doc: dict[str, Any] = {} if fresh or state is None else dict(state.document)
    if address is not None:
        doc["Address"] = address
    if channel_type is not None:
        doc["ChannelType"] = channel_type
    if endpoint_status is not None:
        doc["EndpointStatus"] = endpoint_status
    if opt_out is not None:
        doc["OptOut"] = opt_out
    if attributes is not None:
        doc["Attributes"] = _merge_lists(doc.get("Attributes"), attributes)
    if metrics is not None:
        doc["Metrics"] = _merge_numbers(doc.get("Metrics"), metrics)
    if demographic is not None:
        doc["Demographic"] = merge_members(doc.get("Demographic"), demographic, DEMOGRAPHIC_MEMBERS)
    if location is not None:
        doc["Location"] = merge_members(doc.get("Location"), location, LOCATION_MEMBERS)
    if user_id is not None or user_attributes is not None:
        user = dict(doc.get("User") or {})
        if user_id is not None:
            user["UserId"] = user_id
        if user_attributes is not None:
            user["UserAttributes"] = _merge_lists(user.get("UserAttributes"), user_attributes)
        doc["User"] = user
    if "EndpointStatus" not in doc:
        doc["EndpointStatus"] = "ACTIVE"
    new: EndpointState = _new(
        EndpointState,
        (
            app_id,
            endpoint_id,
            version,
            False,  # deleted
            iso_ms(received_at_ms) if fresh or state is None else state.creation_date,
            effective_date if effective_date is not None else iso_ms(effective_ms),
            client_request_id or request_id,
            doc,
        ),
    )
    return new, "applied"


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


def member_of(state: EndpointState | None) -> UserKey | None:
    """The user whose 15 endpoints ``state`` counts among, if any. An empty
    UserId names no user."""
    if state is None or state.deleted:
        return None
    user = state.document.get("User")
    user_id = None if user is None else user.get("UserId")
    return (state.app_id, user_id) if user_id else None


def age(state: EndpointState) -> tuple[Version, str]:
    """Orders one user's endpoints for the 15-per-user rule: the oldest
    EffectiveDate goes first; version, then ID, make the order total."""
    return state.version, state.endpoint_id


@dataclass(slots=True)
class BatchOutcome:
    """What folding one batch did, for metrics."""

    applied: int = 0
    superseded: int = 0
    deleted: int = 0
    deactivated: int = 0
    of_deleted_apps: int = 0
    """Records of an app deleted since they were sent: never written."""


def joining(
    current: Mapping[Key, EndpointState], records: Iterable[tuple[EndpointRecord, int]]
) -> dict[UserKey, set[str]]:
    """The users a batch may add endpoints to: (app, user) → the batch's
    endpoints that name the user and are not its members already. Only these
    users can pass 15 during the batch, and only if the store holds more than
    ``15 - len(joiners)`` of their endpoints."""
    users: dict[UserKey, set[str]] = {}
    for record, _ in records:
        if isinstance(record, EndpointDelete) or not record.user_id:
            continue
        user = (record.app_id, record.user_id)
        if member_of(current.get((record.app_id, record.endpoint_id))) != user:
            users.setdefault(user, set()).add(record.endpoint_id)
    return users


def fold(
    current: Mapping[Key, EndpointState],
    records: Iterable[tuple[EndpointRecord, int]],
    outcome: BatchOutcome,
    crowded: Mapping[UserKey, Iterable[EndpointState]] | None = None,
) -> dict[Key, EndpointState]:
    """Fold ``records`` (in partition order) over ``current``; return the
    states that changed.

    ``crowded`` holds, for each user that may pass 15 endpoints in this batch
    (see :func:`joining`), every live endpoint it has at the start of the
    batch. The 15-per-user rule runs after every record, as if records
    arrived one at a time: when a user gains a 16th endpoint, the oldest
    (:func:`age`) is deactivated then and there. So where a batch is cut never
    changes the result, and replays change nothing (an upsert no newer than
    its endpoint's state is superseded, and deactivating keeps the version).
    """
    changed: dict[Key, EndpointState] = {}
    members = {user: {s.endpoint_id: s for s in states} for user, states in (crowded or {}).items()}
    for record, offset in records:
        key = (record.app_id, record.endpoint_id)
        state = changed[key] if key in changed else current.get(key)
        if isinstance(record, EndpointDelete):
            new = apply_delete(state, record, offset)
            outcome.deleted += 1
        else:
            new, result = apply(state, record, offset)
            if result == "superseded":
                outcome.superseded += 1
                continue
            outcome.applied += 1
        changed[key] = new
        if members:
            _follow_members(members, state, new, changed, outcome)
    return changed


def _follow_members(
    members: dict[UserKey, dict[str, EndpointState]],
    old: EndpointState | None,
    new: EndpointState,
    changed: dict[Key, EndpointState],
    outcome: BatchOutcome,
) -> None:
    was, now = member_of(old), member_of(new)
    if was is not None and was != now and was in members:
        members[was].pop(new.endpoint_id, None)
    if now is None or now not in members:
        return
    group = members[now]
    group[new.endpoint_id] = new
    if len(group) > MAX_ENDPOINTS_PER_USER:
        oldest = min(group.values(), key=age)
        del group[oldest.endpoint_id]
        changed[(oldest.app_id, oldest.endpoint_id)] = deactivated(oldest)
        outcome.deactivated += 1
