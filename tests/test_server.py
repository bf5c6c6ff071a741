"""The HTTP server's limits, each driven over a real loopback socket against
:class:`ingest.api.server.Server` in this process, with small limits so each
case takes at most a few seconds."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from ingest import errors
from ingest.api.limits import ClientAddress
from ingest.api.server import BodyBudget, Limits, Server, connection_cap
from ingest.metrics import HttpMetrics

LIMITS = Limits(
    header_timeout_s=0.5,
    idle_timeout_s=0.5,
    body_timeout_s=0.5,
    min_body_rate=1000,
    max_url_bytes=1024,
    max_headers=20,
    max_header_bytes=4096,
    max_body_bytes=64 * 1024,
    max_connections=20,
)


class Recorder:
    """An ASGI app answering 200 with what it was given; it counts calls and
    can be told to hold answers until released."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        self.calls.append({"path": scope["path"], "body": message["body"], "client": scope["client"]})
        await self.release.wait()
        if self.fail:
            raise RuntimeError("boom")
        body = orjson.dumps({"path": scope["path"], "size": len(message["body"])})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


@dataclasses.dataclass
class Running:
    server: Server
    app: Recorder
    port: int
    registry: CollectorRegistry
    writers: list[asyncio.StreamWriter] = dataclasses.field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers.append(writer)
        return reader, writer

    def refused(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "ingest_http_refusals_total", {"listener": "test", "reason": reason}
        )
        return value or 0.0


@contextlib.asynccontextmanager
async def serving(
    limits: Limits = LIMITS,
    budget: int = 1024 * 1024,
    trusted: str = "",
    shed: Any = None,
) -> AsyncIterator[Running]:
    registry = CollectorRegistry()
    app = Recorder()
    server = Server(
        app,
        name="test",
        limits=limits,
        budget=BodyBudget(budget),
        metrics=HttpMetrics(registry),
        clients=ClientAddress.parse(trusted),
        shed=shed,
    )
    port = await server.start("127.0.0.1", 0)
    running = Running(server, app, port, registry)
    try:
        yield running
    finally:
        app.release.set()
        await server.stop(2.0)
        for writer in running.writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def read_response(
    reader: asyncio.StreamReader, timeout_s: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case), body (by Content-Length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout_s)
    return status, headers, body


