"""Event streams end to end: `ingest run` delivering what PutEvents accepted
to real implementations of each destination's protocol — Kinesis
(kinesalite, behind a proxy that only injects faults), Firehose (moto's
server mode, into its S3, assuming the stream's role through moto's STS)
and a Kafka topic on the embedded broker. Every accepted event arrives at
least once, as the documented JSON (validated against the schema), in order
per endpoint, and countable once by its ``ingest.event_id``; a destination
down holds back only its own apps; a partial failure re-sends only what
failed; a worker SIGKILLed mid-batch loses nothing."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import orjson
import pytest

from ingest.records.codec import schema_dir
from ingest.streams.record import SCHEMA_FILE
from tests import aws
from tests.conftest import Pipeline, endpoint_or_none, eventually, start_pipeline
from tests.kafka_reader import read_raw
from tests.samples import metric

ROLE = f"arn:aws:iam::{aws.MOTO_ACCOUNT}:role/pinpoint-events"
ACCOUNT = aws.MOTO_ACCOUNT
WITHIN_S = 60.0
SCHEMA = jsonschema.Draft202012Validator(json.loads((schema_dir() / SCHEMA_FILE).read_text()))


@pytest.fixture(scope="module")
def faulty(kinesalite: aws.Kinesalite) -> Iterator[aws.FaultyKinesis]:
    with aws.FaultyKinesis(kinesalite.url) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def streaming(
    tmp_path_factory: pytest.TempPathFactory, faulty: aws.FaultyKinesis, moto_server: aws.MotoServer
) -> Iterator[Pipeline]:
    """`ingest run` whose AWS is on loopback: Kinesis through the proxy,
    Firehose and STS at moto; dummy keys, no AWS config, no metadata."""
    tmp = tmp_path_factory.mktemp("streams")
    env = {
        **aws.loopback_env(tmp, "AKIATESTINGKEYID0002"),
        "AWS_ENDPOINT_URL_KINESIS": faulty.url,
        "AWS_ENDPOINT_URL_FIREHOSE": moto_server.url,
        "AWS_ENDPOINT_URL_STS": moto_server.url,
        "INGEST_STREAM_PARK_AFTER_S": "1",
        "INGEST_STREAM_CONFIG_REFRESH_S": "0.5",
    }
    running = start_pipeline(tmp, **env)
    yield running
    assert running.stop() == 0, running.log()


def new_app(pipeline: Pipeline) -> str:
    created = pipeline.client().create_app(CreateApplicationRequest={"Name": "streamed"})
    return str(created["ApplicationResponse"]["Id"])


def stream(pipeline: Pipeline, app_id: str, arn: str) -> None:
    pipeline.client().put_event_stream(
        ApplicationId=app_id, WriteEventStream={"DestinationStreamArn": arn, "RoleArn": ROLE}
    )


def put_events(
    pipeline: Pipeline, app_id: str, endpoints: int, per_endpoint: int, *, first: int = 0
) -> set[str]:
    """PutEvents of ``per_endpoint`` events for each endpoint, numbered
    from ``first`` (attribute ``n``, timestamps in that order), one request
    per 25 events of an endpoint; → the event IDs answered Accepted."""
    client = pipeline.client()
    accepted: set[str] = set()
    for start in range(first, first + per_endpoint, 25):
        batch: dict[str, Any] = {}
        for endpoint in range(endpoints):
            events = {
                f"e{endpoint}-{n}": {
                    "EventType": "_session.start" if n == 0 else "level.up",
                    "Timestamp": f"2026-12-01T10:{n // 60 % 60:02d}:{n % 60:02d}.000Z",
                    "Attributes": {"n": str(n)},
                    "Session": {"Id": f"s{endpoint}", "StartTimestamp": "2026-12-01T10:00:00.000Z"},
                }
                for n in range(start, min(start + 25, first + per_endpoint))
            }
            batch[f"ep{endpoint}"] = {
                "Endpoint": {"Demographic": {"Platform": "android", "Locale": "en_US"}},
                "Events": events,
            }
        results = client.put_events(ApplicationId=app_id, EventsRequest={"BatchItem": batch})
        for result in results["EventsResponse"]["Results"].values():
            accepted |= {e for e, r in result["EventsItemResponse"].items() if r["StatusCode"] == 202}
    return accepted


def check_records(
    records: list[dict[str, Any]],
    app_id: str,
    accepted: set[str],
    *,
    resent: frozenset[str] = frozenset(),
    ordered: bool = True,
) -> None:
    """Each record is the documented JSON of ``app_id``; every accepted event
    is there, counted once by its event ID; per endpoint in order, but for
    the ``resent`` event IDs (a record re-sent after a partial failure lands
    after later records of its endpoint that the same call delivered).
    ``ordered`` False: the destination keeps no order to check."""
    for one in records:
        SCHEMA.validate(one)
        assert one["application"]["app_id"] == app_id
    ids = [one["ingest"]["event_id"] for one in records]
    assert set(ids) == accepted, set(ids) ^ accepted
    if not ordered:
        return
    firsts: dict[str, list[int]] = {}
    seen: set[str] = set()
    for one in records:
        if one["ingest"]["event_id"] in seen or one["ingest"]["event_id"] in resent:
            continue
        seen.add(one["ingest"]["event_id"])
        firsts.setdefault(one["client"]["client_id"], []).append(int(one["attributes"]["n"]))
    for endpoint, numbers in firsts.items():
        assert numbers == sorted(numbers), (endpoint, numbers)


def until_records(
    read: Callable[[], list[dict[str, Any]]], accepted: set[str], what: str
) -> list[dict[str, Any]]:
    return eventually(
        read, lambda got: {one["ingest"]["event_id"] for one in got} >= accepted, what, within_s=WITHIN_S
    )


def kinesis_records(kinesalite: aws.Kinesalite, name: str) -> list[dict[str, Any]]:
    out = []
    for record in kinesalite.read_stream(name):
        one = orjson.loads(record.data)
        assert record.partition_key == one["client"]["client_id"]
        out.append(one)
    return out


def kafka_records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """The stream's JSON records on ``topic``, each keyed ``app:endpoint``."""
    out = []
    for message in read_raw(bootstrap, topic):
        one = orjson.loads(message.value)
        assert message.key == f"{one['application']['app_id']}:{one['client']['client_id']}".encode()
        out.append(one)
    return out


