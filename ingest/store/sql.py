"""The SQL both store backends run, written once. It earns its size (about
550 lines) as every table's migrations and statements in one place, so the
two backends cannot drift apart.

Statements use ``?`` placeholders, SQLite's style, and SQLite runs them as they
stand; PostgreSQL runs :func:`numbered` of them (``$1, $2, …``). Batch writes
leave their rows as ``{rows}``: SQLite fills in ``VALUES (?, …)`` rows,
PostgreSQL one ``unnest`` of an array a column. What only one backend runs
(SQLite's ``INDEXED BY`` hints and chunked ``IN`` lists, PostgreSQL's
``unnest`` lookups, ``FOR UPDATE``, advisory locks and partitions, and each
one's monthly KPI read) stays in that backend's module.

The migrations are written once too, with the words where the backends'
schemas differ (types, collation, table options) left for each to fill in
(:class:`Types`). A migration, once released, never changes: a store records
how many it has applied, and runs only those after.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass
from functools import cache


@cache
def numbered(statement: str) -> str:
    """``statement`` with its ``?`` placeholders numbered ``$1, $2, …`` in
    order, as PostgreSQL takes them. (No statement here has a ``?`` in a
    literal or a name.)"""
    count = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(count)}", statement)


@dataclass(frozen=True, slots=True)
class Types:
    """What a backend's migrations say where the backends differ."""

    key: str
    """Text that is compared or sorted (IDs, kinds, members)."""
    text: str
    """Text that is only stored."""
    boolean: str
    int32: str
    int64: str
    total_check: str
    """After ``total … NOT NULL``: what else keeps a KPI total exact."""
    keyed: str
    """After a table stored in primary-key order (every one but ``apps``)."""
    marks: str
    """After ``event_marks``."""


