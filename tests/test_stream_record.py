"""ingest.streams.record: an accepted event as Pinpoint's app-event JSON.

Field by field on a golden event and on Pinpoint's documented example, and
on Amplify JS's events filled from their stored endpoint; for any event the
validator accepts, with or without any stored endpoint the fold makes of
UpdateEndpoint bodies, a record that never raises, encodes to the same JSON
and holds to ``schemas/event-stream.schema.json``; and the same record after
the event's trip through Avro, as the worker will see it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import botocore.loaders
import hypothesis
import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.errors import BadRequest
from ingest.folds import endpoints
from ingest.folds.endpoints import BatchOutcome, EndpointRecord, EndpointState
from ingest.records import validate
from ingest.records.codec import MAX_MS, MIN_MS, Codec, schema_dir
from ingest.records.values import DEMOGRAPHIC_MEMBERS, LOCATION_MEMBERS, EndpointDelete, Event, Session
from ingest.store.base import endpoint_row, endpoint_state
from ingest.streams.record import EVENT_VERSION, SCHEMA_FILE, Converter, encode, stream_record
from tests.test_codec import events as any_events
from tests.test_validate import batch_items, body_sizes, good_timestamps, plausible_endpoints

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


# UpdateEndpoint bodies are received from a minute before the session on,
# each STORED_STEP_MS after the one before.
STORED_MS = START_MS - 60_000
STORED_STEP_MS = 30_000


def stored(
    *bodies: dict[str, Any] | None, app_id: str = "app-1", endpoint_id: str = "ep-1"
) -> EndpointState | None:
    """The endpoint the store holds after these UpdateEndpoint bodies (None:
    a DeleteEndpoint), as the pipeline makes it: each validated as the edge
    does (one it refuses is never written), folded in order as the endpoint
    worker does, and read back from the store's row."""
    records: list[tuple[EndpointRecord, int]] = []
    for offset, body in enumerate(bodies):
        received_at_ms = STORED_MS + offset * STORED_STEP_MS
        if body is None:
            records.append((EndpointDelete(app_id, endpoint_id, f"req-d{offset}", received_at_ms), offset))
            continue
        try:
            upsert = validate.update_endpoint(
                body,
                app_id=app_id,
                endpoint_id=endpoint_id,
                request_id=f"req-u{offset}",
                received_at_ms=received_at_ms,
            )
        except BadRequest:
            continue
        records.append((upsert, offset))
    state = endpoints.fold({}, records, BatchOutcome()).get((app_id, endpoint_id))
    return None if state is None else endpoint_state(endpoint_row(state))


def assert_record(event: Event, endpoint: EndpointState | None = None) -> dict[str, Any]:
    """What holds for every record: it builds, its JSON is itself, it fits the
    schema, it carries no null and its times are integers; and it leaves the
    stored endpoint as it was."""
    document = None if endpoint is None else orjson.dumps(endpoint.document)
    record = stream_record(event, endpoint)
    encoded = encode(event, endpoint)
    if endpoint is not None:
        assert orjson.dumps(endpoint.document) == document
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


# --- with the stored endpoint ---------------------------------------------------

