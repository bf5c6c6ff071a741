"""App KPIs from events: what each event adds, and the rows a KPI answers.
Pure; the store keeps the aggregates, the KPI worker feeds it, the edge reads.

An event counts once: the worker deduplicates on (app, endpoint, event ID)
before anything here sees it, and events whose day is older than the dedupe
window are not aggregated (they could not be deduplicated). Days are UTC days
of the event's own Timestamp.

The aggregates are three kinds of rows, chosen so that every KPI is exact and
independent of batching and order:

* members — (app, kind, day, member) sets: endpoints, users, sessions and
  paying endpoints seen on a day (inserted if absent);
* sums — (app, kind, day, group) → integer totals: event counts, session
  milliseconds, revenue and units in millionths (each event rounded once, so
  totals do not depend on the order of float additions);
* first days — (app, endpoint) → the earliest day it had an event (kept at
  the minimum).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, NamedTuple

from ingest.records.values import Event

DAY_MS = 86_400_000
# Money and units are kept in millionths: exact integer sums.
MICROS = 1_000_000
# The largest purchase amount (price x quantity, or units) summed: in
# millionths, 9,000 such a day still fit a signed 64-bit total.
MAX_AMOUNT = 1e9
# Monthly KPIs: distinct over the 30 days ending on each day.
MONTH_DAYS = 30
# Events dated more than this many UTC days after today are not aggregated:
# a device clock set far ahead would otherwise fill days no one has reached
# (each a partition of marks on PostgreSQL) whose marks never expire. A day
# covers an event stamped just after midnight UTC reaching a worker whose
# clock is a little behind.
MAX_DAYS_AHEAD = 1

SESSION_STOP = "_session.stop"
PURCHASE = "_monetization.purchase"
PUSH_OPENED = "_campaign.opened_notification"
AUTH_EVENTS = {
    "_userauth.sign_in": "sign_ins",
    "_userauth.sign_up": "sign_ups",
    "_userauth.auth_fail": "auth_failures",
}


# What the KPI worker reads of an event, by record: the dedupe mark
# (``store.base.fresh_events``), the UserId it counts for (``context_user``),
# :func:`effects` and its endpoint's last activity (``activity.last_events``).
# Its Avro reader skips the other fields (a projection: they hold
# placeholders), so a field read here must be listed;
# tests/test_projection.py holds effects() to the same rows on events read so.
# Attributes and metrics are read only for the types in DETAILED_TYPES.
EVENT_FIELDS: dict[str, frozenset[str]] = {
    "Event": frozenset(
        "app_id endpoint_id event_id event_type timestamp_ms received_at_ms session endpoint".split()
    ),
    "Session": frozenset({"id", "duration_ms"}),
    "EndpointContext": frozenset({"user_id"}),
}
# The event types whose attributes or metrics effects() reads (a few percent
# of an app's events): the KPI worker reads these events whole.
DETAILED_TYPES = frozenset({PURCHASE, PUSH_OPENED})

MemberKey = tuple[str, str, int, str]
"""(app ID, kind, day, member)"""
SumKey = tuple[str, str, int, str]
"""(app ID, kind, day, group)"""


def _countable(amount: float) -> bool:
    """A purchase amount the sums can hold: finite and at most MAX_AMOUNT
    either way. Beyond that (a client sending 1e200) it is left out of the
    sums rather than failing its whole batch; the event still counts."""
    return math.isfinite(amount) and abs(amount) <= MAX_AMOUNT


def day_of(millis: int) -> int:
    """Epoch milliseconds → UTC day number (days since 1970-01-01)."""
    return millis // DAY_MS


def iso_day(day: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=day)).isoformat()


def push_opens_kind(campaign_id: str) -> str:
    """The sums kind of one campaign's push opens (grouped by activity)."""
    return f"push_opens/{campaign_id}"


@dataclass(slots=True)
class EventOutcome:
    """What one ``apply_event_batch`` did, for metrics."""

    aggregated: int = 0
    duplicates: int = 0
    too_old: int = 0
    too_new: int = 0
    of_deleted_apps: int = 0
    """Events of an app deleted since they were sent: never aggregated."""


