"""ingest.streams.record: an accepted event as Pinpoint's app-event JSON.

Field by field on a golden event and on Pinpoint's documented example; for
any event the validator accepts, a record that never raises, encodes to the
same JSON and holds to ``schemas/event-stream.schema.json``; and the same
record after the event's trip through Avro, as the worker will see it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import hypothesis
import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.records import validate
from ingest.records.codec import MAX_MS, MIN_MS, Codec, schema_dir
from ingest.records.values import DEMOGRAPHIC_MEMBERS, Event, Session
from ingest.streams.record import EVENT_VERSION, SCHEMA_FILE, encode, stream_record
from tests.test_codec import events as any_events
from tests.test_validate import batch_items, body_sizes, good_timestamps

SLOW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODEC = Codec()
SCHEMA = json.loads((schema_dir() / SCHEMA_FILE).read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

START = "2026-11-20T10:00:00.000Z"
START_MS = 1795168800000
SENT = "2026-11-20T10:00:00.250Z"
SENT_MS = START_MS + 250
RECEIVED_MS = START_MS + 1_000


def put(
    body: dict[str, Any], *, body_bytes: int = 0, app_id: str = "app-1", received_at_ms: int = RECEIVED_MS
) -> list[tuple[str, Event]]:
    """The (event ID, Event) pairs the validator accepts from a PutEvents body."""
    batches = validate.put_events(
        body, app_id=app_id, request_id="req-1", received_at_ms=received_at_ms, body_bytes=body_bytes
    )
    return [(event_id, e) for batch in batches for event_id, e in batch.events if isinstance(e, Event)]


def one(endpoint: dict[str, Any], event: dict[str, Any]) -> Event:
    [(_, accepted)] = put({"BatchItem": {"ep-1": {"Endpoint": endpoint, "Events": {"ev-1": event}}}})
    return accepted


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, value) of a JSON value, containers included."""
    yield path, value
    if type(value) is dict:
        for key, item in value.items():
            yield from walk(item, f"{path}.{key}")


def assert_record(event: Event) -> dict[str, Any]:
    """What holds for every record: it builds, its JSON is itself, it fits the
    schema, it carries no null and its times are integers."""
    record = stream_record(event)
    encoded = encode(event)
    assert orjson.loads(encoded) == record
    assert not encoded.endswith(b"\n")
    VALIDATOR.validate(record)
    for path, value in walk(record):
        assert value is not None, path
        if path.endswith("_timestamp"):
            assert type(value) is int, path
    return record


# --- field by field -------------------------------------------------------------

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

# A PutEvents body as Amplify JS sends it for _session.start (Session with
# Id and StartTimestamp, Attributes, Metrics), with the Endpoint and app
# members an app that sets them all sends beside it.
GOLDEN_BODY = {
    "BatchItem": {
        "ep-1": {
            "Endpoint": {
                "ChannelType": "APNS",
                "Address": "device-token-1",
                "Demographic": DEMOGRAPHIC,
                "Location": LOCATION,
                "User": {"UserId": "user-1", "UserAttributes": {"plan": ["pro"]}},
                "Attributes": {"interests": ["a"]},
            },
            "Events": {
                "ev-1": {
                    "EventType": "_session.start",
                    "Timestamp": SENT,
                    "Session": {"Id": "session-1", "StartTimestamp": START},
                    "Attributes": {"screen": "home"},
                    "Metrics": {"price": 9.99, "count": 3},
                    "AppPackageName": "com.example.app",
                    "AppTitle": "Example",
                    "AppVersionCode": "25",
                    "ClientSdkVersion": "6.0.0",
                    "SdkName": "aws-amplify",
                }
            },
        }
    }
}

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


def test_a_full_session_start_maps_field_by_field() -> None:
    [(_, event)] = put(GOLDEN_BODY)
    assert assert_record(event) == GOLDEN_RECORD
    assert encode(event) == orjson.dumps(GOLDEN_RECORD)


def test_what_was_not_sent_is_left_out_but_the_objects_pinpoint_always_writes() -> None:
    """Amplify JS's own PutEvents: an empty Endpoint (the device is described
    by UpdateEndpoint), no app members, a custom event without a session."""
    record = assert_record(one({}, {"EventType": "checkout", "Timestamp": SENT}))
    assert record == {
        "event_type": "checkout",
        "event_timestamp": SENT_MS,
        "arrival_timestamp": RECEIVED_MS,
        "event_version": EVENT_VERSION,
        "application": {"app_id": "app-1", "sdk": {}},
        "client": {"client_id": "ep-1"},
        "device": {"platform": {}},
        "session": {},
        "attributes": {},
        "metrics": {},
        "endpoint": {"Id": "ep-1"},
        "ingest": {"event_id": "ev-1", "request_id": "req-1"},
    }


def test_an_event_whose_endpoint_was_refused_carries_only_the_endpoint_id() -> None:
    event = one({"ChannelType": "PIGEON"}, {"EventType": "x", "Timestamp": SENT})
    assert event.endpoint is None
    record = assert_record(event)
    assert (record["endpoint"], record["device"]) == ({"Id": "ep-1"}, {"platform": {}})


