"""Each endpoint's last activity, for segments' ``Behavior.Recency``: the
latest time any of its events happened. Pure; the KPI batch's transaction
keeps the maximum in the store (``endpoint_activity``).

An event happened at its own Timestamp, or at its arrival if that Timestamp
is later: an offline batch sent today dates its endpoint's activity to when
it was used, not to today, and a device whose clock runs ahead cannot make
itself active for ever (as the endpoint fold clamps EffectiveDate). A
maximum needs no dedupe: every event counts, duplicates and those too old
for the dedupe window included (only those of deleted apps are dropped).
"""

from __future__ import annotations

from collections.abc import Iterable

from ingest.records.values import Event


def last_events(events: Iterable[Event]) -> dict[tuple[str, str], int]:
    """(app, endpoint) → the latest time (epoch ms) among ``events`` that
    one of its events happened: its Timestamp, or its arrival if earlier."""
    last: dict[tuple[str, str], int] = {}
    get = last.get
    for event in events:
        at = event.timestamp_ms
        if at > event.received_at_ms:
            at = event.received_at_ms
        key = (event.app_id, event.endpoint_id)
        seen = get(key)
        if seen is None or at > seen:
            last[key] = at
    return last
