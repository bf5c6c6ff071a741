"""Pinpoint's tag operations: TagResource, UntagResource and
ListTagsForResource, on the apps of this deployment.

The resource is an app's ARN, ``arn:aws:mobiletargeting:REGION:ACCOUNT:apps/APP_ID``
(SDKs send it percent-encoded as one path segment): the app must exist and
the ARN be the one it was created with. Campaigns, segments and templates,
which Pinpoint can also tag, are not kept here, so their ARNs are refused.

The app the ARN names is a parameter of the route (:func:`derive`), so a
key bound to apps is held to them before an operation runs, as for every
other app operation. Tag changes read the app from the store, not the app
cache, and write only if its tags are still the ones read: a merge is never
made on stale tags, nor lost to a concurrent one on another edge.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from ingest.api.apps import AppCache
from ingest.api.http import Request, Response, json_response
from ingest.errors import BadRequest, InternalServerError, NotFound
from ingest.records import validate
from ingest.store.base import App, Store

APP_ARN_FORM = "arn:aws:mobiletargeting:REGION:ACCOUNT:apps/APP_ID"
# Any Pinpoint ARN, its resource part apart: apps/ID is an app, apps/ID/…
# (campaigns, segments, journeys) or templates/… another resource.
_PINPOINT_ARN = re.compile(r"arn:aws(?:-cn|-us-gov)?:mobiletargeting:[^:]*:[^:]*:(?P<resource>.*)", re.DOTALL)
_APP_RESOURCE = re.compile(r"apps/(?P<app>[^/]+)", re.DOTALL)
# Compare-and-set rounds a tag change tries before it answers a retriable
# 500: each lost round is another edge's change to the same app's tags that
# committed in between, so more than a few means a client storm on one app.
MAX_TAG_ATTEMPTS = 5


def app_of_arn(arn: str) -> str | None:
    """The app ID an app ARN names, or None for any other string. Pure."""
    found = _PINPOINT_ARN.fullmatch(arn)
    if found is None:
        return None
    resource = _APP_RESOURCE.fullmatch(found["resource"])
    return None if resource is None else resource["app"]


def derive(params: Mapping[str, str]) -> dict[str, str]:
    """The route's ``app``: the app ``params["arn"]`` names, if it names one."""
    app_id = app_of_arn(params["arn"])
    return {} if app_id is None else {"app": app_id}


class Tags:
    """The three tag operations."""

    def __init__(self, *, store: Store, apps: AppCache, max_body_bytes: int) -> None:
        self._store = store
        self._apps = apps
        self._max_body_bytes = max_body_bytes

    async def tag_resource(self, request: Request) -> Response:
        app = await self._app(request)
        added = tags_model(validate.json_body(await request.body(self._max_body_bytes)))
        await self._change(app, lambda tags: {**tags, **added})
        return Response(204, b"")

    async def untag_resource(self, request: Request) -> Response:
        app = await self._app(request)
        # Required by the model, but an SDK sends an empty list as no
        # parameter at all: nothing to remove. Keys the app lacks are no error.
        removed = frozenset(request.query.get("tagKeys", ()))
        await self._change(app, lambda tags: {k: v for k, v in tags.items() if k not in removed})
        return Response(204, b"")

    async def list_tags_for_resource(self, request: Request) -> Response:
        app = await self._app(request)
        return json_response(200, {"tags": app.tags})

    async def _app(self, request: Request) -> App:
        """The app the request's ARN names, read from the store; BadRequest
        for an ARN of anything else, NotFound for no such app here."""
        arn = request.params["arn"]
        app_id = request.params.get("app")
        if app_id is None:
            raise BadRequest(f"Only applications can be tagged here: the ARN must be {APP_ARN_FORM}")
        app = await self._store.get_app(app_id)
        if app is None or app.arn != arn:
            raise NotFound(f"Resource not found: {arn[:300]}")
        return app

    async def _change(self, app: App, change: Callable[[dict[str, str]], dict[str, str]]) -> None:
        """Write ``change`` of the app's tags, held to AWS's tag rules
        (BadRequest), if they are still the ones it was made of; else again,
        from what they are now."""
        for _ in range(MAX_TAG_ATTEMPTS):
            tags = change(app.tags)
            validate.check_tags(tags)
            stored = await self._store.set_app_tags(app.id, tags, expected=app.tags)
            if stored is None:
                self._apps.put(app.id, None)
                raise NotFound(f"Resource not found: {app.arn[:300]}")
            if stored.tags == tags:
                self._apps.put(app.id, stored)
                return
            app = stored
        raise InternalServerError("The app's tags kept changing under this request; retry")


def tags_model(body: Any) -> dict[str, str]:
    """A ``TagsModel`` body (``{"tags": {…}}``) → its tags (AWS's tag rules
    are checked on the merged result)."""
    if type(body) is not dict:
        raise BadRequest("Request body must be a JSON object (TagsModel)")
    tags = body.get("tags")
    if type(tags) is not dict or any(type(v) is not str for v in tags.values()):
        raise BadRequest('tags is required: an object of string values ({"tags": {"key": "value"}})')
    return tags