# Amplify JS v6 in a browser (Chrome on a Mac): record()'s first call creates
# the endpoint with UpdateEndpoint (the client's info as Demographic, the
# Cognito identity as UserId), then identifyUser() names the user and adds
# a locale and an email; PutEvents always sends "Endpoint": {}
# (@aws-amplify/core: providers/pinpoint/apis/updateEndpoint,
# utils/PinpointEventBuffer).
AMPLIFY_DEMOGRAPHIC = {
    "AppVersion": "Chrome/131.0.0.0",
    "Make": "Gecko",
    "Model": "Chrome",
    "ModelVersion": "131.0.0.0",
    "Platform": "MacIntel",
}
AMPLIFY_CREATED = {
    "RequestId": "0d1c6a43-2b1e-4f8a-9d3e-5a7b9c1d2e3f",
    "EffectiveDate": "2026-11-20T09:58:59.900Z",
    "Demographic": AMPLIFY_DEMOGRAPHIC,
    "User": {"UserId": "us-east-1:7f3e9a52-identity"},
}
AMPLIFY_IDENTIFIED = {
    "RequestId": "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
    "EffectiveDate": "2026-11-20T09:59:29.900Z",
    "Attributes": {"email": ["ada@example.com"]},
    "Demographic": {"Locale": "nb_NO", "Timezone": "Europe/Oslo"},
    "User": {"UserId": "user-1"},
}
AMPLIFY_BODY = {
    "BatchItem": {
        "ep-1": {
            "Endpoint": {},
            "Events": {
                "ev-1": {
                    "EventType": "_session.start",
                    "Timestamp": SENT,
                    "Session": {"Id": "session-1", "StartTimestamp": START},
                }
            },
        }
    }
}
# The two folded: identifyUser()'s Demographic members join record()'s.
AMPLIFY_ENDPOINT = {
    "Demographic": {**AMPLIFY_DEMOGRAPHIC, "Locale": "nb_NO", "Timezone": "Europe/Oslo"},
    "User": {"UserId": "user-1"},
    "EndpointStatus": "ACTIVE",
    "Attributes": {"email": ["ada@example.com"]},
    "ApplicationId": "app-1",
    "Id": "ep-1",
    "CohortId": "82",
    "CreationDate": "2026-11-20T09:59:00.000Z",
    "EffectiveDate": "2026-11-20T09:59:29.900Z",
    "RequestId": "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
}
AMPLIFY_RECORD: dict[str, Any] = {
    "event_type": "_session.start",
    "event_timestamp": SENT_MS,
    "arrival_timestamp": RECEIVED_MS,
    "event_version": "3.0",
    "application": {"app_id": "app-1", "sdk": {}, "version_name": "Chrome/131.0.0.0"},
    "client": {"client_id": "ep-1"},
    "device": {
        "locale": {"code": "nb_NO", "country": "NO", "language": "nb"},
        "make": "Gecko",
        "model": "Chrome",
        "platform": {"name": "MacIntel"},
    },
    "session": {"session_id": "session-1", "start_timestamp": START_MS},
    "attributes": {},
    "metrics": {},
    "endpoint": AMPLIFY_ENDPOINT,
    "ingest": {"event_id": "ev-1", "request_id": "req-1"},
}


def test_amplifys_events_are_filled_from_the_stored_endpoint() -> None:
    """Pinpoint filled device, version_name and endpoint from the endpoint it
    held; Amplify's PutEvents describes nothing itself."""
    endpoint = stored(AMPLIFY_CREATED, AMPLIFY_IDENTIFIED)
    [(_, event)] = put(AMPLIFY_BODY)
    assert assert_record(event, endpoint) == AMPLIFY_RECORD
    assert orjson.loads(encode(event, endpoint)) == AMPLIFY_RECORD
    # Without it, what the event alone says (as before the store was read).
    assert assert_record(event) == {
        **AMPLIFY_RECORD,
        "application": {"app_id": "app-1", "sdk": {}},
        "device": {"platform": {}},
        "endpoint": {"Id": "ep-1"},
    }


