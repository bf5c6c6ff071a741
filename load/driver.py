"""One generator process: batches from :mod:`load.traffic` sent over
keep-alive connections (aiohttp on uvloop), answers into a
:class:`~load.ledger.Ledger`, latencies into HdrHistograms.

Two modes:

* closed loop (no rate): ``concurrency`` senders, each sending its next batch
  when the last one settled: as fast as the server takes;
* open loop (a rate): batch ``k`` is due at ``t0 + k * batch_size / rate``,
  whether or not earlier ones were answered. ``concurrency`` senders take
  the due batches in order; when all are busy a batch goes out late, and its
  latency is measured from when it was *due*, not from when it went out, so
  a stalled server shows as latency instead of as fewer samples (no
  coordinated omission).

An SDK's retries come after: events answered 500, and whole requests answered
429/500/502/503/504, timed out or cut off, are sent again with the same IDs
(only the undecided events, as SDKs re-queue them) after a jittered backoff,
up to ``max_attempts``. Retries' latencies are measured from their own send.

Devices sign with the plan's temporary credentials and, like Amplify's
credentials provider, fetch new ones for the same identity before they
expire (:mod:`load.credentials`); backends with the plan's long-term key.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from hdrh.histogram import HdrHistogram
from yarl import URL

from load import credentials
from load.credentials import CredentialsError, Key
from load.ledger import Ledger, Pending
from load.sdk import Sdk, endpoint_path, events_path
from load.traffic import Batch, ProfileChoice, Traffic

# Latencies in microseconds, 1 µs to 10 min, 3 significant digits.
LATENCY_MAX_US = 600_000_000
LATENCY_DIGITS = 3
RETRIABLE = frozenset(("429", "500", "502", "503", "504", "timeout", "error", "bad_body"))
BACKOFF_FIRST_S = 0.1  # doubling to BACKOFF_MAX_S, times a jitter in [0.5, 1)
BACKOFF_MAX_S = 2.0
# Young-generation collections run this rarely: each batch allocates thousands
# of small objects that die together (measured: ~10 % more batches a second).
GC_GEN0_THRESHOLD = 50_000
REFRESH_RETRY_S = 1.0  # after a failed credentials refresh; the old ones still hold a while


def new_histogram() -> Any:
    return HdrHistogram(1, LATENCY_MAX_US, LATENCY_DIGITS)


@dataclass(frozen=True)
class Plan:
    """What one generator process does. Picklable: it crosses to children."""

    url: str
    app_id: str
    run_id: str
    index: int
    duration_s: float
    rate: float | None  # events/s for this process; None: closed loop
    concurrency: int
    batch_size: int
    endpoints: int
    profile: ProfileChoice
    seed: int
    retry_rate: float
    invalid_rate: float
    hot_share: float
    timeout_s: float
    max_attempts: int
    start_at: float  # wall-clock (epoch) seconds when sending starts
    key: Key  # backends' (boto3) long-term key
    device_key: Key | None = None  # devices' temporary credentials; None: ``key``
    identity_id: str | None = None  # whose credentials ``device_key`` are, to refresh them
    report_interval_s: float = 0.5  # the printer shows a line a second


@dataclass
class Snapshot:
    """A generator's cumulative counters and latencies since the last one;
    the last snapshot (``done``) also carries the whole run's histogram."""

    index: int
    elapsed_s: float
    tally: dict[str, Any]
    interval: bytes
    in_flight: int
    done: bool = False
    histogram: bytes = b""
    cpu_s: float = 0.0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Driver:
    """Sends a :class:`Plan`'s traffic; ``run`` returns the final Snapshot."""

    def __init__(self, plan: Plan, report: Callable[[Snapshot], None]) -> None:
        self.plan = plan
        self._report = report
        self.ledger = Ledger()
        self.histogram = new_histogram()
        self._interval = new_histogram()
        self._traffic = Traffic(
            seed=plan.seed,
            run_id=plan.run_id,
            endpoints=plan.endpoints,
            batch_size=plan.batch_size,
            profile=plan.profile,
            invalid_rate=plan.invalid_rate,
            retry_rate=plan.retry_rate,
            hot_share=plan.hot_share,
        )
        self._sdk = Sdk(plan.url, plan.key, plan.device_key)
        self.refreshes = 0
        self._events_path = events_path(plan.app_id)
        self._events_url = URL(self._sdk.base + self._events_path, encoded=True)
        self._jitter = random.Random(plan.seed ^ 0x5EED)  # noqa: S311 - jitter, not secrets
        self._slot = 0
        self.in_flight = 0
        self._t0 = 0.0
        self._wall_offset = 0.0
        self._session: aiohttp.ClientSession | None = None

    # --- time ----------------------------------------------------------------

    def _wall_ms(self, loop_time: float) -> int:
        return int((loop_time + self._wall_offset) * 1000)

    def _backoff_s(self, attempt: int) -> float:
        return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** (attempt - 1)) * (0.5 + self._jitter.random() / 2)

    # --- requests ------------------------------------------------------------

    async def _request(
        self,
        profile: Any,
        method: str,
        path: str,
        url: URL,
        body: bytes,
        *,
        invocation_id: str,
        attempt: int,
        started: float,
        events: int,
        resend: bool = False,
    ) -> tuple[str, Any]:
        """One HTTP request; (status text, parsed 2xx body or None). Latency
        is recorded from ``started`` (the due time of a first attempt)."""
        assert self._session is not None
        headers = self._sdk.headers(
            profile,
            method,
            path,
            body,
            epoch_s=int(time.time()),
            invocation_id=invocation_id,
            attempt=attempt,
        )
        loop = asyncio.get_running_loop()
        raw = b""
        self.in_flight += 1
        try:
            async with self._session.request(method, url, data=body, headers=headers) as response:
                raw = await response.read()
                status = str(response.status)
        except TimeoutError:
            status = "timeout"
        except aiohttp.ClientError:
            status = "error"
        finally:
            self.in_flight -= 1
        latency_us = max(1, int((loop.time() - started) * 1_000_000))
        self.histogram.record_value(min(latency_us, LATENCY_MAX_US))
        self._interval.record_value(min(latency_us, LATENCY_MAX_US))
        payload = None
        if status in ("200", "201", "202"):
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError:
                status = "bad_body"
        self.ledger.request(status, events, retry=attempt > 1 and not resend, resend=resend)
        return status, payload

    async def _register(self, batch: Batch, endpoint_id: str, body: dict[str, Any]) -> None:
        """Amplify JS's UpdateEndpoint before a device's first events; retried
        like any SDK call. Events are sent even if it fails in the end."""
        path = endpoint_path(self.plan.app_id, endpoint_id)
        url = URL(self._sdk.base + path, encoded=True)
        raw = orjson.dumps(body)
        loop = asyncio.get_running_loop()
        for attempt in range(1, self.plan.max_attempts + 1):
            status, _ = await self._request(
                batch.profile,
                "PUT",
                path,
                url,
                raw,
                invocation_id=f"{batch.invocation_id}-register",
                attempt=attempt,
                started=loop.time(),
                events=0,
            )
            if status not in RETRIABLE:
                return
            await asyncio.sleep(self._backoff_s(attempt))

    async def _send(self, batch: Batch, due: float) -> None:
        """A batch until each event is decided (or attempts run out), then
        its resend, if it has one."""
        loop = asyncio.get_running_loop()
        for endpoint_id, body in batch.register:
            await self._register(batch, endpoint_id, body)
        ledger = self.ledger
        pending: Pending = ledger.open(batch)
        sent: list[str] = list(batch.types)
        raw = batch.body()
        attempt, started = 1, due
        while True:
            status, payload = await self._request(
                batch.profile,
                "POST",
                self._events_path,
                self._events_url,
                raw,
                invocation_id=batch.invocation_id,
                attempt=attempt,
                started=started,
                events=len(sent),
            )
            if payload is not None:
                ledger.answer(pending, payload.get("Results") if isinstance(payload, dict) else None, sent)
            elif status not in RETRIABLE:
                ledger.refuse(pending)
            if not pending:
                break
            if attempt >= self.plan.max_attempts:
                ledger.give_up(pending)
                break
            await asyncio.sleep(self._backoff_s(attempt))
            attempt += 1
            sent = list(pending.undecided)
            raw = batch.body(pending.undecided) if len(sent) < len(batch.types) else batch.body()
            started = loop.time()
        if batch.resend:
            resent = batch.body()
            status, payload = await self._request(
                batch.profile,
                "POST",
                self._events_path,
                self._events_url,
                resent,
                invocation_id=batch.invocation_id,
                attempt=attempt + 1,
                started=loop.time(),
                events=len(batch.types),
                resend=True,
            )
            if isinstance(payload, dict):
                # Counts the answers; every event was decided already.
                ledger.answer(pending, payload.get("Results"), batch.types)

    async def _sender(self) -> None:
        loop = asyncio.get_running_loop()
        plan = self.plan
        interval = None if plan.rate is None else plan.batch_size / plan.rate
        end = self._t0 + plan.duration_s
        while True:
            if interval is None:
                due = loop.time()
            else:
                due = self._t0 + self._slot * interval
                self._slot += 1
            if due >= end:
                return
            batch = self._traffic.next_batch(self._wall_ms(due))
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._send(batch, due)

    def snapshot(self, *, done: bool = False, cpu_s: float = 0.0) -> Snapshot:
        loop = asyncio.get_running_loop()
        interval = self._interval.encode()
        self._interval.reset()
        return Snapshot(
            index=self.plan.index,
            elapsed_s=loop.time() - self._t0,
            tally=self.ledger.tally.to_dict(),
            interval=interval,
            in_flight=self.in_flight,
            done=done,
            histogram=self.histogram.encode() if done else b"",
            cpu_s=cpu_s,
            extra={"credential_refreshes": self.refreshes},
        )

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(self.plan.report_interval_s)
            self._report(self.snapshot())

    async def _refresher(self) -> None:
        """New temporary credentials for the plan's identity before the
        current ones expire; devices sign with them from then on. On a
        connection of its own: the senders keep theirs busy, and would
        starve it (as Amplify's credentials fetch is separate, too)."""
        key, identity_id = self.plan.device_key, self.plan.identity_id
        if key is None or identity_id is None or key.refresh_at_s() is None:
            return
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.plan.timeout_s)) as session:
            await self._refresh(session, key, identity_id)

    async def _refresh(self, session: aiohttp.ClientSession, key: Key, identity_id: str) -> None:
        while True:
            refresh_at = key.refresh_at_s()
            if refresh_at is None:
                return
            wait = refresh_at - time.time()
            if wait > 0:
                await asyncio.sleep(wait)  # until the credentials near their expiry
            try:
                key = await credentials.temporary(session, self._sdk.base, identity_id)
            except (CredentialsError, aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(REFRESH_RETRY_S)
                continue
            self._sdk.use_device_key(key)
            self.refreshes += 1

    async def run(self) -> Snapshot:
        plan = self.plan
        loop = asyncio.get_running_loop()
        gc.freeze()  # the devices live as long as the run
        gc.set_threshold(GC_GEN0_THRESHOLD)
        connector = aiohttp.TCPConnector(limit=plan.concurrency, limit_per_host=plan.concurrency)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=plan.timeout_s),
            skip_auto_headers=("User-Agent",),
        ) as session:
            self._session = session
            wait = plan.start_at - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            cpu = time.process_time()
            self._t0 = loop.time()
            self._wall_offset = time.time() - self._t0
            reporter = asyncio.create_task(self._reporter())
            refresher = asyncio.create_task(self._refresher())
            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(plan.concurrency):
                        group.create_task(self._sender())
            finally:
                for task in (reporter, refresher):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            return self.snapshot(done=True, cpu_s=time.process_time() - cpu)


async def drive(plan: Plan, report: Callable[[Snapshot], None]) -> Snapshot:
    """Run one plan; ``report`` gets a Snapshot every ``report_interval_s``."""
    return await Driver(plan, report).run()
