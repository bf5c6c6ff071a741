"""The analytics console: ``/console/``, static pages over the same API.

The pages (``ingest/console/``, shipped in the wheel) call the Pinpoint API
itself (GetApps, GetApplicationDateRangeKpi, GetEndpoint, …) with a session
cookie in place of a SigV4 signature, so the console and the API can never
disagree, and every console read is admitted, rate-limited, held to its key's
scope and counted exactly as the API's are.

**Sign-in** is one request, ``POST /console/api/session``, SigV4-signed in the
page with the access key (``sigv4.js``): the secret never leaves the page,
not even to this edge, which verifies the signature as it verifies any
other. It answers with a session token (:mod:`ingest.api.sessions`) in an
``HttpOnly; SameSite=Strict`` cookie (``Secure`` when the page was loaded
over HTTPS), bound to the key's scope and apps. Only read and admin keys may
sign in.

**Every request a session carries** is a GET (the console only reads,
whatever its key's scope), and must also carry the ``X-Ingest-Console``
header (a cross-site page cannot send it without a CORS preflight, which
these operations never answer), an ``Origin``, when sent (always on a
non-GET), naming this host, and no ``Sec-Fetch-Site`` other than
``same-origin``; its key must still be live in the key ring, so revoking it
ends the session within ``INGEST_AUTH_REFRESH_S``. A request the user made
slides the inactivity timeout (the cookie is re-issued); the page's own
refreshes say ``X-Ingest-Console: refresh`` and do not.

Signing in the page rather than posting the secret: the secret is never on
the wire, in a proxy's log or in this process's memory; what a network
observer of a plain-HTTP sign-in could replay is one signed request, within
the 15-minute skew window, as with any SigV4 request (over HTTPS, nothing).

Sign-out clears the cookie. Tokens are stateless, so a copy of a token taken
before sign-out stays valid until its inactivity timeout: the cookie is
HttpOnly, so no script of the page can read one.
"""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import Callable
from importlib import resources
from urllib.parse import urlsplit

from ingest.api.auth import Authenticator
from ingest.api.http import Request, Response, Route, json_response
from ingest.api.sessions import COOKIE, Session, SessionRefused, Sessions
from ingest.api.streamhealth import StreamHealth
from ingest.errors import Forbidden, NotFound, UnrecognizedClient
from ingest.metrics import Metrics
from ingest.scopes import Principal

log = logging.getLogger(__name__)

HEADER = b"x-ingest-console"
# The page's own periodic reloads: they keep nothing alive.
REFRESH = b"refresh"
# No inline script or style, nothing from another origin, no framing.
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)
TYPES = {".js": b"text/javascript; charset=utf-8", ".css": b"text/css; charset=utf-8"}
SAFE_METHODS = frozenset(("GET", "HEAD"))
# The console's operations, admitted and rate-limited as the API's; all but
# the files and sign-out (which only clears a cookie) are authenticated.
OPERATIONS = frozenset(
    ("ConsoleAsset", "ConsoleSignIn", "ConsoleSession", "ConsoleSignOut", "ConsoleStreamHealth")
)
UNSIGNED = frozenset(("ConsoleAsset", "ConsoleSignOut"))
# What a key bound to apps reads in place of the delivery figures.
BOUND_HEALTH = "the figures are every app's together, so only an admin key for every app sees them"


def read_assets() -> dict[str, tuple[bytes, bytes]]:
    """Every file of ``ingest/console/`` by its path under it, read once at
    start-up: (body, content type)."""
    root = resources.files("ingest") / "console"
    found: dict[str, tuple[bytes, bytes]] = {}
    pending = [("", root)]
    while pending:
        prefix, folder = pending.pop()
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                pending.append((name + "/", entry))
                continue
            suffix = name[name.rfind(".") :] if "." in name else ""
            kind = TYPES.get(suffix) or (mimetypes.guess_type(name)[0] or "text/plain").encode()
            if kind.startswith((b"text/", b"application/json")) and b"charset" not in kind:
                kind += b"; charset=utf-8"
            found[name] = (entry.read_bytes(), kind)
    return found


