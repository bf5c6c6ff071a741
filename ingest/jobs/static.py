"""The static (``IMPORT``) segment an import job fills: a new one
(``DefineSegment`` with ``SegmentName``) or a new version of an existing one
(``SegmentId``).

At INITIALIZING the segment is made ready and the version the import's
members belong to is fixed, in the job's cursor: a new segment is created at
version 1 (empty: what it was before the import) under the job's own ID, so
a job resumed after a crash finds the one it made; either way the members go
to the next version. At each checkpoint, before the checkpoint is saved,
the checkpoint's endpoint IDs are added to it (idempotent: a resumed job
adds some again) and the counts of its ``ImportDefinition`` (``Size``,
``ChannelCounts``) move on in the cursor with the rest. At COMPLETING that
version is stored (a compare-and-set on the version before it), with the
``ImportDefinition`` of the import: until then no reader sees its members.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ingest.errors import JobError
from ingest.jobs.progress import Run, iso_now
from ingest.records.values import EndpointUpsert
from ingest.store.base import Segment, Store

SEGMENT = "segment"
"""The cursor's entry for the segment: its ID, the version its members get,
and the counts so far."""


def import_definition(definition: dict[str, Any], size: int, channels: dict[str, int]) -> dict[str, Any]:
    """The segment's ImportDefinition (SegmentImportResource) of an import."""
    found: dict[str, Any] = {
        "Format": definition["Format"],
        "S3Url": definition["S3Url"],
        "RoleArn": definition["RoleArn"],
        "Size": size,
        "ChannelCounts": channels,
    }
    if "ExternalId" in definition:
        found["ExternalId"] = definition["ExternalId"]
    return found


async def prepare(run: Run, store: Store, *, max_segments: int | None) -> None:
    """The segment ready and its members' version in the cursor (once); a
    new one only while the app has fewer than ``max_segments``."""
    job = run.job
    definition = job.definition
    if SEGMENT in job.cursor or not (definition.get("DefineSegment") or definition.get("SegmentId")):
        return
    if definition.get("DefineSegment"):
        segment = await store.get_segment(job.app_id, job.id)
        if segment is None:
            now = iso_now()
            segment = Segment(
                app_id=job.app_id,
                id=job.id,
                version=1,
                name=str(definition.get("SegmentName", "")),
                segment_type="IMPORT",
                document={"ImportDefinition": import_definition(definition, 0, {})},
                creation_date=now,
                last_modified_date=now,
            )
            if not await store.create_segment(segment, max_segments=max_segments):
                raise JobError(
                    "the segment could not be created: the app is gone or has too many", retriable=False
                )
        target = 2
    else:
        segment = await store.get_segment(job.app_id, str(definition["SegmentId"]))
        if segment is None:
            raise JobError(f"segment {definition['SegmentId']} not found", retriable=False)
        if segment.segment_type != "IMPORT":
            raise JobError(
                f"segment {segment.id} is {segment.segment_type}: only IMPORT ones take imports",
                retriable=False,
            )
        target = segment.version + 1
    entry = {"id": segment.id, "version": target, "size": 0, "channels": {}}
    await run.save(cursor={**job.cursor, SEGMENT: entry})


async def add(run: Run, store: Store, upserts: Sequence[EndpointUpsert]) -> dict[str, Any]:
    """Add a checkpoint's endpoints; → the cursor entries to save with it."""
    entry = run.job.cursor.get(SEGMENT)
    if entry is None or not upserts:
        return {}
    await store.add_segment_members(
        run.job.app_id, entry["id"], entry["version"], [upsert.endpoint_id for upsert in upserts]
    )
    channels = dict(entry["channels"])
    for upsert in upserts:
        if upsert.channel_type is not None:
            channels[upsert.channel_type] = channels.get(upsert.channel_type, 0) + 1
    return {SEGMENT: {**entry, "size": entry["size"] + len(upserts), "channels": channels}}


async def complete(run: Run, store: Store) -> None:
    """Store the members' version with its ImportDefinition (once)."""
    entry = run.job.cursor.get(SEGMENT)
    if entry is None:
        return
    latest = await store.get_segment(run.job.app_id, entry["id"])
    if latest is None:
        raise JobError(f"segment {entry['id']} was deleted during the import", retriable=False)
    if latest.version >= entry["version"]:
        return  # stored already, before a restart
    if latest.version != entry["version"] - 1:
        raise JobError(f"segment {latest.id} changed during the import", retriable=False)
    document = {
        **latest.document,
        "ImportDefinition": import_definition(run.job.definition, entry["size"], entry["channels"]),
    }
    stored = await store.put_segment_version(
        dataclasses.replace(latest, version=entry["version"], document=document, last_modified_date=iso_now())
    )
    if stored is None:
        raise JobError(f"segment {latest.id} changed during the import", retriable=False)
