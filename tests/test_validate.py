"""ingest.validate, the pure core: no input makes it raise anything but
BadRequest, and PutEvents decides every endpoint and event it was sent, in order."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.errors import BadRequest
from ingest.records import validate
from ingest.records.codec import Codec
from ingest.records.values import REJECT_REASONS, EndpointBatch, EndpointUpsert, Event, Invalid

# Enough to find shape bugs in a few seconds each; the file stays well under
# 20 s on two cores.
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CODEC = Codec()
EPOCH_ORDINAL = datetime(1970, 1, 1, tzinfo=UTC).toordinal()
MS_PER_DAY = 86_400_000

# --- arbitrary JSON ----------------------------------------------------------

# Beyond 64 bits: orjson reads these as doubles, or refuses them past a
# double's range and json_body falls back to the exact standard parser. Kept
# under Python's 4300-digit int/str limit, past which json_body answers
# BadRequest, so validate never sees such a number.
huge_ints = st.integers(min_value=2**64, max_value=2**1000) | st.integers(
    min_value=-(2**1000), max_value=-(2**63) - 1
)
scalars: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers() | huge_ints | st.floats(allow_nan=False) | st.text(max_size=30)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
# In the members of a plausible shape: small, so a batch of them stays cheap.
small_json: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
short_texts = st.text(max_size=12)
body_sizes = st.sampled_from([0, validate.MAX_EVENT_BYTES, validate.MAX_EVENT_BYTES + 1]) | st.integers(
    min_value=0, max_value=4 * validate.MAX_EVENT_BYTES
)
# How many times likelier the plausible shape is than arbitrary JSON in its
# place: each item has ~10 members, and an item is accepted only if all are right.
PLAUSIBLE_WEIGHT = 7


def _mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` PLAUSIBLE_WEIGHT times as often as ``rare``, shrinking to ``common``.
    (``st.one_of`` picks evenly among its distinct branches, so repeating one
    in it weighs nothing.)"""
    return st.integers(0, PLAUSIBLE_WEIGHT).flatmap(lambda i: rare if i == PLAUSIBLE_WEIGHT else common)


