"""The HTTP/1.1 server of every listener: httptools' parser on asyncio
transports, running ASGI apps, with every limit enforced at the door. It
earns its size (about 800 lines): one connection's state machine (parser
callbacks, timers, the body budget, refusals, pipelining, the drain) is
one piece, each state's rules next to the others they interact with.

A connection lives in one state at a time, with at most one timer:

- ``IDLE``: between requests. Closed quietly after ``idle_timeout_s``, or
  first when the connection cap is reached and a new connection needs room.
- ``HEAD``: from the first byte of a request (or the connection's opening)
  to the end of its headers. ``header_timeout_s`` to finish; at most
  ``max_url_bytes`` of URL (414), ``max_headers`` fields and
  ``max_header_bytes`` in all (431).
- ``BODY``: the body arriving. It must keep up a minimum rate on average
  after a grace, and never stall for as long as the grace (408 otherwise);
  at most ``max_body_bytes`` (413, decided from Content-Length before
  reading when it is sent); every byte held counts
  against the process-wide :class:`BodyBudget` (429 past it).
- ``DISPATCHED``: the whole request is in memory and the app has it; reading
  is paused until the answer is written. The app never sees a request before
  its body is complete, so a slow or stalled body never holds the app's
  admission slot.
- ``LINGER``: after an answer that ends the connection early (an error before
  the body was read), the write side is shut and what the client still sends
  is read and dropped for ``linger_s`` (RFC 9112 §9.6), so a client that
  writes its whole body before reading (Python's urllib) reads the answer
  instead of a reset.

Errors raised here are Pinpoint's shape (``x-amzn-ErrorType``, ``{"Message",
"RequestID"}``), like the app's. ASGI as the edge uses it: one
``http.response.start``, then body messages; ``receive`` returns the whole body
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import resource
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

import httptools
import orjson

from ingest import errors
from ingest.api.limits import ClientAddress
from ingest.errors import ApiError, IngestError
from ingest.metrics import HttpMetrics

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
App = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

# File descriptors kept free of client connections: probes, store and Kafka
# sockets, log and data files. The connection cap is lowered to fit under the
# process's descriptor limit minus this.
FD_HEADROOM = 256
# Requests pipelined behind one that is still being answered; real clients do
# not pipeline at all, so past this the connection is refused.
MAX_PIPELINED = 16
# How long a connection is read and dropped after an early answer.
LINGER_S = 2.0
# A response the client does not read for this long closes its connection.
WRITE_TIMEOUT_S = 30.0

_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in HTTPStatus
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one listener allows a connection; each is an ``INGEST_HTTP_*``
    setting (:mod:`ingest.settings` says what each means and its default).
    A body gets ``body_timeout_s``, then must average ``min_body_rate``
    bytes per second."""

    header_timeout_s: float
    idle_timeout_s: float
    body_timeout_s: float
    min_body_rate: int
    max_url_bytes: int
    max_headers: int
    max_header_bytes: int
    max_body_bytes: int
    max_connections: int


