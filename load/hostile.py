"""Requests for ``python -m load fuzz``: every operation the edge routes, each
valid or mutated into something hostile, from a seed. Pure.

A :class:`Case` is one request as it goes on the wire: the raw path and query
string (percent-encoding, dot segments and all, as sent), the body bytes, the
content type and how it is signed. Hostile, but HTTP: the request target is
printable ASCII, as every client writes it (the HTTP client cannot write a raw
byte above 0x7f there; the edge's server answers one 400
``BadRequestException``, tests/test_server.py; the fuzzer sends its UTF-8
percent-escapes instead).
:class:`Cases` makes them one after another, deterministic given the seed,
the apps and ``now_ms``.

Bodies start as a valid request of their operation (PutEvents batches and
endpoint profiles from :mod:`load.traffic`) and are then, often, mutated: a
node's type swapped, numbers too large for any type (``1e999``, 2**64,
``-0``), nesting deeper than any parser's limit, long or strange strings
(NUL, control characters, lone surrogates, bidi and combining marks),
duplicate keys, truncated text, invalid UTF-8, an empty body, arrays near the
body limit. The JSON text is written here rather than by a JSON library, so
it can be anything a client could send.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from load.traffic import Traffic

Signing = Literal[
    "good", "none", "bad-signature", "unknown-key", "garbage-header", "stale-date", "bad-token", "temporary"
]
MAX_BODY_BYTES = 4 * 1024 * 1024  # the edge's default limit (Pinpoint's); giant bodies stay below it
GIANT_BODY_BYTES = 3 * 1024 * 1024
# Deeper than orjson's (1024) and CPython json's recursion limits.
DEEP_NESTING = 5000
LONG_STRING_CHARS = 70_000
LONG_SEGMENT_CHARS = 8000


@dataclass(frozen=True, slots=True)
class Case:
    """One request. ``path`` and ``query`` are sent byte for byte (already
    percent-encoded, or not, as the case wants)."""

    index: int
    operation: str
    kind: str  # "valid", or the mutations applied, "+"-joined
    method: str
    path: str
    query: str
    body: bytes
    content_type: str | None
    signing: Signing
    headers: tuple[tuple[str, str], ...] = ()


class Raw:
    """JSON text written as is (a number no type holds, broken nesting)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class Pairs:
    """A JSON object written from its members in order, duplicates kept."""

    __slots__ = ("members",)

    def __init__(self, members: list[tuple[str, Any]]) -> None:
        self.members = members


