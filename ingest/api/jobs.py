"""Pinpoint's import and export job operations: CreateImportJob (201),
GetImportJob, GetImportJobs, GetSegmentImportJobs, CreateExportJob (202),
GetExportJob, GetExportJobs, GetSegmentExportJobs, in botocore's shapes
(``ImportJobResponse``, ``ExportJobResponse``, ``ImportJobsResponse`` /
``ExportJobsResponse`` of ``Item`` and ``NextToken``, ``page-size`` and
``token``).

A create checks the request (its URL is an ``s3://`` one, or a ``file://``
one under the directory the settings name, written plainly) and stores the
job CREATED; the jobs worker (:mod:`ingest.jobs.worker`) runs it. Lists are
newest first. Creating is an admin operation (a job names a role to assume
and where an app's endpoints come from or go); a read key may get and list.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from ingest.api.apps import AppCache, page_size
from ingest.api.http import Request, Response, iso_now, json_response
from ingest.errors import BadRequest, JobError, NotFound
from ingest.jobs.formats import FORMATS
from ingest.jobs.sources import parse_url
from ingest.records import validate
from ingest.settings import Settings
from ingest.store.base import MAX_JOB_FAILURES, Job, JobType, Segment, Store
from ingest.streams import destinations
from ingest.streams.destinations import DestinationError

# What each job type's create body is called, for the messages.
_REQUEST = {"IMPORT": "ImportJobRequest", "EXPORT": "ExportJobRequest"}


def new_job_id(now_ms: int) -> str:
    """32 hex digits, the creation time first: IDs sort by creation."""
    return f"{now_ms:012x}{secrets.token_hex(10)}"


class Jobs:
    """The eight job operations."""

    def __init__(self, *, store: Store, apps: AppCache, settings: Settings) -> None:
        self._store = store
        self._apps = apps
        self._settings = settings

    async def create_import_job(self, request: Request) -> Response:
        body = validate.json_body(await request.body(self._settings.max_body_bytes))
        definition = import_definition(body, self._settings)
        segment_id = definition.get("SegmentId")
        if segment_id is not None:
            segment = await self._segment(request.params["app"], segment_id, None)
            if segment.segment_type != "IMPORT":
                raise BadRequest(
                    f"SegmentId: segment {segment_id[:200]} is {segment.segment_type}; "
                    "imports add to IMPORT segments"
                )
        return await self._create(request, "IMPORT", definition, 201)

    async def create_export_job(self, request: Request) -> Response:
        body = validate.json_body(await request.body(self._settings.max_body_bytes))
        definition = export_definition(body, self._settings)
        segment_id = definition.get("SegmentId")
        if segment_id is not None:
            await self._segment(request.params["app"], segment_id, definition.get("SegmentVersion"))
        return await self._create(request, "EXPORT", definition, 202)

    async def _segment(self, app_id: str, segment_id: str, version: int | None) -> Segment:
        """The app's segment (at ``version``); NotFound naming what is missing."""
        app = await self._apps.require(app_id)
        segment = await self._store.get_segment(app.id, segment_id, version)
        if segment is None:
            at = "" if version is None else f" version {version}"
            raise NotFound(f"Segment not found: {segment_id[:200]}{at}")
        return segment

    async def get_import_job(self, request: Request) -> Response:
        return await self._get(request, "IMPORT")

    async def get_export_job(self, request: Request) -> Response:
        return await self._get(request, "EXPORT")

    async def get_import_jobs(self, request: Request) -> Response:
        return await self._list(request, "IMPORT", None)

    async def get_export_jobs(self, request: Request) -> Response:
        return await self._list(request, "EXPORT", None)

    async def get_segment_import_jobs(self, request: Request) -> Response:
        return await self._list(request, "IMPORT", request.params["segment"])

    async def get_segment_export_jobs(self, request: Request) -> Response:
        return await self._list(request, "EXPORT", request.params["segment"])

    async def _create(
        self, request: Request, job_type: JobType, definition: dict[str, Any], status: int
    ) -> Response:
        app_id = request.params["app"]
        now_ms = time.time_ns() // 1_000_000
        job_id = new_job_id(now_ms)
        segment = definition.get("SegmentId")
        if definition.get("DefineSegment"):
            segment = job_id  # the segment it makes takes the job's ID (ingest.jobs.static)
        job = Job(
            app_id=app_id,
            id=job_id,
            job_type=job_type,
            segment_id=segment if isinstance(segment, str) else None,
            definition=definition,
            status="CREATED",
            creation_date=iso_now(),
            created_ms=now_ms,
        )
        # The store checks that the app exists in the statement that writes.
        if not await self._store.create_job(job):
            raise NotFound(f"Application not found: {app_id[:200]}")
        return json_response(status, job_response(job))

    async def _get(self, request: Request, job_type: JobType) -> Response:
        app = await self._apps.require(request.params["app"])
        job = await self._store.get_job(app.id, request.params["job"])
        if job is None or job.job_type != job_type:
            raise NotFound(f"Resource not found: {job_type.lower()} job {request.params['job'][:200]}")
        return json_response(200, job_response(job))

    async def _list(self, request: Request, job_type: JobType, segment_id: str | None) -> Response:
        size = page_size(request)
        app = await self._apps.require(request.params["app"])
        if segment_id is not None:
            await self._segment(app.id, segment_id, None)
        found = await self._store.list_jobs(
            app.id, job_type, segment_id=segment_id, before=request.query_one("token"), limit=size + 1
        )
        page: dict[str, Any] = {"Item": [job_response(job) for job in found[:size]]}
        if len(found) > size:
            page["NextToken"] = found[size - 1].id
        return json_response(200, page)


