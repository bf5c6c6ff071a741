"""Pinpoint's event stream operations: PutEventStream, GetEventStream and
DeleteEventStream, each answering the ``EventStream`` shape.

An app has at most one stream; a put replaces it. Where a stream may point
is :mod:`ingest.streams.destinations`' to say (a Kinesis stream, a Firehose
delivery stream or a Kafka topic ARN, never one of the pipeline's own
topics); the streams worker reads the streams from the store
(``Store.list_event_streams``). All three are admin operations: a stream
names a role to assume and where the app's events go.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ingest.api.apps import AppCache
from ingest.api.http import Request, Response, iso_now, json_response
from ingest.errors import BadRequest, NotFound
from ingest.records import validate
from ingest.store.base import EventStream, Store
from ingest.streams import destinations
from ingest.streams.destinations import DestinationError

# Who LastUpdatedBy names when the edge runs with INGEST_AUTH=off.
ANONYMOUS = "anonymous"


class EventStreams:
    """The three event stream operations."""

    def __init__(
        self,
        *,
        store: Store,
        apps: AppCache,
        max_body_bytes: int,
        allowed_accounts: frozenset[str] = frozenset(),
    ) -> None:
        self._store = store
        self._apps = apps
        self._max_body_bytes = max_body_bytes
        self._allowed_accounts = allowed_accounts

    async def put_event_stream(self, request: Request) -> Response:
        app_id = request.params["app"]
        body = validate.json_body(await request.body(self._max_body_bytes))
        destination_arn, role_arn, external_id = write_event_stream(body, self._allowed_accounts)
        principal = request.principal
        stream = EventStream(
            app_id=app_id,
            destination_arn=destination_arn,
            role_arn=role_arn,
            external_id=external_id,
            last_modified=iso_now(),
            last_updated_by=principal.access_key_id if principal is not None else ANONYMOUS,
        )
        # The store checks that the app exists in the statement that writes.
        if not await self._store.put_event_stream(stream):
            raise NotFound(f"Application not found: {app_id[:200]}")
        return json_response(200, event_stream_response(stream))

    async def get_event_stream(self, request: Request) -> Response:
        return await self._stream_of(request, self._store.get_event_stream)

    async def delete_event_stream(self, request: Request) -> Response:
        return await self._stream_of(request, self._store.delete_event_stream)

    async def _stream_of(
        self, request: Request, action: Callable[[str], Awaitable[EventStream | None]]
    ) -> Response:
        """The stream ``action`` answers for the request's app; NotFound for
        no such app, or an app without a stream."""
        app = await self._apps.require(request.params["app"])
        stream = await action(app.id)
        if stream is None:
            raise NotFound(f"Resource not found: application {app.id[:200]} has no event stream")
        return json_response(200, event_stream_response(stream))


def write_event_stream(
    body: Any, allowed_accounts: frozenset[str] = frozenset()
) -> tuple[str, str, str | None]:
    """A ``WriteEventStream`` body → (DestinationStreamArn, RoleArn,
    ExternalId or None). ExternalId is no longer in Pinpoint's model, but
    older clients send it. Other members are ignored, as Pinpoint does.
    BadRequest naming the member and, for an ARN, the accepted forms (or
    the account ``allowed_accounts`` leaves out)."""
    if type(body) is not dict:
        raise BadRequest("Request body must be a JSON object (WriteEventStream)")
    fields: list[str] = []
    for name in ("DestinationStreamArn", "RoleArn"):
        value = body.get(name)
        if type(value) is not str:
            raise BadRequest(f"{name} is required: a string")
        fields.append(value)
    destination_arn, role_arn = fields
    external_id = body.get("ExternalId")
    if external_id is not None and type(external_id) is not str:
        raise BadRequest("ExternalId must be a string")
    try:
        destination = destinations.parse(destination_arn)
        destinations.check_role(role_arn)
        destinations.check_accounts(destination, role_arn, allowed_accounts)
        if external_id is not None:
            destinations.check_external_id(external_id)
    except DestinationError as exc:
        raise BadRequest(str(exc)) from exc
    return destination_arn, role_arn, external_id


def event_stream_response(stream: EventStream) -> dict[str, Any]:
    """Pinpoint's EventStream; ExternalId only when one was set."""
    response = {
        "ApplicationId": stream.app_id,
        "DestinationStreamArn": stream.destination_arn,
        "RoleArn": stream.role_arn,
        "LastModifiedDate": stream.last_modified,
        "LastUpdatedBy": stream.last_updated_by,
    }
    if stream.external_id is not None:
        response["ExternalId"] = stream.external_id
    return response