def _or_json(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the plausible shape, now and then any JSON at all in its place."""
    return _mostly(plausible, small_json)


# --- plausible Pinpoint shapes ---------------------------------------------

_offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
moments = st.datetimes(timezones=st.one_of(st.none(), _offsets))


def _iso(moment: datetime, zulu: bool) -> str:
    text = moment.isoformat(timespec="microseconds")
    return text + "Z" if zulu and moment.tzinfo is None else text


good_timestamps = st.builds(_iso, moments, st.booleans())
timestamps = _mostly(
    good_timestamps,
    st.sampled_from(["2024-02-30T00:00:00Z", "yesterday", ""]) | st.text(max_size=30),
)
keys = _mostly(st.text(min_size=1, max_size=8), st.sampled_from(["", "k" * 50, "k" * 51]))
numbers = st.one_of(st.floats(allow_nan=False), st.integers(), huge_ints)
event_values = _mostly(st.text(max_size=8), st.sampled_from(["v" * 200, "v" * 201]))
endpoint_values = _mostly(st.text(max_size=8), st.sampled_from(["v" * 100, "v" * 101]))
# Past a quota as a whole: 41 event keys, 251 endpoint keys, > 15 KiB of endpoint.
many_event_attributes = {f"k{i}": "v" for i in range(validate.MAX_EVENT_KEYS + 1)}
many_endpoint_attributes = {f"k{i}": ["v"] for i in range(validate.MAX_ENDPOINT_ATTRIBUTES + 1)}
large_endpoint_attributes = {f"k{i}": ["v" * 100] * 50 for i in range(4)}
multi_attributes = _mostly(
    st.dictionaries(keys, _or_json(st.lists(_or_json(endpoint_values), max_size=3)), max_size=4),
    st.sampled_from([{"k": ["v"] * 51}, many_endpoint_attributes, large_endpoint_attributes]),
)
metrics = _mostly(
    st.dictionaries(keys, _or_json(numbers), max_size=4),
    st.just({f"m{i}": 1.0 for i in range(validate.MAX_EVENT_KEYS + 1)}),
)

_session_members = {
    "StopTimestamp": _or_json(timestamps),
    "Duration": _or_json(st.integers(min_value=-1, max_value=2**64)),
}
sessions = _mostly(
    st.fixed_dictionaries(
        {"Id": st.text(min_size=1, max_size=8), "StartTimestamp": good_timestamps}, optional=_session_members
    ),
    st.fixed_dictionaries(
        {},
        optional={"Id": _or_json(short_texts), "StartTimestamp": _or_json(timestamps), **_session_members},
    ),
)
_event_members = {
    "Session": _or_json(sessions),
    "Attributes": _or_json(
        _mostly(st.dictionaries(keys, _or_json(event_values), max_size=4), st.just(many_event_attributes))
    ),
    "Metrics": _or_json(metrics),
    "AppPackageName": _or_json(short_texts),
    "AppTitle": _or_json(short_texts),
    "AppVersionCode": _or_json(short_texts),
    "ClientSdkVersion": _or_json(short_texts),
    "SdkName": _or_json(short_texts),
    # An unknown member the size of the per-event quota: too_large only when
    # body_bytes says the body could hold such an event (else it is not measured).
    "Padding": st.just("p" * validate.MAX_EVENT_BYTES),
}
plausible_events = _mostly(
    st.fixed_dictionaries(
        {"EventType": st.text(min_size=1, max_size=12), "Timestamp": good_timestamps}, optional=_event_members
    ),
    st.fixed_dictionaries(
        {}, optional={"EventType": _or_json(short_texts), "Timestamp": _or_json(timestamps), **_event_members}
    ),
)
demographics = st.fixed_dictionaries(
    {},
    optional={
        name: _or_json(short_texts)
        for name in (
            "AppVersion",
            "Locale",
            "Make",
            "Model",
            "ModelVersion",
            "Platform",
            "PlatformVersion",
            "Timezone",
        )
    },
)
locations = st.fixed_dictionaries(
    {},
    optional={
        "City": _or_json(short_texts),
        "Country": _or_json(short_texts),
        "Latitude": _or_json(numbers),
        "Longitude": _or_json(numbers),
        "PostalCode": _or_json(short_texts),
        "Region": _or_json(short_texts),
    },
)
users = st.fixed_dictionaries(
    {}, optional={"UserId": _or_json(short_texts), "UserAttributes": _or_json(multi_attributes)}
)
plausible_endpoints = st.fixed_dictionaries(
    {},
    optional={
        "Address": _or_json(short_texts),
        "Attributes": _or_json(multi_attributes),
        "ChannelType": _or_json(st.sampled_from(sorted(validate.CHANNEL_TYPES)) | short_texts),
        "Demographic": _or_json(demographics),
        "EffectiveDate": _or_json(timestamps),
        "EndpointStatus": _or_json(st.sampled_from(sorted(validate.ENDPOINT_STATUSES)) | short_texts),
        "Location": _or_json(locations),
        "Metrics": _or_json(metrics),
        "OptOut": _or_json(st.sampled_from(sorted(validate.OPT_OUTS)) | short_texts),
        "RequestId": _or_json(short_texts),
        "User": _or_json(users),
    },
)
ids = _mostly(st.text(min_size=1, max_size=10), st.just(""))


@st.composite
def batch_items(draw: st.DrawFn) -> dict[str, Any]:
    """``{"BatchItem": {endpoint_id: {"Endpoint": …, "Events": {…}}}}``, ≤ 100 events."""
    budget = validate.MAX_EVENTS_PER_REQUEST
    batch: dict[str, Any] = {}
    for endpoint_id in draw(st.lists(ids, unique=True, max_size=5)):
        events = draw(st.dictionaries(ids, _or_json(plausible_events), max_size=min(budget, 25)))
        budget -= len(events)
        batch[endpoint_id] = {"Endpoint": draw(_or_json(plausible_endpoints)), "Events": events}
    return {"BatchItem": batch}


# --- helpers -----------------------------------------------------------------


def put(body: Any, body_bytes: int = 0) -> list[EndpointBatch]:
    return validate.put_events(body, app_id="a", request_id="r", received_at_ms=0, body_bytes=body_bytes)


def assert_invalid(decided: Invalid) -> None:
    assert decided.reason in REJECT_REASONS
    assert decided.message


def assert_endpoint_accepted(upsert: EndpointUpsert, endpoint_id: str) -> None:
    assert (upsert.app_id, upsert.endpoint_id, upsert.request_id) == ("a", endpoint_id, "r")
    if upsert.effective_date is None:
        assert upsert.effective_date_ms is None
    else:
        assert upsert.effective_date_ms == validate.parse_timestamp(upsert.effective_date)
    # Whatever validation accepts, the codec can write.
    assert CODEC.decode(CODEC.encode_endpoint(upsert))[0] == "ingest.v1.EndpointUpsert"


# --- never anything but BadRequest ------------------------------------------


@FAST
@given(body=json_values | st.builds(lambda b: {"BatchItem": b}, json_values), body_bytes=body_sizes)
def test_put_events_answers_any_json_with_batches_or_bad_request(body: Any, body_bytes: int) -> None:
    try:
        result = put(body, body_bytes)
    except BadRequest as exc:
        assert exc.message
        return
    assert isinstance(result, list)


@FAST
@given(body=json_values | plausible_endpoints, endpoint_id=ids)
def test_update_endpoint_answers_any_json_with_upsert_or_bad_request(body: Any, endpoint_id: str) -> None:
    try:
        upsert = validate.update_endpoint(
            body, app_id="a", endpoint_id=endpoint_id, request_id="r", received_at_ms=0
        )
    except BadRequest as exc:
        assert exc.message
        return
    assert upsert.source == "UPDATE_ENDPOINT"
    assert_endpoint_accepted(upsert, endpoint_id)


_batch_entries = st.builds(
    lambda e, i: e if type(e) is not dict else {**e, "Id": i}, plausible_endpoints, ids
)


@FAST
@given(
    body=json_values
    | st.builds(lambda items: {"Item": items}, st.lists(_or_json(_batch_entries), max_size=4) | json_values)
)
def test_update_endpoints_batch_answers_any_json_with_upserts_or_bad_request(body: Any) -> None:
    try:
        upserts = validate.update_endpoints_batch(body, app_id="a", request_id="r", received_at_ms=0)
    except BadRequest as exc:
        assert exc.message
        return
    assert isinstance(upserts, list)
    assert len(upserts) == len(body["Item"])
    for upsert, item in zip(upserts, body["Item"], strict=True):
        assert upsert.source == "UPDATE_ENDPOINTS_BATCH"
        assert_endpoint_accepted(upsert, item["Id"])


@FAST
@given(
    body=json_values
    | st.fixed_dictionaries({}, optional={"Name": _or_json(st.text(max_size=130)), "tags": json_values})
)
def test_create_app_answers_any_json_with_name_and_tags_or_bad_request(body: Any) -> None:
    try:
        name, tags = validate.create_app(body)
    except BadRequest as exc:
        assert exc.message
        return
    assert isinstance(name, str)
    assert 0 < len(name) <= validate.MAX_APP_NAME_CHARS
    assert all(type(v) is str for v in tags.values())


# --- PutEvents decides each item on its own ----------------------------------


@SLOW
@given(body=batch_items(), body_bytes=body_sizes)
def test_put_events_decides_every_endpoint_and_event_in_order(body: dict[str, Any], body_bytes: int) -> None:
    sent = body["BatchItem"]
    batches = put(body, body_bytes)

    assert [b.endpoint_id for b in batches] == list(sent)
    for batch in batches:
        events_sent = sent[batch.endpoint_id]["Events"]
        assert [event_id for event_id, _ in batch.events] == list(events_sent)
        hypothesis.event(f"endpoint {getattr(batch.endpoint, 'reason', 'accepted')}")
        if isinstance(batch.endpoint, Invalid):
            assert_invalid(batch.endpoint)
        else:
            assert isinstance(batch.endpoint, EndpointUpsert)
            assert batch.endpoint.source == "PUT_EVENTS"
            assert_endpoint_accepted(batch.endpoint, batch.endpoint_id)
        for event_id, decided in batch.events:
            hypothesis.event(f"event {getattr(decided, 'reason', 'accepted')}")
            if isinstance(decided, Invalid):
                assert_invalid(decided)
                continue
            assert isinstance(decided, Event)
            assert (decided.app_id, decided.endpoint_id, decided.event_id) == (
                "a",
                batch.endpoint_id,
                event_id,
            )
            assert decided.timestamp_ms == validate.parse_timestamp(decided.timestamp)
            assert CODEC.decode(CODEC.encode_event(decided))[0] == "ingest.v1.Event"
            # One item never decides another: sent alone, the event gets the same answer.
            alone = {
                "BatchItem": {
                    batch.endpoint_id: {
                        **sent[batch.endpoint_id],
                        "Events": {event_id: events_sent[event_id]},
                    }
                }
            }
            assert put(alone, body_bytes)[0].events == ((event_id, decided),)


def test_put_events_refuses_101_events_as_a_whole() -> None:
    events = {f"e{i}": {"EventType": "t", "Timestamp": "2024-01-01T00:00:00Z"} for i in range(51)}
    body = {
        "BatchItem": {
            "x": {"Endpoint": {}, "Events": events},
            "y": {"Endpoint": {}, "Events": dict(list(events.items())[:50])},
        }
    }
    with pytest.raises(BadRequest, match="101 events"):
        put(body)


def test_put_events_decides_100_events_one_by_one() -> None:
    good = {"EventType": "t", "Timestamp": "2024-01-01T00:00:00Z"}
    events = {f"e{i}": good if i % 2 else {**good, "Timestamp": "soon"} for i in range(50)}
    body = {"BatchItem": {"x": {"Endpoint": {}, "Events": events}, "y": {"Endpoint": {}, "Events": events}}}
    reasons = [getattr(d, "reason", "accepted") for b in put(body) for _, d in b.events]
    assert reasons == ["bad_timestamp", "accepted"] * 50


# Within orjson's 1024 levels, so json_body accepts it; past the standard json
# module's recursion limit (1000 frames).
DEEP = b"[" * 1000 + b"]" * 1000


@pytest.mark.parametrize(
    "item",
    [
        b'{"Endpoint": {"Attributes": {"a": ["b"]}, "X": ' + DEEP + b'}, "Events": {}}',
        b'{"Endpoint": {}, "Events": {"x": {"EventType": "t", "Timestamp": "2024-01-01T00:00:00Z", "X": '
        + DEEP
        + b"}}}",
    ],
    ids=["in an endpoint with attributes", "in an event of a body over 1000 KiB"],
)
def test_deep_nesting_that_json_body_accepts_is_decided_not_raised(item: bytes) -> None:
    # Padding makes the body as large as one that may hold a too-large event.
    raw = b'{"BatchItem": {"e": ' + item + b"}}" + b" " * validate.MAX_EVENT_BYTES
    body = validate.json_body(raw)
    try:
        batches = put(body, body_bytes=len(raw))
    except BadRequest:
        return
    assert [b.endpoint_id for b in batches] == ["e"]


# --- json_body -----------------------------------------------------------------


@FAST
@given(
    raw=st.binary(max_size=64)
    | st.text(max_size=32).map(str.encode)
    | json_values.map(lambda v: json.dumps(v).encode())
)
def test_json_body_answers_any_bytes_with_a_value_or_bad_request(raw: bytes) -> None:
    try:
        body = validate.json_body(raw)
    except BadRequest as exc:
        assert exc.message
        return
    # What it returns can go back out as UTF-8 JSON (no lone surrogates).
    json.dumps(body, ensure_ascii=False).encode()


def _reads_as(result: Any, value: Any) -> bool:
    """``result`` is ``value``, same types and order, except that an integer
    beyond 64 bits may come back as the nearest double: orjson 3.13 reads it
    so (it only refuses, sending the body to the exact parser, when the double
    would overflow)."""
    if type(value) is int and not -(2**63) <= value < 2**64:
        return (type(result) is int and result == value) or (type(result) is float and result == float(value))
    if type(value) is list:
        return (
            type(result) is list
            and len(result) == len(value)
            and all(_reads_as(r, v) for r, v in zip(result, value, strict=True))
        )
    if type(value) is dict:
        return (
            type(result) is dict
            and list(result) == list(value)
            and all(_reads_as(result[k], v) for k, v in value.items())
        )
    return type(result) is type(value) and bool(result == value)


@FAST
@given(value=json_values.filter(lambda v: "Infinity" not in json.dumps(v)))
def test_json_body_reads_back_what_json_wrote(value: Any) -> None:
    assert _reads_as(validate.json_body(json.dumps(value).encode()), value)


@pytest.mark.parametrize(
    "raw",
    [
        b'"\\ud800"',
        b'["\\udfff", 1]',
        b'"\xed\xa0\x80"',
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b"{" * 100_000,
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"[NaN]",
        b'{"a": Infinity}',
        b"1" * 5000,
        b"",
        b"\xff",
        b"{",
        b"[1,]",
    ],
    ids=lambda raw: repr(raw[:16]),
)
def test_json_body_refuses(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        validate.json_body(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"1" * 400, int("1" * 400)),
        (b"-" + b"9" * 400, -int("9" * 400)),
        (b'{"m": 18446744073709551615}', {"m": 2**64 - 1}),
        (b'{"m": -9223372036854775808}', {"m": -(2**63)}),
        (b'"\\ud83d\\ude00"', "\N{GRINNING FACE}"),
        (b"[" * 200 + b"]" * 200, json.loads("[" * 200 + "]" * 200)),
    ],
    ids=["400-digit int", "negative 400-digit int", "2**64-1", "-2**63", "surrogate pair", "200 deep"],
)
def test_json_body_accepts(raw: bytes, expected: Any) -> None:
    assert _reads_as(validate.json_body(raw), expected)


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**300])
def test_json_body_reads_an_integer_beyond_64_bits_at_least_as_its_nearest_double(number: int) -> None:
    body = validate.json_body(b'{"m": %d}' % number)
    assert body["m"] == number or body["m"] == float(number)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_json_body_refuses_json_not_in_utf8(encoding: str) -> None:
    with pytest.raises(BadRequest):
        validate.json_body('{"BatchItem": {}}'.encode(encoding))


def _one_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard parser, json_body's second parse, fails the test if it runs."""

    def second_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("json_body parsed the body twice")

    monkeypatch.setattr(json, "loads", second_parse)


LARGE_BODY = b'{"BatchItem": {}, "Padding": "' + b"p" * validate.EXACT_PARSE_MAX_BYTES + b'", "Tail": '


@pytest.mark.parametrize(
    "number", [b"1e999", b"-1e999", b"1.5E+400", b"0.1e400", b"1" * 400, b"-" + b"9" * 400]
)
def test_json_body_refuses_an_overflowing_number_in_a_large_body_in_one_parse(
    monkeypatch: pytest.MonkeyPatch, number: bytes
) -> None:
    _one_parse(monkeypatch)
    with pytest.raises(BadRequest) as exc:
        validate.json_body(LARGE_BODY + number + b"}")
    assert exc.value.message.startswith("Request body is not valid JSON: number is infinity")


@pytest.mark.parametrize("number", [b"1e999", b"-2.5e309", b"1" + b"0" * 310 + b".0"])
def test_json_body_refuses_an_overflowing_fraction_or_exponent_in_one_parse_at_any_size(
    monkeypatch: pytest.MonkeyPatch, number: bytes
) -> None:
    _one_parse(monkeypatch)
    with pytest.raises(BadRequest, match="not valid JSON"):
        validate.json_body(b'{"Metrics": {"m": ' + number + b"}}")


def test_json_body_refuses_other_broken_json_in_one_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    _one_parse(monkeypatch)
    for raw in (LARGE_BODY, b'"\\ud800"', b"[NaN]", b"\xff"):
        with pytest.raises(BadRequest, match="not valid JSON"):
            validate.json_body(raw)


def test_json_body_reads_an_integer_past_a_double_exactly_only_in_a_small_body() -> None:
    small = b'{"m": ' + b"1" * 400 + b"}"
    assert validate.json_body(small) == {"m": int("1" * 400)}
    padded = small[:-1] + b', "p": "' + b"p" * (validate.EXACT_PARSE_MAX_BYTES - len(small) - 9) + b'"}'
    assert len(padded) == validate.EXACT_PARSE_MAX_BYTES, len(padded)
    assert validate.json_body(padded)["m"] == int("1" * 400)
    with pytest.raises(BadRequest):
        validate.json_body(padded[:-2] + b'p"}')


# --- parse_timestamp -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-01T00:00:00.000Z",
        "2024-01-01T01:00:00+01:00",
        "2023-12-31T19:00:00-05:00",
        "2024-01-01T00:00:00",
    ],
)
def test_parse_timestamp_reads_offsets_and_takes_naive_as_utc(text: str) -> None:
    assert validate.parse_timestamp(text) == 1_704_067_200_000


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "yesterday",
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-01-01T00:00:00+25:00",
        "1704067200000",
        # Valid local times whose instant is outside years 1-9999 UTC: no
        # record may carry one (the workers could not read it back).
        "0001-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59-23:59",
    ],
)
def test_parse_timestamp_garbage_is_none(text: str) -> None:
    assert validate.parse_timestamp(text) is None


