"""What every store backend is: the :class:`Store` protocol, the app,
event stream, application settings and segment records, and the pure steps both
backends run around their SQL (choosing the events to mark, resolving users,
the KPI effects, the rows of each record). The SQL they share is in
:mod:`ingest.store.sql`.

It earns its size (over 500 lines): the protocol is the one place each
operation's contract (transactions, idempotency, what a failure means) is
written, for both backends to keep."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from ingest.errors import StoreError
from ingest.folds import kpis
from ingest.folds.endpoints import BatchOutcome, EndpointRecord, EndpointState, Key, Version
from ingest.folds.kpis import EventOutcome
from ingest.keys import AccessKey, IdentityPool
from ingest.records.values import Event

KpiData = list[tuple[int, str, int]]
"""Aggregate rows read for a KPI: (day, group or member, amount)."""
Mark = tuple[int, str, str, str]
"""An event's dedupe mark: (day, app ID, endpoint ID, event ID)."""
# Totals are 64-bit integers on every backend (PostgreSQL bigint).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Below every day a mark can have (days are 32-bit integers on every backend).
INT32_MIN = -(2**31)
_new = tuple.__new__


@dataclass(frozen=True, slots=True)
class App:
    """A Pinpoint application (project)."""

    id: str
    name: str
    arn: str
    tags: dict[str, str]
    creation_date: str


@dataclass(frozen=True, slots=True)
class EventStream:
    """An app's event stream (PutEventStream): where its events go. An app
    has at most one."""

    app_id: str
    destination_arn: str
    """A Kinesis stream, Firehose delivery stream or Kafka topic ARN
    (:mod:`ingest.streams.destinations`)."""
    role_arn: str
    external_id: str | None
    last_modified: str
    """ISO 8601, to the millisecond, in UTC (``…T10:00:00.000Z``)."""
    last_updated_by: str
    """The access key ID that put it ("anonymous" when auth is off)."""


@dataclass(frozen=True, slots=True)
class ApplicationSettings:
    """An app's settings (UpdateApplicationSettings), as last sent."""

    app_id: str
    document: dict[str, Any]
    """The WriteApplicationSettingsRequest, validated, null members left out."""
    last_modified: str
    """ISO 8601, to the millisecond, in UTC."""


JobType = Literal["IMPORT", "EXPORT"]
TERMINAL_STATUSES = ("COMPLETED", "FAILED")
"""JobStatus values a job never leaves (botocore's model names)."""


@dataclass(frozen=True, slots=True)
class Job:
    """An import or export job (:mod:`ingest.jobs`): its request, where it
    is, and who runs it. Counters and ``cursor`` move together, written by
    :meth:`Store.save_job` once the piece they count is done, so a resumed
    job counts each row once."""

    app_id: str
    id: str
    """32 hex digits, leading with the creation time: newest last in ID order."""
    job_type: JobType
    segment_id: str | None
    """The segment an export reads or an import adds to (GetSegment*Jobs)."""
    definition: dict[str, Any]
    """The ImportJobResource / ExportJobResource as the API shows it."""
    status: str
    """botocore's JobStatus: CREATED → INITIALIZING → PROCESSING → COMPLETING
    → COMPLETED, or FAILING → FAILED."""
    creation_date: str
    created_ms: int
    completion_date: str | None = None
    total_pieces: int = 0
    completed_pieces: int = 0
    failed_pieces: int = 0
    total_processed: int = 0
    total_failures: int = 0
    failures: tuple[str, ...] = ()
    """The first :data:`MAX_JOB_FAILURES` failure messages."""
    pieces: tuple[tuple[str, int], ...] = ()
    """An import's objects (URL, size in bytes) as listed once, in order."""
    cursor: dict[str, Any] = field(default_factory=dict)
    """The last finished piece: an import's ``object`` index and ``row``
    offset in it; an export's ``piece`` number and ``after`` endpoint ID."""
    failure_reason: str | None = None
    owner: str | None = None
    lease_expires_ms: int = 0
    """Until when ``owner`` holds the job; 0: nobody does."""


# Failures a job keeps the messages of (Pinpoint: "the first 100").
MAX_JOB_FAILURES = 100


