"""The edge's ASGI application: the route table, admission, and every
error turned into Pinpoint's answer. The operations live one module per
Pinpoint resource beside this one (``apps``, ``writes``, ``endpoints``,
``kpis``, ``eventstreams``, ``tags``, ``appsettings``, ``segments``, ``jobs``); a
new resource is one more module and its rows in the table, which is why
this one earns its size (over 400 lines): a row for every Pinpoint operation.

Whole requests fail only when unusable (400), too large (413), for an unknown
app (404) or under overload (429) — never with 502/503/504, which Amplify JS
drops. Every error carries ``x-amzn-ErrorType`` (:mod:`ingest.api.http`).
"""

from __future__ import annotations

import logging
import time
import uuid

from ingest.api import console
from ingest.api.apps import AppCache, Apps
from ingest.api.appsettings import AppSettings
from ingest.api.auth import Authenticator
from ingest.api.console import Console
from ingest.api.endpoints import EndpointReads
from ingest.api.eventstreams import EventStreams
from ingest.api.http import (
    CORS_EXPOSE,
    PREFLIGHT_HEADERS,
    Handler,
    Receive,
    Request,
    Response,
    Route,
    Router,
    Scope,
    Send,
    error_response,
    parse_query,
    send_response,
)
from ingest.api.identity import Identities
from ingest.api.jobs import Jobs
from ingest.api.kpis import KpiReads
from ingest.api.limits import ClientAddress, TokenBuckets
from ingest.api.probes import Check
from ingest.api.segments import Segments
from ingest.api.sigv4 import KeyLog, credential_scope
from ingest.api.streamhealth import StreamHealth
from ingest.api.tags import Tags, derive
from ingest.api.writes import Writes
from ingest.errors import (
    ApiError,
    InternalServerError,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    StoreError,
    TooManyRequests,
)
from ingest.kafka.publish import Publisher
from ingest.metrics import Metrics
from ingest.records.codec import Codec
from ingest.settings import Settings
from ingest.store.base import Store

log = logging.getLogger(__name__)

# Every API operation, reads as much as writes, takes an in-flight slot: a
# read holds a store connection as long as a write holds a producer slot, so
# under overload both answer 429 rather than queue. Probes and /metrics are
# not here at all: they have their own listener (ingest.api.probes), so an
# overloaded edge still answers Kubernetes and Prometheus.
ADMITTED = frozenset(
    (
        "CreateApp",
        "GetApps",
        "GetApp",
        "DeleteApp",
        "PutEvents",
        "UpdateEndpoint",
        "UpdateEndpointsBatch",
        "GetEndpoint",
        "DeleteEndpoint",
        "GetUserEndpoints",
        "DeleteUserEndpoints",
        "GetApplicationDateRangeKpi",
        "GetCampaignDateRangeKpi",
        "GetJourneyDateRangeKpi",
        "PutEventStream",
        "GetEventStream",
        "DeleteEventStream",
        "TagResource",
        "UntagResource",
        "ListTagsForResource",
        "GetApplicationSettings",
        "UpdateApplicationSettings",
        "CognitoIdentity",
        "CreateSegment",
        "GetSegments",
        "GetSegment",
        "UpdateSegment",
        "DeleteSegment",
        "GetSegmentVersions",
        "GetSegmentVersion",
        # Import and export jobs (ingest.api.jobs).
        "CreateImportJob",
        "GetImportJob",
        "GetImportJobs",
        "GetSegmentImportJobs",
        "CreateExportJob",
        "GetExportJob",
        "GetExportJobs",
        "GetSegmentExportJobs",
    )
)
# The console's own operations (ingest.api.console) are admitted alike.
ADMITTED |= console.OPERATIONS
# Every Pinpoint operation is signed and verified (or carries a console
# session); the Cognito-style credentials endpoint is not (it is how a mobile
# app gets credentials), nor are the console's files and sign-out.
SIGNED = ADMITTED - {"CognitoIdentity"} - console.UNSIGNED
# What a browser may call (CORS): what a shipped web app does, never the
# admin or read operations.
BROWSER_OPERATIONS = frozenset(("PutEvents", "UpdateEndpoint", "UpdateEndpointsBatch", "CognitoIdentity"))
# Client addresses and apps a process keeps a rate-limit bucket for; past
# these the least recently seen is forgotten (it starts again full).
MAX_LIMITED_KEYS = 100_000


