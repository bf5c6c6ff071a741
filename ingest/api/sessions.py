"""The console's session tokens: stateless, so any edge process of a
deployment reads a token another one issued (they share the master key).

A token is ``base64url(payload) "." base64url(tag)``: the payload names the
access key, its scope and apps, when the session was issued and when it was
last used; the tag is an HMAC-SHA256 of it under the master key's console
subkey (:meth:`ingest.keys.MasterKey.console_mac`), which signs nothing else.
Nothing is stored per session.

A token is refused (:class:`SessionRefused`, with the reason) when its tag
does not match (tampered, or made under another master key), when it was
last used more than ``idle_s`` ago (inactivity), or issued more than
``max_age_s`` ago (a session cannot be slid forever). The caller also holds
the key to the key ring on every request: a revoked key ends its sessions
within the ring's refresh, as it ends its signed requests.

Pure: the clock is passed in.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from ingest.scopes import SCOPES, Principal, Scope

COOKIE = "ingest_console"
# A token's longest form: 100 apps of 256 characters (keys.MAX_KEY_APPS,
# MAX_APP_ID_CHARS) in base64 is about 35 KiB, far above any real key's; a
# cookie past this is refused before it is decoded.
MAX_TOKEN_CHARS = 40_000
# The label every MAC input starts with, so no other MAC is valid as a token's.
DOMAIN = b"console-session\x00"


class SessionRefused(Exception):
    """A token that does not hold, and why: ``malformed``, ``tampered``,
    ``idle``, ``expired``, ``revoked`` (its key is no longer live)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"console session refused: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Session:
    access_key_id: str
    scope: Scope
    apps: tuple[str, ...]
    issued_s: int
    seen_s: int

    @property
    def principal(self) -> Principal:
        return Principal(self.access_key_id, self.scope, frozenset(self.apps), temporary=False)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and reads session tokens under ``mac``."""

    def __init__(self, *, mac: Callable[[bytes], bytes], idle_s: int, max_age_s: int) -> None:
        self._mac = mac
        self.idle_s = idle_s
        self.max_age_s = max_age_s

    def issue(self, principal: Principal, now_s: int) -> str:
        return self._token(
            Session(principal.access_key_id, principal.scope, tuple(sorted(principal.apps)), now_s, now_s)
        )

    def renew(self, session: Session, now_s: int) -> str:
        """The same session, last used now (what slides the inactivity timeout)."""
        return self._token(
            Session(session.access_key_id, session.scope, session.apps, session.issued_s, now_s)
        )

    def read(self, token: str, now_s: int) -> Session:
        """The session ``token`` carries, or SessionRefused."""
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise SessionRefused("malformed")
        body, tag = token.split(".")
        try:
            payload, given = _unb64(body), _unb64(tag)
        except (ValueError, binascii.Error) as exc:
            raise SessionRefused("malformed") from exc
        if not hmac.compare_digest(self._mac(DOMAIN + payload), given):
            raise SessionRefused("tampered")
        try:
            fields = orjson.loads(payload)
            key, scope, apps = str(fields["k"]), fields["s"], tuple(map(str, fields["a"]))
            session = Session(key, scope, apps, int(fields["i"]), int(fields["l"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SessionRefused("malformed") from exc
        if session.scope not in SCOPES:
            raise SessionRefused("malformed")
        if now_s - session.issued_s > self.max_age_s:
            raise SessionRefused("expired")
        if now_s - session.seen_s > self.idle_s:
            raise SessionRefused("idle")
        return session

    def _token(self, session: Session) -> str:
        payload = orjson.dumps(
            {
                "k": session.access_key_id,
                "s": session.scope,
                "a": list(session.apps),
                "i": session.issued_s,
                "l": session.seen_s,
            }
        )
        return f"{_b64(payload)}.{_b64(self._mac(DOMAIN + payload))}"
