"""An app's other resources against a running `ingest run`, with boto3: its
event stream (PutEventStream, GetEventStream, DeleteEventStream), its tags
(TagResource, UntagResource, ListTagsForResource) and its settings
(GetApplicationSettings, UpdateApplicationSettings): round trips and
Pinpoint's shapes, AWS's rules, the 404s, each key scope's reach, and
DeleteApp taking the stream and settings with it."""

from __future__ import annotations

import re
import sqlite3
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import botocore.session
import orjson
import pytest
from botocore.exceptions import ClientError

from ingest.api.appsettings import WRITE_APPLICATION_SETTINGS, Shape
from ingest.api.http import Route, Router
from ingest.api.tags import app_of_arn, derive
from ingest.streams.destinations import FORMS
from tests.conftest import Pipeline, eventually

KINESIS = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
FIREHOSE = "arn:aws:firehose:eu-west-1:123456789012:deliverystream/archive"
KAFKA = "arn:aws:kafka:us-east-1:123456789012:topic/cluster/0b3c5c1e-1234-4a5b-9c8d-000000000000-1/app.events"
ROLE = "arn:aws:iam::123456789012:role/pinpoint-events"
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
STREAM_MEMBERS = {"ApplicationId", "DestinationStreamArn", "RoleArn", "LastModifiedDate", "LastUpdatedBy"}
SETTINGS = {
    "CampaignHook": {"LambdaFunctionName": "hook", "Mode": "FILTER", "WebUrl": "https://example.com/h"},
    "CloudWatchMetricsEnabled": True,
    "EventTaggingEnabled": False,
    "Limits": {"Daily": 42, "MaximumDuration": 60, "MessagesPerSecond": 50, "Total": 100, "Session": 3},
    "QuietTime": {"Start": "22:00", "End": "06:30"},
    "JourneyLimits": {"DailyCap": 1, "TimeframeCap": {"Cap": 5, "Days": 7}, "TotalCap": 20},
}


def error_of(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, str, str]:
    """(status, code, message) of a call (with ``args`` and ``kwargs``) that must fail."""
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    response = caught.value.response
    return (
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Code"],
        response["Error"]["Message"],
    )


def arn_of(client: Any, app_id: str) -> str:
    return str(client.get_app(ApplicationId=app_id)["ApplicationResponse"]["Arn"])


