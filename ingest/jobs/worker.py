"""The jobs role (`ingest worker jobs`): claims import and export jobs from
the store and runs them, several at once, each resumable.

Every ``poll_s`` (and whenever a job ends) it claims jobs until it runs
``max_running`` or the store has none to give: a claim is one
compare-and-set (:meth:`ingest.store.base.Store.claim_job`) under the
deployment's and the app's bounds, so several replicas never run one job
twice and never more jobs than the bounds allow. A job holds a lease of
``lease_s``, renewed every third of it while it runs and at every save; a
replica that died (SIGKILL, a lost node) has its jobs claimed by another once
their leases run out, and they go on from their last save
(:mod:`ingest.jobs.progress`). A replica that lost a job's lease (paused
past it) stops that job at once: its saves would be refused anyway.

On ``stop()`` every job stops at its next saved point and releases its
lease, so another replica takes it up at once; what has not stopped within
``drain_timeout_s`` is cancelled (its lease runs out by itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ingest.errors import JobError, StoreCondition, StoreError
from ingest.folds.endpoints import EndpointState
from ingest.jobs import static
from ingest.jobs.exports import ExportLimits, run_export
from ingest.jobs.imports import ImportLimits, Publish, run_import
from ingest.jobs.progress import Lost, Run, Stopped, wall_ms
from ingest.jobs.sources import Objects
from ingest.metrics import JobMetrics
from ingest.records.codec import Codec
from ingest.settings import Settings
from ingest.store.base import Job, Store
from ingest.streams.aws import AwsDelivery

log = logging.getLogger(__name__)


def owner_id() -> str:
    """This replica's name in the leases it holds: unique per process start."""
    return f"{socket.gethostname()[:64]}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class Jobs:
    """What running a job takes: the store, S3 and the files, Kafka."""

    store: Store
    aws: AwsDelivery
    publish: Publish
    codec: Codec
    settings: Settings
    max_segments: int | None = None
    """Segments an app may hold (the segments API's bound): DefineSegment's too."""

    async def execute(self, run: Run) -> None:
        """The job from where it was saved to COMPLETED or FAILED."""
        job = run.job
        definition = job.definition
        settings = self.settings
        objects = Objects(
            self.aws,
            region=settings.region,
            role_arn=str(definition.get("RoleArn", "")),
            external_id=definition.get("ExternalId"),
            root=settings.import_dir if job.job_type == "IMPORT" else settings.export_dir,
            max_object_bytes=settings.job_max_object_bytes,
        )
        if job.job_type == "IMPORT":
            limits = ImportLimits(
                max_object_bytes=settings.job_max_object_bytes,
                max_row_bytes=settings.job_max_row_bytes,
                checkpoint_rows=settings.job_checkpoint_rows,
            )
            await run_import(
                run, objects, self.publish, self.codec, limits, self.store, max_segments=self.max_segments
            )
            if run.job.status == "COMPLETING":
                await static.complete(run, self.store)
        else:
            await run_export(run, objects, self._page(job), ExportLimits(settings.job_export_piece_endpoints))
        if run.job.status == "COMPLETING":
            await run.finish()
        elif run.job.status == "FAILING":
            await run.fail(run.job.failure_reason or "failed")

    def _page(self, job: Job) -> Callable[[str | None, int, int], Awaitable[Sequence[EndpointState]]]:
        """An export's pages: the app's endpoints, or its segment's (and version's)."""
        segment_id = job.definition.get("SegmentId")
        version = job.definition.get("SegmentVersion")

        async def page(after: str | None, limit: int, now_ms: int) -> Sequence[EndpointState]:
            return await self.store.segment_endpoints(
                job.app_id, segment_id, version, after=after, limit=limit, now_ms=now_ms
            )

        return page


