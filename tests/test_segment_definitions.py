"""Segment definitions (ingest.segments.definitions): every invalid shape is
a 400 naming the member; a valid one reads back from the form it is shown
in; and the semantics the module states, case by case, in the pure
evaluator and in each store's SQL."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.errors import BadRequest
from ingest.segments import definitions, evaluate, values
from ingest.segments.evaluate import Endpoint

SET = {"Values": ["x"]}
GPS = {"Coordinates": {"Latitude": 1.0, "Longitude": 2.0}}
RECENCY = {"Duration": "DAY_7", "RecencyType": "ACTIVE"}


def dims(**members: Any) -> dict[str, Any]:
    return {"Dimensions": members}


def group(**members: Any) -> dict[str, Any]:
    return {"SegmentGroups": {"Groups": [members]}}


INVALID: list[tuple[Any, str]] = [
    ([], "The request body must be an object"),
    ({"Name": 5}, "Name must be a string"),
    ({"Name": "n" * 257}, "Name is 257 characters"),
    ({"tags": {"aws:x": "1"}}, "tags: the prefix"),
    ({"tags": {"a": 1}}, "tags must be an object of string values"),
    ({**dims(), **group()}, "Dimensions and SegmentGroups: a segment has one or the other"),
    ({"Dimensions": []}, "Dimensions must be an object"),
    (dims(Demographic=[]), "Dimensions.Demographic must be an object"),
    (dims(Demographic={"Platform": {}}), "Dimensions.Demographic.Platform.Values is required"),
    (
        dims(Demographic={"Platform": {"Values": "iOS"}}),
        "Dimensions.Demographic.Platform.Values must be a list",
    ),
    (dims(Demographic={"Make": {"Values": [1]}}), "Dimensions.Demographic.Make.Values[0] must be a string"),
    (
        dims(Demographic={"Model": {"Values": ["x"] * 101}}),
        "Dimensions.Demographic.Model.Values has 101 items; at most 100",
    ),
    (dims(Demographic={"Model": {"Values": ["x" * 101]}}), "Dimensions.Demographic.Model.Values[0] is 101"),
    (
        dims(Demographic={"Model": {"Values": ["a\x00"]}}),
        "Dimensions.Demographic.Model.Values[0] must not hold a NUL",
    ),
    (
        dims(Attributes={"a\x00": SET}),
        "Dimensions.Attributes key 'a\\x00' must be 1-50 characters, none of them NUL",
    ),
    (
        dims(Demographic={"Channel": {**SET, "DimensionType": "MAYBE"}}),
        "Dimensions.Demographic.Channel.DimensionType must be one of EXCLUSIVE, INCLUSIVE",
    ),
    (dims(Location={"Country": {"Values": None}}), "Dimensions.Location.Country.Values is required"),
    (dims(Location={"GPSPoint": {}}), "Dimensions.Location.GPSPoint.Coordinates is required"),
    (
        dims(Location={"GPSPoint": {"Coordinates": {"Latitude": 1.0}}}),
        "Dimensions.Location.GPSPoint.Coordinates.Longitude is required",
    ),
    (
        dims(Location={"GPSPoint": {"Coordinates": {"Latitude": 91, "Longitude": 0}}}),
        "Dimensions.Location.GPSPoint.Coordinates.Latitude must be between -90 and 90",
    ),
    (
        dims(Location={"GPSPoint": {"Coordinates": {"Latitude": 0, "Longitude": "0"}}}),
        "Dimensions.Location.GPSPoint.Coordinates.Longitude must be a finite number",
    ),
    (
        dims(Location={"GPSPoint": {**GPS, "RangeInKilometers": -1}}),
        "Dimensions.Location.GPSPoint.RangeInKilometers must be between 0 and 20015",
    ),
    (
        dims(Behavior={"Recency": {"Duration": "DAY_7"}}),
        "Dimensions.Behavior.Recency.RecencyType is required",
    ),
    (
        dims(Behavior={"Recency": {**RECENCY, "Duration": "DAY_8"}}),
        "Dimensions.Behavior.Recency.Duration must be one of DAY_14, DAY_30, DAY_7, HR_24",
    ),
    (
        dims(Behavior={"Recency": {**RECENCY, "RecencyType": "SLEEPY"}}),
        "Dimensions.Behavior.Recency.RecencyType must be one of ACTIVE, INACTIVE",
    ),
    (dims(Attributes=[]), "Dimensions.Attributes must be an object"),
    (dims(Attributes={"": SET}), "Dimensions.Attributes key '' must be 1-50 characters"),
    (dims(Attributes={f"a{i}": SET for i in range(51)}), "Dimensions.Attributes names 51 keys; at most 50"),
    (
        dims(Attributes={"plan": {**SET, "AttributeType": "LIKE"}}),
        "Dimensions.Attributes.plan.AttributeType must be one of",
    ),
    (
        dims(UserAttributes={"d": {"AttributeType": "BEFORE", "Values": ["2026-01-01"]}}),
        "Dimensions.UserAttributes.d.Values[0] must be an ISO 8601 instant",
    ),
    (
        dims(Attributes={"d": {"AttributeType": "ON", "Values": ["2026-02-30T00:00:00Z"]}}),
        "Dimensions.Attributes.d.Values[0] must be an ISO 8601 instant",
    ),
    (
        dims(Attributes={"d": {"AttributeType": "AFTER", "Values": []}}),
        "Dimensions.Attributes.d.Values must hold 1 ISO 8601 instant for AFTER",
    ),
    (
        dims(Attributes={"d": {"AttributeType": "BETWEEN", "Values": ["2026-01-01T00:00:00Z"]}}),
        "Dimensions.Attributes.d.Values must hold 2 ISO 8601 instants for BETWEEN",
    ),
    (
        dims(
            Attributes={
                "d": {
                    "AttributeType": "NOT_BETWEEN",
                    "Values": ["2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z"],
                }
            }
        ),
        "Dimensions.Attributes.d.Values[0] must not be after Dimensions.Attributes.d.Values[1]",
    ),
    (dims(Metrics={"m": {"Value": 1}}), "Dimensions.Metrics.m.ComparisonOperator is required"),
    (dims(Metrics={"m": {"ComparisonOperator": "EQUAL"}}), "Dimensions.Metrics.m.Value is required"),
    (
        dims(Metrics={"m": {"ComparisonOperator": "ABOUT", "Value": 1}}),
        "Dimensions.Metrics.m.ComparisonOperator must be one of EQUAL, GREATER_THAN",
    ),
    (
        dims(Metrics={"m": {"ComparisonOperator": "EQUAL", "Value": True}}),
        "Dimensions.Metrics.m.Value must be a finite number",
    ),
    ({"SegmentGroups": []}, "SegmentGroups must be an object"),
    ({"SegmentGroups": {"Include": "SOME"}}, "SegmentGroups.Include must be one of ALL, ANY, NONE"),
    ({"SegmentGroups": {"Groups": [{}] * 6}}, "SegmentGroups.Groups has 6 items; at most 5"),
    (group(Type="EVERY"), "SegmentGroups.Groups[0].Type must be one of ALL, ANY, NONE"),
    (group(SourceType="EVERY"), "SegmentGroups.Groups[0].SourceType must be one of"),
    (group(Dimensions=[{}] * 11), "SegmentGroups.Groups[0].Dimensions has 11 items; at most 10"),
    (
        group(Dimensions=[{"Demographic": {"Platform": {}}}]),
        "SegmentGroups.Groups[0].Dimensions[0].Demographic.Platform.Values is required",
    ),
    (group(SourceSegments=[{"Id": f"s{i}"} for i in range(11)]), "SourceSegments has 11 items; at most 10"),
    (group(SourceSegments=[{"Version": 1}]), "SegmentGroups.Groups[0].SourceSegments[0].Id is required"),
    (
        group(SourceSegments=[{"Id": "s", "Version": 0}]),
        "SegmentGroups.Groups[0].SourceSegments[0].Version must be a whole number of at least 1",
    ),
    (
        {
            "SegmentGroups": {
                "Groups": [
                    {"Dimensions": [{"Attributes": {f"a{i}": SET for i in range(50)}}] * 10} for _ in range(2)
                ]
            }
        },
        "SegmentGroups holds 1000 criteria; at most 500",
    ),
]


@pytest.mark.parametrize(("body", "message"), INVALID, ids=[m for _, m in INVALID])
def test_an_invalid_definition_is_a_400_naming_its_member(body: Any, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        definitions.write_segment(body)
    assert message in str(caught.value), str(caught.value)


def test_the_shown_form_fills_in_defaults_and_reads_back_the_same() -> None:
    body = dims(
        Demographic={"Platform": SET, "DeviceType": {"Values": ["phone"], "DimensionType": "EXCLUSIVE"}},
        Location={"Country": SET, "GPSPoint": GPS},
        Behavior={"Recency": RECENCY},
        Attributes={"plan": SET},
        UserAttributes={"d": {"AttributeType": "ON", "Values": ["2026-01-01T10:00:00Z"]}},
        Metrics={"m": {"ComparisonOperator": "EQUAL", "Value": 2}},
    )
    parsed = definitions.write_segment(body)
    shown = parsed.shown["Dimensions"]
    assert shown["Demographic"]["Platform"] == {"DimensionType": "INCLUSIVE", "Values": ["x"]}
    assert shown["Location"]["GPSPoint"]["RangeInKilometers"] == values.DEFAULT_RANGE_KM
    assert shown["Attributes"]["plan"]["AttributeType"] == "INCLUSIVE"
    assert definitions.definition(parsed.shown) == parsed.definition
    grouped = definitions.write_segment(group(SourceSegments=[{"Id": "s"}]))
    assert grouped.shown["SegmentGroups"] == {
        "Groups": [{"Dimensions": [], "SourceSegments": [{"Id": "s"}], "SourceType": "ALL", "Type": "ALL"}],
        "Include": "ALL",
    }


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.5Z", 500_000),
        ("1969-12-31T23:59:59.999999Z", -1),
        ("2024-02-29T12:00:00Z", 1_709_208_000_000_000),
        ("2023-02-29T12:00:00Z", None),
        ("2026-01-01T24:00:00Z", None),
        ("2026-01-01T10:00:60Z", None),
        ("2026-01-01T10:00:00", None),
        ("2026-01-01T10:00:00+00:00", None),
        ("2026-01-01T10:00:00.1234567Z", None),
        ("\uff12\uff10\uff12\uff16-01-01T10:00:00Z", None),  # full-width digits
    ],
)
def test_an_instant_is_iso_instant_or_nothing(text: str, micros: int | None) -> None:
    assert values.instant_us(text) == micros


# The semantics, case by case (the property test compares the store with
# the evaluator; these pin the evaluator to what the module says).

NOW = 1_000 * 86_400_000
PLAIN = Endpoint("plain", {}, None)
FULL = Endpoint(
    "full",
    {
        "ChannelType": "APNS",
        "Demographic": {"Platform": "iOS"},
        "Location": {"Country": "DE", "Latitude": 52.5, "Longitude": 13.4},
        "Attributes": {
            "plan": ["pro", "beta"],
            "signup": ["2026-01-01T10:00:00Z", "junk"],
            "renewal": ["2026-03-01T00:00:00Z"],
        },
        "User": {"UserAttributes": {"tier": ["gold"]}},
        "Metrics": {"score": 2.0},
    },
    NOW - 7 * 86_400_000,
)
CASES: list[tuple[dict[str, Any], set[str]]] = [
    (dims(), {"plain", "full"}),
    ({}, {"plain", "full"}),
    (dims(Demographic={"Platform": {"Values": ["iOS"]}}), {"full"}),
    (dims(Demographic={"Platform": {"Values": ["ios"]}}), set()),
    (dims(Demographic={"Platform": {"Values": ["iOS"], "DimensionType": "EXCLUSIVE"}}), {"plain"}),
    (dims(Demographic={"Channel": {"Values": ["APNS", "GCM"]}}), {"full"}),
    (dims(Demographic={"DeviceType": {"Values": ["PHONE"]}}), set()),
    (
        dims(Demographic={"DeviceType": {"Values": ["PHONE"], "DimensionType": "EXCLUSIVE"}}),
        {"plain", "full"},
    ),
    (dims(Location={"Country": {"Values": ["DE"]}}), {"full"}),
    # Berlin to Potsdam is about 27 km.
    (
        dims(
            Location={
                "GPSPoint": {"Coordinates": {"Latitude": 52.4, "Longitude": 13.06}, "RangeInKilometers": 30}
            }
        ),
        {"full"},
    ),
    (
        dims(
            Location={
                "GPSPoint": {"Coordinates": {"Latitude": 52.4, "Longitude": 13.06}, "RangeInKilometers": 20}
            }
        ),
        set(),
    ),
    # The start of the window is in it.
    (dims(Behavior={"Recency": {"Duration": "DAY_7", "RecencyType": "ACTIVE"}}), {"full"}),
    (dims(Behavior={"Recency": {"Duration": "DAY_7", "RecencyType": "INACTIVE"}}), {"plain"}),
    (dims(Behavior={"Recency": {"Duration": "HR_24", "RecencyType": "INACTIVE"}}), {"plain", "full"}),
    (dims(Attributes={"plan": {"Values": ["beta"]}}), {"full"}),
    (dims(Attributes={"plan": {"Values": ["beta"], "AttributeType": "EXCLUSIVE"}}), {"plain"}),
    (dims(Attributes={"plan": {"Values": ["nope"], "AttributeType": "EXCLUSIVE"}}), {"plain", "full"}),
    (dims(Attributes={"plan": {"Values": ["et"], "AttributeType": "CONTAINS"}}), {"full"}),
    (dims(Attributes={"signup": {"Values": ["2026-01-01T10:00:00Z"], "AttributeType": "BEFORE"}}), set()),
    (
        dims(Attributes={"signup": {"Values": ["2026-01-01T10:00:00.000001Z"], "AttributeType": "BEFORE"}}),
        {"full"},
    ),
    (dims(Attributes={"signup": {"Values": ["2026-01-01T09:59:59Z"], "AttributeType": "AFTER"}}), {"full"}),
    (dims(Attributes={"signup": {"Values": ["2026-01-01T23:59:59Z"], "AttributeType": "ON"}}), {"full"}),
    (dims(Attributes={"signup": {"Values": ["2026-01-02T00:00:00Z"], "AttributeType": "ON"}}), set()),
    # The next midnight is the next day.
    (dims(Attributes={"renewal": {"Values": ["2026-02-28T12:00:00Z"], "AttributeType": "ON"}}), set()),
    (dims(Attributes={"renewal": {"Values": ["2026-03-01T12:00:00Z"], "AttributeType": "ON"}}), {"full"}),
    (
        dims(Attributes={"signup": {"Values": ["2026-01-01T10:00:00Z"] * 2, "AttributeType": "BETWEEN"}}),
        {"full"},
    ),
    (
        dims(Attributes={"signup": {"Values": ["2026-01-01T10:00:00Z"] * 2, "AttributeType": "NOT_BETWEEN"}}),
        set(),
    ),
    (dims(UserAttributes={"tier": {"Values": ["gold"]}}), {"full"}),
    (dims(Metrics={"score": {"ComparisonOperator": "GREATER_THAN_OR_EQUAL", "Value": 2}}), {"full"}),
    (dims(Metrics={"score": {"ComparisonOperator": "GREATER_THAN", "Value": 2}}), set()),
    (dims(Metrics={"score": {"ComparisonOperator": "LESS_THAN", "Value": 3}}), {"full"}),
    # Groups: sources (none here) then dimensions by Type; groups by Include.
    (group(Dimensions=[dims(Demographic={"Platform": SET})["Dimensions"]], Type="NONE"), {"plain", "full"}),
    (
        group(Dimensions=[{"Demographic": {"Platform": {"Values": ["iOS"]}}}, {"Metrics": {}}], Type="ANY"),
        {"plain", "full"},
    ),
    (group(Dimensions=[{"Demographic": {"Platform": {"Values": ["iOS"]}}}], Type="NONE"), {"plain"}),
    (
        {
            "SegmentGroups": {
                "Groups": [{"Dimensions": [{"Location": {"Country": {"Values": ["DE"]}}}]}] * 2,
                "Include": "NONE",
            }
        },
        {"plain"},
    ),
    (group(SourceSegments=[{"Id": "gone"}]), set()),
    (group(SourceSegments=[{"Id": "gone"}], SourceType="NONE"), {"plain", "full"}),
]


@pytest.mark.parametrize(("body", "selected"), CASES, ids=[str(b) for b, _ in CASES])
def test_what_each_criterion_selects(body: dict[str, Any], selected: set[str]) -> None:
    parsed = definitions.write_segment(body).definition
    found = {e.id for e in (PLAIN, FULL) if evaluate.matches(parsed, e, NOW, {})}
    assert found == selected
