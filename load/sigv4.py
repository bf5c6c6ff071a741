"""AWS Signature Version 4, as an AWS SDK signs a Pinpoint request. Pure.

The edge verifies every signature, and a client pays for signing on every
request, so the harness signs as cheaply as an SDK does: the SHA-256 of the
body, the canonical request and one HMAC. What does not change between
requests is computed once: the signing key (four HMACs) per UTC day, the
canonical request's fixed lines per (method, path, query), and the
``X-Amz-Date`` text per second. The result is byte-for-byte what botocore's
``SigV4Auth`` writes for the same request and time (a test holds it to that).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "mobiletargeting"  # Pinpoint's signing name in botocore's model
CONTENT_TYPE = "application/json"


def amz_date(epoch_s: int) -> str:
    """``X-Amz-Date`` for a whole UTC second: ``20261123T082441Z``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch_s))


def canonical_query(params: dict[str, str]) -> str:
    """Sorted, percent-encoded ``k=v`` pairs, botocore's encoding."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))


class Signer:
    """Signs requests for one set of credentials and one region.

    Signed headers are the ones an AWS SDK signs for Pinpoint:
    ``content-type`` (when there is a body), ``host``, ``x-amz-date`` and,
    with temporary (Cognito) credentials, ``x-amz-security-token``.
    """

    def __init__(
        self,
        *,
        access_key_id: str,
        secret_access_key: str,
        region: str,
        host: str,
        session_token: str | None = None,
    ) -> None:
        self._access_key_id = access_key_id
        self._secret = secret_access_key
        self._region = region
        self._host = host
        self._token = session_token
        self._keys: dict[str, bytes] = {}
        self._fixed: dict[tuple[str, str, str, bool], tuple[str, str, str]] = {}
        self._second = -1
        self._date = ""

    def _signing_key(self, day: str) -> bytes:
        key = self._keys.get(day)
        if key is None:
            key = ("AWS4" + self._secret).encode()
            for part in (day, self._region, SERVICE, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {day: key}  # one day at a time: the old one is done
        return key

    def _parts(self, method: str, path: str, query: str, has_body: bool) -> tuple[str, str, str]:
        """(canonical request up to x-amz-date's value, the rest up to the
        payload hash, signed header names) for one request line."""
        cache_key = (method, path, query, has_body)
        parts = self._fixed.get(cache_key)
        if parts is None:
            parts = self._lines(method, quote(path, safe="/~"), query, CONTENT_TYPE if has_body else None)
            self._fixed[cache_key] = parts
        return parts

    def _lines(
        self, method: str, canonical_path: str, query: str, content_type: str | None
    ) -> tuple[str, str, str]:
        names = (["content-type"] if content_type is not None else []) + ["host", "x-amz-date"]
        head = f"{method}\n{canonical_path}\n{query}\n"
        if content_type is not None:
            head += f"content-type:{content_type}\n"
        head += f"host:{self._host}\nx-amz-date:"
        tail = "\n"
        if self._token is not None:
            names.append("x-amz-security-token")
            tail += f"x-amz-security-token:{self._token}\n"
        signed = ";".join(names)
        return head, tail + f"\n{signed}\n", signed

    def sign(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        epoch_s: int,
        query: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """The headers to add for this request at this second: ``X-Amz-Date``,
        ``Authorization`` and, with temporary credentials, the token."""
        head, tail, signed = self._parts(method, path, canonical_query(query or {}), bool(body))
        return self._signed(head, tail, signed, body, epoch_s)

    def sign_canonical(
        self,
        method: str,
        canonical_path: str,
        canonical_query_text: str,
        body: bytes,
        *,
        epoch_s: int,
        content_type: str | None = CONTENT_TYPE,
    ) -> dict[str, str]:
        """Like :meth:`sign`, for a request whose canonical path and query the
        caller wrote itself (``python -m load fuzz``: hostile paths and query
        strings as sent, any content type). Nothing is cached: each such path
        is new. The caller sends ``Content-Type: content_type`` with a body
        (None: no Content-Type header, none signed)."""
        head, tail, signed = self._lines(
            method, canonical_path, canonical_query_text, content_type if body else None
        )
        return self._signed(head, tail, signed, body, epoch_s)

    def _signed(self, head: str, tail: str, signed: str, body: bytes, epoch_s: int) -> dict[str, str]:
        """The signature headers, from the canonical request's parts."""
        if epoch_s != self._second:
            self._second, self._date = epoch_s, amz_date(epoch_s)
        stamp = self._date
        day = stamp[:8]
        canonical = head + stamp + tail + hashlib.sha256(body).hexdigest()
        scope = f"{day}/{self._region}/{SERVICE}/aws4_request"
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {
            "X-Amz-Date": stamp,
            "Authorization": (
                f"{ALGORITHM} Credential={self._access_key_id}/{scope}, "
                f"SignedHeaders={signed}, Signature={signature}"
            ),
        }
        if self._token is not None:
            headers["X-Amz-Security-Token"] = self._token
        return headers
