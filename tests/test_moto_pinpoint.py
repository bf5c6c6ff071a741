"""moto's own Pinpoint tests, run against our pipeline instead of moto's mock.

Ported from getmoto/moto (Apache License 2.0), ``tests/test_pinpoint/``
at commit 0af643a5d: ``test_pinpoint.py`` (apps and application settings),
``test_pinpoint_application_tags.py`` and ``test_pinpoint_event_stream.py``,
every test of the three files. The ``@mock_aws`` decorators are gone; each
``boto3.client("pinpoint", region_name=R)`` is our pipeline's client signing
for the same region R (our app ARNs take the region of the request, as
Pinpoint's do). What else had to change is marked ``# ingest:`` where it
is, and is one of:

* moto's mock starts empty for every test, the shared pipeline does not: the
  two GetApps tests run on a pipeline of their own;
* our NotFoundException messages name what is missing after moto's words
  ("Application not found: ID", "Resource not found: …");
* moto takes any string as a stream or role ARN; we take only the ARN forms
  Pinpoint does (ingest.streams.destinations), so the tests send real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Pipeline, start_pipeline

# ingest: moto's "kinesis:arn" and "iam:arn" are no ARNs Pinpoint takes.
STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/moto"
ROLE_ARN = "arn:aws:iam::123456789012:role/moto"


@pytest.fixture
def empty(tmp_path: Path) -> Iterator[Pipeline]:
    """ingest: a deployment with no apps yet, as moto's mock is at each test's start."""
    started = start_pipeline(tmp_path)
    yield started
    assert started.stop() == 0, started.log()


# test_pinpoint.py


def test_create_app(pipeline: Pipeline) -> None:
    client = pipeline.client(region="us-east-1")
    resp = client.create_app(CreateApplicationRequest={"Name": "myfirstapp"})

    assert "ApplicationResponse" in resp
    assert "Arn" in resp["ApplicationResponse"]
    assert "us-east-1" in resp["ApplicationResponse"]["Arn"]
    assert "Id" in resp["ApplicationResponse"]
    assert resp["ApplicationResponse"]["Name"] == "myfirstapp"
    assert "CreationDate" in resp["ApplicationResponse"]


def test_delete_app(pipeline: Pipeline) -> None:
    client = pipeline.client(region="ap-southeast-1")
    creation = client.create_app(CreateApplicationRequest={"Name": "myfirstapp"})["ApplicationResponse"]
    app_id = creation["Id"]

    deletion = client.delete_app(ApplicationId=app_id)["ApplicationResponse"]
    assert deletion == creation

    with pytest.raises(ClientError) as exc:
        client.get_app(ApplicationId=app_id)
    err = exc.value.response["Error"]
    assert err["Code"] == "NotFoundException"
    # ingest: moto's message, then the app ID.
    assert err["Message"] == f"Application not found: {app_id}"


def test_get_app(pipeline: Pipeline) -> None:
    client = pipeline.client(region="eu-west-1")
    resp = client.create_app(CreateApplicationRequest={"Name": "myfirstapp"})
    app_id = resp["ApplicationResponse"]["Id"]

    resp = client.get_app(ApplicationId=app_id)

    assert "ApplicationResponse" in resp
    assert "Arn" in resp["ApplicationResponse"]
    assert "eu-west-1" in resp["ApplicationResponse"]["Arn"]
    assert "Id" in resp["ApplicationResponse"]
    assert resp["ApplicationResponse"]["Name"] == "myfirstapp"
    assert "CreationDate" in resp["ApplicationResponse"]


def test_get_apps_initial(empty: Pipeline) -> None:
    client = empty.client(region="us-east-1")
    resp = client.get_apps()

    assert "ApplicationsResponse" in resp
    assert resp["ApplicationsResponse"] == {"Item": []}


def test_get_apps(empty: Pipeline) -> None:
    client = empty.client(region="us-east-1")
    resp = client.create_app(CreateApplicationRequest={"Name": "myfirstapp"})
    app_id = resp["ApplicationResponse"]["Id"]

    resp = client.get_apps()

    assert len(resp["ApplicationsResponse"]["Item"]) == 1
    assert "Arn" in resp["ApplicationsResponse"]["Item"][0]
    assert resp["ApplicationsResponse"]["Item"][0]["Id"] == app_id
    assert resp["ApplicationsResponse"]["Item"][0]["Name"] == "myfirstapp"
    assert "CreationDate" in resp["ApplicationsResponse"]["Item"][0]


def test_update_application_settings(pipeline: Pipeline) -> None:
    client = pipeline.client(region="eu-west-1")
    resp = client.create_app(CreateApplicationRequest={"Name": "myfirstapp"})
    app_id = resp["ApplicationResponse"]["Id"]

    resp = client.update_application_settings(
        ApplicationId=app_id,
        WriteApplicationSettingsRequest={
            "CampaignHook": {"LambdaFunctionName": "lfn"},
            "CloudWatchMetricsEnabled": True,
            "EventTaggingEnabled": True,
            "Limits": {"Daily": 42},
        },
    )

    assert "ApplicationSettingsResource" in resp
    app_settings = resp["ApplicationSettingsResource"]
    assert app_settings["ApplicationId"] == app_id
    assert app_settings["CampaignHook"] == {"LambdaFunctionName": "lfn"}
    assert app_settings["Limits"] == {"Daily": 42}
    assert "LastModifiedDate" in app_settings


def test_get_application_settings(pipeline: Pipeline) -> None:
    client = pipeline.client(region="ap-southeast-1")
    resp = client.create_app(CreateApplicationRequest={"Name": "myfirstapp"})
    app_id = resp["ApplicationResponse"]["Id"]

    client.update_application_settings(
        ApplicationId=app_id,
        WriteApplicationSettingsRequest={
            "CampaignHook": {"LambdaFunctionName": "lfn"},
            "CloudWatchMetricsEnabled": True,
            "EventTaggingEnabled": True,
            "Limits": {"Daily": 42},
        },
    )

    resp = client.get_application_settings(ApplicationId=app_id)

    assert "ApplicationSettingsResource" in resp
    app_settings = resp["ApplicationSettingsResource"]
    assert app_settings["ApplicationId"] == app_id
    assert app_settings["CampaignHook"] == {"LambdaFunctionName": "lfn"}
    assert app_settings["Limits"] == {"Daily": 42}
    assert "LastModifiedDate" in app_settings


# test_pinpoint_application_tags.py


def test_list_tags_for_resource_empty(pipeline: Pipeline) -> None:
    client = pipeline.client(region="ap-southeast-1")
    resp = client.create_app(CreateApplicationRequest={"Name": "myfirstapp"})
    app_arn = resp["ApplicationResponse"]["Arn"]

    resp = client.list_tags_for_resource(ResourceArn=app_arn)
    assert resp["TagsModel"] == {"tags": {}}


def test_list_tags_for_resource(pipeline: Pipeline) -> None:
    client = pipeline.client(region="ap-southeast-1")
    resp = client.create_app(
        CreateApplicationRequest={
            "Name": "myfirstapp",
            "tags": {"key1": "value1", "key2": "value2"},
        }
    )
    app_arn = resp["ApplicationResponse"]["Arn"]

    resp = client.list_tags_for_resource(ResourceArn=app_arn)
    assert "TagsModel" in resp
    assert resp["TagsModel"]["tags"] == {"key1": "value1", "key2": "value2"}


def test_tag_resource(pipeline: Pipeline) -> None:
    client = pipeline.client(region="us-east-1")
    resp = client.create_app(CreateApplicationRequest={"Name": "myfirstapp"})
    app_arn = resp["ApplicationResponse"]["Arn"]

    client.tag_resource(ResourceArn=app_arn, TagsModel={"tags": {"key1": "value1", "key2": "value2"}})

    resp = client.list_tags_for_resource(ResourceArn=app_arn)
    assert "TagsModel" in resp
    assert resp["TagsModel"]["tags"] == {"key1": "value1", "key2": "value2"}


def test_untag_resource(pipeline: Pipeline) -> None:
    client = pipeline.client(region="eu-west-1")
    resp = client.create_app(CreateApplicationRequest={"Name": "myfirstapp", "tags": {"key1": "value1"}})
    app_arn = resp["ApplicationResponse"]["Arn"]

    client.tag_resource(ResourceArn=app_arn, TagsModel={"tags": {"key2": "value2", "key3": "value3"}})

    client.untag_resource(ResourceArn=app_arn, TagKeys=["key2"])

    resp = client.list_tags_for_resource(ResourceArn=app_arn)
    assert "TagsModel" in resp
    assert resp["TagsModel"]["tags"] == {"key1": "value1", "key3": "value3"}


# test_pinpoint_event_stream.py


def test_put_event_stream(pipeline: Pipeline) -> None:
    client = pipeline.client(region="eu-west-1")
    resp = client.create_app(CreateApplicationRequest={"Name": "myfirstapp"})
    app_id = resp["ApplicationResponse"]["Id"]

    resp = client.put_event_stream(
        ApplicationId=app_id,
        WriteEventStream={"DestinationStreamArn": STREAM_ARN, "RoleArn": ROLE_ARN},
    )

    assert "EventStream" in resp
    assert resp["EventStream"]["ApplicationId"] == app_id
    assert resp["EventStream"]["DestinationStreamArn"] == STREAM_ARN
    assert "LastModifiedDate" in resp["EventStream"]
    assert resp["EventStream"]["RoleArn"] == ROLE_ARN


def test_get_event_stream(pipeline: Pipeline) -> None:
    client = pipeline.client(region="us-east-1")
    resp = client.create_app(CreateApplicationRequest={"Name": "myfirstapp"})
    app_id = resp["ApplicationResponse"]["Id"]

    client.put_event_stream(
        ApplicationId=app_id,
        WriteEventStream={"DestinationStreamArn": STREAM_ARN, "RoleArn": ROLE_ARN},
    )

    resp = client.get_event_stream(ApplicationId=app_id)

    assert "EventStream" in resp
    assert resp["EventStream"]["ApplicationId"] == app_id
    assert resp["EventStream"]["DestinationStreamArn"] == STREAM_ARN
    assert "LastModifiedDate" in resp["EventStream"]
    assert resp["EventStream"]["RoleArn"] == ROLE_ARN


def test_delete_event_stream(pipeline: Pipeline) -> None:
    client = pipeline.client(region="us-east-1")
    resp = client.create_app(CreateApplicationRequest={"Name": "myfirstapp"})
    app_id = resp["ApplicationResponse"]["Id"]

    client.put_event_stream(
        ApplicationId=app_id,
        WriteEventStream={"DestinationStreamArn": STREAM_ARN, "RoleArn": ROLE_ARN},
    )

    resp = client.delete_event_stream(ApplicationId=app_id)

    assert "EventStream" in resp
    assert resp["EventStream"]["ApplicationId"] == app_id
    assert resp["EventStream"]["DestinationStreamArn"] == STREAM_ARN
    assert "LastModifiedDate" in resp["EventStream"]
    assert resp["EventStream"]["RoleArn"] == ROLE_ARN

    with pytest.raises(ClientError) as exc:
        client.get_event_stream(ApplicationId=app_id)
    err = exc.value.response["Error"]
    assert err["Code"] == "NotFoundException"
    # ingest: moto's message, then which resource.
    assert err["Message"].startswith("Resource not found")
