"""The edge and its HTTP ceiling, measured over HTTP for the write-path bench:
the same PutEvents bodies, the same aiohttp client with keep-alive
connections, every request SigV4-signed as an SDK signs it (the load
harness's signer), whether the server is the canned ceiling (which checks
nothing) or `ingest edge` (which verifies each signature); CPU counted for
the server's process only. aiohttp comes with the dev extras."""

from __future__ import annotations

import time
from pathlib import Path

from bench.support import Client, Result, cpu_seconds, launched, signer, timed
from load.credentials import Key
from load.sigv4 import CONTENT_TYPE

# The canned server verifies nothing; the client signs anyway, so both
# measurements pay the same client work.
UNCHECKED = Key("AKIABENCHCANNED000", "not-checked")


async def drive(
    base: str, path: str, bodies: list[bytes], seconds: float, concurrency: int, pid: int, key: Key
) -> tuple[int, float, float, float]:
    """POST ``bodies`` round-robin to ``path`` on ``base``, signed with
    ``key``, for ``seconds`` after a short warm-up; → (events accepted,
    seconds, CPU-seconds of process ``pid``, p99 request latency in seconds)."""
    import aiohttp  # dev extra: only the benchmark drives HTTP

    signing = signer(base, key)
    url = base + path
    connector = aiohttp.TCPConnector(limit=concurrency)
    index = 0
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as session:

        async def step() -> int:
            nonlocal index
            raw = bodies[index % len(bodies)]
            index += 1
            headers = signing.sign("POST", path, raw, epoch_s=int(time.time()))
            headers["Content-Type"] = CONTENT_TYPE
            started = time.perf_counter()
            async with session.post(url, data=raw, headers=headers) as response:
                payload = await response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 202:
                raise RuntimeError(f"server answered {response.status}: {payload[:200]!r}")
            return payload.count(b'"Accepted"') - 1

        await timed(min(1.0, seconds / 5), step, concurrency)  # warm up connections and caches
        latencies.clear()
        cpu = cpu_seconds(pid)
        events, elapsed = await timed(seconds, step, concurrency)
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99)] if latencies else 0.0
        return events, elapsed, cpu_seconds(pid) - cpu, p99


async def create_app(base: str, key: Key) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        status, created = await Client(session, base, key).call("POST", "/v1/apps", {"Name": "bench"})
        if status != 201:
            raise RuntimeError(f"CreateApp answered {status}: {created}")
        return str(created["Id"])


async def bench_http(
    name: str,
    argv: list[str],
    env: dict[str, str],
    path: str,
    bodies: list[bytes],
    seconds: float,
    concurrency: int,
    log: Path,
    key: Key = UNCHECKED,
) -> Result:
    """Start ``argv`` (it writes a status file, :mod:`ingest.launch`), then
    drive ``path`` on it signed with ``key``; ``{app}`` in the path becomes a
    new app's ID."""
    async with launched(argv, env, log) as server:
        if "{app}" in path:
            path = path.replace("{app}", await create_app(server.url, key))
        events, elapsed, cpu, p99 = await drive(
            server.url, path, bodies, seconds, concurrency, server.pid, key
        )
        return Result(name, events, elapsed, cpu, p99_s=p99)
