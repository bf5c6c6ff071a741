"""KPIs end to end: boto3 sends events through the shared `ingest run` (edge →
Kafka → KPI worker → SQLite) and reads every KPI back with Pinpoint's
date-range KPI calls.

One known set of events over three days (today and the two before, UTC), with
an SDK-style retry of a whole batch (same event IDs) that must not count, and
an endpoint whose user comes from the store (Amplify JS sends an empty
Endpoint). Each KPI is compared with figures worked out by hand below.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ingest.folds import kpis
from tests.conftest import endpoint_or_none, eventually
from tests.test_api import ACCEPTED, put

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
D0, D1, D2 = (TODAY - timedelta(days=2 - n) for n in range(3))
DAYS = [d.date().isoformat() for d in (D0, D1, D2)]
WITHIN_S = 40.0


def at(day: datetime, minute: int) -> str:
    return (
        (day + timedelta(hours=10, minutes=minute)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def ev(
    event_type: str, day: datetime, minute: int, session: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"EventType": event_type, "Timestamp": at(day, minute), **extra}
    if session is not None:
        body["Session"] = {"Id": session, "StartTimestamp": at(day, 0)}
    return body


def events(*bodies: dict[str, Any]) -> dict[str, Any]:
    return {str(uuid.uuid4()): body for body in bodies}


def stop(day: datetime, minute: int, session: str, duration_ms: int) -> dict[str, Any]:
    body = ev("_session.stop", day, minute, session)
    body["Session"]["Duration"] = duration_ms
    body["Session"]["StopTimestamp"] = at(day, minute)
    return body


def purchase(
    day: datetime, minute: int, price: float, currency: str, quantity: float | None = None, **kw: Any
) -> dict[str, Any]:
    metrics = {"_item_price": price} if quantity is None else {"_item_price": price, "_quantity": quantity}
    return ev(
        "_monetization.purchase", day, minute, Attributes={"_currency": currency}, Metrics=metrics, **kw
    )


@pytest.fixture(scope="module")
def kpi_app(pinpoint: Any) -> Iterator[str]:
    """An app with the module's events, all counted."""
    app_id = str(pinpoint.create_app(CreateApplicationRequest={"Name": "kpis"})["ApplicationResponse"]["Id"])
    user = {"u1": {"User": {"UserId": "u1"}}, "u2": {"User": {"UserId": "u2"}}}
    a_day0 = events(
        ev("_session.start", D0, 1, "s1"),
        purchase(D0, 2, 1.5, "USD", 2, Session={"Id": "s1", "StartTimestamp": at(D0, 0)}),
        stop(D0, 3, "s1", 60_000),
    )
    put(pinpoint, app_id, {"ep-a": {"Endpoint": user["u1"], "Events": a_day0}})
    put(
        pinpoint,
        app_id,
        {
            "ep-b": {
                "Endpoint": user["u2"],
                "Events": events(ev("_session.start", D0, 5, "s2"), stop(D0, 6, "s2", 30_000)),
            }
        },
    )
    # The SDK retries ep-a's batch (same event IDs): nothing may count twice.
    retried = put(pinpoint, app_id, {"ep-a": {"Endpoint": user["u1"], "Events": a_day0}})
    assert all(r == ACCEPTED for r in retried["ep-a"]["EventsItemResponse"].values())
    put(
        pinpoint,
        app_id,
        {
            "ep-a": {
                "Endpoint": user["u1"],
                "Events": events(ev("_userauth.sign_in", D1, 1), ev("level_up", D1, 2)),
            }
        },
    )
    put(
        pinpoint,
        app_id,
        {
            "ep-c": {
                "Endpoint": {},
                "Events": events(ev("_session.start", D1, 3, "s3"), ev("_userauth.auth_fail", D1, 4, "s3")),
            }
        },
    )
    put(
        pinpoint,
        app_id,
        {
            "ep-b": {
                "Endpoint": user["u2"],
                "Events": events(
                    purchase(D2, 1, 3.0, "EUR"),
                    ev("_userauth.sign_up", D2, 2),
                    ev(
                        "_campaign.opened_notification",
                        D2,
                        3,
                        Attributes={"campaign_id": "c1", "campaign_activity_id": "a1"},
                    ),
                ),
            }
        },
    )
    put(pinpoint, app_id, {"ep-c": {"Endpoint": {}, "Events": events(ev("level_up", D2, 4))}})
    # ep-d's user is only in the store: registered first, as Amplify JS does.
    pinpoint.update_endpoint(
        ApplicationId=app_id, EndpointId="ep-d", EndpointRequest={"User": {"UserId": "u3"}}
    )
    eventually(
        lambda: endpoint_or_none(pinpoint, app_id, "ep-d"),
        lambda found: found is not None,
        "ep-d stored",
        WITHIN_S,
    )
    put(pinpoint, app_id, {"ep-d": {"Endpoint": {}, "Events": events(ev("level_up", D2, 5))}})
    eventually(
        lambda: total(pinpoint, app_id, "events-grouped-by-date"),
        lambda counted: counted == 14.0,
        "every event counted",
        WITHIN_S,
    )
    yield app_id