def put_stream(client: Any, app_id: str, destination: str = KINESIS, role: str = ROLE) -> dict[str, Any]:
    response = client.put_event_stream(
        ApplicationId=app_id, WriteEventStream={"DestinationStreamArn": destination, "RoleArn": role}
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    return dict(response["EventStream"])


def tags_of(client: Any, arn: str) -> dict[str, str]:
    return dict(client.list_tags_for_resource(ResourceArn=arn)["TagsModel"]["tags"])


def resource_operations(client: Any, app_id: str, arn: str) -> dict[str, Callable[[], Any]]:
    """The eight operations of this file on ``app_id`` (whose ARN is ``arn``),
    each callable on its own, in any order (tests/test_auth.py runs them too)."""
    return {
        "PutEventStream": lambda: put_stream(client, app_id),
        "GetEventStream": lambda: client.get_event_stream(ApplicationId=app_id),
        "DeleteEventStream": lambda: client.delete_event_stream(ApplicationId=app_id),
        "TagResource": lambda: client.tag_resource(ResourceArn=arn, TagsModel={"tags": {"scope": "x"}}),
        "UntagResource": lambda: client.untag_resource(ResourceArn=arn, TagKeys=["scope"]),
        "ListTagsForResource": lambda: client.list_tags_for_resource(ResourceArn=arn),
        "GetApplicationSettings": lambda: client.get_application_settings(ApplicationId=app_id),
        "UpdateApplicationSettings": lambda: client.update_application_settings(
            ApplicationId=app_id, WriteApplicationSettingsRequest={"Limits": {"Daily": 1}}
        ),
    }


# Event streams.


def test_an_event_stream_round_trips_in_pinpoints_shape(
    pipeline: Pipeline, pinpoint: Any, app_id: str
) -> None:
    put = put_stream(pinpoint, app_id)
    assert set(put) == STREAM_MEMBERS  # no ExternalId: none was set
    assert (put["ApplicationId"], put["DestinationStreamArn"], put["RoleArn"]) == (app_id, KINESIS, ROLE)
    assert ISO_MS.fullmatch(put["LastModifiedDate"]), put
    assert put["LastUpdatedBy"] == pipeline.credentials()[0]
    got = pinpoint.get_event_stream(ApplicationId=app_id)
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert got["EventStream"] == put

    deleted = pinpoint.delete_event_stream(ApplicationId=app_id)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert deleted["EventStream"] == put
    for call in (pinpoint.get_event_stream, pinpoint.delete_event_stream):
        status, code, message = error_of(call, ApplicationId=app_id)
        assert (status, code) == (404, "NotFoundException")
        assert "has no event stream" in message and app_id in message


def test_one_stream_an_app_a_second_put_replaces_it(pinpoint: Any, app_id: str) -> None:
    first = put_stream(pinpoint, app_id)
    # Put again until a millisecond has passed (usually the first time).
    second = eventually(
        lambda: put_stream(pinpoint, app_id, FIREHOSE),
        lambda put: put["LastModifiedDate"] > first["LastModifiedDate"],
        "a later LastModifiedDate",
    )
    assert second["DestinationStreamArn"] == FIREHOSE
    assert pinpoint.get_event_stream(ApplicationId=app_id)["EventStream"] == second
    assert pinpoint.delete_event_stream(ApplicationId=app_id)["EventStream"] == second
    assert error_of(lambda: pinpoint.get_event_stream(ApplicationId=app_id))[0] == 404


def test_a_kafka_topic_is_a_destination_but_not_the_pipelines_own(pinpoint: Any, app_id: str) -> None:
    assert put_stream(pinpoint, app_id, KAFKA)["DestinationStreamArn"] == KAFKA
    own = KAFKA.replace("app.events", "ingest.events")
    status, code, message = error_of(lambda: put_stream(pinpoint, app_id, own))
    assert (status, code) == (400, "BadRequestException")
    assert "'ingest.events'" in message and "pipeline's own" in message
    # The refused put left the stream as it was.
    assert pinpoint.get_event_stream(ApplicationId=app_id)["EventStream"]["DestinationStreamArn"] == KAFKA


def test_an_unknown_arn_form_is_refused_naming_the_accepted_forms(pinpoint: Any, app_id: str) -> None:
    for destination in ("kinesis:arn", "arn:aws:sqs:us-east-1:123456789012:queue", KINESIS + "/x", ""):
        status, code, message = error_of(put_stream, pinpoint, app_id, destination)
        assert (status, code) == (400, "BadRequestException"), destination
        assert all(form in message for form in FORMS), message
    status, code, message = error_of(lambda: put_stream(pinpoint, app_id, role="iam:arn"))
    assert (status, code) == (400, "BadRequestException")
    assert "RoleArn must be an IAM role ARN" in message
    assert error_of(lambda: pinpoint.get_event_stream(ApplicationId=app_id))[0] == 404


def test_a_stream_body_without_its_members_is_refused(pipeline: Pipeline, app_id: str) -> None:
    path = f"/v1/apps/{app_id}/eventstream"
    cases = {
        "DestinationStreamArn is required": {"RoleArn": ROLE},
        "RoleArn is required": {"DestinationStreamArn": KINESIS, "RoleArn": 7},
        "ExternalId must be a string": {"DestinationStreamArn": KINESIS, "RoleArn": ROLE, "ExternalId": 1},
        "ExternalId must be 2-1224": {"DestinationStreamArn": KINESIS, "RoleArn": ROLE, "ExternalId": "x"},
        "must be a JSON object": [KINESIS, ROLE],
    }
    for rule, body in cases.items():
        status, headers, answer = pipeline.request("POST", path, orjson.dumps(body))
        assert (status, headers["x-amzn-errortype"]) == (400, "BadRequestException"), rule
        assert rule in orjson.loads(answer)["Message"], (rule, answer)


def test_a_legacy_external_id_is_kept_and_answered(pipeline: Pipeline, pinpoint: Any, app_id: str) -> None:
    body = {"DestinationStreamArn": KINESIS, "RoleArn": ROLE, "ExternalId": "tenant-7", "Other": "ignored"}
    status, _, answer = pipeline.request("POST", f"/v1/apps/{app_id}/eventstream", orjson.dumps(body))
    assert status == 200, answer
    put = orjson.loads(answer)
    assert set(put) == STREAM_MEMBERS | {"ExternalId"} and put["ExternalId"] == "tenant-7"
    # botocore's model has no ExternalId any more: the member is in the JSON.
    status, _, answer = pipeline.request("GET", f"/v1/apps/{app_id}/eventstream")
    assert (status, orjson.loads(answer)) == (200, put)


def test_the_stream_of_an_unknown_app_is_not_found(pinpoint: Any) -> None:
    for call in (
        lambda: put_stream(pinpoint, "no-such-app"),
        lambda: pinpoint.get_event_stream(ApplicationId="no-such-app"),
        lambda: pinpoint.delete_event_stream(ApplicationId="no-such-app"),
    ):
        status, code, message = error_of(call)
        assert (status, code) == (404, "NotFoundException")
        assert message == "Application not found: no-such-app"


# Tags.


def test_tags_are_merged_removed_and_listed(pipeline: Pipeline, pinpoint: Any) -> None:
    created = pinpoint.create_app(CreateApplicationRequest={"Name": "tagged", "tags": {"a": "1"}})
    app_id, arn = created["ApplicationResponse"]["Id"], created["ApplicationResponse"]["Arn"]
    listed = pinpoint.list_tags_for_resource(ResourceArn=arn)
    assert listed["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert listed["TagsModel"] == {"tags": {"a": "1"}}

    tagged = pinpoint.tag_resource(ResourceArn=arn, TagsModel={"tags": {"b": "2", "a": "x", "ü/é": "ß"}})
    assert tagged["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert tags_of(pinpoint, arn) == {"a": "x", "b": "2", "ü/é": "ß"}
    # GetApp answers the new tags at once (the edge's app cache is told).
    assert pinpoint.get_app(ApplicationId=app_id)["ApplicationResponse"]["tags"] == tags_of(pinpoint, arn)

    untagged = pinpoint.untag_resource(ResourceArn=arn, TagKeys=["a", "never-there"])
    assert untagged["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert tags_of(pinpoint, arn) == {"b": "2", "ü/é": "ß"}
    # tagKeys as the query names it, each key its own parameter.
    query = urllib.parse.urlencode([("tagKeys", "b"), ("tagKeys", "ü/é")])
    status, _, body = pipeline.request("DELETE", f"/v1/tags/{urllib.parse.quote(arn, safe='')}?{query}")
    assert (status, body) == (204, b"")
    assert tags_of(pinpoint, arn) == {}
    assert pinpoint.get_app(ApplicationId=app_id)["ApplicationResponse"]["tags"] == {}


def test_tags_past_aws_rules_are_refused_and_change_nothing(pinpoint: Any, unvalidated: Any) -> None:
    tags = {f"k{i}": "v" for i in range(49)}
    created = pinpoint.create_app(CreateApplicationRequest={"Name": "full", "tags": tags})
    arn = created["ApplicationResponse"]["Arn"]
    cases = {
        "at most 50 tags per resource, not 51": {"k0": "again", "new-1": "v", "new-2": "v"},
        "the prefix 'aws:' is reserved": {"aws:createdBy": "me"},
        "a tag key must be 1-128 characters, not 129": {"k" * 129: "v"},
        "a tag value must be at most 256 characters, not 257": {"k": "v" * 257},
    }
    for rule, added in cases.items():
        status, code, message = error_of(unvalidated.tag_resource, ResourceArn=arn, TagsModel={"tags": added})
        assert (status, code) == (400, "BadRequestException"), rule
        assert rule in message, (rule, message)
    assert tags_of(pinpoint, arn) == tags
    # The 50th: accepted, a key of 128 characters and a value of 256 too.
    pinpoint.tag_resource(ResourceArn=arn, TagsModel={"tags": {"k" * 128: "v" * 256}})
    assert len(tags_of(pinpoint, arn)) == 50
    status, code, message = error_of(
        lambda: unvalidated.tag_resource(ResourceArn=arn, TagsModel={"tags": {"one-more": "v"}})
    )
    assert (status, code) == (400, "BadRequestException") and "at most 50 tags" in message


def test_a_tags_body_must_be_a_tags_model(pipeline: Pipeline, pinpoint: Any, app_id: str) -> None:
    path = f"/v1/tags/{urllib.parse.quote(arn_of(pinpoint, app_id), safe='')}"
    for body in ({}, {"tags": ["a"]}, {"tags": {"a": 1}}, ["tags"]):
        status, headers, answer = pipeline.request("POST", path, orjson.dumps(body))
        assert (status, headers["x-amzn-errortype"]) == (400, "BadRequestException"), body
        assert "tags" in orjson.loads(answer)["Message"].lower()


def test_the_app_an_arn_names_is_read_before_the_scope_check() -> None:
    assert app_of_arn("arn:aws:mobiletargeting:us-east-1:000000000000:apps/a1") == "a1"
    assert app_of_arn("arn:aws-cn:mobiletargeting:cn-north-1:000000000000:apps/a 1") == "a 1"
    for other in (
        "arn:aws:mobiletargeting:us-east-1:0:apps/a1/campaigns/c",
        "arn:aws:mobiletargeting:r:0:apps/",
    ):
        assert app_of_arn(other) is None, other
    assert app_of_arn(KINESIS) is None and app_of_arn("apps/a1") is None
    # The route's {app}, taken from the ARN segment as the router decodes it.
    route = Route("/v1/tags/{arn}", {}, derive=derive)
    arn = "arn:aws:mobiletargeting:us-east-1:000000000000:apps/a1"
    assert Router([route]).match(f"/v1/tags/{urllib.parse.quote(arn, safe='')}".encode()) == (
        route,
        {"arn": arn, "app": "a1"},
    )
    assert Router([route]).match(b"/v1/tags/not-an-arn") == (route, {"arn": "not-an-arn"})


def test_only_the_arns_of_this_deployments_apps_are_taggable(pinpoint: Any, app_id: str) -> None:
    arn = arn_of(pinpoint, app_id)
    missing = arn.replace(app_id, "no-such-app")
    elsewhere = [arn.replace(":us-east-1:", ":eu-west-1:"), arn.replace(":000000000000:", ":123456789012:")]
    for other in (missing, *elsewhere):
        for call, kwargs in (
            (pinpoint.list_tags_for_resource, {}),
            (pinpoint.tag_resource, {"TagsModel": {"tags": {"a": "b"}}}),
            (pinpoint.untag_resource, {"TagKeys": ["a"]}),
        ):
            status, code, message = error_of(call, ResourceArn=other, **kwargs)
            assert (status, code) == (404, "NotFoundException"), other
            assert message == f"Resource not found: {other}"
    for other in (f"{arn}/campaigns/c1", arn.replace(f"apps/{app_id}", "templates/t/EMAIL"), KINESIS, "x"):
        status, code, message = error_of(pinpoint.list_tags_for_resource, ResourceArn=other)
        assert (status, code) == (400, "BadRequestException"), other
        assert "arn:aws:mobiletargeting:REGION:ACCOUNT:apps/APP_ID" in message
    assert tags_of(pinpoint, arn) == {}


# Application settings.


def test_an_app_never_updated_answers_pinpoints_defaults(pinpoint: Any) -> None:
    app = pinpoint.create_app(CreateApplicationRequest={"Name": "defaults"})["ApplicationResponse"]
    got = pinpoint.get_application_settings(ApplicationId=app["Id"])
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert got["ApplicationSettingsResource"] == {
        "ApplicationId": app["Id"],
        "CampaignHook": {},
        "LastModifiedDate": app["CreationDate"],
        "Limits": {},
        "QuietTime": {},
    }


def test_settings_are_kept_as_sent_and_replaced_whole(pinpoint: Any, app_id: str) -> None:
    updated = pinpoint.update_application_settings(
        ApplicationId=app_id, WriteApplicationSettingsRequest=SETTINGS
    )
    assert updated["ResponseMetadata"]["HTTPStatusCode"] == 200
    resource = updated["ApplicationSettingsResource"]
    answered = {
        k: v for k, v in SETTINGS.items() if k not in ("CloudWatchMetricsEnabled", "EventTaggingEnabled")
    }
    assert resource == {"ApplicationId": app_id, "LastModifiedDate": resource["LastModifiedDate"], **answered}
    assert ISO_MS.fullmatch(resource["LastModifiedDate"])
    assert pinpoint.get_application_settings(ApplicationId=app_id)["ApplicationSettingsResource"] == resource

    # An update replaces the settings: what it leaves out is gone.
    again = pinpoint.update_application_settings(
        ApplicationId=app_id, WriteApplicationSettingsRequest={"QuietTime": {"Start": "23:59"}}
    )["ApplicationSettingsResource"]
    assert again == {
        "ApplicationId": app_id,
        "CampaignHook": {},
        "LastModifiedDate": again["LastModifiedDate"],
        "Limits": {},
        "QuietTime": {"Start": "23:59"},
    }
    assert again["LastModifiedDate"] >= resource["LastModifiedDate"]
    assert pinpoint.get_application_settings(ApplicationId=app_id)["ApplicationSettingsResource"] == again


def test_settings_out_of_the_model_are_refused(pipeline: Pipeline, pinpoint: Any, app_id: str) -> None:
    path = f"/v1/apps/{app_id}/settings"
    cases: dict[str, Any] = {
        "has no member 'Campaignhook'": {"Campaignhook": {}},
        "WriteApplicationSettingsRequest.Limits has no member 'Weekly'": {"Limits": {"Weekly": 1}},
        "TimeframeCap has no member 'Hours'": {"JourneyLimits": {"TimeframeCap": {"Hours": 1}}},
        "Limits.Daily must be a whole number of 0-2147483647": {"Limits": {"Daily": "42"}},
        "Limits.Total must be a whole number": {"Limits": {"Total": 2**31}},
        "Limits.Session must be a whole number": {"Limits": {"Session": 1.5}},
        "CampaignHook.Mode must be DELIVERY or FILTER": {"CampaignHook": {"Mode": "ALL"}},
        "CampaignHook.WebUrl must be a string of at most 2048": {"CampaignHook": {"WebUrl": "h" * 2049}},
        "CloudWatchMetricsEnabled must be true or false": {"CloudWatchMetricsEnabled": "true"},
        "QuietTime.Start must be a time of day in 24-hour HH:MM form": {"QuietTime": {"Start": "24:00"}},
        "QuietTime.End must be a time": {"QuietTime": {"End": "6:30"}},
        "WriteApplicationSettingsRequest.QuietTime must be a JSON object": {"QuietTime": "22:00-06:00"},
        "WriteApplicationSettingsRequest must be a JSON object": [],
    }
    for rule, body in cases.items():
        status, headers, answer = pipeline.request("PUT", path, orjson.dumps(body))
        assert (status, headers["x-amzn-errortype"]) == (400, "BadRequestException"), rule
        assert rule in orjson.loads(answer)["Message"], (rule, answer)
    # None of them was stored; a null member is one left out.
    status, _, answer = pipeline.request("PUT", path, orjson.dumps({"Limits": {"Daily": 3, "Total": None}}))
    assert status == 200, answer
    assert pinpoint.get_application_settings(ApplicationId=app_id)["ApplicationSettingsResource"][
        "Limits"
    ] == {"Daily": 3}


def test_the_settings_of_an_unknown_app_are_not_found(pinpoint: Any) -> None:
    for call in (
        lambda: pinpoint.get_application_settings(ApplicationId="no-such-app"),
        lambda: pinpoint.update_application_settings(
            ApplicationId="no-such-app", WriteApplicationSettingsRequest={}
        ),
    ):
        assert error_of(call) == (404, "NotFoundException", "Application not found: no-such-app")


def _model_members(model: Any) -> Any:
    """A botocore shape as WRITE_APPLICATION_SETTINGS writes one: structures
    as dicts of their members, leaves as their type name (or enum)."""
    if model.type_name == "structure":
        return {name: _model_members(member) for name, member in model.members.items()}
    enum = getattr(model, "enum", None)  # only a string shape has one
    return tuple(enum) if enum else model.type_name


def _our_members(shape: Shape | Callable[..., Any]) -> Any:
    if isinstance(shape, Mapping):
        return {name: _our_members(member) for name, member in shape.items()}
    leaf = shape.__name__.strip("_")
    return {"mode": ("DELIVERY", "FILTER"), "hh_mm": "string"}.get(leaf, leaf)


def test_the_settings_schema_is_botocores_model() -> None:
    model = botocore.session.get_session().get_service_model("pinpoint")
    expected = _model_members(model.shape_for("WriteApplicationSettingsRequest"))
    assert _our_members(WRITE_APPLICATION_SETTINGS) == expected


# Scopes.


@pytest.fixture(scope="module")
def two_apps(pinpoint: Any) -> tuple[tuple[str, str], tuple[str, str]]:
    """(app ID, ARN) of two apps: A, the keys' below, and B, no key's."""
    made = [
        pinpoint.create_app(CreateApplicationRequest={"Name": name})["ApplicationResponse"] for name in "AB"
    ]
    first, second = ((app["Id"], app["Arn"]) for app in made)
    return first, second


def code(call: Callable[[], Any]) -> str:
    """The error code a call answers, or "ok"."""
    try:
        call()
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "ok"


ALLOWED = {"ok", "NotFoundException"}  # a GetEventStream of an app without one is allowed
# The names alone (the calls are made with a client per test).
OPERATIONS = frozenset(resource_operations(None, "", ""))


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        ("admin", OPERATIONS),
        ("read", frozenset({"ListTagsForResource", "GetApplicationSettings"})),
        ("ingest", frozenset()),
    ],
)
def test_each_scope_reaches_exactly_its_operations_of_its_apps_only(
    pipeline: Pipeline, two_apps: tuple[tuple[str, str], tuple[str, str]], scope: str, allowed: frozenset[str]
) -> None:
    (mine, my_arn), (theirs, their_arn) = two_apps
    client = pipeline.client(pipeline.create_key(scope, mine))
    for name, call in resource_operations(client, mine, my_arn).items():
        got = code(call)
        assert (got in ALLOWED) if name in allowed else (got == "AccessDeniedException"), (scope, name, got)
    # Another app's stream, tags and settings are out of reach: no 404 says it exists.
    for name, call in resource_operations(client, theirs, their_arn).items():
        assert code(call) == "AccessDeniedException", (scope, name)
    # An ARN naming no app is no app of the key's either.
    assert code(lambda: client.list_tags_for_resource(ResourceArn=f"{my_arn}/campaigns/c")) == (
        "AccessDeniedException"
    )


# DeleteApp.


def test_delete_app_deletes_its_stream_and_settings(pipeline: Pipeline, pinpoint: Any) -> None:
    app_id = pinpoint.create_app(CreateApplicationRequest={"Name": "gone"})["ApplicationResponse"]["Id"]
    put_stream(pinpoint, app_id)
    pinpoint.update_application_settings(ApplicationId=app_id, WriteApplicationSettingsRequest=SETTINGS)
    pinpoint.delete_app(ApplicationId=app_id)
    for call in (
        lambda: pinpoint.get_event_stream(ApplicationId=app_id),
        lambda: pinpoint.get_application_settings(ApplicationId=app_id),
    ):
        assert error_of(call)[:2] == (404, "NotFoundException")
    # In the store itself, not just behind the missing app.
    with sqlite3.connect(f"file:{pipeline.data_dir / 'ingest.sqlite3'}?mode=ro", uri=True) as db:
        for table in ("event_streams", "application_settings"):
            (rows,) = db.execute(f"SELECT count(*) FROM {table} WHERE app_id = ?", (app_id,)).fetchone()
            assert rows == 0, table
