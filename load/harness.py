"""One load run, end to end: a fresh app, the generators, live progress,
draining, accounting, the summary.

``run_load(Options(...))`` is the whole of ``python -m load`` but printing
the result: it returns the summary dict (what ``--json`` prints), so a
benchmark command can call it from Python.

Accounting goes through the public API only: each run creates its own app
(CreateApp), so the app's ``events-grouped-by-event-type`` KPI counts this
run's events and nothing else (with ``app_id``, an existing app, what it
counted before the run is subtracted). Every call is signed (see
:mod:`load.credentials` for which credentials). After the last answer the harness polls that
KPI until it matches what was accepted and stays unchanged for
``SETTLE_S``, or has not changed for ``stall_s``, or ``drain_timeout_s``
passed; then :func:`load.ledger.reconcile` gives ``lost`` and ``duplicated``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import secrets
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any, Protocol, TextIO

import aiohttp
import uvloop
from hdrh.histogram import HdrHistogram

from load import chaos as faults
from load import credentials
from load.api import EVENTS_BY_TYPE, Api, ApiError
from load.credentials import Key
from load.driver import Plan, Snapshot, drive, new_histogram
from load.ledger import Reconciliation, Tally, kpi_counts, reconcile
from load.progress import Progress
from load.traffic import ProfileChoice, iso

SETTLE_S = 1.0  # a matching KPI must hold this long: late duplicates would show
POLL_S = 0.25
PROGRESS_EVERY_S = 1.0
# Children need a moment to import and connect; all start sending together.
CHILD_START_DELAY_S = 2.0
# The KPI window reaches this far around the run: days are whole anyway.
WINDOW_MARGIN_MS = 3_600_000


@dataclass(frozen=True)
class Options:
    """Everything a run needs; ``python -m load --help`` explains each."""

    url: str | None = None
    duration_s: float = 10.0
    rate: float | None = None
    concurrency: int = 32
    batch_size: int = 100
    endpoints: int = 1000
    retry_rate: float = 0.0
    invalid_rate: float = 0.0
    profile: ProfileChoice = "mixed"
    hot_share: float = 0.0
    seed: int | None = None
    processes: int = 1
    timeout_s: float = 10.0
    max_attempts: int = 10
    verify: bool = True
    drain_timeout_s: float = 120.0
    stall_s: float = 30.0
    null_server: bool = False
    null_processes: int = 1
    spawn: bool = False
    chaos: bool = False
    app_id: str | None = None
    identity_pool_id: str | None = None
    data_dir: str | None = None
    key: Key | None = None  # from Python: sign with this instead of the AWS chain

    def check(self) -> None:
        """ValueError naming the option that is out of range."""
        rules = [
            (self.duration_s > 0, "--duration must be > 0"),
            (self.rate is None or self.rate > 0, "--rate must be > 0"),
            (self.concurrency >= 1, "--concurrency must be at least 1"),
            (1 <= self.batch_size <= 100, "--batch-size must be 1-100 (Pinpoint's limit)"),
            (self.endpoints >= self.processes, "--endpoints must be at least --processes"),
            (0 <= self.retry_rate <= 1, "--retry-rate must be 0-1"),
            (0 <= self.invalid_rate <= 1, "--invalid-rate must be 0-1"),
            (0 <= self.hot_share <= 1, "--hot-share must be 0-1"),
            (self.processes >= 1, "--processes must be at least 1"),
            (self.concurrency >= self.processes, "--concurrency must be at least --processes"),
            (self.max_attempts >= 1, "--max-attempts must be at least 1"),
            (self.timeout_s > 0, "--timeout must be > 0"),
            (
                sum((self.url is not None, self.null_server, self.spawn or self.chaos)) <= 1,
                "--url, --null-server and --spawn/--chaos are alternatives",
            ),
            (
                self.identity_pool_id is None or self.app_id is not None,
                "--identity-pool-id is bound to one app: give that app's --app-id too",
            ),
        ]
        for ok, message in rules:
            if not ok:
                raise ValueError(message)


def _child(plan: Plan, queue: Any) -> None:
    """A generator process: its snapshots go to the parent through ``queue``."""
    # Ctrl-C reaches the whole process group; the parent decides and ends us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        final = uvloop.run(drive(plan, queue.put))
    except BaseException:
        queue.put(Snapshot(plan.index, 0.0, {}, b"", 0, done=True, error=traceback.format_exc()))
        raise
    queue.put(final)


async def _generate(plans: list[Plan], progress: Progress) -> list[Snapshot]:
    """Run the plans (in this process when there is one); print a line a
    second; return each generator's final snapshot."""
    loop = asyncio.get_running_loop()
    started = loop.time() + max(0.0, plans[0].start_at - time.time())

    async def printer() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            progress.tick(loop.time() - started)

    ticking = asyncio.create_task(printer())
    try:
        if len(plans) == 1:
            final = await drive(plans[0], progress.add)
            progress.add(final)
            return [final]
        return await _children(plans, progress)
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
        progress.done()


