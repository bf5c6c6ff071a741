"""Segments against a running `ingest run`, with boto3: every operation and
its errors (404s, a 400 naming the member, paging, versions, the bound per
app, DeleteApp), UpdateSegment of an IMPORT segment, each key scope's
reach, and Recency driven by PutEvents through the pipeline (Tansu, the KPI
worker, the store)."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from typing import Any

from ingest.api.segments import MAX_SEGMENTS_PER_APP
from ingest.records.validate import MAX_ID_CHARS
from ingest.store.base import Segment
from ingest.store.sqlite import SqliteStore
from tests.conftest import Pipeline, eventually
from tests.test_app_resources import error_of

DIMENSIONS = {
    "Demographic": {"Platform": {"DimensionType": "INCLUSIVE", "Values": ["iOS"]}},
    "Location": {"Country": {"DimensionType": "INCLUSIVE", "Values": ["DE"]}},
    "Behavior": {"Recency": {"Duration": "DAY_7", "RecencyType": "ACTIVE"}},
    "Attributes": {"plan": {"AttributeType": "INCLUSIVE", "Values": ["pro"]}},
}
MEMBERS = {
    "ApplicationId",
    "Arn",
    "CreationDate",
    "Id",
    "LastModifiedDate",
    "Name",
    "SegmentType",
    "Version",
    "tags",
}


def create(client: Any, app_id: str, **request: Any) -> dict[str, Any]:
    response = client.create_segment(ApplicationId=app_id, WriteSegmentRequest=request)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 201
    return dict(response["SegmentResponse"])


def store_of(pipeline: Pipeline) -> Any:
    """The running pipeline's SQLite store, opened beside it (WAL)."""
    return SqliteStore.open(pipeline.data_dir / "ingest.sqlite3")


def test_a_segment_round_trips_through_its_versions(pinpoint: Any, app_id: str) -> None:
    made = create(pinpoint, app_id, Name="active DE pros", Dimensions=DIMENSIONS, tags={"team": "growth"})
    assert set(made) == MEMBERS | {"Dimensions"}
    assert (
        made["Arn"]
        == f"{pinpoint.get_app(ApplicationId=app_id)['ApplicationResponse']['Arn']}/segments/{made['Id']}"
    )
    assert (made["SegmentType"], made["Version"], made["Dimensions"]) == ("DIMENSIONAL", 1, DIMENSIONS)
    assert made["tags"] == {"team": "growth"} and made["CreationDate"] == made["LastModifiedDate"]
    segment_id = made["Id"]
    assert pinpoint.get_segment(ApplicationId=app_id, SegmentId=segment_id)["SegmentResponse"] == made

    groups = {
        "Groups": [{"Dimensions": [DIMENSIONS], "SourceSegments": [], "SourceType": "ANY", "Type": "NONE"}],
        "Include": "ALL",
    }
    updated = pinpoint.update_segment(
        ApplicationId=app_id, SegmentId=segment_id, WriteSegmentRequest={"SegmentGroups": groups}
    )["SegmentResponse"]
    assert (updated["Version"], updated["Name"], updated["tags"]) == (2, "active DE pros", {"team": "growth"})
    assert updated["SegmentGroups"] == groups and "Dimensions" not in updated
    assert (
        updated["CreationDate"] == made["CreationDate"]
        and updated["LastModifiedDate"] > made["LastModifiedDate"]
    )
    renamed = pinpoint.update_segment(
        ApplicationId=app_id, SegmentId=segment_id, WriteSegmentRequest={"Name": "renamed"}
    )["SegmentResponse"]
    assert (renamed["Version"], renamed["Name"], renamed["SegmentGroups"]) == (3, "renamed", groups)

    first = pinpoint.get_segment_version(ApplicationId=app_id, SegmentId=segment_id, Version="1")
    assert first["SegmentResponse"] == made
    versions = pinpoint.get_segment_versions(ApplicationId=app_id, SegmentId=segment_id)["SegmentsResponse"]
    assert [v["Version"] for v in versions["Item"]] == [1, 2, 3] and "NextToken" not in versions
    listed = pinpoint.get_segments(ApplicationId=app_id)["SegmentsResponse"]["Item"]
    assert listed == [renamed]

    deleted = pinpoint.delete_segment(ApplicationId=app_id, SegmentId=segment_id)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 200 and deleted["SegmentResponse"] == renamed
    for call in (
        lambda: pinpoint.get_segment(ApplicationId=app_id, SegmentId=segment_id),
        lambda: pinpoint.get_segment_version(ApplicationId=app_id, SegmentId=segment_id, Version="1"),
        lambda: pinpoint.get_segment_versions(ApplicationId=app_id, SegmentId=segment_id),
        lambda: pinpoint.update_segment(ApplicationId=app_id, SegmentId=segment_id, WriteSegmentRequest={}),
        lambda: pinpoint.delete_segment(ApplicationId=app_id, SegmentId=segment_id),
    ):
        status, code, message = error_of(call)
        assert (status, code) == (404, "NotFoundException") and segment_id in message
    assert pinpoint.get_segments(ApplicationId=app_id)["SegmentsResponse"] == {"Item": []}


