"""ingest.api.sigv4.credential_scope: who signed, from the Authorization
header or a presigned URL's X-Amz-Credential; None for anything else, and
never an exception, whatever bytes a client sends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.api.sigv4 import CredentialScope, credential_scope

SCOPE = CredentialScope("AKIDEXAMPLE", "20260101", "eu-central-1", "mobiletargeting")
AUTHORIZATION = (
    b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/eu-central-1/mobiletargeting/aws4_request, "
    b"SignedHeaders=host;x-amz-date, Signature=0123456789abcdef"
)


def test_the_scope_comes_from_the_authorization_header() -> None:
    assert credential_scope({b"authorization": AUTHORIZATION}, b"") == SCOPE


def test_the_header_wins_over_the_query() -> None:
    query = b"X-Amz-Credential=OTHER%2F20250101%2Fus-east-1%2Fmobiletargeting%2Faws4_request"
    assert credential_scope({b"authorization": AUTHORIZATION}, query) == SCOPE


def test_the_scope_comes_from_a_presigned_urls_query() -> None:
    query = (
        b"X-Amz-Algorithm=AWS4-HMAC-SHA256"
        b"&X-Amz-Credential=AKIDEXAMPLE%2F20260101%2Feu-central-1%2Fmobiletargeting%2Faws4_request"
        b"&X-Amz-Date=20260101T000000Z&X-Amz-SignedHeaders=host&X-Amz-Signature=abc"
    )
    assert credential_scope({}, query) == SCOPE


def test_the_first_credential_of_a_repeated_query_counts() -> None:
    query = (
        b"X-Amz-Credential=AKIDEXAMPLE/20260101/eu-central-1/mobiletargeting/aws4_request"
        b"&X-Amz-Credential=OTHER/20250101/us-east-1/mobiletargeting/aws4_request"
    )
    assert credential_scope({}, query) == SCOPE


@pytest.mark.parametrize(
    "authorization",
    [
        b"",
        b"Basic dXNlcjpwYXNz",
        b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/eu-central-1/mobiletargeting",
        b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/2026-01-01/eu-central-1/mobiletargeting/aws4_request",
        b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101//mobiletargeting/aws4_request",
        b"AWS4-HMAC-SHA256 Credential=/20260101/eu-central-1/mobiletargeting/aws4_request",
        b"AWS4-HMAC-SHA256 Credential=AKID EXAMPLE/20260101/eu-central-1/mobiletargeting/aws4_request",
        b"\xff\xfe\x00 Credential=\x80/20260101",
    ],
)
def test_a_malformed_authorization_header_has_no_scope(authorization: bytes) -> None:
    # The header is read even when a query carries a credential: it is the one sent.
    query = b"X-Amz-Credential=AKIDEXAMPLE%2F20260101%2Feu-central-1%2Fmobiletargeting%2Faws4_request"
    assert credential_scope({b"authorization": authorization}, query) is None


@pytest.mark.parametrize(
    "query",
    [
        b"",
        b"X-Amz-Credential=",
        b"X-Amz-Credential",
        b"x-amz-credential=AKIDEXAMPLE/20260101/eu-central-1/mobiletargeting/aws4_request",
        b"X-Amz-Credential=AKIDEXAMPLE/20260101/eu-central-1/aws4_request",
        b"X-Amz-Credential=%FF%FE/20260101/eu-central-1/mobiletargeting",
        b"Credential=AKIDEXAMPLE/20260101/eu-central-1/mobiletargeting/aws4_request",
    ],
)
def test_a_query_without_a_well_formed_credential_has_no_scope(query: bytes) -> None:
    assert credential_scope({}, query) is None


@given(authorization=st.none() | st.binary(max_size=300), query=st.binary(max_size=300))
def test_any_bytes_give_a_scope_or_none(authorization: bytes | None, query: bytes) -> None:
    headers = {} if authorization is None else {b"authorization": authorization}
    scope = credential_scope(headers, query)
    assert scope is None or isinstance(scope, CredentialScope)


# What a scope part may hold: printable ASCII but the "/" and "," that delimit it.
parts = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/,"), min_size=1)


@given(key=parts, date=st.from_regex(r"\A[0-9]{8}\Z"), region=parts, service=parts)
def test_any_well_formed_header_scope_is_read_back(key: str, date: str, region: str, service: str) -> None:
    header = f"AWS4-HMAC-SHA256 Credential={key}/{date}/{region}/{service}/aws4_request, Signature=x"
    scope = credential_scope({b"authorization": header.encode()}, b"")
    assert scope == CredentialScope(key, date, region, service)
