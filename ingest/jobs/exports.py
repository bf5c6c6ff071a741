"""An export job: the app's live endpoints (or a segment's), as gzip
newline-delimited JSON endpoint definitions (:func:`ingest.jobs.formats.export_line`,
GetEndpoint's shape, which an import reads back), in pieces under
``S3UrlPrefix``.

Piece ``n`` holds up to ``piece_endpoints`` endpoints following, in ID
order, the last one of piece ``n - 1``, read a page (one primary-key range
search) at a time; it is written whole to
``{S3UrlPrefix}/{job ID}/part-{n:05d}.json.gz`` and only then is the cursor
(the next piece number, the last endpoint ID written) saved. A job resumed
after a crash writes the piece it had not saved again under the same name,
overwriting it: every endpoint is in exactly one piece. Memory holds one
piece, compressed, whatever the app's size.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ingest.folds.endpoints import EndpointState
from ingest.jobs import formats
from ingest.jobs.progress import Run, wall_ms
from ingest.jobs.sources import Objects, parse_url

# Endpoints one store read returns.
PAGE_ENDPOINTS = 1000
# (after, limit, now in ms) → the next page of endpoints in ID order, of
# the app or of its segment evaluated at that now (Recency).
Page = Callable[[str | None, int, int], Awaitable[Sequence[EndpointState]]]


@dataclass(frozen=True, slots=True)
class ExportLimits:
    piece_endpoints: int


def piece_name(job_id: str, number: int) -> str:
    """Piece ``number``'s object name under the prefix: the same on every run."""
    return f"{job_id}/part-{number:05d}.json.gz"


async def run_export(run: Run, objects: Objects, page: Page, limits: ExportLimits) -> None:
    """The job from its saved state to COMPLETING (the caller finishes it)."""
    prefix = parse_url(
        run.job.definition["S3UrlPrefix"],
        member="S3UrlPrefix",
        root=objects.root,
        setting="INGEST_JOB_EXPORT_DIR",
    )
    if run.job.status in ("CREATED", "INITIALIZING"):
        await run.save(status="INITIALIZING")
        # One "now" for every page, kept for a resumed run: a segment with
        # Recency selects the same endpoints in every piece.
        await run.save(status="PROCESSING", cursor={"piece": 0, "after": None, "now_ms": wall_ms()})
    if run.job.status != "PROCESSING":
        return
    while True:
        run.check_stopping()
        number = int(run.job.cursor.get("piece", 0))
        after: str | None = run.job.cursor.get("after")
        gzip = formats.Gzip()
        count = 0
        finished = False
        while count < limits.piece_endpoints:
            asked = min(PAGE_ENDPOINTS, limits.piece_endpoints - count)
            now_ms = int(run.job.cursor.get("now_ms", 0))
            states = await run.retrying(functools.partial(page, after, asked, now_ms), "reading endpoints")
            for state in states:
                gzip.write(formats.export_line(state))
            count += len(states)
            if states:
                after = states[-1].endpoint_id
            if len(states) < asked:
                finished = True
                break
        if count:
            target = prefix.child(piece_name(run.job.id, number))
            data = gzip.finish()
            await run.retrying(functools.partial(objects.write, target, data), f"writing {target.url}")
            job = run.job
            await run.save(
                completed_pieces=number + 1,
                total_pieces=number + 1,
                total_processed=job.total_processed + count,
                cursor={**run.job.cursor, "piece": number + 1, "after": after},
            )
        if finished:
            break
    await run.save(status="COMPLETING")