def test_the_errors(pinpoint: Any, unvalidated: Any, app_id: str) -> None:
    segment_id = create(pinpoint, app_id, Name="s")["Id"]
    for call in (
        lambda: create(pinpoint, "no-such-app", Name="s"),
        lambda: pinpoint.get_segments(ApplicationId="no-such-app"),
        lambda: pinpoint.get_segment(ApplicationId="no-such-app", SegmentId=segment_id),
    ):
        assert error_of(call)[:2] == (404, "NotFoundException")
    status, code, message = error_of(
        lambda: pinpoint.get_segment_version(ApplicationId=app_id, SegmentId=segment_id, Version="2")
    )
    assert (status, code) == (404, "NotFoundException") and "version 2" in message
    for version in ("0", "x", "-1"):
        get = functools.partial(
            pinpoint.get_segment_version, ApplicationId=app_id, SegmentId=segment_id, Version=version
        )
        assert error_of(get)[:2] == (400, "BadRequestException")
    long_id = "s" * (MAX_ID_CHARS + 1)
    assert error_of(lambda: pinpoint.get_segment(ApplicationId=app_id, SegmentId=long_id))[0] == 400

    invalid = {
        "Dimensions.Demographic.Platform.Values[1] must be a string": {
            "Dimensions": {"Demographic": {"Platform": {"Values": ["iOS", 7]}}}
        },
        "Dimensions and SegmentGroups": {"Dimensions": {}, "SegmentGroups": {}},
        "SegmentGroups.Groups[0].SourceSegments[0].Id: no segment nope in this application": {
            "SegmentGroups": {"Groups": [{"SourceSegments": [{"Id": "nope"}]}]}
        },
        f"SegmentGroups.Groups[0].SourceSegments[0].Id: no segment {segment_id} version 9": {
            "SegmentGroups": {"Groups": [{"SourceSegments": [{"Id": segment_id, "Version": 9}]}]}
        },
    }
    for message, request in invalid.items():
        for call in (
            lambda r=request: unvalidated.create_segment(ApplicationId=app_id, WriteSegmentRequest=r),
            lambda r=request: unvalidated.update_segment(
                ApplicationId=app_id, SegmentId=segment_id, WriteSegmentRequest=r
            ),
        ):
            status, code, answer = error_of(call)
            assert (status, code) == (400, "BadRequestException") and message in answer, (message, answer)
    # A segment that names itself (or one that names it) is a cycle, refused.
    other = create(
        pinpoint, app_id, Name="o", SegmentGroups={"Groups": [{"SourceSegments": [{"Id": segment_id}]}]}
    )["Id"]
    for source in (segment_id, other):
        update = functools.partial(
            pinpoint.update_segment,
            ApplicationId=app_id,
            SegmentId=segment_id,
            WriteSegmentRequest={"SegmentGroups": {"Groups": [{"SourceSegments": [{"Id": source}]}]}},
        )
        status, _, message = error_of(update)
        assert status == 400 and "nest deeper than" in message, message
    assert pinpoint.get_segment(ApplicationId=app_id, SegmentId=segment_id)["SegmentResponse"]["Version"] == 1


