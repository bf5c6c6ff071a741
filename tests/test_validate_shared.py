"""PutEvents reads a session equal to the previous event's once: an event's
verdict must not depend on its neighbours, so every event of a batch is
judged as it is judged alone."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.records import validate
from ingest.records.values import Event, Invalid
from tests.test_validate import plausible_events, sessions

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
START = "2026-11-23T10:00:00.000Z"


def verdicts(events: dict[str, Any]) -> list[tuple[str, Event | Invalid]]:
    [batch] = validate.put_events(
        {"BatchItem": {"ep": {"Endpoint": {}, "Events": events}}},
        app_id="app",
        request_id="req",
        received_at_ms=1,
        body_bytes=0,
    )
    return list(batch.events)


def alone(event_id: str, event: Any) -> Event | Invalid:
    [(_, decided)] = verdicts({event_id: event})
    return decided


@FAST
@given(
    st.lists(sessions, min_size=1, max_size=3).flatmap(
        lambda pool: st.lists(
            st.tuples(plausible_events, st.none() | st.sampled_from(pool)), min_size=1, max_size=20
        )
    )
)
def test_each_event_is_judged_as_it_is_alone(drawn: list[tuple[Any, Any]]) -> None:
    events: dict[str, Any] = {}
    for i, (event, session) in enumerate(drawn):
        if type(event) is dict and session is not None:
            event = {**event, "Session": session}
        events[f"e{i}"] = event
    assert verdicts(events) == [(event_id, alone(event_id, event)) for event_id, event in events.items()]


def test_durations_equal_as_numbers_are_judged_by_type() -> None:
    def event(duration: object) -> dict[str, Any]:
        session = {"Id": "s", "StartTimestamp": START, "Duration": duration}
        return {"EventType": "x", "Timestamp": START, "Session": session}

    decided = dict(verdicts({"int": event(1), "float": event(1.0), "bool": event(True), "again": event(1)}))
    assert isinstance(decided["int"], Event)
    assert (
        decided["float"]
        == decided["bool"]
        == Invalid("bad_value", "Session.Duration must be a whole number of milliseconds >= 0")
    )
    again, first = decided["again"], decided["int"]
    assert isinstance(again, Event)
    assert again.session == first.session


def test_a_session_read_again_is_the_same_object() -> None:
    session = {"Id": "s", "StartTimestamp": START}
    decided = verdicts(
        {f"e{i}": {"EventType": "x", "Timestamp": START, "Session": dict(session)} for i in range(3)}
    )
    first, second, third = (e for _, e in decided)
    assert isinstance(first, Event) and isinstance(second, Event) and isinstance(third, Event)
    assert first.session is second.session is third.session


def test_equal_app_strings_are_one_object_for_the_encoder() -> None:
    def event(package: str) -> dict[str, Any]:
        return {"EventType": "x", "Timestamp": START, "AppPackageName": package, "SdkName": "sdk"}

    decided = [e for _, e in verdicts({"a": event("p"), "b": event("p"), "c": event("q")})]
    a, b, c = decided
    assert isinstance(a, Event) and isinstance(b, Event) and isinstance(c, Event)
    assert a.app_package_name is b.app_package_name and a.sdk_name is b.sdk_name
    assert (a.app_package_name, c.app_package_name, c.sdk_name) == ("p", "q", "sdk")
