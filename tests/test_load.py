"""The load harness (`load/`): its pure pieces against the references they
imitate (botocore's signer, the edge's validation), its sending against a
fault-injecting fake server (retries keep their event IDs; open-loop latency
counts from the due time), and short runs of ``python -m load`` with
accounting: against `ingest run`, and with ``--chaos``.

Performance is measured by the harness, never asserted here.
"""

from __future__ import annotations

import asyncio
import calendar
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hdrh.histogram import HdrHistogram

from ingest.records import validate
from ingest.records.values import Invalid
from load import credentials, null
from load.chaos import free_port
from load.credentials import Key
from load.driver import Plan, drive
from load.ledger import Tally, reconcile
from load.sigv4 import Signer
from load.traffic import Batch, Traffic
from tests.conftest import ROOT, clean_env, start_pipeline

NOW_MS = int(time.time() * 1000)

# Long runs whose lines the rest of the suite reaches (tests/conftest.py).
pytestmark = pytest.mark.untraced


# --- pure pieces ---------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzE+/token="])
@pytest.mark.parametrize(
    ("method", "path", "body", "query"),
    [
        ("POST", "/v1/apps/0a1b/events", b'{"BatchItem": {}}', None),
        ("PUT", "/v1/apps/0a1b/endpoints/4F1C-ab", b'{"User": {}}', None),
        (
            "GET",
            "/v1/apps/0a1b/kpis/daterange/events-grouped-by-event-type",
            b"",
            {"start-time": "2026-11-23T10:00:00.000Z", "end-time": "2026-11-24T00:00:00Z"},
        ),
    ],
)
def test_signatures_are_botocores(
    token: str | None, method: str, path: str, body: bytes, query: dict[str, str] | None
) -> None:
    url = "http://127.0.0.1:8080" + path
    if query:
        url += "?" + urlencode(query)  # on the wire, as the harness sends it
    request = AWSRequest(
        method=method, url=url, data=body, headers={"Content-Type": "application/json"} if body else {}
    )
    SigV4Auth(Credentials("AKIDLOAD", "secret", token), "mobiletargeting", "us-east-1").add_auth(request)
    stamp = request.headers["X-Amz-Date"]
    signer = Signer(
        access_key_id="AKIDLOAD",
        secret_access_key="secret",
        region="us-east-1",
        host="127.0.0.1:8080",
        session_token=token,
    )
    epoch_s = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    mine = signer.sign(method, path, body, epoch_s=epoch_s, query=query)
    assert mine["Authorization"] == request.headers["Authorization"]
    assert mine["X-Amz-Date"] == stamp
    assert mine.get("X-Amz-Security-Token") == token


def judged(batch: Batch) -> list[tuple[str, str, bool]]:
    """(endpoint ID, event ID, judged invalid) as the edge's validation sees the body."""
    raw = batch.body()
    batches = validate.put_events(
        validate.json_body(raw), app_id="app", request_id="r", received_at_ms=NOW_MS, body_bytes=len(raw)
    )
    out: list[tuple[str, str, bool]] = []
    for endpoint_batch in batches:
        assert not isinstance(endpoint_batch.endpoint, Invalid), endpoint_batch.endpoint
        out.extend((endpoint_batch.endpoint_id, e, isinstance(v, Invalid)) for e, v in endpoint_batch.events)
    return out


@pytest.mark.parametrize("profile", ["amplify-js", "native", "boto3", "mixed"])
def test_traffic_is_judged_per_event_as_the_generator_says(profile: Any) -> None:
    """Invalid events are exactly the ones the edge rejects, one by one, and
    every request fits Pinpoint's quotas."""
    traffic = Traffic(
        seed=1, run_id="r1", endpoints=50, batch_size=100, profile=profile, invalid_rate=0.2, hot_share=0.5
    )
    kinds: Counter[str] = Counter()
    for n in range(60):
        batch = traffic.next_batch(NOW_MS + n)
        seen = judged(batch)
        assert len(seen) == len(batch.types) == 100
        assert {event_id for _, event_id, bad in seen if bad} == batch.invalid
        kinds.update(batch.types.values())
        endpoints = {endpoint_id for endpoint_id, _, _ in seen}
        if batch.profile == "boto3":
            assert len(endpoints) > 1
        else:
            assert len(endpoints) == 1
        if batch.profile == "amplify-js":
            assert batch.items[0].endpoint == {}
    if profile != "boto3":  # backends send no sessions
        assert kinds["_session.start"] and kinds["_session.stop"]
    assert kinds["_monetization.purchase"]
    assert any(kind.endswith(".r1") for kind in kinds), "custom types carry the run ID"


