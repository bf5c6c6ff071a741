"""boto3's pinpoint client against a running `ingest run` on the real broker."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError

from tests.conftest import Pipeline, start_pipeline
from tests.samples import without_process

ACCEPTED = {"StatusCode": 202, "Message": "Accepted"}
TS = "2026-11-20T10:00:00.000Z"


def event(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "EventType": "_session.start",
        "Timestamp": TS,
        "Session": {"Id": "s-1", "StartTimestamp": TS},
        "Attributes": {"screen": "home"},
        "Metrics": {"price": 9.99},
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


FULL_ENDPOINT = {
    "Address": "device-token-1",
    "ChannelType": "APNS",
    "Attributes": {"interests": ["a", "b"]},
    "Demographic": {"Platform": "ios", "AppVersion": "1.2", "Locale": "en_US", "Timezone": "UTC"},
    "EffectiveDate": TS,
    "EndpointStatus": "ACTIVE",
    "Location": {"City": "Oslo", "Country": "NO", "Latitude": 59.9, "Longitude": 10.7},
    "Metrics": {"score": 3.0},
    "OptOut": "NONE",
    "RequestId": "client-req-1",
    "User": {"UserId": "user-1", "UserAttributes": {"plan": ["pro"]}},
}


def put(pinpoint: Any, app_id: str, batch: dict[str, Any]) -> dict[str, Any]:
    response = pinpoint.put_events(ApplicationId=app_id, EventsRequest={"BatchItem": batch})
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
    return dict(response["EventsResponse"]["Results"])


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


# --- apps ------------------------------------------------------------------


def test_apps_lifecycle(pinpoint: Any) -> None:
    created = pinpoint.create_app(CreateApplicationRequest={"Name": "lifecycle", "tags": {"team": "a"}})
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    app = created["ApplicationResponse"]
    assert app["Name"] == "lifecycle" and app["tags"] == {"team": "a"}
    assert app["Arn"].endswith(f":apps/{app['Id']}") and app["Arn"].startswith(
        "arn:aws:mobiletargeting:us-east-1:"
    )
    assert pinpoint.get_app(ApplicationId=app["Id"])["ApplicationResponse"] == app

    ids = {a["Id"] for a in pinpoint.get_apps(PageSize="1000")["ApplicationsResponse"]["Item"]}
    assert app["Id"] in ids

    deleted = pinpoint.delete_app(ApplicationId=app["Id"])
    assert deleted["ApplicationResponse"]["Id"] == app["Id"]
    with pytest.raises(ClientError) as exc:
        pinpoint.get_app(ApplicationId=app["Id"])
    assert error_code(exc) == "NotFoundException"
    with pytest.raises(ClientError) as exc:
        put(pinpoint, app["Id"], {"e": {"Endpoint": {}, "Events": {"x": event()}}})
    assert error_code(exc) == "NotFoundException"


def test_get_apps_pages(pinpoint: Any) -> None:
    for n in range(3):
        pinpoint.create_app(CreateApplicationRequest={"Name": f"page-{n}"})
    seen: list[str] = []
    token: str | None = None
    while True:
        kwargs = {"PageSize": "2"} | ({"Token": token} if token else {})
        page = pinpoint.get_apps(**kwargs)["ApplicationsResponse"]
        assert len(page["Item"]) <= 2
        seen.extend(a["Id"] for a in page["Item"])
        token = page.get("NextToken")
        if not token:
            break
    assert len(seen) == len(set(seen)) >= 3


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.put_events(ApplicationId="no-such-app", EventsRequest={"BatchItem": {}}),
        lambda c: c.update_endpoint(ApplicationId="no-such-app", EndpointId="e", EndpointRequest={}),
        lambda c: c.update_endpoints_batch(
            ApplicationId="no-such-app", EndpointBatchRequest={"Item": [{"Id": "e"}]}
        ),
        lambda c: c.get_app(ApplicationId="no-such-app"),
        lambda c: c.delete_app(ApplicationId="no-such-app"),
    ],
)
def test_unknown_app_is_not_found(pinpoint: Any, call: Any) -> None:
    with pytest.raises(ClientError) as exc:
        call(pinpoint)
    assert error_code(exc) == "NotFoundException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert exc.value.response["ResponseMetadata"]["RequestId"]


# --- PutEvents -------------------------------------------------------------


def test_put_events_full_and_empty_endpoint(pinpoint: Any, app_id: str) -> None:
    results = put(
        pinpoint,
        app_id,
        {
            "native-device": {
                "Endpoint": FULL_ENDPOINT,
                "Events": {"ev-1": event(), "ev-2": event(EventType="buy")},
            },
            "amplify-js-device": {"Endpoint": {}, "Events": {"ev-3": event()}},
        },
    )
    assert results == {
        "native-device": {
            "EndpointItemResponse": ACCEPTED,
            "EventsItemResponse": {"ev-1": ACCEPTED, "ev-2": ACCEPTED},
        },
        "amplify-js-device": {"EndpointItemResponse": ACCEPTED, "EventsItemResponse": {"ev-3": ACCEPTED}},
    }


LONG = "k" * 51

EVENT_VIOLATIONS = [
    ("no_type", event(EventType=None), "EventType is required"),
    ("no_timestamp", event(Timestamp=None), "Timestamp is required"),
    ("bad_timestamp", event(Timestamp="yesterday"), "Timestamp is not an ISO 8601 timestamp"),
    ("session_no_id", event(Session={"StartTimestamp": TS}), "Session.Id is required"),
    ("session_no_start", event(Session={"Id": "s"}), "Session.StartTimestamp is required"),
    (
        "session_bad_start",
        event(Session={"Id": "s", "StartTimestamp": "x"}),
        "Session.StartTimestamp is not an ISO 8601",
    ),
    (
        "session_bad_stop",
        event(Session={"Id": "s", "StartTimestamp": TS, "StopTimestamp": "x"}),
        "Session.StopTimestamp",
    ),
    (
        "session_negative_duration",
        event(Session={"Id": "s", "StartTimestamp": TS, "Duration": -1}),
        "Session.Duration",
    ),
    (
        "too_many_keys",
        event(Attributes={f"a{i}": "v" for i in range(21)}, Metrics={f"m{i}": 1.0 for i in range(20)}),
        "41 attributes and metrics; at most 40",
    ),
    ("attribute_key_long", event(Attributes={LONG: "v"}), f"Attributes key '{LONG}' must be 1-50 characters"),
    ("attribute_value_long", event(Attributes={"k": "v" * 201}), "Attributes.k is over 200 characters"),
    ("metric_key_long", event(Metrics={LONG: 1.0}), f"Metrics key '{LONG}' must be 1-50 characters"),
]


@pytest.mark.parametrize(("name", "bad", "message"), EVENT_VIOLATIONS, ids=[v[0] for v in EVENT_VIOLATIONS])
def test_event_quota_violation_is_per_item(
    unvalidated: Any, app_id: str, name: str, bad: dict[str, Any], message: str
) -> None:
    results = put(
        unvalidated,
        app_id,
        {"dev": {"Endpoint": {}, "Events": {"good-1": event(), "bad": bad, "good-2": event()}}},
    )
    items = results["dev"]["EventsItemResponse"]
    assert items["good-1"] == ACCEPTED and items["good-2"] == ACCEPTED
    assert items["bad"]["StatusCode"] == 400
    assert message in items["bad"]["Message"], items["bad"]
    assert results["dev"]["EndpointItemResponse"] == ACCEPTED


ENDPOINT_VIOLATIONS = [
    ("attribute_name_long", {"Attributes": {LONG: ["v"]}}, "Attributes key"),
    (
        "too_many_values",
        {"Attributes": {"a": [str(i) for i in range(51)]}},
        "Attributes.a has 51 values; at most 50",
    ),
    ("value_long", {"Attributes": {"a": ["v" * 101]}}, "Attributes.a has a value over 100 characters"),
    (
        "user_value_long",
        {"User": {"UserAttributes": {"a": ["v" * 101]}}},
        "User.UserAttributes.a has a value over 100",
    ),
    (
        "too_many_attributes",
        {"Attributes": {f"a{i}": ["v"] for i in range(200)}, "Metrics": {f"m{i}": 1.0 for i in range(51)}},
        "251 attributes",
    ),
    (
        "too_large",
        {"Attributes": {f"a{i}": ["v" * 90] * 20 for i in range(10)}},
        "Endpoint is larger than 15360 bytes",
    ),
    ("channel_type", {"ChannelType": "PIGEON"}, "ChannelType must be one of"),
    ("effective_date", {"EffectiveDate": "soon"}, "EffectiveDate is not an ISO 8601"),
    ("latitude", {"Location": {"Latitude": 91.0}}, "Location.Latitude must be between -90 and 90"),
    ("opt_out", {"OptOut": "MAYBE"}, "OptOut must be one of"),
]


@pytest.mark.parametrize(
    ("name", "bad", "message"), ENDPOINT_VIOLATIONS, ids=[v[0] for v in ENDPOINT_VIOLATIONS]
)
def test_invalid_endpoint_keeps_its_valid_events(
    unvalidated: Any, app_id: str, name: str, bad: dict[str, Any], message: str
) -> None:
    results = put(
        unvalidated,
        app_id,
        {
            "bad-ep": {"Endpoint": bad, "Events": {"e1": event()}},
            "good-ep": {"Endpoint": FULL_ENDPOINT, "Events": {"e2": event()}},
        },
    )
    assert results["bad-ep"]["EndpointItemResponse"]["StatusCode"] == 400
    assert message in results["bad-ep"]["EndpointItemResponse"]["Message"], results["bad-ep"]
    assert results["bad-ep"]["EventsItemResponse"] == {"e1": ACCEPTED}
    assert results["good-ep"] == {"EndpointItemResponse": ACCEPTED, "EventsItemResponse": {"e2": ACCEPTED}}


def test_more_than_100_events_is_bad_request(pinpoint: Any, app_id: str) -> None:
    batch = {
        "a": {"Endpoint": {}, "Events": {f"a{i}": event() for i in range(60)}},
        "b": {"Endpoint": {}, "Events": {f"b{i}": event() for i in range(41)}},
    }
    with pytest.raises(ClientError) as exc:
        put(pinpoint, app_id, batch)
    assert error_code(exc) == "BadRequestException"
    assert "101 events; at most 100" in exc.value.response["Error"]["Message"]
    # Exactly 100 is fine.
    batch["b"]["Events"].pop("b40")
    assert len(put(pinpoint, app_id, batch)["b"]["EventsItemResponse"]) == 40


@pytest.mark.parametrize(
    "endpoint_id",
    ["u 1/2", "a/b/c", "ünïcødé-设备-🚀", "with%percent", "+plus&amp=eq?q#h"],
)
def test_odd_ids_round_trip(pinpoint: Any, app_id: str, endpoint_id: str) -> None:
    event_id = f"{endpoint_id}/evt ☃"
    results = put(pinpoint, app_id, {endpoint_id: {"Endpoint": {}, "Events": {event_id: event()}}})
    assert results == {
        endpoint_id: {"EndpointItemResponse": ACCEPTED, "EventsItemResponse": {event_id: ACCEPTED}}
    }
    response = pinpoint.update_endpoint(
        ApplicationId=app_id, EndpointId=endpoint_id, EndpointRequest={"Address": "x"}
    )
    assert response["MessageBody"]["Message"] == "Accepted"


# --- request-level errors --------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'"just a string"', "must be a JSON object"),
        (b"[]", "must be a JSON object"),
        (b"{}", "BatchItem is required"),
        (b'{"BatchItem": []}', "BatchItem is required"),
        (b'{"EventsRequest": {"BatchItem": {}}}', "BatchItem is required"),
    ],
)
def test_unusable_body_is_bad_request(pipeline: Pipeline, app_id: str, body: bytes, message: str) -> None:
    status, headers, raw = pipeline.request(
        "POST", f"/v1/apps/{app_id}/events", body, {"Content-Type": "application/json"}
    )
    assert status == 400
    assert headers["x-amzn-errortype"] == "BadRequestException"
    payload = orjson.loads(raw)
    assert message in payload["Message"]
    assert payload["RequestID"] == headers["x-amzn-requestid"]


def test_body_over_4_mb_is_payload_too_large(pipeline: Pipeline, pinpoint: Any, app_id: str) -> None:
    # Declared too large: refused from Content-Length alone, nothing read.
    status, headers, raw = pipeline.request(
        "POST",
        f"/v1/apps/{app_id}/events",
        b"x" * (4 * 1024 * 1024 + 1),
        {"Content-Type": "application/json"},
    )
    assert status == 413 and headers["x-amzn-errortype"] == "PayloadTooLargeException"
    assert "RequestID" in orjson.loads(raw)
    # Through boto3 too: a real client sees the typed error.
    big = "v" * 190
    events = {f"e{i}": event(Attributes={f"a{j}": big for j in range(39)}) for i in range(100)}
    pad = {f"p{j}": ["x" * 100] * 50 for j in range(100)}
    with pytest.raises(ClientError) as exc:
        put(
            pinpoint,
            app_id,
            {f"ep{n}": {"Endpoint": {"Attributes": pad}, "Events": {}} for n in range(9)}
            | {"x": {"Endpoint": {}, "Events": events}},
        )
    assert error_code(exc) == "PayloadTooLargeException"


def test_chunked_body_over_limit_is_refused_while_reading(pipeline: Pipeline, app_id: str) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", pipeline.port, timeout=30)
    try:
        conn.putrequest("POST", f"/v1/apps/{app_id}/events")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        chunk = b"x" * 65536
        sent = 0
        try:
            while sent < 8 * 1024 * 1024:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading once it was over the limit
        response = conn.getresponse()
        assert response.status == 413
        assert response.getheader("x-amzn-ErrorType") == "PayloadTooLargeException"
    finally:
        conn.close()


def test_unknown_route_and_method(pipeline: Pipeline, app_id: str) -> None:
    status, headers, _ = pipeline.request("GET", "/v2/nothing")
    assert status == 404 and headers["x-amzn-errortype"] == "NotFoundException"
    status, headers, _ = pipeline.request("DELETE", f"/v1/apps/{app_id}/events")
    assert status == 405 and headers["x-amzn-errortype"] == "MethodNotAllowedException"


def test_cors_preflight_and_headers(pipeline: Pipeline, app_id: str) -> None:
    status, headers, _ = pipeline.request("OPTIONS", f"/v1/apps/{app_id}/events")
    assert status == 200
    assert headers["access-control-allow-origin"] == "*"
    assert "x-amz-security-token" in headers["access-control-allow-headers"]
    status, headers, _ = pipeline.request("GET", "/healthz")
    assert status == 200 and "date" in headers
    # Browsers may call what a shipped web app calls, never the admin or
    # read operations: their answers and preflights carry no CORS headers.
    body = orjson.dumps({"BatchItem": {}})
    status, headers, _ = pipeline.request("POST", f"/v1/apps/{app_id}/events", body)
    assert status == 202 and headers["access-control-allow-origin"] == "*"
    assert "x-amzn-errortype" in headers["access-control-expose-headers"].lower()
    for method, path in (("GET", "/v1/apps"), ("GET", f"/v1/apps/{app_id}"), ("OPTIONS", "/v1/apps")):
        status, headers, _ = pipeline.request(method, path)
        assert status == 200 and "access-control-allow-origin" not in headers, (method, path)


def test_cors_allow_list_names_the_origins_browsers_may_call_from(tmp_path: Path) -> None:
    running = start_pipeline(tmp_path, INGEST_CORS_ORIGINS="https://app.example, https://www.example")
    try:
        app_id = running.client().create_app(CreateApplicationRequest={"Name": "cors"})[
            "ApplicationResponse"
        ]["Id"]
        path = f"/v1/apps/{app_id}/events"
        allowed = running.request("OPTIONS", path, headers={"Origin": "https://www.example"})[1]
        assert allowed["access-control-allow-origin"] == "https://www.example"
        assert allowed["vary"] == "Origin"
        other = running.request("OPTIONS", path, headers={"Origin": "https://evil.example"})[1]
        assert "access-control-allow-origin" not in other
    finally:
        assert running.stop() == 0, running.log()


# --- endpoints -------------------------------------------------------------


def test_update_endpoint_accepted(pinpoint: Any, app_id: str) -> None:
    response = pinpoint.update_endpoint(
        ApplicationId=app_id, EndpointId="dev-1", EndpointRequest=FULL_ENDPOINT
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
    body = response["MessageBody"]
    assert body["Message"] == "Accepted"
    assert body["RequestID"] == response["ResponseMetadata"]["RequestId"]


def test_update_endpoint_invalid_is_bad_request(pinpoint: Any, app_id: str) -> None:
    with pytest.raises(ClientError) as exc:
        pinpoint.update_endpoint(
            ApplicationId=app_id, EndpointId="dev-1", EndpointRequest={"ChannelType": "FAX"}
        )
    assert error_code(exc) == "BadRequestException"
    assert "ChannelType must be one of" in exc.value.response["Error"]["Message"]


def test_update_endpoints_batch(pinpoint: Any, app_id: str) -> None:
    items = [{"Id": f"dev-{i}", **FULL_ENDPOINT} for i in range(100)]
    response = pinpoint.update_endpoints_batch(ApplicationId=app_id, EndpointBatchRequest={"Item": items})
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert response["MessageBody"]["Message"] == "Accepted"

    with pytest.raises(ClientError) as exc:
        pinpoint.update_endpoints_batch(
            ApplicationId=app_id, EndpointBatchRequest={"Item": [*items, {"Id": "one-too-many"}]}
        )
    assert (
        error_code(exc) == "BadRequestException" and "at most 100" in exc.value.response["Error"]["Message"]
    )

    with pytest.raises(ClientError) as exc:
        pinpoint.update_endpoints_batch(
            ApplicationId=app_id,
            EndpointBatchRequest={"Item": [{"Id": "ok"}, {"Id": "bad", "Location": {"Longitude": 200.0}}]},
        )
    assert error_code(exc) == "BadRequestException"
    assert "Item[1]: Location.Longitude" in exc.value.response["Error"]["Message"]


def test_update_endpoints_batch_of_no_endpoints_is_accepted(pinpoint: Any, app_id: str) -> None:
    # Nothing to write is nothing to wait for: once a 500 (found by `python -m load fuzz`).
    response = pinpoint.update_endpoints_batch(ApplicationId=app_id, EndpointBatchRequest={"Item": []})
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert response["MessageBody"]["Message"] == "Accepted"


def test_unique_ids_per_request(pinpoint: Any, app_id: str) -> None:
    first = pinpoint.update_endpoint(ApplicationId=app_id, EndpointId=str(uuid.uuid4()), EndpointRequest={})
    second = pinpoint.update_endpoint(ApplicationId=app_id, EndpointId=str(uuid.uuid4()), EndpointRequest={})
    assert first["MessageBody"]["RequestID"] != second["MessageBody"]["RequestID"]


# --- metrics and logs ------------------------------------------------------


def scrape(pipeline: Pipeline) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by name and labels, summed over the processes of a
    supervising `ingest run` (tests/samples.py's ``without_process``)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, _, body = pipeline.request("GET", "/metrics")
    assert status == 200
    scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(without_process(sample.labels).items())))
            scraped[key] = scraped.get(key, 0.0) + sample.value
    return scraped


def test_metrics_count_outcomes_reasons_and_kafka(pipeline: Pipeline, unvalidated: Any, app_id: str) -> None:
    before = scrape(pipeline)
    put(
        unvalidated,
        app_id,
        {
            "m1": {
                "Endpoint": {"ChannelType": "FAX"},
                "Events": {
                    "ok-1": event(),
                    "ok-2": event(),
                    "late": event(Timestamp="later"),
                    "big": event(Attributes={"a": "v" * 201}),
                },
            }
        },
    )
    after = scrape(pipeline)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("ingest_events_total", outcome="accepted", reason="") == 2
    assert delta("ingest_events_total", outcome="rejected", reason="bad_timestamp") == 1
    assert delta("ingest_events_total", outcome="rejected", reason="value_too_long") == 1
    assert delta("ingest_endpoints_total", outcome="rejected", reason="bad_value") == 1
    assert delta("ingest_http_requests_total", route="PutEvents", status="202") == 1
    assert delta("ingest_http_request_seconds_count", route="PutEvents") == 1
    assert delta("ingest_kafka_produce_batches_total", topic="ingest.events", outcome="acked") >= 1
    assert delta("ingest_kafka_produce_seconds_count", topic="ingest.events") >= 1
    assert after[("ingest_producer_buffer_limit_bytes", ())] == 64 * 1024 * 1024
    assert ("ingest_producer_buffer_bytes", ()) in after
    assert after[("ingest_http_in_flight_requests", ())] == 0
    assert after[("ingest_ready", ())] == 1


def test_signing_access_key_is_logged_once(pipeline: Pipeline, pinpoint: Any) -> None:
    pinpoint.get_apps()
    pinpoint.get_apps()
    log = pipeline.log()
    key = pipeline.credentials()[0]
    assert (
        log.count(f"first request signed by access key {key} (region us-east-1, service mobiletargeting)")
        == 1
    )
