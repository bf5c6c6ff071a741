"""Pinpoint's date-range KPI reads on the edge: GetApplicationDateRangeKpi,
GetCampaignDateRangeKpi, GetJourneyDateRangeKpi.

``KpiName`` is a free string in Pinpoint's API, so app KPIs computed from
events (:mod:`ingest.folds.kpis`) are served under their own names through the same
calls. Pinpoint's documented names are message-delivery metrics this pipeline
has no data for: they answer ``Rows: []``, as Pinpoint does for no data. Any
other name is a 400 that lists the names served.

Query: ``start-time`` and ``end-time`` are ISO 8601 timestamps; the days
(UTC) they fall on are both included. Without them the window is the last 31
days, today included; an end before the start is a 400.

A window is at most 31 days long, as Pinpoint's (the developer guide: "a
range must be ≤31 days", research/pinpoint-compat.md §3): longer is a 400,
so a read costs the same whether it asks for a day or for years 1-9999. A
timestamp outside years 1-9999 (or a window whose default end or start would
leave them) is a 400 too. Pinpoint's other rule, a start fewer than 90 days
ago (botocore's ``StartTime`` doc), is not enforced: this pipeline keeps what
it folded, and older days are still worth reading.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest.api.apps import AppCache
from ingest.api.http import Request, Response, json_response
from ingest.errors import BadRequest
from ingest.folds import kpis
from ingest.folds.kpis import Kpi
from ingest.store.base import KpiData, Store

DEFAULT_WINDOW_DAYS = 31
# Pinpoint's longest range; measured as a duration, so end - start of exactly
# 31 days (which touches 32 UTC days) is allowed, as the service allows it.
MAX_WINDOW = timedelta(days=31)
# A start without an end: the 31 days from the start's day on.
_DEFAULT_SPAN = timedelta(days=DEFAULT_WINDOW_DAYS - 1)


class Window:
    """A query's time bounds, as given (or defaulted) and as UTC days."""

    def __init__(self, request: Request, now_ms: int) -> None:
        end = _timestamp(request, "end-time")
        start = _timestamp(request, "start-time")
        try:
            if end is None:
                end = datetime.fromtimestamp(now_ms / 1000, UTC) if start is None else start + _DEFAULT_SPAN
            if start is None:
                start = datetime.combine(
                    end.date() - timedelta(days=DEFAULT_WINDOW_DAYS - 1), datetime.min.time(), UTC
                )
        except OverflowError as exc:
            raise BadRequest("The date range must lie within years 1-9999") from exc
        if end < start:
            raise BadRequest("end-time is before start-time")
        if end - start > MAX_WINDOW:
            raise BadRequest(f"The date range is longer than {MAX_WINDOW.days} days; ask for at most that")
        self.start, self.end = start, end
        self.start_day = kpis.parse_day(start.isoformat())
        self.end_day = kpis.parse_day(end.isoformat())

    def response(self) -> dict[str, str]:
        return {"StartTime": _iso(self.start), "EndTime": _iso(self.end)}


def _timestamp(request: Request, name: str) -> datetime | None:
    text = request.query_one(name)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"{name} is not an ISO 8601 timestamp: {text[:64]!r}") from exc
    try:
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError as exc:  # an offset that moves 0001-01-01 or 9999-12-31 off the calendar
        raise BadRequest(f"{name} is outside years 1-9999: {text[:64]!r}") from exc


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _unknown(name: str, served: list[str]) -> BadRequest:
    return BadRequest(
        f"Unknown KpiName {name[:100]!r}. Computed from events: {', '.join(served)}; "
        "Pinpoint's documented delivery KPI names are accepted and answer no rows."
    )


class KpiReads:
    """The three KPI operations over the store's aggregates."""

    def __init__(self, store: Store, apps: AppCache) -> None:
        self._store = store
        self._apps = apps

    async def get_application_kpi(self, request: Request) -> Response:
        app = await self._apps.require(request.params["app"])
        return json_response(200, await self.application(app.id, request))

    async def get_campaign_kpi(self, request: Request) -> Response:
        app = await self._apps.require(request.params["app"])
        return json_response(200, await self.campaign(app.id, request))

    async def get_journey_kpi(self, request: Request) -> Response:
        app = await self._apps.require(request.params["app"])
        return json_response(200, await self.journey(app.id, request))

    async def application(self, app_id: str, request: Request) -> dict[str, Any]:
        name = request.params["kpi"]
        window = Window(request, time.time_ns() // 1_000_000)
        kpi = kpis.APP_KPIS.get(name)
        if kpi is not None:
            rows = await self._rows(app_id, kpi, kpi.kind, window)
        elif name in kpis.APP_DELIVERY_KPIS:
            rows = []
        else:
            raise _unknown(name, sorted(kpis.APP_KPIS))
        return {"ApplicationId": app_id, "KpiName": name, **window.response(), "KpiResult": {"Rows": rows}}

    async def campaign(self, app_id: str, request: Request) -> dict[str, Any]:
        name, campaign_id = request.params["kpi"], request.params["campaign"]
        window = Window(request, time.time_ns() // 1_000_000)
        kpi = kpis.CAMPAIGN_KPIS.get(name)
        if kpi is not None:
            rows = await self._rows(app_id, kpi, kpis.push_opens_kind(campaign_id), window)
        elif name in kpis.CAMPAIGN_DELIVERY_KPIS:
            rows = []
        else:
            raise _unknown(name, sorted(kpis.CAMPAIGN_KPIS))
        result = {"Rows": rows}
        return {
            "ApplicationId": app_id,
            "CampaignId": campaign_id,
            "KpiName": name,
            **window.response(),
            "KpiResult": result,
        }

    async def journey(self, app_id: str, request: Request) -> dict[str, Any]:
        name, journey_id = request.params["kpi"], request.params["journey"]
        window = Window(request, time.time_ns() // 1_000_000)
        if name not in kpis.JOURNEY_DELIVERY_KPIS:
            raise BadRequest(
                f"Unknown KpiName {name[:100]!r}. Journey KPIs are Pinpoint's documented journey "
                "email metrics, which answer no rows: no journey data reaches this pipeline."
            )
        return {
            "ApplicationId": app_id,
            "JourneyId": journey_id,
            "KpiName": name,
            **window.response(),
            "KpiResult": {"Rows": []},
        }

    async def _rows(self, app_id: str, kpi: Kpi, kind: str, window: Window) -> list[dict[str, Any]]:
        first, last = window.start_day, window.end_day
        store = self._store
        data: KpiData
        if kpi.source == "first_days":
            data = await store.kpi_new_endpoints(app_id, first, last)
        elif kpi.source == "members" and kpi.shape == "monthly":
            data = await store.kpi_monthly_counts(app_id, kind, first, last)
        elif kpi.source == "members":
            data = await store.kpi_member_counts(app_id, kind, first, last)
        else:
            data = await store.kpi_sums(app_id, kind, first, last)
        divisors = None
        if kpi.divisor_kind:
            divisors = {
                day: total for day, _, total in await store.kpi_sums(app_id, kpi.divisor_kind, first, last)
            }
        return kpis.rows(kpi, window.start_day, window.end_day, data, divisors)