async def _children(plans: list[Plan], progress: Progress) -> list[Snapshot]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_child, args=(plan, queue), daemon=True) for plan in plans]
    for process in processes:
        process.start()
    finals: dict[int, Snapshot] = {}
    try:
        while len(finals) < len(plans):
            while True:
                try:
                    snapshot: Snapshot = queue.get_nowait()
                except Empty:
                    break
                if snapshot.error:
                    raise RuntimeError(f"generator {snapshot.index} failed:\n{snapshot.error}")
                progress.add(snapshot)
                if snapshot.done:
                    finals[snapshot.index] = snapshot
            dead = [p for n, p in enumerate(processes) if n not in finals and p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"generator process {dead[0].pid} exited {dead[0].exitcode}")
            await asyncio.sleep(0.05)  # polling the children's queue
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # our own child, by its PID
            process.join(5)
    return [finals[n] for n in range(len(plans))]


class Window(Protocol):
    """Told when a run's measured window opens (the first request is about
    to go) and closes (the accounting matched, so the workers are done with
    the run's events; without accounting, at the last answer)."""

    def start(self) -> None: ...

    def end(self) -> None: ...


@dataclass(frozen=True)
class Signing:
    """What a run signs with: the long-term key, and the devices' temporary
    credentials with the identity they belong to."""

    key: Key
    device_key: Key | None = None
    identity_id: str | None = None


def _key(options: Options, pipeline: faults.Pipeline | None) -> Key:
    """The long-term (admin) key: the started `ingest run`'s credentials file,
    else the standard AWS places (:func:`load.credentials.from_environment`)."""
    if options.null_server:
        return credentials.UNCHECKED
    if options.key is not None:
        return options.key
    if pipeline is not None:
        return credentials.from_file(pipeline.credentials_file)
    return credentials.from_environment()


async def _devices(
    options: Options,
    session: aiohttp.ClientSession,
    url: str,
    app_id: str,
    pipeline: faults.Pipeline | None,
) -> tuple[Key | None, str | None]:
    """Temporary credentials for the devices of the run's app, and whose they are."""
    if options.profile == "boto3":
        return None, None
    if options.null_server:
        return credentials.UNCHECKED_DEVICE, None
    pool_id = options.identity_pool_id
    if pool_id is None:
        if pipeline is not None:
            env = pipeline.cli_env()
        elif options.data_dir is not None:
            env = dict(os.environ) | {"INGEST_DATA_DIR": options.data_dir}
        else:
            env = dict(os.environ)
        pool_id = await asyncio.to_thread(credentials.create_identity_pool, app_id, env=env)
    identity_id = await credentials.identity(url, pool_id)
    return await credentials.temporary(session, url, identity_id), identity_id


def _minus(counts: dict[str, int], baseline: dict[str, int]) -> dict[str, int]:
    """What was counted since ``baseline`` (a run on an existing app)."""
    since = {kind: n - baseline.get(kind, 0) for kind, n in counts.items()}
    return {kind: n for kind, n in since.items() if n}


def _plans(
    options: Options, *, url: str, app_id: str, run_id: str, seed: int, signing: Signing
) -> list[Plan]:
    n = options.processes
    start_at = time.time() + (CHILD_START_DELAY_S if n > 1 else 0.0)
    return [
        Plan(
            url=url,
            app_id=app_id,
            run_id=run_id,
            index=i,
            duration_s=options.duration_s,
            rate=None if options.rate is None else options.rate / n,
            concurrency=options.concurrency // n + (i < options.concurrency % n),
            batch_size=options.batch_size,
            endpoints=options.endpoints // n + (i < options.endpoints % n),
            profile=options.profile,
            seed=seed * 1_000 + i,
            retry_rate=options.retry_rate,
            invalid_rate=options.invalid_rate,
            hot_share=options.hot_share,
            timeout_s=options.timeout_s,
            max_attempts=options.max_attempts,
            start_at=start_at,
            key=signing.key,
            device_key=signing.device_key,
            identity_id=signing.identity_id,
        )
        for i in range(n)
    ]