def firehose_records(moto: aws.MotoServer, bucket: str) -> list[dict[str, Any]]:
    out = []
    for body in moto.delivered(bucket):
        assert body.endswith(b"\n"), body[-40:]
        out += [orjson.loads(line) for line in body.split(b"\n") if line]
    return out


def readyz(pipeline: Pipeline) -> dict[str, Any]:
    _, _, body = pipeline.request("GET", "/readyz", sign=False)
    return dict(orjson.loads(body))


def test_kinesis_gets_every_accepted_event_once_countable_and_in_order(
    streaming: Pipeline, kinesalite: aws.Kinesalite, faulty: aws.FaultyKinesis, moto_server: aws.MotoServer
) -> None:
    name = kinesalite.create_stream(shards=2)
    app_id = new_app(streaming)
    stream(streaming, app_id, f"arn:aws:kinesis:{aws.REGION}:{ACCOUNT}:stream/{name}")
    accepted = put_events(streaming, app_id, endpoints=4, per_endpoint=60)
    # A client retrying a request it got no answer to: the same event IDs again.
    accepted |= put_events(streaming, app_id, endpoints=4, per_endpoint=25, first=35)
    records = until_records(lambda: kinesis_records(kinesalite, name), accepted, "every event in Kinesis")
    check_records(records, app_id, accepted)
    assert len(records) >= 4 * 60 + 4 * 25  # the retried ones arrive again; their IDs count them once
    # Delivered as the stream's role, which moto's STS issued.
    roles = [r for r in moto_server.assumed_roles() if r["role_arn"] == ROLE]
    assert roles and all(r["session_name"] == "ingest-event-stream" for r in roles)
    keys = {call.access_key_id for call in faulty.calls if call.target.endswith("PutRecords")}
    assert keys and keys <= {r["access_key_id"] for r in roles}


def test_firehose_gets_newline_terminated_json_objects(
    streaming: Pipeline, moto_server: aws.MotoServer
) -> None:
    name, bucket = moto_server.create_delivery_stream()
    app_id = new_app(streaming)
    stream(streaming, app_id, f"arn:aws:firehose:{aws.REGION}:{ACCOUNT}:deliverystream/{name}")
    accepted = put_events(streaming, app_id, endpoints=3, per_endpoint=50)
    records = until_records(lambda: firehose_records(moto_server, bucket), accepted, "every event in S3")
    # moto names each call's object by the second it came: no order among
    # the calls of one second to read back (nor does Firehose promise one).
    check_records(records, app_id, accepted, ordered=False)


