"""SigV4: the credential scope of a request, and the verification of its
signature. It earns its size (about 460 lines): the canonical request, the
scope and date checks and AWS's error texts are one algorithm, read together.

:func:`credential_scope` reads who signed (access key ID, date, region,
service) without verifying, to log it and to fill app ARNs with the region.
:class:`Verifier` checks the ``Authorization: AWS4-HMAC-SHA256 …`` header form
against the secret of a key we issued, exactly as AWS services answer: the
same error types, messages and 403 status, so each SDK's error handling (and
clock-skew correction) behaves as it does against AWS.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Generic, TypeVar
from urllib.parse import parse_qs, quote_from_bytes, unquote_to_bytes

from ingest.errors import (
    IncompleteSignature,
    InvalidSignature,
    MissingAuthenticationToken,
    UnrecognizedClient,
)

log = logging.getLogger(__name__)

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request")
# Log each access key ID once; a bounded set so a flood of keys cannot grow it.
MAX_KEYS_REMEMBERED = 10_000


@dataclass(frozen=True, slots=True)
class CredentialScope:
    access_key_id: str
    date: str
    region: str
    service: str


def credential_scope(headers: Mapping[bytes, bytes], query_string: bytes) -> CredentialScope | None:
    """From ``Authorization: AWS4-HMAC-SHA256 Credential=…`` or a presigned
    URL's ``X-Amz-Credential``; None when absent or malformed."""
    header = headers.get(b"authorization")
    if header is not None:
        match = _CREDENTIAL.search(header.decode("latin-1"))
    else:
        values = parse_qs(query_string.decode("latin-1")).get("X-Amz-Credential")
        match = _CREDENTIAL.search("Credential=" + values[0]) if values else None
    if match is None:
        return None
    return CredentialScope(*match.groups())


