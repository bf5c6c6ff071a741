"""PutEvents' split step, pure: validated batches → the records to produce
(endpoint upserts on ``ingest.endpoints``, events on ``ingest.events``, both
keyed ``"{app_id}:{endpoint_id}"``), and Kafka's acks → each item's status.

Every endpoint ID gets an ``EndpointItemResponse`` and every event ID an
entry in ``EventsItemResponse``: ``ACCEPTED`` only when Kafka acknowledged its
record, the rule it broke (400) when it was invalid, ``NOT_ACKED`` (500,
which every SDK retries) when Kafka did not acknowledge it in time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from ingest.kafka.clients import ENDPOINTS_TOPIC, EVENTS_TOPIC
from ingest.records.codec import Codec
from ingest.records.values import EndpointBatch, EndpointUpsert, Invalid, OutRecord

ACCEPTED = {"StatusCode": 202, "Message": "Accepted"}
NOT_ACKED = {
    "StatusCode": 500,
    "Message": "Kafka did not acknowledge the record in time; retry with the same ID",
}

Slot = Invalid | int
"""An item's place in the answer: the Invalid it was judged, or the index of its record."""
Kind = Literal["endpoint", "event"]
Tally = Counter[tuple[Kind, str, str]]
"""Items by (kind, outcome, reason): outcome ``accepted``, ``rejected`` or ``failed``."""


class Split(NamedTuple):
    records: list[OutRecord]
    # Per BatchItem entry: its endpoint ID, its endpoint's slot, its events' slots.
    slots: list[tuple[str, Slot, list[tuple[str, Slot]]]]


def key(app_id: str, endpoint_id: str) -> bytes:
    """The Kafka key of both main topics: one endpoint's history stays in one partition."""
    return f"{app_id}:{endpoint_id}".encode()


def endpoint_records(upserts: Sequence[EndpointUpsert], codec: Codec) -> list[OutRecord]:
    """The records of endpoint upserts on ``ingest.endpoints``, keyed so each
    endpoint's writes are ordered: what UpdateEndpoint(s) and an import job
    (:mod:`ingest.jobs.imports`) publish alike."""
    encode = codec.encode_endpoint
    return [OutRecord(ENDPOINTS_TOPIC, key(u.app_id, u.endpoint_id), encode(u)) for u in upserts]


def split(batches: Sequence[EndpointBatch], *, app_id: str, codec: Codec) -> Split:
    """The records of the valid items, in the order sent; invalid ones keep their verdict."""
    encode_event = codec.encode_event
    encode_endpoint = codec.encode_endpoint
    records: list[OutRecord] = []
    slots: list[tuple[str, Slot, list[tuple[str, Slot]]]] = []
    for batch in batches:
        # Built only for a batch with a valid item: a rejected endpoint ID
        # (one too long, say) never becomes a key.
        batch_key = b""
        endpoint_slot: Slot
        if isinstance(batch.endpoint, Invalid):
            endpoint_slot = batch.endpoint
        else:
            batch_key = key(app_id, batch.endpoint_id)
            endpoint_slot = len(records)
            records.append(OutRecord(ENDPOINTS_TOPIC, batch_key, encode_endpoint(batch.endpoint)))
        event_slots: list[tuple[str, Slot]] = []
        for event_id, event in batch.events:
            if isinstance(event, Invalid):
                event_slots.append((event_id, event))
            else:
                batch_key = batch_key or key(app_id, batch.endpoint_id)
                event_slots.append((event_id, len(records)))
                records.append(OutRecord(EVENTS_TOPIC, batch_key, encode_event(event)))
        slots.append((batch.endpoint_id, endpoint_slot, event_slots))
    return Split(records, slots)


def results(done: Split, acked: Sequence[bool]) -> tuple[dict[str, Any], Tally]:
    """PutEvents' ``Results`` for the acks of ``done.records``, and the tally of outcomes."""
    tally: Tally = Counter()

    def status(slot: Slot, kind: Kind) -> dict[str, Any]:
        if isinstance(slot, Invalid):
            tally[(kind, "rejected", slot.reason)] += 1
            return {"StatusCode": 400, "Message": slot.message}
        if acked[slot]:
            tally[(kind, "accepted", "")] += 1
            return ACCEPTED
        tally[(kind, "failed", "")] += 1
        return NOT_ACKED

    # Events counted in locals, not the Counter, for the usual outcomes: a
    # tuple and a Counter update per item cost more than the answer itself.
    accepted = failed = 0
    answer: dict[str, Any] = {}
    for endpoint_id, endpoint_slot, event_slots in done.slots:
        events: dict[str, Any] = {}
        for event_id, slot in event_slots:
            if isinstance(slot, Invalid):
                events[event_id] = status(slot, "event")
            elif acked[slot]:
                accepted += 1
                events[event_id] = ACCEPTED
            else:
                failed += 1
                events[event_id] = NOT_ACKED
        answer[endpoint_id] = {
            "EndpointItemResponse": status(endpoint_slot, "endpoint"),
            "EventsItemResponse": events,
        }
    if accepted:
        tally[("event", "accepted", "")] += accepted
    if failed:
        tally[("event", "failed", "")] += failed
    return answer, tally
