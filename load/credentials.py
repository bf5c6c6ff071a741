"""The credentials the harness signs with, found as the SDKs find theirs.

* Long-term keys (the ``boto3`` profile, and the harness's own CreateApp and
  KPI reads): botocore's resolution chain, so ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, else the shared
  credentials file (``AWS_SHARED_CREDENTIALS_FILE``, default
  ``~/.aws/credentials``) and profile (``AWS_PROFILE``).
  When the harness starts `ingest run` itself it reads that data dir's
  ``credentials`` file (profile ``ingest``, the admin key `ingest run` writes
  on its first start) and nothing else.
* Mobile devices (``amplify-js`` and ``native``): Cognito-style temporary
  credentials from the server, as Amplify gets them through
  ``identityPoolEndpoint``: ``GetId`` once per run for the run's identity
  pool, then ``GetCredentialsForIdentity`` (unsigned, JSON 1.1 on ``POST
  /``), again before they expire.

The run's identity pool is ``--identity-pool-id``, or one made for the run's
app with `ingest identity-pools create` on the server's store (the data dir
the harness started, ``--data-dir``, or the ``INGEST_*`` settings in the
environment).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import botocore.session
import orjson
from botocore.credentials import SharedCredentialProvider
from botocore.exceptions import BotoCoreError

COGNITO_TARGET = "AWSCognitoIdentityService."
COGNITO_CONTENT_TYPE = "application/x-amz-json-1.1"
INGEST_PROFILE = "ingest"  # the profile `ingest run` writes to {data_dir}/credentials
# Refresh temporary credentials this long before they expire (botocore's
# mandatory refresh is 10 minutes before), or halfway through a shorter life.
REFRESH_BEFORE_S = 600.0
# A new identity pool reaches each edge process within INGEST_AUTH_REFRESH_S
# (2 s), each on its own clock: `ingest run` has one per CPU on one port,
# and the kernel spreads new connections among them (SO_REUSEPORT). So a
# pool counts as visible once GetId succeeds on this many new connections in
# a row: with two edges, one still without it, all of them reach the other
# with chance 1 in 4,096. (One answer on one connection proved it for one
# edge only, and a run's first requests met the other's 403.)
POOL_VISIBLE_WITHIN_S = 30.0
POOL_POLL_S = 0.5
POOL_CONFIRMATIONS = 12
CLI_TIMEOUT_S = 60.0
# The AWS variables a child would otherwise prefer over the file it is given.
AWS_KEY_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


class CredentialsError(Exception):
    """No credentials where they were looked for, or the server refused to issue them."""


@dataclass(frozen=True, slots=True)
class Key:
    """One set of credentials; temporary ones carry a token and an expiry
    (epoch seconds). Picklable: plans carry them to generator processes."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    expires_s: float | None = None
    issued_s: float | None = None

    def refresh_at_s(self) -> float | None:
        """When to fetch new credentials (epoch seconds), or None: they do not expire."""
        if self.expires_s is None:
            return None
        issued = self.issued_s if self.issued_s is not None else self.expires_s - 2 * REFRESH_BEFORE_S
        return max(self.expires_s - REFRESH_BEFORE_S, issued + (self.expires_s - issued) / 2)

    def __repr__(self) -> str:  # never the secret or the token, even in a traceback
        return f"Key({self.access_key_id!r}, temporary={self.session_token is not None})"


# The null server checks no signature; these keep the requests' shape (a
# session token's size is part of a device request's header cost).
UNCHECKED = Key("AKIALOADNULL0000", "not-checked")
UNCHECKED_DEVICE = Key("ASIALOADNULL0000", "not-checked", "IQoJb3JpZ2luX2VjEL7" + "x" * 780)


def from_environment(profile: str | None = None) -> Key:
    """botocore's credential chain (environment, shared credentials file,
    config file, …) for ``profile`` (default: ``AWS_PROFILE``, else ``default``)."""
    try:
        found = botocore.session.Session(profile=profile).get_credentials()
    except BotoCoreError as exc:
        raise CredentialsError(f"reading AWS credentials: {exc}") from exc
    if found is None:
        raise CredentialsError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or AWS_SHARED_CREDENTIALS_FILE "
            "and AWS_PROFILE (`ingest run` writes {data_dir}/credentials, profile ingest)"
        )
    frozen = found.get_frozen_credentials()
    return Key(frozen.access_key, frozen.secret_key, frozen.token)


