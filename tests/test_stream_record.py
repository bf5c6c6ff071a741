"""schemas/event-stream.schema.json: the event-stream record, held exactly.

The schema is valid Draft 2020-12, accepts the record of a full event, and
refuses that record with a key renamed, a value of the wrong type or a key
missing: a consumer's table or parser built from it breaks on no record of
ours, and a change to the record's shape fails here first.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from ingest.records.codec import schema_dir

SCHEMA = json.loads((schema_dir() / "event-stream.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

START_MS = 1795168800000
SENT_MS = START_MS + 250
RECEIVED_MS = START_MS + 1_000

# Written in the record's endpoint as they were sent.
DEMOGRAPHIC = {
    "AppVersion": "2.5",
    "Locale": "en-us",
    "Make": "Apple",
    "Model": "iPhone",
    "ModelVersion": "15,2",
    "Platform": "ios",
    "PlatformVersion": "17.1",
    "Timezone": "Europe/Oslo",
}
LOCATION = {"City": "Oslo", "Country": "NO", "Latitude": 59.9, "Longitude": 10.7}

# The record of a full _session.start event.
GOLDEN_RECORD: dict[str, Any] = {
    "event_type": "_session.start",
    "event_timestamp": SENT_MS,
    "arrival_timestamp": RECEIVED_MS,
    "event_version": "3.0",
    "application": {
        "app_id": "app-1",
        "package_name": "com.example.app",
        "sdk": {"name": "aws-amplify", "version": "6.0.0"},
        "title": "Example",
        "version_name": "2.5",
        "version_code": "25",
    },
    "client": {"client_id": "ep-1"},
    "device": {
        "locale": {"code": "en-us", "country": "US", "language": "en"},
        "make": "Apple",
        "model": "iPhone",
        "platform": {"name": "ios", "version": "17.1"},
    },
    "session": {"session_id": "session-1", "start_timestamp": START_MS},
    "attributes": {"screen": "home"},
    "metrics": {"price": 9.99, "count": 3.0},
    "endpoint": {
        "Id": "ep-1",
        "ChannelType": "APNS",
        "Demographic": DEMOGRAPHIC,
        "Location": LOCATION,
        "User": {"UserId": "user-1"},
    },
    "ingest": {"event_id": "ev-1", "request_id": "req-1"},
}


# --- the schema ------------------------------------------------------------------


def test_the_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _changed(record: dict[str, Any], path: tuple[str, ...], *, rename: str = "", value: Any = None) -> Any:
    """A deep copy of ``record`` with the key at ``path`` renamed, or its value replaced."""
    changed = json.loads(json.dumps(record))
    *parents, last = path
    target = changed
    for key in parents:
        target = target[key]
    if rename:
        target[rename] = target.pop(last)
    else:
        target[last] = value
    return changed


@pytest.mark.parametrize(
    ("path", "new"),
    [
        (("event_timestamp",), "event_time"),
        (("application", "app_id"), "appId"),
        (("application", "sdk", "name"), "sdk_name"),
        (("client", "client_id"), "clientId"),
        (("device", "locale", "code"), "locale_code"),
        (("device", "platform", "name"), "os"),
        (("session", "session_id"), "id"),
        (("endpoint", "Demographic", "AppVersion"), "app_version"),
        (("endpoint", "Location", "PostalCode"), "Zip"),
        (("ingest", "event_id"), "eventId"),
    ],
)
def test_the_schema_refuses_a_record_with_a_renamed_key(path: tuple[str, ...], new: str) -> None:
    record = {**GOLDEN_RECORD}
    record["endpoint"] = {**GOLDEN_RECORD["endpoint"], "Location": {"PostalCode": "0150"}}
    VALIDATOR.validate(record)
    assert not VALIDATOR.is_valid(_changed(record, path, rename=new))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("event_timestamp",), 1.5),
        (("event_timestamp",), "1795168800250"),
        (("session", "start_timestamp"), None),
        (("application", "version_code"), 25),
        (("attributes", "screen"), 1),
        (("metrics", "price"), "9.99"),
        (("metrics", "price"), None),
        (("event_version",), "3.1"),
        (("device", "locale", "country"), "us"),
        (("endpoint", "ChannelType"), "PIGEON"),
    ],
)
def test_the_schema_refuses_a_value_of_the_wrong_type(path: tuple[str, ...], value: Any) -> None:
    assert not VALIDATOR.is_valid(_changed(GOLDEN_RECORD, path, value=value))


@pytest.mark.parametrize("key", sorted(SCHEMA["required"]))
def test_the_schema_requires_every_top_level_key(key: str) -> None:
    record = {name: value for name, value in GOLDEN_RECORD.items() if name != key}
    assert not VALIDATOR.is_valid(record)