async def _drain(
    api: Api,
    app_id: str,
    tally: Tally,
    *,
    window: tuple[str, str],
    options: Options,
    progress: Progress,
    baseline: dict[str, int],
) -> tuple[Reconciliation, float]:
    """Poll the KPI until it matches and holds, stalls, or time runs out."""
    loop = asyncio.get_running_loop()
    started = last_change = loop.time()
    last: dict[str, int] | None = None
    rec = reconcile(tally.accepted_by_type, tally.failed_by_type, {})
    while True:
        try:
            counts = kpi_counts(await api.kpi(app_id, EVENTS_BY_TYPE, start=window[0], end=window[1]))
            counted = _minus(counts, baseline)
        except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
            progress.say(f"draining: KPI read failed ({exc}); retrying")
            counted = last or {}
        now = loop.time()
        if counted != last:
            last, last_change = counted, now
        rec = reconcile(tally.accepted_by_type, tally.failed_by_type, counted)
        if rec.matches and now - last_change >= SETTLE_S:
            break
        if now - last_change >= options.stall_s or now - started >= options.drain_timeout_s:
            break
        progress.say(
            f"draining {now - started:5.1f} s: {rec.counted:,} counted of {tally.events_accepted:,} accepted",
            transient=True,
        )
        await asyncio.sleep(POLL_S)  # between KPI polls
    progress.done()
    return rec, loop.time() - started


def _latency(histogram: Any) -> dict[str, float]:
    def ms(value: float) -> float:
        return round(value / 1000, 3)

    if not histogram.get_total_count():
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0, "mean": 0.0, "count": 0}
    return {
        "p50": ms(histogram.get_value_at_percentile(50)),
        "p95": ms(histogram.get_value_at_percentile(95)),
        "p99": ms(histogram.get_value_at_percentile(99)),
        "p999": ms(histogram.get_value_at_percentile(99.9)),
        "max": ms(histogram.get_max_value()),
        "mean": ms(histogram.get_mean_value()),
        "count": histogram.get_total_count(),
    }


@contextlib.asynccontextmanager
async def _server(options: Options, work_dir: Path) -> AsyncIterator[tuple[str, faults.Pipeline | None]]:
    """The URL to load, and the pipeline when the harness started one."""
    if options.null_server:
        null = faults.NullServer(work_dir, options.null_processes)
        try:
            await null.start()
            yield null.url, None
        finally:
            await null.stop()
    elif options.spawn or options.chaos:
        pipeline = faults.Pipeline(work_dir)
        try:
            await pipeline.start()
            yield pipeline.url, pipeline
        finally:
            await pipeline.stop()
    else:
        yield options.url or "http://127.0.0.1:8080", None


