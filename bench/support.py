"""What the worker benchmarks share: producing records already in Kafka,
timing a worker's drain of them, a PostgreSQL schema of their own, and
`ingest run` in its own process for freshness."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from ingest.kafka import clients
from ingest.kafka.broker import free_port
from ingest.settings import Settings
from ingest.workers.consumer import Worker

# How often the drain is checked: reading a counter walks the registry, and
# at 5 ms that took 4 % of the worker's CPU; 20 ms errs under 1 % on a
# drain of seconds.
POLL_S = 0.02


async def produce(bootstrap: str, settings: Settings, records: Sequence[tuple[str, bytes, bytes]]) -> None:
    """(topic, key, value) records, a thousand acknowledged at a time."""
    producer = clients.producer(settings, bootstrap, idempotence=False)
    await producer.start()
    try:
        for start in range(0, len(records), 1000):
            futures = [
                await producer.send(topic, value, key=key)
                for topic, key, value in records[start : start + 1000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def time_drain(worker: Worker[Any], done: Callable[[], float], count: int) -> tuple[float, float]:
    """Run ``worker`` until ``done()`` (records it has finished) reaches
    ``count``, timed from its first finished record (the group join is not
    timed); → (records/s, CPU-ms of this process per 1,000 records)."""
    task = asyncio.create_task(worker.run())
    try:
        while done() == 0:
            if task.done():
                task.result()
            await asyncio.sleep(POLL_S)
        started, cpu = time.perf_counter(), time.process_time()
        first = done()
        while done() < count:
            if task.done():
                task.result()
            await asyncio.sleep(POLL_S)
        elapsed, used = time.perf_counter() - started, time.process_time() - cpu
        if first == count:
            raise RuntimeError(f"{count} records were applied before the first poll: time more of them")
    finally:
        worker.stop()
        await task
    return (count - first) / elapsed, used / (count - first) * 1_000_000


@contextlib.asynccontextmanager
async def postgres_schema(url: str) -> AsyncIterator[str]:
    """A fresh schema, dropped after; → a URL whose search_path is it."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield f"{url}{'&' if '?' in url else '?'}search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def _ready(session: Any, base: str) -> bool:
    import aiohttp  # dev extra

    try:
        async with session.get(f"{base}/readyz") as response:
            return bool(response.status == 200)
    except aiohttp.ClientError:
        return False  # not listening yet


@contextlib.asynccontextmanager
async def ingest_run(data_dir: Path) -> AsyncIterator[tuple[Any, str, str]]:
    """`ingest run` (embedded broker, SQLite under ``data_dir``) in its own
    process, ready; → (an aiohttp session, its base URL, a new app's ID)."""
    import aiohttp  # dev extra

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")} | {
        "INGEST_PORT": str(port),
        "INGEST_DATA_DIR": str(data_dir),
        "INGEST_LOG_LEVEL": "WARNING",
    }
    await asyncio.to_thread(functools.partial(data_dir.mkdir, parents=True, exist_ok=True))
    with (data_dir / "ingest.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ingest", "run", env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while not await _ready(session, base):
                if process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ingest run did not become ready; see {data_dir / 'ingest.log'}")
                await asyncio.sleep(0.05)  # polling a process that is starting
            async with session.post(f"{base}/v1/apps", json={"Name": "fresh"}) as response:
                app_id = (await response.json())["Id"]
            yield session, base, app_id
    finally:
        process.terminate()
        await process.wait()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
