"""Requests as each SDK sends them: path, headers, signature. Pure.

Header sets follow research/pinpoint-compat.md (§1.4 for boto3, the Amplify
JS header list, the native SDKs' user agents). Mobile and browser apps sign
with temporary Cognito-style credentials (an ``ASIA…`` key and a session
token); boto3 with a long-term key. ``amz-sdk-invocation-id`` stays the same on every
attempt of one call and ``amz-sdk-request`` counts the attempts, as in the
SDKs' retry middleware.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from load.credentials import Key
from load.sigv4 import CONTENT_TYPE, Signer
from load.traffic import Profile

REGION = "us-east-1"
MAX_ATTEMPTS_HEADER = 3  # what botocore's standard mode and Amplify JS advertise
MOBILE: tuple[Profile, ...] = ("amplify-js", "native")  # sign with Cognito-style credentials

USER_AGENTS: dict[Profile, str] = {
    "amplify-js": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0",
    "native": "aws-sdk-swift/1.0.0 ua/2.1 api/pinpoint#1.0.0 os/ios#18.1 lang/swift#5.10 md/amplify-swift",
    "boto3": (
        "Boto3/1.44.5 md/Botocore#1.44.5 ua/2.1 os/linux lang/python#3.11.7 "
        "cfg/retry-mode#standard Botocore/1.44.5"
    ),
}


class Sdk:
    """Signs and shapes requests to one server for each profile: backends
    (``boto3``) with ``key``, devices with ``device_key`` (temporary
    credentials, :mod:`load.credentials`; ``key`` when there are none)."""

    def __init__(self, url: str, key: Key, device_key: Key | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--url must be http://host[:port], not {url!r}")
        self.base = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.netloc
        self._signers: dict[Profile, Signer] = {"boto3": self._signer(key)}
        self.use_device_key(device_key or key)

    def _signer(self, key: Key) -> Signer:
        return Signer(
            access_key_id=key.access_key_id,
            secret_access_key=key.secret_access_key,
            region=REGION,
            host=self._host,
            session_token=key.session_token,
        )

    def use_device_key(self, key: Key) -> None:
        """Devices sign with ``key`` from now on (refreshed credentials)."""
        signer = self._signer(key)
        for profile in MOBILE:
            self._signers[profile] = signer

    def headers(
        self,
        profile: Profile,
        method: str,
        path: str,
        body: bytes,
        *,
        epoch_s: int,
        invocation_id: str,
        attempt: int,
        query: dict[str, str] | None = None,
    ) -> dict[str, str]:
        headers = self._signers[profile].sign(method, path, body, epoch_s=epoch_s, query=query)
        if body:
            headers["Content-Type"] = CONTENT_TYPE
        headers["amz-sdk-invocation-id"] = invocation_id
        headers["amz-sdk-request"] = f"attempt={attempt}; max={max(attempt, MAX_ATTEMPTS_HEADER)}"
        if profile == "amplify-js":
            headers["x-amz-user-agent"] = "aws-amplify/6.15.5 analytics/1 framework/1"
        headers["User-Agent"] = USER_AGENTS[profile]
        return headers


def events_path(app_id: str) -> str:
    return f"/v1/apps/{app_id}/events"


def endpoint_path(app_id: str, endpoint_id: str) -> str:
    return f"/v1/apps/{app_id}/endpoints/{endpoint_id}"


def kpi_path(app_id: str, kpi: str) -> str:
    return f"/v1/apps/{app_id}/kpis/daterange/{kpi}"
