"""Pinpoint's app operations: CreateApp, GetApps, GetApp, DeleteApp; and the
app cache every other operation looks its app up in."""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from typing import Any

import orjson

from ingest.api.http import Request, Response, iso_now, json_response
from ingest.api.sigv4 import credential_scope
from ingest.errors import BadRequest, NotFound, StoreError
from ingest.records import validate
from ingest.settings import Settings
from ingest.store.base import PURGE_CHUNK_ROWS, App, Store

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# A GetApps page stops growing past this many bytes of JSON (and gives a
# NextToken), whatever its page-size: an app with 50 tags at their limits is
# ~80 KB, so a page of 1000 could otherwise be ~80 MB.
MAX_PAGE_BYTES = 1024 * 1024
# The app cache's bounds: lookups of random app IDs (each a cached "no such
# app") and apps with large tags must not grow the edge without bound. The
# least recently used entries go first, one at a time.
MAX_CACHED_APPS = 10_000
MAX_CACHED_BYTES = 32 * 1024 * 1024
# What an entry costs beyond its strings: the tuple, the App, the dicts'
# slots (measured with sys.getsizeof, rounded up).
_ENTRY_OVERHEAD_BYTES = 400
# DeleteApp purges the app's data in the request for at most this long, a
# bounded step (one transaction) at a time; the endpoint worker finishes
# what is left (ingest.workers.sinks.EndpointSink).
PURGE_BUDGET_S = 2.0


def cached_bytes(app_id: str, app: App | None) -> int:
    """What an entry of the cache holds, in bytes (strings counted at up to
    4 bytes a character, as CPython may store them)."""
    chars = len(app_id)
    if app is not None:
        chars += len(app.id) + len(app.name) + len(app.arn) + len(app.creation_date)
        chars += sum(len(k) + len(v) for k, v in app.tags.items())
    return _ENTRY_OVERHEAD_BYTES + 4 * chars


def page_size(request: Request, *, most: int = MAX_PAGE_SIZE) -> int:
    """The request's ``page-size`` (DEFAULT_PAGE_SIZE, at most ``most``, when
    absent or empty); BadRequest unless ASCII digits naming 1-``most`` (not
    what else int() reads: signs, spaces, underscores, other scripts' digits).
    Every listing takes it."""
    size_text = request.query_one("page-size")
    if not size_text:
        return min(DEFAULT_PAGE_SIZE, most)
    if not size_text.isascii() or not size_text.isdigit() or not 1 <= int(size_text) <= most:
        raise BadRequest(f"page-size must be a whole number 1-{most}")
    return int(size_text)


class AppCache:
    """App lookups for the hot path, each answer kept ``ttl_s``: another edge's
    CreateApp or DeleteApp is seen within that time. Bounded in entries and
    bytes: past either, the least recently used entries are evicted."""

    def __init__(
        self,
        store: Store,
        ttl_s: float,
        *,
        max_entries: int = MAX_CACHED_APPS,
        max_bytes: int = MAX_CACHED_BYTES,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[float, App | None, int]] = OrderedDict()
        self._bytes = 0

    @property
    def size(self) -> tuple[int, int]:
        """(entries, bytes) held now."""
        return len(self._entries), self._bytes

    async def get(self, app_id: str) -> App | None:
        now = time.monotonic()
        hit = self._entries.get(app_id)
        if hit is not None and now - hit[0] < self._ttl_s:
            self._entries.move_to_end(app_id)
            return hit[1]
        app = await self._store.get_app(app_id)
        self.put(app_id, app, now=now)
        return app

    async def require(self, app_id: str) -> App:
        """The app, or NotFound (404) naming it."""
        app = await self.get(app_id)
        if app is None:
            raise NotFound(f"Application not found: {app_id[:200]}")
        return app

    def put(self, app_id: str, app: App | None, *, now: float | None = None) -> None:
        size = cached_bytes(app_id, app)
        old = self._entries.pop(app_id, None)
        if old is not None:
            self._bytes -= old[2]
        self._entries[app_id] = (time.monotonic() if now is None else now, app, size)
        self._bytes += size
        while len(self._entries) > self._max_entries or (
            self._bytes > self._max_bytes and len(self._entries) > 1
        ):
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted


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
            creation_date=iso_now(),
        )
        if not await self._store.create_app(app, max_apps=self._settings.max_apps):
            # Pinpoint models no LimitExceededException for CreateApp; its
            # modeled 400 is what a client treats as "do not retry".
            raise BadRequest(
                f"Exceeded the limit of {self._settings.max_apps} apps for this deployment (INGEST_MAX_APPS)"
            )
        self._cache.put(app_id, app)
        return json_response(201, app_response(app))

    async def get_app(self, request: Request) -> Response:
        return json_response(200, app_response(await self._cache.require(request.params["app"])))

    async def get_apps(self, request: Request) -> Response:
        size = page_size(request)
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
        items: list[dict[str, Any]] = []
        used = 0
        for app in apps[:size]:
            item = app_response(app)
            used += len(orjson.dumps(item)) + 1
            if items and used > MAX_PAGE_BYTES:
                break
            items.append(item)
        page: dict[str, Any] = {"Item": items}
        if len(apps) > len(items):
            page["NextToken"] = items[-1]["Id"]
        return json_response(200, page)

    async def delete_app(self, request: Request) -> Response:
        app_id = request.params["app"]
        app = await self._store.delete_app(app_id)
        if app is None:
            raise NotFound(f"Application not found: {app_id[:200]}")
        self._cache.put(app_id, None)
        await self._purge()
        return json_response(200, app_response(app))

    async def _purge(self) -> None:
        """Purge deleted apps' data for up to PURGE_BUDGET_S, a bounded step
        at a time; what is left, the endpoint worker finishes. The app is
        deleted already: a failure here is logged, not answered."""
        deadline = time.monotonic() + PURGE_BUDGET_S
        try:
            while await self._store.purge_deleted_apps(max_rows=PURGE_CHUNK_ROWS):
                if time.monotonic() > deadline:
                    log.info("purge of deleted apps goes on in the endpoint worker")
                    return
        except StoreError as exc:
            log.warning("purge of deleted apps stopped (%s); the endpoint worker goes on with it", exc)


def app_response(app: App) -> dict[str, Any]:
    """Pinpoint's ApplicationResponse."""
    return {
        "Arn": app.arn,
        "Id": app.id,
        "Name": app.name,
        "tags": app.tags,
        "CreationDate": app.creation_date,
    }
