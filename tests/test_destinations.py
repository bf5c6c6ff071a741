"""Where an event stream may point: the three ARN forms, AWS's name rules,
nothing a client sends reaching a host name or an internal topic, and the
accounts a deployment allows."""

from __future__ import annotations

import pytest

from ingest.api.eventstreams import write_event_stream
from ingest.errors import BadRequest, SettingsError
from ingest.settings import Settings
from ingest.streams.destinations import (
    DestinationError,
    check_accounts,
    check_external_id,
    check_role,
    parse,
)

ROLE = "arn:aws:iam::123456789012:role/service-role/pinpoint-events"


@pytest.mark.parametrize(
    ("arn", "kind", "name"),
    [
        ("arn:aws:kinesis:us-east-1:123456789012:stream/app-events", "kinesis", "app-events"),
        ("arn:aws:firehose:eu-west-2:123456789012:deliverystream/to_s3.v1", "firehose", "to_s3.v1"),
        ("arn:aws:kafka:us-east-1:123456789012:topic/main/abcd-1234-ef/events.app1", "kafka", "events.app1"),
        ("arn:aws-cn:kinesis:cn-north-1:123456789012:stream/s", "kinesis", "s"),
        ("arn:aws-us-gov:firehose:us-gov-west-1:123456789012:deliverystream/d", "firehose", "d"),
    ],
)
def test_each_form_parses_to_its_kind_and_name(arn: str, kind: str, name: str) -> None:
    destination = parse(arn)
    assert (destination.kind, destination.name, destination.arn) == (kind, name, arn)
    assert destination.account == "123456789012"


@pytest.mark.parametrize(
    "arn",
    [
        "",
        "arn:aws:s3:::bucket",
        "arn:aws:kinesis:us-east-1:123456789012:stream/",
        "arn:aws:kinesis:us-east-1:12345678901:stream/short-account",
        "arn:aws:kinesis:us-east-1:١٢٣٤٥٦٧٨٩٠١٢:stream/arabic-indic-digits",
        "arn:aws:kinesis:us-east-1.attacker.example:123456789012:stream/s",
        "arn:aws:kinesis:us-east-1/x:123456789012:stream/s",
        "arn:aws:kinesis:US-EAST-1:123456789012:stream/s",
        "arn:aws:kinesis:us-east-1:123456789012:stream/has space",
        "arn:aws:kinesis:us-east-1:123456789012:stream/" + "s" * 129,
        "arn:aws:firehose:us-east-1:123456789012:deliverystream/" + "d" * 65,
        "arn:aws:kinesis:us-east-1:123456789012:stream/s\n",
        "arn:aws:kafka:us-east-1:123456789012:topic/cluster/uuid",
        "arn:evil:kinesis:us-east-1:123456789012:stream/s",
    ],
)
def test_anything_else_is_refused_naming_the_forms(arn: str) -> None:
    with pytest.raises(DestinationError, match="must be one of"):
        parse(arn)


@pytest.mark.parametrize(
    "topic", ["ingest.events", "ingest.endpoints", "ingest.deadletter", "__consumer_offsets"]
)
def test_the_pipelines_own_topics_are_refused(topic: str) -> None:
    with pytest.raises(DestinationError, match="pipeline's own"):
        parse(f"arn:aws:kafka:us-east-1:123456789012:topic/c/u-1/{topic}")


def test_roles_and_external_ids_follow_iam_and_sts() -> None:
    check_role(ROLE)
    for bad in ("arn:aws:iam::123456789012:user/alice", "arn:aws:iam::123:role/r", "role", ROLE + " "):
        with pytest.raises(DestinationError, match="IAM role ARN"):
            check_role(bad)
    check_external_id("123456789012")
    for bad in ("x", "has space", "x" * 1225):
        with pytest.raises(DestinationError, match="ExternalId"):
            check_external_id(bad)


def test_allowed_accounts_hold_aws_destinations_and_their_roles() -> None:
    allowed = frozenset({"123456789012"})
    mine = parse("arn:aws:kinesis:us-east-1:123456789012:stream/s")
    theirs = parse("arn:aws:kinesis:us-east-1:210987654321:stream/s")
    check_accounts(mine, ROLE, allowed)
    check_accounts(theirs, "arn:aws:iam::210987654321:role/r", frozenset())  # empty: any
    with pytest.raises(DestinationError, match="DestinationStreamArn names account 210987654321"):
        check_accounts(theirs, ROLE, allowed)
    with pytest.raises(DestinationError, match="RoleArn names account 210987654321"):
        check_accounts(mine, "arn:aws:iam::210987654321:role/r", allowed)
    # A Kafka topic is the pipeline's own, whatever account its ARN says.
    check_accounts(parse("arn:aws:kafka:us-east-1:210987654321:topic/c/u/t"), ROLE, allowed)


def test_put_event_stream_refuses_an_account_the_deployment_leaves_out() -> None:
    settings = Settings.from_env({"INGEST_STREAM_ALLOWED_ACCOUNTS": "123456789012, 111122223333"})
    assert settings.stream_accounts == {"123456789012", "111122223333"}
    body = {"DestinationStreamArn": "arn:aws:kinesis:us-east-1:999999999999:stream/s", "RoleArn": ROLE}
    with pytest.raises(BadRequest, match="INGEST_STREAM_ALLOWED_ACCOUNTS"):
        write_event_stream(body, settings.stream_accounts)
    assert write_event_stream(body)[0] == body["DestinationStreamArn"]
    with pytest.raises(SettingsError, match="INGEST_STREAM_ALLOWED_ACCOUNTS"):
        Settings.from_env({"INGEST_STREAM_ALLOWED_ACCOUNTS": "12345"})