def test_a_kafka_topic_gets_json_keyed_like_the_pipelines_topics(streaming: Pipeline) -> None:
    topic = f"streams.e2e-{uuid.uuid4().hex[:8]}"
    app_id = new_app(streaming)
    stream(streaming, app_id, f"arn:aws:kafka:{aws.REGION}:{ACCOUNT}:topic/local/0000-1111-2222/{topic}")
    accepted = put_events(streaming, app_id, endpoints=3, per_endpoint=50)
    records = until_records(
        lambda: kafka_records(streaming.bootstrap, topic), accepted, "every event on the topic"
    )
    check_records(records, app_id, accepted)


def test_partial_failures_resend_only_the_failed_records(
    streaming: Pipeline, kinesalite: aws.Kinesalite, faulty: aws.FaultyKinesis
) -> None:
    name = kinesalite.create_stream(shards=1)
    app_id = new_app(streaming)
    # Every event numbered 3 mod 7 of this app fails the first time the proxy sees it.
    marker = app_id.encode()

    def fault(data: bytes, attempt: int) -> str | None:
        one = orjson.loads(data)
        chosen = marker in data and int(one["attributes"]["n"]) % 7 == 3
        return "ProvisionedThroughputExceededException" if chosen and attempt == 1 else None

    faulty.fail_records(fault)
    try:
        stream(streaming, app_id, f"arn:aws:kinesis:{aws.REGION}:{ACCOUNT}:stream/{name}")
        accepted = put_events(streaming, app_id, endpoints=2, per_endpoint=50)
        records = until_records(lambda: kinesis_records(kinesalite, name), accepted, "every event in Kinesis")
    finally:
        faulty.clear_faults()
    injected_ids = frozenset(orjson.loads(data)["ingest"]["event_id"] for data in faulty.injected)
    check_records(records, app_id, accepted, resent=injected_ids)
    mine = {data: count for data, count in faulty.attempts.items() if marker in data}
    injected = {data for data in faulty.injected if marker in data}
    assert len(injected) == 2 * sum(1 for n in range(50) if n % 7 == 3)
    # Sent twice: exactly the records the service named; everything else once.
    assert {data for data, count in mine.items() if count > 1} == injected
    assert all(mine[data] == 2 for data in injected)
    assert len(records) == len(accepted)


def test_a_destination_down_holds_back_only_its_apps_then_delivers_everything(
    streaming: Pipeline, kinesalite: aws.Kinesalite
) -> None:
    name = kinesalite.create_stream(shards=1)
    down_app, up_app = new_app(streaming), new_app(streaming)
    topic = f"streams.up-{uuid.uuid4().hex[:8]}"
    stream(streaming, down_app, f"arn:aws:kinesis:{aws.REGION}:{ACCOUNT}:stream/{name}")
    stream(streaming, up_app, f"arn:aws:kafka:{aws.REGION}:{ACCOUNT}:topic/local/0000-1111-2222/{topic}")
    kinesalite.stop()
    try:
        held = put_events(streaming, down_app, endpoints=2, per_endpoint=40)
        flowing = put_events(streaming, up_app, endpoints=2, per_endpoint=40)
        until_records(
            lambda: kafka_records(streaming.bootstrap, topic), flowing, "the other app's stream flows"
        )
        degraded = eventually(
            lambda: readyz(streaming).get("degraded", []),
            lambda notes: any(name in note for note in notes),
            "the down stream named under degraded in /readyz",
        )
        assert "worker-streams" in degraded[0] and "kinesis" in degraded[0]
        assert readyz(streaming)["status"] == "ready"  # the pipeline serves on
        # And in metrics: parked, failing as unavailable, behind.
        assert metric(streaming, 'ingest_stream_parked_destinations{destination="kinesis"}') == 1
        assert (
            metric(streaming, 'ingest_stream_failures_total{destination="kinesis",reason="unavailable"}') > 0
        )
        eventually(
            lambda: metric(streaming, 'ingest_stream_lag_records{destination="kinesis"}'),
            lambda lag: lag >= len(held),
            "the parked stream's lag",
        )
        held |= put_events(streaming, down_app, endpoints=2, per_endpoint=20, first=40)
    finally:
        kinesalite.start()
    records = until_records(lambda: kinesis_records(kinesalite, name), held, "everything once it is back")
    check_records(records, down_app, held)
    eventually(lambda: readyz(streaming).get("degraded", []), lambda notes: not notes, "no longer degraded")
    assert metric(streaming, 'ingest_stream_parked_destinations{destination="kinesis"}') == 0