def from_file(path: Path, profile: str = INGEST_PROFILE) -> Key:
    """The key of ``profile`` in the shared credentials file at ``path``."""
    found = SharedCredentialProvider(creds_filename=str(path), profile_name=profile).load()
    if found is None:
        raise CredentialsError(f"no profile {profile!r} with a key in {path}")
    frozen = found.get_frozen_credentials()
    return Key(frozen.access_key, frozen.secret_key, frozen.token)


def file_env(path: Path, profile: str = INGEST_PROFILE, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) pointed at the shared credentials
    file ``path`` and ``profile``, without the AWS key variables that would win
    over it."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in AWS_KEY_VARIABLES}
    return env | {"AWS_SHARED_CREDENTIALS_FILE": str(path), "AWS_PROFILE": profile}


# --- Cognito-style temporary credentials -------------------------------------------


async def _cognito(session: aiohttp.ClientSession, base: str, operation: str, body: dict[str, str]) -> bytes:
    """One unsigned Cognito Identity JSON 1.1 call → the answer's body;
    CredentialsError carrying Cognito's ``__type`` otherwise."""
    headers = {"X-Amz-Target": COGNITO_TARGET + operation, "Content-Type": COGNITO_CONTENT_TYPE}
    async with session.post(base + "/", data=orjson.dumps(body), headers=headers) as response:
        raw = await response.read()
        if response.status != 200:
            kind = response.headers.get("x-amzn-ErrorType", "")
            raise CognitoRefused(operation, response.status, kind, raw)
        return raw


class CognitoRefused(CredentialsError):
    def __init__(self, operation: str, status: int, error_type: str, body: bytes) -> None:
        super().__init__(f"{operation}: HTTP {status} {error_type}: {body[:300]!r}")
        self.error_type = error_type


async def identity(base: str, pool_id: str) -> str:
    """``GetId`` for an unauthenticated identity of ``pool_id``, once every
    edge process knows the pool (POOL_CONFIRMATIONS answers in a row, each on
    a new connection); waits (within POOL_VISIBLE_WITHIN_S) for a pool an
    edge has not loaded yet, and out the per-address rate limit."""
    deadline = time.monotonic() + POOL_VISIBLE_WITHIN_S
    identity_id = ""
    confirmed = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        while confirmed < POOL_CONFIRMATIONS:
            try:
                raw = await _cognito(fresh, base, "GetId", {"IdentityPoolId": pool_id})
            except CognitoRefused as exc:
                waiting = ("ResourceNotFoundException", "TooManyRequestsException")
                if exc.error_type not in waiting or time.monotonic() > deadline:
                    raise
                if exc.error_type == "ResourceNotFoundException":
                    confirmed = 0  # an edge without the pool yet
                await asyncio.sleep(POOL_POLL_S)
                continue
            identity_id = str(orjson.loads(raw)["IdentityId"])
            confirmed += 1
    return identity_id


async def temporary(session: aiohttp.ClientSession, base: str, identity_id: str) -> Key:
    """``GetCredentialsForIdentity`` → temporary credentials of ``identity_id``."""
    raw = await _cognito(session, base, "GetCredentialsForIdentity", {"IdentityId": identity_id})
    given = orjson.loads(raw)["Credentials"]
    return Key(
        given["AccessKeyId"],
        given["SecretKey"],
        given["SessionToken"],
        expires_s=float(given["Expiration"]),
        issued_s=time.time(),
    )


def create_identity_pool(app_id: str, *, env: dict[str, str]) -> str:
    """`ingest identity-pools create --app APP` with the server's store
    settings in ``env`` → the new pool's ID. Blocking."""
    done = subprocess.run(  # noqa: S603 - our own CLI, arguments we built
        [sys.executable, "-m", "ingest", "identity-pools", "create", "--app", app_id],
        env=env,
        capture_output=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise CredentialsError(
            "`ingest identity-pools create` failed (give --identity-pool-id, or --data-dir of the server): "
            + done.stderr.decode(errors="replace")[-1000:]
        )
    return str(orjson.loads(done.stdout)["IdentityPoolId"])
