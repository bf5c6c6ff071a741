"""Pinpoint's application settings: GetApplicationSettings and
UpdateApplicationSettings, answering ``ApplicationSettingsResource``.

Nothing here acts on the settings (there are no campaigns to hold to their
limits or quiet time): they are kept as sent, so the tools that manage an
app's settings read back what they wrote. An update replaces the settings
as a whole. A body is held to the model's ``WriteApplicationSettingsRequest``:
its members and theirs, each of its type (an unknown member is a 400, not
silently dropped), strings bounded, quiet times ``HH:MM``; a JSON null is
taken as the member left out. An app never updated answers what Pinpoint
answers for a new one: empty ``CampaignHook``, ``Limits`` and ``QuietTime``,
dated when the app was created.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from ingest.api.apps import AppCache
from ingest.api.http import Request, Response, iso_now, json_response
from ingest.errors import BadRequest, NotFound
from ingest.records import validate
from ingest.store.base import ApplicationSettings, Store

# What a member is: a leaf's check (value, where → the value to keep, or
# BadRequest), or a structure of further members.
Check = Callable[[Any, str], Any]
Shape = Mapping[str, "Check | Shape"]

# The model types its integers as Java's int and its strings as unbounded;
# no setting needs more than a URL's worth of characters.
MAX_INT = 2**31 - 1
MAX_SETTING_CHARS = 2048
_HH_MM = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d", re.ASCII)


def _string(value: Any, where: str) -> str:
    if type(value) is not str or len(value) > MAX_SETTING_CHARS:
        raise BadRequest(f"{where} must be a string of at most {MAX_SETTING_CHARS} characters")
    return value


def _integer(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise BadRequest(f"{where} must be a whole number of 0-{MAX_INT}")
    return value


def _boolean(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise BadRequest(f"{where} must be true or false")
    return value


def _mode(value: Any, where: str) -> str:
    if value not in ("DELIVERY", "FILTER"):
        raise BadRequest(f"{where} must be DELIVERY or FILTER")
    return str(value)


def _hh_mm(value: Any, where: str) -> str:
    if type(value) is not str or _HH_MM.fullmatch(value) is None:
        raise BadRequest(f"{where} must be a time of day in 24-hour HH:MM form, e.g. 22:30")
    return value


# WriteApplicationSettingsRequest (botocore's pinpoint model; its test holds
# this to the model's member names and types).
WRITE_APPLICATION_SETTINGS: Shape = {
    "CampaignHook": {"LambdaFunctionName": _string, "Mode": _mode, "WebUrl": _string},
    "CloudWatchMetricsEnabled": _boolean,
    "EventTaggingEnabled": _boolean,
    "Limits": {
        "Daily": _integer,
        "MaximumDuration": _integer,
        "MessagesPerSecond": _integer,
        "Total": _integer,
        "Session": _integer,
    },
    "QuietTime": {"End": _hh_mm, "Start": _hh_mm},
    "JourneyLimits": {
        "DailyCap": _integer,
        "TimeframeCap": {"Cap": _integer, "Days": _integer},
        "TotalCap": _integer,
    },
}
# What ApplicationSettingsResource answers even when never set; it also
# has JourneyLimits, when set. (The two booleans are write-only in the model.)
_ALWAYS = ("CampaignHook", "Limits", "QuietTime")


def write_application_settings(body: Any) -> dict[str, Any]:
    """A WriteApplicationSettingsRequest body → the settings to keep. Pure;
    BadRequest naming the first member out of the model."""
    return _structure(WRITE_APPLICATION_SETTINGS, body, "WriteApplicationSettingsRequest")


def _structure(shape: Shape, value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise BadRequest(f"{where} must be a JSON object")
    kept: dict[str, Any] = {}
    for name, member in value.items():
        if name not in shape:
            raise BadRequest(f"{where} has no member {name[:100]!r}; its members are {', '.join(shape)}")
        if member is None:
            continue
        check = shape[name]
        inner = f"{where}.{name}"
        kept[name] = _structure(check, member, inner) if isinstance(check, Mapping) else check(member, inner)
    return kept


def settings_resource(app_id: str, document: Mapping[str, Any], last_modified: str) -> dict[str, Any]:
    """Pinpoint's ApplicationSettingsResource."""
    resource: dict[str, Any] = {"ApplicationId": app_id, "LastModifiedDate": last_modified}
    for name in _ALWAYS:
        resource[name] = document.get(name, {})
    if "JourneyLimits" in document:
        resource["JourneyLimits"] = document["JourneyLimits"]
    return resource


class AppSettings:
    """GetApplicationSettings and UpdateApplicationSettings."""

    def __init__(self, *, store: Store, apps: AppCache, max_body_bytes: int) -> None:
        self._store = store
        self._apps = apps
        self._max_body_bytes = max_body_bytes

    async def get_application_settings(self, request: Request) -> Response:
        app = await self._apps.require(request.params["app"])
        found = await self._store.get_application_settings(app.id)
        if found is None:
            return json_response(200, settings_resource(app.id, {}, app.creation_date))
        return json_response(200, settings_resource(app.id, found.document, found.last_modified))

    async def update_application_settings(self, request: Request) -> Response:
        app_id = request.params["app"]
        document = write_application_settings(validate.json_body(await request.body(self._max_body_bytes)))
        settings = ApplicationSettings(app_id=app_id, document=document, last_modified=iso_now())
        # The store checks that the app exists in the statement that writes.
        if not await self._store.put_application_settings(settings):
            raise NotFound(f"Application not found: {app_id[:200]}")
        return json_response(200, settings_resource(app_id, document, settings.last_modified))
