"""The SQL of segments both store backends run (beside :mod:`ingest.store.sql`,
whose conventions it keeps: ``?`` placeholders, ``{lock}`` and ``{rows}``
for each backend to fill in). The tables are among sql's migrations."""

from __future__ import annotations

from ingest.store import sql

# Segments, read in the order of base.segment_of: the head joined to one
# version (the latest when the bound version is NULL).
SEGMENT_COLUMNS = (
    "s.app_id, s.segment_id, v.version, v.name, v.segment_type, v.document, "
    "s.creation_date, v.last_modified_date"
)
_SEGMENT_VERSIONS = (
    "SELECT " + SEGMENT_COLUMNS + " FROM segments AS s JOIN segment_versions AS v "  # noqa: S608
    "ON v.app_id = s.app_id AND v.segment_id = s.segment_id"
)
GET_SEGMENT = (
    _SEGMENT_VERSIONS + " AND v.version = COALESCE(?, s.latest) WHERE s.app_id = ? AND s.segment_id = ?"
)
LIST_SEGMENTS = (
    _SEGMENT_VERSIONS + " AND v.version = s.latest WHERE s.app_id = ? AND s.segment_id > ? "
    "ORDER BY s.segment_id LIMIT ?"
)
LIST_SEGMENT_VERSIONS = (
    _SEGMENT_VERSIONS + " WHERE s.app_id = ? AND s.segment_id = ? AND v.version > ? "
    "ORDER BY v.version LIMIT ?"
)
# Creating one: the app row ("{lock}": PostgreSQL's FOR UPDATE, so creates
# in one app take turns and the count holds), the count, the head, version 1.
APP_OF_SEGMENT = "SELECT id FROM apps WHERE id = ?{lock}"
COUNT_SEGMENTS = "SELECT count(*) FROM segments WHERE app_id = ?"
INSERT_SEGMENT = "INSERT INTO segments (app_id, segment_id, latest, creation_date) VALUES (?, ?, ?, ?)"
INSERT_SEGMENT_VERSION = (
    "INSERT INTO segment_versions "
    "(app_id, segment_id, version, name, segment_type, document, last_modified_date) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# A new version: the head moves only from the version before (compare-and-set).
ADVANCE_SEGMENT = (
    "UPDATE segments SET latest = ? WHERE app_id = ? AND segment_id = ? AND latest = ? "
    "RETURNING creation_date"
)
DELETE_SEGMENT_ROWS = (
    "DELETE FROM segment_versions WHERE app_id = ? AND segment_id = ?",
    "DELETE FROM segment_members WHERE app_id = ? AND segment_id = ?",
    "DELETE FROM segments WHERE app_id = ? AND segment_id = ?",
)
SEGMENT_EXISTS = "SELECT latest FROM segments WHERE app_id = ? AND segment_id = ?{lock}"
# Static members: a member added again keeps its earliest version.
ADD_SEGMENT_MEMBERS = (
    "INSERT INTO segment_members AS m (app_id, segment_id, endpoint_id, since_version) {rows} "
    "ON CONFLICT (app_id, segment_id, endpoint_id) DO UPDATE SET since_version = excluded.since_version "
    "WHERE excluded.since_version < m.since_version"
)

# Pages of segment_endpoints: each one range walk of a primary key from the
# last endpoint ID of the page before, never a sort ("{where}": the compiled
# definition, ingest.store.segment_query, " AND …" or empty; "{join}" what it
# joins to each endpoint, or empty).
APP_ENDPOINTS_PAGE = (
    sql.SELECT_ENDPOINTS + " AS e{join} "
    "WHERE e.app_id = ? AND e.endpoint_id > ? AND NOT e.deleted{where} ORDER BY e.endpoint_id LIMIT ?"
)
MEMBER_ENDPOINTS_PAGE = (
    "SELECT e.app_id, e.endpoint_id, e.user_id, e.deleted, e.effective_ms, e.kafka_offset, "
    "e.creation_date, e.effective_date, e.request_id, e.document "
    "FROM segment_members AS m JOIN endpoints AS e ON e.app_id = m.app_id AND e.endpoint_id = m.endpoint_id "
    "WHERE m.app_id = ? AND m.segment_id = ? AND m.endpoint_id > ? AND m.since_version <= ? "
    "AND NOT e.deleted ORDER BY m.endpoint_id LIMIT ?"
)