def test_amplify_js_registers_each_device_once_before_its_events() -> None:
    traffic = Traffic(seed=2, run_id="r", endpoints=5, batch_size=10, profile="amplify-js")
    registered: Counter[str] = Counter()
    for n in range(40):
        batch = traffic.next_batch(NOW_MS + n)
        for endpoint_id, body in batch.register:
            registered[endpoint_id] += 1
            assert body["User"]["UserId"] and body["EffectiveDate"]
        assert batch.items[0].endpoint_id in registered
    assert set(registered.values()) == {1}


def test_traffic_repeats_with_its_seed() -> None:
    def bodies(seed: int) -> list[bytes]:
        traffic = Traffic(
            seed=seed, run_id="r", endpoints=20, batch_size=30, profile="mixed", invalid_rate=0.1
        )
        return [traffic.next_batch(NOW_MS + n).body() for n in range(10)]

    assert bodies(3) == bodies(3)
    assert bodies(3) != bodies(4)


def test_reconcile_tells_lost_from_duplicated_and_tolerates_failed() -> None:
    accepted = {"a": 10, "b": 5}
    assert reconcile(accepted, {}, {"a": 10, "b": 5}).matches
    lost = reconcile(accepted, {}, {"a": 7, "b": 5})
    assert (lost.lost, lost.duplicated, lost.by_type) == (3, 0, {"a": (10, 7)})
    twice = reconcile(accepted, {}, {"a": 10, "b": 6, "c": 1})
    assert (twice.lost, twice.duplicated) == (0, 2)
    # A failed event (no decisive answer) may or may not have reached Kafka.
    assert reconcile(accepted, {"b": 2}, {"a": 10, "b": 7}).matches
    assert reconcile(accepted, {"b": 2}, {"a": 10, "b": 8}).duplicated == 1


def test_null_server_accepts_every_item() -> None:
    body = orjson.dumps({"BatchItem": {"e1": {"Endpoint": {}, "Events": {"x": {}, "y": {}}}}})
    status, payload = null.answer("POST", "/v1/apps/abc/events", body)
    assert status == 202
    assert orjson.loads(payload)["Results"]["e1"]["EventsItemResponse"] == {
        "x": null.ACCEPTED,
        "y": null.ACCEPTED,
    }
    assert null.answer("POST", "/v1/apps", b'{"Name": "n"}')[0] == 201


# --- sending, against a fault-injecting fake ---------------------------------------


