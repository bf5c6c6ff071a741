"""Liveness, readiness and metrics: ``/healthz``, ``/readyz``, ``/metrics``.

One implementation for every process, on a listener of its own
(``INGEST_PROBE_HOST:INGEST_PROBE_PORT``) apart from the public API port: an
overloaded or attacked API port never keeps Kubernetes and Prometheus from
an answer, and the internet-facing port serves the API alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from ingest.api.http import Receive, Request, Response, Scope, Send, json_response, send_response

Check = tuple[str, Callable[[], bool]]
"""A readiness condition: what /readyz says when it fails, and the test."""


class Probes:
    """Ready while every check holds; /readyz names the first that fails."""

    def __init__(
        self,
        checks: Sequence[Check],
        registry: CollectorRegistry,
        *,
        gauge: Gauge | None = None,
        render: Callable[[], Awaitable[bytes]] | None = None,
        explain: Callable[[], str | None] | None = None,
    ) -> None:
        # Kept, not copied: a process adds its roles' checks as it assembles them.
        self.checks = checks
        self._registry = registry
        self.gauge = gauge
        # What /metrics answers instead of ``registry`` alone (a supervisor's
        # registry merged with its children's).
        self.render = render
        # Asked when every check holds: a reason that is not fixed text (a
        # supervisor's: which child is not ready, and why it says so).
        self.explain = explain
        # What is wrong but does not make the process unready (an event
        # stream's destination down: its events wait, the rest flows), said
        # in /readyz's answer under "degraded".
        self.degraded: list[Callable[[], Sequence[str]]] = []

    def failing(self) -> str | None:
        """The first failing check's reason, or None when ready."""
        reason = next((reason for reason, holds in self.checks if not holds()), None)
        if reason is None and self.explain is not None:
            reason = self.explain()
        if self.gauge is not None:
            self.gauge.set(0 if reason else 1)
        return reason

    @property
    def ready(self) -> bool:
        return self.failing() is None

    async def healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        reason = self.failing()
        answer: dict[str, object] = (
            {"status": "ready"} if reason is None else {"status": "not ready", "reason": reason}
        )
        degraded = [note for notes in self.degraded for note in notes()]
        if degraded:
            answer["degraded"] = degraded
        return json_response(200 if reason is None else 503, answer)

    async def metrics(self, request: Request) -> Response:
        if self.render is not None:
            body = await self.render()
        else:
            # Off the loop: a large registry takes milliseconds to render.
            body = await asyncio.to_thread(generate_latest, self._registry)
        return Response(200, body, CONTENT_TYPE_LATEST.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app of the probe listener."""
        if scope["type"] != "http":
            return
        handler = {"/healthz": self.healthz, "/readyz": self.readyz, "/metrics": self.metrics}.get(
            scope["path"]
        )
        request = Request(scope["method"], {}, {}, {}, receive, "-")
        response = json_response(404, {"Message": "not found"}) if handler is None else await handler(request)
        await send_response(send, response, "-")


async def http_get(
    address: tuple[str, int], path: str, *, max_bytes: int, timeout_s: float
) -> tuple[int, bytes]:
    """One HTTP/1.1 GET to a probe listener (``ingest run``'s children, or
    the streams worker's /metrics the console reads); → (status code, body).
    Bounded by ``timeout_s`` and ``max_bytes``; ValueError for an answer that
    is not HTTP or too long, OSError and TimeoutError as they come."""

    async def fetch() -> bytes:
        reader, writer = await asyncio.open_connection(*address)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {address[0]}\r\nConnection: close\r\n\r\n".encode())
            data = await reader.read(max_bytes + 1)
            while data and len(data) <= max_bytes:
                more = await reader.read(max_bytes + 1 - len(data))
                if not more:
                    break
                data += more
            return data
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    raw = await asyncio.wait_for(fetch(), timeout_s)
    if len(raw) > max_bytes:
        raise ValueError(f"answer of more than {max_bytes} bytes")
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("no complete answer")
    status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[0][:32]!r}")
    return int(status_line[1]), body