@FAST
@given(moment=moments, zulu=st.booleans())
def test_parse_timestamp_is_epoch_milliseconds_utc(moment: datetime, zulu: bool) -> None:
    offset = moment.utcoffset() or timedelta(0)
    local_ms = (
        (moment.toordinal() - EPOCH_ORDINAL) * MS_PER_DAY
        + ((moment.hour * 60 + moment.minute) * 60 + moment.second) * 1000
        + moment.microsecond // 1000
    )
    assert validate.parse_timestamp(_iso(moment, zulu)) == local_ms - offset // timedelta(milliseconds=1)


@FAST
@given(text=st.text(max_size=40))
def test_parse_timestamp_never_raises(text: str) -> None:
    millis = validate.parse_timestamp(text)
    assert millis is None or isinstance(millis, int)


# --- ID lengths ------------------------------------------------------------------

LONG_ID = "x" * (validate.MAX_ID_CHARS + 1)
LONGEST_ID = "y" * validate.MAX_ID_CHARS
GOOD_EVENT = {"EventType": "t", "Timestamp": "2024-01-01T00:00:00Z"}


def test_an_overlong_endpoint_id_fails_its_endpoint_and_events_and_nothing_else() -> None:
    body = {
        "BatchItem": {
            LONG_ID: {"Endpoint": {}, "Events": {"a": GOOD_EVENT, "b": GOOD_EVENT}},
            LONGEST_ID: {"Endpoint": {}, "Events": {"c": GOOD_EVENT}},
        }
    }
    refused, kept = put(body)
    assert isinstance(refused.endpoint, Invalid) and refused.endpoint.reason == "value_too_long"
    assert f"at most {validate.MAX_ID_CHARS}" in refused.endpoint.message
    assert [(i, getattr(d, "reason", None)) for i, d in refused.events] == [
        ("a", "value_too_long"),
        ("b", "value_too_long"),
    ]
    assert isinstance(kept.endpoint, EndpointUpsert)
    assert [type(d) for _, d in kept.events] == [Event]


