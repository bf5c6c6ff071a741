"""Event-stream delivery health for the console, read from the streams
worker's own metrics (``ingest_stream_*``, :mod:`ingest.metrics`).

The streams worker is another process (another pod in Kubernetes), so the
edge scrapes a Prometheus text endpoint, ``INGEST_CONSOLE_STREAM_METRICS_URL``:
`ingest run` points its edges at its own ``/metrics``, which holds every
child's samples; a deployment points it at the streams worker's. One scrape
serves every console request for ``CACHE_S``, and a scrape is bounded in
time and size, so a console cannot make the edge hammer or wait on it.

The figures are per destination kind (``kinesis``, ``firehose``, ``kafka``),
the metrics' own labels: never per app or ARN.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from ingest.api.probes import http_get

CACHE_S = 2.0
# Longer than `ingest run`'s own scrape of each child (supervise.PROBE_TIMEOUT_S):
# a child slow to answer leaves its samples out of that page, rather than the
# whole page going unread here; still a bound on what a console request waits.
TIMEOUT_S = 5.0
MAX_BYTES = 16 * 1024 * 1024
# Metric (without the _total a counter's samples carry) → what the console calls it.
FIGURES = {
    "ingest_stream_lag_records": "LagRecords",
    "ingest_stream_parked_destinations": "ParkedDestinations",
    "ingest_stream_delivered_records": "DeliveredRecords",
    "ingest_stream_retried_records": "RetriedRecords",
}
BY_REASON = {
    "ingest_stream_failures": "Failures",
    "ingest_stream_dead_lettered_records": "DeadLettered",
}


def figures(text: str) -> dict[str, dict[str, Any]]:
    """The ingest_stream_* samples of a Prometheus text page, by destination
    kind: ``{kind: {"LagRecords": n, …, "Failures": {reason: n}, …}}``,
    summed over processes. Pure."""
    found: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name
        if name not in FIGURES and name not in BY_REASON:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            kind = sample.labels.get("destination")
            if kind is None:
                continue
            held = found.setdefault(kind, {"Failures": {}, "DeadLettered": {}})
            if name in FIGURES:
                held[FIGURES[name]] = held.get(FIGURES[name], 0.0) + sample.value
            else:
                reasons = held[BY_REASON[name]]
                reason = sample.labels.get("reason", "other")
                reasons[reason] = reasons.get(reason, 0.0) + sample.value
    return found


class StreamHealth:
    """The last scrape of ``url`` (None: not configured), kept ``CACHE_S``."""

    def __init__(self, url: str | None, *, monotonic_s: Callable[[], float] = time.monotonic) -> None:
        self._url = url
        self._monotonic_s = monotonic_s
        self._kept: tuple[float, dict[str, Any]] | None = None

    async def read(self) -> dict[str, Any]:
        """``{"Destinations": {kind: figures}, "ReadAt": ms}`` or
        ``{"Unavailable": why}``; never raises."""
        if self._url is None:
            return {"Unavailable": "INGEST_CONSOLE_STREAM_METRICS_URL is not set on this edge"}
        now = self._monotonic_s()
        if self._kept is not None and now - self._kept[0] < CACHE_S:
            return self._kept[1]
        answer = await self._scrape(self._url)
        self._kept = (now, answer)
        return answer

    @staticmethod
    async def _scrape(url: str) -> dict[str, Any]:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        try:
            status, body = await http_get(
                (host, port), parts.path or "/metrics", max_bytes=MAX_BYTES, timeout_s=TIMEOUT_S
            )
            if status != 200:
                return {"Unavailable": f"the streams worker's metrics answered {status}"}
            return {
                "Destinations": figures(body.decode("utf-8", "replace")),
                "ReadAt": time.time_ns() // 10**6,
            }
        except (OSError, TimeoutError, ValueError) as exc:
            return {"Unavailable": f"the streams worker's metrics could not be read ({type(exc).__name__})"}