@dataclass(frozen=True, slots=True)
class Segment:
    """One version of a segment (:mod:`ingest.segments`)."""

    app_id: str
    id: str
    version: int
    """1 on create; each UpdateSegment, or import into it, adds 1."""
    name: str
    segment_type: str
    """"DIMENSIONAL" | "IMPORT"."""
    document: dict[str, Any]
    """This version's definition members as the API shows them: Dimensions
    or SegmentGroups, ImportDefinition, tags."""
    creation_date: str
    """ISO 8601 ms UTC, of version 1."""
    last_modified_date: str
    """ISO 8601 ms UTC, of this version."""


class Store(Protocol):
    """What the edge and the workers need from the store. Every method raises
    StoreError (``retriable`` when the store is unavailable) and nothing else."""

    async def create_app(self, app: App, *, max_apps: int | None = None) -> bool:
        """Store a new app, unless ``max_apps`` apps exist already (then
        nothing is written: → False). The count and the insert are one
        serialised step, so concurrent creates never pass the quota."""
        ...

    async def get_app(self, app_id: str) -> App | None: ...
    async def list_apps(self, *, after: str | None, limit: int) -> Sequence[App]: ...
    async def delete_app(self, app_id: str) -> App | None:
        """In one transaction: delete the app row, leave its tombstone in
        ``deleted_apps`` (to purge; the workers drop its records from then
        on), delete its identity pools, event stream, settings and segments
        (their versions and members go with the purge), and take
        it out of the keys bound to
        it: a key bound to it alone is revoked (a bound key is never widened
        to every app). → the app, or None if there is none."""
        ...

    async def set_app_tags(
        self, app_id: str, tags: dict[str, str], *, expected: dict[str, str] | None = None
    ) -> App | None:
        """Replace the app's tags with ``tags``; → the app as stored after,
        or None if there is none. With ``expected``, only if the app's tags
        are those now: otherwise nothing is written and the app is returned
        as it is, so a read-merge-write (TagResource) never loses a
        concurrent one's tags. The check and the write are one transaction."""
        ...

    # Event streams and application settings: a row an app at most, deleted
    # with the app (in delete_app's transaction).
    async def put_event_stream(self, stream: EventStream) -> bool:
        """Store the app's stream, replacing the one it had; → False (nothing
        written) when the app does not exist. The check and the write are
        one transaction: a concurrent DeleteApp either sees the stream (and
        deletes it) or comes first (and this writes nothing)."""
        ...

    async def get_event_stream(self, app_id: str) -> EventStream | None: ...
    async def delete_event_stream(self, app_id: str) -> EventStream | None:
        """Delete the app's stream; → what it was, or None if it had none."""
        ...

    async def list_event_streams(self) -> Sequence[EventStream]:
        """Every app's stream, by app ID: one query, polled by the streams worker."""
        ...

    async def put_application_settings(self, settings: ApplicationSettings) -> bool:
        """Store the app's settings, replacing what it had; → False (nothing
        written) when the app does not exist, checked as put_event_stream does."""
        ...

    async def get_application_settings(self, app_id: str) -> ApplicationSettings | None:
        """The app's settings, or None if they were never updated (or there is no app)."""
        ...

    async def purge_deleted_apps(self, *, max_rows: int) -> int:
        """One bounded step of purging the deleted apps' data, one
        transaction: up to ``max_rows`` rows of each table (endpoints, KPI
        aggregates, last activity, segment versions and members, and the
        dedupe marks of each day) of the first deleted
        app not yet purged; an app with nothing left is marked purged. → the
        rows deleted plus the apps marked purged: 0 when nothing is left.
        Interrupted anywhere, the next call goes on where it stopped."""
        ...

    # Segments (ingest.segments): a head row a segment (its latest version),
    # a row a version, and the static members of IMPORT segments.
    async def create_segment(self, segment: Segment, *, max_segments: int | None = None) -> bool:
        """Store a new segment at ``segment.version`` (1). → False, nothing
        written, when the app does not exist or already has ``max_segments``
        segments; the check and the write are one serialised step."""
        ...

    async def put_segment_version(self, segment: Segment) -> Segment | None:
        """Store ``segment`` as the new latest version, only if the latest
        stored is ``segment.version - 1`` (a compare-and-set): → the segment
        with the stored creation date, or None (the caller re-reads and retries,
        or the segment is gone)."""
        ...

    async def get_segment(self, app_id: str, segment_id: str, version: int | None = None) -> Segment | None:
        """That version (the latest when None), or None."""
        ...

    async def list_segments(self, app_id: str, *, after: str | None, limit: int) -> Sequence[Segment]:
        """The app's segments at their latest version, by ID, after ``after``."""
        ...

    async def list_segment_versions(
        self, app_id: str, segment_id: str, *, after: int, limit: int
    ) -> Sequence[Segment]:
        """The segment's versions above ``after``, oldest first."""
        ...

    async def delete_segment(self, app_id: str, segment_id: str) -> Segment | None:
        """Delete the segment, its versions and its members in one
        transaction; → its latest version, or None if there is none."""
        ...

    async def add_segment_members(
        self, app_id: str, segment_id: str, version: int, endpoint_ids: Sequence[str]
    ) -> None:
        """Make ``endpoint_ids`` static members of the segment from
        ``version`` on (a member added at version v is one of every version
        ≥ v; adding it again keeps the lowest). Idempotent; nothing is
        written if the segment does not exist."""
        ...

    async def segment_endpoints(
        self,
        app_id: str,
        segment_id: str | None,
        version: int | None,
        *,
        after: str | None,
        limit: int,
        now_ms: int,
    ) -> Sequence[EndpointState]:
        """Live endpoints by endpoint ID, above ``after``, at most ``limit``:
        all the app's when ``segment_id`` is None, else the members of that
        segment version (the latest when None; none for no such segment),
        evaluated in the database at ``now_ms`` (for Recency). A page is one
        range walk of a primary key from ``after``: an export of 1M
        endpoints is a sequence of these pages, none sorting the app."""
        ...

    async def get_endpoint(self, app_id: str, endpoint_id: str) -> EndpointState | None: ...
    async def get_endpoints(self, keys: Sequence[Key]) -> dict[Key, EndpointState]:
        """The live endpoints among ``keys`` ((app ID, endpoint ID) pairs,
        repeats allowed), by key; a deleted or unknown one is left out.

        Meant for a batch's endpoints (the streams worker's: a few thousand
        keys at most). A read: no lock is taken, and each backend looks keys
        up a bounded chunk a query (1000 of them), so one call's endpoints
        may come from writes a moment apart, never from half a write."""
        ...

    async def user_endpoints(self, app_id: str, user_id: str) -> Sequence[EndpointState]: ...
    async def apply_endpoint_batch(self, records: Sequence[tuple[EndpointRecord, int]]) -> BatchOutcome: ...

    # KPIs (see ingest.folds.kpis for the aggregates).
    async def apply_event_batch(
        self, events: Sequence[Event], *, oldest_day: int, newest_day: int
    ) -> EventOutcome:
        """In one transaction: leave out events whose day (UTC, of their own
        Timestamp) is before ``oldest_day`` (too old to deduplicate) or after
        ``newest_day`` (a device clock far ahead), and
        events whose (app, endpoint, event ID) is marked already or repeats
        in the batch; mark the rest, resolve the UserId each counts for (its
        endpoint context's, else its endpoint's in the store, if live) and
        write ``kpis.effects`` of them: members inserted if absent, sums
        added, first days kept at the minimum. And keep each endpoint's last
        activity (``activity.last_events`` of every event of a live app,
        the too old and the repeated included) at the maximum."""
        ...

    async def expire_event_marks(self, *, before_day: int) -> int:
        """Drop the dedupe marks of days before ``before_day``; → how many."""
        ...

    async def kpi_member_counts(self, app_id: str, kind: str, first_day: int, last_day: int) -> KpiData:
        """(day, "", distinct members of ``kind`` that day) for days with any."""
        ...

    async def kpi_members(self, app_id: str, kind: str, first_day: int, last_day: int) -> KpiData:
        """(day, member, 1) for every member of ``kind`` on those days."""
        ...

    async def kpi_monthly_counts(self, app_id: str, kind: str, first_day: int, last_day: int) -> KpiData:
        """(day, "", distinct members of ``kind`` over the ``kpis.MONTH_DAYS``
        days ending that day) for the days of ``first_day``..``last_day``
        with any; counted by the database (``kpis.rolling_counts``)."""
        ...

    async def kpi_sums(self, app_id: str, kind: str, first_day: int, last_day: int) -> KpiData:
        """(day, group, total) of ``kind`` on those days."""
        ...

    async def kpi_new_endpoints(self, app_id: str, first_day: int, last_day: int) -> KpiData:
        """(day, "", endpoints whose first event fell on that day)."""
        ...

    # Access keys and identity pools (ingest.keys).
    async def create_key(self, key: AccessKey) -> None:
        """Store a new key; its ID is new (a clash is a StoreError)."""
        ...

    async def list_keys(self) -> Sequence[AccessKey]:
        """Every key, revoked ones included, by ID."""
        ...

    async def revoke_key(self, access_key_id: str, at_ms: int) -> bool:
        """Mark the key revoked at ``at_ms`` (a revoked key keeps its first
        time); → whether the key exists."""
        ...

    async def create_identity_pool(self, pool: IdentityPool) -> None: ...
    async def list_identity_pools(self) -> Sequence[IdentityPool]: ...

    # Import and export jobs (ingest.jobs), deleted with their app.
    async def create_job(self, job: Job) -> bool:
        """Store a new job; → False (nothing written) when the app does not
        exist, checked as put_event_stream does."""
        ...

    async def get_job(self, app_id: str, job_id: str) -> Job | None: ...
    async def list_jobs(
        self, app_id: str, job_type: JobType, *, segment_id: str | None, before: str | None, limit: int
    ) -> Sequence[Job]:
        """The app's jobs of ``job_type`` (of ``segment_id`` only, unless
        None), newest first: IDs below ``before`` (None: from the newest), at
        most ``limit``."""
        ...

    async def claim_job(
        self, owner: str, *, now_ms: int, lease_ms: int, max_running: int, max_per_app: int
    ) -> Job | None:
        """Lease the oldest job that is not finished and that nobody holds
        (no lease, or one expired before ``now_ms``) to ``owner`` until
        ``now_ms + lease_ms``, unless ``max_running`` jobs are held already
        (by any owner) or ``max_per_app`` of its app's: → the job as leased,
        or None. One compare-and-set: two replicas never hold one job, and
        the bounds hold across replicas."""
        ...

    async def save_job(self, job: Job, *, now_ms: int, lease_ms: int) -> bool:
        """Write the job's progress (status, counters, failures, pieces,
        cursor, reason, completion date) and renew its lease to ``now_ms +
        lease_ms`` (0: release it), only while ``job.owner`` holds it; →
        False (nothing written) when another owner took it over."""
        ...

    async def renew_job(self, app_id: str, job_id: str, owner: str, *, until_ms: int) -> bool:
        """Extend ``owner``'s lease to ``until_ms``; → False when it lost the job."""
        ...

    async def close(self) -> None: ...