_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE apps (
        id {key} PRIMARY KEY,
        name {text} NOT NULL,
        arn {text} NOT NULL,
        tags {text} NOT NULL,
        creation_date {text} NOT NULL
    )
    """,
    """
    CREATE TABLE endpoints (
        app_id {key} NOT NULL,
        endpoint_id {key} NOT NULL,
        user_id {key},
        deleted {boolean} NOT NULL,
        effective_ms {int64} NOT NULL,
        kafka_offset {int64} NOT NULL,
        creation_date {text} NOT NULL,
        effective_date {text} NOT NULL,
        request_id {text} NOT NULL,
        document {text} NOT NULL,
        PRIMARY KEY (app_id, endpoint_id)
    ){keyed}
    """,
    "CREATE INDEX endpoints_by_user ON endpoints (app_id, user_id) WHERE user_id IS NOT NULL",
    # KPIs (ingest.folds.kpis). The dedupe marks lead with the day: expiring
    # the days before the window is one range delete at the front of the table.
    """
    CREATE TABLE event_marks (
        day {int32} NOT NULL,
        app_id {key} NOT NULL,
        endpoint_id {key} NOT NULL,
        event_id {key} NOT NULL,
        PRIMARY KEY (day, app_id, endpoint_id, event_id)
    ){marks}
    """,
    """
    CREATE TABLE kpi_members (
        app_id {key} NOT NULL,
        kind {key} NOT NULL,
        day {int32} NOT NULL,
        member {key} NOT NULL,
        PRIMARY KEY (app_id, kind, day, member)
    ){keyed}
    """,
    """
    CREATE TABLE kpi_sums (
        app_id {key} NOT NULL,
        kind {key} NOT NULL,
        day {int32} NOT NULL,
        grp {key} NOT NULL,
        total {int64} NOT NULL{total_check},
        PRIMARY KEY (app_id, kind, day, grp)
    ){keyed}
    """,
    """
    CREATE TABLE kpi_first_days (
        app_id {key} NOT NULL,
        endpoint_id {key} NOT NULL,
        day {int32} NOT NULL,
        PRIMARY KEY (app_id, endpoint_id)
    ){keyed}
    """,
    "CREATE INDEX kpi_first_days_by_day ON kpi_first_days (app_id, day)",
    # Access keys we issue (ingest.keys): apps a JSON array (empty: every
    # app), the secret AES-GCM ciphertext in base64, never the secret itself.
    """
    CREATE TABLE access_keys (
        access_key_id {key} PRIMARY KEY,
        name {text} NOT NULL,
        scope {key} NOT NULL,
        apps {text} NOT NULL,
        secret_ciphertext {text} NOT NULL,
        created_ms {int64} NOT NULL,
        revoked_ms {int64}
    ){keyed}
    """,
    """
    CREATE TABLE identity_pools (
        id {key} PRIMARY KEY,
        app_id {key} NOT NULL,
        created_ms {int64} NOT NULL
    ){keyed}
    """,
    # Deleted apps, kept for good: the workers drop records of these (still
    # in Kafka, or replayed) so they never bring an app's data back, and
    # ``purged`` false is a purge still to finish (after a restart too). App
    # IDs are random and never reused, so a row an app deleted is all it costs.
    """
    CREATE TABLE deleted_apps (
        app_id {key} PRIMARY KEY,
        deleted_ms {int64} NOT NULL,
        purged {boolean} NOT NULL
    ){keyed}
    """,
    # An app's event stream (PutEventStream) and settings
    # (UpdateApplicationSettings): a row each at most, deleted with the app.
    """
    CREATE TABLE event_streams (
        app_id {key} PRIMARY KEY,
        destination_arn {text} NOT NULL,
        role_arn {text} NOT NULL,
        external_id {text},
        last_modified {text} NOT NULL,
        last_updated_by {text} NOT NULL
    ){keyed}
    """,
    """
    CREATE TABLE application_settings (
        app_id {key} PRIMARY KEY,
        document {text} NOT NULL,
        last_modified {text} NOT NULL
    ){keyed}
    """,
    # Segments (ingest.segments): a head a segment (its latest version and
    # creation date; deleted with the app, in DeleteApp's transaction), its
    # versions, and an IMPORT segment's static members, each a member from
    # ``since_version`` on (versions and members purged with the app).
    """
    CREATE TABLE segments (
        app_id {key} NOT NULL,
        segment_id {key} NOT NULL,
        latest {int32} NOT NULL,
        creation_date {text} NOT NULL,
        PRIMARY KEY (app_id, segment_id)
    ){keyed}
    """,
    """
    CREATE TABLE segment_versions (
        app_id {key} NOT NULL,
        segment_id {key} NOT NULL,
        version {int32} NOT NULL,
        name {text} NOT NULL,
        segment_type {key} NOT NULL,
        document {text} NOT NULL,
        last_modified_date {text} NOT NULL,
        PRIMARY KEY (app_id, segment_id, version)
    ){keyed}
    """,
    """
    CREATE TABLE segment_members (
        app_id {key} NOT NULL,
        segment_id {key} NOT NULL,
        endpoint_id {key} NOT NULL,
        since_version {int32} NOT NULL,
        PRIMARY KEY (app_id, segment_id, endpoint_id)
    ){keyed}
    """,
    # The time of each endpoint's last event (Behavior.Recency), written by
    # the KPI worker with its batch's aggregates; purged with the app.
    """
    CREATE TABLE endpoint_activity (
        app_id {key} NOT NULL,
        endpoint_id {key} NOT NULL,
        last_event_ms {int64} NOT NULL,
        PRIMARY KEY (app_id, endpoint_id)
    ){keyed}
    """,
    # Import and export jobs (ingest.jobs), deleted with their app. JSON
    # columns: the request, the first failures, an import's object list and
    # the cursor. ``lease_expires_ms`` 0: nobody holds the job. The active
    # index is what a claim searches, and what the running bounds count.
    """
    CREATE TABLE jobs (
        app_id {key} NOT NULL,
        id {key} NOT NULL,
        job_type {key} NOT NULL,
        segment_id {key},
        definition {text} NOT NULL,
        status {key} NOT NULL,
        creation_date {text} NOT NULL,
        created_ms {int64} NOT NULL,
        completion_date {text},
        total_pieces {int64} NOT NULL,
        completed_pieces {int64} NOT NULL,
        failed_pieces {int64} NOT NULL,
        total_processed {int64} NOT NULL,
        total_failures {int64} NOT NULL,
        failures {text} NOT NULL,
        pieces {text} NOT NULL,
        job_cursor {text} NOT NULL,
        failure_reason {text},
        owner {key},
        lease_expires_ms {int64} NOT NULL,
        PRIMARY KEY (app_id, id)
    ){keyed}
    """,
    "CREATE INDEX jobs_active ON jobs (created_ms, app_id, id) WHERE status NOT IN ('COMPLETED', 'FAILED')",
)


def migrations(types: Types) -> tuple[str, ...]:
    """The numbered migrations (version ``i + 1`` at index ``i``) in a
    backend's words."""
    words = asdict(types)
    return tuple(migration.format(**words) for migration in _MIGRATIONS)