class Fake:
    """Answers PutEvents like the edge would, with faults: each event's first
    send gets a per-event 500, every fifth request a whole-request 429."""

    def __init__(self, delay_s: float = 0.0, faults: bool = True) -> None:
        self.delay_s = delay_s
        self.faults = faults
        self.requests = 0
        self.first_body: dict[str, bytes] = {}
        self.sends: Counter[str] = Counter()  # sends answered per event
        self.received: Counter[str] = Counter()  # sends however answered
        self.attempts: Counter[str] = Counter()
        self.problems: list[str] = []

    async def events(self, request: web.Request) -> web.Response:
        self.requests += 1
        await asyncio.sleep(self.delay_s)
        self.attempts[request.headers["amz-sdk-request"].split(";")[0]] += 1
        body = orjson.loads(await request.read())
        for item in body["BatchItem"].values():
            self.received.update(list(item["Events"]))
        if self.faults and self.requests % 5 == 0:
            return web.json_response({"Message": "slow down"}, status=429)
        results = {}
        for endpoint_id, item in body["BatchItem"].items():
            answers = {}
            for event_id, event in item["Events"].items():
                encoded = orjson.dumps(event)
                first = self.first_body.setdefault(event_id, encoded)
                if first != encoded:
                    self.problems.append(f"{event_id} changed between sends")
                if request.headers["amz-sdk-request"].startswith("attempt=1") and self.sends[event_id]:
                    self.problems.append(f"{event_id} sent twice as a first attempt")
                self.sends[event_id] += 1
                failing = self.faults and self.sends[event_id] == 1 and hash(event_id) % 3 == 0
                answers[event_id] = (
                    {"StatusCode": 500, "Message": "retry"}
                    if failing
                    else {"StatusCode": 202, "Message": "Accepted"}
                )
            results[endpoint_id] = {
                "EndpointItemResponse": {"StatusCode": 202, "Message": "Accepted"},
                "EventsItemResponse": answers,
            }
        return web.json_response({"Results": results}, status=202)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Fake], Any]]:
    runners: list[web.AppRunner] = []

    async def start(fake: Fake) -> str:
        app = web.Application()
        app.router.add_post("/v1/apps/{app}/events", fake.events)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def plan(url: str, **changes: Any) -> Plan:
    base: dict[str, Any] = {
        "url": url,
        "app_id": "app",
        "run_id": "r",
        "index": 0,
        "duration_s": 0.5,
        "rate": None,
        "concurrency": 4,
        "batch_size": 20,
        "endpoints": 10,
        "profile": "native",
        "seed": 5,
        "retry_rate": 0.0,
        "invalid_rate": 0.0,
        "hot_share": 0.0,
        "timeout_s": 5.0,
        "max_attempts": 10,
        "start_at": time.time(),
        "key": credentials.UNCHECKED,
    }
    return Plan(**(base | changes))


async def test_retries_and_resends_send_the_same_event_ids(serve: Callable[[Fake], Any]) -> None:
    fake = Fake()
    final = await drive(plan(await serve(fake), retry_rate=1.0), lambda _: None)
    tally = Tally.from_dict(final.tally)
    assert not fake.problems, fake.problems[:5]
    # Every event generated reached the server, and each was accepted once
    # in the ledger however often it was sent.
    assert set(fake.sends) == set(fake.first_body)
    assert tally.events_sent == len(fake.sends) == tally.events_accepted > 0
    assert tally.accepted_by_type.total() == tally.events_accepted
    assert tally.sdk_retries > 0 and tally.batches_resent > 0
    assert tally.http["429"] > 0 and tally.events["500"] > 0
    assert fake.attempts["attempt=2"] > 0
    # Every batch was re-sent whole once (retry_rate 1.0): each event went out
    # at least twice, and the retried ones (500 first) three times.
    assert min(fake.received.values()) >= 2
    assert max(fake.received.values()) >= 3
    assert tally.events_failed == tally.missing_answers == 0


async def test_open_loop_latency_counts_from_the_due_time(serve: Callable[[Fake], Any]) -> None:
    """A server that takes 100 ms a request, one connection, 20 requests due in
    0.5 s: the last goes out ~1.5 s late, and its latency says so. Closed
    loop, the same server shows only its 100 ms."""
    url = await serve(Fake(delay_s=0.1, faults=False))
    closed = await drive(plan(url, concurrency=1), lambda _: None)
    opened = await drive(plan(url, concurrency=1, rate=20 * 20 / 0.5), lambda _: None)
    closed_ms = HdrHistogram.decode(closed.histogram).get_max_value() / 1000
    opened_hist = HdrHistogram.decode(opened.histogram)
    assert closed_ms < 400
    assert opened_hist.get_total_count() == 20
    assert opened_hist.get_max_value() / 1000 > 1200


# --- credentials ---------------------------------------------------------------