def test_members_sent_empty_are_written_empty() -> None:
    endpoint = {"ChannelType": "GCM", "Demographic": {}, "Location": {}, "User": {"UserId": ""}}
    record = assert_record(one(endpoint, {"EventType": "x", "Timestamp": SENT, "Attributes": {}}))
    assert record["endpoint"] == {
        "Id": "ep-1",
        "ChannelType": "GCM",
        "Demographic": {},
        "Location": {},
        "User": {"UserId": ""},
    }
    assert record["device"] == {"platform": {}}


def test_pinpoints_documented_app_event_is_what_we_write_for_the_same_event() -> None:
    """The example of "App event data stream from Amazon Pinpoint"
    (developer guide, event-streams-data-app), sent to us as PutEvents: the
    same record but for the two Cognito IDs, which we cannot know, and our
    ``endpoint`` and ``ingest``."""
    documented: dict[str, Any] = {
        "event_type": "_session.stop",
        "event_timestamp": 1487973802507,
        "arrival_timestamp": 1487973803515,
        "event_version": "3.0",
        "application": {
            "app_id": "a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6",
            "cognito_identity_pool_id": "us-east-1:a1b2c3d4-e5f6-g7h8-i9j0-k1l2m3n4o5p6",
            "package_name": "main.page",
            "sdk": {"name": "aws-sdk-mobile-analytics-js", "version": "0.9.1:2.4.8"},
            "title": "title",
            "version_name": "1.0",
            "version_code": "1",
        },
        "client": {
            "client_id": "m3n4o5p6-a1b2-c3d4-e5f6-g7h8i9j0k1l2",
            "cognito_id": "us-east-1:i9j0k1l2-m3n4-o5p6-a1b2-c3d4e5f6g7h8",
        },
        "device": {
            "locale": {"code": "en_US", "country": "US", "language": "en"},
            "make": "generic web browser",
            "model": "Unknown",
            "platform": {"name": "android", "version": "10.10"},
        },
        "session": {
            "session_id": "f549dea9-1090-945d-c3d1-e4967example",
            "start_timestamp": 1487973202531,
            "stop_timestamp": 1487973802507,
        },
        "attributes": {},
        "metrics": {},
    }
    client_id = documented["client"]["client_id"]
    body = {
        "BatchItem": {
            client_id: {
                "Endpoint": {
                    "Demographic": {
                        "AppVersion": "1.0",
                        "Locale": "en_US",
                        "Make": "generic web browser",
                        "Model": "Unknown",
                        "Platform": "android",
                        "PlatformVersion": "10.10",
                    }
                },
                "Events": {
                    "ev-1": {
                        "EventType": "_session.stop",
                        "Timestamp": "2017-02-24T22:03:22.507Z",
                        "Session": {
                            "Id": "f549dea9-1090-945d-c3d1-e4967example",
                            "StartTimestamp": "2017-02-24T21:53:22.531Z",
                            "StopTimestamp": "2017-02-24T22:03:22.507Z",
                            "Duration": 599976,
                        },
                        "AppPackageName": "main.page",
                        "AppTitle": "title",
                        "AppVersionCode": "1",
                        "ClientSdkVersion": "0.9.1:2.4.8",
                        "SdkName": "aws-sdk-mobile-analytics-js",
                    }
                },
            }
        }
    }
    [(_, event)] = put(body, app_id="a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6", received_at_ms=1487973803515)
    record = assert_record(event)
    del documented["application"]["cognito_identity_pool_id"], documented["client"]["cognito_id"]
    del record["endpoint"], record["ingest"]
    assert record == documented


@pytest.mark.parametrize(
    ("code", "split"),
    [
        ("en_US", {"country": "US", "language": "en"}),
        ("en-US", {"country": "US", "language": "en"}),
        ("EN_us", {"country": "US", "language": "en"}),
        ("fil_PH", {"country": "PH", "language": "fil"}),
        ("en", {}),
        ("", {}),
        ("zh_Hant_TW", {}),
        ("sr-Latn-RS", {}),
        ("es-419", {}),
        ("en_US.UTF-8", {}),
        ("ÉN_US", {}),
    ],
)
def test_a_locale_splits_into_language_and_country_only_when_it_is_both(
    code: str, split: dict[str, str]
) -> None:
    record = assert_record(one({"Demographic": {"Locale": code}}, {"EventType": "x", "Timestamp": SENT}))
    assert record["device"]["locale"] == {"code": code, **split}


def test_a_session_time_that_does_not_parse_is_left_out() -> None:
    """The validator never lets one through; a record read from elsewhere may."""
    [(_, event)] = put(GOLDEN_BODY)
    for start, stop, expected in [
        ("yesterday", None, {"session_id": "s"}),
        ("yesterday", "later", {"session_id": "s"}),
        (START, "2026-02-30T00:00:00Z", {"session_id": "s", "start_timestamp": START_MS}),
        ("", SENT, {"session_id": "s", "stop_timestamp": SENT_MS}),
    ]:
        odd = event._replace(session=Session(id="s", start_timestamp=start, stop_timestamp=stop))
        assert assert_record(odd)["session"] == expected