def test_throttled_and_unavailable_calls_back_off_and_lose_nothing(
    streaming: Pipeline, kinesalite: aws.Kinesalite, faulty: aws.FaultyKinesis
) -> None:
    name = kinesalite.create_stream(shards=1)
    app_id = new_app(streaming)
    stream(streaming, app_id, f"arn:aws:kinesis:{aws.REGION}:{ACCOUNT}:stream/{name}")
    throttled = 'ingest_stream_failures_total{destination="kinesis",reason="throttled"}'
    before = metric(streaming, throttled)
    # Whole calls refused: throttled three times, then a 503, then through.
    faulty.fail_calls(400, "ProvisionedThroughputExceededException", count=3)
    faulty.fail_calls(503, "ServiceUnavailableException", count=1)
    try:
        accepted = put_events(streaming, app_id, endpoints=2, per_endpoint=30)
        records = until_records(lambda: kinesis_records(kinesalite, name), accepted, "every event in Kinesis")
    finally:
        faulty.clear_faults()
    check_records(records, app_id, accepted)
    assert metric(streaming, throttled) - before >= 3
    assert len(records) == len(accepted)  # refused calls delivered nothing, so nothing twice


def test_the_worker_sigkilled_mid_batch_loses_nothing(
    streaming: Pipeline, kinesalite: aws.Kinesalite, faulty: aws.FaultyKinesis
) -> None:
    name = kinesalite.create_stream(shards=1)
    app_id = new_app(streaming)
    stream(streaming, app_id, f"arn:aws:kinesis:{aws.REGION}:{ACCOUNT}:stream/{name}")
    faulty.stall_calls()  # the worker's next PutRecords hangs: it is mid-batch
    try:
        accepted = put_events(streaming, app_id, endpoints=2, per_endpoint=50)
        eventually(lambda: len(faulty.calls), lambda n: n > 0, "a PutRecords in flight", within_s=WITHIN_S)
        before = streaming.launched.reread_status()
        worker = next(child for child in before.children if child.name == "worker-streams")
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        faulty.release()
    eventually(
        lambda: next(
            c.pid for c in streaming.launched.reread_status().children if c.name == "worker-streams"
        ),
        lambda pid: pid not in (0, worker.pid),
        "worker-streams restarted",
        within_s=WITHIN_S,
    )
    records = until_records(
        lambda: kinesis_records(kinesalite, name), accepted, "every event after the restart"
    )
    check_records(records, app_id, accepted)


def test_a_record_carries_the_stored_endpoint_as_pinpoints_did(streaming: Pipeline) -> None:
    """Amplify JS describes the device with UpdateEndpoint and sends
    ``"Endpoint": {}`` with its events: the record's device and endpoint
    come from the endpoint stored."""
    topic = f"streams.enriched-{uuid.uuid4().hex[:8]}"
    app_id = new_app(streaming)
    client = streaming.client()
    client.update_endpoint(
        ApplicationId=app_id,
        EndpointId="phone-1",
        EndpointRequest={
            "ChannelType": "APNS",
            "Address": "device-token-1",
            "Attributes": {"plan": ["pro"]},
            "Demographic": {"Platform": "ios", "PlatformVersion": "18.1", "Make": "Apple", "Locale": "de_DE"},
            "User": {"UserId": "user-1"},
        },
    )
    eventually(
        lambda: endpoint_or_none(client, app_id, "phone-1"),
        lambda found: found is not None and found.get("Address") == "device-token-1",
        "the endpoint stored",
    )
    stream(streaming, app_id, f"arn:aws:kafka:{aws.REGION}:{ACCOUNT}:topic/local/0000-1111-2222/{topic}")
    client.put_events(
        ApplicationId=app_id,
        EventsRequest={
            "BatchItem": {
                "phone-1": {
                    "Endpoint": {},
                    "Events": {
                        "ev-1": {"EventType": "_session.start", "Timestamp": "2026-12-01T10:00:00.000Z"}
                    },
                }
            }
        },
    )
    (one,) = until_records(
        lambda: kafka_records(streaming.bootstrap, topic), {"ev-1"}, "the event on the topic"
    )
    SCHEMA.validate(one)
    assert one["device"]["platform"] == {"name": "ios", "version": "18.1"}
    assert one["device"]["make"] == "Apple"
    assert one["device"]["locale"] == {"code": "de_DE", "language": "de", "country": "DE"}
    endpoint = one["endpoint"]
    assert (endpoint["Id"], endpoint["ApplicationId"], endpoint["Address"]) == (
        "phone-1",
        app_id,
        "device-token-1",
    )
    assert endpoint["Attributes"] == {"plan": ["pro"]} and endpoint["User"]["UserId"] == "user-1"
    assert endpoint["ChannelType"] == "APNS" and endpoint["EndpointStatus"] == "ACTIVE"
