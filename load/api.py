"""The harness's own calls to the server, through the public API only,
signed as boto3 signs them with the harness's long-term (admin) key:
CreateApp (one app per run), the KPI read used for accounting, and
readiness."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
from yarl import URL

from load.credentials import Key
from load.sdk import Sdk, kpi_path
from load.sigv4 import canonical_query

EVENTS_BY_TYPE = "events-grouped-by-event-type"


class ApiError(Exception):
    """A control-plane call answered something else than success."""

    def __init__(self, what: str, status: int, body: bytes) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:300]!r}")
        self.status = status


class Api:
    def __init__(self, session: aiohttp.ClientSession, url: str, key: Key) -> None:
        self._session = session
        self._sdk = Sdk(url, key)

    async def _call(
        self, method: str, path: str, body: bytes = b"", query: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        headers = self._sdk.headers(
            "boto3",
            method,
            path,
            body,
            epoch_s=int(time.time()),
            invocation_id="load-harness",
            attempt=1,
            query=query,
        )
        url = self._sdk.base + path + (f"?{canonical_query(query)}" if query else "")
        async with self._session.request(
            method, URL(url, encoded=True), data=body, headers=headers
        ) as response:
            return response.status, await response.read()

    async def create_app(self, name: str) -> str:
        """CreateApp → the new app's ID."""
        status, body = await self._call("POST", "/v1/apps", orjson.dumps({"Name": name}))
        if status != 201:
            raise ApiError("CreateApp", status, body)
        return str(orjson.loads(body)["Id"])

    async def kpi(self, app_id: str, name: str, *, start: str, end: str) -> dict[str, Any]:
        """GetApplicationDateRangeKpi's ``ApplicationDateRangeKpiResponse``."""
        query = {"start-time": start, "end-time": end}
        status, body = await self._call("GET", kpi_path(app_id, name), query=query)
        if status != 200:
            raise ApiError(f"GetApplicationDateRangeKpi {name}", status, body)
        answer: dict[str, Any] = orjson.loads(body)
        return answer
