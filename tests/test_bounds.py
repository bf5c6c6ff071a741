"""Bounds on what one request may cost, against a running `ingest run`:
reads admitted like writes (429 under overload), KPI windows of at most 31
days, IDs of at most ``validate.MAX_ID_CHARS`` characters refused per item
before anything is produced, and a number no double holds refused in one
parse. Sizes are small and bounded; loopback only.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from botocore.exceptions import ClientError

from ingest.records.validate import EXACT_PARSE_MAX_BYTES, MAX_ID_CHARS
from tests.conftest import Pipeline, start_pipeline
from tests.samples import metric
from tests.test_api import ACCEPTED, error_code, event, put
from tests.test_faults import batch, statuses

LONG = "x" * (MAX_ID_CHARS + 1)
LONGEST = "y" * MAX_ID_CHARS
# 31 days apart: Pinpoint's longest window.
JAN_1, FEB_1 = "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"


def kpi_paths(app_id: str) -> list[str]:
    return [
        f"/v1/apps/{app_id}/kpis/daterange/daily-active-endpoints",
        f"/v1/apps/{app_id}/kpis/daterange/monthly-active-endpoints",
        f"/v1/apps/{app_id}/campaigns/c1/kpis/daterange/hard-bounce-rate",
        f"/v1/apps/{app_id}/journeys/j1/kpis/daterange/journey-emails-sent",
    ]


def kpi(pipeline: Pipeline, path: str, **window: str) -> tuple[int, dict[str, str], Any]:
    query = urlencode({k.replace("_", "-"): v for k, v in window.items()})
    status, headers, raw = pipeline.request("GET", f"{path}?{query}" if query else path)
    return status, headers, json.loads(raw)


# --- admission -----------------------------------------------------------------


def test_kpi_reads_are_admitted_and_answer_429_under_overload(tmp_path: Path) -> None:
    running = start_pipeline(tmp_path, INGEST_PRODUCE_TIMEOUT_S="3", INGEST_MAX_IN_FLIGHT_REQUESTS="2")
    try:
        client = running.client()
        app_id = client.create_app(CreateApplicationRequest={"Name": "reads"})["ApplicationResponse"]["Id"]
        os.kill(running.broker_pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(2) as pool:
                held = [pool.submit(put, client, app_id, batch(f"held{n}", 1, 1)) for n in range(2)]
                deadline = time.monotonic() + 5
                while metric(running, "ingest_http_in_flight_requests") != 2:
                    assert time.monotonic() < deadline, "requests never got in flight"
                # Both slots are held until the produce deadline (3 s): every
                # KPI read is refused now, not queued behind them.
                for path in kpi_paths(app_id):
                    started = time.monotonic()
                    status, headers, body = kpi(running, path)
                    assert time.monotonic() - started < 2.0, path
                    assert status == 429, (path, body)
                    assert headers["x-amzn-errortype"] == "TooManyRequestsException"
                for future in held:
                    assert statuses(future.result()) == {500}
        finally:
            os.kill(running.broker_pid, signal.SIGCONT)
        # With the slots free again the same reads answer.
        for path in kpi_paths(app_id):
            assert kpi(running, path)[0] == 200, path
    finally:
        running.stop(signal.SIGKILL)


# --- KPI windows -----------------------------------------------------------------


def test_a_kpi_window_of_31_days_answers_and_a_longer_one_is_a_400(pipeline: Pipeline, app_id: str) -> None:
    for path in kpi_paths(app_id):
        status, _, body = kpi(
            pipeline, path, start_time="2026-01-01T00:00:00Z", end_time="2026-02-01T00:00:00Z"
        )
        assert status == 200, (path, body)
        assert (body["StartTime"], body["EndTime"]) == (
            "2026-01-01T00:00:00.000Z",
            "2026-02-01T00:00:00.000Z",
        )
        status, headers, body = kpi(pipeline, path, start_time=JAN_1, end_time="2026-02-01T00:00:01Z")
        assert status == 400, (path, body)
        assert headers["x-amzn-errortype"] == "BadRequestException"
        assert "longer than 31 days" in body["Message"]


def test_boto3_hears_the_window_bound_as_bad_request(pinpoint: Any, app_id: str) -> None:
    with pytest.raises(ClientError) as exc:
        pinpoint.get_application_date_range_kpi(
            ApplicationId=app_id,
            KpiName="monthly-active-users",
            StartTime="0001-01-01T00:00:00Z",
            EndTime="9999-12-31T23:59:59Z",
        )
    assert error_code(exc) == "BadRequestException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@pytest.mark.parametrize(
    "window",
    [
        {"start_time": "9999-12-31T00:00:00Z"},  # its default end is past 9999
        {"end_time": "0001-01-10T00:00:00Z"},  # its default start is before year 1
        {"start_time": "0001-01-01T00:00:00+01:00"},  # in UTC, year 0
        {"end_time": "9999-12-31T23:00:00-02:00"},  # in UTC, year 10000
    ],
    ids=["start 9999", "end 0001", "offset before year 1", "offset past 9999"],
)
def test_a_kpi_window_outside_years_1_to_9999_is_a_400(
    pipeline: Pipeline, app_id: str, window: dict[str, str]
) -> None:
    for path in kpi_paths(app_id):
        status, headers, body = kpi(pipeline, path, **window)
        assert status == 400, (path, body)
        assert headers["x-amzn-errortype"] == "BadRequestException"
        assert "years 1-9999" in body["Message"]


def test_a_31_day_window_at_either_end_of_the_calendar_answers(pipeline: Pipeline, app_id: str) -> None:
    for start, end in (
        ("0001-01-01T00:00:00Z", "0001-01-31T23:59:59Z"),
        ("9999-12-01T00:00:00Z", "9999-12-31T23:59:59Z"),
    ):
        for path in kpi_paths(app_id):
            status, _, body = kpi(pipeline, path, start_time=start, end_time=end)
            assert status == 200, (path, body)


# --- IDs -------------------------------------------------------------------------


def test_an_overlong_endpoint_id_fails_its_items_and_the_rest_of_the_batch_goes_through(
    pinpoint: Any, app_id: str
) -> None:
    results = put(
        pinpoint,
        app_id,
        {
            "ok": {"Endpoint": {}, "Events": {"ok-1": event()}},
            LONGEST: {"Endpoint": {}, "Events": {"longest-1": event()}},
            LONG: {"Endpoint": {"Address": "a"}, "Events": {"long-1": event(), "long-2": event()}},
        },
    )
    for endpoint_id, event_id in (("ok", "ok-1"), (LONGEST, "longest-1")):
        assert results[endpoint_id]["EndpointItemResponse"] == ACCEPTED
        assert results[endpoint_id]["EventsItemResponse"][event_id] == ACCEPTED
    refused = results[LONG]
    assert refused["EndpointItemResponse"]["StatusCode"] == 400
    assert f"at most {MAX_ID_CHARS}" in refused["EndpointItemResponse"]["Message"]
    assert {s["StatusCode"] for s in refused["EventsItemResponse"].values()} == {400}
    assert set(refused["EventsItemResponse"]) == {"long-1", "long-2"}


def test_overlong_event_session_and_user_ids_fail_only_their_item(pinpoint: Any, app_id: str) -> None:
    session = {"Id": LONG, "StartTimestamp": "2026-11-20T10:00:00.000Z"}
    results = put(
        pinpoint,
        app_id,
        {
            "e1": {
                "Endpoint": {"User": {"UserId": LONG}},
                "Events": {LONG: event(), "long-session": event(Session=session), "fine": event()},
            }
        },
    )
    item = results["e1"]
    assert item["EndpointItemResponse"]["StatusCode"] == 400
    assert "User.UserId" in item["EndpointItemResponse"]["Message"]
    events = item["EventsItemResponse"]
    assert events[LONG]["StatusCode"] == 400 and "Event ID" in events[LONG]["Message"]
    assert events["long-session"]["StatusCode"] == 400 and "Session.Id" in events["long-session"]["Message"]
    assert events["fine"] == ACCEPTED


def test_an_overlong_id_in_a_path_or_a_batch_item_fails_the_whole_request(pinpoint: Any, app_id: str) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: pinpoint.update_endpoint(ApplicationId=app_id, EndpointId=LONG, EndpointRequest={}),
        lambda: pinpoint.update_endpoints_batch(
            ApplicationId=app_id, EndpointBatchRequest={"Item": [{"Id": "fine"}, {"Id": LONG}]}
        ),
        lambda: pinpoint.get_endpoint(ApplicationId=app_id, EndpointId=LONG),
        lambda: pinpoint.delete_endpoint(ApplicationId=app_id, EndpointId=LONG),
        lambda: pinpoint.get_user_endpoints(ApplicationId=app_id, UserId=LONG),
        lambda: pinpoint.delete_user_endpoints(ApplicationId=app_id, UserId=LONG),
    ]
    for call in calls:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_code(exc) == "BadRequestException"
        assert f"at most {MAX_ID_CHARS}" in exc.value.response["Error"]["Message"]
    # The longest allowed ID is an ordinary one.
    accepted = pinpoint.update_endpoint(ApplicationId=app_id, EndpointId=LONGEST, EndpointRequest={})
    assert accepted["MessageBody"]["Message"] == "Accepted"


def test_a_3_9_mb_endpoint_id_is_refused_while_a_normal_request_succeeds(
    pipeline: Pipeline, pinpoint: Any, app_id: str
) -> None:
    huge = "z" * 3_900_000
    body = json.dumps({"BatchItem": {huge: {"Endpoint": {}, "Events": {"h1": event()}}}}).encode()
    answers: list[tuple[int, bytes]] = []

    def attack() -> None:
        for _ in range(3):
            status, _, raw = pipeline.request("POST", f"/v1/apps/{app_id}/events", body)
            answers.append((status, raw))

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        normal = put(pinpoint, app_id, {"calm": {"Endpoint": {}, "Events": {"calm-1": event()}}})
    finally:
        attacker.join(60)
    assert normal["calm"]["EventsItemResponse"]["calm-1"] == ACCEPTED
    assert len(answers) == 3
    for status, raw in answers:
        assert status == 202
        item = json.loads(raw)["Results"][huge]
        assert item["EndpointItemResponse"]["StatusCode"] == 400
        assert item["EventsItemResponse"]["h1"]["StatusCode"] == 400


def test_an_overlong_id_in_a_path_is_refused_before_the_app_is_written_to(
    pipeline: Pipeline, app_id: str
) -> None:
    status, headers, raw = pipeline.request(
        "PUT",
        f"/v1/apps/{app_id}/endpoints/{quote(LONG, safe='')}",
        b"{}",
        {"Content-Type": "application/json"},
    )
    assert status == 400 and headers["x-amzn-errortype"] == "BadRequestException", raw


# --- numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "number", [b"1e999", b"-1.5E+400", b"1" * 400], ids=["1e999", "-1.5E+400", "400 digits"]
)
def test_a_number_no_double_holds_in_a_large_body_is_a_whole_request_400(
    pipeline: Pipeline, app_id: str, number: bytes
) -> None:
    padding = {f"a{i}": "p" * 190 for i in range(39)}
    items = {f"ep{n}": {"Endpoint": {}, "Events": {f"ev{n}": event(Attributes=padding)}} for n in range(20)}
    raw = json.dumps({"BatchItem": items}).encode()
    assert len(raw) > EXACT_PARSE_MAX_BYTES
    body = raw[:-1] + b', "Tail": ' + number + b"}"
    status, headers, answer = pipeline.request("POST", f"/v1/apps/{app_id}/events", body)
    assert status == 400 and headers["x-amzn-errortype"] == "BadRequestException", answer
    assert "not valid JSON" in json.loads(answer)["Message"]
