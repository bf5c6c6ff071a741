"""ingest.api.identity in process: Cognito-style identities and temporary
credentials, made and checked with no store, and Cognito's error shapes."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from ingest.api.http import Request
from ingest.api.identity import Identities
from ingest.api.limits import TokenBuckets

POOL = "us-east-1:11111111-2222-3333-4444-555555555555"
OTHER = "eu-west-1:66666666-7777-8888-9999-000000000000"


@dataclass(frozen=True)
class Pool:
    id: str
    app_id: str


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make(
    pools: list[Pool] | None = None, clock: Clock | None = None, key: bytes = b"k" * 32
) -> tuple[Identities, list[Pool], Clock]:
    known = pools if pools is not None else [Pool(POOL, "app-1"), Pool(OTHER, "app-2")]
    clock = clock or Clock()
    identities = Identities(
        mac=lambda data: hmac.new(key, data, hashlib.sha256).digest(),
        pool=lambda pool_id: next((p for p in known if p.id == pool_id), None),
        pools=lambda: known,
        ttl_s=3600,
        getid_per_s=1.0,
        now_s=clock,
        monotonic_s=clock,
    )
    return identities, known, clock


def test_an_identity_finds_its_pool_again_and_carries_its_region() -> None:
    identities, _, _ = make()
    first, second = identities.get_id(POOL), identities.get_id(POOL)
    assert first != second and first.startswith("us-east-1:")
    assert identities.pool_of(first) == Pool(POOL, "app-1")
    assert identities.pool_of(identities.get_id(OTHER)) == Pool(OTHER, "app-2")


def test_an_identity_made_with_another_key_or_forged_is_unknown() -> None:
    ours, _, _ = make()
    theirs, _, _ = make(key=b"x" * 32)
    assert ours.pool_of(theirs.get_id(POOL)) is None
    assert ours.pool_of("us-east-1:00000000-0000-0000-0000-000000000000") is None
    assert ours.pool_of("not an identity") is None


def test_credentials_verify_for_their_access_key_until_they_expire() -> None:
    identities, _, clock = make()
    answer = identities.credentials_for_identity(identities.get_id(POOL))
    creds = answer["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA") and len(creds["AccessKeyId"]) == 20
    assert creds["Expiration"] == int(clock.now) + 3600
    found = identities.temporary(creds["AccessKeyId"], creds["SessionToken"])
    assert found is not None
    secret, said = found
    assert secret == creds["SecretKey"]
    assert (said.app_id, said.pool_id, said.identity_id) == ("app-1", POOL, answer["IdentityId"])
    assert identities.temporary("ASIAOTHERKEY00000000", creds["SessionToken"]) is None
    clock.now += 3600
    assert identities.temporary(creds["AccessKeyId"], creds["SessionToken"]) is None


def test_a_tampered_token_or_a_deleted_pool_ends_the_credentials() -> None:
    identities, pools, _ = make()
    creds = identities.credentials_for_identity(identities.get_id(POOL))["Credentials"]
    payload, _, mac = creds["SessionToken"].partition(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["a"] = "app-2"  # another app's ingest scope
    forged = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    assert identities.temporary(creds["AccessKeyId"], f"{forged}.{mac}") is None
    pools[:] = [p for p in pools if p.id != POOL]
    assert identities.temporary(creds["AccessKeyId"], creds["SessionToken"]) is None


@given(st.text(max_size=3000))
def test_any_token_text_is_refused_without_raising(token: str) -> None:
    identities, _, _ = make()
    assert identities.temporary("ASIAAAAAAAAAAAAAAAAA", token) is None


def request(target: str, body: Any) -> Request:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    headers = {b"x-amz-target": target.encode(), b"content-length": str(len(raw)).encode()}
    return Request("POST", {}, {}, headers, receive, "req")


async def call(identities: Identities, target: str, body: Any, client: str = "10.0.0.1") -> tuple[int, Any]:
    response = await identities.handle(request(f"AWSCognitoIdentityService.{target}", body), client)
    if response.status != 200:
        error_type = dict(response.headers)[b"x-amzn-errortype"].decode()
        assert orjson.loads(response.body)["__type"] == error_type
    return response.status, orjson.loads(response.body)


async def test_cognito_errors_have_cognitos_shape() -> None:
    identities, _, _ = make()
    status, body = await call(identities, "GetId", {"IdentityPoolId": "us-east-1:" + "0" * 36})
    assert (status, body["__type"]) == (400, "InvalidParameterException")
    unknown = "us-east-1:00000000-0000-0000-0000-000000000000"
    status, body = await call(identities, "GetId", {"IdentityPoolId": unknown})
    assert (status, body["__type"]) == (400, "ResourceNotFoundException")
    status, body = await call(identities, "GetCredentialsForIdentity", {"IdentityId": unknown})
    assert (status, body["__type"]) == (400, "ResourceNotFoundException")
    status, body = await call(identities, "GetId", {"IdentityPoolId": POOL, "Logins": {"x": "y"}})
    assert body["__type"] == "NotAuthorizedException"
    status, body = await call(identities, "GetId", b"{not json")
    assert body["__type"] == "InvalidParameterException"
    status, body = await call(identities, "DeleteIdentityPool", {})
    assert body["__type"] == "UnknownOperationException"


async def test_getid_then_credentials_round_trip_over_the_operation() -> None:
    identities, _, _ = make()
    status, body = await call(identities, "GetId", {"IdentityPoolId": POOL})
    assert status == 200
    status, answer = await call(identities, "GetCredentialsForIdentity", {"IdentityId": body["IdentityId"]})
    assert status == 200 and answer["IdentityId"] == body["IdentityId"]
    assert set(answer["Credentials"]) == {"AccessKeyId", "SecretKey", "SessionToken", "Expiration"}


async def test_getid_is_rate_limited_per_client_address() -> None:
    identities, _, clock = make()
    statuses = [(await call(identities, "GetId", {"IdentityPoolId": POOL}))[0] for _ in range(12)]
    assert statuses[:10] == [200] * 10 and statuses[10:] == [400, 400]
    assert (await call(identities, "GetId", {"IdentityPoolId": POOL}, client="10.0.0.2"))[0] == 200
    clock.now += 1.0  # one token a second comes back
    assert (await call(identities, "GetId", {"IdentityPoolId": POOL}))[0] == 200


def test_token_buckets_stay_bounded_in_keys() -> None:
    buckets = TokenBuckets(rate_per_s=1.0, burst=1.0, max_keys=3)
    for n in range(10):
        assert buckets.take(f"10.0.0.{n}", 0.0)
    assert len(buckets._buckets) == 3