def test_what_the_events_endpoint_sent_wins_member_by_member() -> None:
    """The batch's Endpoint is what the device said with this very event:
    each member it sent is written over the stored one, the rest is the
    store's, and the stored state itself is left as it was."""
    endpoint = stored(
        {
            "ChannelType": "APNS",
            "Address": "token-1",
            "Demographic": DEMOGRAPHIC,
            "Location": {**LOCATION, "PostalCode": "0150", "Region": "Oslo"},
            "User": {"UserId": "user-1", "UserAttributes": {"plan": ["pro"]}},
            "Metrics": {"visits": 3},
            "OptOut": "NONE",
        }
    )
    context = {
        "ChannelType": "GCM",
        "Demographic": {"AppVersion": "2.6", "Locale": "fr_FR", "Platform": ""},
        "Location": {"City": "Paris", "Latitude": 48.9},
        "User": {"UserId": "user-2", "UserAttributes": {"plan": ["free"]}},
        "Address": "token-2",
    }
    record = assert_record(one(context, {"EventType": "x", "Timestamp": SENT}), endpoint)
    assert record["endpoint"] == {
        "ChannelType": "GCM",
        "Address": "token-1",  # an event does not carry the batch's Address
        "Demographic": {**DEMOGRAPHIC, "AppVersion": "2.6", "Locale": "fr_FR", "Platform": ""},
        "Location": {**LOCATION, "City": "Paris", "Latitude": 48.9, "PostalCode": "0150", "Region": "Oslo"},
        "User": {"UserId": "user-2", "UserAttributes": {"plan": ["pro"]}},  # nor UserAttributes
        "Metrics": {"visits": 3},
        "OptOut": "NONE",
        "EndpointStatus": "ACTIVE",
        "ApplicationId": "app-1",
        "Id": "ep-1",
        "CohortId": "82",
        "CreationDate": "2026-11-20T09:59:00.000Z",
        "EffectiveDate": "2026-11-20T09:59:00.000Z",
        "RequestId": "req-u0",
    }
    assert record["device"] == {
        "locale": {"code": "fr_FR", "country": "FR", "language": "fr"},
        "make": "Apple",
        "model": "iPhone",
        "platform": {"name": "", "version": "17.1"},
    }
    assert record["application"]["version_name"] == "2.6"


def test_an_endpoint_sent_empty_or_refused_leaves_the_stored_one_as_it_is() -> None:
    endpoint = stored(AMPLIFY_CREATED, AMPLIFY_IDENTIFIED)
    empty: dict[str, Any] = {"Demographic": {}, "Location": {}, "User": {}}
    record = assert_record(one(empty, {"EventType": "x", "Timestamp": SENT}), endpoint)
    assert record["endpoint"] == {**AMPLIFY_ENDPOINT, "Location": {}}
    refused = one({"ChannelType": "PIGEON"}, {"EventType": "x", "Timestamp": SENT})
    assert refused.endpoint is None
    assert assert_record(refused, endpoint)["endpoint"] == AMPLIFY_ENDPOINT
    assert assert_record(refused, endpoint)["device"] == AMPLIFY_RECORD["device"]


@pytest.mark.parametrize(
    "other",
    [
        stored(AMPLIFY_CREATED, app_id="app-2"),
        stored(AMPLIFY_CREATED, endpoint_id="ep-2"),
        stored(AMPLIFY_CREATED, None),
    ],
    ids=["another-app", "another-endpoint", "deleted"],
)
def test_a_stored_endpoint_not_the_events_own_is_ignored(other: EndpointState) -> None:
    """Another device must never be written into a record: the caller's slip
    makes the record the event's alone, not an error that stalls the stream."""
    assert other is not None
    [(_, event)] = put(AMPLIFY_BODY)
    assert assert_record(event, other) == stream_record(event)


def test_an_endpoint_the_16th_rule_deactivated_has_no_user_id() -> None:
    endpoint = stored(AMPLIFY_CREATED, {"User": {"UserAttributes": {"plan": ["pro"]}}})
    assert endpoint is not None
    deactivated = endpoints.deactivated(endpoint)
    [(_, event)] = put(AMPLIFY_BODY)
    written = assert_record(event, deactivated)["endpoint"]
    assert (written["EndpointStatus"], written["User"]) == ("INACTIVE", {"UserAttributes": {"plan": ["pro"]}})


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


# UpdateEndpoint bodies: test_validate's (mostly plausible, often refused),
# and ones the validator always accepts, of every member an endpoint keeps.
string_lists = st.dictionaries(names, st.lists(texts, max_size=3), max_size=3)


