"""The endpoint store end to end: boto3 writes through the shared `ingest run`
(edge → Kafka → endpoint worker → SQLite) and reads it back with GetEndpoint,
GetUserEndpoints and the deletes.

Reads are eventually consistent, so every read of a write polls until the write
is visible (its RequestId is the endpoint's) or a deadline passes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError

from tests.conftest import Pipeline, endpoint_or_none, eventually, start_pipeline
from tests.samples import metric
from tests.test_api import ACCEPTED, FULL_ENDPOINT, TS, event, put

SUPERSEDED = 'ingest_endpoint_records_total{outcome="superseded"}'


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def pipeline(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """This module's own `ingest run`, once per store backend."""
    env: dict[str, str] = {}
    if request.param == "postgres":
        env["INGEST_STORE_URL"] = request.getfixturevalue("postgres_url")
    running = start_pipeline(tmp_path_factory.mktemp(request.param), **env)
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def pinpoint(pipeline: Pipeline) -> Any:
    return pipeline.client()


# Generous for a loaded CI machine: the worker applies a write within a poll
# (200 ms) of Kafka acknowledging it.

# The members a client sets; everything else in an EndpointResponse is the server's.
CLIENT_MEMBERS = (
    "Address",
    "Attributes",
    "ChannelType",
    "Demographic",
    "EndpointStatus",
    "Location",
    "Metrics",
    "OptOut",
    "User",
)

FULL_REQUEST_ID = "client-req-1"  # FULL_ENDPOINT's RequestId and UserId
FULL_USER_ID = "user-1"

# Every member of EndpointRequest, every sub-member of Demographic and Location.
FULL_UPDATE: dict[str, Any] = {
    "Address": "+4712345678",
    "ChannelType": "SMS",
    "Attributes": {"colors": ["red", "green"], "size": ["L"]},
    "Demographic": {
        "AppVersion": "3.1",
        "Locale": "nb_NO",
        "Make": "Acme",
        "Model": "Phone",
        "ModelVersion": "9",
        "Platform": "android",
        "PlatformVersion": "15",
        "Timezone": "Europe/Oslo",
    },
    "EffectiveDate": "2026-11-21T08:30:00.000Z",
    "EndpointStatus": "INACTIVE",
    "Location": {
        "City": "Bergen",
        "Country": "NOR",
        "Latitude": 60.39,
        "Longitude": 5.32,
        "PostalCode": "5003",
        "Region": "Vestland",
    },
    "Metrics": {"visits": 12.0, "spend": 99.5},
    "OptOut": "ALL",
    "RequestId": "client-req-update",
    "User": {"UserId": "user-full", "UserAttributes": {"tier": ["gold"], "teams": ["x", "y"]}},
}


def is_not_found(exc: ClientError) -> bool:
    return bool(
        exc.response["Error"]["Code"] == "NotFoundException"
        and exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    )


def user_endpoints_or_none(pinpoint: Any, app_id: str, user_id: str) -> list[dict[str, Any]] | None:
    try:
        response = pinpoint.get_user_endpoints(ApplicationId=app_id, UserId=user_id)
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise
    return [dict(item) for item in response["EndpointsResponse"]["Item"]]


