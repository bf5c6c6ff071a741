"""Authentication and authorization against a running `ingest run`, with
boto3: every operation allowed or refused exactly as each key's scope says,
keys bound to apps, revocation, tampering, clock skew, and the refusals
counted by reason."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError

from ingest.folds import kpis
from load.sigv4 import Signer
from tests.conftest import Pipeline, eventually, run_cli, signed_headers, start_pipeline
from tests.samples import metric
from tests.test_api import ACCEPTED, event, put
from tests.test_app_resources import KINESIS, ROLE, resource_operations

REFRESH_S = 0.3
JOURNEY_KPI = sorted(kpis.JOURNEY_DELIVERY_KPIS)[0]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    started = start_pipeline(tmp_path_factory.mktemp("auth"), INGEST_AUTH_REFRESH_S=str(REFRESH_S))
    yield started
    assert started.stop() == 0, started.log()


@pytest.fixture(scope="module")
def apps(running: Pipeline) -> tuple[str, str]:
    admin = running.client()
    mine, theirs = (
        admin.create_app(CreateApplicationRequest={"Name": name})["ApplicationResponse"]["Id"]
        for name in ("mine", "theirs")
    )
    return mine, theirs


def code(call: Callable[[], Any]) -> str:
    """The error code a call answers, or "ok"."""
    try:
        call()
    except ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 403, 404), exc.response
        return str(exc.response["Error"]["Code"])
    return "ok"


def operations(client: Any, app_id: str) -> dict[str, Callable[[], Any]]:
    """Every Pinpoint operation the edge serves, on ``app_id``; the writes
    touch endpoints of their own so the calls do not depend on each other."""
    arn = f"arn:aws:mobiletargeting:us-east-1:000000000000:apps/{app_id}"
    window = {"StartTime": "2026-11-01T00:00:00Z", "EndTime": "2026-11-02T00:00:00Z"}
    return {
        "GetApps": lambda: client.get_apps(),
        "GetApp": lambda: client.get_app(ApplicationId=app_id),
        "PutEvents": lambda: put(client, app_id, {"d-scope": {"Endpoint": {}, "Events": {"e": event()}}}),
        "UpdateEndpoint": lambda: client.update_endpoint(
            ApplicationId=app_id, EndpointId="d-scope", EndpointRequest={"Address": "a"}
        ),
        "UpdateEndpointsBatch": lambda: client.update_endpoints_batch(
            ApplicationId=app_id, EndpointBatchRequest={"Item": [{"Id": "d-batch", "Address": "b"}]}
        ),
        "GetEndpoint": lambda: client.get_endpoint(ApplicationId=app_id, EndpointId="absent"),
        "GetUserEndpoints": lambda: client.get_user_endpoints(ApplicationId=app_id, UserId="absent"),
        "DeleteEndpoint": lambda: client.delete_endpoint(ApplicationId=app_id, EndpointId="absent"),
        "DeleteUserEndpoints": lambda: client.delete_user_endpoints(ApplicationId=app_id, UserId="absent"),
        "GetApplicationDateRangeKpi": lambda: client.get_application_date_range_kpi(
            ApplicationId=app_id, KpiName="daily-active-endpoints", **window
        ),
        "GetCampaignDateRangeKpi": lambda: client.get_campaign_date_range_kpi(
            ApplicationId=app_id, CampaignId="c", KpiName="successful-delivery-rate", **window
        ),
        "GetJourneyDateRangeKpi": lambda: client.get_journey_date_range_kpi(
            ApplicationId=app_id, JourneyId="j", KpiName=JOURNEY_KPI, **window
        ),
        **resource_operations(client, app_id, arn),
    }


READ = {"GetApps", "GetApp", "GetEndpoint", "GetUserEndpoints", "GetApplicationDateRangeKpi"}
READ |= {"GetCampaignDateRangeKpi", "GetJourneyDateRangeKpi", "ListTagsForResource", "GetApplicationSettings"}
INGEST = {"PutEvents", "UpdateEndpoint", "UpdateEndpointsBatch"}
# What an allowed call answers on an app with no such endpoint, user or event stream.
ALLOWED = {"ok", "NotFoundException"}


@pytest.mark.parametrize("scope", ["admin", "read", "ingest"])
def test_each_scope_allows_exactly_its_operations_on_its_app(
    running: Pipeline, apps: tuple[str, str], scope: str
) -> None:
    mine, theirs = apps
    client = running.client(running.create_key(scope, mine))
    for name, call in operations(client, mine).items():
        allowed = (scope == "admin" and name != "GetApps") or name in (READ if scope == "read" else INGEST)
        got = code(call)
        assert (got in ALLOWED) if allowed else (got == "AccessDeniedException"), (scope, name, got)
    # Another app is out of reach whatever the operation; no 404 tells it exists.
    for name, call in operations(client, theirs).items():
        if name != "GetApps":
            assert code(call) == "AccessDeniedException", (scope, name)


def test_an_app_bound_read_key_lists_only_its_apps_and_an_unbound_admin_all(
    running: Pipeline, apps: tuple[str, str]
) -> None:
    mine, theirs = apps
    listed = running.client(running.create_key("read", mine)).get_apps()["ApplicationsResponse"]["Item"]
    assert [a["Id"] for a in listed] == [mine]
    everything = {a["Id"] for a in running.client().get_apps()["ApplicationsResponse"]["Item"]}
    assert {mine, theirs} <= everything
    assert (
        code(
            lambda: running.client(running.create_key("admin", mine)).create_app(
                CreateApplicationRequest={"Name": "no"}
            )
        )
        == "AccessDeniedException"
    )


def test_a_revoked_key_is_refused_within_the_refresh(running: Pipeline, apps: tuple[str, str]) -> None:
    key = running.create_key("ingest", apps[0])
    client = running.client(key)
    assert (
        put(client, apps[0], {"d": {"Endpoint": {}, "Events": {"e": event()}}})["d"]["EndpointItemResponse"]
        == ACCEPTED
    )
    run_cli(running, "keys", "revoke", key[0])
    refused = eventually(
        lambda: code(lambda: client.get_apps()),
        lambda got: got == "UnrecognizedClientException",
        "the revoked key refused",
        within_s=REFRESH_S * 10 + 5,
    )
    assert refused == "UnrecognizedClientException"


def raw(running: Pipeline, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    status, answer_headers, _ = running.request(method, path, body, headers, sign=False)
    return status, answer_headers.get("x-amzn-errortype", "")


def test_tampering_with_any_signed_part_is_refused(running: Pipeline, apps: tuple[str, str]) -> None:
    mine = apps[0]
    path = f"/v1/apps/{mine}/events"
    body = orjson.dumps({"BatchItem": {"d": {"Endpoint": {}, "Events": {"e": event()}}}})
    good = signed_headers(
        running.credentials(), "POST", f"{running.url}{path}", body, {"Content-Type": "application/json"}
    )
    assert raw(running, "POST", path, body, good) == (202, "")
    other_body = body.replace(b'"d"', b'"x"')
    assert raw(running, "POST", path, other_body, good) == (403, "InvalidSignatureException")
    other_path = f"/v1/apps/{apps[1]}/events"
    assert raw(running, "POST", other_path, body, good) == (403, "InvalidSignatureException")
    assert raw(running, "POST", path + "?x=1", body, good) == (403, "InvalidSignatureException")
    assert raw(running, "POST", path, body, good | {"Content-Type": "text/plain"}) == (
        403,
        "InvalidSignatureException",
    )
    wrong_secret = signed_headers(
        (running.credentials()[0], "x" * 40), "POST", f"{running.url}{path}", body, {}
    )
    assert raw(running, "POST", path, body, wrong_secret) == (403, "InvalidSignatureException")
    unknown = signed_headers(("AKIAUNKNOWNUNKNOWN00", "x" * 40), "POST", f"{running.url}{path}", body, {})
    assert raw(running, "POST", path, body, unknown) == (403, "UnrecognizedClientException")
    assert raw(running, "POST", path, body, {}) == (403, "MissingAuthenticationTokenException")


def test_a_clock_beyond_15_minutes_is_refused_and_within_accepted(
    running: Pipeline, apps: tuple[str, str]
) -> None:
    access_key_id, secret = running.credentials()
    signer = Signer(
        access_key_id=access_key_id,
        secret_access_key=secret,
        region="us-east-1",
        host=f"127.0.0.1:{running.port}",
    )
    path = f"/v1/apps/{apps[0]}"
    for offset_s, expected in ((-20 * 60, 403), (20 * 60, 403), (-14 * 60, 200), (14 * 60, 200)):
        headers = signer.sign("GET", path, b"", epoch_s=int(time.time()) + offset_s)
        status, answer, body = running.request("GET", path, None, headers, sign=False)
        assert status == expected, (offset_s, body)
        if expected == 403:
            assert answer["x-amzn-errortype"] == "InvalidSignatureException"
            message = orjson.loads(body)["Message"]
            assert message.startswith(
                "Signature expired: " if offset_s < 0 else "Signature not yet current: "
            ), message
            assert "date" in answer  # what SDKs correct their clocks from


def test_refusals_are_counted_by_reason(running: Pipeline, apps: tuple[str, str]) -> None:
    def refusals(reason: str) -> float:
        return metric(running, f'ingest_auth_refusals_total{{reason="{reason}"}}')

    narrow = running.create_key("ingest", apps[0])  # before counting: its creation polls until known
    before = {r: refusals(r) for r in ("missing", "unknown_key", "bad_signature", "out_of_scope")}
    path = f"/v1/apps/{apps[0]}"
    running.request("GET", path, sign=False)
    running.request("GET", path, credentials=("AKIAUNKNOWNUNKNOWN00", "x" * 40))
    running.request("GET", path, credentials=(running.credentials()[0], "x" * 40))
    running.request("GET", path, credentials=narrow)
    for reason, count in before.items():
        assert refusals(reason) == count + 1, reason


def test_a_server_with_auth_off_serves_unsigned_requests_and_says_so(tmp_path: Path) -> None:
    served = start_pipeline(tmp_path, INGEST_AUTH="off")
    try:
        assert served.request("GET", "/v1/apps", sign=False)[0] == 200
        assert "INGEST_AUTH=off" in served.log()
        assert not (served.data_dir / "credentials").exists()
        # No key changed the event stream: LastUpdatedBy says so.
        status, _, body = served.request("POST", "/v1/apps", orjson.dumps({"Name": "n"}), sign=False)
        assert status == 201, body
        stream = {"DestinationStreamArn": KINESIS, "RoleArn": ROLE}
        path = f"/v1/apps/{orjson.loads(body)['Id']}/eventstream"
        status, _, body = served.request("POST", path, orjson.dumps(stream), sign=False)
        assert (status, orjson.loads(body)["LastUpdatedBy"]) == (200, "anonymous"), body
    finally:
        assert served.stop() == 0, served.log()


def test_the_bootstrap_credentials_file_is_private_and_logged_by_path_only(running: Pipeline) -> None:
    path = running.data_dir / "credentials"
    assert path.stat().st_mode & 0o777 == 0o600
    access_key_id, secret = running.credentials()
    log = running.log()
    assert access_key_id in log and str(path) in log and secret not in log