def test_segments_and_versions_page_and_a_token_reads_only_its_own(pinpoint: Any, app_id: str) -> None:
    made = sorted(create(pinpoint, app_id, Name=f"s{i}")["Id"] for i in range(5))
    seen: list[str] = []
    tokens: list[str] = []
    token: str | None = None
    while True:
        page = pinpoint.get_segments(
            ApplicationId=app_id, PageSize="2", **({"Token": token} if token else {})
        )
        seen += [s["Id"] for s in page["SegmentsResponse"]["Item"]]
        token = page["SegmentsResponse"].get("NextToken")
        if token is None:
            break
        tokens.append(token)
    assert seen == made and len(tokens) == 2
    other_app = pinpoint.create_app(CreateApplicationRequest={"Name": "other"})["ApplicationResponse"]["Id"]
    for call in (
        lambda: pinpoint.get_segments(ApplicationId=other_app, Token=tokens[0]),
        lambda: pinpoint.get_segment_versions(ApplicationId=app_id, SegmentId=made[0], Token=tokens[0]),
        lambda: pinpoint.get_segments(ApplicationId=app_id, Token="garbage!"),
        lambda: pinpoint.get_segments(ApplicationId=app_id, PageSize="0"),
        lambda: pinpoint.get_segments(ApplicationId=app_id, PageSize="101"),
    ):
        assert error_of(call)[:2] == (400, "BadRequestException")

    for name in ("a", "b", "c"):
        pinpoint.update_segment(ApplicationId=app_id, SegmentId=made[0], WriteSegmentRequest={"Name": name})
    versions: list[int] = []
    token = None
    while True:
        page = pinpoint.get_segment_versions(
            ApplicationId=app_id, SegmentId=made[0], PageSize="3", **({"Token": token} if token else {})
        )["SegmentsResponse"]
        versions += [v["Version"] for v in page["Item"]]
        if (token := page.get("NextToken")) is None:
            break
    assert versions == [1, 2, 3, 4]
    assert (
        error_of(
            lambda: pinpoint.get_segment_versions(
                ApplicationId=app_id, SegmentId=made[1], Token=token or tokens[0]
            )
        )[0]
        == 400
    )


def test_an_app_holds_a_bounded_number_of_segments_and_delete_app_takes_them(
    pipeline: Pipeline, pinpoint: Any, app_id: str
) -> None:
    path = f"/v1/apps/{app_id}/segments"
    for _ in range(MAX_SEGMENTS_PER_APP):
        assert pipeline.request("POST", path, b"{}")[0] == 201
    status, code, message = error_of(lambda: create(pinpoint, app_id, Name="one more"))
    assert (status, code) == (400, "BadRequestException") and f"limit of {MAX_SEGMENTS_PER_APP}" in message
    some = pinpoint.get_segments(ApplicationId=app_id, PageSize="1")["SegmentsResponse"]["Item"][0]["Id"]
    pinpoint.delete_app(ApplicationId=app_id)
    assert error_of(lambda: pinpoint.get_segment(ApplicationId=app_id, SegmentId=some))[:2] == (
        404,
        "NotFoundException",
    )

    async def left() -> Any:
        store = await store_of(pipeline)
        try:
            return await store.list_segments(app_id, after=None, limit=10)
        finally:
            await store.close()

    assert asyncio.run(left()) == []


