"""Pinpoint's write operations: PutEvents, UpdateEndpoint, UpdateEndpointsBatch,
DeleteEndpoint and DeleteUserEndpoints.

PutEvents answers 202 with a status for every endpoint and every event it was
sent (:mod:`ingest.records.split`): ``Accepted`` only once Kafka acknowledged
that record (acks=all). UpdateEndpoint(s) and the deletes answer 202 only once
Kafka has every record, else 500 (clients retry it). Deletes are tombstones on
``ingest.endpoints``, keyed like the upserts so they are ordered with them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ingest.api.apps import AppCache
from ingest.api.endpoints import EndpointReads
from ingest.api.http import Request, Response, json_response
from ingest.api.limits import TokenBuckets
from ingest.errors import InternalServerError, TooManyRequests
from ingest.folds.endpoints import EndpointState, endpoint_response
from ingest.kafka.clients import ENDPOINTS_TOPIC
from ingest.kafka.publish import Publisher
from ingest.metrics import Metrics
from ingest.records import split, validate
from ingest.records.codec import Codec
from ingest.records.values import EndpointDelete, EndpointUpsert, OutRecord
from ingest.settings import Settings


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Writes:
    """The write path: validate, split, encode, publish, answer per item."""

    def __init__(
        self,
        *,
        settings: Settings,
        apps: AppCache,
        reads: EndpointReads,
        publisher: Publisher,
        codec: Codec,
        metrics: Metrics,
        per_app: TokenBuckets | None = None,
    ) -> None:
        self._max_body_bytes = settings.max_body_bytes
        self._per_app = per_app
        self._apps = apps
        self._reads = reads
        self._publisher = publisher
        self._codec = codec
        self._metrics = metrics

    async def put_events(self, request: Request) -> Response:
        app = await self._apps.require(request.params["app"])
        limiter = self._per_app
        if limiter is not None:
            # Refused before the body is parsed; its events are charged once
            # counted, so a request past the rate is refused in one lookup.
            now = time.monotonic()
            if not limiter.holds(app.id, now):
                self._metrics.overloaded.labels("app_rate").inc()
                raise TooManyRequests(
                    "Rate exceeded for this app's events", retry_after_s=limiter.retry_after_s(app.id, now)
                )
        raw = await request.body(self._max_body_bytes)
        batches = validate.put_events(
            validate.json_body(raw),
            app_id=app.id,
            request_id=request.request_id,
            received_at_ms=_now_ms(),
            body_bytes=len(raw),
        )
        if limiter is not None:
            limiter.charge(app.id, sum(len(batch.events) for batch in batches), time.monotonic())
        done = split.split(batches, app_id=app.id, codec=self._codec)
        acked = await self._publisher.publish(done.records) if done.records else []
        answer, tally = split.results(done, acked)
        for (kind, outcome, reason), n in tally.items():
            counter = self._metrics.events if kind == "event" else self._metrics.endpoints
            counter.labels(outcome, reason).inc(n)
        return json_response(202, {"Results": answer})

    async def update_endpoint(self, request: Request) -> Response:
        app = await self._apps.require(request.params["app"])
        upsert = validate.update_endpoint(
            validate.json_body(await request.body(self._max_body_bytes)),
            app_id=app.id,
            endpoint_id=request.params["endpoint"],
            request_id=request.request_id,
            received_at_ms=_now_ms(),
        )
        return await self._write_endpoints([upsert], request)

    async def update_endpoints_batch(self, request: Request) -> Response:
        app = await self._apps.require(request.params["app"])
        upserts = validate.update_endpoints_batch(
            validate.json_body(await request.body(self._max_body_bytes)),
            app_id=app.id,
            request_id=request.request_id,
            received_at_ms=_now_ms(),
        )
        return await self._write_endpoints(upserts, request)

    async def delete_endpoint(self, request: Request) -> Response:
        state = await self._reads.endpoint(request)
        await self._delete([state], request)
        return json_response(202, endpoint_response(state))

    async def delete_user_endpoints(self, request: Request) -> Response:
        states = await self._reads.user_endpoints(request)
        await self._delete(states, request)
        return json_response(202, {"Item": [endpoint_response(s) for s in states]})

    async def _write_endpoints(self, upserts: list[EndpointUpsert], request: Request) -> Response:
        records = split.endpoint_records(upserts, self._codec)
        acked = await self._publisher.publish(records)
        failed = acked.count(False)
        self._metrics.endpoints.labels("accepted", "").inc(len(acked) - failed)
        if failed:
            self._metrics.endpoints.labels("failed", "").inc(failed)
            raise InternalServerError("Kafka did not acknowledge the endpoint write in time; retry")
        return json_response(202, {"Message": "Accepted", "RequestID": request.request_id})

    async def _delete(self, states: Sequence[EndpointState], request: Request) -> None:
        """Tombstones, answered only once Kafka has them."""
        received_at_ms = _now_ms()
        encode = self._codec.encode_delete
        records = [
            OutRecord(
                ENDPOINTS_TOPIC,
                split.key(s.app_id, s.endpoint_id),
                encode(EndpointDelete(s.app_id, s.endpoint_id, request.request_id, received_at_ms)),
            )
            for s in states
        ]
        if not all(await self._publisher.publish(records)):
            raise InternalServerError("Kafka did not acknowledge the delete in time; retry")