async def closed(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bool:
    """True once the server has closed the connection (EOF or reset)."""
    try:
        return await asyncio.wait_for(reader.read(65536), timeout_s) == b""
    except ConnectionResetError:
        return True


def declared(path: str, length: int) -> bytes:
    """The head of a POST whose body of ``length`` bytes is still to come."""
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


def post(path: str, body: bytes, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_requests_are_answered_kept_alive_and_pipelined_in_order() -> None:
    async with serving() as running:
        reader, writer = await running.connect()
        writer.write(post("/a", b"x" * 10) + post("/b", b"") + b"GET /c?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = [await read_response(reader) for _ in range(3)]
        assert [orjson.loads(body)["path"] for _, _, body in answers] == ["/a", "/b", "/c"]
        assert all(status == 200 and "date" in headers for status, headers, _ in answers)
        assert running.app.calls[0]["body"] == b"x" * 10
        writer.close()


async def test_chunked_bodies_and_expect_continue_are_read() -> None:
    async with serving() as running:
        reader, writer = await running.connect()
        writer.write(
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        status, _, body = await read_response(reader)
        assert status == 200 and orjson.loads(body)["size"] == 5
        writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"wxyz")
        status, _, body = await read_response(reader)
        assert status == 200 and orjson.loads(body)["size"] == 4
        writer.close()


async def test_http_10_and_connection_close_end_the_connection_after_the_answer() -> None:
    async with serving() as running:
        for request in (b"GET /x HTTP/1.0\r\n\r\n", b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n"):
            reader, writer = await running.connect()
            writer.write(request)
            status, headers, _ = await read_response(reader)
            assert status == 200 and headers["connection"] == "close"
            assert await closed(reader)
            writer.close()


async def test_a_stalled_body_reaches_the_app_never_and_times_out_with_408() -> None:
    async with serving() as running:
        reader, writer = await running.connect()
        writer.write(declared("/slow", 5000) + b"ab")
        started = time.monotonic()
        status, headers, body = await read_response(reader)
        waited = time.monotonic() - started
        assert status == 408 and headers["x-amzn-errortype"] == "RequestTimeoutException", body
        assert 0.4 < waited < 2.0, waited
        assert running.app.calls == []  # the app never held the request
        assert await closed(reader)
        assert running.refused("body_timeout") == 1


async def test_a_body_that_keeps_up_the_minimum_rate_is_read_to_the_end() -> None:
    limits = dataclasses.replace(LIMITS, body_timeout_s=0.3, min_body_rate=2000)
    async with serving(limits) as running:
        reader, writer = await running.connect()
        writer.write(declared("/steady", 2000))
        for _ in range(10):  # 200 bytes every 0.1 s: 2,000 bytes/s after the grace
            writer.write(b"y" * 200)
            await asyncio.sleep(0.1)
        status, _, body = await read_response(reader)
        assert status == 200 and orjson.loads(body)["size"] == 2000


async def test_a_body_sent_fast_then_stalled_times_out_after_the_grace() -> None:
    """Bytes sent fast early buy no time to stall later while holding budget."""
    limits = dataclasses.replace(LIMITS, body_timeout_s=0.5, min_body_rate=1000)
    async with serving(limits) as running:
        reader, writer = await running.connect()
        writer.write(declared("/x", 60000))
        writer.write(b"f" * 50_000)  # 50 s of credit at the minimum rate
        started = time.monotonic()
        status, _, _ = await read_response(reader)
        assert status == 408 and time.monotonic() - started < 2.0


async def test_slow_headers_get_408_and_a_silent_connection_is_closed() -> None:
    async with serving() as running:
        reader, writer = await running.connect()
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n")  # never finished
        status, headers, _ = await read_response(reader)
        assert status == 408 and headers["x-amzn-errortype"] == "RequestTimeoutException"
        silent_reader, _ = await running.connect()
        started = time.monotonic()
        assert await closed(silent_reader)
        assert time.monotonic() - started < 2.0
        assert running.refused("header_timeout") == 1


async def test_an_idle_kept_alive_connection_is_closed() -> None:
    async with serving() as running:
        reader, writer = await running.connect()
        writer.write(b"GET /x HTTP/1.1\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        started = time.monotonic()
        assert await closed(reader)
        assert 0.4 < time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("request_bytes", "status", "error_type", "reason"),
    [
        (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n", 414, "RequestURITooLongException", "url"),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n",
            431,
            "RequestHeaderFieldsTooLargeException",
            "headers",
        ),
        (
            b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 8000 + b"\r\n\r\n",
            431,
            "RequestHeaderFieldsTooLargeException",
            "headers",
        ),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400, "BadRequestException", "malformed"),
        (b"GET /v1/apps/\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "BadRequestException", "malformed"),
        (b"FUZZ / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "BadRequestException", "malformed"),
        (
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            400,
            "BadRequestException",
            "malformed",
        ),
        (
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
            "BadRequestException",
            "malformed",
        ),
    ],
    ids=[
        "url",
        "header-count",
        "header-bytes",
        "tls-hello",
        "raw-utf8-path",
        "unknown-method",
        "upgrade",
        "duplicate-length",
    ],
)
async def test_oversized_or_malformed_heads_get_a_typed_error_and_close(
    request_bytes: bytes, status: int, error_type: str, reason: str
) -> None:
    async with serving() as running:
        reader, writer = await running.connect()
        writer.write(request_bytes)
        got, headers, body = await read_response(reader)
        assert (got, headers["x-amzn-errortype"]) == (status, error_type), body
        assert set(orjson.loads(body)) == {"Message", "RequestID"}
        assert headers["x-amzn-requestid"] == orjson.loads(body)["RequestID"]
        assert await closed(reader)
        assert running.refused(reason) == 1
        assert running.app.calls == []


async def test_a_huge_header_is_refused_before_it_is_read() -> None:
    """Megabytes of one header: refused after the first few KiB, not buffered."""
    async with serving() as running:
        reader, writer = await running.connect()
        writer.write(b"GET / HTTP/1.1\r\nX-Huge: ")
        sent = 0
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                writer.write(b"v" * 65536)
                await writer.drain()
                sent += 65536
        status, _, _ = await read_response(reader)
        assert status == 431


def blocking_exchange(port: int, request: bytes) -> bytes:
    """What urllib does: write the whole request, only then read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


async def test_an_early_413_is_read_by_a_client_that_writes_its_whole_body_first() -> None:
    async with serving() as running:
        big = post("/big", b"z" * (1024 * 1024))
        answer = await asyncio.to_thread(blocking_exchange, running.port, big)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
        assert b"x-amzn-errortype: PayloadTooLargeException" in answer
        assert running.app.calls == [] and running.refused("body_size") == 1


async def test_a_chunked_body_over_the_limit_gets_413() -> None:
    async with serving() as running:
        chunk = b"%x\r\n%s\r\n" % (40 * 1024, b"c" * 40 * 1024)
        request = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2 + b"0\r\n\r\n"
        answer = await asyncio.to_thread(blocking_exchange, running.port, request)
        assert answer.startswith(b"HTTP/1.1 413 ")


def held_open(length: int, client: str) -> bytes:
    """The head of a body of ``length`` bytes, from ``client`` (behind the
    trusted proxy), and two bytes of it: it stays unfinished."""
    return (
        f"POST /hold HTTP/1.1\r\nX-Forwarded-For: {client}\r\nContent-Length: {length}\r\n\r\nab"
    ).encode()


async def test_bodies_past_the_budget_get_429_and_no_client_starves_the_others() -> None:
    """A budget of 400 KiB: one client may hold 100 KiB of it, and bodies over
    64 KiB may not take the last 50 KiB, kept for small bodies."""
    limits = dataclasses.replace(LIMITS, max_body_bytes=1024 * 1024)
    async with serving(limits, budget=400 * 1024, trusted="127.0.0.1") as running:
        holders = []
        for client in ("198.51.100.1", "198.51.100.1", "198.51.100.2", "198.51.100.3"):
            reader, writer = await running.connect()
            writer.write(held_open(48 * 1024, client))
            holders.append(reader)
        await asyncio.sleep(0.1)
        assert running.server.budget.used == 4 * 48 * 1024
        # A third body of the first client would take it past its 100 KiB.
        reader, writer = await running.connect()
        writer.write(held_open(48 * 1024, "198.51.100.1"))
        status, headers, _ = await read_response(reader)
        assert status == 429 and headers["retry-after"] == "1"
        assert headers["x-amzn-errortype"] == "TooManyRequestsException"
        # Large bodies of new clients fill the budget up to the small reserve (350 KiB) …
        reader, writer = await running.connect()
        writer.write(held_open(90 * 1024, "198.51.100.4"))
        holders.append(reader)
        reader, writer = await running.connect()
        writer.write(held_open(90 * 1024, "198.51.100.5"))
        assert (await read_response(reader))[0] == 429
        # … and small bodies still pass.
        reader, writer = await running.connect()
        writer.write(post("/small", b"s" * 30_000, "X-Forwarded-For: 198.51.100.6"))
        assert (await read_response(reader))[0] == 200
        for holder in holders:  # the slow ones time out and give their share back
            assert (await read_response(holder))[0] == 408
        assert running.server.budget.used == 0 and running.server.budget._by_client == {}


async def test_the_connection_cap_closes_idle_ones_first_then_refuses() -> None:
    limits = dataclasses.replace(LIMITS, max_connections=4, idle_timeout_s=30, header_timeout_s=30)
    async with serving(limits) as running:
        idle = []
        for _ in range(4):
            reader, writer = await running.connect()
            writer.write(b"GET /warm HTTP/1.1\r\n\r\n")
            assert (await read_response(reader))[0] == 200
            idle.append(reader)
        # A fifth connection: the oldest idle one makes room.
        reader, writer = await running.connect()
        writer.write(b"GET /fifth HTTP/1.1\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        assert await closed(idle[0])
        # Four connections each mid-request: nothing idle to close, so a new one is refused.
        busy = []
        for _ in range(4):
            r, w = await running.connect()
            w.write(b"GET /partial HTTP/1.1\r\n")
            busy.append(w)
        await asyncio.sleep(0.1)
        r, w = await running.connect()
        status, headers, _ = await read_response(r)
        assert status == 429 and headers["x-amzn-errortype"] == "TooManyRequestsException"
        assert running.refused("connections") >= 1
        assert len(running.server._connections) <= 4


def test_the_connection_cap_leaves_descriptors_free() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(10**9) == soft - 256
    assert connection_cap(10) == 10


async def test_an_app_error_is_a_typed_500_and_the_server_goes_on() -> None:
    async with serving() as running:
        running.app.fail = True
        reader, writer = await running.connect()
        writer.write(b"GET /x HTTP/1.1\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert status == 500 and headers["x-amzn-errortype"] == "InternalServerErrorException"
        running.app.fail = False
        reader, writer = await running.connect()
        writer.write(b"GET /x HTTP/1.1\r\n\r\n")
        assert (await read_response(reader))[0] == 200


async def test_stopping_lets_an_answer_under_way_finish_and_closes_idle_connections() -> None:
    async with serving() as running:
        idle_reader, idle_writer = await running.connect()
        idle_writer.write(b"GET /idle HTTP/1.1\r\n\r\n")
        assert (await read_response(idle_reader))[0] == 200
        running.app.release.clear()
        reader, writer = await running.connect()
        writer.write(b"GET /held HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(running.server.stop(5.0))
        assert await closed(idle_reader, 2.0)
        await asyncio.sleep(0.2)
        running.app.release.set()
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers["connection"] == "close"
        await stopping


async def test_a_full_app_is_answered_429_as_the_request_is_read_and_the_connection_stays() -> None:
    full = True

    def shed(scope: dict[str, Any]) -> errors.ApiError | None:
        return errors.TooManyRequests("full") if full else None

    async with serving(shed=shed) as running:
        reader, writer = await running.connect()
        writer.write(post("/x", b"body"))
        status, headers, _ = await read_response(reader)
        assert status == 429 and headers["retry-after"] == "1" and "connection" not in headers
        assert running.app.calls == [] and running.server.budget.used == 0
        assert running.refused("shed") == 1
        full = False
        writer.write(post("/y", b"body"))  # the same connection
        assert (await read_response(reader))[0] == 200