MIGRATIONS_TABLE = "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY)"
MIGRATED = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
RECORD_MIGRATION = "INSERT INTO schema_migrations (version) VALUES (?)"

_KEY_COLUMNS = "access_key_id, name, scope, apps, secret_ciphertext, created_ms, revoked_ms"

# Apps, in the column order of base.app_row.
CREATE_APP = "INSERT INTO apps (id, name, arn, tags, creation_date) VALUES (?, ?, ?, ?, ?)"
GET_APP = "SELECT id, name, arn, tags, creation_date FROM apps WHERE id = ?"
LIST_APPS = "SELECT id, name, arn, tags, creation_date FROM apps WHERE id > ? ORDER BY id LIMIT ?"
DELETE_APP = "DELETE FROM apps WHERE id = ? RETURNING id, name, arn, tags, creation_date"
COUNT_APPS = "SELECT count(*) FROM apps"
# DeleteApp: the tombstone, in the transaction that deletes the app row.
MARK_DELETED = "INSERT INTO deleted_apps (app_id, deleted_ms, purged) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
DELETE_POOLS_OF_APP = "DELETE FROM identity_pools WHERE app_id = ?"
# What else DeleteApp deletes in its transaction, each by app ID.
DELETE_WITH_APP = (
    DELETE_POOLS_OF_APP,
    "DELETE FROM event_streams WHERE app_id = ?",
    "DELETE FROM application_settings WHERE app_id = ?",
    # A few hundred rows at most (the segments-per-app bound): their versions
    # and members, unbounded, go with the purge.
    "DELETE FROM segments WHERE app_id = ?",
    "DELETE FROM jobs WHERE app_id = ?",
)
LIVE_KEYS = "SELECT " + _KEY_COLUMNS + " FROM access_keys WHERE revoked_ms IS NULL ORDER BY access_key_id"  # noqa: S608
SET_KEY_APPS = "UPDATE access_keys SET apps = ? WHERE access_key_id = ?"
# TagResource, UntagResource: the app read ("{lock}": PostgreSQL's FOR
# UPDATE, so the compare and the write are one step), then its tags written.
GET_APP_TO_TAG = GET_APP + "{lock}"
SET_APP_TAGS = "UPDATE apps SET tags = ? WHERE id = ?"

