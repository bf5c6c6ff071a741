"""Pinpoint's endpoint reads: GetEndpoint and GetUserEndpoints, answered in
the EndpointResponse shape (:func:`ingest.folds.endpoints.endpoint_response`)
every endpoint answer uses.

Reads are eventually consistent: a write is readable once the endpoint worker
applied it (README states the measured delay). An endpoint or user ID longer
than any write accepts (``validate.MAX_ID_CHARS``) is a 400 before the store
is asked.
"""

from __future__ import annotations

from ingest.api.apps import AppCache
from ingest.api.http import Request, Response, json_response
from ingest.errors import NotFound
from ingest.folds.endpoints import EndpointState, endpoint_response
from ingest.records import validate
from ingest.store.base import Store


class EndpointReads:
    """GetEndpoint and GetUserEndpoints; the deletes (in :mod:`ingest.api.writes`)
    look their endpoints up through the same two reads."""

    def __init__(self, *, store: Store, apps: AppCache) -> None:
        self._store = store
        self._apps = apps

    async def endpoint(self, request: Request) -> EndpointState:
        """The request's live endpoint, or NotFound."""
        app = await self._apps.require(request.params["app"])
        endpoint_id = validate.check_id(request.params["endpoint"], "Endpoint ID")
        state = await self._store.get_endpoint(app.id, endpoint_id)
        if state is None:
            raise NotFound(f"Endpoint not found: {request.params['endpoint'][:200]}")
        return state

    async def user_endpoints(self, request: Request) -> list[EndpointState]:
        """The request's user's live endpoints, or NotFound when it has none."""
        app = await self._apps.require(request.params["app"])
        user_id = validate.check_id(request.params["user"], "User ID")
        states = await self._store.user_endpoints(app.id, user_id)
        if not states:
            raise NotFound(f"User not found: {request.params['user'][:200]}")
        return list(states)

    async def get_endpoint(self, request: Request) -> Response:
        return json_response(200, endpoint_response(await self.endpoint(request)))

    async def get_user_endpoints(self, request: Request) -> Response:
        states = await self.user_endpoints(request)
        return json_response(200, {"Item": [endpoint_response(s) for s in states]})