# Rows of each table one purge step deletes: a transaction of a few ms on
# either backend, so the writers waiting on it are barely held up.
PURGE_CHUNK_ROWS = 1000


def keys_without(keys: Iterable[AccessKey], app_id: str) -> list[tuple[str, tuple[str, ...]]]:
    """The live keys bound to ``app_id`` and what each keeps: (key ID, its
    other apps); an empty tuple means the key is revoked. Keys of every app
    (empty ``apps``) are left alone."""
    return [
        (key.access_key_id, tuple(a for a in key.apps if a != app_id))
        for key in keys
        if key.revoked_ms is None and app_id in key.apps
    ]


def fresh_events(
    events: Iterable[Event], oldest_day: int, newest_day: int, outcome: EventOutcome
) -> dict[Mark, Event]:
    """The events to mark: those dated ``oldest_day`` to ``newest_day``, the
    first of each mark, in batch order. Counts the others into ``outcome``
    (too old, too new, duplicates).

    The mark holds the day, as the marks table does: an event ID sent again
    with a timestamp on another day is another mark in this batch as in a
    later one, so the result does not depend on where batches are cut. (SDKs
    resend an event unchanged.)"""
    fresh: dict[Mark, Event] = {}
    day_ms = kpis.DAY_MS  # day_of(), inline: once per event of every batch
    for event in events:
        day = event.timestamp_ms // day_ms
        if day < oldest_day:
            outcome.too_old += 1
            continue
        if day > newest_day:
            outcome.too_new += 1
            continue
        mark = (day, event.app_id, event.endpoint_id, event.event_id)
        if mark in fresh:
            outcome.duplicates += 1
        else:
            fresh[mark] = event
    return fresh


