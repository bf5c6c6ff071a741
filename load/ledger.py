"""End-to-end accounting: what the edge answered for each event, and how that
compares with what the KPIs counted. Pure.

Per event, the first decisive answer wins: 202 "Accepted" (the event is in
Kafka and must be counted exactly once), 400 (rejected; never counted). A 500,
a 429, a timeout or a broken connection decides nothing: the event is sent
again, same ID, as an SDK does. An event still undecided when its attempts run
out is *failed*: it may or may not have reached Kafka (a 500 can come after
the broker took the record), so it may be counted at most once.

The KPI side is ``events-grouped-by-event-type`` of the run's own app. For
each event type ``t`` with ``A`` distinct accepted events, ``F`` failed ones
and ``C`` counted:

* ``lost`` adds ``max(0, A - C)``: accepted and not counted;
* ``duplicated`` adds ``max(0, C - A - F)``: counted more often than sent.

Counts cannot tell a lost event from a duplicated one of the same type in the
same run; each would hide the other. Both are zero in a correct pipeline, and
the run fails on either.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from load.traffic import Batch

ACCEPTED_MESSAGE = "Accepted"


@dataclass(slots=True)
class Pending:
    """The undecided events of one batch: ID → event type."""

    batch: Batch
    undecided: dict[str, str]

    def __len__(self) -> int:
        return len(self.undecided)


@dataclass
class Tally:
    """Counters of one generator process; sums across processes with ``+``."""

    requests: int = 0
    events_sent: int = 0
    events_resent: int = 0
    events_answered: int = 0
    events_accepted: int = 0
    events_rejected: int = 0
    events_failed: int = 0
    invalid_sent: int = 0
    valid_rejected: int = 0
    invalid_accepted: int = 0
    missing_answers: int = 0
    sdk_retries: int = 0
    batches_resent: int = 0
    http: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    accepted_by_type: Counter[str] = field(default_factory=Counter)
    failed_by_type: Counter[str] = field(default_factory=Counter)

    def __add__(self, other: Tally) -> Tally:
        out = Tally()
        for name, value in vars(self).items():
            setattr(out, name, value + getattr(other, name))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tally:
        out = cls()
        for name, value in data.items():
            setattr(out, name, Counter(value) if isinstance(value, dict) else value)
        return out


class Ledger:
    """Follows each batch's events from first send to a decision."""

    def __init__(self) -> None:
        self.tally = Tally()

    def open(self, batch: Batch) -> Pending:
        """A batch about to be sent for the first time."""
        self.tally.events_sent += len(batch.types)
        self.tally.invalid_sent += len(batch.invalid)
        return Pending(batch, dict(batch.types))

    def request(self, status: str, events: int, *, retry: bool = False, resend: bool = False) -> None:
        """One HTTP request answered ``status`` ("202", "500", "timeout", …)
        that carried ``events`` events."""
        self.tally.requests += 1
        self.tally.http[status] += 1
        if retry:
            self.tally.sdk_retries += 1
        if resend:
            self.tally.batches_resent += 1
        if retry or resend:
            self.tally.events_resent += events

    def answer(self, pending: Pending, results: Any, sent: Iterable[str]) -> None:
        """A PutEvents ``{"Results": …}`` for the events in ``sent``.
        Malformed parts decide nothing (their events stay pending)."""
        tally = self.tally
        undecided = pending.undecided
        invalid = pending.batch.invalid
        answered = 0
        accepted = 0
        seen: set[str] = set()
        for item in results.values() if isinstance(results, dict) else ():
            try:
                answers = item["EventsItemResponse"].items()
            except (KeyError, TypeError, AttributeError):
                continue
            for event_id, answer in answers:
                try:
                    code = answer["StatusCode"]
                    ok = code == 202 and answer["Message"] == ACCEPTED_MESSAGE
                except (KeyError, TypeError):
                    continue
                seen.add(event_id)
                answered += 1
                if ok:
                    accepted += 1
                else:
                    tally.events[str(code)] += 1
                event_type = undecided.pop(event_id, None)
                if event_type is None:
                    continue  # decided before: a resend or a repeated answer
                if ok:
                    tally.events_accepted += 1
                    tally.accepted_by_type[event_type] += 1
                    if event_id in invalid:
                        tally.invalid_accepted += 1
                elif code == 400:
                    tally.events_rejected += 1
                    if event_id not in invalid:
                        tally.valid_rejected += 1
                else:
                    undecided[event_id] = event_type  # 500: sent again
        tally.events["202"] += accepted
        tally.events_answered += answered
        tally.missing_answers += sum(1 for event_id in sent if event_id not in seen)

    def refuse(self, pending: Pending) -> None:
        """The whole request was refused for good (400, 404, 413): nothing of
        it reached Kafka."""
        self.tally.events_rejected += len(pending.undecided)
        self.tally.valid_rejected += sum(1 for e in pending.undecided if e not in pending.batch.invalid)
        pending.undecided.clear()

    def give_up(self, pending: Pending) -> None:
        """Attempts ran out: each undecided event may or may not be in Kafka."""
        for event_type in pending.undecided.values():
            self.tally.failed_by_type[event_type] += 1
        self.tally.events_failed += len(pending.undecided)
        pending.undecided.clear()


@dataclass(frozen=True, slots=True)
class Reconciliation:
    lost: int
    duplicated: int
    counted: int
    by_type: dict[str, tuple[int, int]]  # type → (expected, counted), mismatches only

    @property
    def matches(self) -> bool:
        return not self.by_type


def reconcile(
    accepted: Mapping[str, int], failed: Mapping[str, int], counted: Mapping[str, int]
) -> Reconciliation:
    """Compare accepted (and failed) events per type with the KPI's counts."""
    lost = duplicated = 0
    mismatched: dict[str, tuple[int, int]] = {}
    for event_type in set(accepted) | set(counted) | set(failed):
        a, f, c = accepted.get(event_type, 0), failed.get(event_type, 0), counted.get(event_type, 0)
        lost += max(0, a - c)
        duplicated += max(0, c - a - f)
        if not a <= c <= a + f:
            mismatched[event_type] = (a, c)
    return Reconciliation(lost, duplicated, sum(counted.values()), mismatched)


def kpi_counts(response: Mapping[str, Any]) -> dict[str, int]:
    """``events-grouped-by-event-type`` rows → {event type: count}."""
    counts: dict[str, int] = {}
    for row in response["KpiResult"]["Rows"]:
        event_type = next(g["Value"] for g in row["GroupedBys"] if g["Key"] == "EventType")
        counts[event_type] = counts.get(event_type, 0) + round(float(row["Values"][0]["Value"]))
    return counts