def wait_endpoint(
    pinpoint: Any, app_id: str, endpoint_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    found = eventually(
        lambda: endpoint_or_none(pinpoint, app_id, endpoint_id),
        lambda ep: ep is not None and done(ep),
        f"GetEndpoint {endpoint_id!r}",
    )
    assert found is not None
    return found


def wait_request(pinpoint: Any, app_id: str, endpoint_id: str, request_id: str) -> dict[str, Any]:
    """The endpoint once the write with ``request_id`` is the last one applied."""
    return wait_endpoint(pinpoint, app_id, endpoint_id, lambda ep: ep.get("RequestId") == request_id)


def wait_gone(pinpoint: Any, app_id: str, endpoint_id: str) -> None:
    eventually(
        lambda: endpoint_or_none(pinpoint, app_id, endpoint_id),
        lambda ep: ep is None,
        f"GetEndpoint {endpoint_id!r} answering 404",
    )


def wait_user(
    pinpoint: Any, app_id: str, user_id: str, done: Callable[[list[dict[str, Any]] | None], bool]
) -> list[dict[str, Any]] | None:
    return eventually(
        lambda: user_endpoints_or_none(pinpoint, app_id, user_id), done, f"GetUserEndpoints {user_id!r}"
    )


def update(pinpoint: Any, app_id: str, endpoint_id: str, body: dict[str, Any]) -> str:
    """UpdateEndpoint; → the request's ID (the endpoint's RequestId once applied,
    unless the body carries its own)."""
    response = pinpoint.update_endpoint(ApplicationId=app_id, EndpointId=endpoint_id, EndpointRequest=body)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
    return str(response["MessageBody"]["RequestID"])


def client_members(endpoint: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in endpoint.items() if k in CLIENT_MEMBERS}


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_server_members(endpoint: dict[str, Any], app_id: str, endpoint_id: str) -> None:
    assert endpoint["ApplicationId"] == app_id
    assert endpoint["Id"] == endpoint_id
    cohort = endpoint["CohortId"]
    assert isinstance(cohort, str) and cohort == str(int(cohort)) and 0 <= int(cohort) <= 99, cohort
    created = parse_iso(endpoint["CreationDate"])
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5), endpoint["CreationDate"]


def assert_read_back(got: dict[str, Any], sent: dict[str, Any], app_id: str, endpoint_id: str) -> None:
    """``got`` is every member ``sent`` carried, plus the server-set ones."""
    assert_server_members(got, app_id, endpoint_id)
    assert got == {
        **sent,
        "ApplicationId": app_id,
        "Id": endpoint_id,
        "CohortId": got["CohortId"],
        "CreationDate": got["CreationDate"],
    }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- creation: every member readable ---------------------------------------


def test_put_events_endpoint_is_readable_with_every_member(pinpoint: Any, app_id: str) -> None:
    endpoint_id = new_id("pe")
    results = put(pinpoint, app_id, {endpoint_id: {"Endpoint": FULL_ENDPOINT, "Events": {"e": event()}}})
    assert results[endpoint_id]["EndpointItemResponse"] == ACCEPTED

    got = wait_request(pinpoint, app_id, endpoint_id, FULL_REQUEST_ID)
    assert_read_back(got, FULL_ENDPOINT, app_id, endpoint_id)


def test_update_endpoint_is_readable_with_every_member(pinpoint: Any, app_id: str) -> None:
    endpoint_id = new_id("ue")
    update(pinpoint, app_id, endpoint_id, FULL_UPDATE)

    got = wait_request(pinpoint, app_id, endpoint_id, FULL_UPDATE["RequestId"])
    assert_read_back(got, FULL_UPDATE, app_id, endpoint_id)


def test_server_set_members_without_client_values(pinpoint: Any, app_id: str) -> None:
    """No EffectiveDate, RequestId or EndpointStatus sent: the receive time,
    the request's ID and ACTIVE."""
    endpoint_id = new_id("bare")
    before = datetime.now(UTC) - timedelta(seconds=1)
    request_id = update(pinpoint, app_id, endpoint_id, {"Address": "a"})
    got = wait_request(pinpoint, app_id, endpoint_id, request_id)
    after = datetime.now(UTC) + timedelta(seconds=1)
    assert got["EndpointStatus"] == "ACTIVE"
    assert before <= parse_iso(got["EffectiveDate"]) <= after
    assert before <= parse_iso(got["CreationDate"]) <= after
    assert client_members(got) == {"Address": "a", "EndpointStatus": "ACTIVE"}


