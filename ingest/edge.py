"""The HTTP edge: Pinpoint's operations on the write path, as one ASGI app.

PutEvents answers 202 with a status for every endpoint and every event it was
sent: ``{"StatusCode": 202, "Message": "Accepted"}`` only once Kafka
acknowledged that record (acks=all), 400 with the broken rule for an invalid
item, 500 (clients retry it) when Kafka did not acknowledge in time. Whole
requests fail only when unusable (400), too large (413), for an unknown app
(404) or under overload (429) — never with 502/503/504, which Amplify JS drops.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ingest import endpoints, validate
from ingest.auth import KeyLog, credential_scope
from ingest.codec import Codec
from ingest.endpoints import EndpointDelete, EndpointState
from ingest.errors import (
    ApiError,
    BadRequest,
    InternalServerError,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    StoreError,
    TooManyRequests,
)
from ingest.kafka import ENDPOINTS_TOPIC, EVENTS_TOPIC
from ingest.kpi_api import KpiReads
from ingest.metrics import Metrics
from ingest.publish import OutRecord, Publisher
from ingest.records import EndpointUpsert, Invalid
from ingest.settings import Settings
from ingest.store import App, Store
from ingest.wire import (
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
    json_response,
    parse_query,
    send_response,
)

log = logging.getLogger(__name__)

ACCEPTED = {"StatusCode": 202, "Message": "Accepted"}
NOT_ACKED = {
    "StatusCode": 500,
    "Message": "Kafka did not acknowledge the record in time; retry with the same ID",
}
# Pinpoint API operations take an in-flight slot; probes and /metrics do not,
# so an overloaded edge still answers Kubernetes and Prometheus.
_ADMITTED = frozenset(
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
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class AppCache:
    """App lookups for the hot path, each answer kept ``ttl_s``: another edge's
    CreateApp or DeleteApp is seen within that time."""

    def __init__(self, store: Store, ttl_s: float) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[float, App | None]] = {}

    async def get(self, app_id: str) -> App | None:
        now = time.monotonic()
        hit = self._entries.get(app_id)
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        app = await self._store.get_app(app_id)
        if len(self._entries) > 10_000:  # bound memory against random app IDs
            self._entries.clear()
        self._entries[app_id] = (now, app)
        return app

    def put(self, app_id: str, app: App | None) -> None:
        self._entries[app_id] = (time.monotonic(), app)


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
        readiness: Sequence[Callable[[], bool]] = (),
    ) -> None:
        self._settings = settings
        self._readiness = tuple(readiness)
        self._store = store
        self._apps = AppCache(store, settings.app_cache_ttl_s)
        self._kpis = KpiReads(store)
        self._publisher = publisher
        self._codec = codec
        self._metrics = metrics
        self._keys = KeyLog()
        self._in_flight = 0
        self.draining = False
        self._router = Router(
            [
                Route(
                    "/v1/apps", {"POST": ("CreateApp", self.create_app), "GET": ("GetApps", self.get_apps)}
                ),
                Route(
                    "/v1/apps/{app}",
                    {"GET": ("GetApp", self.get_app), "DELETE": ("DeleteApp", self.delete_app)},
                ),
                Route("/v1/apps/{app}/events", {"POST": ("PutEvents", self.put_events)}),
                Route(
                    "/v1/apps/{app}/endpoints",
                    {"PUT": ("UpdateEndpointsBatch", self.update_endpoints_batch)},
                ),
                Route(
                    "/v1/apps/{app}/endpoints/{endpoint}",
                    {
                        "PUT": ("UpdateEndpoint", self.update_endpoint),
                        "GET": ("GetEndpoint", self.get_endpoint),
                        "DELETE": ("DeleteEndpoint", self.delete_endpoint),
                    },
                ),
                Route(
                    "/v1/apps/{app}/users/{user}",
                    {
                        "GET": ("GetUserEndpoints", self.get_user_endpoints),
                        "DELETE": ("DeleteUserEndpoints", self.delete_user_endpoints),
                    },
                ),
                Route(
                    "/v1/apps/{app}/kpis/daterange/{kpi}",
                    {"GET": ("GetApplicationDateRangeKpi", self.get_application_kpi)},
                ),
                Route(
                    "/v1/apps/{app}/campaigns/{campaign}/kpis/daterange/{kpi}",
                    {"GET": ("GetCampaignDateRangeKpi", self.get_campaign_kpi)},
                ),
                Route(
                    "/v1/apps/{app}/journeys/{journey}/kpis/daterange/{kpi}",
                    {"GET": ("GetJourneyDateRangeKpi", self.get_journey_kpi)},
                ),
                Route("/healthz", {"GET": ("healthz", self.healthz)}),
                Route("/readyz", {"GET": ("readyz", self.readyz)}),
                Route("/metrics", {"GET": ("metrics", self.metrics)}),
            ]
        )

    @property
    def ready(self) -> bool:
        ready = not self.draining and self._publisher.healthy and all(check() for check in self._readiness)
        self._metrics.ready.set(1 if ready else 0)
        return ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        operation = "unknown"
        admitted = False
        try:
            operation, handler, request = self._route(scope, receive, request_id)
            if operation in _ADMITTED:
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
        if self.draining or self._in_flight >= self._settings.max_in_flight_requests:
            self._metrics.overloaded.labels("draining" if self.draining else "in_flight").inc()
            raise TooManyRequests("Too many requests in flight; retry shortly")
        self._in_flight += 1
        self._metrics.in_flight.set(self._in_flight)

    # --- helpers ---------------------------------------------------------

    async def _app(self, request: Request) -> App:
        app_id = request.params["app"]
        app = await self._apps.get(app_id)
        if app is None:
            raise NotFound(f"Application not found: {app_id[:200]}")
        return app

    async def _json(self, request: Request) -> Any:
        return validate.json_body(await request.body(self._settings.max_body_bytes))

    @staticmethod
    def _key(app_id: str, endpoint_id: str) -> bytes:
        return f"{app_id}:{endpoint_id}".encode()

    async def _write_endpoints(self, upserts: list[EndpointUpsert], request: Request) -> Response:
        records = [
            OutRecord(ENDPOINTS_TOPIC, self._key(u.app_id, u.endpoint_id), self._codec.encode_endpoint(u))
            for u in upserts
        ]
        acked = await self._publisher.publish(records)
        failed = acked.count(False)
        self._metrics.endpoints.labels("accepted", "").inc(len(acked) - failed)
        if failed:
            self._metrics.endpoints.labels("failed", "").inc(failed)
            raise InternalServerError("Kafka did not acknowledge the endpoint write in time; retry")
        return json_response(202, {"Message": "Accepted", "RequestID": request.request_id})

    # --- operations ------------------------------------------------------

    async def put_events(self, request: Request) -> Response:
        app = await self._app(request)
        raw = await request.body(self._settings.max_body_bytes)
        body = validate.json_body(raw)
        batches = validate.put_events(
            body,
            app_id=app.id,
            request_id=request.request_id,
            received_at_ms=time.time_ns() // 1_000_000,
            body_bytes=len(raw),
        )
        encode_event = self._codec.encode_event
        encode_endpoint = self._codec.encode_endpoint
        records: list[OutRecord] = []
        # Per response slot: the Invalid it was judged, or the index of its record.
        slots: list[tuple[str, list[tuple[str, Invalid | int]], Invalid | int]] = []
        for batch in batches:
            key = self._key(app.id, batch.endpoint_id)
            endpoint_slot: Invalid | int
            if isinstance(batch.endpoint, Invalid):
                endpoint_slot = batch.endpoint
            else:
                endpoint_slot = len(records)
                records.append(OutRecord(ENDPOINTS_TOPIC, key, encode_endpoint(batch.endpoint)))
            event_slots: list[tuple[str, Invalid | int]] = []
            for event_id, event in batch.events:
                if isinstance(event, Invalid):
                    event_slots.append((event_id, event))
                else:
                    event_slots.append((event_id, len(records)))
                    records.append(OutRecord(EVENTS_TOPIC, key, encode_event(event)))
            slots.append((batch.endpoint_id, event_slots, endpoint_slot))
        acked = await self._publisher.publish(records) if records else []

        counts: Counter[tuple[str, str, str]] = Counter()

        def status(slot: Invalid | int, kind: str) -> dict[str, Any]:
            if isinstance(slot, Invalid):
                counts[(kind, "rejected", slot.reason)] += 1
                return {"StatusCode": 400, "Message": slot.message}
            if acked[slot]:
                counts[(kind, "accepted", "")] += 1
                return ACCEPTED
            counts[(kind, "failed", "")] += 1
            return NOT_ACKED

        results = {
            endpoint_id: {
                "EndpointItemResponse": status(endpoint_slot, "endpoint"),
                "EventsItemResponse": {event_id: status(slot, "event") for event_id, slot in event_slots},
            }
            for endpoint_id, event_slots, endpoint_slot in slots
        }
        for (kind, outcome, reason), n in counts.items():
            counter = self._metrics.events if kind == "event" else self._metrics.endpoints
            counter.labels(outcome, reason).inc(n)
        return json_response(202, {"Results": results})

    async def update_endpoint(self, request: Request) -> Response:
        app = await self._app(request)
        upsert = validate.update_endpoint(
            await self._json(request),
            app_id=app.id,
            endpoint_id=request.params["endpoint"],
            request_id=request.request_id,
            received_at_ms=time.time_ns() // 1_000_000,
        )
        return await self._write_endpoints([upsert], request)

    async def update_endpoints_batch(self, request: Request) -> Response:
        app = await self._app(request)
        upserts = validate.update_endpoints_batch(
            await self._json(request),
            app_id=app.id,
            request_id=request.request_id,
            received_at_ms=time.time_ns() // 1_000_000,
        )
        return await self._write_endpoints(upserts, request)

    async def get_endpoint(self, request: Request) -> Response:
        """Eventually consistent: a write is readable once the endpoint worker
        applied it (README states the measured delay)."""
        app = await self._app(request)
        state = await self._store.get_endpoint(app.id, request.params["endpoint"])
        if state is None:
            raise NotFound(f"Endpoint not found: {request.params['endpoint'][:200]}")
        return json_response(200, endpoints.response(state))

    async def delete_endpoint(self, request: Request) -> Response:
        app = await self._app(request)
        state = await self._store.get_endpoint(app.id, request.params["endpoint"])
        if state is None:
            raise NotFound(f"Endpoint not found: {request.params['endpoint'][:200]}")
        await self._delete([state], request)
        return json_response(202, endpoints.response(state))

    async def get_user_endpoints(self, request: Request) -> Response:
        app = await self._app(request)
        states = await self._store.user_endpoints(app.id, request.params["user"])
        if not states:
            raise NotFound(f"User not found: {request.params['user'][:200]}")
        return json_response(200, {"Item": [endpoints.response(s) for s in states]})

    async def delete_user_endpoints(self, request: Request) -> Response:
        app = await self._app(request)
        states = await self._store.user_endpoints(app.id, request.params["user"])
        if not states:
            raise NotFound(f"User not found: {request.params['user'][:200]}")
        await self._delete(states, request)
        return json_response(202, {"Item": [endpoints.response(s) for s in states]})

    async def _delete(self, states: Sequence[EndpointState], request: Request) -> None:
        """Tombstones on ingest.endpoints, keyed like the upserts so they are
        ordered with them; answered only once Kafka has them."""
        received_at_ms = time.time_ns() // 1_000_000
        records = [
            OutRecord(
                ENDPOINTS_TOPIC,
                self._key(s.app_id, s.endpoint_id),
                self._codec.encode_delete(
                    EndpointDelete(s.app_id, s.endpoint_id, request.request_id, received_at_ms)
                ),
            )
            for s in states
        ]
        if not all(await self._publisher.publish(records)):
            raise InternalServerError("Kafka did not acknowledge the delete in time; retry")

    async def create_app(self, request: Request) -> Response:
        name, tags = validate.create_app(await self._json(request))
        app_id = uuid.uuid4().hex
        scope = credential_scope(request.headers, b"")
        region = scope.region if scope is not None else self._settings.region
        app = App(
            id=app_id,
            name=name,
            arn=f"arn:aws:mobiletargeting:{region}:{self._settings.account_id}:apps/{app_id}",
            tags=tags,
            creation_date=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        )
        await self._store.create_app(app)
        self._apps.put(app_id, app)
        return json_response(201, _app_response(app))

    async def get_app(self, request: Request) -> Response:
        return json_response(200, _app_response(await self._app(request)))

    async def get_apps(self, request: Request) -> Response:
        size_text = request.query_one("page-size")
        try:
            size = DEFAULT_PAGE_SIZE if size_text is None else int(size_text)
        except ValueError as exc:
            raise BadRequest("page-size must be a whole number") from exc
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise BadRequest(f"page-size must be 1-{MAX_PAGE_SIZE}")
        apps = await self._store.list_apps(after=request.query_one("token"), limit=size + 1)
        page: dict[str, Any] = {"Item": [_app_response(a) for a in apps[:size]]}
        if len(apps) > size:
            page["NextToken"] = apps[size - 1].id
        return json_response(200, page)

    async def delete_app(self, request: Request) -> Response:
        app_id = request.params["app"]
        app = await self._store.delete_app(app_id)
        if app is None:
            raise NotFound(f"Application not found: {app_id[:200]}")
        self._apps.put(app_id, None)
        return json_response(200, _app_response(app))

    async def get_application_kpi(self, request: Request) -> Response:
        app = await self._app(request)
        return json_response(200, await self._kpis.application(app.id, request))

    async def get_campaign_kpi(self, request: Request) -> Response:
        app = await self._app(request)
        return json_response(200, await self._kpis.campaign(app.id, request))

    async def get_journey_kpi(self, request: Request) -> Response:
        app = await self._app(request)
        return json_response(200, await self._kpis.journey(app.id, request))

    async def healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        if self.ready:
            return json_response(200, {"status": "ready"})
        reason = (
            "draining"
            if self.draining
            else "producer unhealthy"
            if not self._publisher.healthy
            else "a worker is not ready (store unavailable?)"
        )
        return json_response(503, {"status": "not ready", "reason": reason})

    async def metrics(self, request: Request) -> Response:
        body = await asyncio.to_thread(generate_latest, self._metrics.registry)
        return Response(200, body, CONTENT_TYPE_LATEST.encode())


async def _preflight(request: Request) -> Response:
    return Response(200, b"", b"text/plain", PREFLIGHT_HEADERS)


def _app_response(app: App) -> dict[str, Any]:
    return {
        "Arn": app.arn,
        "Id": app.id,
        "Name": app.name,
        "tags": app.tags,
        "CreationDate": app.creation_date,
    }
