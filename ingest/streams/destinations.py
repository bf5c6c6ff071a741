"""Where an event stream may point: the three ARN forms PutEventStream takes.

* ``arn:aws:kinesis:REGION:ACCOUNT:stream/NAME``: a Kinesis data stream;
* ``arn:aws:firehose:REGION:ACCOUNT:deliverystream/NAME``: a Firehose
  delivery stream;
* ``arn:aws:kafka:REGION:ACCOUNT:topic/CLUSTER/UUID/TOPIC``: MSK's topic ARN
  form, naming the topic ``TOPIC`` on the pipeline's own Kafka cluster.

Each part is held to AWS's own rules (a region's shape, a 12-digit account,
each service's name pattern), so nothing a client sends becomes part of a
host name or an unexpected topic: the region picks the AWS endpoint, and the
pipeline's internal topics (``ingest.*``) and Kafka's (``__*``) are refused.
Pure: strings in, a :class:`Destination` or :class:`DestinationError` out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ingest.errors import IngestError

Kind = Literal["kinesis", "firehose", "kafka"]

FORMS = (
    "arn:aws:kinesis:REGION:ACCOUNT:stream/NAME",
    "arn:aws:firehose:REGION:ACCOUNT:deliverystream/NAME",
    "arn:aws:kafka:REGION:ACCOUNT:topic/CLUSTER/UUID/TOPIC",
)
# AWS's partitions (aws, aws-cn, aws-us-gov) and region shape (us-east-1,
# ap-southeast-4, us-gov-west-1, cn-north-1).
_PARTITION = r"aws(?:-cn|-us-gov)?"
_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}"
_ACCOUNT = r"\d{12}"
# Kinesis StreamName: [a-zA-Z0-9_.-]{1,128}; Firehose DeliveryStreamName:
# [a-zA-Z0-9_.-]{1,64}; an MSK cluster name [0-9A-Za-z-]{1,64} (its
# letters first), its UUID part a UUID with a suffix; a Kafka topic name
# [a-zA-Z0-9._-]{1,249}.
_PATTERNS: dict[Kind, re.Pattern[str]] = {
    "kinesis": re.compile(
        rf"arn:(?P<partition>{_PARTITION}):kinesis:(?P<region>{_REGION}):(?P<account>{_ACCOUNT})"
        r":stream/(?P<name>[a-zA-Z0-9_.-]{1,128})",
        re.ASCII,
    ),
    "firehose": re.compile(
        rf"arn:(?P<partition>{_PARTITION}):firehose:(?P<region>{_REGION}):(?P<account>{_ACCOUNT})"
        r":deliverystream/(?P<name>[a-zA-Z0-9_.-]{1,64})",
        re.ASCII,
    ),
    "kafka": re.compile(
        rf"arn:(?P<partition>{_PARTITION}):kafka:(?P<region>{_REGION}):(?P<account>{_ACCOUNT})"
        r":topic/[0-9A-Za-z][0-9A-Za-z-]{0,63}/[0-9A-Za-z-]{1,64}/(?P<name>[a-zA-Z0-9._-]{1,249})",
        re.ASCII,
    ),
}
MAX_ARN_CHARS = 2048
# (ASCII: ``\d`` would otherwise take any script's digits.)
# Topics of the pipeline itself and of Kafka: a stream must never write into them.
RESERVED_TOPIC_PREFIXES = ("ingest.", "__")
# IAM's role ARN: arn:PARTITION:iam::ACCOUNT:role/PATH/NAME (path and name of
# [\w+=,.@-], the whole at most 2048 characters as the model allows).
_ROLE = re.compile(rf"arn:{_PARTITION}:iam::{_ACCOUNT}:role/[\w+=,.@/-]{{1,512}}", re.ASCII)
# STS AssumeRole's ExternalId: 2-1224 characters of [\w+=,.@:/-].
_EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}", re.ASCII)


class DestinationError(IngestError):
    """An ARN (or role ARN, or external ID) of none of the accepted forms;
    the message says which forms are."""


@dataclass(frozen=True, slots=True)
class Destination:
    """A parsed DestinationStreamArn."""

    arn: str
    kind: Kind
    partition: str
    region: str
    account: str
    name: str
    """The stream, delivery stream or topic name."""


def parse(arn: str) -> Destination:
    """The destination ``arn`` names, or DestinationError naming the forms."""
    if len(arn) <= MAX_ARN_CHARS:
        for kind, pattern in _PATTERNS.items():
            found = pattern.fullmatch(arn)
            if found is None:
                continue
            name = found["name"]
            if kind == "kafka" and (name.startswith(RESERVED_TOPIC_PREFIXES) or name in (".", "..")):
                raise DestinationError(
                    f"DestinationStreamArn names the topic {name!r}, which is the pipeline's own; "
                    f"a stream's topic must not start with {' or '.join(RESERVED_TOPIC_PREFIXES)}"
                )
            return Destination(
                arn=arn,
                kind=kind,
                partition=found["partition"],
                region=found["region"],
                account=found["account"],
                name=name,
            )
    raise DestinationError("DestinationStreamArn must be one of: " + "; ".join(FORMS))


def check_role(role_arn: str) -> None:
    """DestinationError unless ``role_arn`` is an IAM role ARN."""
    if len(role_arn) > MAX_ARN_CHARS or _ROLE.fullmatch(role_arn) is None:
        raise DestinationError("RoleArn must be an IAM role ARN: arn:aws:iam::ACCOUNT:role/NAME")


def check_external_id(external_id: str) -> None:
    """DestinationError unless ``external_id`` is one STS AssumeRole takes."""
    if _EXTERNAL_ID.fullmatch(external_id) is None:
        raise DestinationError("ExternalId must be 2-1224 characters of letters, digits and +=,.@:/-")


def check_accounts(destination: Destination, role_arn: str, allowed: frozenset[str]) -> None:
    """DestinationError unless an AWS destination and its role are in the
    ``allowed`` accounts (empty: any). A Kafka topic is the pipeline's own,
    whatever account its ARN names."""
    if not allowed or destination.kind == "kafka":
        return
    role_account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else ""
    for what, account in (("DestinationStreamArn", destination.account), ("RoleArn", role_account)):
        if account not in allowed:
            raise DestinationError(
                f"{what} names account {account}, which this deployment does not stream to "
                "(INGEST_STREAM_ALLOWED_ACCOUNTS)"
            )