def test_cohort_id_is_a_stable_function_of_the_endpoint_id(pinpoint: Any, app_id: str) -> None:
    other_app = pinpoint.create_app(CreateApplicationRequest={"Name": "cohorts"})["ApplicationResponse"]["Id"]
    ids = [new_id("cohort") for _ in range(12)]
    written = {
        (app, endpoint_id): update(pinpoint, app, endpoint_id, {"Address": "x"})
        for app in (app_id, other_app)
        for endpoint_id in ids
    }
    cohorts: dict[str, set[str]] = {endpoint_id: set() for endpoint_id in ids}
    for (app, endpoint_id), request_id in written.items():
        got = wait_request(pinpoint, app, endpoint_id, request_id)
        assert_server_members(got, app, endpoint_id)
        cohorts[endpoint_id].add(got["CohortId"])
    # A second write and a second read do not move an endpoint to another cohort.
    for endpoint_id in ids:
        request_id = update(pinpoint, app_id, endpoint_id, {"Address": "y"})
        cohorts[endpoint_id].add(wait_request(pinpoint, app_id, endpoint_id, request_id)["CohortId"])
    assert all(len(found) == 1 for found in cohorts.values()), cohorts
    # A hash, not a constant: a dozen IDs land in more than one cohort.
    assert len({next(iter(found)) for found in cohorts.values()}) > 1, cohorts


# --- merge semantics -------------------------------------------------------


def test_partial_update_merges(pinpoint: Any, app_id: str) -> None:
    endpoint_id = new_id("merge")
    first = {
        "Address": "addr-1",
        "ChannelType": "GCM",
        "Attributes": {"a": ["1"], "b": ["2", "3"]},
        "Metrics": {"m1": 1.0, "m2": 2.0},
        "Demographic": {"Platform": "ios", "AppVersion": "1.0", "Locale": "en_US"},
        "Location": {"City": "Oslo", "Country": "NOR", "Latitude": 59.9},
        "OptOut": "NONE",
        "User": {"UserId": "merge-user", "UserAttributes": {"u1": ["p"], "u2": ["q"]}},
    }
    created = wait_request(pinpoint, app_id, endpoint_id, update(pinpoint, app_id, endpoint_id, first))
    assert created["EndpointStatus"] == "ACTIVE"  # the default when none was ever sent
    assert client_members(created) == {**first, "EndpointStatus": "ACTIVE"}

    partial = {
        "Address": "addr-2",
        "Attributes": {"a": ["one"], "c": ["new"]},
        "Metrics": {"m2": 20.0},
        "Demographic": {"Platform": "android", "Timezone": "UTC"},
        "Location": {"City": "Bergen"},
        "User": {"UserAttributes": {"u1": ["changed"]}},
    }
    request_id = update(pinpoint, app_id, endpoint_id, partial)
    merged = wait_request(pinpoint, app_id, endpoint_id, request_id)
    assert client_members(merged) == {
        "Address": "addr-2",
        "ChannelType": "GCM",
        "Attributes": {"a": ["one"], "b": ["2", "3"], "c": ["new"]},
        "Metrics": {"m1": 1.0, "m2": 20.0},
        "Demographic": {"Platform": "android", "AppVersion": "1.0", "Locale": "en_US", "Timezone": "UTC"},
        "Location": {"City": "Bergen", "Country": "NOR", "Latitude": 59.9},
        "OptOut": "NONE",
        "User": {"UserId": "merge-user", "UserAttributes": {"u1": ["changed"], "u2": ["q"]}},
        "EndpointStatus": "ACTIVE",
    }
    assert merged["CreationDate"] == created["CreationDate"]
    assert merged["CohortId"] == created["CohortId"]

    # A status sent sticks; a later write without one keeps it.
    request_id = update(pinpoint, app_id, endpoint_id, {"EndpointStatus": "INACTIVE"})
    assert wait_request(pinpoint, app_id, endpoint_id, request_id)["EndpointStatus"] == "INACTIVE"
    request_id = update(pinpoint, app_id, endpoint_id, {"OptOut": "ALL"})
    kept = wait_request(pinpoint, app_id, endpoint_id, request_id)
    assert (kept["EndpointStatus"], kept["OptOut"], kept["Address"]) == ("INACTIVE", "ALL", "addr-2")


