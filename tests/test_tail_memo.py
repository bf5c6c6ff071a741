"""The generated readers' tail memo (``tail_memo`` of ``avro.compile_decoder``
and ``avro.compile_projection``): an event's last field, its endpoint
context, is the same bytes for every event of a device's batch, and is read
once. A reader with the memo reads, and refuses, every value exactly as one
without it; equal tails share one value; the memo holds at most its size;
and a last field that could hold a list or a dict is never remembered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from hypothesis import given
from hypothesis import strategies as st

from ingest.records.avro import (
    TAIL_MEMO_MAX_BYTES,
    AvroDecodeError,
    Decoder,
    compile_decoder,
    compile_projection,
)
from ingest.records.codec import ENDPOINT_SCHEMA, EVENT_SCHEMA, HEADER_BYTES, RECORD_TYPES
from ingest.records.values import Demographic, EndpointContext, Event, Location
from tests.test_codec import CODEC, EVENT, FAST, events
from tests.test_projection import _subsets

CONTEXT = EndpointContext(
    user_id="user-1",
    channel_type="APNS",
    demographic=Demographic(make="Apple", model="iPhone15,2", platform="ios", platform_version="18.1"),
    location=Location(city="Oslo", country="NO"),
)


def _outcome(decode: Decoder, value: bytes) -> tuple[str, str]:
    """What a reader makes of ``value``: the record and its end, or the error."""
    try:
        return "read", repr(decode(value, HEADER_BYTES))
    except AvroDecodeError as exc:
        return "refused", str(exc)


def _damaged(data: st.DataObject, value: bytes) -> bytes:
    """``value`` as it is, with a byte changed, cut short, or with stray bytes after it."""
    how = data.draw(st.sampled_from(["as is", "changed", "cut", "stray"]), label="damage")
    if how == "as is" or len(value) <= HEADER_BYTES:
        return value
    if how == "stray":
        return value + data.draw(st.binary(min_size=1, max_size=3), label="stray")
    if how == "cut":
        return value[: data.draw(st.integers(HEADER_BYTES, len(value) - 1), label="cut")]
    body = bytearray(value)
    body[data.draw(st.integers(HEADER_BYTES, len(body) - 1), label="at")] = data.draw(st.integers(0, 255))
    return bytes(body)


@FAST
@given(data=st.data(), projected=st.booleans())
def test_a_reader_with_a_tail_memo_reads_and_refuses_as_one_without(
    data: st.DataObject, projected: bool
) -> None:
    """Events again under another ID (the same tail after another head), and
    damaged copies, in any order, through a memo of two that keeps filling:
    each value reads to the same record and end, or fails with the same
    error, as through a reader without the memo."""
    schema = CODEC.schema(EVENT_SCHEMA)
    make: Callable[[int], Decoder]
    if projected:
        fields = data.draw(_subsets(Event), label="fields")
        make = lambda memo: compile_projection(schema, RECORD_TYPES, fields, tail_memo=memo)  # noqa: E731
    else:
        make = lambda memo: compile_decoder(schema, RECORD_TYPES, tail_memo=memo)  # noqa: E731
    plain, remembering = make(0), make(2)
    values: list[bytes] = []
    for event in data.draw(st.lists(events, min_size=1, max_size=4), label="events"):
        event = event._replace(endpoint=data.draw(st.sampled_from([event.endpoint, CONTEXT])))
        for again in (event, event._replace(event_id=event.event_id + "-again", request_id="other")):
            values.append(_damaged(data, CODEC.encode_event(again)))
    for value in data.draw(st.permutations(values + values), label="order"):
        assert _outcome(remembering, value) == _outcome(plain, value)


def _memos(decode: Decoder) -> list[dict[Any, Any]]:
    return [held for name, held in decode.__globals__.items() if name.startswith("memo")]


def test_equal_tails_share_one_value_and_the_memo_holds_at_most_its_size() -> None:
    decode = compile_decoder(CODEC.schema(EVENT_SCHEMA), RECORD_TYPES, tail_memo=3)
    first = EVENT._replace(endpoint=CONTEXT)
    one, _ = decode(CODEC.encode_event(first), HEADER_BYTES)
    other, _ = decode(CODEC.encode_event(first._replace(event_id="e-2", timestamp_ms=1)), HEADER_BYTES)
    assert one.endpoint == CONTEXT
    assert other.endpoint is one.endpoint
    [held] = _memos(decode)
    for n in range(10):
        moved = first._replace(endpoint=CONTEXT._replace(user_id=f"user-{n}"))
        assert decode(CODEC.encode_event(moved), HEADER_BYTES)[0] == moved
        assert len(held) <= 3
    # A tail past the bound is read, not held: a key is its tail's bytes.
    held.clear()
    huge = first._replace(endpoint=CONTEXT._replace(user_id="u" * TAIL_MEMO_MAX_BYTES))
    for _ in range(2):
        assert decode(CODEC.encode_event(huge), HEADER_BYTES)[0] == huge
    assert held == {}
    # Data that is not bytes is read, not looked up (a bytearray is no dict key).
    assert decode(bytearray(CODEC.encode_event(first)), HEADER_BYTES)[0] == first  # type: ignore[arg-type]


def test_the_codec_reads_an_events_context_once_for_a_devices_events() -> None:
    first = EVENT._replace(endpoint=CONTEXT)
    again = first._replace(event_id="e-2")
    assert CODEC.decode_event(CODEC.encode_event(again)).endpoint is (
        CODEC.decode_event(CODEC.encode_event(first)).endpoint
    )


class Inner(NamedTuple):
    tags: dict[str, str]


class Outer(NamedTuple):
    name: str
    inner: Inner | None


NESTED_MAP = {
    "type": "record",
    "name": "Outer",
    "fields": [
        {"name": "name", "type": "string"},
        {
            "name": "inner",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Inner",
                    "fields": [{"name": "tags", "type": {"type": "map", "values": "string"}}],
                },
            ],
        },
    ],
}


def test_a_last_field_that_can_hold_a_dict_is_never_remembered() -> None:
    """A record holding a map, or an upsert's user attributes (a map): a
    shared dict could be changed through one record under another's feet."""
    decode = compile_decoder(NESTED_MAP, {"Outer": Outer, "Inner": Inner}, tail_memo=8)
    assert _memos(decode) == []
    value = b"\x02a\x02\x02\x02k\x28" + b"v" * 20 + b"\x00"
    one, two = decode(value, 0)[0], decode(value, 0)[0]
    assert one == Outer("a", Inner({"k": "v" * 20})) and one.inner is not two.inner
    assert _memos(compile_decoder(CODEC.schema(ENDPOINT_SCHEMA), RECORD_TYPES, tail_memo=8)) == []
    assert len(_memos(compile_decoder(CODEC.schema(EVENT_SCHEMA), RECORD_TYPES, tail_memo=8))) == 1