def test_credentials_come_from_the_environment_first_then_the_shared_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "credentials"
    shared.write_text(
        "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s-default\n"
        "[ingest]\naws_access_key_id = AKIAINGEST\naws_secret_access_key = s-ingest\n"
    )
    for name in (*credentials.AWS_KEY_VARIABLES, "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    assert credentials.from_environment() == Key("AKIADEFAULT", "s-default")
    monkeypatch.setenv("AWS_PROFILE", "ingest")
    assert credentials.from_environment() == Key("AKIAINGEST", "s-ingest")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s-env")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    assert credentials.from_environment() == Key("AKIAENV", "s-env", "token")
    # A child pointed at the file no longer sees the variables that would win.
    child = credentials.file_env(shared)
    assert child["AWS_PROFILE"] == "ingest" and "AWS_ACCESS_KEY_ID" not in child
    assert credentials.from_file(shared) == Key("AKIAINGEST", "s-ingest")
    assert "s-ingest" not in repr(credentials.from_file(shared))


def test_no_credentials_is_an_error_that_says_where_to_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (*credentials.AWS_KEY_VARIABLES, "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(credentials.CredentialsError, match="AWS_SHARED_CREDENTIALS_FILE"):
        credentials.from_environment()


def test_temporary_credentials_refresh_before_they_expire() -> None:
    issued = Key("ASIA1", "s", "t", expires_s=1000.0 + 3600, issued_s=1000.0)
    assert issued.refresh_at_s() == 1000.0 + 3600 - credentials.REFRESH_BEFORE_S
    short = Key("ASIA1", "s", "t", expires_s=1010.0, issued_s=1000.0)
    assert short.refresh_at_s() == 1005.0  # halfway through a life shorter than the margin
    assert Key("AKIA1", "s").refresh_at_s() is None


class Cognito:
    """GetCredentialsForIdentity issuing credentials that live ``life_s``, and
    PutEvents recording which access key signed each request."""

    def __init__(self, life_s: float) -> None:
        self.life_s = life_s
        self.issued: list[str] = []
        self.signed_by: Counter[str] = Counter()

    async def root(self, request: web.Request) -> web.Response:
        assert request.headers["X-Amz-Target"].endswith(".GetCredentialsForIdentity")
        assert orjson.loads(await request.read()) == {"IdentityId": "us-east-1:identity"}
        key = f"ASIA{len(self.issued):016d}"
        self.issued.append(key)
        answer = {
            "IdentityId": "us-east-1:identity",
            "Credentials": {
                "AccessKeyId": key,
                "SecretKey": "secret",
                "SessionToken": f"token-{key}",
                "Expiration": time.time() + self.life_s,
            },
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/x-amz-json-1.1")

    async def events(self, request: web.Request) -> web.Response:
        self.signed_by[request.headers["Authorization"].split("Credential=")[1].split("/")[0]] += 1
        assert (
            request.headers["X-Amz-Security-Token"]
            == "token-" + request.headers["Authorization"].split("Credential=")[1].split("/")[0]
        )
        body = orjson.loads(await request.read())
        results = {
            endpoint_id: {
                "EndpointItemResponse": {"StatusCode": 202, "Message": "Accepted"},
                "EventsItemResponse": {e: {"StatusCode": 202, "Message": "Accepted"} for e in item["Events"]},
            }
            for endpoint_id, item in body["BatchItem"].items()
        }
        return web.json_response({"Results": results}, status=202)


async def test_devices_sign_with_fresh_credentials_before_theirs_expire() -> None:
    cognito = Cognito(life_s=1.0)
    app = web.Application()
    app.router.add_post("/", cognito.root)
    app.router.add_post("/v1/apps/{app}/events", cognito.events)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            first = await credentials.temporary(session, url, "us-east-1:identity")
        final = await drive(
            plan(url, duration_s=2.0, concurrency=2, device_key=first, identity_id="us-east-1:identity"),
            lambda _: None,
        )
    finally:
        await runner.cleanup()
    assert final.extra["credential_refreshes"] >= 2
    # Every refresh was issued; the server may have issued one or two more
    # (a fetch the run's end cut short, or one that timed out on a busy
    # machine and was asked again).
    assert len(cognito.issued) >= final.extra["credential_refreshes"] + 1
    # The later credentials signed requests, never after the first expired.
    assert len(cognito.signed_by) >= 2 and set(cognito.signed_by) <= set(cognito.issued)


async def test_a_new_pool_is_taken_as_visible_only_once_every_edge_answers_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two edges on one port, one of them not yet reloaded: GetId succeeds on
    some connections and not others. The harness takes the pool as known
    only after POOL_CONFIRMATIONS answers in a row, each on a new connection;
    a refusal by rate limit says nothing of the pool and does not start over."""
    monkeypatch.setattr(credentials, "POOL_POLL_S", 0.01)
    answers = ["ok", "missing", "ok", "ok", "missing", "ok", "throttled"]
    peers: list[tuple[str, int]] = []

    async def root(request: web.Request) -> web.Response:
        assert request.headers["X-Amz-Target"].endswith(".GetId")
        peers.append(request.transport.get_extra_info("peername") if request.transport else ("", 0))
        answer = answers.pop(0) if answers else "ok"
        if answer == "ok":
            body = orjson.dumps({"IdentityId": f"us-east-1:{len(peers):08d}-0000-0000-0000-000000000000"})
            return web.Response(body=body, content_type="application/x-amz-json-1.1")
        kind = "ResourceNotFoundException" if answer == "missing" else "TooManyRequestsException"
        return web.Response(status=400, body=b"{}", headers={"x-amzn-ErrorType": kind})

    app = web.Application()
    app.router.add_post("/", root)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        identity_id = await credentials.identity(f"http://127.0.0.1:{port}", "us-east-1:pool")
    finally:
        await runner.cleanup()
    # Five answers up to the last refusal of the pool; then a confirmation,
    # the throttled answer (which keeps it: 19 requests if it started over),
    # and the other confirmations; each on a connection of its own.
    assert len(peers) == 6 + credentials.POOL_CONFIRMATIONS
    assert len(set(peers)) == len(peers)
    assert identity_id == f"us-east-1:{len(peers):08d}-0000-0000-0000-000000000000"


# --- the command against the real thing ---------------------------------------


def run_load(*args: str, env: dict[str, str] | None = None, timeout_s: float = 120) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "load", *args, "--json", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-16000:]
    summary: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return summary


def test_smoke_run_accounts_for_every_event(tmp_path: Path) -> None:
    """Against a running `ingest run`, found and signed for as a user would:
    its credentials file and profile from the environment, devices' temporary
    credentials from an identity pool made on its data dir."""
    pipeline = start_pipeline(tmp_path)
    env = credentials.file_env(pipeline.data_dir / "credentials", base=clean_env())
    try:
        summary = run_load(
            "--url",
            pipeline.url,
            "--data-dir",
            str(pipeline.data_dir),
            "--duration",
            "4",
            "--concurrency",
            "8",
            "--retry-rate",
            "0.05",
            "--invalid-rate",
            "0.02",
            "--seed",
            "7",
            env=env,
        )
    finally:
        assert pipeline.stop() == 0, pipeline.log()
    assert summary["verified"] and summary["ok"]
    assert summary["lost"] == summary["duplicated"] == 0
    assert summary["counted"] == summary["events_accepted"] > 1000
    assert summary["events_sent"] == (
        summary["events_accepted"] + summary["events_rejected"] + summary["events_failed"]
    )
    assert summary["events_rejected"] == summary["invalid_sent"] > 0
    assert summary["batches_resent"] > 0 and summary["events_resent"] > 0
    assert summary["status"]["events"]["400"] >= summary["invalid_sent"]
    assert set(summary["status"]["http"]) <= {"202", "429", "500"}
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]


def test_chaos_smoke_loses_and_duplicates_nothing() -> None:
    """`--chaos` starts its own `ingest run`: SIGKILLs its KPI worker (which
    it starts again), freezes the broker past a 1 s produce deadline."""
    summary = run_load(
        "--chaos",
        "--duration",
        "8",
        "--rate",
        "5000",
        "--retry-rate",
        "0.05",
        "--seed",
        "9",
        env=clean_env(INGEST_PRODUCE_TIMEOUT_S="1", INGEST_EMBEDDED_STORAGE="memory"),
    )
    assert summary["verified"] and summary["ok"]
    assert summary["lost"] == summary["duplicated"] == 0
    assert summary["counted"] == summary["events_accepted"] > 1000
    actions = [a["action"].split(" (")[0] for a in summary["chaos"]]
    assert actions == [
        "SIGKILL worker-kpis",
        "worker-kpis started again by ingest run",
        "SIGSTOP broker",
        "SIGCONT broker",
    ]
    # The freeze outlasted the produce deadline: events were answered 500
    # and sent again until accepted.
    assert summary["status"]["events"].get("500", 0) > 0
    assert summary["sdk_retries"] > 0