def app_kpi(pinpoint: Any, app_id: str, name: str, **window: datetime) -> dict[str, Any]:
    bounds = {"StartTime": window.get("start", D0), "EndTime": window.get("end", D2 + timedelta(hours=23))}
    response = pinpoint.get_application_date_range_kpi(ApplicationId=app_id, KpiName=name, **bounds)
    return dict(response["ApplicationDateRangeKpiResponse"])


def total(pinpoint: Any, app_id: str, name: str) -> float:
    rows = app_kpi(pinpoint, app_id, name)["KpiResult"]["Rows"]
    return sum(float(row["Values"][0]["Value"]) for row in rows)


def daily(key: str, values: list[float | None]) -> list[dict[str, Any]]:
    """Rows of a by-date KPI, from one value per day (None: no row)."""
    return [
        {
            "GroupedBys": [{"Key": "Date", "Type": "String", "Value": day}],
            "Values": [{"Key": key, "Type": "Double", "Value": repr(value)}],
        }
        for day, value in zip(DAYS, values, strict=True)
        if value is not None
    ]


def grouped(
    key: str, group: str, cells: list[tuple[str, float]], day_of: list[str] | None = None
) -> list[dict[str, Any]]:
    rows = []
    for n, (name, value) in enumerate(cells):
        by = [{"Key": group, "Type": "String", "Value": name}]
        if day_of is not None:
            by.insert(0, {"Key": "Date", "Type": "String", "Value": day_of[n]})
        rows.append({"GroupedBys": by, "Values": [{"Key": key, "Type": "Double", "Value": repr(value)}]})
    return rows


EXPECTED: dict[str, list[dict[str, Any]]] = {
    # ep-a, ep-b on D0; ep-a, ep-c on D1; ep-b, ep-c, ep-d on D2.
    "daily-active-endpoints": daily("DailyActiveEndpoints", [2.0, 2.0, 3.0]),
    # u1, u2 on D0; u1 on D1 (ep-c has none); u2, u3 (from the store) on D2.
    "daily-active-users": daily("DailyActiveUsers", [2.0, 1.0, 2.0]),
    "monthly-active-endpoints": daily("MonthlyActiveEndpoints", [2.0, 3.0, 4.0]),
    "monthly-active-users": daily("MonthlyActiveUsers", [2.0, 2.0, 3.0]),
    "new-endpoints": daily("NewEndpoints", [2.0, 1.0, 1.0]),
    # s1, s2 on D0; s3 on D1; no event on D2 carries a session.
    "sessions-grouped-by-date": daily("Sessions", [2.0, 1.0, None]),
    "average-session-duration-grouped-by-date": daily("AverageSessionDurationMs", [45000.0, None, None]),
    "revenue-grouped-by-date": grouped(
        "Revenue", "Currency", [("USD", 3.0), ("EUR", 3.0)], [DAYS[0], DAYS[2]]
    ),
    "units-sold-grouped-by-date": daily("UnitsSold", [2.0, None, 1.0]),
    "paying-endpoints-grouped-by-date": daily("PayingEndpoints", [1.0, None, 1.0]),
    "events-grouped-by-event-type": grouped(
        "Events",
        "EventType",
        [
            ("_campaign.opened_notification", 1.0),
            ("_monetization.purchase", 2.0),
            ("_session.start", 3.0),
            ("_session.stop", 2.0),
            ("_userauth.auth_fail", 1.0),
            ("_userauth.sign_in", 1.0),
            ("_userauth.sign_up", 1.0),
            ("level_up", 3.0),
        ],
    ),
    "events-grouped-by-date": daily("Events", [5.0, 4.0, 5.0]),
    "sign-ins-grouped-by-date": daily("SignIns", [None, 1.0, None]),
    "sign-ups-grouped-by-date": daily("SignUps", [None, None, 1.0]),
    "auth-failures-grouped-by-date": daily("AuthFailures", [None, 1.0, None]),
}