def test_an_import_segment_may_be_renamed_but_not_redefined(
    pipeline: Pipeline, pinpoint: Any, app_id: str
) -> None:
    segment_id = uuid.uuid4().hex
    stamp = "2026-12-01T10:00:00.000Z"
    imported = {
        "ImportDefinition": {
            "Size": 1,
            "Format": "JSON",
            "S3Url": "s3://b/k",
            "ExternalId": "",
            "RoleArn": "",
        }
    }

    async def make() -> None:
        store = await store_of(pipeline)
        try:
            await store.create_segment(
                Segment(app_id, segment_id, 1, "imported", "IMPORT", imported, stamp, stamp)
            )
        finally:
            await store.close()

    asyncio.run(make())
    got = pinpoint.get_segment(ApplicationId=app_id, SegmentId=segment_id)["SegmentResponse"]
    assert (got["SegmentType"], got["ImportDefinition"]["Size"]) == ("IMPORT", 1)
    status, _, message = error_of(
        lambda: pinpoint.update_segment(
            ApplicationId=app_id, SegmentId=segment_id, WriteSegmentRequest={"Dimensions": {}}
        )
    )
    assert status == 400 and "IMPORT segment" in message
    renamed = pinpoint.update_segment(
        ApplicationId=app_id, SegmentId=segment_id, WriteSegmentRequest={"Name": "kept", "tags": {"a": "b"}}
    )["SegmentResponse"]
    assert (renamed["Version"], renamed["Name"], renamed["SegmentType"]) == (2, "kept", "IMPORT")
    assert renamed["ImportDefinition"] == imported["ImportDefinition"] and renamed["tags"] == {"a": "b"}


def test_a_read_key_may_get_and_list_segments_but_not_write_them(
    pipeline: Pipeline, pinpoint: Any, app_id: str
) -> None:
    segment_id = create(pinpoint, app_id, Name="s")["Id"]
    reader = pipeline.client(pipeline.create_key("read", app_id))
    assert (
        reader.get_segment(ApplicationId=app_id, SegmentId=segment_id)["SegmentResponse"]["Id"] == segment_id
    )
    assert len(reader.get_segments(ApplicationId=app_id)["SegmentsResponse"]["Item"]) == 1
    reader.get_segment_versions(ApplicationId=app_id, SegmentId=segment_id)
    reader.get_segment_version(ApplicationId=app_id, SegmentId=segment_id, Version="1")
    for call in (
        lambda: create(reader, app_id, Name="x"),
        lambda: reader.update_segment(ApplicationId=app_id, SegmentId=segment_id, WriteSegmentRequest={}),
        lambda: reader.delete_segment(ApplicationId=app_id, SegmentId=segment_id),
    ):
        assert error_of(call)[:2] == (403, "AccessDeniedException")


def test_recency_follows_put_events_through_the_pipeline(
    pipeline: Pipeline, pinpoint: Any, app_id: str
) -> None:
    """An endpoint with an event today is ACTIVE for DAY_7; one that only
    registered is INACTIVE. The KPI worker keeps the last event."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    pinpoint.update_endpoint(
        ApplicationId=app_id, EndpointId="quiet", EndpointRequest={"ChannelType": "GCM", "Address": "q"}
    )
    pinpoint.put_events(
        ApplicationId=app_id,
        EventsRequest={
            "BatchItem": {
                "busy": {
                    "Endpoint": {"ChannelType": "GCM", "Address": "b"},
                    "Events": {"e1": {"EventType": "level.done", "Timestamp": now}},
                }
            }
        },
    )
    recency = {"Duration": "DAY_7"}
    active = create(
        pinpoint, app_id, Dimensions={"Behavior": {"Recency": {**recency, "RecencyType": "ACTIVE"}}}
    )
    inactive = create(
        pinpoint, app_id, Dimensions={"Behavior": {"Recency": {**recency, "RecencyType": "INACTIVE"}}}
    )

    async def members() -> tuple[list[str], list[str]]:
        store = await store_of(pipeline)
        try:
            now_ms = time.time_ns() // 1_000_000
            found = []
            for made in (active, inactive):
                page = await store.segment_endpoints(
                    app_id, made["Id"], None, after=None, limit=10, now_ms=now_ms
                )
                found.append([e.endpoint_id for e in page])
            return found[0], found[1]
        finally:
            await store.close()

    assert eventually(
        lambda: asyncio.run(members()), lambda m: m == (["busy"], ["quiet"]), "busy active, quiet not"
    )