@dataclass(slots=True)
class Effects:
    """What a set of new events adds to the aggregates."""

    members: set[MemberKey] = field(default_factory=set)
    sums: dict[SumKey, int] = field(default_factory=dict)
    first_days: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, key: SumKey, amount: int) -> None:
        self.sums[key] = self.sums.get(key, 0) + amount


def effects(events: Iterable[tuple[Event, str | None]]) -> Effects:
    """Fold new (deduplicated, in-window) events, each with the UserId it
    counts for (its endpoint context's, else its endpoint's in the store),
    into the rows they add."""
    out = Effects()
    # Per event this is the KPI worker's innermost loop: bound methods and
    # plain dict updates rather than Effects.add: 0.88 → 0.78 µs an event
    # (bench workload, 5,000-event batches, best of 15).
    add_member = out.members.add
    sums = out.sums
    get_sum = sums.get
    first_days = out.first_days
    for event, user_id in events:
        app, endpoint, kind = event.app_id, event.endpoint_id, event.event_type
        day = event.timestamp_ms // DAY_MS
        add_member((app, "endpoints", day, endpoint))
        if user_id:
            add_member((app, "users", day, user_id))
        first = first_days.get((app, endpoint))
        if first is None or day < first:
            first_days[(app, endpoint)] = day
        key: SumKey = (app, "events", day, "")
        sums[key] = get_sum(key, 0) + 1
        key = (app, "event_types", day, kind)
        sums[key] = get_sum(key, 0) + 1
        session = event.session
        if session is not None:
            add_member((app, "sessions", day, session.id))
            if kind == SESSION_STOP and session.duration_ms is not None:
                out.add((app, "session_ms", day, ""), session.duration_ms)
                out.add((app, "session_stops", day, ""), 1)
        if kind == PURCHASE:
            attributes = event.attributes or {}
            metrics = event.metrics or {}
            quantity = metrics.get("_quantity", 1.0)
            price = metrics.get("_item_price")
            if price is not None and _countable(price * quantity):
                currency = attributes.get("_currency", "")
                out.add((app, "revenue", day, currency), round(price * quantity * MICROS))
            if _countable(quantity):
                out.add((app, "units", day, ""), round(quantity * MICROS))
            add_member((app, "paying", day, endpoint))
        elif kind in AUTH_EVENTS:
            out.add((app, AUTH_EVENTS[kind], day, ""), 1)
        elif kind == PUSH_OPENED:
            attributes = event.attributes or {}
            if attributes.get("campaign_id"):
                activity = attributes.get("campaign_activity_id", "")
                out.add((app, push_opens_kind(attributes["campaign_id"]), day, activity), 1)
    return out


# --- reading -------------------------------------------------------------------

Source = Literal["members", "sums", "first_days"]
Shape = Literal["daily", "monthly", "by_date_and_group", "by_group", "average"]


class Kpi(NamedTuple):
    """How one KPI name is computed: which aggregate rows it reads, of which
    kind, and how they become rows."""

    source: Source
    kind: str
    shape: Shape
    value_key: str
    group_key: str = ""
    # Divides a sum (millionths back to units).
    scale: int = 1
    # Average: the sums kind each day's total is divided by.
    divisor_kind: str = ""