class JobWorker:
    """The role: ``run`` until ``stop``; ``ready`` once the store answered a claim."""

    name = "jobs"

    def __init__(
        self,
        store: Store,
        jobs: Jobs,
        *,
        max_running: int,
        max_per_app: int,
        lease_s: float,
        poll_s: float,
        retries: int,
        drain_timeout_s: float,
        metrics: JobMetrics | None = None,
        owner: str | None = None,
    ) -> None:
        self._metrics = metrics
        self._store = store
        self._jobs = jobs
        self._max_running = max_running
        self._max_per_app = max_per_app
        self._lease_ms = int(lease_s * 1000)
        self._poll_s = poll_s
        self._retries = retries
        self._drain_timeout_s = drain_timeout_s
        self.owner = owner or owner_id()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._ready = False
        self._condition: StoreCondition | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def store_condition(self) -> StoreCondition | None:
        return self._condition

    @property
    def running(self) -> int:
        """Jobs this replica runs now."""
        return len(self._running)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                await self._claim()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_s)
        finally:
            await self._drain()

    async def _claim(self) -> None:
        while len(self._running) < self._max_running and not self._stopping.is_set():
            try:
                job = await self._store.claim_job(
                    self.owner,
                    now_ms=wall_ms(),
                    lease_ms=self._lease_ms,
                    max_running=self._max_running,
                    max_per_app=self._max_per_app,
                )
            except StoreError as exc:
                log.warning("claiming a job failed: %s", exc)
                self._ready = False
                self._condition = exc.condition
                return
            self._ready = True
            self._condition = None
            if job is None:
                return
            log.info("job %s (%s, app %s) claimed at %s", job.id, job.job_type, job.app_id, job.status)
            task = asyncio.create_task(self._hold(job), name=f"job {job.id}")
            self._running.add(task)
            task.add_done_callback(self._ended)
            if self._metrics is not None:
                self._metrics.running.set(len(self._running))

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._metrics is not None:
            self._metrics.running.set(len(self._running))
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("job task %s failed: %r", task.get_name(), task.exception())

    async def _hold(self, job: Job) -> None:
        """Run the job, renewing its lease; stop it if the lease is lost."""
        run = Run(
            job,
            self._store,
            lease_ms=self._lease_ms,
            retries=self._retries,
            stopping=self._stopping,
            metrics=self._metrics,
        )
        work = asyncio.create_task(self._execute(run), name=f"job {job.id} work")
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=self._lease_ms / 3000)
                if work.done():
                    break
                try:
                    held = await self._store.renew_job(
                        job.app_id, job.id, self.owner, until_ms=wall_ms() + self._lease_ms
                    )
                except StoreError as exc:
                    log.warning("renewing job %s failed: %s", job.id, exc)
                    continue
                if not held:
                    log.warning("job %s is held by another replica now; stopping it here", job.id)
                    work.cancel()
            await asyncio.wait({work})
        finally:
            if not work.done():
                work.cancel()
                await asyncio.wait({work})

    async def _execute(self, run: Run) -> None:
        job = run.job
        try:
            await self._jobs.execute(run)
            log.info(
                "job %s %s: %d processed, %d failed rows, %d/%d pieces",
                job.id,
                run.job.status,
                run.job.total_processed,
                run.job.total_failures,
                run.job.completed_pieces,
                run.job.total_pieces,
            )
        except Stopped:
            with contextlib.suppress(Lost, StoreError):
                await run.release()
            log.info("job %s stopped at a saved point, released", job.id)
        except Lost as exc:
            log.warning("%s", exc)
        except JobError as exc:
            log.warning("job %s failed: %s", job.id, exc)
            with contextlib.suppress(Lost, StoreError):
                await run.fail(str(exc))
        except StoreError as exc:
            if not exc.retriable:
                log.warning("job %s failed: the store refused it: %s", job.id, exc)
                with contextlib.suppress(Lost, StoreError):
                    await run.fail(f"the store refused the job: {exc}")
                return
            # Its lease runs out; a replica picks it up again from its last save.
            log.warning("job %s: the store failed (%s); it resumes once its lease runs out", job.id, exc)

    async def _drain(self) -> None:
        if not self._running:
            return
        _, pending = await asyncio.wait(set(self._running), timeout=self._drain_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%d jobs did not stop within the drain; their leases run out", len(pending))
            await asyncio.wait(pending)
