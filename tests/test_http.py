"""ingest.api.http.Router: routes on the raw path, decoding each segment only
after splitting, because SDKs percent-encode ``/`` inside IDs."""

from __future__ import annotations

import pytest

from ingest.api.apps import page_size
from ingest.api.http import Request, Response, Route, Router
from ingest.errors import BadRequest


async def _handler(request: Request) -> Response:
    raise AssertionError("the router only matches; it never calls a handler")


def _route(pattern: str) -> Route:
    return Route(pattern, {"GET": (pattern, _handler)})


EVENTS = _route("/v1/apps/{app}/events")
ENDPOINT = _route("/v1/apps/{app}/endpoints/{endpoint}")
USER_ENDPOINTS = _route("/v1/apps/{app}/users/{user}")
APP = _route("/v1/apps/{app}")
APPS = _route("/v1/apps")
ROUTER = Router([EVENTS, ENDPOINT, USER_ENDPOINTS, APP, APPS])


@pytest.mark.parametrize(
    ("raw_path", "route", "params"),
    [
        (b"/v1/apps", APPS, {}),
        (b"/v1/apps/", APPS, {}),
        (b"/v1/apps/a1", APP, {"app": "a1"}),
        (b"/v1/apps/a1/events", EVENTS, {"app": "a1"}),
        # A percent-encoded "/" stays inside its segment.
        (b"/v1/apps/a1/endpoints/u%201%2F2", ENDPOINT, {"app": "a1", "endpoint": "u 1/2"}),
        (b"/v1/apps/a1/users/%2F", USER_ENDPOINTS, {"app": "a1", "user": "/"}),
        # UTF-8, percent-encoded or (as some clients send it) raw.
        (b"/v1/apps/a1/endpoints/ger%C3%A4t", ENDPOINT, {"app": "a1", "endpoint": "gerät"}),
        ("/v1/apps/a1/endpoints/gerät".encode(), ENDPOINT, {"app": "a1", "endpoint": "gerät"}),
        # "+" is a literal plus in a path, not a space.
        (b"/v1/apps/a1/users/a+b", USER_ENDPOINTS, {"app": "a1", "user": "a+b"}),
        # A "%" that starts no escape is itself.
        (b"/v1/apps/a1/endpoints/100%", ENDPOINT, {"app": "a1", "endpoint": "100%"}),
        # A placeholder captures a segment spelled like a literal.
        (b"/v1/apps/events/events", EVENTS, {"app": "events"}),
    ],
)
def test_a_path_matches_its_route(raw_path: bytes, route: Route, params: dict[str, str]) -> None:
    assert ROUTER.match(raw_path) == (route, params)


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/",
        b"/v1",
        b"/v2/apps",
        b"/v1/apps/a1/endpoints",  # one segment short
        b"/v1/apps/a1/endpoints/e1/extra",  # one segment long
        b"/v1/apps/a1/endpoints/u/1",  # an unencoded "/" splits the ID
        b"/v1/apps//events",  # an empty segment captures nothing
        b"/v1/apps/a1/endpoints/",  # nor does an empty last one
        b"/v1/apps/a1/Events",  # literals match exactly, case included
        b"/v1/apps/a1/%65vents",  # and undecoded: %65 is "e" only inside an ID
    ],
)
def test_a_path_without_a_route_matches_nothing(raw_path: bytes) -> None:
    assert ROUTER.match(raw_path) is None


@pytest.mark.parametrize("segment", [b"%FF", b"%C3", b"%C3%28", b"%ED%A0%80"])
def test_a_segment_that_is_not_utf8_is_a_bad_request(segment: bytes) -> None:
    with pytest.raises(BadRequest, match="is not UTF-8"):
        ROUTER.match(b"/v1/apps/a1/endpoints/" + segment)


def test_a_literal_mismatch_wins_over_a_bad_segment_after_it() -> None:
    """Segments are compared left to right, so a path that is not this route
    is not refused for an ID it would have carried."""
    assert ROUTER.match(b"/v1/nope/a1/endpoints/%FF") is None


def test_routes_of_the_same_length_are_tried_in_order() -> None:
    literal = _route("/v1/apps/{app}/endpoints/all")
    first = Router([literal, ENDPOINT])
    assert first.match(b"/v1/apps/a1/endpoints/all") == (literal, {"app": "a1"})
    assert first.match(b"/v1/apps/a1/endpoints/e1") == (ENDPOINT, {"app": "a1", "endpoint": "e1"})
    placeholder_first = Router([ENDPOINT, literal])
    assert placeholder_first.match(b"/v1/apps/a1/endpoints/all") == (
        ENDPOINT,
        {"app": "a1", "endpoint": "all"},
    )


def listing(page_size: str | None) -> Request:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    query = {} if page_size is None else {"page-size": [page_size]}
    return Request("GET", {}, query, {}, receive, "r")


@pytest.mark.parametrize(
    ("given", "most", "expected"),
    [
        (None, 1000, 100),
        ("", 1000, 100),
        ("7", 1000, 7),
        ("1000", 1000, 1000),
        (None, 50, 50),
        ("50", 50, 50),
    ],
)
def test_every_listing_reads_page_size_alike(given: str | None, most: int, expected: int) -> None:
    assert page_size(listing(given), most=most) == expected


@pytest.mark.parametrize("given", ["0", "1001", "-1", "+5", " 5", "1_0", "\u0665", "2.0", "x", "9" * 400])
def test_a_page_size_int_would_read_is_refused_unless_plain_digits_in_range(given: str) -> None:
    with pytest.raises(BadRequest, match="page-size must be a whole number 1-1000"):
        page_size(listing(given))