class KeyLog:
    """Logs the first request of each access key ID seen."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def note(self, scope: CredentialScope | None) -> None:
        if scope is None or scope.access_key_id in self._seen:
            return
        if len(self._seen) >= MAX_KEYS_REMEMBERED:
            self._seen.clear()
        self._seen.add(scope.access_key_id)
        log.info(
            "first request signed by access key %s (region %s, service %s)",
            scope.access_key_id,
            scope.region,
            scope.service,
        )


# --- Verification -----------------------------------------------------------
#
# The error types and texts below are what AWS services answer, quoted from
# responses seen in the wild (the sources are cited at each one); Pinpoint sits
# behind API Gateway (its answers carry x-amz-apigw-id), which answers them all
# with 403. Where AWS echoes the Authorization header back we do not: it holds
# the signature, and messages may reach logs.

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
# Signing keys kept, one per (secret, day, region, service) that verified a
# request: every key in use on one day fits; a flood of keys cannot grow it.
SIGNING_KEYS_MAX = 10_000
# Longest piece of client input echoed into an error message, in characters.
ECHO_MAX_CHARS = 64
# Amplify JS signs for the host it hard-codes, https://pinpoint.{region}.{dnsSuffix}
# (packages/core/src/awsClients/pinpoint/base.ts), whatever host a wrapped
# fetch or a proxy then sends it to; the China partition's suffix differs.
AMPLIFY_HOST = "pinpoint.{region}.{suffix}"

_AMZ_DATE = re.compile(rb"\A[0-9]{8}T[0-9]{6}Z\Z")
_UNSIGNED_PAYLOADS = (b"UNSIGNED-PAYLOAD", b"STREAMING-")

P = TypeVar("P")
Lookup = Callable[[str, str | None], tuple[str, P] | None]
"""(access key ID, session token or None) → (secret, principal), or None for
an unknown or revoked key or a rejected token. It may raise
:class:`UnrecognizedClient` itself (``reason="bad_token"``, e.g. an expired
session token); any other exception it raises is a bug and propagates."""


def _echo(value: str) -> str:
    return value if len(value) <= ECHO_MAX_CHARS else value[:ECHO_MAX_CHARS] + "…"


def _amz_date(seconds: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))


def _parse_date(amz_date: bytes | None, http_date: bytes | None) -> tuple[bytes, float]:
    """→ (the ISO-8601 basic date the string to sign carries, its epoch seconds)."""
    if amz_date is not None:
        if _AMZ_DATE.match(amz_date):
            d = amz_date
            try:
                moment = datetime(
                    int(d[0:4]),
                    int(d[4:6]),
                    int(d[6:8]),
                    int(d[9:11]),
                    int(d[11:13]),
                    int(d[13:15]),
                    tzinfo=UTC,
                )
            except ValueError:
                pass
            else:
                return amz_date, float(calendar.timegm(moment.utctimetuple()))
        got = amz_date.decode("latin-1")
    else:
        assert http_date is not None
        try:
            moment = parsedate_to_datetime(http_date.decode("latin-1"))
            seconds = float(calendar.timegm(moment.utctimetuple()))
            return _amz_date(seconds).encode(), seconds
        except (TypeError, ValueError, IndexError, OverflowError):
            got = http_date.decode("latin-1")
    # AWS's IncompleteSignatureException text (quoted as AWS answers it in
    # the comments of mhart/kinesalite's and dynalite's validation code).
    raise IncompleteSignature(
        f"Date must be in ISO-8601 'basic format'. Got '{_echo(got)}'. See http://en.wikipedia.org/wiki/ISO_8601"
    )


def canonical_uri(raw_path: bytes) -> bytes:
    """The path as sent (each SDK has already percent-encoded its labels),
    dot segments and empty segments removed, then URI-encoded once more: what
    every non-S3 service expects (botocore ``SigV4Auth._normalize_url_path``:
    ``quote(remove_dot_segments(path), safe='/~')``; aws-sdk-js-v3
    ``SignatureV4Base.getCanonicalPath``: the same normalization, then
    ``escapeUri``, the same unreserved set). So an ID ``a/b`` sent as
    ``a%2Fb`` signs as ``a%252Fb``."""
    if not raw_path:
        return b"/"
    kept: list[bytes] = []
    for segment in raw_path.split(b"/"):
        if segment == b".." and kept:
            kept.pop()
        elif segment and segment not in (b".", b".."):
            kept.append(segment)
    leading = b"/" if raw_path.startswith(b"/") else b""
    trailing = b"/" if raw_path.endswith(b"/") and kept else b""
    return quote_from_bytes(leading + b"/".join(kept) + trailing, safe="/").encode()


def canonical_query(query_string: bytes) -> bytes:
    """Each ``key=value`` decoded, re-encoded with RFC 3986's unreserved set
    kept, sorted by encoded key then value (the SigV4 specification;
    aws-sdk-js-v3 ``getCanonicalQuery``): the same bytes whichever way a client
    spelled the encoding on the wire."""
    pairs = []
    for part in query_string.split(b"&"):
        if not part:
            continue
        key, _, value = part.partition(b"=")
        pairs.append(
            (
                quote_from_bytes(unquote_to_bytes(key), safe=""),
                quote_from_bytes(unquote_to_bytes(value), safe=""),
            )
        )
    pairs.sort()
    return "&".join(f"{key}={value}" for key, value in pairs).encode()


def _trimmed(values: list[bytes]) -> bytes:
    # SigV4: Trimall(value) — outer whitespace removed, inner runs collapsed to
    # one space; repeated headers joined by "," (botocore canonical_headers).
    return b",".join(b" ".join(value.split()) for value in values)


@dataclass(frozen=True, slots=True)
class _Authorization:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: bytes


def _parse_authorization(header: str, service: str) -> _Authorization:
    algorithm, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for part in rest.split(","):
        part = part.strip()
        if not part:
            continue
        key, equals, value = part.partition("=")
        if not equals:
            # AWS: "'…' not a valid key=value pair (missing equal-sign) in
            # Authorization header: '…'." (aws/chalice#828, serverless#3205),
            # without the echo: the part may be someone's bearer token.
            raise IncompleteSignature(
                "A part is not a valid key=value pair (missing equal-sign) in Authorization header."
            )
        params[key.strip()] = value.strip()
    # API Gateway's text for each absent parameter, in its order (aws/chalice#828).
    missing = [
        f"Authorization header requires '{name}' parameter."
        for name in ("Credential", "Signature", "SignedHeaders")
        if not params.get(name)
    ]
    if missing:
        raise IncompleteSignature(" ".join(missing))
    if algorithm != ALGORITHM:
        # IncompleteSignatureException with this text (same source as the date's).
        raise IncompleteSignature(
            f"Unsupported AWS 'algorithm': '{_echo(algorithm)}' (only {ALGORITHM} for now). "
        )
    credential = params["Credential"]
    parts = credential.split("/")
    if len(parts) != 5:
        # AWS: IncompleteSignatureException for a credential of the wrong shape.
        raise IncompleteSignature(
            "Credential must have exactly 5 slash-delimited elements, "
            f"e.g. keyid/date/region/service/term, got '{_echo(credential)}'"
        )
    access_key_id, date, region, signing_service, terminator = parts
    if terminator != TERMINATOR:
        raise InvalidSignature(
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
            f"not '{_echo(terminator)}'. "
        )
    if signing_service != service:
        # A 403 InvalidSignatureException with this text, trailing space included,
        # from an API-Gateway-fronted service: ex-aws/ex_aws#701.
        raise InvalidSignature(f"Credential should be scoped to correct service: '{service}'. ")
    signed_headers = tuple(params["SignedHeaders"].lower().split(";"))
    if "host" not in signed_headers:
        # InvalidSignatureException; today's text names HTTP/2's :authority too.
        raise InvalidSignature("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
    return _Authorization(
        access_key_id, date, region, signing_service, signed_headers, params["Signature"].encode("latin-1")
    )


class Verifier(Generic[P]):
    """Verifies the SigV4 header signature of each request with the secret
    :data:`Lookup` returns for its key, and answers who signed.

    Checked in this order, each failure an :class:`~ingest.errors.AuthError`
    (and nothing else, whatever the input): an ``Authorization`` header
    (``MissingAuthenticationToken``); its shape (``IncompleteSignature``); the
    credential scope's service is ours (any region); a date (``X-Amz-Date``,
    else ``Date``) whose day is the scope's and within ``max_skew_s`` of now;
    the key and session token (``UnrecognizedClient``); the payload hash; the
    signature (``InvalidSignature``).

    Decisions where AWS leaves room:

    - ``host`` must be signed (as AWS requires); nothing else must. The date,
      the scope and the payload hash are bound by the string to sign whether
      or not their headers are listed, and the session token by the secret it
      maps to.
    - ``x-amz-content-sha256``, when sent, must be the body's SHA-256 (it is
      what the signature covers); ``UNSIGNED-PAYLOAD`` and the streaming forms
      are refused: only S3 accepts them, and a body the signature does not
      cover could be replaced in flight.
    - The signed ``host`` is the received ``Host``; when that does not verify,
      ``pinpoint.{region}.amazonaws.com`` is tried (Amplify JS signs for it):
      one more HMAC, only on a mismatch.

    Signing keys are cached per (secret, day, region, service), and only once
    they have verified a request, so requests with made-up regions cannot
    evict the keys in use. A verification then costs two SHA-256 (the body,
    the canonical request) and one HMAC.
    """

    def __init__(
        self,
        lookup: Lookup[P],
        *,
        max_skew_s: float,
        now_s: Callable[[], float] = time.time,
        service: str = "mobiletargeting",
    ) -> None:
        self._lookup = lookup
        self._max_skew_s = max_skew_s
        self._now_s = now_s
        self._service = service
        self._signing_keys: dict[tuple[bytes, str, str, str], bytes] = {}

    def verify(
        self,
        *,
        method: str,
        raw_path: bytes,
        query_string: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> P:
        """→ the principal of the key that signed; an AuthError otherwise."""
        by_name: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            by_name.setdefault(name.lower(), []).append(value)
        authorizations = by_name.get(b"authorization")
        if not authorizations:
            # API Gateway's answer to an unsigned call (and to an unknown path).
            raise MissingAuthenticationToken()
        if len(authorizations) > 1:
            raise IncompleteSignature("Only one Authorization header is allowed.")
        auth = _parse_authorization(authorizations[0].decode("latin-1"), self._service)

        amz_date = by_name.get(b"x-amz-date")
        http_date = by_name.get(b"date")
        if amz_date is None and http_date is None:
            raise IncompleteSignature(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
            )
        stamp, signed_at_s = _parse_date(
            None if amz_date is None else b",".join(amz_date),
            None if http_date is None else b",".join(http_date),
        )
        day = stamp[:8].decode()
        if auth.date != day:
            # "Troubleshooting AWS Signature Version 4 errors", Credential scope
            # (docs.aws.amazon.com/IAM/latest/UserGuide/signature-v4-troubleshooting.html),
            # with the detail AWS appends.
            raise InvalidSignature(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                f"'{_echo(auth.date)}' != '{day}', from '{stamp.decode()}'."
            )
        self._check_skew(stamp.decode(), signed_at_s)

        tokens = by_name.get(b"x-amz-security-token")
        token = None if tokens is None else b",".join(tokens).decode("latin-1")
        found = self._lookup(auth.access_key_id, token)
        if found is None:
            raise UnrecognizedClient(reason="unknown_key" if token is None else "bad_token")
        secret, principal = found

        payload_hash = self._payload_hash(by_name.get(b"x-amz-content-sha256"), body)
        lines: list[bytes] = []
        host_line = -1
        for signed in auth.signed_headers:
            values = by_name.get(signed.encode("latin-1"))
            if signed == "host":
                host_line = len(lines)
            elif values is None:
                raise InvalidSignature()
            lines.append(b"" if values is None else _trimmed(values))
        head = b"%s\n%s\n%s\n" % (
            method.encode("latin-1"),
            canonical_uri(raw_path),
            canonical_query(query_string),
        )
        tail = b"\n%s\n%s" % (";".join(auth.signed_headers).encode("latin-1"), payload_hash)
        names = [name.encode("latin-1") for name in auth.signed_headers]
        scope = f"{auth.date}/{auth.region}/{auth.service}/{TERMINATOR}"
        prefix = b"%s\n%s\n%s\n" % (ALGORITHM.encode(), stamp, scope.encode("latin-1"))

        cache_key = (hashlib.sha256(secret.encode()).digest(), auth.date, auth.region, auth.service)
        signing_key = self._signing_keys.get(cache_key)
        if signing_key is None:
            signing_key = _signing_key(secret, auth.date, auth.region, auth.service)

        suffix = "amazonaws.com.cn" if auth.region.startswith("cn-") else "amazonaws.com"
        amplify_host = AMPLIFY_HOST.format(region=auth.region, suffix=suffix).encode("latin-1")
        hosts = [lines[host_line]] if by_name.get(b"host") else []
        if amplify_host not in hosts:
            hosts.append(amplify_host)
        for host in hosts:
            lines[host_line] = host
            canonical = (
                head + b"".join(n + b":" + v + b"\n" for n, v in zip(names, lines, strict=True)) + tail
            )
            string_to_sign = prefix + hashlib.sha256(canonical).hexdigest().encode()
            expected = hmac.digest(signing_key, string_to_sign, "sha256").hex().encode()
            if hmac.compare_digest(expected, auth.signature):
                self._remember(cache_key, signing_key)
                return principal
        raise InvalidSignature()

    def _check_skew(self, stamp: str, signed_at_s: float) -> None:
        """AWS's texts, verbatim (e.g. "Signature expired: 20140325T143453Z is
        now earlier than 20140325T143751Z (20140325T145251Z - 15 min.)",
        aws/aws-sdk-js#254): Amplify JS keys its clock-skew retry on the
        InvalidSignatureException type, and its expired-credentials check on a
        "Signature…" type whose message says "expired"."""
        now_s = self._now_s()
        minutes = f"{self._max_skew_s / 60:g} min."
        if signed_at_s < now_s - self._max_skew_s:
            raise InvalidSignature(
                f"Signature expired: {stamp} is now earlier than "
                f"{_amz_date(now_s - self._max_skew_s)} ({_amz_date(now_s)} - {minutes})",
                reason="expired",
            )
        if signed_at_s > now_s + self._max_skew_s:
            raise InvalidSignature(
                f"Signature not yet current: {stamp} is still later than "
                f"{_amz_date(now_s + self._max_skew_s)} ({_amz_date(now_s)} + {minutes})",
                reason="expired",
            )

    @staticmethod
    def _payload_hash(declared: list[bytes] | None, body: bytes) -> bytes:
        computed = hashlib.sha256(body).hexdigest().encode()
        if declared is None:
            return computed
        value = b",".join(declared)
        if value.startswith(_UNSIGNED_PAYLOADS):
            raise InvalidSignature(
                "x-amz-content-sha256 must be the SHA-256 of the payload: it is not optional here."
            )
        if value != computed:
            # Amazon S3's text for the same check (XAmzContentSHA256Mismatch).
            raise InvalidSignature(
                "The provided 'x-amz-content-sha256' header does not match what was computed."
            )
        return computed

    def _remember(self, cache_key: tuple[bytes, str, str, str], signing_key: bytes) -> None:
        if cache_key in self._signing_keys:
            return
        if len(self._signing_keys) >= SIGNING_KEYS_MAX:
            del self._signing_keys[next(iter(self._signing_keys))]
        self._signing_keys[cache_key] = signing_key


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.digest(b"AWS4" + secret.encode(), date.encode("latin-1"), "sha256")
    key = hmac.digest(key, region.encode("latin-1"), "sha256")
    key = hmac.digest(key, service.encode("latin-1"), "sha256")
    return hmac.digest(key, TERMINATOR.encode(), "sha256")