APP_KPIS: dict[str, Kpi] = {
    "daily-active-endpoints": Kpi("members", "endpoints", "daily", "DailyActiveEndpoints"),
    "daily-active-users": Kpi("members", "users", "daily", "DailyActiveUsers"),
    "monthly-active-endpoints": Kpi("members", "endpoints", "monthly", "MonthlyActiveEndpoints"),
    "monthly-active-users": Kpi("members", "users", "monthly", "MonthlyActiveUsers"),
    "new-endpoints": Kpi("first_days", "", "daily", "NewEndpoints"),
    "sessions-grouped-by-date": Kpi("members", "sessions", "daily", "Sessions"),
    "average-session-duration-grouped-by-date": Kpi(
        "sums", "session_ms", "average", "AverageSessionDurationMs", divisor_kind="session_stops"
    ),
    "revenue-grouped-by-date": Kpi("sums", "revenue", "by_date_and_group", "Revenue", "Currency", MICROS),
    "units-sold-grouped-by-date": Kpi("sums", "units", "daily", "UnitsSold", scale=MICROS),
    "paying-endpoints-grouped-by-date": Kpi("members", "paying", "daily", "PayingEndpoints"),
    "events-grouped-by-event-type": Kpi("sums", "event_types", "by_group", "Events", "EventType"),
    "events-grouped-by-date": Kpi("sums", "events", "daily", "Events"),
    "sign-ins-grouped-by-date": Kpi("sums", "sign_ins", "daily", "SignIns"),
    "sign-ups-grouped-by-date": Kpi("sums", "sign_ups", "daily", "SignUps"),
    "auth-failures-grouped-by-date": Kpi("sums", "auth_failures", "daily", "AuthFailures"),
}

# Campaign KPIs that app events answer; the kind is per campaign.
CAMPAIGN_KPIS: dict[str, Kpi] = {
    "direct-push-opens-grouped-by-campaign-activity": Kpi(
        "sums", "push_opens", "by_group", "DirectPushOpens", "CampaignActivityId"
    ),
}

# Pinpoint's documented names (message-delivery metrics this pipeline has no
# data for): answered with no rows, as Pinpoint answers for no data.
_TXN_EMAIL = (
    "txn-emails-clicked txn-emails-complaint-rate txn-emails-with-complaints txn-emails-delivered "
    "txn-emails-delivery-rate txn-emails-hard-bounced txn-emails-opened txn-emails-sent "
    "txn-emails-soft-bounced txn-emails-unique-clicks txn-emails-unique-opens"
).split()
APP_DELIVERY_KPIS = frozenset(
    [
        "successful-delivery-rate",
        "successful-delivery-rate-grouped-by-date",
        "email-open-rate",
        "email-open-rate-grouped-by-campaign",
        "unique-deliveries",
        "unique-deliveries-grouped-by-campaign",
        "unique-deliveries-grouped-by-date",
        "successful-deliveries-grouped-by-campaign",
        "push-open-rate",
        "push-open-rate-grouped-by-campaign",
        *_TXN_EMAIL,
        *(f"{name}-grouped-by-date" for name in _TXN_EMAIL),
        "txn-sms-average-price-grouped-by-country",
        "txn-sms-average-price-by-parts-grouped-by-country",
        "txn-sms-delivered",
        "txn-sms-delivered-grouped-by-country",
        "txn-sms-delivered-grouped-by-date",
        "txn-sms-error-distribution",
        "txn-sms-delivery-rate",
        "txn-sms-delivery-rate-grouped-by-date",
        "txn-sms-delivered-by-parts",
        "txn-sms-delivered-by-parts-grouped-by-country",
        "txn-sms-sent-by-parts",
        "txn-sms-sent-by-parts-grouped-by-country",
        "txn-sms-sent",
        "txn-sms-sent-grouped-by-country",
        "txn-sms-sent-grouped-by-date",
        "txn-sms-total-price-grouped-by-country",
        "sms-spend",
    ]
)
CAMPAIGN_DELIVERY_KPIS = frozenset(
    [
        "hard-bounce-rate",
        "hard-bounce-rate-grouped-by-campaign-activity",
        "successful-delivery-rate",
        "successful-delivery-rate-grouped-by-campaign-activity",
        "successful-delivery-rate-grouped-by-date",
        "email-open-rate",
        "email-open-rate-grouped-by-campaign-activity",
        "direct-email-opens-grouped-by-campaign-activity",
        "unique-deliveries",
        "unique-deliveries-grouped-by-campaign-activity",
        "unique-deliveries-grouped-by-date",
        "clicks-grouped-by-campaign-activity",
        "successful-deliveries-grouped-by-campaign-activity",
        "attempted-deliveries-grouped-by-campaign-activity",
        "push-open-rate",
        "push-open-rate-grouped-by-campaign-activity",
    ]
)
JOURNEY_DELIVERY_KPIS = frozenset(
    name
    for metric in (
        "clicked",
        "complained",
        "delivered",
        "hardbounced",
        "opened",
        "rejected",
        "sent",
        "softbounced",
        "unsubscribed",
    )
    for name in (f"journey-emails-{metric}", f"emails-{metric}-grouped-by-journey-activity")
)


