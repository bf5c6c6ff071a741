"""ingest.api.sigv4.Verifier: requests signed by botocore's own SigV4Auth (the
signer boto3 users have) verify; each tampered part is refused with the error
type and text AWS answers; nothing but an AuthError ever comes out.

The signed cases follow the names of the AWS SigV4 test suite (get-vanilla,
get-utf8, post-header-value-trim, …) with our own requests; one published
vector (get-vanilla) is checked byte for byte."""

from __future__ import annotations

import calendar
import datetime
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.utils import percent_encode_sequence
from hypothesis import given
from hypothesis import strategies as st

from ingest.api import sigv4
from ingest.api.sigv4 import Verifier, canonical_query, canonical_uri
from ingest.errors import (
    AuthError,
    IncompleteSignature,
    InvalidSignature,
    MissingAuthenticationToken,
    UnrecognizedClient,
)

KEY = "AKIAIOSFODNN7TESTKEY"
SECRET = "c2VjcmV0IGtleSBmb3IgdGVzdHMgb25seQ/ab+cdEXAMPLE"
TOKEN = "session-token-for-tests"
NOW = "20260314T092653Z"
MISMATCH = InvalidSignature.MESSAGE


def epoch(stamp: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ")))


@dataclass(frozen=True)
class Signed:
    """One request as the edge receives it."""

    method: str
    raw_path: bytes
    query_string: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes, value: bytes | None) -> Signed:
        """With ``name`` replaced by ``value`` (or removed, for None)."""
        kept = tuple((n, v) for n, v in self.headers if n.lower() != name)
        return replace(self, headers=kept if value is None else (*kept, (name, value)))


