"""Cognito-style credentials for mobile apps: GetId and GetCredentialsForIdentity.

Amplify JS v6 takes ``Auth.Cognito.identityPoolEndpoint``, so a rebuilt app
gets its credentials here with a configuration change alone. The edge
answers Cognito Identity's JSON 1.1 protocol on ``POST /`` (``X-Amz-Target:
AWSCognitoIdentityService.GetId`` or ``….GetCredentialsForIdentity``),
unauthenticated identities only (no login providers), unsigned as Cognito's
own unauthenticated calls are.

Nothing is stored per identity or per credential, so a flood of GetId costs
no store writes and verifying a request signed with these credentials costs
no store read:

* an identity ID is ``REGION:UUID`` whose 16 bytes are an 8-byte random nonce
  and the first 8 bytes of a MAC of (pool ID, nonce): the edge finds the pool
  again by trying each pool's MAC, and nobody can make an identity of a pool
  without the master key;
* the session token carries its access key ID, app, pool, identity and expiry
  under a MAC; the secret key is a MAC of the token's payload. A request's
  token is checked, its secret derived, and its signature verified like any
  other, with the ``ingest`` scope for the pool's one app.

Deleting the pool (or its app) ends every credential made from it at once.
Errors are Cognito's: status 400, ``x-amzn-ErrorType`` and the body
``{"__type", "message"}`` that Amplify and the AWS SDKs read.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ingest.api.http import Request, Response
from ingest.api.limits import TokenBuckets
from ingest.errors import ApiError
from ingest.records import validate
from ingest.settings import GETID_BURST

TARGET_PREFIX = "AWSCognitoIdentityService."
CONTENT_TYPE = b"application/x-amz-json-1.1"
# Cognito's IdentityPoolId and IdentityId: "REGION:GUID", at most 55 characters.
_ID = re.compile(r"^[\w-]{1,18}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_BODY_BYTES = 16 * 1024
MAX_TOKEN_CHARS = 2048
NONCE_BYTES = 8
TAG_BYTES = 8
MAX_LIMITED_ADDRESSES = 100_000
NOT_AN_OBJECT = "The request body is not a JSON object"
# Each MAC input starts with its own label, so no MAC of one kind is valid as another.
TOKEN_DOMAIN = b"token\x00"


class Pool(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def app_id(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Temporary:
    """What a valid session token says."""

    access_key_id: str
    app_id: str
    pool_id: str
    identity_id: str
    expires_s: int


class CognitoError(Exception):
    """An error answered in Cognito's JSON 1.1 shape (every one is a 400)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Identities:
    """GetId and GetCredentialsForIdentity, and the session tokens they issue.

    ``mac`` is the master key's MAC; ``pool`` finds an identity pool by ID and
    ``pools`` lists them, as known now (the key ring's view, refreshed from
    the store): a signed request's token costs one lookup, not a scan."""

    def __init__(
        self,
        *,
        mac: Callable[[bytes], bytes],
        pool: Callable[[str], Pool | None],
        pools: Callable[[], Sequence[Pool]],
        ttl_s: int,
        getid_per_s: float,
        now_s: Callable[[], float] = time.time,
        monotonic_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._mac = mac
        self._pool = pool
        self._pools = pools
        self._ttl_s = ttl_s
        self._now_s = now_s
        self._monotonic_s = monotonic_s
        self._limiter = TokenBuckets(
            rate_per_s=getid_per_s, burst=GETID_BURST, max_keys=MAX_LIMITED_ADDRESSES
        )

    # --- the HTTP operation -------------------------------------------------

    async def handle(self, request: Request, client: str) -> Response:
        """``POST /`` with a Cognito ``X-Amz-Target``; ``client`` is the peer address."""
        try:
            answer = await self._answer(request, client)
        except CognitoError as exc:
            return Response(
                400,
                orjson.dumps({"__type": exc.error_type, "message": exc.message}),
                CONTENT_TYPE,
                ((b"x-amzn-errortype", exc.error_type.encode()),),
            )
        return Response(200, orjson.dumps(answer), CONTENT_TYPE)

    async def _answer(self, request: Request, client: str) -> dict[str, Any]:
        target = request.headers.get(b"x-amz-target", b"").decode("latin-1")
        operation = target.removeprefix(TARGET_PREFIX) if target.startswith(TARGET_PREFIX) else ""
        if operation not in ("GetId", "GetCredentialsForIdentity"):
            raise CognitoError("UnknownOperationException", f"Unknown operation {target[:100]!r}")
        try:
            body = validate.json_body(await request.body(MAX_BODY_BYTES))
        except ApiError as exc:  # too large, not JSON: Cognito's invalid parameter
            raise CognitoError("InvalidParameterException", NOT_AN_OBJECT) from exc
        if not isinstance(body, dict):
            raise CognitoError("InvalidParameterException", NOT_AN_OBJECT)
        if body.get("Logins"):
            raise CognitoError(
                "NotAuthorizedException", "Unauthenticated identities only: no login providers"
            )
        if operation == "GetId":
            if not self._limiter.take(client, self._monotonic_s()):
                raise CognitoError("TooManyRequestsException", "Rate exceeded")
            return {"IdentityId": self.get_id(_string(body, "IdentityPoolId"))}
        return self.credentials_for_identity(_string(body, "IdentityId"))

    # --- identities ----------------------------------------------------------

    def get_id(self, pool_id: str) -> str:
        pool = self._pool(pool_id)
        if pool is None:
            raise CognitoError("ResourceNotFoundException", f"IdentityPool '{pool_id[:60]}' not found.")
        nonce = secrets.token_bytes(NONCE_BYTES)
        region = pool.id.split(":", 1)[0]
        return f"{region}:{uuid.UUID(bytes=nonce + self._tag(pool.id, nonce))}"

    def pool_of(self, identity_id: str) -> Pool | None:
        """The pool an identity ID was made for, if it is ours and the pool still exists."""
        if not _ID.match(identity_id):
            return None
        region, _, guid = identity_id.partition(":")
        try:
            raw = uuid.UUID(guid).bytes
        except ValueError:
            return None
        nonce, tag = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
        for pool in self._pools():
            if pool.id.split(":", 1)[0] == region and hmac.compare_digest(self._tag(pool.id, nonce), tag):
                return pool
        return None

    def _tag(self, pool_id: str, nonce: bytes) -> bytes:
        return self._mac(b"identity\x00" + pool_id.encode() + b"\x00" + nonce)[:TAG_BYTES]

    # --- credentials ---------------------------------------------------------

    def credentials_for_identity(self, identity_id: str) -> dict[str, Any]:
        pool = self.pool_of(identity_id)
        if pool is None:
            raise CognitoError("ResourceNotFoundException", f"Identity '{identity_id[:60]}' not found.")
        expires_s = int(self._now_s()) + self._ttl_s
        access_key_id = "ASIA" + base64.b32encode(secrets.token_bytes(10)).decode()
        payload = orjson.dumps(
            {"k": access_key_id, "a": pool.app_id, "p": pool.id, "i": identity_id, "e": expires_s}
        )
        token = _b64(payload) + "." + _b64(self._mac(TOKEN_DOMAIN + payload))
        return {
            "IdentityId": identity_id,
            "Credentials": {
                "AccessKeyId": access_key_id,
                "SecretKey": self._secret(payload),
                "SessionToken": token,
                # Cognito answers Expiration as epoch seconds (a JSON number).
                "Expiration": expires_s,
            },
        }

    def _secret(self, payload: bytes) -> str:
        return _b64(self._mac(b"secret\x00" + payload))[:40]

    def temporary(self, access_key_id: str, token: str) -> tuple[str, Temporary] | None:
        """(secret, what the token says) for a session token that is ours,
        unexpired, for this access key, of a pool that still exists; else None."""
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            return None
        encoded, _, mac = token.partition(".")
        try:
            payload, tag = _unb64(encoded), _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(self._mac(TOKEN_DOMAIN + payload), tag):
            return None
        claims = orjson.loads(payload)
        said = Temporary(claims["k"], claims["a"], claims["p"], claims["i"], claims["e"])
        if said.access_key_id != access_key_id or said.expires_s <= self._now_s():
            return None
        pool = self._pool(said.pool_id)
        if pool is None or pool.app_id != said.app_id:
            return None
        return self._secret(payload), said


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not _ID.match(value):
        raise CognitoError("InvalidParameterException", f"{name} must be REGION:GUID")
    return value