def test_amplify_empty_endpoint_does_not_wipe_stored_data(pinpoint: Any, app_id: str) -> None:
    endpoint_id = new_id("amplify")
    put(pinpoint, app_id, {endpoint_id: {"Endpoint": FULL_ENDPOINT, "Events": {"e1": event()}}})
    stored = wait_request(pinpoint, app_id, endpoint_id, FULL_REQUEST_ID)

    response = pinpoint.put_events(
        ApplicationId=app_id,
        EventsRequest={"BatchItem": {endpoint_id: {"Endpoint": {}, "Events": {"e2": event()}}}},
    )
    assert response["EventsResponse"]["Results"][endpoint_id]["EndpointItemResponse"] == ACCEPTED
    after = wait_request(pinpoint, app_id, endpoint_id, response["ResponseMetadata"]["RequestId"])
    assert client_members(after) == client_members(stored)
    assert after["CreationDate"] == stored["CreationDate"]


def test_older_effective_date_does_not_clobber_newer(pipeline: Pipeline, pinpoint: Any, app_id: str) -> None:
    endpoint_id = new_id("versions")
    newer = {
        "EffectiveDate": "2026-11-20T12:00:00.000Z",
        "Address": "newer",
        "ChannelType": "APNS",
        "Attributes": {"k": ["newer"]},
        "RequestId": "req-newer",
    }
    older = {
        "EffectiveDate": "2026-11-20T11:00:00.000Z",
        "Address": "older",
        "ChannelType": "SMS",
        "Attributes": {"k": ["older"], "only-older": ["x"]},
        "Metrics": {"older": 1.0},
        "RequestId": "req-older",
    }
    update(pinpoint, app_id, endpoint_id, newer)
    wait_request(pinpoint, app_id, endpoint_id, "req-newer")
    superseded_before = metric(pipeline, SUPERSEDED)

    update(pinpoint, app_id, endpoint_id, older)
    # The same key, so the same partition: once this write is applied, the
    # older one before it in the log has been folded too. Same effective time
    # as the newer write, later offset: it applies and changes no member.
    update(pinpoint, app_id, endpoint_id, {"EffectiveDate": newer["EffectiveDate"], "RequestId": "barrier"})
    got = wait_request(pinpoint, app_id, endpoint_id, "barrier")
    assert client_members(got) == {
        "Address": "newer",
        "ChannelType": "APNS",
        "Attributes": {"k": ["newer"]},
        "EndpointStatus": "ACTIVE",
    }
    assert got["EffectiveDate"] == newer["EffectiveDate"]
    assert metric(pipeline, SUPERSEDED) >= superseded_before + 1


# --- IDs that need encoding ------------------------------------------------

ODD_ENDPOINT_IDS = ("a/b c", "ünïcødé-设备-🚀", "with%percent+plus&q=1#h", "trailing/ ")
ODD_USER_ID = "user/ñame with spaces ☃"