def _update_body(
    endpoint: dict[str, Any], members: dict[str, Any], user_attributes: dict[str, list[str]] | None
) -> dict[str, Any]:
    """A PutEvents Endpoint with an UpdateEndpoint's further members."""
    if user_attributes is None:
        return {**endpoint, **members}
    return {**endpoint, **members, "User": {**endpoint.get("User", {}), "UserAttributes": user_attributes}}


accepted_updates = st.builds(
    _update_body,
    accepted_endpoints,
    st.fixed_dictionaries(
        {},
        optional={
            "Address": texts,
            "Attributes": string_lists,
            "EffectiveDate": good_timestamps,
            "EndpointStatus": st.sampled_from(sorted(validate.ENDPOINT_STATUSES)),
            "Metrics": st.dictionaries(names, st.floats(allow_nan=False, allow_infinity=False), max_size=3),
            "OptOut": st.sampled_from(sorted(validate.OPT_OUTS)),
            "RequestId": texts,
        },
    ),
    st.none() | string_lists,
)
# What the store may hold: the fold of a few writes, a delete (None) among them.
histories = st.lists(
    st.integers(0, 5).flatmap(
        lambda i: st.none() if i == 0 else accepted_updates if i < 4 else plausible_endpoints
    ),
    min_size=1,
    max_size=3,
)
# Whose endpoint the caller passes: mostly the event's own, now and then
# (a slip) another's, which must be ignored.
OWN, ANOTHER_APP, ANOTHER_ENDPOINT = "own", "another app", "another endpoint"
whose = st.sampled_from([OWN, OWN, OWN, ANOTHER_APP, ANOTHER_ENDPOINT])
# The record's keys that the stored endpoint never changes.
EVENTS_OWN = (
    "event_type",
    "event_timestamp",
    "arrival_timestamp",
    "client",
    "session",
    "attributes",
    "metrics",
    "ingest",
)


@SLOW
@given(body=bodies, body_bytes=body_sizes, history=histories, deactivate=st.booleans(), of=whose)
def test_every_accepted_event_with_any_stored_endpoint_makes_a_record_that_fits_the_schema(
    body: dict[str, Any], body_bytes: int, history: list[dict[str, Any] | None], deactivate: bool, of: str
) -> None:
    """The record holds to the schema and round-trips; the stored endpoint
    is used only when it is the event's own and live, and then each member
    of ``endpoint`` is the event's context's where it sent one, else the
    store's; device and version_name follow that endpoint's Demographic."""
    for _, event in put(body, body_bytes=body_bytes):
        endpoint = stored(
            *history,
            app_id="app-2" if of == ANOTHER_APP else event.app_id,
            endpoint_id=event.endpoint_id + "-2" if of == ANOTHER_ENDPOINT else event.endpoint_id,
        )
        if endpoint is not None and deactivate and not endpoint.deleted:
            endpoint = endpoints.deactivated(endpoint)
        record = assert_record(event, endpoint)
        alone = stream_record(event)
        if endpoint is None or endpoint.deleted or of != OWN:
            hypothesis.event(
                "stored endpoint: none"
                if endpoint is None
                else f"stored endpoint: ignored ({'deleted' if of == OWN else of})"
            )
            assert record == alone
            continue
        hypothesis.event("stored endpoint: used")
        assert {key: record[key] for key in EVENTS_OWN} == {key: alone[key] for key in EVENTS_OWN}
        assert {k: v for k, v in record["application"].items() if k != "version_name"} == {
            k: v for k, v in alone["application"].items() if k != "version_name"
        }
        assert_overlaid(record, endpoints.endpoint_response(endpoint), event)


