"""What the benches share: a measurement's result and its clock, producing
records already in Kafka, timing a worker's drain of them, a fresh store (a
PostgreSQL schema of its own), `ingest …` in its own process, started by
:func:`ingest.launch.launch`, and HTTP calls to it SigV4-signed as boto3
signs them (the load harness's signer, :mod:`load.sigv4`), with the admin key
`ingest run` wrote or one `ingest keys create` issued."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
import orjson
from prometheus_client import CollectorRegistry

from ingest.kafka import clients
from ingest.launch import Launched, launch
from ingest.settings import Settings
from ingest.store.backends import open_store
from ingest.store.base import Store
from load.credentials import Key, from_file
from load.sigv4 import CONTENT_TYPE, Signer, canonical_query

T = TypeVar("T")

REGION = "us-east-1"
CLI_TIMEOUT_S = 60.0

# How often the drain is checked (:func:`counted`); 20 ms errs under 1 % on a
# drain of seconds.
POLL_S = 0.02


class Drains(Protocol):
    """A worker a drain is timed on: the store workers' ``Worker`` and the
    ``StreamWorker`` alike."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Result:
    """One row of a write-path report: ``events`` in ``seconds``, and the CPU
    the measured process spent on them when known."""

    name: str
    events: int
    seconds: float
    cpu_s: float | None = None
    note: str = ""
    # Request latency at the 99th percentile, for rows driven over HTTP.
    p99_s: float | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def per_cpu(self) -> float | None:
        return None if not self.cpu_s else self.events / self.cpu_s


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed(seconds: float, step: Callable[[], Awaitable[int]], concurrency: int) -> tuple[int, float]:
    """``concurrency`` tasks calling ``step`` (→ events it did) for
    ``seconds``; → (events, seconds taken)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    total = 0

    async def worker() -> None:
        nonlocal total
        while loop.time() < deadline:
            # Not `total += await step()`: that reads `total` before the await
            # and loses the other workers' additions.
            done = await step()
            total += done

    started = loop.time()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return total, loop.time() - started


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


def counted(
    registry: CollectorRegistry, counter: str, label: str, values: Iterable[str]
) -> Callable[[], float]:
    """A reader of the sum of ``counter`` (its ``_total`` samples) over the
    children whose ``label`` is one of ``values``, for :func:`time_drain`'s
    ``done``. It collects that one metric once: ``get_sample_value``
    collects the whole registry for each sample it reads, and the KPI
    bench's five outcomes read that way took 352 µs a check against 11 µs,
    on the event loop of the very worker being timed (py-spy put 7 % of a
    200,000-event drain's samples there)."""
    name = f"{counter}_total"
    one = registry.restricted_registry([name])
    wanted = frozenset(values)

    def total() -> float:
        return sum(
            sample.value
            for metric in one.collect()
            for sample in metric.samples
            if sample.name == name and sample.labels.get(label) in wanted
        )

    return total


async def time_drain(worker: Drains, done: Callable[[], float], count: int) -> tuple[float, float]:
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


async def batches_rate(
    apply: Callable[[Sequence[T]], Awaitable[object]], items: Sequence[T], batch: int
) -> float:
    """Items/s when ``apply`` (a store's batch method) is given ``items``
    ``batch`` at a time, as a worker cuts them: a store's ceiling."""
    started = time.perf_counter()
    for start in range(0, len(items), batch):
        await apply(items[start : start + batch])
    return len(items) / (time.perf_counter() - started)


@contextlib.asynccontextmanager
async def fresh_store(url: str | None, data_dir: Path) -> AsyncIterator[tuple[Store, str | None]]:
    """A new, empty store, closed (and its schema dropped) after: SQLite under
    ``data_dir``, or PostgreSQL at ``url`` in a schema of its own; → (the
    store, the URL it was opened with)."""
    async with contextlib.AsyncExitStack() as stack:
        if url is not None:
            url = await stack.enter_async_context(postgres_schema(url))
        store = await open_store(url, data_dir=data_dir)
        stack.push_async_callback(store.close)
        yield store, url


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


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without INGEST_* settings, plus ``extra``:
    a bench decides every setting of the processes it starts."""
    # Each process's probes on a free port of its own (9090 by default).
    return (
        {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
        | {"INGEST_PROBE_PORT": "0"}
        | extra
    )


# `ingest edge` on a free loopback port, as every bench that starts one runs it.
EDGE_ARGV = (sys.executable, "-m", "ingest", "edge", "--host", "127.0.0.1", "--port", "0")


def edge_env(bootstrap: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The settings of an `ingest edge` a bench starts on a broker of its
    own (Tansu: no idempotent producer), its store under ``data_dir``, its
    log quiet; ``extra`` adds or overrides."""
    return clean_env(
        INGEST_KAFKA_BOOTSTRAP=bootstrap,
        INGEST_KAFKA_IDEMPOTENCE="false",
        INGEST_DATA_DIR=str(data_dir),
        INGEST_LOG_LEVEL="WARNING",
        **extra,
    )


@contextlib.asynccontextmanager
async def launched(argv: list[str], env: dict[str, str], log: Path) -> AsyncIterator[Launched]:
    """``argv`` (an ``ingest`` role, or a server writing the same status
    file) in its own process, ready; SIGTERM and waited for after."""
    started = await asyncio.to_thread(functools.partial(launch, argv, env=env, log_path=log))
    try:
        yield started
    finally:
        await asyncio.to_thread(started.stop)


def signer(base: str, key: Key) -> Signer:
    """Signs requests to ``base`` (``http://host:port``) with ``key``."""
    return Signer(
        access_key_id=key.access_key_id,
        secret_access_key=key.secret_access_key,
        region=REGION,
        host=base.split("://", 1)[1],
        session_token=key.session_token,
    )


def issue_key(env: dict[str, str], name: str = "bench") -> Key:
    """`ingest keys create --scope admin` on the store and master key that
    ``env``'s settings name, before the process that verifies starts. Blocking."""
    done = subprocess.run(  # noqa: S603 - our own CLI, arguments we built
        [sys.executable, "-m", "ingest", "keys", "create", "--name", name, "--scope", "admin"],
        env=env,
        capture_output=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ingest keys create: {done.stderr.decode(errors='replace')[-1000:]}")
    created = orjson.loads(done.stdout)
    return Key(created["AccessKeyId"], created["SecretAccessKey"])


class Client:
    """An aiohttp session's calls to one server, each signed."""

    def __init__(self, session: Any, base: str, key: Key) -> None:
        self.session = session
        self.base = base
        self._signer = signer(base, key)

    async def call(
        self, method: str, path: str, payload: Any = None, query: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status, the parsed JSON answer or None)."""
        from yarl import URL  # comes with aiohttp, a dev extra

        body = b"" if payload is None else orjson.dumps(payload)
        headers = self._signer.sign(method, path, body, epoch_s=int(time.time()), query=query)
        if body:
            headers["Content-Type"] = CONTENT_TYPE
        url = URL(self.base + path + (f"?{canonical_query(query)}" if query else ""), encoded=True)
        async with self.session.request(method, url, data=body, headers=headers) as response:
            raw = await response.read()
            return response.status, orjson.loads(raw) if raw else None


@contextlib.asynccontextmanager
async def ingest_run(data_dir: Path) -> AsyncIterator[tuple[Client, str]]:
    """`ingest run` (embedded broker, SQLite under ``data_dir``) in its own
    process, ready; → (a signed client with the admin key it wrote to
    ``{data_dir}/credentials``, a new app's ID)."""
    import aiohttp  # dev extra

    await asyncio.to_thread(functools.partial(data_dir.mkdir, parents=True, exist_ok=True))
    argv = [sys.executable, "-m", "ingest", "run", "--port", "0", "--data-dir", str(data_dir)]
    async with launched(argv, clean_env(INGEST_LOG_LEVEL="WARNING"), data_dir / "ingest.log") as run:
        key = await asyncio.to_thread(from_file, data_dir / "credentials")
        async with aiohttp.ClientSession() as session:
            client = Client(session, run.url, key)
            status, created = await client.call("POST", "/v1/apps", {"Name": "fresh"})
            if status != 201:
                raise RuntimeError(f"CreateApp answered {status}: {created}")
            yield client, str(created["Id"])


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