def context_user(event: Event) -> str | None:
    """The UserId the event's endpoint context names; an empty one names none."""
    context = event.endpoint
    return context.user_id if context is not None and context.user_id else None


def unresolved(events: Iterable[Event]) -> list[Key]:
    """The endpoints whose stored UserId some of ``events`` count for, sorted."""
    return sorted({(e.app_id, e.endpoint_id) for e in events if context_user(e) is None})


def event_effects(events: Iterable[Event], stored_users: Mapping[Key, str | None]) -> kpis.Effects:
    """``kpis.effects`` of new events, each counting for its context's UserId,
    else its endpoint's stored one. An amount no 64-bit total can hold (a
    price of 1e300, say) is a non-retriable StoreError on every backend, as
    PostgreSQL's bigint would make it."""
    try:
        out = kpis.effects(
            (event, context_user(event) or stored_users.get((event.app_id, event.endpoint_id)))
            for event in events
        )
    except (OverflowError, ValueError) as exc:  # round() of an infinite product
        raise StoreError(f"apply event batch: an amount is not a number: {exc}", retriable=False) from exc
    for key, total in out.sums.items():
        if not INT64_MIN <= total <= INT64_MAX:
            raise StoreError(f"apply event batch: {key[1]} total {total} is out of range", retriable=False)
    return out


