"""Pinpoint's rest-json wire over ASGI: reading requests, writing responses.

Routing matches the raw path and percent-decodes each segment only after
splitting, because SDKs percent-encode ``/`` inside IDs (``u%201%2F2``).
Every response carries ``x-amzn-RequestId`` and CORS headers; every error also
``x-amzn-ErrorType`` and the body ``{"Message", "RequestID"}``, which is what
botocore and Amplify read the error code and message from.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes

import orjson

from ingest.errors import ApiError, BadRequest, PayloadTooLarge, TooManyRequests
from ingest.scopes import Principal

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# What a browser client must read of an answer (Amplify JS reads all four).
CORS_EXPOSE = b"x-amzn-RequestId, x-amzn-ErrorType, x-amzn-ErrorMessage, Date, Retry-After"
PREFLIGHT_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"access-control-allow-methods", b"GET, POST, PUT, DELETE, OPTIONS"),
    (
        b"access-control-allow-headers",
        b"authorization, content-type, x-amz-date, x-amz-security-token, x-amz-user-agent, "
        b"amz-sdk-invocation-id, amz-sdk-request, x-amz-content-sha256",
    ),
    (b"access-control-max-age", b"86400"),
)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()


def json_response(status: int, payload: object) -> Response:
    return Response(status, orjson.dumps(payload))


def error_response(error: ApiError, request_id: str) -> Response:
    headers: tuple[tuple[bytes, bytes], ...] = ((b"x-amzn-errortype", error.error_type.encode()),)
    if isinstance(error, TooManyRequests):
        headers += ((b"retry-after", str(error.retry_after_s).encode()),)
    return Response(
        error.status, orjson.dumps({"Message": error.message, "RequestID": request_id}), headers=headers
    )


async def send_response(
    send: Send, response: Response, request_id: str, cors: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    headers = [
        (b"content-type", response.content_type),
        (b"content-length", str(len(response.body)).encode()),
        (b"x-amzn-requestid", request_id.encode()),
        *cors,
        *response.headers,
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


@dataclass(slots=True)
class Request:
    """One HTTP request as the handlers see it. The body is read on demand."""

    method: str
    params: dict[str, str]
    query: Mapping[str, list[str]]
    headers: Mapping[bytes, bytes]
    receive: Receive
    request_id: str
    # The peer's address (the socket's), for per-client limits.
    client: str = ""
    # Who signed the request, once verified; None when authentication is off.
    principal: Principal | None = None
    _body: bytes | None = None

    def query_one(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    async def body(self, limit: int) -> bytes:
        """The whole body, refusing more than ``limit`` bytes without reading
        them: decided from Content-Length when sent, else while reading.
        Read once: later calls return the same bytes (verification reads
        it before the operation does)."""
        if self._body is not None:
            return self._body
        declared = self.headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError as exc:
                raise BadRequest("Content-Length is not a number") from exc
            if length > limit:
                raise PayloadTooLarge(f"Request body is {length} bytes; at most {limit}")
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body is over {limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        self._body = b"".join(chunks)
        return self._body


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    """A path pattern (``/v1/apps/{app}/events``) and its operations by method."""

    pattern: str
    operations: Mapping[str, tuple[str, Handler]]
    derive: Callable[[Mapping[str, str]], Mapping[str, str]] | None = None
    """More parameters from the matched ones, added before the request is
    authorized: the ``app`` a tag operation's resource ARN names, which its
    key's scope is checked against. Pure; it never raises (what it cannot
    derive, it leaves out, and the operation refuses)."""
    segments: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.pattern.strip("/").split("/")))


_PARAM = re.compile(r"^\{(\w+)\}$")


class Router:
    """Matches raw paths segment by segment; placeholders capture one segment."""

    def __init__(self, routes: list[Route]) -> None:
        self._by_length: dict[int, list[Route]] = {}
        for route in routes:
            self._by_length.setdefault(len(route.segments), []).append(route)

    def match(self, raw_path: bytes) -> tuple[Route, dict[str, str]] | None:
        """Raises BadRequest for a segment that is not UTF-8 once decoded."""
        parts = raw_path.strip(b"/").split(b"/")
        for route in self._by_length.get(len(parts), ()):
            params: dict[str, str] = {}
            for want, got in zip(route.segments, parts, strict=True):
                name = _PARAM.match(want)
                if name is None:
                    if want.encode() != got:
                        break
                    continue
                try:
                    value = unquote_to_bytes(got).decode()
                except UnicodeDecodeError as exc:
                    raise BadRequest(f"path segment {got[:64]!r} is not UTF-8") from exc
                if not value:
                    break
                params[name.group(1)] = value
            else:
                if route.derive is not None:
                    params.update(route.derive(params))
                return route, params
        return None


def iso_now() -> str:
    """Now as Pinpoint writes its dates: ISO 8601 in UTC, to the millisecond,
    with a Z (``2026-11-23T10:00:00.000Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_query(query_string: bytes) -> Mapping[str, list[str]]:
    return parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