def _value(key: str, amount: float) -> dict[str, str]:
    # Pinpoint prints every value as a double: "1368.0".
    return {"Key": key, "Type": "Double", "Value": repr(float(amount))}


def _date(day: int) -> dict[str, str]:
    return {"Key": "Date", "Type": "String", "Value": iso_day(day)}


def _group(key: str, value: str) -> dict[str, str]:
    return {"Key": key, "Type": "String", "Value": value}


def rows(
    kpi: Kpi,
    start_day: int,
    end_day: int,
    data: Sequence[tuple[int, str, int]],
    divisors: Mapping[int, int] | None = None,
) -> list[dict[str, Any]]:
    """KpiResult.Rows for days ``start_day``..``end_day`` (inclusive).

    ``data`` holds the aggregate rows read for the KPI, as (day, group,
    amount): for members, (day, "", distinct members that day, or over the
    MONTH_DAYS days ending that day when monthly); for sums, (day, group,
    total); for first days, (day, "", endpoints). ``divisors`` (average only)
    maps a day to the count the day's total is divided by. Days, and groups,
    whose value is zero are left out; rows come in day order, then group.
    """
    in_range = [(day, group, amount) for day, group, amount in data if start_day <= day <= end_day]
    if kpi.shape == "by_group":
        totals: dict[str, int] = {}
        for _, group, amount in in_range:
            totals[group] = totals.get(group, 0) + amount
        return [
            {
                "GroupedBys": [_group(kpi.group_key, group)],
                "Values": [_value(kpi.value_key, total / kpi.scale)],
            }
            for group, total in sorted(totals.items())
            if total
        ]
    if kpi.shape == "by_date_and_group":
        cells: dict[tuple[int, str], int] = {}
        for day, group, amount in in_range:
            cells[(day, group)] = cells.get((day, group), 0) + amount
        return [
            {
                "GroupedBys": [_date(day), _group(kpi.group_key, group)],
                "Values": [_value(kpi.value_key, total / kpi.scale)],
            }
            for (day, group), total in sorted(cells.items())
            if total
        ]
    per_day: dict[int, int] = {}
    for day, _, amount in in_range:
        per_day[day] = per_day.get(day, 0) + amount
    if kpi.shape == "average":
        counts = divisors or {}
        return [
            {"GroupedBys": [_date(day)], "Values": [_value(kpi.value_key, total / counts[day])]}
            for day, total in sorted(per_day.items())
            if counts.get(day)
        ]
    return [
        {"GroupedBys": [_date(day)], "Values": [_value(kpi.value_key, total / kpi.scale)]}
        for day, total in sorted(per_day.items())
        if total
    ]


def rolling_counts(
    steps: Sequence[tuple[int, str, int]], first_day: int, last_day: int
) -> list[tuple[int, str, int]]:
    """(day, "", count) for each day ``first_day``..``last_day`` whose count
    is not zero, from ``steps``: (day, "", count from that day on), in day
    order, as the stores' monthly reads compute them."""
    out: list[tuple[int, str, int]] = []
    count, at = 0, 0
    for day in range(first_day, last_day + 1):
        while at < len(steps) and steps[at][0] <= day:
            count = steps[at][2]
            at += 1
        if count:
            out.append((day, "", count))
    return out


def parse_day(text: str) -> int:
    """An ISO 8601 timestamp (or date) → its UTC day. ValueError if not one."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed.astimezone(UTC).date() - date(1970, 1, 1)).days
