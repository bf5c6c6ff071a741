"""A segment's source segments (SegmentGroups' SourceSegments), read from
the store at every depth, and the rules on them a create or update checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ingest.errors import BadRequest
from ingest.segments import definitions
from ingest.segments.values import MAX_COMPILED_SEGMENTS, MAX_SOURCE_DEPTH, Definition
from ingest.store.base import Segment

SourceKey = tuple[str, int | None]
"""(segment ID, the version named, or None for the latest)."""
Getter = Callable[[str, str, int | None], Awaitable[Segment | None]]
"""``Store.get_segment``."""


async def load(
    get: Getter, app_id: str, definition: Definition | None, *, own: Segment | None = None
) -> dict[SourceKey, Segment | None]:
    """The source segments ``definition`` names, at every depth, each read
    once (None: no such segment or version). ``own``, when given, stands for
    its own ID at its latest version (an update checked before it is
    stored). BadRequest past MAX_COMPILED_SEGMENTS or MAX_SOURCE_DEPTH."""
    found: dict[SourceKey, Segment | None] = {}
    frontier = [definition] if definition is not None else []
    for _ in range(MAX_SOURCE_DEPTH):
        following: list[Definition] = []
        for each in frontier:
            for source in each.sources():
                key = (source.id, source.version)
                if key in found:
                    continue
                if len(found) + 1 >= MAX_COMPILED_SEGMENTS:
                    raise BadRequest(f"A segment and its sources name over {MAX_COMPILED_SEGMENTS} segments")
                if own is not None and source.id == own.id and source.version in (None, own.version):
                    segment: Segment | None = own
                else:
                    segment = await get(app_id, source.id, source.version)
                found[key] = segment
                if segment is not None and segment.segment_type == "DIMENSIONAL":
                    nested = definitions.definition(segment.document)
                    if nested is not None and nested.sources():
                        following.append(nested)
        if not following:
            return found
        frontier = following
    raise BadRequest(f"Source segments nest deeper than {MAX_SOURCE_DEPTH} (or name each other)")


def check(definition: Definition | None, sources: dict[SourceKey, Segment | None]) -> None:
    """BadRequest for a source segment that does not exist, or an imported
    one beside others in its group."""
    for g, group in enumerate(definition.groups if definition is not None else ()):
        where = f"SegmentGroups.Groups[{g}].SourceSegments"
        for s, source in enumerate(group.sources):
            segment = sources.get((source.id, source.version))
            if segment is None:
                version = "" if source.version is None else f" version {source.version}"
                raise BadRequest(
                    f"{where}[{s}].Id: no segment {source.id[:200]}{version} in this application"
                )
            if segment.segment_type == "IMPORT" and len(group.sources) > 1:
                raise BadRequest(f"{where}[{s}]: an imported segment must be its group's only source segment")