def test_odd_ids_round_trip_through_reads_and_deletes(pinpoint: Any, app_id: str) -> None:
    user_id = f"{ODD_USER_ID} {uuid.uuid4().hex[:6]}"
    written = {
        endpoint_id: update(
            pinpoint, app_id, endpoint_id, {"Address": endpoint_id, "User": {"UserId": user_id}}
        )
        for endpoint_id in ODD_ENDPOINT_IDS
    }
    for endpoint_id, request_id in written.items():
        got = wait_request(pinpoint, app_id, endpoint_id, request_id)
        assert (got["Id"], got["Address"], got["User"]["UserId"]) == (endpoint_id, endpoint_id, user_id)

    items = user_endpoints_or_none(pinpoint, app_id, user_id)
    assert items is not None
    assert sorted(item["Id"] for item in items) == sorted(ODD_ENDPOINT_IDS)

    first, *rest = ODD_ENDPOINT_IDS
    deleted = pinpoint.delete_endpoint(ApplicationId=app_id, EndpointId=first)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert deleted["EndpointResponse"]["Id"] == first
    wait_gone(pinpoint, app_id, first)
    wait_user(
        pinpoint, app_id, user_id, lambda found: found is not None and {e["Id"] for e in found} == set(rest)
    )

    gone = pinpoint.delete_user_endpoints(ApplicationId=app_id, UserId=user_id)
    assert gone["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert sorted(e["Id"] for e in gone["EndpointsResponse"]["Item"]) == sorted(rest)
    for endpoint_id in rest:
        wait_gone(pinpoint, app_id, endpoint_id)
    wait_user(pinpoint, app_id, user_id, lambda found: found is None)


# --- users -----------------------------------------------------------------


def test_get_user_endpoints_lists_every_endpoint_of_the_user(
    pipeline: Pipeline, pinpoint: Any, app_id: str
) -> None:
    user_id = new_id("user")
    ids = [new_id("dev") for _ in range(4)]
    expected: dict[str, dict[str, Any]] = {}
    for n, endpoint_id in enumerate(ids):
        body = {"Address": f"addr-{n}", "ChannelType": "GCM", "User": {"UserId": user_id}}
        expected[endpoint_id] = wait_request(
            pinpoint, app_id, endpoint_id, update(pinpoint, app_id, endpoint_id, body)
        )
    # Another user's endpoint is not listed.
    update(pinpoint, app_id, new_id("other"), {"User": {"UserId": new_id("someone-else")}})

    items = wait_user(pinpoint, app_id, user_id, lambda found: found is not None and len(found) == len(ids))
    assert items is not None
    assert {item["Id"]: item for item in items} == expected

    # The wire shape: {"Item": [EndpointResponse, ...]}.
    status, _, raw = pipeline.request("GET", f"/v1/apps/{app_id}/users/{user_id}")
    assert status == 200
    payload = orjson.loads(raw)
    assert list(payload) == ["Item"]
    assert {item["Id"]: item for item in payload["Item"]} == expected


# --- deletes ---------------------------------------------------------------


def test_delete_endpoint_answers_it_then_404_and_update_recreates(pinpoint: Any, app_id: str) -> None:
    endpoint_id = new_id("del")
    put(pinpoint, app_id, {endpoint_id: {"Endpoint": FULL_ENDPOINT, "Events": {}}})
    stored = wait_request(pinpoint, app_id, endpoint_id, FULL_REQUEST_ID)
    assert user_endpoints_or_none(pinpoint, app_id, FULL_USER_ID) == [stored]

    deleted = pinpoint.delete_endpoint(ApplicationId=app_id, EndpointId=endpoint_id)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert deleted["EndpointResponse"] == stored
    wait_gone(pinpoint, app_id, endpoint_id)
    # Its user had no other endpoint in this app, so the user is gone too.
    wait_user(pinpoint, app_id, FULL_USER_ID, lambda found: found is None)
    with pytest.raises(ClientError) as exc:
        pinpoint.delete_endpoint(ApplicationId=app_id, EndpointId=endpoint_id)
    assert is_not_found(exc.value)

    # A later write re-creates it from nothing: the old members stay deleted.
    request_id = update(pinpoint, app_id, endpoint_id, {"Address": "reborn"})
    reborn = wait_request(pinpoint, app_id, endpoint_id, request_id)
    assert client_members(reborn) == {"Address": "reborn", "EndpointStatus": "ACTIVE"}
    assert parse_iso(reborn["CreationDate"]) > parse_iso(stored["CreationDate"])


def test_delete_user_endpoints_answers_them_then_all_404(pinpoint: Any, app_id: str) -> None:
    user_id = new_id("leaver")
    ids = [new_id("dev") for _ in range(3)]
    stored = {
        endpoint_id: wait_request(
            pinpoint,
            app_id,
            endpoint_id,
            update(pinpoint, app_id, endpoint_id, {"Address": endpoint_id, "User": {"UserId": user_id}}),
        )
        for endpoint_id in ids
    }
    wait_user(pinpoint, app_id, user_id, lambda found: found is not None and len(found) == len(ids))

    deleted = pinpoint.delete_user_endpoints(ApplicationId=app_id, UserId=user_id)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert {e["Id"]: e for e in deleted["EndpointsResponse"]["Item"]} == stored
    for endpoint_id in ids:
        wait_gone(pinpoint, app_id, endpoint_id)
    wait_user(pinpoint, app_id, user_id, lambda found: found is None)
    with pytest.raises(ClientError) as exc:
        pinpoint.delete_user_endpoints(ApplicationId=app_id, UserId=user_id)
    assert is_not_found(exc.value)

    # One of them comes back with a later write, alone.
    request_id = update(pinpoint, app_id, ids[0], {"User": {"UserId": user_id}})
    wait_request(pinpoint, app_id, ids[0], request_id)
    again = wait_user(pinpoint, app_id, user_id, lambda found: found is not None)
    assert again is not None and [e["Id"] for e in again] == [ids[0]]


# --- not found -------------------------------------------------------------

READS_AND_DELETES: dict[str, Callable[[Any, str, str], Any]] = {
    "GetEndpoint": lambda c, app, name: c.get_endpoint(ApplicationId=app, EndpointId=name),
    "DeleteEndpoint": lambda c, app, name: c.delete_endpoint(ApplicationId=app, EndpointId=name),
    "GetUserEndpoints": lambda c, app, name: c.get_user_endpoints(ApplicationId=app, UserId=name),
    "DeleteUserEndpoints": lambda c, app, name: c.delete_user_endpoints(ApplicationId=app, UserId=name),
}
NOT_FOUND_CASES = [
    ("GetEndpoint", "endpoint"),
    ("DeleteEndpoint", "endpoint"),
    ("GetUserEndpoints", "user"),
    ("DeleteUserEndpoints", "user"),
    *((operation, "app") for operation in READS_AND_DELETES),
]


@pytest.mark.parametrize(
    ("operation", "unknown"), NOT_FOUND_CASES, ids=[f"{op}-unknown-{what}" for op, what in NOT_FOUND_CASES]
)
def test_unknown_is_not_found(pinpoint: Any, app_id: str, operation: str, unknown: str) -> None:
    # The app has an endpoint and a user, so only the unknown name can miss.
    request_id = update(pinpoint, app_id, "known", {"User": {"UserId": "known-user"}})
    wait_request(pinpoint, app_id, "known", request_id)
    app = "no-such-app" if unknown == "app" else app_id
    name = "known-user" if operation.endswith("UserEndpoints") else "known"
    if unknown != "app":
        name = f"no-such-{unknown}"
    with pytest.raises(ClientError) as exc:
        READS_AND_DELETES[operation](pinpoint, app, name)
    assert is_not_found(exc.value), exc.value.response
    assert exc.value.response["ResponseMetadata"]["RequestId"]
    expected = {"app": "Application not found", "endpoint": "Endpoint not found", "user": "User not found"}
    assert expected[unknown] in exc.value.response["Error"]["Message"]


# --- the 15-endpoints-per-user rule ----------------------------------------


def test_sixteenth_endpoint_deactivates_the_oldest(pinpoint: Any, app_id: str) -> None:
    user_id = new_id("many-devices")
    start = parse_iso(TS)
    ids = [f"device-{n:02d}-{uuid.uuid4().hex[:6]}" for n in range(16)]
    for n, endpoint_id in enumerate(ids):
        effective = (start + timedelta(minutes=n)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        update(
            pinpoint,
            app_id,
            endpoint_id,
            {
                "Address": f"token-{n}",
                "EffectiveDate": effective,
                "RequestId": f"req-{n}",
                "User": {"UserId": user_id, "UserAttributes": {"n": [str(n)]}},
            },
        )
    # Made INACTIVE in the transaction that applied the 16th endpoint, whichever
    # that was (they are on different partitions): then all 16 are applied.
    oldest = wait_endpoint(pinpoint, app_id, ids[0], lambda ep: ep["EndpointStatus"] == "INACTIVE")
    assert oldest["RequestId"] == "req-0"
    assert "UserId" not in oldest.get("User", {}), oldest
    assert oldest["Address"] == "token-0"

    listed = user_endpoints_or_none(pinpoint, app_id, user_id)
    assert listed is not None
    assert {e["Id"]: e["RequestId"] for e in listed} == {ids[n]: f"req-{n}" for n in range(1, 16)}
    assert all(e["EndpointStatus"] == "ACTIVE" and e["User"]["UserId"] == user_id for e in listed)
    assert endpoint_or_none(pinpoint, app_id, ids[0]) == oldest