def sign(
    method: str,
    url: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    params: dict[str, Any] | None = None,
    token: str | None = None,
    region: str = "us-east-1",
    service: str = "mobiletargeting",
    at: str = NOW,
    auth: type[SigV4Auth] = SigV4Auth,
) -> Signed:
    """Signs with botocore's SigV4Auth at ``at``; the query from ``params`` is
    encoded into the URL as botocore's clients do (``prepare_request_dict``),
    and the Host header is the URL's (as the HTTP layer sends it)."""
    if params:
        url += ("&" if "?" in url else "?") + percent_encode_sequence(params)
    request = AWSRequest(method=method, url=url, data=body)
    for name, value in headers or []:
        request.headers[name] = value  # HTTPHeaders: a second value adds, as on the wire
    moment = datetime.datetime.fromtimestamp(epoch(at), datetime.UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
        auth(Credentials(KEY, SECRET, token), service, region).add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    wire = [(b"host", parts.netloc.encode())]
    for name, value in request.headers.items():  # all values (the prepared request keeps one)
        wire.append((name.encode(), value if isinstance(value, bytes) else value.encode()))
    return Signed(method, parts.path.encode(), parts.query.encode(), tuple(wire), body)


class Keys:
    """The lookup: one key, its token, and what it was asked."""

    def __init__(self, secret: str = SECRET, token: str | None = None) -> None:
        self.secret = secret
        self.token = token
        self.asked: list[tuple[str, str | None]] = []

    def __call__(self, access_key_id: str, session_token: str | None) -> tuple[str, str] | None:
        self.asked.append((access_key_id, session_token))
        if access_key_id != KEY or session_token != self.token:
            return None
        return self.secret, f"principal:{access_key_id}"


def verifier(
    keys: Callable[[str, str | None], tuple[str, str] | None] | None = None, now: str = NOW, **kw: Any
) -> Verifier[str]:
    return Verifier(keys or Keys(), max_skew_s=900, now_s=lambda: epoch(now), **kw)


def verify(request: Signed, v: Verifier[str] | None = None) -> str:
    return (v or verifier()).verify(
        method=request.method,
        raw_path=request.raw_path,
        query_string=request.query_string,
        headers=request.headers,
        body=request.body,
    )


def refused(request: Signed, v: Verifier[str] | None = None) -> AuthError:
    with pytest.raises(AuthError) as caught:
        verify(request, v)
    return caught.value


# --- The published vector ------------------------------------------------------


def test_the_published_get_vanilla_example_verifies_for_its_service() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    v = Verifier(
        lambda key, token: (secret, "example") if key == "AKIDEXAMPLE" else None,
        max_skew_s=900,
        now_s=lambda: epoch("20150830T123600Z"),
        service="service",
    )
    authorization = (
        b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        b"SignedHeaders=host;x-amz-date, "
        b"Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )
    headers = [(b"host", b"example.amazonaws.com"), (b"x-amz-date", b"20150830T123600Z")]
    request = Signed("GET", b"/", b"", (*headers, (b"authorization", authorization)), b"")
    assert verify(request, v) == "example"
    # The same request for our default service is scoped wrongly.
    with pytest.raises(
        InvalidSignature, match="Credential should be scoped to correct service: 'mobiletargeting'"
    ):
        verify(request, Verifier(v._lookup, max_skew_s=900, now_s=lambda: epoch("20150830T123600Z")))


# --- Signed by botocore: every case verifies ------------------------------------

HOST = "http://127.0.0.1:8080"
CASES: dict[str, Callable[[], Signed]] = {
    "get-vanilla": lambda: sign("GET", f"{HOST}/"),
    "get-vanilla-empty-query-key": lambda: sign("GET", f"{HOST}/?Param1=value1"),
    "get-vanilla-query-order-key-case": lambda: sign("GET", f"{HOST}/?Param2=value2&Param1=value1"),
    "get-vanilla-query-order-value": lambda: sign("GET", f"{HOST}/", params={"Param1": ["value2", "Value1"]}),
    "get-vanilla-query-unreserved": lambda: sign(
        "GET",
        f"{HOST}/",
        params={"-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz": "-._~09AZaz"},
    ),
    "get-vanilla-utf8-query": lambda: sign("GET", f"{HOST}/", params={"ሴ": "bar", "a b": "c/d+e"}),
    "get-utf8": lambda: sign("GET", f"{HOST}/ሴ"),
    "get-space": lambda: sign("GET", f"{HOST}/example space/"),
    "get-slashes": lambda: sign("GET", f"{HOST}//example//"),
    "get-relative-relative": lambda: sign("GET", f"{HOST}/example1/example2/../.."),
    "get-header-key-duplicate": lambda: sign(
        "GET", f"{HOST}/", headers=[("My-Header1", "value2"), ("My-Header1", "value1")]
    ),
    "get-header-value-multiline": lambda: sign(
        "GET", f"{HOST}/", headers=[("My-Header1", "value1 ,  value2 , value3")]
    ),
    "post-vanilla": lambda: sign("POST", f"{HOST}/"),
    "post-vanilla-query": lambda: sign("POST", f"{HOST}/?Param1=value1"),
    "post-header-key-case": lambda: sign("POST", f"{HOST}/", headers=[("My-Header1", "value1")]),
    "post-header-key-sort": lambda: sign(
        "POST", f"{HOST}/", headers=[("ZZ-Last", "z"), ("My-Header1", "value1")]
    ),
    "post-header-value-case": lambda: sign("POST", f"{HOST}/", headers=[("My-Header1", "VALUE1")]),
    "post-header-value-trim": lambda: sign(
        "POST", f"{HOST}/", headers=[("My-Header1", "  value1  "), ("My-Header2", '  "a   b   c"  ')]
    ),
    "post-x-www-form-urlencoded": lambda: sign(
        "POST",
        f"{HOST}/",
        headers=[("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
        body=b"Param1=value1",
    ),
    "post-sts-token": lambda: sign("POST", f"{HOST}/", token=TOKEN),
    "post-content-sha256": lambda: sign(
        "POST", f"{HOST}/", headers=[("X-Amz-Content-SHA256", hashlib.sha256(b"{}").hexdigest())], body=b"{}"
    ),
    "any-region": lambda: sign("GET", f"{HOST}/v1/apps", region="eu-central-1"),
    "default-port-host": lambda: sign("GET", "http://localhost/v1/apps"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_botocore_signed_request_verifies(case: str) -> None:
    request = CASES[case]()
    keys = Keys(token=TOKEN if case == "post-sts-token" else None)
    assert verify(request, verifier(keys)) == f"principal:{KEY}"


def test_the_session_token_is_given_to_the_lookup() -> None:
    keys = Keys(token=TOKEN)
    verify(CASES["post-sts-token"](), verifier(keys))
    assert keys.asked == [(KEY, TOKEN)]


def test_header_names_are_matched_whatever_their_case() -> None:
    request = CASES["post-header-key-case"]()
    shouted = replace(request, headers=tuple((name.upper(), value) for name, value in request.headers))
    assert verify(shouted) == f"principal:{KEY}"


class DateHeaderSigV4(SigV4Auth):  # type: ignore[misc]
    """SigV4 dated by the HTTP ``Date`` header instead of X-Amz-Date."""

    def _set_necessary_date_headers(self, request: AWSRequest) -> None:
        request.headers["Date"] = formatdate(epoch(request.context["timestamp"]), usegmt=True)


def test_a_request_dated_by_the_date_header_verifies() -> None:
    request = sign("GET", f"{HOST}/", auth=DateHeaderSigV4)
    assert all(name.lower() != b"x-amz-date" for name, _ in request.headers)
    assert verify(request) == f"principal:{KEY}"


# --- Real Pinpoint requests from boto3, odd IDs included -------------------------


@pytest.fixture(scope="module")
def pinpoint() -> Iterator[tuple[Any, list[AWSRequest]]]:
    """A boto3 pinpoint client whose requests are captured, never sent."""
    sent: list[AWSRequest] = []

    def capture(request: AWSRequest, **_: Any) -> AWSResponse:
        sent.append(request)
        response = AWSResponse(request.url, 202, {"Content-Type": "application/json"}, None)
        response._content = b"{}"
        return response

    client = boto3.session.Session(
        aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="eu-west-1"
    ).client("pinpoint", endpoint_url=HOST, config=Config(retries={"max_attempts": 0}))
    client.meta.events.register("before-send.pinpoint.*", capture)
    yield client, sent


def as_received(request: AWSRequest) -> Signed:
    parts = urlsplit(request.url)
    headers = [(b"host", parts.netloc.encode())]
    headers += [(n.encode(), v if isinstance(v, bytes) else v.encode()) for n, v in request.headers.items()]
    body = request.body if isinstance(request.body, bytes) else (request.body or "").encode()
    return Signed(request.method, parts.path.encode(), parts.query.encode(), tuple(headers), body)


ODD_IDS = ["plain", "a/b", "with space", "100%", "ünïcødé", "日本/語 %2F", "..", "a+b=c&d", "~!*'()"]


@pytest.mark.parametrize("endpoint_id", ODD_IDS)
def test_pinpoint_requests_with_odd_ids_verify(
    pinpoint: tuple[Any, list[AWSRequest]], endpoint_id: str
) -> None:
    client, sent = pinpoint
    client.get_endpoint(ApplicationId="app1", EndpointId=endpoint_id)
    client.update_endpoint(ApplicationId="app1", EndpointId=endpoint_id, EndpointRequest={"Address": "x"})
    client.get_user_endpoints(ApplicationId="app1", UserId=endpoint_id)
    for request in sent[-3:]:
        assert verify(as_received(request), verifier(now=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())))


def test_a_put_events_and_a_kpi_query_verify(pinpoint: tuple[Any, list[AWSRequest]]) -> None:
    client, sent = pinpoint
    client.put_events(
        ApplicationId="app1", EventsRequest={"BatchItem": {"ep/1": {"Endpoint": {}, "Events": {}}}}
    )
    client.get_application_date_range_kpi(
        ApplicationId="app1",
        KpiName="daily-active-endpoints",
        StartTime=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        EndTime=datetime.datetime(2026, 1, 7, tzinfo=datetime.UTC),
        NextToken="a b/c",
    )
    for request in sent[-2:]:
        assert verify(as_received(request), verifier(now=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())))


def test_the_canonical_uri_encodes_the_received_path_once_more() -> None:
    assert canonical_uri(b"/v1/apps/app/endpoints/a%2Fb") == b"/v1/apps/app/endpoints/a%252Fb"
    assert canonical_uri(b"/v1/users/%C3%BC%20x") == b"/v1/users/%25C3%25BC%2520x"
    assert canonical_uri(b"") == b"/"
    assert canonical_uri(b"//a//b/./c/../") == b"/a/b/"
    assert canonical_query(b"b=2&a=%7e&a=1&c") == b"a=1&a=~&b=2&c="


# --- Amplify JS: signed for the Pinpoint host it hard-codes ------------------------


def test_a_request_signed_for_amplifys_hard_coded_host_verifies() -> None:
    signed = sign(
        "POST", "https://pinpoint.eu-west-1.amazonaws.com/v1/apps/app1/events", region="eu-west-1", body=b"{}"
    )
    redirected = signed.header(b"host", b"ingest.example.org:8443")
    assert verify(redirected) == f"principal:{KEY}"
    assert verify(signed.header(b"host", None)) == f"principal:{KEY}"


def test_the_china_partition_host_is_tried_for_its_regions() -> None:
    signed = sign("GET", "https://pinpoint.cn-north-1.amazonaws.com.cn/v1/apps", region="cn-north-1")
    assert verify(signed.header(b"host", b"127.0.0.1:8080")) == f"principal:{KEY}"


def test_a_request_signed_for_another_host_is_refused() -> None:
    signed = sign("POST", "https://elsewhere.example.com/v1/apps/app1/events", body=b"{}")
    error = refused(signed.header(b"host", b"127.0.0.1:8080"))
    assert isinstance(error, InvalidSignature)
    assert (error.message, error.reason) == (MISMATCH, "bad_signature")


# --- Tampering: each part is covered --------------------------------------------------

BASE = sign(
    "POST",
    f"{HOST}/v1/apps/app1/events?x=1",
    headers=[("Content-Type", "application/json")],
    body=b'{"BatchItem": {}}',
)
AUTHORIZATION = dict(BASE.headers)[b"Authorization"]
TAMPERED = {
    "body": replace(BASE, body=b'{"BatchItem": {"x": {}}}'),
    "path": replace(BASE, raw_path=b"/v1/apps/app2/events"),
    "path-encoding": replace(BASE, raw_path=b"/v1/apps/app%31/events"),
    "query": replace(BASE, query_string=b"x=2"),
    "query-added": replace(BASE, query_string=b"x=1&y=2"),
    "method": replace(BASE, method="PUT"),
    "signed-header": BASE.header(b"content-type", b"text/plain"),
    "signed-header-removed": BASE.header(b"content-type", None),
    "date": BASE.header(b"x-amz-date", b"20260314T092654Z"),
    "signature": BASE.header(
        b"authorization", AUTHORIZATION[:-1] + (b"1" if AUTHORIZATION.endswith(b"0") else b"0")
    ),
}


@pytest.mark.parametrize("part", sorted(TAMPERED))
def test_a_tampered_request_is_refused(part: str) -> None:
    error = refused(TAMPERED[part])
    assert type(error) is InvalidSignature
    assert error.status == 403 and error.error_type == "InvalidSignatureException"
    assert (error.message, error.reason) == (MISMATCH, "bad_signature")


def test_the_untampered_base_verifies() -> None:
    assert verify(BASE) == f"principal:{KEY}"


def test_a_wrong_secret_is_refused_as_a_mismatch() -> None:
    error = refused(BASE, verifier(Keys(secret=SECRET + "x")))
    assert type(error) is InvalidSignature and error.message == MISMATCH


def answer(error: AuthError) -> tuple[int, str, str, str]:
    """What the client sees (status, x-amzn-ErrorType, message) and the metric's reason."""
    return error.status, error.error_type, error.message, error.reason


UNRECOGNIZED = (403, "UnrecognizedClientException", "The security token included in the request is invalid.")
UNSIGNED = (403, "MissingAuthenticationTokenException", "Missing Authentication Token")


@pytest.mark.parametrize(
    ("request_", "keys", "expected"),
    [
        (BASE, lambda key, token: None, (UnrecognizedClient, *UNRECOGNIZED, "unknown_key")),
        (BASE.header(b"authorization", None), Keys(), (MissingAuthenticationToken, *UNSIGNED, "missing")),
    ],
    ids=["unknown-key", "unsigned"],
)
def test_an_unknown_key_or_no_signature_is_answered_as_aws_does(
    request_: Signed, keys: Callable[[str, str | None], tuple[str, str] | None], expected: tuple[object, ...]
) -> None:
    error = refused(request_, verifier(keys))
    assert (type(error), *answer(error)) == expected


def test_a_rejected_session_token_is_a_bad_token() -> None:
    request = sign("POST", f"{HOST}/", token="forged")
    error = refused(request, verifier(Keys(token=TOKEN)))
    assert type(error) is UnrecognizedClient and error.reason == "bad_token"


def test_the_lookup_may_refuse_a_token_itself() -> None:
    def expired(key: str, token: str | None) -> tuple[str, str] | None:
        raise UnrecognizedClient(reason="bad_token")

    error = refused(sign("POST", f"{HOST}/", token=TOKEN), verifier(expired))
    assert type(error) is UnrecognizedClient and error.reason == "bad_token"


def test_a_declared_payload_hash_must_be_the_bodys() -> None:
    request = CASES["post-content-sha256"]()
    error = refused(replace(request, body=b"[]"))
    assert type(error) is InvalidSignature
    assert error.message == "The provided 'x-amz-content-sha256' header does not match what was computed."


def test_an_unsigned_payload_is_refused() -> None:
    request = sign("POST", f"{HOST}/", headers=[("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD")], body=b"{}")
    error = refused(request)
    assert type(error) is InvalidSignature and "SHA-256 of the payload" in error.message


# --- Clock skew: AWS's texts, which SDKs key their correction on ----------------------


def test_a_signature_older_than_fifteen_minutes_has_expired() -> None:
    request = sign("GET", f"{HOST}/", at="20260101T000000Z")
    error = refused(request, verifier(now="20260101T003000Z"))
    assert (error.error_type, error.status, error.reason) == ("InvalidSignatureException", 403, "expired")
    assert error.message == (
        "Signature expired: 20260101T000000Z is now earlier than 20260101T001500Z "
        "(20260101T003000Z - 15 min.)"
    )


def test_a_signature_later_than_fifteen_minutes_is_not_yet_current() -> None:
    request = sign("GET", f"{HOST}/", at="20260101T003000Z")
    error = refused(request, verifier(now="20260101T000000Z"))
    assert (error.error_type, error.reason) == ("InvalidSignatureException", "expired")
    assert error.message == (
        "Signature not yet current: 20260101T003000Z is still later than 20260101T001500Z "
        "(20260101T000000Z + 15 min.)"
    )


@pytest.mark.parametrize(
    "now", ["20260101T001459Z", "20260101T001500Z", "20251231T234501Z", "20251231T234500Z"]
)
def test_a_skew_within_fifteen_minutes_is_accepted(now: str) -> None:
    # Signed at 00:00:00 the day after the scope day's eve: both directions.
    request = sign("GET", f"{HOST}/", at="20260101T000000Z")
    assert verify(request, verifier(now=now)) == f"principal:{KEY}"


def test_the_scope_day_must_be_the_dates_day() -> None:
    request = BASE.header(b"x-amz-date", b"20260315T000001Z")
    error = refused(request, verifier(now="20260315T000001Z"))
    assert type(error) is InvalidSignature
    assert error.message == (
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
        "'20260314' != '20260315', from '20260315T000001Z'."
    )


# --- Malformed headers -----------------------------------------------------------------

GOOD = "Credential=AKIAIOSFODNN7TESTKEY/20260314/us-east-1/mobiletargeting/aws4_request"


@pytest.mark.parametrize(
    ("authorization", "error_type", "message"),
    [
        ("Basic dXNlcjpwYXNzd29yZA==", IncompleteSignature, "'Credential' parameter"),
        ("Bearer token", IncompleteSignature, "missing equal-sign"),
        (f"AWS4-HMAC-SHA256 {GOOD}", IncompleteSignature, "requires 'Signature' parameter"),
        (
            f"AWS4-HMAC-SHA512 {GOOD}, SignedHeaders=host, Signature=00",
            IncompleteSignature,
            "Unsupported AWS 'algorithm': 'AWS4-HMAC-SHA512'",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20260314/us-east-1, SignedHeaders=host, Signature=00",
            IncompleteSignature,
            "Credential must have exactly 5 slash-delimited elements",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20260314/us-east-1/mobiletargeting/aws5_request, "
            "SignedHeaders=host, Signature=00",
            InvalidSignature,
            "valid terminator: 'aws4_request', not 'aws5_request'",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20260314/us-east-1/execute-api/aws4_request, "
            "SignedHeaders=host, Signature=00",
            InvalidSignature,
            "Credential should be scoped to correct service: 'mobiletargeting'. ",
        ),
        (
            f"AWS4-HMAC-SHA256 {GOOD}, SignedHeaders=x-amz-date, Signature=00",
            InvalidSignature,
            "'Host' or ':authority' must be a 'SignedHeader'",
        ),
    ],
)
def test_a_malformed_authorization_is_refused_as_aws_does(
    authorization: str, error_type: type[AuthError], message: str
) -> None:
    error = refused(BASE.header(b"authorization", authorization.encode()))
    assert type(error) is error_type and error.status == 403
    assert message in error.message
    assert "Signature=" not in error.message  # never echoed


def test_two_authorization_headers_are_refused() -> None:
    error = refused(replace(BASE, headers=(*BASE.headers, (b"authorization", AUTHORIZATION))))
    assert type(error) is IncompleteSignature


@pytest.mark.parametrize("date", [None, b"2026-03-14T09:26:53Z", b"20261314T092653Z", b"x"])
def test_a_missing_or_malformed_date_is_refused(date: bytes | None) -> None:
    error = refused(BASE.header(b"x-amz-date", date))
    assert type(error) is IncompleteSignature
    assert ("'X-Amz-Date' or a 'Date' header" if date is None else "ISO-8601 'basic format'") in error.message


# --- The signing-key cache ---------------------------------------------------------------


def test_signing_keys_are_cached_only_once_they_verified_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sigv4, "SIGNING_KEYS_MAX", 2)
    v = verifier()
    refused(sign("GET", f"{HOST}/", region="xx-fake-1"), verifier(Keys(secret="wrong")))
    for region in ("us-east-1", "eu-west-1", "ap-south-1"):
        verify(sign("GET", f"{HOST}/", region=region), v)
        verify(sign("GET", f"{HOST}/", region=region), v)
    assert [key[2] for key in v._signing_keys] == ["eu-west-1", "ap-south-1"]
    refused(sign("GET", f"{HOST}/", region="xx-fake-1"), replace_keys(v, "wrong"))
    assert len(v._signing_keys) == 2


def replace_keys(v: Verifier[str], secret: str) -> Verifier[str]:
    v._lookup = Keys(secret=secret)
    return v


# --- Never anything but an AuthError --------------------------------------------------------

NAMES = [
    b"authorization",
    b"x-amz-date",
    b"date",
    b"host",
    b"x-amz-security-token",
    b"x-amz-content-sha256",
    b"x",
]
texts = st.text(max_size=30)


@st.composite
def authorizations(draw: st.DrawFn) -> bytes:
    """Headers close enough to well-formed to reach the later checks."""
    credential = "/".join(
        draw(
            st.lists(
                st.sampled_from([KEY, "20260314", "us-east-1", "mobiletargeting", "aws4_request", ""])
                | texts,
                max_size=6,
            )
        )
    )
    signed = ";".join(
        draw(st.lists(st.sampled_from(["host", "x-amz-date", "x", "content-type"]) | texts, max_size=4))
    )
    parts = [f"Credential={credential}", f"SignedHeaders={signed}", f"Signature={draw(texts)}", draw(texts)]
    algorithm = draw(st.sampled_from(["AWS4-HMAC-SHA256", "AWS4", ""]) | texts)
    return f"{algorithm} {', '.join(draw(st.permutations(parts)))}".encode()


header_values = st.binary(max_size=60) | st.sampled_from(
    [NOW.encode(), b"Sat, 14 Mar 2026 09:26:53 GMT", b""]
)


@given(
    method=st.text(max_size=8),
    raw_path=st.binary(max_size=60),
    query=st.binary(max_size=60),
    headers=st.lists(st.tuples(st.sampled_from(NAMES) | st.binary(max_size=10), header_values), max_size=8),
    authorization=st.none() | authorizations() | st.binary(max_size=120),
    body=st.binary(max_size=40),
    token_ok=st.booleans(),
)
def test_any_input_gives_a_principal_or_an_auth_error(
    method: str,
    raw_path: bytes,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    authorization: bytes | None,
    body: bytes,
    token_ok: bool,
) -> None:
    def lookup(key: str, token: str | None) -> tuple[str, str] | None:
        if token is not None and not token_ok:
            raise UnrecognizedClient(reason="bad_token")
        return SECRET, key

    if authorization is not None:
        headers = [*headers, (b"authorization", authorization)]
    try:
        result = Verifier(lookup, max_skew_s=900, now_s=lambda: epoch(NOW)).verify(
            method=method, raw_path=raw_path, query_string=query, headers=headers, body=body
        )
    except AuthError as error:
        assert error.status == 403 and error.reason in {
            "missing",
            "unknown_key",
            "bad_signature",
            "expired",
            "bad_token",
        }
        json.dumps(error.message)
    else:
        assert isinstance(result, str)


@given(endpoint_id=st.text(min_size=1, max_size=20), query_value=st.text(max_size=20))
def test_any_id_botocore_signs_verifies(endpoint_id: str, query_value: str) -> None:
    # Each label percent-encoded with nothing kept safe, as botocore's serializer does.
    path = "/v1/apps/app/endpoints/" + quote(endpoint_id, safe="")
    request = sign("GET", f"{HOST}{path}", params={"q": query_value, query_value: "v"})
    assert verify(request) == f"principal:{KEY}"