# Event streams and application settings, in the column order of
# base.stream_row and base.settings_row. A put writes only where the app
# exists, in the same statement; "{lock}" is PostgreSQL's FOR SHARE on the
# app row, so a concurrent DeleteApp waits for it, or it for the DeleteApp.
_STREAM_COLUMNS = "app_id, destination_arn, role_arn, external_id, last_modified, last_updated_by"
PUT_EVENT_STREAM = (
    "INSERT INTO event_streams (" + _STREAM_COLUMNS + ") "  # noqa: S608
    "SELECT ?, ?, ?, ?, ?, ? FROM apps WHERE id = ?{lock} "
    "ON CONFLICT (app_id) DO UPDATE SET destination_arn = excluded.destination_arn, "
    "role_arn = excluded.role_arn, external_id = excluded.external_id, "
    "last_modified = excluded.last_modified, last_updated_by = excluded.last_updated_by"
)
GET_EVENT_STREAM = "SELECT " + _STREAM_COLUMNS + " FROM event_streams WHERE app_id = ?"  # noqa: S608
DELETE_EVENT_STREAM = "DELETE FROM event_streams WHERE app_id = ? RETURNING " + _STREAM_COLUMNS  # noqa: S608
LIST_EVENT_STREAMS = "SELECT " + _STREAM_COLUMNS + " FROM event_streams ORDER BY app_id"  # noqa: S608
PUT_SETTINGS = (
    "INSERT INTO application_settings (app_id, document, last_modified) "
    "SELECT ?, ?, ? FROM apps WHERE id = ?{lock} "
    "ON CONFLICT (app_id) DO UPDATE SET document = excluded.document, last_modified = excluded.last_modified"
)
GET_SETTINGS = "SELECT app_id, document, last_modified FROM application_settings WHERE app_id = ?"

# The purge (Store.purge_deleted_apps): one app a transaction, at most a chunk
# of rows of each table, each chunk a primary-key range search; the marks,
# which lead with the day, a day at a time.
NEXT_PURGE = "SELECT app_id FROM deleted_apps WHERE NOT purged ORDER BY app_id LIMIT 1"
MARK_PURGED = "UPDATE deleted_apps SET purged = ? WHERE app_id = ?"
PURGE_ENDPOINTS = (
    "DELETE FROM endpoints WHERE (app_id, endpoint_id) IN "
    "(SELECT app_id, endpoint_id FROM endpoints WHERE app_id = ? LIMIT ?)"
)
PURGE_KPI_MEMBERS = (
    "DELETE FROM kpi_members WHERE (app_id, kind, day, member) IN "
    "(SELECT app_id, kind, day, member FROM kpi_members WHERE app_id = ? LIMIT ?)"
)
PURGE_KPI_SUMS = (
    "DELETE FROM kpi_sums WHERE (app_id, kind, day, grp) IN "
    "(SELECT app_id, kind, day, grp FROM kpi_sums WHERE app_id = ? LIMIT ?)"
)
PURGE_KPI_FIRST_DAYS = (
    "DELETE FROM kpi_first_days WHERE (app_id, endpoint_id) IN "
    "(SELECT app_id, endpoint_id FROM kpi_first_days WHERE app_id = ? LIMIT ?)"
)
PURGE_SEGMENT_VERSIONS = (
    "DELETE FROM segment_versions WHERE (app_id, segment_id, version) IN "
    "(SELECT app_id, segment_id, version FROM segment_versions WHERE app_id = ? LIMIT ?)"
)
PURGE_SEGMENT_MEMBERS = (
    "DELETE FROM segment_members WHERE (app_id, segment_id, endpoint_id) IN "
    "(SELECT app_id, segment_id, endpoint_id FROM segment_members WHERE app_id = ? LIMIT ?)"
)
PURGE_ENDPOINT_ACTIVITY = (
    "DELETE FROM endpoint_activity WHERE (app_id, endpoint_id) IN "
    "(SELECT app_id, endpoint_id FROM endpoint_activity WHERE app_id = ? LIMIT ?)"
)
PURGE_TABLES = (
    PURGE_ENDPOINTS,
    PURGE_KPI_MEMBERS,
    PURGE_KPI_SUMS,
    PURGE_KPI_FIRST_DAYS,
    PURGE_SEGMENT_VERSIONS,
    PURGE_SEGMENT_MEMBERS,
    PURGE_ENDPOINT_ACTIVITY,
)
# The next day holding marks: an index search each, visiting only days that have some.
NEXT_MARK_DAY = "SELECT min(day) FROM event_marks WHERE day > ?"
PURGE_MARKS = (
    "DELETE FROM event_marks WHERE (day, app_id, endpoint_id, event_id) IN "
    "(SELECT day, app_id, endpoint_id, event_id FROM event_marks WHERE day = ? AND app_id = ? LIMIT ?)"
)