def _cookie(header: bytes | None) -> str | None:
    if header is None:
        return None
    for part in header.decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def _set_cookie(value: str, *, max_age_s: int, secure: bool) -> tuple[bytes, bytes]:
    flags = "; Secure" if secure else ""
    return (
        b"set-cookie",
        f"{COOKIE}={value}; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite=Strict{flags}".encode(),
    )


def check_same_origin(request: Request) -> None:
    """Forbidden unless ``request`` came from a console page of this host:
    the custom header, a same-host ``Origin`` (required on a non-GET), and
    no cross-site ``Sec-Fetch-Site``."""
    headers = request.headers
    if HEADER not in headers:
        raise Forbidden("A console request must carry the X-Ingest-Console header")
    site = headers.get(b"sec-fetch-site")
    if site is not None and site != b"same-origin":
        raise Forbidden("Cross-site console requests are refused")
    origin = headers.get(b"origin")
    if origin is None:
        if request.method not in SAFE_METHODS:
            raise Forbidden("A console request that changes state must carry Origin")
        return
    host = headers.get(b"host", b"").decode("latin-1")
    if urlsplit(origin.decode("latin-1")).netloc != host:
        raise Forbidden("Cross-origin console requests are refused")


class Console:
    """The console's routes and its session checks. ``sessions`` and
    ``live`` (the key ring's principal of a live key) are None with
    ``INGEST_AUTH=off``, when there is nothing to sign in to."""

    def __init__(
        self,
        *,
        sessions: Sessions | None,
        live: Callable[[str], Principal | None] | None,
        metrics: Metrics,
        health: StreamHealth | None = None,
        now_s: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._live = live
        self._metrics = metrics
        self._now_s = now_s
        self._assets = read_assets()
        self._health = health or StreamHealth(None)

    @classmethod
    def over(cls, auth: Authenticator | None, metrics: Metrics, health: StreamHealth) -> Console:
        """The console of an edge verifying with ``auth`` (None: INGEST_AUTH=off)."""
        if auth is None:
            return cls(sessions=None, live=None, metrics=metrics, health=health)
        return cls(sessions=auth.sessions, live=auth.live, metrics=metrics, health=health)

    def routes(self) -> list[Route]:
        return [
            Route("/console", {"GET": ("ConsoleAsset", self.asset)}),
            Route("/console/{file}", {"GET": ("ConsoleAsset", self.asset)}),
            Route("/console/vendor/{file}", {"GET": ("ConsoleAsset", self.vendor_asset)}),
            # Held to the app's scope as GetEventStream is (admin keys).
            Route(
                "/console/api/apps/{app}/stream-health",
                {"GET": ("ConsoleStreamHealth", self.stream_health)},
            ),
            Route(
                "/console/api/session",
                {
                    "POST": ("ConsoleSignIn", self.sign_in),
                    "GET": ("ConsoleSession", self.session),
                    "DELETE": ("ConsoleSignOut", self.sign_out),
                },
            ),
        ]

    @staticmethod
    def carries_session(request: Request) -> bool:
        """A request to authenticate by its session cookie: it has no SigV4
        ``Authorization`` and does have the cookie."""
        return b"authorization" not in request.headers and _cookie(request.headers.get(b"cookie")) is not None

    def authenticate(self, request: Request) -> tuple[Principal, tuple[tuple[bytes, bytes], ...]]:
        """The principal of ``request``'s session, and the re-issued cookie
        when the user (not the page's timer) made it; Forbidden when it is
        not the console's own request, UnrecognizedClient when the session
        does not hold or its key is no longer live."""
        check_same_origin(request)
        if request.method not in SAFE_METHODS:
            # The console only reads: a session changes nothing, whatever its
            # key's scope (writes are SigV4-signed, by an SDK).
            raise Forbidden("A console session only reads; sign requests that change state with SigV4")
        if self._sessions is None or self._live is None:
            raise UnrecognizedClient("Console sessions are off (INGEST_AUTH=off)", reason="bad_token")
        token = _cookie(request.headers.get(b"cookie")) or ""
        now = int(self._now_s())
        try:
            session = self._sessions.read(token, now)
            self._hold_live(session)
        except SessionRefused as exc:
            self._metrics.auth_refusals.labels("bad_token").inc()
            log.debug("refused a console session: %s", exc.reason)
            message = "The console session has ended; sign in again"
            raise UnrecognizedClient(f"{message} ({exc.reason})", reason="bad_token") from exc
        if request.headers.get(HEADER) == REFRESH:
            return session.principal, ()
        return session.principal, (self._renewed(session, now, request),)

    def _hold_live(self, session: Session) -> None:
        """SessionRefused unless the session's key is live with the same scope and apps."""
        assert self._live is not None
        live = self._live(session.access_key_id)
        if live is None or live.scope != session.scope or live.apps != frozenset(session.apps):
            raise SessionRefused("revoked")

    def _renewed(self, session: Session, now: int, request: Request) -> tuple[bytes, bytes]:
        assert self._sessions is not None
        return _set_cookie(
            self._sessions.renew(session, now), max_age_s=self._sessions.idle_s, secure=_tls(request)
        )

    async def asset(self, request: Request) -> Response:
        return self._file(request.params.get("file", "index.html"))

    async def vendor_asset(self, request: Request) -> Response:
        return self._file("vendor/" + request.params["file"])

    def _file(self, name: str) -> Response:
        found = self._assets.get(name)
        if found is None:
            raise NotFound(f"No such console file: {name[:100]}")
        body, kind = found
        return Response(200, body, kind, SECURITY_HEADERS)

    async def sign_in(self, request: Request) -> Response:
        """The Edge verified the SigV4 signature and the scope (read or
        admin) before this runs."""
        check_same_origin(request)
        principal = request.principal
        if principal is None or self._sessions is None:
            # INGEST_AUTH=off: every request is served anyway.
            return _json({"AccessKeyId": "anonymous", "Scope": "admin", "Apps": []})
        token = self._sessions.issue(principal, int(self._now_s()))
        log.info("console sign-in by key %s (scope %s)", principal.access_key_id, principal.scope)
        cookie = _set_cookie(token, max_age_s=self._sessions.idle_s, secure=_tls(request))
        return _json(_describe(principal, self._sessions.idle_s), cookie)

    async def session(self, request: Request) -> Response:
        principal = request.principal
        if principal is None or self._sessions is None:
            return _json({"AccessKeyId": "anonymous", "Scope": "admin", "Apps": []})
        return _json(_describe(principal, self._sessions.idle_s))

    async def stream_health(self, request: Request) -> Response:
        """The streams worker's delivery figures by destination kind
        (:mod:`ingest.api.streamhealth`); the page picks its app's kind.
        They are the whole deployment's (every app's deliveries), so only an
        admin key for every app sees them: a key bound to apps is told so."""
        principal = request.principal
        if principal is not None and principal.apps:
            return _json({"Unavailable": BOUND_HEALTH})
        return _json(await self._health.read())

    async def sign_out(self, request: Request) -> Response:
        """Clears the cookie, whatever state the session is in."""
        check_same_origin(request)
        token = _cookie(request.headers.get(b"cookie"))
        if token is not None and self._sessions is not None:
            try:
                key = self._sessions.read(token, int(self._now_s())).access_key_id
            except SessionRefused:
                key = "(an ended session)"
            log.info("console sign-out by key %s", key)
        return _json({"SignedOut": True}, _set_cookie("", max_age_s=0, secure=_tls(request)))


def _tls(request: Request) -> bool:
    """Whether the page was loaded over HTTPS (its Origin, or what a proxy
    in front says): the cookie is then Secure."""
    origin = request.headers.get(b"origin", b"")
    return origin.startswith(b"https:") or request.headers.get(b"x-forwarded-proto") == b"https"


def _describe(principal: Principal, idle_s: int) -> dict[str, object]:
    return {
        "AccessKeyId": principal.access_key_id,
        "Scope": principal.scope,
        "Apps": sorted(principal.apps),
        "IdleTimeoutSeconds": idle_s,
    }


def _json(payload: object, *headers: tuple[bytes, bytes]) -> Response:
    response = json_response(200, payload)
    return Response(response.status, response.body, response.content_type, SECURITY_HEADERS + headers)
