"""The edge and its HTTP ceiling, measured over HTTP for the write-path bench:
the same PutEvents bodies, the same aiohttp client with keep-alive
connections, whether the server is the canned ceiling or `ingest edge`; CPU
counted for the server's process only. aiohttp comes with the dev extras."""

from __future__ import annotations

from pathlib import Path

from bench.support import Result, cpu_seconds, launched, timed


async def drive(
    url: str, bodies: list[bytes], seconds: float, concurrency: int, pid: int
) -> tuple[int, float, float]:
    """POST ``bodies`` round-robin to ``url`` for ``seconds`` after a short
    warm-up; → (events accepted, seconds, CPU-seconds of process ``pid``)."""
    import aiohttp  # dev extra: only the benchmark drives HTTP

    connector = aiohttp.TCPConnector(limit=concurrency)
    index = 0
    async with aiohttp.ClientSession(
        connector=connector, headers={"Content-Type": "application/json"}
    ) as session:

        async def step() -> int:
            nonlocal index
            raw = bodies[index % len(bodies)]
            index += 1
            async with session.post(url, data=raw) as response:
                payload = await response.read()
            if response.status != 202:
                raise RuntimeError(f"server answered {response.status}: {payload[:200]!r}")
            return payload.count(b'"Accepted"') - 1

        await timed(min(1.0, seconds / 5), step, concurrency)  # warm up connections and caches
        cpu = cpu_seconds(pid)
        events, elapsed = await timed(seconds, step, concurrency)
        return events, elapsed, cpu_seconds(pid) - cpu


async def create_app(base: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/apps", json={"Name": "bench"}) as response:
            return str((await response.json())["Id"])


async def bench_http(
    name: str,
    argv: list[str],
    env: dict[str, str],
    path: str,
    bodies: list[bytes],
    seconds: float,
    concurrency: int,
    log: Path,
) -> Result:
    """Start ``argv`` (it writes a status file, :mod:`ingest.launch`), then
    drive ``path`` on it; ``{app}`` in the path becomes a new app's ID."""
    async with launched(argv, env, log) as server:
        if "{app}" in path:
            path = path.replace("{app}", await create_app(server.url))
        events, elapsed, cpu = await drive(f"{server.url}{path}", bodies, seconds, concurrency, server.pid)
        return Result(name, events, elapsed, cpu)