# Access keys and identity pools, in the column order of base.key_row and
# base.pool_row. Revoking a revoked key keeps its first revocation time.
CREATE_KEY = "INSERT INTO access_keys (" + _KEY_COLUMNS + ") VALUES (?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
LIST_KEYS = "SELECT " + _KEY_COLUMNS + " FROM access_keys ORDER BY access_key_id"  # noqa: S608
REVOKE_KEY = (
    "UPDATE access_keys SET revoked_ms = COALESCE(revoked_ms, ?) "
    "WHERE access_key_id = ? RETURNING access_key_id"
)
CREATE_POOL = "INSERT INTO identity_pools (id, app_id, created_ms) VALUES (?, ?, ?)"
LIST_POOLS = "SELECT id, app_id, created_ms FROM identity_pools ORDER BY id"

# Endpoints: every query lists the columns in the order of base.endpoint_row.
# (S608: the statements are built of constants only.)
_ENDPOINT_COLUMNS = (
    "app_id, endpoint_id, user_id, deleted, effective_ms, kafka_offset, "
    "creation_date, effective_date, request_id, document"
)
SELECT_ENDPOINTS = "SELECT " + _ENDPOINT_COLUMNS + " FROM endpoints"  # noqa: S608
GET_ENDPOINT = SELECT_ENDPOINTS + " WHERE app_id = ? AND endpoint_id = ? AND NOT deleted"
# "{index}": SQLite names the index it must search (see ingest.store.sqlite).
USER_ENDPOINTS = (
    SELECT_ENDPOINTS + "{index} WHERE app_id = ? AND user_id = ? AND NOT deleted ORDER BY endpoint_id"
)
PUT_ENDPOINTS = (
    "INSERT INTO endpoints (" + _ENDPOINT_COLUMNS + ") {rows} "
    "ON CONFLICT (app_id, endpoint_id) DO UPDATE SET user_id = excluded.user_id, "
    "deleted = excluded.deleted, effective_ms = excluded.effective_ms, "
    "kafka_offset = excluded.kafka_offset, creation_date = excluded.creation_date, "
    "effective_date = excluded.effective_date, request_id = excluded.request_id, "
    "document = excluded.document"
)

# KPI writes. A mark that is there already is not returned: its event is a
# duplicate. Sums add to the stored total; first days keep the earliest.
MARK_EVENTS = (
    "INSERT INTO event_marks (day, app_id, endpoint_id, event_id) {rows} "
    "ON CONFLICT DO NOTHING RETURNING day, app_id, endpoint_id, event_id"
)
ADD_MEMBERS = "INSERT INTO kpi_members (app_id, kind, day, member) {rows} ON CONFLICT DO NOTHING"
ADD_SUMS = (
    "INSERT INTO kpi_sums AS s (app_id, kind, day, grp, total) {rows} "
    "ON CONFLICT (app_id, kind, day, grp) DO UPDATE SET total = s.total + excluded.total"
)
KEEP_FIRST_DAYS = (
    "INSERT INTO kpi_first_days AS f (app_id, endpoint_id, day) {rows} "
    "ON CONFLICT (app_id, endpoint_id) DO UPDATE SET day = excluded.day WHERE excluded.day < f.day"
)
# The last event of each endpoint (ingest.folds.activity): the later time kept.
KEEP_LAST_EVENTS = (
    "INSERT INTO endpoint_activity AS a (app_id, endpoint_id, last_event_ms) {rows} "
    "ON CONFLICT (app_id, endpoint_id) DO UPDATE SET last_event_ms = excluded.last_event_ms "
    "WHERE excluded.last_event_ms > a.last_event_ms"
)

# KPI reads: each one search of a primary key or index range
# (``test_every_kpi_query_searches_an_index`` holds SQLite to it).
KPI_MEMBER_COUNTS = (
    "SELECT day, '', count(*) FROM kpi_members "
    "WHERE app_id = ? AND kind = ? AND day BETWEEN ? AND ? GROUP BY day ORDER BY day"
)
KPI_MEMBERS = (
    "SELECT day, member, 1 FROM kpi_members "
    "WHERE app_id = ? AND kind = ? AND day BETWEEN ? AND ? ORDER BY day, member"
)
KPI_SUMS = (
    "SELECT day, grp, total FROM kpi_sums "
    "WHERE app_id = ? AND kind = ? AND day BETWEEN ? AND ? ORDER BY day, grp"
)
KPI_NEW_ENDPOINTS = (
    "SELECT day, '', count(*) FROM kpi_first_days "
    "WHERE app_id = ? AND day BETWEEN ? AND ? GROUP BY day ORDER BY day"
)