def test_overlong_event_user_and_session_ids_fail_only_their_item() -> None:
    session = {"Id": LONG_ID, "StartTimestamp": "2024-01-01T00:00:00Z"}
    body = {
        "BatchItem": {
            "e": {
                "Endpoint": {"User": {"UserId": LONG_ID}},
                "Events": {LONG_ID: GOOD_EVENT, "s": {**GOOD_EVENT, "Session": session}, "ok": GOOD_EVENT},
            }
        }
    }
    (only,) = put(body)
    assert isinstance(only.endpoint, Invalid) and "User.UserId" in only.endpoint.message
    long_event, long_session, fine = (decided for _, decided in only.events)
    assert isinstance(long_event, Invalid) and "Event ID" in long_event.message
    assert isinstance(long_session, Invalid) and "Session.Id" in long_session.message
    assert isinstance(fine, Event)


def test_an_overlong_id_fails_a_whole_update_endpoint_request() -> None:
    with pytest.raises(BadRequest, match="Endpoint ID is 257 characters"):
        validate.update_endpoint({}, app_id="a", endpoint_id=LONG_ID, request_id="r", received_at_ms=0)
    with pytest.raises(BadRequest, match=r"Item\[1\]: Endpoint ID"):
        validate.update_endpoints_batch(
            {"Item": [{"Id": "ok"}, {"Id": LONG_ID}]}, app_id="a", request_id="r", received_at_ms=0
        )
    with pytest.raises(BadRequest, match="User ID is 257 characters"):
        validate.check_id(LONG_ID, "User ID")
    assert validate.check_id(LONGEST_ID, "User ID") == LONGEST_ID
