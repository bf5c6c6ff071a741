"""Who a request is and what it may do: every API call verified, then held
to its key's scope.

A request signed with a key ``ingest`` issued (``ingest keys create``) is
verified with that key's secret from the key ring; one signed with
Cognito-style temporary credentials (``X-Amz-Security-Token``) with the
secret its session token derives (:mod:`ingest.api.identity`). Either way
the signature is checked by :class:`ingest.api.sigv4.Verifier`, and the
principal it yields must be allowed the operation on the request's app
(:meth:`ingest.scopes.Principal.may`), else 403 ``AccessDeniedException``, the
error AWS services answer for an authenticated call that IAM denies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ingest.api.http import Request
from ingest.api.identity import Identities
from ingest.api.sessions import Sessions
from ingest.api.sigv4 import Verifier
from ingest.errors import AccessDenied, AuthError
from ingest.keys import KeyRing
from ingest.metrics import Metrics
from ingest.scopes import Principal

log = logging.getLogger(__name__)


class Authenticator:
    def __init__(
        self,
        *,
        ring: KeyRing,
        identities: Identities,
        max_skew_s: float,
        metrics: Metrics,
        account_id: str,
        sessions: Sessions,
    ) -> None:
        self.sessions = sessions
        """The console's session tokens (ingest.api.console checks them)."""
        self._ring = ring
        self._identities = identities
        self._metrics = metrics
        self._account_id = account_id
        self._verifier: Verifier[Principal] = Verifier(self._lookup, max_skew_s=max_skew_s)

    def _lookup(self, access_key_id: str, session_token: str | None) -> tuple[str, Principal] | None:
        if session_token is None:
            return self._ring.secret(access_key_id)
        found = self._identities.temporary(access_key_id, session_token)
        if found is None:
            return None
        secret, said = found
        return secret, Principal(access_key_id, "ingest", frozenset((said.app_id,)), temporary=True)

    def live(self, access_key_id: str) -> Principal | None:
        """The principal of a live (unrevoked) key we issued, as the key ring
        knows it now."""
        found = self._ring.secret(access_key_id)
        return found[1] if found is not None else None

    async def authenticate(
        self,
        request: Request,
        *,
        raw_path: bytes,
        query_string: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        max_body_bytes: int,
    ) -> Principal:
        """The verified principal of ``request`` (its body read, bounded); an
        AuthError (403) otherwise, counted by reason."""
        body = await request.body(max_body_bytes)
        try:
            return self._verifier.verify(
                method=request.method,
                raw_path=raw_path,
                query_string=query_string,
                headers=headers,
                body=body,
            )
        except AuthError as exc:
            self._metrics.auth_refusals.labels(exc.reason).inc()
            raise

    def authorize(self, principal: Principal, operation: str, app_id: str | None, region: str) -> None:
        """AccessDenied unless ``principal`` may run ``operation`` on ``app_id``."""
        if principal.may(operation, app_id):
            return
        self._metrics.auth_refusals.labels("out_of_scope").inc()
        resource = (
            f"arn:aws:mobiletargeting:{region}:{self._account_id}:apps/{app_id}"
            if app_id is not None
            else f"arn:aws:mobiletargeting:{region}:{self._account_id}:apps"
        )
        log.debug("key %s refused %s on %s: out of its scope", principal.access_key_id, operation, resource)
        # AWS's text for an IAM denial: "User: <arn> is not authorized to
        # perform: <action> on resource: <arn>".
        raise AccessDenied(
            f"User: {principal.access_key_id} is not authorized to perform: "
            f"mobiletargeting:{operation} on resource: {resource[:300]}"
        )