def buckets(rate_per_s: float, *, least: float = 1.0) -> TokenBuckets | None:
    """A limiter holding one second's worth at ``rate_per_s`` (at least
    ``least``); None when 0 (off)."""
    if rate_per_s <= 0:
        return None
    return TokenBuckets(rate_per_s=rate_per_s, burst=max(rate_per_s, least), max_keys=MAX_LIMITED_KEYS)


class Edge:
    """The ASGI application. ``draining`` turns readiness off and refuses new
    work with 429 while in-flight requests finish."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        publisher: Publisher,
        codec: Codec,
        metrics: Metrics,
        identities: Identities,
        auth: Authenticator | None,
    ) -> None:
        self._max_in_flight = settings.max_in_flight_requests
        self._max_queue_s = settings.max_queue_delay_ms / 1000
        self._max_body_bytes = settings.max_body_bytes
        self._region = settings.region
        self._auth = auth
        self._origins = frozenset(o.strip() for o in settings.cors_origins.split(",") if o.strip())
        self._any_origin = "*" in self._origins
        self._metrics = metrics
        self._keys = KeyLog()
        self._clients = ClientAddress.parse(settings.trusted_proxies)
        self._per_address = buckets(settings.rate_limit_address_requests_per_s)
        self._in_flight = 0
        self.draining = False
        # What readiness needs of the edge (the process's Probes, on their own
        # listener, hold these with every other role's).
        self.checks: tuple[Check, ...] = (("producer unhealthy", lambda: publisher.healthy),)
        cache = AppCache(store, settings.app_cache_ttl_s)
        apps = Apps(settings=settings, store=store, cache=cache)
        reads = EndpointReads(store=store, apps=cache)
        writes = Writes(
            settings=settings,
            apps=cache,
            reads=reads,
            publisher=publisher,
            codec=codec,
            metrics=metrics,
            # A bucket holds at least one full PutEvents (100 events).
            per_app=buckets(settings.rate_limit_app_events_per_s, least=100.0),
        )
        kpis = KpiReads(store, cache)
        body_limit = settings.max_body_bytes
        streams = EventStreams(
            store=store,
            apps=cache,
            max_body_bytes=body_limit,
            allowed_accounts=settings.stream_accounts,
        )
        tags = Tags(store=store, apps=cache, max_body_bytes=body_limit)
        app_settings = AppSettings(store=store, apps=cache, max_body_bytes=body_limit)
        segments = Segments(store=store, apps=cache, max_body_bytes=body_limit)
        jobs = Jobs(store=store, apps=cache, settings=settings)
        self._console = Console.over(auth, metrics, StreamHealth(settings.console_stream_metrics_url))
        self._router = Router(
            [
                *self._console.routes(),
                # Cognito Identity's JSON 1.1 protocol posts to the root.
                Route("/", {"POST": ("CognitoIdentity", lambda r: identities.handle(r, r.client))}),
                Route(
                    "/v1/apps", {"POST": ("CreateApp", apps.create_app), "GET": ("GetApps", apps.get_apps)}
                ),
                Route(
                    "/v1/apps/{app}",
                    {"GET": ("GetApp", apps.get_app), "DELETE": ("DeleteApp", apps.delete_app)},
                ),
                Route("/v1/apps/{app}/events", {"POST": ("PutEvents", writes.put_events)}),
                Route(
                    "/v1/apps/{app}/eventstream",
                    {
                        "POST": ("PutEventStream", streams.put_event_stream),
                        "GET": ("GetEventStream", streams.get_event_stream),
                        "DELETE": ("DeleteEventStream", streams.delete_event_stream),
                    },
                ),
                Route(
                    "/v1/apps/{app}/settings",
                    {
                        "GET": ("GetApplicationSettings", app_settings.get_application_settings),
                        "PUT": ("UpdateApplicationSettings", app_settings.update_application_settings),
                    },
                ),
                # The app an ARN names is the route's {app}, for the scope check.
                Route(
                    "/v1/tags/{arn}",
                    {
                        "POST": ("TagResource", tags.tag_resource),
                        "DELETE": ("UntagResource", tags.untag_resource),
                        "GET": ("ListTagsForResource", tags.list_tags_for_resource),
                    },
                    derive=derive,
                ),
                Route(
                    "/v1/apps/{app}/endpoints",
                    {"PUT": ("UpdateEndpointsBatch", writes.update_endpoints_batch)},
                ),
                Route(
                    "/v1/apps/{app}/endpoints/{endpoint}",
                    {
                        "PUT": ("UpdateEndpoint", writes.update_endpoint),
                        "GET": ("GetEndpoint", reads.get_endpoint),
                        "DELETE": ("DeleteEndpoint", writes.delete_endpoint),
                    },
                ),
                Route(
                    "/v1/apps/{app}/users/{user}",
                    {
                        "GET": ("GetUserEndpoints", reads.get_user_endpoints),
                        "DELETE": ("DeleteUserEndpoints", writes.delete_user_endpoints),
                    },
                ),
                Route(
                    "/v1/apps/{app}/kpis/daterange/{kpi}",
                    {"GET": ("GetApplicationDateRangeKpi", kpis.get_application_kpi)},
                ),
                Route(
                    "/v1/apps/{app}/campaigns/{campaign}/kpis/daterange/{kpi}",
                    {"GET": ("GetCampaignDateRangeKpi", kpis.get_campaign_kpi)},
                ),
                Route(
                    "/v1/apps/{app}/journeys/{journey}/kpis/daterange/{kpi}",
                    {"GET": ("GetJourneyDateRangeKpi", kpis.get_journey_kpi)},
                ),
                # Segments (ingest.api.segments).
                Route(
                    "/v1/apps/{app}/segments",
                    {
                        "POST": ("CreateSegment", segments.create_segment),
                        "GET": ("GetSegments", segments.get_segments),
                    },
                ),
                Route(
                    "/v1/apps/{app}/segments/{segment}",
                    {
                        "GET": ("GetSegment", segments.get_segment),
                        "PUT": ("UpdateSegment", segments.update_segment),
                        "DELETE": ("DeleteSegment", segments.delete_segment),
                    },
                ),
                Route(
                    "/v1/apps/{app}/segments/{segment}/versions",
                    {"GET": ("GetSegmentVersions", segments.get_segment_versions)},
                ),
                Route(
                    "/v1/apps/{app}/segments/{segment}/versions/{version}",
                    {"GET": ("GetSegmentVersion", segments.get_segment_version)},
                ),
                # Import and export jobs.
                Route(
                    "/v1/apps/{app}/jobs/import",
                    {
                        "POST": ("CreateImportJob", jobs.create_import_job),
                        "GET": ("GetImportJobs", jobs.get_import_jobs),
                    },
                ),
                Route("/v1/apps/{app}/jobs/import/{job}", {"GET": ("GetImportJob", jobs.get_import_job)}),
                Route(
                    "/v1/apps/{app}/segments/{segment}/jobs/import",
                    {"GET": ("GetSegmentImportJobs", jobs.get_segment_import_jobs)},
                ),
                Route(
                    "/v1/apps/{app}/jobs/export",
                    {
                        "POST": ("CreateExportJob", jobs.create_export_job),
                        "GET": ("GetExportJobs", jobs.get_export_jobs),
                    },
                ),
                Route("/v1/apps/{app}/jobs/export/{job}", {"GET": ("GetExportJob", jobs.get_export_job)}),
                Route(
                    "/v1/apps/{app}/segments/{segment}/jobs/export",
                    {"GET": ("GetSegmentExportJobs", jobs.get_segment_export_jobs)},
                ),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        operation = "unknown"
        # Counted in flight already when the HTTP server asked (shed), which
        # it does for every request it hands over.
        admitted = scope.get("ingest.admitted", False)
        renewed: tuple[tuple[bytes, bytes], ...] = ()
        try:
            operation, handler, request = self._route(scope, receive, request_id)
            if operation in ADMITTED:
                self._limit(request.client)
                if not admitted:
                    self._admit()
                    admitted = True
                self._check_queue_delay(scope)
            if operation in SIGNED:
                signed = credential_scope(request.headers, scope["query_string"])
                self._keys.note(signed)
                if self._auth is not None:
                    if operation != "ConsoleSignIn" and Console.carries_session(request):
                        principal, renewed = self._console.authenticate(request)
                    else:
                        principal = await self._auth.authenticate(
                            request,
                            raw_path=scope.get("raw_path") or scope["path"].encode(),
                            query_string=scope["query_string"],
                            headers=scope["headers"],
                            max_body_bytes=self._max_body_bytes,
                        )
                    request.principal = principal
                    region = signed.region if signed is not None else self._region
                    self._auth.authorize(principal, operation, request.params.get("app"), region)
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc, request_id)
        except Overloaded as exc:
            self._metrics.overloaded.labels("buffer").inc()
            response = error_response(TooManyRequests(str(exc)), request_id)
        except StoreError as exc:
            log.warning("store error on %s: %s", operation, exc)
            response = error_response(InternalServerError("The store is unavailable; retry"), request_id)
        except Exception:
            log.exception("unexpected error on %s (request %s)", operation, request_id)
            response = error_response(InternalServerError("Internal error; retry"), request_id)
        finally:
            if admitted:
                self._in_flight -= 1
                self._metrics.in_flight.set(self._in_flight)
        await send_response(send, response, request_id, self._cors(operation, scope) + renewed)
        self._metrics.requests.labels(operation, str(response.status)).inc()
        self._metrics.request_seconds.labels(operation).observe(time.perf_counter() - started)

    def _route(self, scope: Scope, receive: Receive, request_id: str) -> tuple[str, Handler, Request]:
        """→ (operation, handler, request); NotFound or MethodNotAllowed otherwise."""
        method = scope["method"]
        found = self._router.match(scope.get("raw_path") or scope["path"].encode())
        if method == "OPTIONS":
            return "preflight", _preflight, Request(method, {}, {}, {}, receive, request_id)
        peer = scope.get("client")
        if found is None:
            raise NotFound(f"No such resource: {scope['path'][:200]}")
        route, params = found
        if method not in route.operations:
            raise MethodNotAllowed(f"{method} is not allowed on {route.pattern}")
        operation, handler = route.operations[method]
        headers = dict(scope["headers"])
        request = Request(
            method=method,
            params=params,
            query=parse_query(scope["query_string"]),
            headers=headers,
            receive=receive,
            request_id=request_id,
            client=self._clients.of(peer[0], headers.get(b"x-forwarded-for")) if peer else "",
        )
        return operation, handler, request

    def _cors(self, operation: str, scope: Scope) -> tuple[tuple[bytes, bytes], ...]:
        """CORS headers for a browser allowed to call ``operation``: only the
        browser operations (and their preflights), only from an allowed origin."""
        if operation == "preflight":
            found = self._router.match(scope.get("raw_path") or scope["path"].encode())
            methods = found[0].operations.values() if found is not None else ()
            if not any(name in BROWSER_OPERATIONS for name, _ in methods):
                return ()
        elif operation not in BROWSER_OPERATIONS:
            return ()
        if self._any_origin:
            allowed = b"*"
        else:
            # Only here, off the default path: the headers looked through for Origin.
            origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
            if origin is None or origin.decode("latin-1") not in self._origins:
                return ()
            allowed = origin
        headers: tuple[tuple[bytes, bytes], ...] = (
            (b"access-control-allow-origin", allowed),
            (b"access-control-expose-headers", CORS_EXPOSE),
        )
        if operation == "preflight":
            headers += PREFLIGHT_HEADERS
        return (*headers, (b"vary", b"Origin")) if allowed != b"*" else headers

    def _limit(self, client: str) -> None:
        """One request of ``client``'s per-address rate, or 429 now."""
        limiter = self._per_address
        if limiter is None:
            return
        now = time.monotonic()
        if not limiter.take(client, now):
            self._metrics.overloaded.labels("address_rate").inc()
            raise TooManyRequests(
                "Rate exceeded for this client address", retry_after_s=limiter.retry_after_s(client, now)
            )

    def shed(self, scope: Scope) -> ApiError | None:
        """For the HTTP server, as it reads each request, before any task
        exists: the 429 to answer at once when admission is full or draining;
        else None, the request counted in flight from here (so a burst read
        in one pass of the loop is admitted only up to the limit)."""
        if self.draining or self._in_flight >= self._max_in_flight:
            self._metrics.overloaded.labels("draining" if self.draining else "in_flight").inc()
            return TooManyRequests("Too many requests in flight; retry shortly")
        self._in_flight += 1
        self._metrics.in_flight.set(self._in_flight)
        scope["ingest.admitted"] = True
        return None

    def _admit(self) -> None:
        """Count one more API request in flight, or refuse it with 429 now
        (a request that did not come through :meth:`shed`)."""
        refusal = self.shed({})
        if refusal is not None:
            raise refusal

    def _check_queue_delay(self, scope: Scope) -> None:
        """429 for a request that already waited longer than
        ``INGEST_MAX_QUEUE_DELAY_MS`` behind other work since the server read
        it: an answer that late is worth less than a quick 429 retried."""
        arrived = scope.get("ingest.arrived")
        if arrived is not None and time.monotonic() - arrived > self._max_queue_s:
            self._metrics.overloaded.labels("queue_delay").inc()
            raise TooManyRequests("The edge is overloaded; retry shortly")


async def _preflight(request: Request) -> Response:
    # The CORS headers, when the path and origin allow them, come from Edge._cors.
    return Response(200, b"", b"text/plain")