def test_a_mapping_that_is_not_a_dict_is_written_as_one() -> None:
    [(_, event)] = put(GOLDEN_BODY)
    frozen = event._replace(
        attributes=MappingProxyType({"screen": "home"}),
        metrics=MappingProxyType({"price": 1.5}),
        session=None,
    )
    record = assert_record(frozen)
    assert (record["attributes"], record["metrics"], record["session"]) == (
        {"screen": "home"},
        {"price": 1.5},
        {},
    )


# --- any event the validator accepts ---------------------------------------------

# Besides test_validate's bodies (mostly plausible, often refused), bodies
# whose every member is of the right type and within its quota, so every
# event is accepted and most carry a full endpoint context.
names = st.text(min_size=1, max_size=10)
texts = st.text(max_size=12)
locales = st.sampled_from(["en_US", "en-US", "pt_br", "fil_PH", "zh_Hant_TW", "es-419", "en", ""]) | texts
# Demographic with a Locale always: test_validate's bodies cover its absence.
accepted_endpoints = st.fixed_dictionaries(
    {
        "Demographic": st.fixed_dictionaries(
            {"Locale": locales},
            optional={member: texts for member in DEMOGRAPHIC_MEMBERS if member != "Locale"},
        )
    },
    optional={
        "ChannelType": st.sampled_from(sorted(validate.CHANNEL_TYPES)),
        "Location": st.fixed_dictionaries(
            {},
            optional={
                "City": texts,
                "Country": texts,
                "Latitude": st.floats(-90, 90),
                "Longitude": st.floats(-180, 180),
                "PostalCode": texts,
                "Region": texts,
            },
        ),
        "User": st.fixed_dictionaries({}, optional={"UserId": texts}),
    },
)
accepted_events = st.fixed_dictionaries(
    {"EventType": names, "Timestamp": good_timestamps},
    optional={
        "Session": st.fixed_dictionaries(
            {"Id": names, "StartTimestamp": good_timestamps},
            optional={"StopTimestamp": good_timestamps, "Duration": st.integers(0, 2**40)},
        ),
        "Attributes": st.dictionaries(names, texts, max_size=4),
        "Metrics": st.dictionaries(names, st.floats(allow_nan=False, allow_infinity=False), max_size=4),
        **dict.fromkeys(
            ("AppPackageName", "AppTitle", "AppVersionCode", "ClientSdkVersion", "SdkName"), texts
        ),
    },
)
accepted_bodies = st.dictionaries(
    names,
    st.fixed_dictionaries(
        {"Endpoint": accepted_endpoints, "Events": st.dictionaries(names, accepted_events, max_size=5)}
    ),
    max_size=4,
).map(lambda batch: {"BatchItem": batch})
bodies = st.one_of(batch_items(), accepted_bodies)


@SLOW
@given(body=bodies, body_bytes=body_sizes)
def test_every_accepted_event_makes_a_record_that_fits_the_schema(
    body: dict[str, Any], body_bytes: int
) -> None:
    for event_id, event in put(body, body_bytes=body_bytes):
        record = assert_record(event)
        hypothesis.event("with endpoint context" if event.endpoint else "endpoint refused")
        locale = record["device"].get("locale")
        hypothesis.event(
            "no locale" if locale is None else "locale split" if len(locale) == 3 else "locale kept"
        )
        assert record["client"]["client_id"] == event.endpoint_id
        assert record["ingest"] == {"event_id": event_id, "request_id": "req-1"}
        assert record["event_timestamp"] == event.timestamp_ms
        assert record["attributes"] == (event.attributes or {})
        assert record["metrics"] == (event.metrics or {})


@SLOW
@given(event=any_events)
def test_any_event_the_codec_holds_makes_a_record_without_nulls(event: Event) -> None:
    """Wider than validation: any strings, any 64-bit times, any session text."""
    record = stream_record(event)
    assert orjson.loads(encode(event)) == record
    assert all(value is not None for _, value in walk(record))


@SLOW
@given(body=bodies, body_bytes=body_sizes)
def test_an_event_read_back_from_avro_makes_the_same_record(body: dict[str, Any], body_bytes: int) -> None:
    """What the worker will see: the event as the edge wrote it to Kafka."""
    for _, event in put(body, body_bytes=body_bytes):
        if not MIN_MS <= event.timestamp_ms <= MAX_MS:
            # A Timestamp within a day of year 1's start or year 9999's end
            # whose offset takes it past them: the validator takes it, the
            # codec refuses to read it back.
            hypothesis.event("timestamp outside years 1-9999")
            continue
        decoded = CODEC.decode_event(CODEC.encode_event(event))
        assert stream_record(decoded) == stream_record(event)
        assert encode(decoded) == encode(event)


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
