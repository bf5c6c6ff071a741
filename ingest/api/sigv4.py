"""SigV4 credential scope, parsed (not verified) from each request.

Mobile clients sign with temporary Cognito credentials whose secrets only AWS
holds, so no self-hosted server can verify their signatures; signature checks
for keys we issue are a later step. For now the edge reads who signed (access
key ID, date, region, service) to log it and to fill app ARNs with the region.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

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
