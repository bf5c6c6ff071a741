"""The edge's ASGI application: the route table, admission, and every
error turned into Pinpoint's answer. The operations live one module per
Pinpoint resource beside this one (``apps``, ``writes``, ``endpoints``,
``kpis``); a new resource is one more module and its rows in the table.

Whole requests fail only when unusable (400), too large (413), for an unknown
app (404) or under overload (429) — never with 502/503/504, which Amplify JS
drops. Every error carries ``x-amzn-ErrorType`` (:mod:`ingest.api.http`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from ingest.api.apps import AppCache, Apps
from ingest.api.endpoints import EndpointReads
from ingest.api.http import (
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
from ingest.api.kpis import KpiReads
from ingest.api.probes import Probes
from ingest.api.sigv4 import KeyLog, credential_scope
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

# Pinpoint API operations take an in-flight slot; probes and /metrics do not,
# so an overloaded edge still answers Kubernetes and Prometheus. (KPI reads
# are not admitted yet either.)
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
    )
)


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
        registry: CollectorRegistry,
        readiness: Callable[[], bool] = lambda: True,
    ) -> None:
        self._max_in_flight = settings.max_in_flight_requests
        self._metrics = metrics
        self._keys = KeyLog()
        self._in_flight = 0
        self.draining = False
        self.probes = Probes(
            (
                ("draining", lambda: not self.draining),
                ("producer unhealthy", lambda: publisher.healthy),
                ("a worker is not ready (store unavailable?)", readiness),
            ),
            registry,
            gauge=metrics.ready,
        )
        cache = AppCache(store, settings.app_cache_ttl_s)
        apps = Apps(settings=settings, store=store, cache=cache)
        reads = EndpointReads(store=store, apps=cache)
        writes = Writes(
            settings=settings, apps=cache, reads=reads, publisher=publisher, codec=codec, metrics=metrics
        )
        kpis = KpiReads(store, cache)
        self._router = Router(
            [
                Route(
                    "/v1/apps", {"POST": ("CreateApp", apps.create_app), "GET": ("GetApps", apps.get_apps)}
                ),
                Route(
                    "/v1/apps/{app}",
                    {"GET": ("GetApp", apps.get_app), "DELETE": ("DeleteApp", apps.delete_app)},
                ),
                Route("/v1/apps/{app}/events", {"POST": ("PutEvents", writes.put_events)}),
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
                Route("/healthz", {"GET": ("healthz", self.probes.healthz)}),
                Route("/readyz", {"GET": ("readyz", self.probes.readyz)}),
                Route("/metrics", {"GET": ("metrics", self.probes.metrics)}),
            ]
        )

    @property
    def ready(self) -> bool:
        return self.probes.ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        operation = "unknown"
        admitted = False
        try:
            operation, handler, request = self._route(scope, receive, request_id)
            if operation in ADMITTED:
                self._admit()
                admitted = True
                self._keys.note(credential_scope(request.headers, scope["query_string"]))
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
        await send_response(send, response, request_id)
        self._metrics.requests.labels(operation, str(response.status)).inc()
        self._metrics.request_seconds.labels(operation).observe(time.perf_counter() - started)

    def _route(self, scope: Scope, receive: Receive, request_id: str) -> tuple[str, Handler, Request]:
        """→ (operation, handler, request); NotFound or MethodNotAllowed otherwise."""
        method = scope["method"]
        found = self._router.match(scope.get("raw_path") or scope["path"].encode())
        if method == "OPTIONS":
            return "preflight", _preflight, Request(method, {}, {}, {}, receive, request_id)
        if found is None:
            raise NotFound(f"No such resource: {scope['path'][:200]}")
        route, params = found
        if method not in route.operations:
            raise MethodNotAllowed(f"{method} is not allowed on {route.pattern}")
        operation, handler = route.operations[method]
        request = Request(
            method=method,
            params=params,
            query=parse_query(scope["query_string"]),
            headers=dict(scope["headers"]),
            receive=receive,
            request_id=request_id,
        )
        return operation, handler, request

    def _admit(self) -> None:
        """Count one more API request in flight, or refuse it with 429 now."""
        if self.draining or self._in_flight >= self._max_in_flight:
            self._metrics.overloaded.labels("draining" if self.draining else "in_flight").inc()
            raise TooManyRequests("Too many requests in flight; retry shortly")
        self._in_flight += 1
        self._metrics.in_flight.set(self._in_flight)


async def _preflight(request: Request) -> Response:
    return Response(200, b"", b"text/plain", PREFLIGHT_HEADERS)
