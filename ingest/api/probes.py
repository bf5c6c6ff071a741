"""Liveness, readiness and metrics: ``/healthz``, ``/readyz``, ``/metrics``.

One implementation for every process: the edge routes these paths to a
:class:`Probes`, and processes without the API (workers) serve a
:class:`Probes` as their whole ASGI app. Probes are never admitted against
the in-flight limit, so an overloaded process still answers Kubernetes and
Prometheus.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from ingest.api.http import Receive, Request, Response, Scope, Send, json_response, send_response

Check = tuple[str, Callable[[], bool]]
"""A readiness condition: what /readyz says when it fails, and the test."""


class Probes:
    """Ready while every check holds; /readyz names the first that fails."""

    def __init__(
        self, checks: Sequence[Check], registry: CollectorRegistry, *, gauge: Gauge | None = None
    ) -> None:
        self._checks = tuple(checks)
        self._registry = registry
        self._gauge = gauge

    def failing(self) -> str | None:
        """The first failing check's reason, or None when ready."""
        reason = next((reason for reason, holds in self._checks if not holds()), None)
        if self._gauge is not None:
            self._gauge.set(0 if reason else 1)
        return reason

    @property
    def ready(self) -> bool:
        return self.failing() is None

    async def healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        reason = self.failing()
        if reason is None:
            return json_response(200, {"status": "ready"})
        return json_response(503, {"status": "not ready", "reason": reason})

    async def metrics(self, request: Request) -> Response:
        # Off the loop: a large registry takes milliseconds to render.
        body = await asyncio.to_thread(generate_latest, self._registry)
        return Response(200, body, CONTENT_TYPE_LATEST.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The whole ASGI app of a process without the API."""
        if scope["type"] != "http":
            return
        handler = {"/healthz": self.healthz, "/readyz": self.readyz, "/metrics": self.metrics}.get(
            scope["path"]
        )
        request = Request(scope["method"], {}, {}, {}, receive, "-")
        response = json_response(404, {"Message": "not found"}) if handler is None else await handler(request)
        await send_response(send, response, "-")
