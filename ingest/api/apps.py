"""Pinpoint's app operations: CreateApp, GetApps, GetApp, DeleteApp; and the
app cache every other operation looks its app up in."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from ingest.api.http import Request, Response, json_response
from ingest.api.sigv4 import credential_scope
from ingest.errors import BadRequest, NotFound
from ingest.records import validate
from ingest.settings import Settings
from ingest.store.base import App, Store

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Bounds memory against lookups of random app IDs: past it the cache starts over.
MAX_CACHED_APPS = 10_000


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
        if len(self._entries) > MAX_CACHED_APPS:
            self._entries.clear()
        self._entries[app_id] = (now, app)
        return app

    async def require(self, app_id: str) -> App:
        """The app, or NotFound (404) naming it."""
        app = await self.get(app_id)
        if app is None:
            raise NotFound(f"Application not found: {app_id[:200]}")
        return app

    def put(self, app_id: str, app: App | None) -> None:
        self._entries[app_id] = (time.monotonic(), app)


class Apps:
    """The four app operations."""

    def __init__(self, *, settings: Settings, store: Store, cache: AppCache) -> None:
        self._settings = settings
        self._store = store
        self._cache = cache

    async def create_app(self, request: Request) -> Response:
        name, tags = validate.create_app(
            validate.json_body(await request.body(self._settings.max_body_bytes))
        )
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
        self._cache.put(app_id, app)
        return json_response(201, app_response(app))

    async def get_app(self, request: Request) -> Response:
        return json_response(200, app_response(await self._cache.require(request.params["app"])))

    async def get_apps(self, request: Request) -> Response:
        size_text = request.query_one("page-size")
        try:
            size = DEFAULT_PAGE_SIZE if size_text is None else int(size_text)
        except ValueError as exc:
            raise BadRequest("page-size must be a whole number") from exc
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise BadRequest(f"page-size must be 1-{MAX_PAGE_SIZE}")
        after = request.query_one("token")
        bound = request.principal.apps if request.principal is not None else frozenset()
        if bound:
            # A key bound to apps lists only those: few, each one lookup.
            found = [
                await self._cache.get(app_id) for app_id in sorted(a for a in bound if a > (after or ""))
            ]
            apps = [app for app in found if app is not None][: size + 1]
        else:
            apps = list(await self._store.list_apps(after=after, limit=size + 1))
        page: dict[str, Any] = {"Item": [app_response(a) for a in apps[:size]]}
        if len(apps) > size:
            page["NextToken"] = apps[size - 1].id
        return json_response(200, page)

    async def delete_app(self, request: Request) -> Response:
        app_id = request.params["app"]
        app = await self._store.delete_app(app_id)
        if app is None:
            raise NotFound(f"Application not found: {app_id[:200]}")
        self._cache.put(app_id, None)
        return json_response(200, app_response(app))


def app_response(app: App) -> dict[str, Any]:
    """Pinpoint's ApplicationResponse."""
    return {
        "Arn": app.arn,
        "Id": app.id,
        "Name": app.name,
        "tags": app.tags,
        "CreationDate": app.creation_date,
    }
