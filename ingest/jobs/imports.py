"""An import job: endpoint definitions from S3 or a file, through the same
validation and onto the same Kafka topic as UpdateEndpoint.

INITIALIZING lists the objects at ``S3Url`` once (a piece each, kept in the
job). PROCESSING reads each object as a stream of lines
(:class:`ingest.jobs.formats.Lines`); every line is parsed in the job's
``Format``, then :func:`ingest.records.validate.endpoint_upsert` (so the same
quotas and the same merge rules: a member the row does not carry is kept)
and :func:`ingest.api.writes.endpoint_records`, exactly what UpdateEndpoint
publishes. Each ``checkpoint_rows`` rows are published, and only once Kafka
acknowledged all of them is the cursor (object, line) saved with the counts.

A bad line (not parseable, not valid, too long) is counted in
``TotalFailures``, its reason among the first 100 ``Failures``, and the job
goes on. An object that is not in the job's format at all (its first line
says so), too large, or unreadable after the retries fails its piece; a
job with a failed piece ends FAILED, the others imported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ingest.errors import JobError, Overloaded
from ingest.jobs import formats, static
from ingest.jobs.formats import Format, Line, RowError
from ingest.jobs.progress import Run, wall_ms
from ingest.jobs.sources import Objects, parse_url
from ingest.records import validate
from ingest.records.codec import Codec
from ingest.records.split import endpoint_records
from ingest.records.values import EndpointUpsert, Invalid, OutRecord
from ingest.store.base import MAX_JOB_FAILURES, Store

Publish = Callable[[Sequence[OutRecord]], Awaitable[list[bool]]]


@dataclass(frozen=True, slots=True)
class ImportLimits:
    max_object_bytes: int
    max_row_bytes: int
    checkpoint_rows: int


class _Piece:
    """One object's lines in, upserts and failures out, a checkpoint at a time."""

    def __init__(self, run: Run, url: str, fmt: Format, done_through: int) -> None:
        self.run = run
        self.url = url
        self.fmt = fmt
        self.done_through = done_through
        self.header: list[str] | None = None
        self.upserts: list[EndpointUpsert] = []
        self.failures: list[str] = []
        self.failed = 0
        self.processed = 0
        self.last_line = done_through

    def take(self, line: Line) -> None:
        """One line: checked for the format (the first), else parsed and
        validated into an upsert or a failure; lines done before are passed."""
        if line.number == 1:
            self._check_format(line)
        if line.number <= self.done_through:
            return
        self.last_line = line.number
        if self.fmt == "CSV" and line.number == 1:
            return  # the header
        if line.data is not None and not line.data.strip():
            return  # a blank line is no row
        self.processed += 1
        job = self.run.job
        if line.data is None:
            self._failed(line.number, "longer than INGEST_JOB_MAX_ROW_BYTES")
            return
        try:
            if self.header is not None:
                endpoint_id, body = formats.csv_endpoint(self.header, line.data)
            else:
                endpoint_id, body = formats.json_endpoint(line.data)
            decided = validate.endpoint_upsert(
                body,
                app_id=job.app_id,
                endpoint_id=endpoint_id,
                request_id=job.id,
                received_at_ms=wall_ms(),
                source="UPDATE_ENDPOINTS_BATCH",
            )
            if isinstance(decided, Invalid):
                raise RowError(decided.message)  # noqa: TRY301 - one failure path for every reason
        except RowError as exc:
            self._failed(line.number, str(exc))
            return
        self.upserts.append(decided)

    def _failed(self, number: int, why: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_JOB_FAILURES:
            self.failures.append(f"{self.url} line {number}: {why}")

    def _check_format(self, line: Line) -> None:
        if line.data is None or not formats.looks_like(line.data, self.fmt):
            what = (
                "newline-delimited JSON endpoint definitions"
                if self.fmt == "JSON"
                else "CSV with a header naming an Id column"
            )
            raise JobError(
                f"{self.url} is not {what} (Format {self.fmt}): line 1 says otherwise", retriable=False
            )
        if self.fmt == "CSV":
            self.header = formats.csv_header(line.data)


async def run_import(
    run: Run,
    objects: Objects,
    publish: Publish,
    codec: Codec,
    limits: ImportLimits,
    store: Store,
    *,
    max_segments: int | None = None,
) -> None:
    """The job from its saved state to COMPLETING (the caller finishes it,
    :func:`ingest.jobs.static.complete` first). ``store`` holds the static
    segment the job fills, if it names one."""
    definition = run.job.definition
    if run.job.status in ("CREATED", "INITIALIZING"):
        await run.save(status="INITIALIZING")
        await static.prepare(run, store, max_segments=max_segments)
        location = parse_url(
            definition["S3Url"], member="S3Url", root=objects.root, setting="INGEST_JOB_IMPORT_DIR"
        )
        pieces = await run.retrying(lambda: objects.listing(location), f"listing {location.url}")
        await run.save(
            status="PROCESSING",
            pieces=tuple(pieces),
            total_pieces=len(pieces),
            cursor={**run.job.cursor, "object": 0, "row": 0},
        )
    if run.job.status == "PROCESSING":
        for index in range(int(run.job.cursor.get("object", 0)), len(run.job.pieces)):
            run.check_stopping()
            await _import_piece(run, index, objects, publish, codec, limits, store)
        await run.save(status="COMPLETING")


async def _import_piece(
    run: Run,
    index: int,
    objects: Objects,
    publish: Publish,
    codec: Codec,
    limits: ImportLimits,
    store: Store,
) -> None:
    url, size = run.job.pieces[index]
    fmt: Format = run.job.definition["Format"]

    async def attempt() -> None:
        cursor = run.job.cursor
        piece = _Piece(run, url, fmt, int(cursor.get("row", 0)) if cursor.get("object") == index else 0)
        if size > limits.max_object_bytes:
            raise JobError(
                f"{url} is {size} bytes, over the {limits.max_object_bytes}-byte limit "
                "(INGEST_JOB_MAX_OBJECT_BYTES)",
                retriable=False,
            )
        lines = formats.Lines(max_row_bytes=limits.max_row_bytes, max_bytes=limits.max_object_bytes, what=url)
        async with contextlib.aclosing(objects.read(url)) as chunks:
            async for chunk in chunks:
                for line in lines.feed(chunk):
                    piece.take(line)
                    if len(piece.upserts) + piece.failed >= limits.checkpoint_rows:
                        await _checkpoint(run, index, piece, publish, codec, store)
                        run.check_stopping()
        for line in lines.finish():
            piece.take(line)
        await _checkpoint(run, index, piece, publish, codec, store, last=True)

    try:
        await run.retrying(attempt, f"importing {url}")
    except JobError as exc:
        await run.save(
            failed_pieces=run.job.failed_pieces + 1,
            failures=run.failures([f"{url}: {exc}"]),
            cursor={**run.job.cursor, "object": index + 1, "row": 0},
        )


async def _checkpoint(
    run: Run,
    index: int,
    piece: _Piece,
    publish: Publish,
    codec: Codec,
    store: Store,
    *,
    last: bool = False,
) -> None:
    """Publish the piece's upserts so far, and once Kafka has every one,
    save the counts and the cursor (the next object, when ``last``)."""
    pending = endpoint_records(piece.upserts, codec)

    async def send() -> None:
        nonlocal pending
        try:
            acked = await publish(pending) if pending else []
        except Overloaded as exc:
            raise JobError(f"Kafka producer busy: {exc}", retriable=True) from exc
        pending = [record for record, ok in zip(pending, acked, strict=True) if not ok]
        if pending:
            raise JobError(
                f"Kafka did not acknowledge {len(pending)} endpoint records in time", retriable=True
            )

    await run.retrying(send, "publishing imported endpoints")
    segment = await static.add(run, store, piece.upserts)
    job = run.job
    at = {"object": index + 1, "row": 0} if last else {"object": index, "row": piece.last_line}
    changes: dict[str, Any] = {
        "total_processed": job.total_processed + piece.processed,
        "total_failures": job.total_failures + piece.failed,
        "failures": run.failures(piece.failures),
        "cursor": {**job.cursor, **segment, **at},
    }
    if last:
        changes["completed_pieces"] = job.completed_pieces + 1
    await run.save(**changes)
    piece.done_through = piece.last_line
    piece.upserts.clear()
    piece.failures.clear()
    piece.failed = piece.processed = 0