def assert_overlaid(record: dict[str, Any], response: dict[str, Any], event: Event) -> None:
    """``record["endpoint"]`` is ``response`` with each member the event's
    context sent written over it; device and version_name are of its Demographic."""
    written = record["endpoint"]
    context = event.endpoint
    sent: dict[str, Any] = {}
    if context is not None:
        if context.channel_type is not None:
            sent["ChannelType"] = context.channel_type
        if context.user_id is not None:
            sent["User"] = context.user_id
        for member, names, values in [
            ("Demographic", DEMOGRAPHIC_MEMBERS, context.demographic),
            ("Location", LOCATION_MEMBERS, context.location),
        ]:
            if values is not None:
                sent[member] = dict(zip(names, values, strict=True))
    assert set(written) == set(response) | set(sent)
    for member, value in written.items():
        if member in ("Demographic", "Location") and member in sent:
            stored_members = response.get(member, {})
            assert set(value) == set(stored_members) | {k for k, v in sent[member].items() if v is not None}
            for name, item in value.items():
                assert item == (
                    sent[member][name] if sent[member].get(name) is not None else stored_members[name]
                )
        elif member == "User" and member in sent:
            assert value == {**response.get("User", {}), "UserId": sent["User"]}
        else:
            assert value == sent.get(member, response.get(member))
    demographic = written.get("Demographic", {})
    assert record["application"].get("version_name") == demographic.get("AppVersion")
    device = record["device"]
    assert device.get("locale", {}).get("code") == demographic.get("Locale")
    assert (device.get("make"), device.get("model")) == (demographic.get("Make"), demographic.get("Model"))
    assert device["platform"] == {
        key: demographic[member]
        for key, member in [("name", "Platform"), ("version", "PlatformVersion")]
        if member in demographic
    }


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
        # The validator refuses a Timestamp whose offset takes it outside
        # years 1-9999, which the codec could not read back.
        assert MIN_MS <= event.timestamp_ms <= MAX_MS
        decoded = CODEC.decode_event(CODEC.encode_event(event))
        assert stream_record(decoded) == stream_record(event)
        assert encode(decoded) == encode(event)


@SLOW
@given(polls=st.lists(bodies, min_size=1, max_size=3), history=histories, ids=st.integers(1, 3))
def test_a_converter_writes_each_event_as_encode_does(
    polls: list[dict[str, Any]], history: list[dict[str, Any] | None], ids: int
) -> None:
    """The streams worker's Converter shares a record's endpoint, device and
    session between events: each record's bytes are still encode()'s for
    its event and its own stored endpoint. The events are put on at most
    ``ids`` endpoint IDs, so one ID comes with other contexts, sessions and
    stored endpoints (one of another app among them), and each is a fresh
    object read back from Avro, as the worker reads them."""
    events = [
        CODEC.decode_event(CODEC.encode_event(e._replace(endpoint_id=f"ep-{n % ids}")))
        for body in polls
        for n, (_, e) in enumerate(put(body))
    ]
    held = {("app-1", f"ep-{n}"): stored(*history, endpoint_id=f"ep-{n}") for n in range(ids)}
    held[("app-1", "ep-0")] = stored(*history, app_id="app-2", endpoint_id="ep-0")
    known = {key: state for key, state in held.items() if state is not None}
    converter = Converter(known)
    for event in events:
        assert converter.encode(event) == encode(event, known.get((event.app_id, event.endpoint_id)))


def test_a_converter_tells_apart_the_contexts_and_sessions_of_one_endpoint() -> None:
    """Two batches of one device, each with its own Demographic and session:
    each record has its own, though the endpoint is the same."""
    first = one(
        {"Demographic": {"Platform": "iOS"}},
        {"EventType": "a", "Timestamp": SENT, "Session": {"Id": "s-1", "StartTimestamp": START}},
    )
    second = one(
        {"Demographic": {"Platform": "Android"}},
        {"EventType": "a", "Timestamp": SENT, "Session": {"Id": "s-2", "StartTimestamp": SENT}},
    )
    endpoint = stored({"Demographic": {"Make": "Apple"}, "User": {"UserId": "u-1"}})
    assert endpoint is not None
    converter = Converter({("app-1", "ep-1"): endpoint})
    records = [orjson.loads(converter.encode(e)) for e in (first, second, first)]
    assert [r["device"]["platform"] for r in records] == [
        {"name": "iOS"},
        {"name": "Android"},
        {"name": "iOS"},
    ]
    assert [r["session"]["session_id"] for r in records] == ["s-1", "s-2", "s-1"]
    assert records[0]["endpoint"]["Demographic"] == {"Make": "Apple", "Platform": "iOS"}
    assert records == [stream_record(e, endpoint) for e in (first, second, first)]


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


