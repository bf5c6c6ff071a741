"""Pinpoint's segment operations: CreateSegment (201), GetSegment,
GetSegments, UpdateSegment, DeleteSegment, GetSegmentVersion and
GetSegmentVersions, each answering botocore's SegmentResponse or
SegmentsResponse.

What a definition selects is :mod:`ingest.segments.definitions`' to say;
the store evaluates it (``Store.segment_endpoints``, used by export jobs).
Segments made here are DIMENSIONAL; IMPORT segments come from import jobs.

* UpdateSegment makes a new version: the members it carries replace the
  last version's (Dimensions or SegmentGroups replace the definition, of
  either kind; Name and tags replace theirs), the others are kept. An IMPORT
  segment's endpoints are its import jobs' to say: it may be renamed or
  retagged (a new version, the same members), and a definition sent to one
  is refused (400; a DIMENSIONAL segment with it as a source segment is the
  way to filter it).
* A source segment (SegmentGroups' SourceSegments) that does not exist, or
  sources nesting too deep or naming each other, are a 400 at create and
  update.
* GetSegments and GetSegmentVersions page by ``page-size`` (1-100) and
  ``token``; a token is opaque and names the app (and segment) it pages,
  so one given for another is refused.
* An app holds at most MAX_SEGMENTS_PER_APP segments.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from ingest.api.apps import MAX_PAGE_BYTES, AppCache, page_size
from ingest.api.http import Request, Response, iso_now, json_response
from ingest.errors import BadRequest, InternalServerError, NotFound
from ingest.folds.endpoints import iso_ms
from ingest.records import validate
from ingest.segments import definitions
from ingest.segments.values import Definition, WriteSegment
from ingest.store import segment_query as query
from ingest.store import segment_sources as sources
from ingest.store.base import App, Segment, Store

# Segments an app may hold (ours: Pinpoint publishes no such quota for the
# API). Each is a few rows; every GetSegments page is bounded anyway.
MAX_SEGMENTS_PER_APP = 100
# A page of segments holds at most this many (their definitions are large).
MAX_PAGE_SIZE = 100
# Compare-and-set rounds an UpdateSegment tries before a retriable 500: each
# lost round is a concurrent update of the same segment.
MAX_UPDATE_ATTEMPTS = 5
Lookup = Callable[[str, str], Awaitable[Segment | None]]


class Segments:
    """The seven segment operations."""

    def __init__(self, *, store: Store, apps: AppCache, max_body_bytes: int) -> None:
        self._store = store
        self._apps = apps
        self._max_body_bytes = max_body_bytes

    async def _body(self, request: Request) -> WriteSegment:
        return definitions.write_segment(validate.json_body(await request.body(self._max_body_bytes)))

    async def _check(self, app_id: str, parsed: Definition | None, own: Segment | None) -> None:
        """400 for sources that do not exist, or a definition past the bounds."""
        found = await sources.load(self._store.get_segment, app_id, parsed, own=own)
        sources.check(parsed, found)
        query.compile_definition(parsed, found, "sqlite", 0)

    async def create_segment(self, request: Request) -> Response:
        app = await self._apps.require(request.params["app"])
        parsed = await self._body(request)
        await self._check(app.id, parsed.definition, None)
        now = iso_now()
        document: dict[str, Any] = dict(parsed.shown)
        if parsed.tags is not None:
            document["tags"] = parsed.tags
        segment = Segment(
            app_id=app.id,
            id=uuid.uuid4().hex,
            version=1,
            name=parsed.name or "",
            segment_type="DIMENSIONAL",
            document=document,
            creation_date=now,
            last_modified_date=now,
        )
        if not await self._store.create_segment(segment, max_segments=MAX_SEGMENTS_PER_APP):
            if await self._store.get_app(app.id) is None:
                raise NotFound(f"Application not found: {app.id[:200]}")
            raise BadRequest(f"Exceeded the limit of {MAX_SEGMENTS_PER_APP} segments for this application")
        return json_response(201, segment_response(app, segment))

    async def get_segment(self, request: Request) -> Response:
        app, segment = await self._segment(request, None)
        return json_response(200, segment_response(app, segment))

    async def get_segment_version(self, request: Request) -> Response:
        text = request.params["version"]
        if not text.isascii() or not text.isdigit() or not 1 <= int(text) < 2**31:
            raise BadRequest("version must be a whole number of at least 1")
        app, segment = await self._segment(request, int(text))
        return json_response(200, segment_response(app, segment))

    async def _segment(
        self, request: Request, version: int | None, action: Lookup | None = None
    ) -> tuple[App, Segment]:
        """The request's app and segment, at ``version`` (the latest when
        None), as ``action`` answers it (default: get it); NotFound for either."""
        app = await self._apps.require(request.params["app"])
        segment_id = validate.check_id(request.params["segment"], "segment-id")
        if action is None:
            segment = await self._store.get_segment(app.id, segment_id, version)
        else:
            segment = await action(app.id, segment_id)
        if segment is None:
            at = "" if version is None else f" version {version}"
            raise NotFound(f"Segment not found: {segment_id[:200]}{at}")
        return app, segment

    async def get_segments(self, request: Request) -> Response:
        app = await self._apps.require(request.params["app"])
        size, after = _paging(request, [app.id])
        start = after[0] if after else None
        if start is not None and type(start) is not str:
            raise BadRequest("token is not one this operation gave for this resource")
        found = await self._store.list_segments(app.id, after=start, limit=size + 1)
        return _page(app, found, size, lambda s: [app.id, s.id])

    async def get_segment_versions(self, request: Request) -> Response:
        app, latest = await self._segment(request, None)
        size, after = _paging(request, [app.id, latest.id])
        start = after[0] if after else 0
        if type(start) is not int:
            raise BadRequest("token is not one this operation gave for this resource")
        found = await self._store.list_segment_versions(app.id, latest.id, after=start, limit=size + 1)
        return _page(app, found, size, lambda s: [app.id, s.id, s.version])

    async def update_segment(self, request: Request) -> Response:
        app, current = await self._segment(request, None)
        parsed = await self._body(request)
        if current.segment_type == "IMPORT" and parsed.definition is not None:
            raise BadRequest(
                "Dimensions and SegmentGroups: an IMPORT segment's endpoints come from its import jobs; "
                "make a DIMENSIONAL segment with it as a source segment to filter it"
            )
        for _ in range(MAX_UPDATE_ATTEMPTS):
            document = {
                k: v for k, v in current.document.items() if parsed.definition is None or k not in _DEFINITION
            }
            document.update(parsed.shown)
            if parsed.tags is not None:
                document["tags"] = parsed.tags
            now = iso_now()
            if now <= current.last_modified_date:  # a clock step back: dates still rise
                now = iso_ms((validate.parse_timestamp(current.last_modified_date) or 0) + 1)
            new = Segment(
                app_id=app.id,
                id=current.id,
                version=current.version + 1,
                name=current.name if parsed.name is None else parsed.name,
                segment_type=current.segment_type,
                document=document,
                creation_date=current.creation_date,
                last_modified_date=now,
            )
            if parsed.definition is not None:
                await self._check(app.id, parsed.definition, new)
            stored = await self._store.put_segment_version(new)
            if stored is not None:
                return json_response(200, segment_response(app, stored))
            again = await self._store.get_segment(app.id, current.id)
            if again is None:
                raise NotFound(f"Segment not found: {current.id[:200]}")
            current = again
        raise InternalServerError("The segment was updated concurrently too often; retry")

    async def delete_segment(self, request: Request) -> Response:
        app, segment = await self._segment(request, None, self._store.delete_segment)
        return json_response(200, segment_response(app, segment))


_DEFINITION = ("Dimensions", "SegmentGroups")


def _token(parts: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts)).decode().rstrip("=")


def _paging(request: Request, scope: list[Any]) -> tuple[int, list[Any] | None]:
    """(page size, what the token says after ``scope``: the last item's key
    parts, or None for the first page)."""
    size = page_size(request, most=MAX_PAGE_SIZE)
    token = request.query_one("token")
    if not token:
        return size, None
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
        raise BadRequest("token is not one this operation gave") from exc
    if type(parts) is not list or len(parts) != len(scope) + 1 or parts[: len(scope)] != scope:
        raise BadRequest("token is not one this operation gave for this resource")
    return size, parts[len(scope) :]


def _page(app: App, found: Sequence[Segment], size: int, key: Callable[[Segment], list[Any]]) -> Response:
    """A SegmentsResponse of ``found`` (up to size + 1 read: one more means
    another page), cut short past MAX_PAGE_BYTES."""
    segments = list(found)
    items: list[dict[str, Any]] = []
    used = 0
    for segment in segments[:size]:
        item = segment_response(app, segment)
        used += len(orjson.dumps(item)) + 1
        if items and used > MAX_PAGE_BYTES:
            break
        items.append(item)
    page: dict[str, Any] = {"Item": items}
    if len(segments) > len(items):
        page["NextToken"] = _token(key(segments[len(items) - 1]))
    return json_response(200, page)


def segment_response(app: App, segment: Segment) -> dict[str, Any]:
    """botocore's SegmentResponse."""
    response: dict[str, Any] = {
        "ApplicationId": segment.app_id,
        "Arn": f"{app.arn}/segments/{segment.id}",
        "CreationDate": segment.creation_date,
        "Id": segment.id,
        "LastModifiedDate": segment.last_modified_date,
        "SegmentType": segment.segment_type,
        "Version": segment.version,
        "tags": segment.document.get("tags") or {},
    }
    if segment.name:
        response["Name"] = segment.name
    for member in ("Dimensions", "SegmentGroups", "ImportDefinition"):
        if member in segment.document:
            response[member] = segment.document[member]
    return response