def _object(body: Any, job_type: JobType) -> dict[str, Any]:
    if type(body) is not dict:
        raise BadRequest(f"Request body must be a JSON object ({_REQUEST[job_type]})")
    return body


def _string(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if type(value) is not str or (required and not value):
        raise BadRequest(f"{name} is required: a string" if required else f"{name} must be a string")
    return value


def _role(body: dict[str, Any], url: str) -> str:
    """RoleArn: required (botocore's model says so); an IAM role ARN when S3
    is read or written as it."""
    role_arn = _string(body, "RoleArn", required=True)
    assert role_arn is not None
    if url.startswith("s3://"):
        try:
            destinations.check_role(role_arn)
        except DestinationError as exc:
            raise BadRequest(str(exc)) from exc
    return role_arn


def _url(body: dict[str, Any], member: str, settings: Settings, *, export: bool) -> str:
    url = _string(body, member, required=True)
    assert url is not None
    root, setting = (
        (settings.export_dir, "INGEST_JOB_EXPORT_DIR")
        if export
        else (settings.import_dir, "INGEST_JOB_IMPORT_DIR")
    )
    try:
        parse_url(url, member=member, root=root, setting=setting)
    except JobError as exc:
        raise BadRequest(str(exc)) from exc
    return url


def import_definition(body: Any, settings: Settings) -> dict[str, Any]:
    """An ImportJobRequest → the ImportJobResource to store and show;
    BadRequest naming the member otherwise. Unknown members are ignored."""
    body = _object(body, "IMPORT")
    fmt = body.get("Format")
    if fmt not in FORMATS:
        raise BadRequest("Format is required: CSV or JSON")
    url = _url(body, "S3Url", settings, export=False)
    definition: dict[str, Any] = {"Format": fmt, "S3Url": url, "RoleArn": _role(body, url)}
    for name in ("RegisterEndpoints", "DefineSegment"):
        value = body.get(name)
        if value is not None and type(value) is not bool:
            raise BadRequest(f"{name} must be a boolean")
        if value is not None:
            definition[name] = value
    for name in ("ExternalId", "SegmentId", "SegmentName"):
        value = _string(body, name)
        if value is not None:
            definition[name] = value
    if definition.get("DefineSegment"):
        if not definition.get("SegmentName"):
            raise BadRequest("SegmentName is required with DefineSegment: the new segment's name")
        if "SegmentId" in definition:
            raise BadRequest("DefineSegment makes a new segment and SegmentId names one: not both")
    return definition


def export_definition(body: Any, settings: Settings) -> dict[str, Any]:
    """An ExportJobRequest → the ExportJobResource to store and show."""
    body = _object(body, "EXPORT")
    url = _url(body, "S3UrlPrefix", settings, export=True)
    definition: dict[str, Any] = {"S3UrlPrefix": url, "RoleArn": _role(body, url)}
    segment_id = _string(body, "SegmentId")
    if segment_id is not None:
        definition["SegmentId"] = segment_id
    version = body.get("SegmentVersion")
    if version is not None:
        if type(version) is not int or version < 1:
            raise BadRequest("SegmentVersion must be a whole number, at least 1")
        if segment_id is None:
            raise BadRequest("SegmentVersion needs SegmentId: the segment it is a version of")
        definition["SegmentVersion"] = version
    return definition


def job_response(job: Job) -> dict[str, Any]:
    """ImportJobResponse / ExportJobResponse. A failed job's reason is the
    last of its Failures (the model has no member of its own for it)."""
    failures = list(job.failures)
    if job.failure_reason is not None:
        # Still at most MAX_JOB_FAILURES: the reason in place of the last row's.
        failures = [*failures[: MAX_JOB_FAILURES - 1], job.failure_reason]
    response: dict[str, Any] = {
        "ApplicationId": job.app_id,
        "Id": job.id,
        "Type": job.job_type,
        "JobStatus": job.status,
        "CreationDate": job.creation_date,
        "Definition": job.definition,
        "TotalPieces": job.total_pieces,
        "CompletedPieces": job.completed_pieces,
        "FailedPieces": job.failed_pieces,
        "TotalProcessed": job.total_processed,
        "TotalFailures": job.total_failures,
        "Failures": failures,
    }
    if job.completion_date is not None:
        response["CompletionDate"] = job.completion_date
    return response