def test_every_app_kpi_is_served() -> None:
    assert set(EXPECTED) == set(kpis.APP_KPIS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_app_kpi_rows(pinpoint: Any, kpi_app: str, name: str) -> None:
    answer = app_kpi(pinpoint, kpi_app, name)
    assert answer["ApplicationId"] == kpi_app
    assert answer["KpiName"] == name
    assert answer["StartTime"] == D0
    assert answer["KpiResult"]["Rows"] == EXPECTED[name]


def test_window_bounds_are_inclusive_days(pinpoint: Any, kpi_app: str) -> None:
    # 23:00 on D1 to 01:00 on D2: both days whole.
    answer = app_kpi(
        pinpoint,
        kpi_app,
        "events-grouped-by-date",
        start=D1 + timedelta(hours=23),
        end=D2 + timedelta(hours=1),
    )
    assert answer["KpiResult"]["Rows"] == daily("Events", [None, 4.0, 5.0])
    assert (answer["StartTime"], answer["EndTime"]) == (D1 + timedelta(hours=23), D2 + timedelta(hours=1))


def test_default_window_is_the_last_31_days(pinpoint: Any, kpi_app: str) -> None:
    before = datetime.now(UTC)
    answer = pinpoint.get_application_date_range_kpi(ApplicationId=kpi_app, KpiName="events-grouped-by-date")[
        "ApplicationDateRangeKpiResponse"
    ]
    assert answer["StartTime"] == TODAY - timedelta(days=30)
    assert before - timedelta(seconds=1) <= answer["EndTime"] <= datetime.now(UTC) + timedelta(seconds=1)
    assert answer["KpiResult"]["Rows"] == EXPECTED["events-grouped-by-date"]


def test_delivery_kpis_answer_no_rows(pinpoint: Any, kpi_app: str) -> None:
    assert app_kpi(pinpoint, kpi_app, "successful-delivery-rate")["KpiResult"] == {"Rows": []}
    campaign = pinpoint.get_campaign_date_range_kpi(
        ApplicationId=kpi_app, CampaignId="c1", KpiName="hard-bounce-rate", StartTime=D0, EndTime=D2
    )["CampaignDateRangeKpiResponse"]
    assert (campaign["CampaignId"], campaign["KpiResult"]) == ("c1", {"Rows": []})
    journey = pinpoint.get_journey_date_range_kpi(
        ApplicationId=kpi_app, JourneyId="j1", KpiName="journey-emails-sent", StartTime=D0, EndTime=D2
    )["JourneyDateRangeKpiResponse"]
    assert (journey["JourneyId"], journey["KpiResult"]) == ("j1", {"Rows": []})


def test_campaign_push_opens_by_activity(pinpoint: Any, kpi_app: str) -> None:
    def opens(campaign_id: str) -> Any:
        return pinpoint.get_campaign_date_range_kpi(
            ApplicationId=kpi_app,
            CampaignId=campaign_id,
            KpiName="direct-push-opens-grouped-by-campaign-activity",
            StartTime=D0,
            EndTime=D2,
        )["CampaignDateRangeKpiResponse"]["KpiResult"]["Rows"]

    assert opens("c1") == grouped("DirectPushOpens", "CampaignActivityId", [("a1", 1.0)])
    assert opens("c2") == []


@pytest.mark.parametrize(
    "call",
    [
        lambda p, app: p.get_application_date_range_kpi(ApplicationId=app, KpiName="no-such-kpi"),
        lambda p, app: p.get_campaign_date_range_kpi(
            ApplicationId=app, CampaignId="c1", KpiName="daily-active-users"
        ),
        lambda p, app: p.get_journey_date_range_kpi(ApplicationId=app, JourneyId="j1", KpiName="no-such-kpi"),
        lambda p, app: p.get_application_date_range_kpi(
            ApplicationId=app, KpiName="daily-active-users", StartTime=D2, EndTime=D0
        ),
    ],
    ids=["unknown-app-kpi", "app-kpi-on-campaign", "unknown-journey-kpi", "end-before-start"],
)
def test_bad_queries_are_bad_request(pinpoint: Any, kpi_app: str, call: Any) -> None:
    with pytest.raises(ClientError) as caught:
        call(pinpoint, kpi_app)
    assert caught.value.response["Error"]["Code"] == "BadRequestException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