def dump(value: Any, *, ascii_only: bool = True) -> str:
    """JSON text of ``value``, which may hold :class:`Raw` and :class:`Pairs`
    and strings with lone surrogates (escaped, or, with ``ascii_only`` off,
    left for the encoder to write as they come)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only)
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)  # json, not orjson: integers beyond 64 bits, inf as Infinity
    if isinstance(value, dict):
        value = Pairs(list(value.items()))
    if isinstance(value, Pairs):
        inner = ",".join(
            f"{dump(k, ascii_only=ascii_only)}:{dump(v, ascii_only=ascii_only)}" for k, v in value.members
        )
        return "{" + inner + "}"
    return "[" + ",".join(dump(v, ascii_only=ascii_only) for v in value) + "]"


NUMBERS = (
    "1e999", "-1e999", "1E400", "-0", "0.0000000000000000000000001e-400", "18446744073709551616",
    "-9223372036854775809", "9" * 400, "1.7976931348623157e309", "NaN", "Infinity", "-Infinity",
    "0x10", "01", "1.", ".5", "+1", "1e", "--1",
)  # fmt: skip
STRINGS = (
    "", " ", "\x00", "a\x00b", "\x01\x02\x1f\x7f", "\ud800", "\udfff", "a\udc00b", "\ufeff",
    "\u202e\u2066rtl", "e\u0301\u0301\u0301", "\U0001f600" * 50, "\uffff", "\u2028\u2029",
    "null", "true", "0", "-1",
    "../../etc/passwd", "%00", "%2F", "${jndi:ldap://x}", "'; DROP TABLE apps; --", "<script>", "\\",
    "2026-02-30T25:61:61Z", "9999-12-31T23:59:59.999Z", "0001-01-01T00:00:00Z", "-infinity", "A" * 51,
    "A" * 201, "\u00e9" * 101,
)  # fmt: skip
OTHER_TYPES: tuple[Any, ...] = (None, True, False, 0, -1, 1.5, [], {}, [None], {"": None}, "x", [[[]]])
CONTENT_TYPES = (
    None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=utf-16",
    "multipart/form-data; boundary=x", "application/x-amz-json-1.1", "application/xml", "*/*",
    "application/json;;;", "application/" + "j" * 2000,
)  # fmt: skip
# Methods llhttp parses (others are refused 400 by the server, tests/test_server.py).
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "PURGE")
KPIS = (
    "daily-active-endpoints", "daily-active-users", "monthly-active-endpoints", "new-endpoints",
    "sessions-grouped-by-date", "revenue-grouped-by-date", "paying-users", "events-grouped-by-event-type",
    "email-open-rate", "successful-delivery-rate", "no-such-kpi",
)  # fmt: skip
COGNITO = ("GetId", "GetCredentialsForIdentity", "GetOpenIdToken", "", "getid", "GetId%00")
STRAY_PATHS = (
    "/v1/tags/arn%3Aaws%3Amobiletargeting%3Aus-east-1%3A1%3Aapps%2Fx", "/v1/apps/{app}/segments",
    "/v1/apps/{app}/eventstream", "/v1/apps/{app}/settings", "/healthz", "/readyz", "/metrics", "/v2/apps",
    "/v1/apps/{app}/events/extra", "/v1/apps/{app}/endpoints/", "//v1//apps", "/v1/apps/{app}/users/",
    "/%", "/v1/apps/%ZZ/events", "/v1/apps/%ff%fe/events", "/v1/apps/%C0%AF/endpoints/x",
)  # fmt: skip
# Operation → share of the cases (whole numbers, summed to 100).
WEIGHTS = {
    "PutEvents": 28, "UpdateEndpoint": 10, "UpdateEndpointsBatch": 6, "GetEndpoint": 7, "DeleteEndpoint": 3,
    "GetUserEndpoints": 5, "DeleteUserEndpoints": 2, "CreateApp": 3, "GetApp": 4, "GetApps": 4,
    "DeleteApp": 2, "GetApplicationDateRangeKpi": 8, "GetCampaignDateRangeKpi": 3,
    "GetJourneyDateRangeKpi": 3, "CognitoIdentity": 7, "Unrouted": 5,
}  # fmt: skip


class Cases:
    """An endless, seeded stream of cases against ``app_id`` (never deleted:
    DeleteApp goes to ``victims`` and to IDs that do not exist)."""

    def __init__(
        self,
        *,
        seed: int,
        app_id: str,
        victims: tuple[str, ...] = (),
        pool_id: str | None = None,
        identity_id: str | None = None,
        now_ms: int,
    ) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - repeatable cases, not secrets
        self._app = app_id
        self._victims = victims
        self._pool = pool_id or "us-east-1:00000000-0000-4000-8000-000000000000"
        self._identity = identity_id or "us-east-1:11111111-1111-4111-8111-111111111111"
        self._now_ms = now_ms
        self._traffic = Traffic(seed=seed, run_id="fuzz", endpoints=200, batch_size=20, profile="mixed")
        self._operations = list(WEIGHTS)
        self._weights = list(WEIGHTS.values())
        self._index = 0

    def __iter__(self) -> Cases:
        return self

    def __next__(self) -> Case:
        rng = self._rng
        operation = rng.choices(self._operations, self._weights)[0]
        method, path, query, value, headers = self._valid(operation)
        kinds: list[str] = []
        body = b"" if value is None else dump(value).encode()
        if value is not None and rng.random() < 0.45:
            body, kind = self._mutated_body(value)
            kinds.append(kind)
        elif value is None and rng.random() < 0.05:
            body, kinds = b'{"unexpected": "body"}', ["body-on-bodiless"]
        if rng.random() < 0.12:
            path = self._mutated_path(path)
            kinds.append("path")
        if rng.random() < 0.12:
            query = self._mutated_query(query)
            kinds.append("query")
        if rng.random() < 0.03:
            method = rng.choice(METHODS)
            kinds.append("method")
        if method == "DELETE" and path.strip("/") == f"v1/apps/{self._app}":
            method = "GET"  # a swapped method never deletes the run's own app
        content_type: str | None = "application/json" if body else None
        if operation == "CognitoIdentity" and body:
            content_type = "application/x-amz-json-1.1"
        if rng.random() < 0.08:
            content_type = rng.choice(CONTENT_TYPES)
            kinds.append("content-type")
        signing: Signing = "none" if operation == "CognitoIdentity" else "good"
        if rng.random() < 0.12:
            signing = rng.choice(
                (
                    "none",
                    "bad-signature",
                    "unknown-key",
                    "garbage-header",
                    "stale-date",
                    "bad-token",
                    "temporary",
                )
            )
            kinds.append(f"sign-{signing}")
        self._index += 1
        return Case(
            index=self._index - 1,
            operation=operation,
            kind="+".join(kinds) or "valid",
            method=method,
            path=path,
            query=query,
            body=body,
            content_type=content_type,
            signing=signing,
            headers=headers,
        )

    # --- valid requests ------------------------------------------------------

    def _app_for_write(self) -> str:
        # Mostly the run's app; sometimes one being deleted under the writes.
        if self._victims and self._rng.random() < 0.1:
            return self._rng.choice(self._victims)
        return self._app

    def _endpoint_id(self) -> str:
        return quote(self._rng.choice(self._traffic.devices).endpoint_id, safe="")

    def _valid(self, operation: str) -> tuple[str, str, str, Any, tuple[tuple[str, str], ...]]:
        """(method, path, query, JSON value or None, extra headers) of a valid ``operation``."""
        rng = self._rng
        app = self._app_for_write()
        base = f"/v1/apps/{app}"
        if operation == "PutEvents":
            batch = self._traffic.next_batch(self._now_ms + self._index)
            return "POST", f"{base}/events", "", json.loads(batch.body()), ()
        if operation == "UpdateEndpoint":
            device = rng.choice(self._traffic.devices)
            return (
                "PUT",
                f"{base}/endpoints/{quote(device.endpoint_id, safe='')}",
                "",
                device.profile_body,
                (),
            )
        if operation == "UpdateEndpointsBatch":
            items = [
                d.profile_body | {"Id": d.endpoint_id}
                for d in rng.sample(self._traffic.devices, rng.randint(1, 10))
            ]
            return "PUT", f"{base}/endpoints", "", {"Item": items}, ()
        if operation in ("GetEndpoint", "DeleteEndpoint"):
            method = "GET" if operation == "GetEndpoint" else "DELETE"
            return method, f"{base}/endpoints/{self._endpoint_id()}", "", None, ()
        if operation in ("GetUserEndpoints", "DeleteUserEndpoints"):
            method = "GET" if operation == "GetUserEndpoints" else "DELETE"
            user = quote(rng.choice(self._traffic.devices).user_id, safe="")
            return method, f"{base}/users/{user}", "", None, ()
        if operation == "CreateApp":
            tags = {f"k{i}": "v" * rng.randint(0, 20) for i in range(rng.randint(0, 5))}
            return "POST", "/v1/apps", "", {"Name": f"fuzz-{rng.getrandbits(32):08x}", "tags": tags}, ()
        if operation == "GetApp":
            return "GET", f"/v1/apps/{rng.choice((self._app, f'{rng.getrandbits(128):032x}'))}", "", None, ()
        if operation == "GetApps":
            return "GET", "/v1/apps", rng.choice(("", "page-size=2", "page-size=1000", "token=0")), None, ()
        if operation == "DeleteApp":
            target = rng.choice((*self._victims, f"{rng.getrandbits(128):032x}"))
            return "DELETE", f"/v1/apps/{target}", "", None, ()
        if operation.endswith("DateRangeKpi"):
            middle = {"GetCampaignDateRangeKpi": "/campaigns/c1", "GetJourneyDateRangeKpi": "/journeys/j1"}
            path = f"/v1/apps/{self._app}{middle.get(operation, '')}/kpis/daterange/{rng.choice(KPIS)}"
            query = rng.choice(
                ("", "start-time=2026-01-01T00%3A00%3A00Z&end-time=2026-01-31T00%3A00%3A00Z", "page-size=10")
            )
            return "GET", path, query, None, ()
        if operation == "CognitoIdentity":
            target = rng.choice(COGNITO)
            body = {"IdentityPoolId": self._pool} if target == "GetId" else {"IdentityId": self._identity}
            return "POST", "/", "", body, (("X-Amz-Target", f"AWSCognitoIdentityService.{target}"),)
        stray = rng.choice(STRAY_PATHS).replace("{app}", self._app)
        return rng.choice(("GET", "POST", "PUT", "DELETE")), stray, "", None, ()

    # --- mutations -------------------------------------------------------------

    def _mutated_body(self, value: Any) -> tuple[bytes, str]:
        """(body, which mutation)."""
        rng = self._rng
        kind = rng.choice(
            (
                "type", "type", "number", "number", "deep", "string", "string", "key", "duplicate",
                "truncated", "empty", "not-json", "invalid-utf8", "raw-surrogate", "giant", "drop", "scalar",
            )
        )  # fmt: skip
        if kind == "empty":
            return b"", kind
        if kind == "not-json":
            return rng.choice(
                (b"not json", b"{", b"]", b"\x00", b"{'a': 1}", b"[]", b"null", b"\xef\xbb\xbf{}")
            ), kind
        if kind == "scalar":
            return dump(rng.choice(OTHER_TYPES)).encode(), kind
        if kind == "giant":
            return self._giant(), kind
        text = dump(value).encode()
        if kind == "truncated":
            return text[: rng.randrange(max(1, len(text)))], kind
        if kind == "invalid-utf8":
            at = rng.randrange(max(1, len(text)))
            return text[:at] + rng.choice((b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80")) + text[at:], kind
        mutated = self._mutate_node(value, kind)
        if kind == "raw-surrogate":
            # A lone surrogate written raw, not escaped: not UTF-8 at all.
            return dump(mutated, ascii_only=False).encode("utf-8", "surrogatepass"), kind
        return dump(mutated).encode("utf-8", "surrogatepass"), kind

    def _giant(self) -> bytes:
        rng = self._rng
        size = rng.randint(GIANT_BODY_BYTES // 4, GIANT_BODY_BYTES)
        if rng.random() < 0.5:
            items = ",".join(["0"] * (size // 2))
            return ('{"BatchItem": [' + items + "]}").encode()
        event = '{"EventType":"e","Timestamp":"2026-01-01T00:00:00Z"}'
        count = size // (len(event) + 8)
        events = ",".join(f'"e{i}":{event}' for i in range(count))
        return ('{"BatchItem":{"x":{"Endpoint":{},"Events":{' + events + "}}}}").encode()

    def _mutate_node(self, value: Any, kind: str) -> Any:
        """``value`` with one node, chosen along a random path, replaced or altered."""
        rng = self._rng
        if isinstance(value, dict) and value and rng.random() < 0.8:
            key = rng.choice(list(value))
            if kind == "key" and rng.random() < 0.5:
                new_key = rng.choice((*STRINGS, "k" * LONG_SEGMENT_CHARS))
                return {k if k != key else new_key: v for k, v in value.items()}
            if kind == "duplicate" and rng.random() < 0.4:
                return Pairs([*value.items(), (key, self._replacement("type"))])
            if kind == "drop" and rng.random() < 0.4:
                return {k: v for k, v in value.items() if k != key}
            return value | {key: self._mutate_node(value[key], kind)}
        if isinstance(value, list) and value and rng.random() < 0.8:
            at = rng.randrange(len(value))
            return [*value[:at], self._mutate_node(value[at], kind), *value[at + 1 :]]
        return self._replacement(kind)

    def _replacement(self, kind: str) -> Any:
        rng = self._rng
        if kind == "number":
            return Raw(rng.choice(NUMBERS))
        if kind == "deep":
            depth = rng.choice((100, 1000, 1025, DEEP_NESTING))
            opening, closing = rng.choice((("[", "]"), ('{"a":', "}")))
            return Raw(opening * depth + "1" + closing * depth)
        if kind in ("string", "raw-surrogate"):
            if rng.random() < 0.1:
                return rng.choice(STRINGS[:6]) * LONG_STRING_CHARS
            return rng.choice(STRINGS)
        return rng.choice(OTHER_TYPES)

    def _mutated_path(self, path: str) -> str:
        rng = self._rng
        segments = path.split("/")
        at = rng.randrange(1, len(segments)) if len(segments) > 1 else 0
        hostile = rng.choice(
            (
                "..", ".", "", "%2e%2e", "%2E", "%2F", "a%2Fb", "%00", "%ff", "%", "%zz", "%u0041",
                "x" * LONG_SEGMENT_CHARS, "%41" * (LONG_SEGMENT_CHARS // 3), "%C3%A9", "%ED%A0%80",
                "%EF%BF%BF", "%20", "+", ";a=b", "a?b", "{app}", "%7Bapp%7D",
            )
        )  # fmt: skip
        mode = rng.random()
        if mode < 0.5:
            segments[at] = hostile
        elif mode < 0.8:
            segments.insert(at, hostile)
        else:
            segments[at] = segments[at] + hostile
        result = "/".join(segments)
        return result if rng.random() < 0.9 else result + rng.choice(("/", "//", "/.", "#frag"))

    def _mutated_query(self, query: str) -> str:
        rng = self._rng
        extra = rng.choice(
            (
                "start-time=garbage", "end-time=1e999", "start-time=9999-12-31T23%3A59%3A59Z",
                "start-time=0001-01-01T00%3A00%3A00%2B14%3A00", "end-time=2026-01-01&end-time=2025-01-01",
                "page-size=-1", "page-size=0", "page-size=99999999999999999999", "page-size=1e999",
                "page-size=%00", "token=%ff%fe", "token=" + "t" * LONG_SEGMENT_CHARS, "next-token=%C3%A9",
                "X-Amz-Credential=AKIA%2F20260101%2Fus-east-1%2Fmobiletargeting%2Faws4_request",
                "X-Amz-Signature=00", "X-Amz-Algorithm=AWS4-HMAC-SHA256", "a", "=", "&&&", "%", "a=%zz",
                "a=b=c", ";", "a[]=1&a[]=2", "%C3%A9=%C3%A9", "%ED%A0%80=1",
            )
        )  # fmt: skip
        return f"{query}&{extra}" if query and rng.random() < 0.6 else extra
