"""What the edge answered "Accepted" is on Kafka exactly once; nothing else is."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ingest.errors import BrokerError
from ingest.kafka.broker import EmbeddedBroker
from ingest.kafka.clients import ensure_topics
from ingest.settings import Settings
from tests.conftest import Pipeline, start_pipeline
from tests.kafka_reader import read_topic
from tests.test_api import ACCEPTED, FULL_ENDPOINT, event, put


def test_accepted_events_are_on_kafka_exactly_once(pipeline: Pipeline, unvalidated: Any, app_id: str) -> None:
    run = uuid.uuid4().hex
    accepted: set[str] = set()
    rejected: set[str] = set()
    for n in range(5):
        batch: dict[str, Any] = {}
        for e in range(4):
            endpoint_id = f"{run}-ep-{n}-{e}"
            events = {}
            for i in range(5):
                event_id = f"{run}-{n}-{e}-{i}"
                bad = (i + e + n) % 4 == 0
                events[event_id] = event(Timestamp="not a time") if bad else event(EventType=f"type-{i}")
            batch[endpoint_id] = {"Endpoint": FULL_ENDPOINT if e % 2 else {}, "Events": events}
        results = put(unvalidated, app_id, batch)
        for item in results.values():
            assert item["EndpointItemResponse"] == ACCEPTED
            for event_id, status in item["EventsItemResponse"].items():
                (accepted if status == ACCEPTED else rejected).add(event_id)
                assert status == ACCEPTED or status["StatusCode"] == 400
    assert accepted and rejected

    records = read_topic(pipeline.bootstrap, "ingest.events")
    ours = Counter(d["event_id"] for _, d in records if d["event_id"].startswith(run))
    assert set(ours) == accepted
    assert all(count == 1 for count in ours.values()), ours.most_common(3)
    for key, datum in records:
        if datum["event_id"].startswith(run):
            assert key == f"{app_id}:{datum['endpoint_id']}".encode()
            assert datum["app_id"] == app_id and datum["event_type"].startswith("type-")


def test_records_carry_every_field_and_not_sent_stays_null(
    pipeline: Pipeline, pinpoint: Any, app_id: str
) -> None:
    endpoint_id = f"full-{uuid.uuid4()}"
    bare_id = f"bare-{uuid.uuid4()}"
    full_event = event(
        Session={
            "Id": "s-9",
            "StartTimestamp": "2026-11-20T10:00:00Z",
            "StopTimestamp": "2026-11-20T10:05:00Z",
            "Duration": 300000,
        },
        AppPackageName="com.example",
        AppTitle="Example",
        AppVersionCode="42",
        ClientSdkVersion="6.0",
        SdkName="aws-amplify",
        Attributes={},
    )
    put(
        pinpoint,
        app_id,
        {
            endpoint_id: {"Endpoint": FULL_ENDPOINT, "Events": {"full-evt": full_event}},
            bare_id: {
                "Endpoint": {},
                "Events": {"bare-evt": {"EventType": "t", "Timestamp": "2026-11-20T10:00:00Z"}},
            },
        },
    )
    events = {
        d["endpoint_id"]: d
        for _, d in read_topic(pipeline.bootstrap, "ingest.events")
        if d["app_id"] == app_id
    }
    full = events[endpoint_id]
    assert full["session"] == {
        "id": "s-9",
        "start_timestamp": "2026-11-20T10:00:00Z",
        "stop_timestamp": "2026-11-20T10:05:00Z",
        "duration_ms": 300000,
    }
    assert full["attributes"] == {} and full["metrics"] == {"price": 9.99}
    assert full["timestamp_ms"] == 1795168800000
    assert (full["app_package_name"], full["sdk_name"]) == ("com.example", "aws-amplify")
    assert full["endpoint"]["user_id"] == "user-1"
    assert full["endpoint"]["demographic"]["platform"] == "ios"
    assert full["endpoint"]["location"]["city"] == "Oslo"
    bare = events[bare_id]
    assert bare["attributes"] is None and bare["session"] is None and bare["app_title"] is None
    assert bare["endpoint"] == {"user_id": None, "channel_type": None, "demographic": None, "location": None}

    upserts = {
        d["endpoint_id"]: d
        for _, d in read_topic(pipeline.bootstrap, "ingest.endpoints")
        if d["app_id"] == app_id
    }
    up = upserts[endpoint_id]
    assert up["source"] == "PUT_EVENTS"
    assert up["attributes"] == {"interests": ["a", "b"]} and up["user_attributes"] == {"plan": ["pro"]}
    assert up["effective_date_ms"] == 1795168800000 and up["client_request_id"] == "client-req-1"
    assert up["opt_out"] == "NONE" and up["channel_type"] == "APNS" and up["address"] == "device-token-1"
    assert upserts[bare_id]["attributes"] is None and upserts[bare_id]["demographic"] is None


def test_update_endpoints_land_on_the_endpoint_topic(pipeline: Pipeline, pinpoint: Any, app_id: str) -> None:
    pinpoint.update_endpoint(ApplicationId=app_id, EndpointId="a/b c", EndpointRequest={"Address": "one"})
    pinpoint.update_endpoints_batch(
        ApplicationId=app_id, EndpointBatchRequest={"Item": [{"Id": "x1", "Address": "two"}, {"Id": "x2"}]}
    )
    upserts = [(k, d) for k, d in read_topic(pipeline.bootstrap, "ingest.endpoints") if d["app_id"] == app_id]
    by_id = {d["endpoint_id"]: (k, d) for k, d in upserts}
    assert by_id["a/b c"][0] == f"{app_id}:a/b c".encode()
    assert by_id["a/b c"][1]["source"] == "UPDATE_ENDPOINT" and by_id["a/b c"][1]["address"] == "one"
    assert by_id["x1"][1]["source"] == "UPDATE_ENDPOINTS_BATCH" and by_id["x2"][1]["address"] is None


def test_both_main_topics_have_the_configured_partition_count(tmp_path: Path) -> None:
    running = start_pipeline(tmp_path, INGEST_KAFKA_PARTITIONS="3")
    try:
        counts = asyncio.run(partition_counts(running.bootstrap))
    finally:
        running.stop()
    assert counts == {"ingest.events": 3, "ingest.endpoints": 3, "ingest.deadletter": 1}


def test_the_embedded_brokers_main_topics_have_one_partition(pipeline: Pipeline) -> None:
    """`ingest run` runs one worker of each role on it: more partitions would
    only cost Tansu batches and listings (Settings.topic_partitions)."""
    counts = asyncio.run(partition_counts(pipeline.bootstrap))
    assert counts == {"ingest.events": 1, "ingest.endpoints": 1, "ingest.deadletter": 1}


async def partition_counts(bootstrap: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(["ingest.events", "ingest.endpoints", "ingest.deadletter"])
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described}


def test_topics_with_different_partition_counts_fail_start_up(tmp_path: Path) -> None:
    async def scenario() -> str:
        async with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
            admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
            await admin.start()
            try:
                await admin.create_topics(
                    [NewTopic("ingest.events", 2, 1), NewTopic("ingest.endpoints", 3, 1)]
                )
            finally:
                await admin.close()
            with pytest.raises(BrokerError) as exc:
                await ensure_topics(Settings(), broker.bootstrap)
            return str(exc.value)

    assert "same partition count" in asyncio.run(scenario())