def app_row(app: App) -> tuple[str, ...]:
    """An app as the column values every backend stores, in table order."""
    return (app.id, app.name, app.arn, orjson.dumps(app.tags).decode(), app.creation_date)


def app_of(row: Sequence[Any]) -> App:
    """The inverse of :func:`app_row` (any backend's row, in table order)."""
    app_id, name, arn, tags, created = row
    return App(id=app_id, name=name, arn=arn, tags=orjson.loads(tags), creation_date=created)


def stream_row(stream: EventStream) -> tuple[str | None, ...]:
    """An event stream as the column values every backend stores, in table order."""
    return (
        stream.app_id,
        stream.destination_arn,
        stream.role_arn,
        stream.external_id,
        stream.last_modified,
        stream.last_updated_by,
    )


def stream_of(row: Sequence[Any]) -> EventStream:
    """The inverse of :func:`stream_row` (any backend's row, in table order)."""
    app_id, destination_arn, role_arn, external_id, last_modified, last_updated_by = row
    return EventStream(
        app_id=app_id,
        destination_arn=destination_arn,
        role_arn=role_arn,
        external_id=external_id,
        last_modified=last_modified,
        last_updated_by=last_updated_by,
    )


def settings_row(settings: ApplicationSettings) -> tuple[str, ...]:
    """Application settings as the column values every backend stores, in table order."""
    return (settings.app_id, orjson.dumps(settings.document).decode(), settings.last_modified)


def settings_of(row: Sequence[Any]) -> ApplicationSettings:
    """The inverse of :func:`settings_row` (any backend's row, in table order)."""
    app_id, document, last_modified = row
    return ApplicationSettings(app_id=app_id, document=orjson.loads(document), last_modified=last_modified)


def segment_of(row: Sequence[Any]) -> Segment:
    """A segment from the columns every backend reads, in the order of
    ``sql.SEGMENT_COLUMNS``."""
    app_id, segment_id, version, name, segment_type, document, created, modified = row
    return Segment(
        app_id=app_id,
        id=segment_id,
        version=version,
        name=name,
        segment_type=segment_type,
        document=orjson.loads(document),
        creation_date=created,
        last_modified_date=modified,
    )


