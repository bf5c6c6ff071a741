"""A claimed job's progress: what it saved last, and the two ways it moves
on — a save that holds only while this replica still owns the job, and
bounded retries of what may pass.

Everything a job has done is in its last save (counters and cursor
together), so a job picked up again, after a restart or by another replica,
goes on from there: a row done after that save is done again, and counted
once, since its count was not saved either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ingest.errors import JobError, StoreError
from ingest.folds.endpoints import iso_ms
from ingest.metrics import JobMetrics
from ingest.store.base import MAX_JOB_FAILURES, TERMINAL_STATUSES, Job, Store

log = logging.getLogger(__name__)

T = TypeVar("T")
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 10.0


class Lost(Exception):
    """Another replica took the job over (this one's lease ran out)."""


class Stopped(Exception):
    """The process is draining: the job stops at a saved point, released."""


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def iso_now() -> str:
    """Now as Pinpoint writes its dates (``2026-12-01T10:00:00.000Z``)."""
    return iso_ms(wall_ms())


class Run:
    """One job this replica holds: ``job`` is its state as last saved."""

    def __init__(
        self,
        job: Job,
        store: Store,
        *,
        lease_ms: int,
        retries: int,
        stopping: asyncio.Event,
        metrics: JobMetrics | None = None,
    ) -> None:
        self.job = job
        self._metrics = metrics
        self._store = store
        self._lease_ms = lease_ms
        self._retries = retries
        self._stopping = stopping

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def check_stopping(self) -> None:
        """Stopped when the process drains (call it at a saved point)."""
        if self._stopping.is_set():
            raise Stopped

    async def save(self, *, lease: bool = True, **changes: Any) -> None:
        """The job with ``changes`` saved (and its lease renewed, or with
        ``lease`` False released); Lost when another replica holds it now."""
        job = dataclasses.replace(self.job, **changes)
        if not await self._store.save_job(job, now_ms=wall_ms(), lease_ms=self._lease_ms if lease else 0):
            raise Lost(f"job {job.id} of app {job.app_id} is held by another replica now")
        self._count(self.job, job)
        self.job = job

    def _count(self, before: Job, after: Job) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        failed = after.total_failures - before.total_failures
        if after.job_type == "EXPORT":
            metrics.rows.labels("EXPORT", "exported").inc(after.total_processed - before.total_processed)
        else:
            metrics.rows.labels("IMPORT", "failed").inc(failed)
            metrics.rows.labels("IMPORT", "imported").inc(
                after.total_processed - before.total_processed - failed
            )
        if after.status != before.status and after.status in TERMINAL_STATUSES:
            metrics.finished.labels(after.job_type, after.status).inc()

    async def release(self) -> None:
        """Let any replica take the job up again at once, from its last save."""
        await self.save(lease=False)

    async def fail(self, reason: str) -> None:
        """FAILING with ``reason``, then FAILED (finished: never claimed again)."""
        await self.save(status="FAILING", failure_reason=reason[:1000])
        await self.save(lease=False, status="FAILED", completion_date=iso_now())

    async def finish(self) -> None:
        """COMPLETED, or FAILED when a piece failed (Pinpoint's rule)."""
        if self.job.failed_pieces:
            await self.fail(f"{self.job.failed_pieces} of {self.job.total_pieces} pieces failed")
            return
        await self.save(lease=False, status="COMPLETED", completion_date=iso_now())

    def failures(self, new: list[str]) -> tuple[str, ...]:
        """The saved failures and ``new`` ones, the first MAX_JOB_FAILURES."""
        kept = self.job.failures
        return kept + tuple(new[: max(0, MAX_JOB_FAILURES - len(kept))])

    async def retrying(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """``call``, tried again (capped exponential backoff) while it fails
        retriably (a JobError or StoreError that says so), at most the
        configured retries; then JobError, not retriable, saying why."""
        delay = BACKOFF_FIRST_S
        for attempt in range(self._retries + 1):
            try:
                return await call()
            except (JobError, StoreError) as exc:
                if not exc.retriable:
                    raise
                if attempt == self._retries:
                    raise JobError(
                        f"{what} failed {attempt + 1} times; the last time: {exc}", retriable=False
                    ) from exc
                log.info("%s failed (%s); retrying in %.1f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        raise AssertionError("unreachable")  # the loop returns or raises