# Jobs, in the column order of base.job_row. A create writes only where the
# app exists, as PUT_EVENT_STREAM does ("{lock}" likewise).
_JOB_COLUMNS = (
    "app_id, id, job_type, segment_id, definition, status, creation_date, created_ms, "
    "completion_date, total_pieces, completed_pieces, failed_pieces, total_processed, "
    "total_failures, failures, pieces, job_cursor, failure_reason, owner, lease_expires_ms"
)
CREATE_JOB = (
    "INSERT INTO jobs (" + _JOB_COLUMNS + ") "  # noqa: S608
    "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM apps WHERE id = ?{lock}"
)
GET_JOB = "SELECT " + _JOB_COLUMNS + " FROM jobs WHERE app_id = ? AND id = ?"  # noqa: S608
# Newest first, below a token (LAST_JOB_ID: from the newest); the segment's
# only when one is named ('' names none).
LIST_JOBS = (
    "SELECT " + _JOB_COLUMNS + " FROM jobs WHERE app_id = ? AND job_type = ? AND id < ? "  # noqa: S608
    "AND (? = '' OR segment_id = ?) ORDER BY id DESC LIMIT ?"
)
# The claim: one statement, the oldest unheld unfinished job, under the two
# bounds on held ones; its parameters are (owner, leased until, now, now,
# max running, now, max per app). (PostgreSQL runs it under an advisory
# lock, so two claims cannot both count the same held jobs.)
_ACTIVE = "status NOT IN ('COMPLETED', 'FAILED')"
CLAIM_JOB = (
    "UPDATE jobs SET owner = ?, lease_expires_ms = ? WHERE (app_id, id) IN ("  # noqa: S608
    f"SELECT j.app_id, j.id FROM jobs AS j WHERE j.{_ACTIVE} AND j.lease_expires_ms < ? "
    f"AND (SELECT count(*) FROM jobs AS h WHERE h.{_ACTIVE} AND h.lease_expires_ms >= ?) < ? "
    f"AND (SELECT count(*) FROM jobs AS h WHERE h.app_id = j.app_id AND h.{_ACTIVE} "
    "AND h.lease_expires_ms >= ?) < ? "
    "ORDER BY j.created_ms, j.app_id, j.id LIMIT 1) RETURNING " + _JOB_COLUMNS
)
SAVE_JOB = (
    "UPDATE jobs SET status = ?, completion_date = ?, total_pieces = ?, completed_pieces = ?, "
    "failed_pieces = ?, total_processed = ?, total_failures = ?, failures = ?, pieces = ?, "
    "job_cursor = ?, failure_reason = ?, lease_expires_ms = ? WHERE app_id = ? AND id = ? AND owner = ?"
)
RENEW_JOB = "UPDATE jobs SET lease_expires_ms = ? WHERE app_id = ? AND id = ? AND owner = ?"
# Above every job ID (32 hex digits), in byte order.
LAST_JOB_ID = "~"


def save_job_params(job_row: tuple[object, ...], lease_expires_ms: int) -> tuple[object, ...]:
    """SAVE_JOB's parameters from a job's row (base.job_row)."""
    (app_id, job_id, _t, _s, _d, status, _c, _m, completion, *counts) = job_row
    total, completed, failed, processed, failures_n, failures, pieces, cursor, reason, owner, _lease = counts
    return (
        status,
        completion,
        total,
        completed,
        failed,
        processed,
        failures_n,
        failures,
        pieces,
        cursor,
        reason,
        lease_expires_ms,
        app_id,
        job_id,
        owner,
    )