async def execute(
    options: Options, *, out: TextIO | None = sys.stderr, measured: Window | None = None
) -> dict[str, Any]:
    """Run the load described by ``options``; progress goes to ``out``;
    ``measured`` hears when the measured window opens and closes."""
    options.check()
    seed = options.seed if options.seed is not None else secrets.randbits(31)
    run_id = secrets.token_hex(4)
    progress = Progress(out)
    verify = options.verify and not options.null_server
    actions: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="load-") as tmp:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with _server(options, Path(tmp)) as (url, pipeline):
                try:
                    key = _key(options, pipeline)
                    api = Api(session, url, key)
                    app_id = options.app_id or await api.create_app(f"load-{run_id}")
                    progress.say(f"run {run_id}: app {app_id} on {url}, seed {seed}")
                    device_key, identity_id = await _devices(options, session, url, app_id, pipeline)
                    signing = Signing(key, device_key, identity_id)
                    plans = _plans(options, url=url, app_id=app_id, run_id=run_id, seed=seed, signing=signing)
                    first_ms = int(plans[0].start_at * 1000)
                    window = (
                        iso(first_ms - WINDOW_MARGIN_MS),
                        iso(int((time.time() + options.duration_s) * 1000) + WINDOW_MARGIN_MS),
                    )
                    baseline: dict[str, int] = {}
                    if verify and options.app_id is not None:  # an app with events of earlier runs
                        baseline = kpi_counts(
                            await api.kpi(app_id, EVENTS_BY_TYPE, start=window[0], end=window[1])
                        )
                    loop = asyncio.get_running_loop()
                    injecting = None

                    def record(action: dict[str, Any]) -> None:
                        actions.append(action)
                        progress.say(f"chaos: {action['action']}")

                    if options.chaos and pipeline is not None:
                        injecting = asyncio.create_task(
                            faults.chaos(
                                pipeline,
                                duration_s=options.duration_s,
                                started_at=loop.time() + max(0.0, plans[0].start_at - time.time()),
                                record=record,
                            )
                        )
                    if measured is not None:
                        measured.start()
                    finals = await _generate(plans, progress)
                    if injecting is not None:
                        await injecting  # the timeline ends with the broker thawed
                    tally = sum((Tally.from_dict(f.tally) for f in finals), Tally())
                    rec: Reconciliation | None = None
                    drain_s = 0.0
                    if verify:
                        window = (window[0], iso(int(time.time() * 1000) + WINDOW_MARGIN_MS))
                        rec, drain_s = await _drain(
                            api,
                            app_id,
                            tally,
                            window=window,
                            options=options,
                            progress=progress,
                            baseline=baseline,
                        )
                    if measured is not None:
                        measured.end()
                except BaseException:
                    if pipeline is not None and out is not None:
                        out.write(pipeline.tails() + "\n")
                    raise
                if rec is not None and not rec.matches and pipeline is not None:
                    # Even when quiet: what the processes logged is what tells a
                    # stalled consumer group from lost records.
                    (out or sys.stderr).write(pipeline.tails() + "\n")
    histogram = new_histogram()
    for final in finals:
        histogram.add(HdrHistogram.decode(final.histogram))
    elapsed = max(f.elapsed_s for f in finals)
    cpu = sum(f.cpu_s for f in finals)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "app_id": app_id,
        "url": url,
        "seed": seed,
        "profile": options.profile,
        "processes": options.processes,
        "concurrency": options.concurrency,
        "batch_size": options.batch_size,
        "endpoints": options.endpoints,
        "rate": options.rate,
        "duration_s": options.duration_s,
        "elapsed_s": round(elapsed, 3),
        "requests": tally.requests,
        "events_sent": tally.events_sent,
        "events_resent": tally.events_resent,
        "events_accepted": tally.events_accepted,
        "events_rejected": tally.events_rejected,
        "events_failed": tally.events_failed,
        "invalid_sent": tally.invalid_sent,
        "valid_rejected": tally.valid_rejected,
        "invalid_accepted": tally.invalid_accepted,
        "missing_answers": tally.missing_answers,
        "sdk_retries": tally.sdk_retries,
        "batches_resent": tally.batches_resent,
        "verified": rec is not None,
        "counted": None if rec is None else rec.counted,
        "lost": None if rec is None else rec.lost,
        "duplicated": None if rec is None else rec.duplicated,
        "mismatched_types": {} if rec is None else rec.by_type,
        "drain_s": round(drain_s, 3),
        "events_per_s": round(tally.events_accepted / elapsed, 1),
        "event_answers_per_s": round(tally.events_answered / elapsed, 1),
        "requests_per_s": round(tally.requests / elapsed, 1),
        "generator_cpu_s": round(cpu, 3),
        "events_per_generator_cpu_s": round(tally.events_answered / cpu, 1) if cpu else None,
        "latency_ms": _latency(histogram),
        "status": {"http": dict(tally.http), "events": dict(tally.events)},
        "chaos": actions,
        "credential_refreshes": sum(int(f.extra.get("credential_refreshes", 0)) for f in finals),
    }
    checked = rec is None or (
        rec.lost == 0 and rec.duplicated == 0 and not (tally.valid_rejected or tally.invalid_accepted)
    )
    summary["ok"] = bool(checked and not tally.missing_answers)
    return summary


def run_load(options: Options, *, out: TextIO | None = sys.stderr) -> dict[str, Any]:
    """:func:`execute` on a fresh uvloop event loop: the Python entry point."""
    return uvloop.run(execute(options, out=out))