def test_the_schemas_endpoint_is_pinpoints_endpoint_response() -> None:
    """Member for member as botocore's model of the Pinpoint API has it."""
    shapes = botocore.loaders.Loader().load_service_model("pinpoint", "service-2")["shapes"]
    endpoint = SCHEMA["properties"]["endpoint"]["properties"]
    for properties, shape in [
        (endpoint, "EndpointResponse"),
        (endpoint["Demographic"]["properties"], "EndpointDemographic"),
        (endpoint["Location"]["properties"], "EndpointLocation"),
        (endpoint["User"]["properties"], "EndpointUser"),
    ]:
        assert sorted(properties) == sorted(shapes[shape]["members"]), shape
    assert endpoint["ChannelType"]["enum"] == sorted(shapes["ChannelType"]["enum"])


# A record of a stored endpoint with every member an endpoint can have.
STORED_RECORD = {
    **AMPLIFY_RECORD,
    "endpoint": {
        **AMPLIFY_ENDPOINT,
        "Address": "token-1",
        "ChannelType": "APNS",
        "Location": {"City": "Oslo", "Latitude": 59.9},
        "Metrics": {"visits": 3.0},
        "OptOut": "NONE",
        "User": {"UserId": "user-1", "UserAttributes": {"plan": ["pro"]}},
    },
}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("endpoint", "Attributes", "email"), "ada@example.com"),
        (("endpoint", "Attributes", "email"), [1]),
        (("endpoint", "Attributes"), {"": ["x"]}),
        (("endpoint", "Metrics", "visits"), "3"),
        (("endpoint", "CohortId"), "100"),
        (("endpoint", "CreationDate"), "2026-11-20T09:59:00Z"),
        (("endpoint", "EffectiveDate"), ""),
        (("endpoint", "EndpointStatus"), "PAUSED"),
        (("endpoint", "OptOut"), "SOME"),
        (("endpoint", "User", "UserAttributes", "plan"), "pro"),
        (("endpoint", "User", "Id"), "user-1"),
        (("endpoint", "Location", "Latitude"), 91),
        (("endpoint", "ApplicationId"), ""),
    ],
)
def test_the_schema_refuses_a_stored_endpoint_of_the_wrong_shape(path: tuple[str, ...], value: Any) -> None:
    VALIDATOR.validate(STORED_RECORD)
    assert not VALIDATOR.is_valid(_changed(STORED_RECORD, path, value=value))


@pytest.mark.parametrize(
    "member", ["ApplicationId", "CohortId", "CreationDate", "EffectiveDate", "EndpointStatus", "RequestId"]
)
def test_the_server_set_members_come_together(member: str) -> None:
    """From a stored endpoint all of them, from the event alone none; nor
    does a member only the store knows come without them."""
    endpoint = STORED_RECORD["endpoint"]
    without = {**STORED_RECORD, "endpoint": {k: v for k, v in endpoint.items() if k != member}}
    assert not VALIDATOR.is_valid(without)
    alone = {k: endpoint[k] for k in ("Id", "Demographic", "User") if k in endpoint}
    assert VALIDATOR.is_valid({**STORED_RECORD, "endpoint": {**alone, "User": {"UserId": "user-1"}}})
    for only_stored in ("Address", "Attributes", "Metrics", "OptOut", member):
        lone = {**alone, only_stored: endpoint[only_stored]}
        assert not VALIDATOR.is_valid({**STORED_RECORD, "endpoint": lone}), only_stored


@pytest.mark.parametrize("key", sorted(SCHEMA["required"]))
def test_the_schema_requires_every_top_level_key(key: str) -> None:
    record = {name: value for name, value in GOLDEN_RECORD.items() if name != key}
    assert not VALIDATOR.is_valid(record)