class BodyBudget:
    """Bytes of request bodies held by the process (being read or with the
    app), with a ceiling: the memory that bodies can take, whatever the
    number of clients. So that no client starves the others of it, one
    client address may hold at most ``per_client`` bytes, and bodies larger
    than ``SMALL_BODY_BYTES`` may not take the last ``small_reserve`` bytes,
    which are kept for the small bodies almost every request has."""

    SMALL_BODY_BYTES = 64 * 1024

    __slots__ = ("_by_client", "limit", "per_client", "small_reserve", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.per_client = max(limit // 4, 1)
        self.small_reserve = limit // 8
        self.used = 0
        self._by_client: dict[str, int] = {}

    def take(self, size: int, client: str, body_size: int) -> bool:
        """``size`` more bytes for ``client``'s body, which is then
        ``body_size`` bytes long (its declared length, or what has arrived)."""
        used = self.used + size
        room = self.limit if body_size <= self.SMALL_BODY_BYTES else self.limit - self.small_reserve
        held = self._by_client.get(client, 0) + size
        if used > room or held > self.per_client:
            return False
        self.used = used
        self._by_client[client] = held
        return True

    def give(self, size: int, client: str) -> None:
        if not size:
            return
        self.used -= size
        held = self._by_client.pop(client, 0) - size
        if held > 0:
            self._by_client[client] = held


def connection_cap(wanted: int, headroom: int = FD_HEADROOM) -> int:
    """``wanted``, lowered so connections leave ``headroom`` descriptors free.
    Raises the soft descriptor limit to the hard one first, as servers do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return max(1, min(wanted, soft - headroom))


_date_second = 0
_date_header = b""


def _date() -> bytes:
    """``date: …\\r\\n`` for this second (Amplify JS corrects its clock skew
    from it), formatted once per second."""
    global _date_second, _date_header
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_header = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
    return _date_header


class _Refuse(Exception):
    def __init__(self, error: ApiError, reason: str) -> None:
        self.error = error
        self.reason = reason


def _error_bytes(error: ApiError, *, origin: bool, keep_alive: bool = False) -> bytes:
    request_id = str(uuid.uuid4())
    body = orjson.dumps({"Message": error.message, "RequestID": request_id})
    cors = (
        b"access-control-allow-origin: *\r\naccess-control-expose-headers: x-amzn-RequestId, "
        b"x-amzn-ErrorType, Date, Retry-After\r\n"
        if origin
        else b""
    )
    retry = b"retry-after: 1\r\n" if error.status == 429 else b""
    return b"".join(
        (
            _STATUS_LINES[error.status],
            b"content-type: application/json\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nx-amzn-requestid: ",
            request_id.encode(),
            b"\r\nx-amzn-errortype: ",
            error.error_type.encode(),
            b"\r\n",
            cors,
            retry,
            _date(),
            b"\r\n" if keep_alive else b"connection: close\r\n\r\n",
            body,
        )
    )


# Where the parser is in the current request.
IDLE, HEAD, BODY = range(3)
# The connection as a whole.
OPEN, LINGER, CLOSED = range(3)


@dataclass(slots=True)
class _Request:
    scope: Scope
    body: bytes
    held: int  # bytes of the body budget it holds
    holder: str  # the client address it holds them for
    keep_alive: bool


class Connection(asyncio.Protocol):
    """One client connection (module docstring: its states). Timers are armed
    after each read, from where the parser stopped, so a request that arrives
    in one read costs no timer but the idle one after its answer."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client: tuple[str, int] | None = None
        self._state = OPEN
        # A new connection counts as idle (the first closed for room) but has
        # only the header timeout to start a request.
        self._phase = IDLE
        self._timer: asyncio.TimerHandle | None = None
        self._timed = -1  # the phase the timer was armed for
        self._eof = False
        # The request being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0  # URL and fields parsed
        self._head_read = 0  # bytes read while the headers were still arriving
        self._body: list[bytes] = []
        self._body_size = 0
        self._held = 0
        self._holder = ""  # whose share of the body budget the body takes
        self._declared: int | None = None
        self._expect_continue = False
        self._origin = False
        self._scope: Scope = {}
        self._keep_alive = True
        self._body_started = 0.0
        self._body_last = 0.0
        # Complete requests: the one with the app first, then pipelined ones.
        self._queue: deque[_Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._disconnected = asyncio.Event()

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        server = self._server
        if not server.admit(self):
            server.metrics.refused.labels(server.name, "connections").inc()
            self._state = LINGER
            transport.write(
                _error_bytes(errors.TooManyRequests("Too many connections; retry shortly"), origin=False)
            )
            self._linger()
            return
        server.idle(self)
        self._arm(self._limits.header_timeout_s, HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = CLOSED
        self._cancel_timer()
        self._server.forget(self)
        self._release_partial()
        self._disconnected.set()
        self._writable.set()
        if self._task is None:
            self._drop_queue(0)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._state == LINGER or (self._task is None and self._phase == IDLE):
            self._close()
        return True  # keep our write side open: an answer may still be due

    def data_received(self, data: bytes) -> None:
        if self._state != OPEN:
            return  # lingering: read and dropped
        before = self._phase
        if before == IDLE and self._task is None:
            self._server.not_idle(self)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refusal = exc.__context__
            if not isinstance(refusal, _Refuse):
                raise
            self._refuse(refusal.error, refusal.reason)
            return
        except httptools.HttpParserUpgrade:
            self._refuse(errors.BadRequest("Protocol upgrades are not supported"), "malformed")
            return
        except httptools.HttpParserError as exc:
            self._refuse(errors.BadRequest(f"Malformed HTTP request: {exc}"), "malformed")
            return
        phase = self._phase
        if phase == HEAD and before == HEAD:
            # Headers still arriving since an earlier read: what the parser
            # holds of them is at most what has been read since. (A request
            # that began in this read is counted from the next one: a bound
            # of the limit plus one read.)
            self._head_read += len(data)
            if self._head_read > self._limits.max_header_bytes:
                self._refuse(
                    errors.HeadersTooLarge(f"Request headers are over {self._limits.max_header_bytes} bytes"),
                    "headers",
                )
                return
        if self._task is None and phase != self._timed:
            self._arm_for_phase()

    # -- httptools callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        self._phase = HEAD
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._head_read = 0
        self._declared = None
        self._expect_continue = False
        self._origin = False

    def on_url(self, part: bytes) -> None:
        self._url += part
        self._header_bytes += len(part)
        if len(self._url) > self._limits.max_url_bytes:
            raise _Refuse(errors.UriTooLong(f"The URL is over {self._limits.max_url_bytes} bytes"), "url")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(headers) >= self._limits.max_headers:
            raise _Refuse(
                errors.HeadersTooLarge(f"More than {self._limits.max_headers} header fields"), "headers"
            )
        # Counted as parsed too: a whole request can arrive in one read.
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._limits.max_header_bytes:
            raise _Refuse(
                errors.HeadersTooLarge(f"Request headers are over {self._limits.max_header_bytes} bytes"),
                "headers",
            )
        name = name.lower()
        headers.append((name, value))
        if name == b"content-length":
            self._declared = int(value)  # llhttp has checked it is a number
        elif name == b"expect":
            self._expect_continue = value.lower() == b"100-continue"
        elif name == b"origin":
            self._origin = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        if parser.should_upgrade():
            raise _Refuse(errors.BadRequest("Protocol upgrades are not supported"), "malformed")
        limits = self._limits
        declared = self._declared
        if declared is not None and declared > limits.max_body_bytes:
            raise _Refuse(
                errors.PayloadTooLarge(f"Request body is {declared} bytes; at most {limits.max_body_bytes}"),
                "body_size",
            )
        self._holder = self._server.holder(self._client, self._headers)
        if declared and not self._server.budget.take(declared, self._holder, declared):
            raise _Refuse(
                errors.TooManyRequests("Too many request bodies in flight; retry shortly"), "budget"
            )
        self._held = declared or 0
        url = httptools.parse_url(self._url)
        raw_path = url.path
        self._scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": parser.get_http_version(),
            "method": parser.get_method().decode("ascii"),
            "scheme": "http",
            "path": raw_path.decode("latin-1"),
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "root_path": "",
            "headers": self._headers,
            "client": self._client,
            "server": None,
        }
        self._keep_alive = parser.should_keep_alive()
        self._body = []
        self._body_size = 0
        self._phase = BODY
        self._body_started = self._body_last = self._loop.time()
        if self._expect_continue and self._transport is not None:
            self._transport.write(_CONTINUE)

    def on_body(self, chunk: bytes) -> None:
        size = self._body_size + len(chunk)
        if self._declared is None:  # chunked: held as it arrives
            if size > self._limits.max_body_bytes:
                raise _Refuse(
                    errors.PayloadTooLarge(f"Request body is over {self._limits.max_body_bytes} bytes"),
                    "body_size",
                )
            if not self._server.budget.take(len(chunk), self._holder, size):
                raise _Refuse(
                    errors.TooManyRequests("Too many request bodies in flight; retry shortly"), "budget"
                )
            self._held += len(chunk)
        self._body_size = size
        self._body_last = self._loop.time()
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        body = self._body
        # When the whole request was in: the app can tell how long it waited
        # behind other work (not the loop's clock, which stands still
        # through a pass of the loop).
        self._scope["ingest.arrived"] = time.monotonic()
        request = _Request(
            self._scope,
            body[0] if len(body) == 1 else b"".join(body),
            self._held,
            self._holder,
            self._keep_alive and not self._server.closing,
        )
        self._phase = IDLE
        self._body = []
        self._held = 0
        if (
            self._task is None
            and (shed := self._server.shed) is not None
            and (refusal := shed(self._scope)) is not None
        ):
            # The app is full: refused here, before any task exists, in the
            # same pass of the event loop that read it. The connection stays.
            server = self._server
            server.metrics.refused.labels(server.name, "shed").inc()
            server.budget.give(request.held, request.holder)
            assert self._transport is not None
            self._transport.write(_error_bytes(refusal, origin=self._origin, keep_alive=request.keep_alive))
            if not request.keep_alive:
                self._close()
            return
        self._queue.append(request)
        if self._task is None:
            assert self._transport is not None
            self._cancel_timer()
            self._transport.pause_reading()
            self._task = self._loop.create_task(self._run(request))
        elif len(self._queue) > MAX_PIPELINED:
            raise _Refuse(errors.TooManyRequests("Too many pipelined requests"), "pipelined")

    # -- requests -----------------------------------------------------------

    async def _run(self, request: _Request) -> None:
        transport = self._transport
        assert transport is not None
        head: list[bytes] = []
        chunked = False
        written = done = False
        head_only = request.scope["method"] == "HEAD"
        given = False

        async def receive() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await self._disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal chunked, written, done
            if self._state == CLOSED or done:
                return
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                head.append(_STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode())
                chunked = True
                for name, value in message.get("headers", ()):
                    if name == b"content-length":
                        chunked = False
                    head.extend((name, b": ", value, b"\r\n"))
                return
            if kind != "http.response.body":
                return
            body: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            parts: list[bytes] = []
            if head:
                if chunked and not more:
                    chunked = False
                    head.extend((b"content-length: ", str(len(body)).encode(), b"\r\n"))
                elif chunked:
                    head.append(b"transfer-encoding: chunked\r\n")
                head.append(_date())
                if self._server.closing:
                    request.keep_alive = False
                head.append(b"\r\n" if request.keep_alive else b"connection: close\r\n\r\n")
                parts.extend(head)
                head.clear()
            if not head_only:
                if chunked:
                    if body:
                        parts.extend((f"{len(body):x}\r\n".encode(), body, b"\r\n"))
                    if not more:
                        parts.append(b"0\r\n\r\n")
                else:
                    parts.append(body)
            transport.write(b"".join(parts))
            written = True
            done = not more
            if not self._writable.is_set():
                try:
                    await asyncio.wait_for(self._writable.wait(), WRITE_TIMEOUT_S)
                except TimeoutError:
                    transport.abort()

        try:
            await self._server.app(request.scope, receive, send)
        except Exception:
            log.exception("unexpected error answering %s", request.scope["method"])
        finally:
            self._server.budget.give(request.held, request.holder)
        if not done and self._state != CLOSED:
            if written:  # a response begun and never finished: nothing sensible to add
                transport.abort()
            else:
                transport.write(
                    _error_bytes(errors.InternalServerError("Internal error; retry"), origin=False)
                )
                request.keep_alive = False
        self._answered(request)

    def _answered(self, request: _Request) -> None:
        self._queue.popleft()
        self._task = None
        if self._state == CLOSED:
            self._drop_queue(0)
            return
        if not request.keep_alive or self._server.closing or self._state == LINGER or self._eof:
            self._drop_queue(0)
            self._close()
            return
        if self._queue:
            self._task = self._loop.create_task(self._run(self._queue[0]))
            return
        assert self._transport is not None
        if self._phase == IDLE:
            self._server.idle(self)
        self._arm_for_phase()
        self._transport.resume_reading()

    def _drop_queue(self, keep: int) -> None:
        while len(self._queue) > keep:
            dropped = self._queue.pop()
            self._server.budget.give(dropped.held, dropped.holder)

    # -- ending ---------------------------------------------------------------

    def _refuse(self, error: ApiError, reason: str) -> None:
        """Answer ``error`` now and end the connection (after what is already
        being answered), lingering so the client can read it."""
        server = self._server
        server.metrics.refused.labels(server.name, reason).inc()
        # The peer address is the socket's: not client-controlled text.
        log.warning("refused a request from %s: %s", self._client[0] if self._client else "?", error.message)
        self._release_partial()
        self._state = LINGER
        if self._task is not None:
            # A request ahead of this one is with the app: it is answered,
            # then the connection closes; nothing more is read.
            self._drop_queue(1)
            self._queue[0].keep_alive = False
            return
        assert self._transport is not None
        self._transport.write(_error_bytes(error, origin=self._origin))
        self._linger()

    def _linger(self) -> None:
        transport = self._transport
        assert transport is not None
        self._server.not_idle(self)
        if transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
        transport.resume_reading()
        self._arm(LINGER_S, -1)

    def _release_partial(self) -> None:
        if self._held:
            self._server.budget.give(self._held, self._holder)
            self._held = 0
        self._body = []

    def _close(self) -> None:
        if self._transport is not None and self._state != CLOSED:
            self._server.not_idle(self)
            self._cancel_timer()
            self._transport.close()

    def close_if_idle(self) -> None:
        """For a server that stops, or needs room: close unless a request is
        under way."""
        if self._task is None and self._phase == IDLE and self._state == OPEN:
            self._close()

    def abort(self) -> None:
        """Drop the connection now, unless it is already closing (an answer
        may still be leaving its buffer)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    @property
    def busy(self) -> bool:
        """A request is being read or answered."""
        return self._task is not None or (self._phase != IDLE and self._state == OPEN)

    # -- timers ----------------------------------------------------------------

    def _arm_for_phase(self) -> None:
        phase = self._phase
        if phase == IDLE:
            self._arm(self._limits.idle_timeout_s, IDLE)
        elif phase == HEAD:
            self._arm(self._limits.header_timeout_s, HEAD)
        else:
            # Reading was paused while the request ahead was answered: the
            # body's clock starts again now.
            self._body_started = self._body_last = self._loop.time()
            self._arm(self._limits.body_timeout_s, BODY)

    def _arm(self, delay_s: float, phase: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timed = phase
        self._timer = self._loop.call_later(delay_s, self._expired)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timed = -1

    def _expired(self) -> None:
        self._timer = None
        self._timed = -1
        if self._state != OPEN:
            self._close()
            return
        phase = self._phase
        if phase == IDLE:
            self._close()
        elif phase == HEAD:
            self._refuse(errors.RequestTimeout("Request headers not received in time"), "header_timeout")
        else:
            # On average at least the minimum rate since the grace, and never
            # a stall as long as the grace: bytes sent fast early buy no
            # time to hold the budget later.
            limits = self._limits
            allowed = min(
                self._body_started + limits.body_timeout_s + self._body_size / limits.min_body_rate,
                self._body_last + limits.body_timeout_s,
            )
            now = self._loop.time()
            if now < allowed:
                self._arm(allowed - now, BODY)
            else:
                self._refuse(
                    errors.RequestTimeout(
                        f"Request body slower than {limits.min_body_rate} bytes per second"
                    ),
                    "body_timeout",
                )


class Server:
    """One listener: its connections, their cap, and a drain that lets the
    requests under way finish."""

    def __init__(
        self,
        app: App,
        *,
        name: str,
        limits: Limits,
        budget: BodyBudget,
        metrics: HttpMetrics,
        clients: ClientAddress | None = None,
        shed: Callable[[Scope], ApiError | None] | None = None,
    ) -> None:
        self.app = app
        self.name = name
        self.limits = limits
        self.budget = budget
        self.metrics = metrics
        self.loop = asyncio.get_running_loop()
        self.closing = False
        self.max_connections = connection_cap(limits.max_connections)
        self._connections: set[Connection] = set()
        # Idle connections, oldest first: the first closed for room.
        self._idle: dict[Connection, None] = {}
        self._server: asyncio.Server | None = None
        self._gauge = metrics.connections.labels(name)
        self._clients = clients
        # Asked before each request is handed to the app: an error to answer
        # at once instead (the app's admission is full), or None.
        self.shed = shed

    def holder(self, peer: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]) -> str:
        """Whose share of the body budget a request takes: its client address,
        read as the edge reads it (:class:`ingest.api.limits.ClientAddress`)."""
        address = peer[0] if peer else ""
        if self._clients is None or not self._clients.active:
            return address
        forwarded = next((value for name, value in reversed(headers) if name == b"x-forwarded-for"), None)
        return self._clients.of(address, forwarded)

    @contextlib.asynccontextmanager
    async def serving(
        self, host: str, port: int, drain_timeout_s: float, *, reuse_port: bool = False
    ) -> AsyncIterator[int]:
        """Listening on ``host:port`` (yields the bound port); on exit, :meth:`stop`.
        With ``reuse_port``, the port may be shared (SO_REUSEPORT) with other
        processes listening on it, among which the kernel spreads new
        connections."""
        bound = await self.start(host, port, reuse_port=reuse_port)
        try:
            yield bound
        finally:
            await self.stop(drain_timeout_s)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        try:
            self._server = await self.loop.create_server(
                lambda: Connection(self),
                host,
                port,
                backlog=2048,
                reuse_address=True,
                reuse_port=reuse_port or None,
            )
        except OSError as exc:
            raise IngestError(f"HTTP server could not listen on {host}:{port}: {exc.strerror}") from exc
        if self.max_connections < self.limits.max_connections:
            log.info(
                "%s listener: at most %d connections (the file descriptor limit leaves no room for %d)",
                self.name,
                self.max_connections,
                self.limits.max_connections,
            )
        return int(self._server.sockets[0].getsockname()[1])

    def admit(self, connection: Connection) -> bool:
        if len(self._connections) >= self.max_connections:
            if not self._idle:
                return False
            oldest = next(iter(self._idle))
            oldest.close_if_idle()
            self._idle.pop(oldest, None)
        self._connections.add(connection)
        self._gauge.set(len(self._connections))
        return True

    def forget(self, connection: Connection) -> None:
        self._connections.discard(connection)
        self._idle.pop(connection, None)
        self._gauge.set(len(self._connections))

    def idle(self, connection: Connection) -> None:
        self._idle[connection] = None

    def not_idle(self, connection: Connection) -> None:
        self._idle.pop(connection, None)

    async def stop(self, timeout_s: float) -> None:
        """Stop accepting; close idle connections; let requests under way be
        answered (their connections then close) within ``timeout_s``; abort
        what is left."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + timeout_s
        while self._connections and self.loop.time() < deadline:
            for connection in list(self._connections):
                connection.close_if_idle()
            if not any(connection.busy for connection in self._connections):
                break
            await asyncio.sleep(0.05)  # polling a handful of connections while draining
        for connection in list(self._connections):
            connection.abort()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
