"""The JavaScript clients users actually have, under node, against `ingest run`:
aws-sdk-js-v3's Pinpoint client (a backend with a key) and Amplify JS v6 (a
rebuilt app with Cognito-style credentials). Their packages are pinned by
tests/js/package-lock.json; scripts/setup.sh installs node, npm and them.

Each node script takes one JSON object on stdin and prints one on stdout
(tests/js/pinpoint_sdk.mjs, tests/js/amplify.mjs say what is in them)."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from ingest.errors import AccessDenied
from tests.conftest import ROOT, Pipeline, eventually, run_cli, start_pipeline

JS_DIR = ROOT / "tests" / "js"
# A node script's own deadlines are 30 s; this bounds a hung node as well.
NODE_TIMEOUT_S = 60.0
REGION = "us-east-1"
# Canonical-URI encoding is where SDKs differ: a slash, spaces, non-ASCII,
# and the characters a query or a fragment would take.
ODD_IDS = ["a/b c", "ünïcødé-设备-🚀", "with%percent+plus&q=1#h", "trailing/ ", "plain-id"]
COGNITO_TARGET = "AWSCognitoIdentityService."


def node() -> str:
    """The node binary; a missing one fails (CI installs it), never skips."""
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed: run scripts/setup.sh (it installs nodejs and npm from Debian)")
    if (
        not (JS_DIR / "node_modules" / "@aws-sdk" / "client-pinpoint").is_dir()
        or not (JS_DIR / "node_modules" / "aws-amplify").is_dir()
    ):
        pytest.fail("tests/js/node_modules is missing: run scripts/setup.sh (npm ci in tests/js)")
    return found


def run_node(script: str, config: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    """Run ``tests/js/<script>`` with ``config`` on stdin → (exit code, its
    JSON answer, its stderr)."""
    done = subprocess.run(
        [node(), str(JS_DIR / script)],
        input=json.dumps(config).encode(),
        capture_output=True,
        cwd=JS_DIR,
        timeout=NODE_TIMEOUT_S,
        check=False,
    )
    stderr = done.stderr.decode(errors="replace")
    lines = done.stdout.decode().strip().splitlines()
    assert lines, f"{script} printed nothing (exit {done.returncode}); stderr:\n{stderr}"
    return done.returncode, json.loads(lines[-1]), stderr


def sdk(pipeline: Pipeline, key: tuple[str, ...], mode: str, **config: Any) -> dict[str, Any]:
    """pinpoint_sdk.mjs in ``mode`` with ``key`` (access key, secret[, session token])."""
    access_key_id, secret, *token = key
    code, answer, stderr = run_node(
        "pinpoint_sdk.mjs",
        {
            "mode": mode,
            "endpoint": pipeline.url,
            "region": REGION,
            "accessKeyId": access_key_id,
            "secretAccessKey": secret,
            "sessionToken": token[0] if token else None,
            **config,
        },
    )
    assert code == 0, f"pinpoint_sdk.mjs exited {code}: {answer}\n{stderr}"
    return answer


def create_app(pipeline: Pipeline, key: tuple[str, ...], name: str) -> str:
    (created,) = sdk(
        pipeline,
        key,
        "calls",
        calls=[{"command": "CreateApp", "input": {"CreateApplicationRequest": {"Name": name}}}],
    )["calls"]
    assert created["ok"] and created["status"] == 201, created
    return str(created["output"]["ApplicationResponse"]["Id"])


@pytest.fixture(scope="module", params=["off", "sigv4"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """`ingest run` with authentication off, and on (the default) signed with
    the admin key it made: the canonical URI of odd IDs is checked only there."""
    running = start_pipeline(tmp_path_factory.mktemp(f"js-{request.param}"), INGEST_AUTH=request.param)
    yield running
    assert running.stop() == 0, running.log()


def test_sdk_odd_ids_round_trip(served: Pipeline) -> None:
    key = served.credentials()
    app = create_app(served, key, "js-sdk")
    answer = sdk(served, key, "roundtrip", appId=app, endpointIds=ODD_IDS)
    for update in answer["updates"]:
        assert update["ok"] and update["status"] == 202, update
    for got in answer["gets"]:
        assert got["ok"] and got["status"] == 200, got
        assert got["returnedId"] == got["id"], got
        assert got["address"] == f"address of {got['id']}", got
        assert got["userId"] == f"user of {got['id']}", got
    put = answer["putEvents"]
    assert put["ok"] and put["status"] == 202, put
    assert set(put["results"]) == set(ODD_IDS), put
    for endpoint_id, result in put["results"].items():
        assert result["endpoint"] == 202, (endpoint_id, result)
        assert set(result["events"].values()) == {202}, (endpoint_id, result)


def test_sdk_errors_are_typed_with_their_status(served: Pipeline) -> None:
    key = served.credentials()
    app = create_app(served, key, "js-sdk-errors")
    calls = [
        {"command": "GetEndpoint", "input": {"ApplicationId": app, "EndpointId": "ünknown/ id"}},
        {"command": "GetApp", "input": {"ApplicationId": "0" * 32}},
        {"command": "PutEvents", "input": {"ApplicationId": app, "EventsRequest": {"BatchItem": {}}}},
    ]
    missing_endpoint, missing_app, empty_batch = sdk(served, key, "calls", calls=calls)["calls"]
    assert (missing_endpoint["ok"], missing_endpoint["name"], missing_endpoint["status"]) == (
        False,
        "NotFoundException",
        404,
    ), missing_endpoint
    assert (missing_app["name"], missing_app["status"]) == ("NotFoundException", 404), missing_app
    assert empty_batch["ok"] and empty_batch["status"] == 202, empty_batch


# --- Amplify JS v6 with Cognito-style credentials --------------------------


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """`ingest run` with authentication on; identity pools seen quickly and
    GetId not limited, so a test polls instead of waiting out a refresh."""
    running = start_pipeline(
        tmp_path_factory.mktemp("js-amplify"),
        INGEST_AUTH_REFRESH_S="0.2",
        INGEST_GETID_PER_ADDRESS_PER_S="1000",
    )
    yield running
    assert running.stop() == 0, running.log()


def get_id(pipeline: Pipeline, pool_id: str) -> tuple[int, dict[str, Any]]:
    """An unsigned Cognito GetId, as Amplify sends it."""
    conn = http.client.HTTPConnection("127.0.0.1", pipeline.port, timeout=NODE_TIMEOUT_S)
    try:
        conn.request(
            "POST",
            "/",
            json.dumps({"IdentityPoolId": pool_id, "Logins": {}}),
            {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"{COGNITO_TARGET}GetId"},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def create_identity_pool(pipeline: Pipeline, app_id: str) -> str:
    created = run_cli(pipeline, "identity-pools", "create", "--app", app_id)
    assert created["ApplicationId"] == app_id, created
    pool_id = str(created["IdentityPoolId"])
    assert re.fullmatch(rf"{REGION}:[0-9a-f-]{{36}}", pool_id), pool_id
    return pool_id


def test_amplify_records_identifies_and_flushes_with_cognito_credentials(authed: Pipeline) -> None:
    key = authed.credentials()
    app = create_app(authed, key, "js-amplify")
    other_app = create_app(authed, key, "js-amplify-other")
    pool_id = create_identity_pool(authed, app)
    eventually(
        lambda: get_id(authed, pool_id)[0], lambda status: status == 200, "the edge knows the new pool"
    )

    events = ["js.amplify.first", "js.amplify.second", "js.amplify.third"]
    code, seen, stderr = run_node(
        "amplify.mjs",
        {
            "endpoint": authed.url,
            "identityPoolId": pool_id,
            "appId": app,
            "region": REGION,
            "events": events,
            "userId": "amplify-user ü/1",
        },
    )
    context = f"{json.dumps(seen, indent=1)}\n{stderr}"
    assert seen["foreign"] == [], context
    assert code == 0, context
    assert seen["sessionError"] is None and seen["identifyError"] is None, context

    cognito = [r for r in seen["requests"] if r["target"]]
    assert [(r["target"], r["status"]) for r in cognito] == [
        (f"{COGNITO_TARGET}GetId", 200),
        (f"{COGNITO_TARGET}GetCredentialsForIdentity", 200),
    ], context
    identity_id = seen["identityId"]
    assert re.fullmatch(rf"{REGION}:[0-9a-f-]{{36}}", identity_id), context
    credentials = seen["credentials"]
    assert credentials["accessKeyId"].startswith("ASIA") and credentials["sessionToken"], context

    pinpoint = [r for r in seen["requests"] if not r["target"]]
    for request in pinpoint:
        assert request["builtFor"] == f"pinpoint.{REGION}.amazonaws.com", context
        assert request["signed"] and request["sessionToken"], context
        assert request["status"] in (200, 202), context
    updates = [r for r in pinpoint if r["method"] == "PUT"]
    # record()'s UpdateEndpoint names the identity; identifyUser()'s the user.
    assert [u["userId"] for u in updates] == [identity_id, "amplify-user ü/1"], context
    endpoint_id = updates[0]["path"].rsplit("/", 1)[1]
    assert sorted(seen["eventsSent"]) == sorted(events), context
    assert seen["eventStatuses"] == [202] * len(events), context

    found = eventually(
        lambda: sdk(
            authed,
            key,
            "calls",
            calls=[{"command": "GetEndpoint", "input": {"ApplicationId": app, "EndpointId": endpoint_id}}],
        )["calls"][0],
        lambda got: got["ok"] and got["output"]["EndpointResponse"]["User"]["UserId"] == "amplify-user ü/1",
        "the endpoint Amplify identified",
    )
    assert found["output"]["EndpointResponse"]["Id"] == endpoint_id

    # What the app binary holds may write its app's endpoints and events, and nothing else.
    temporary = (credentials["accessKeyId"], credentials["secretAccessKey"], credentials["sessionToken"])
    calls = [
        {"command": "GetEndpoint", "input": {"ApplicationId": app, "EndpointId": endpoint_id}},
        {"command": "GetApps", "input": {}},
        {"command": "PutEvents", "input": {"ApplicationId": other_app, "EventsRequest": {"BatchItem": {}}}},
        {"command": "PutEvents", "input": {"ApplicationId": app, "EventsRequest": {"BatchItem": {}}}},
    ]
    read, listing, elsewhere, allowed = sdk(authed, temporary, "calls", calls=calls)["calls"]
    for refused in (read, listing, elsewhere):
        assert (refused["ok"], refused["status"], refused["name"]) == (False, 403, AccessDenied.error_type), (
            refused
        )
    assert allowed["ok"] and allowed["status"] == 202, allowed


def test_a_client_20_minutes_behind_recovers_through_its_own_clock_correction(authed: Pipeline) -> None:
    """Beyond the 15 minutes AWS allows, the first answer is AWS's "Signature
    expired" 403 with a Date header; aws-sdk-js-v3 corrects its clock from it
    and its own retry succeeds, as against AWS. (botocore has no such
    correction: its users see the 403.)"""
    behind = -20 * 60 * 1000
    calls = [{"command": "GetApps", "input": {}}]
    once = sdk(authed, authed.credentials(), "calls", calls=calls, systemClockOffsetMs=behind)
    (first,) = once["calls"]
    assert (first["ok"], first["name"], first["status"]) == (False, "InvalidSignatureException", 403), first
    assert first["message"].startswith("Signature expired: "), first
    retried = sdk(
        authed, authed.credentials(), "calls", calls=calls, systemClockOffsetMs=behind, maxAttempts=3
    )
    assert retried["calls"][0]["ok"] is True, retried