def segment_version_row(segment: Segment) -> tuple[Any, ...]:
    """A segment version as ``segment_versions`` stores it, in table order."""
    return (
        segment.app_id,
        segment.id,
        segment.version,
        segment.name,
        segment.segment_type,
        orjson.dumps(segment.document).decode(),
        segment.last_modified_date,
    )


def endpoint_row(state: EndpointState) -> tuple[Any, ...]:
    """An endpoint as the column values every backend stores, in table order."""
    return (
        state.app_id,
        state.endpoint_id,
        None if state.deleted else state.user_id,
        state.deleted,
        state.version.effective_ms,
        state.version.offset,
        state.creation_date,
        state.effective_date,
        state.request_id,
        orjson.dumps(state.document).decode(),
    )


def endpoint_state(row: Sequence[Any]) -> EndpointState:
    """The inverse of :func:`endpoint_row` (any backend's row, in table order)."""
    app_id, endpoint_id, _user, deleted, effective_ms, offset, created, effective, request_id, document = row
    # Built as tuples: this runs for every row a batch loads.
    state: EndpointState = _new(
        EndpointState,
        (
            app_id,
            endpoint_id,
            _new(Version, (effective_ms, offset)),
            bool(deleted),
            created,
            effective,
            request_id,
            orjson.loads(document),
        ),
    )
    return state


def key_row(key: AccessKey) -> tuple[Any, ...]:
    """A key as the column values every backend stores, in table order."""
    return (
        key.access_key_id,
        key.name,
        key.scope,
        orjson.dumps(key.apps).decode(),
        base64.b64encode(key.secret_ciphertext).decode(),
        key.created_ms,
        key.revoked_ms,
    )


def key_of(row: Sequence[Any]) -> AccessKey:
    """The inverse of :func:`key_row` (any backend's row, in table order)."""
    access_key_id, name, scope, apps, ciphertext, created_ms, revoked_ms = row
    return AccessKey(
        access_key_id=access_key_id,
        name=name,
        scope=scope,
        apps=tuple(orjson.loads(apps)),
        secret_ciphertext=base64.b64decode(ciphertext),
        created_ms=created_ms,
        revoked_ms=revoked_ms,
    )


def pool_row(pool: IdentityPool) -> tuple[Any, ...]:
    return (pool.id, pool.app_id, pool.created_ms)


def pool_of(row: Sequence[Any]) -> IdentityPool:
    pool_id, app_id, created_ms = row
    return IdentityPool(id=pool_id, app_id=app_id, created_ms=created_ms)


def job_row(job: Job) -> tuple[Any, ...]:
    """A job as the column values every backend stores, in table order."""
    return (
        job.app_id,
        job.id,
        job.job_type,
        job.segment_id,
        orjson.dumps(job.definition).decode(),
        job.status,
        job.creation_date,
        job.created_ms,
        job.completion_date,
        job.total_pieces,
        job.completed_pieces,
        job.failed_pieces,
        job.total_processed,
        job.total_failures,
        orjson.dumps(job.failures).decode(),
        orjson.dumps(job.pieces).decode(),
        orjson.dumps(job.cursor).decode(),
        job.failure_reason,
        job.owner,
        job.lease_expires_ms,
    )


def job_of(row: Sequence[Any]) -> Job:
    """The inverse of :func:`job_row` (any backend's row, in table order)."""
    (app_id, job_id, job_type, segment_id, definition, status, creation_date, created_ms) = row[:8]
    (completion_date, total, completed, failed, processed, failures_n, failures) = row[8:15]
    pieces, cursor, reason, owner, lease = row[15:]
    return Job(
        app_id=app_id,
        id=job_id,
        job_type=job_type,
        segment_id=segment_id,
        definition=orjson.loads(definition),
        status=status,
        creation_date=creation_date,
        created_ms=created_ms,
        completion_date=completion_date,
        total_pieces=total,
        completed_pieces=completed,
        failed_pieces=failed,
        total_processed=processed,
        total_failures=failures_n,
        failures=tuple(orjson.loads(failures)),
        pieces=tuple((url, size) for url, size in orjson.loads(pieces)),
        cursor=orjson.loads(cursor),
        failure_reason=reason,
        owner=owner,
        lease_expires_ms=lease,
    )
