"""`python -m bench --part overload`: the edge under four times the load it
can serve. In one run: `ingest edge` (on the embedded broker) is saturated
closed-loop to learn its rate, then offered ``--factor`` (4) times that rate
open-loop, each request sent at its due time on a connection of its own
when none is free; each answer is timed from the moment it was sent. The
report gives, per status, how many and how fast, and the edge's RSS before,
at the end of the overload and after it.

The claim it checks (the hardening issue): admission refuses in O(1), so a
429 comes back within milliseconds while accepted requests keep a bounded
p99, and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

from bench.edge import create_app, drive
from bench.support import EDGE_ARGV, edge_env, issue_key, launched, signer
from bench.write import EVENTS_PER_BODY, make_body
from ingest.kafka import clients
from ingest.kafka.broker import EmbeddedBroker
from ingest.settings import Settings
from load.credentials import Key
from load.embedded import rss_kb
from load.sigv4 import CONTENT_TYPE

MAX_CONNECTIONS = 4096


def rss_mib(pid: int) -> float:
    return rss_kb(pid) / 1024


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class _Exchange(asyncio.Protocol):
    """One keep-alive connection sending prepared request bytes and reading
    just enough of each answer (status, Content-Length) to time it: a client
    cheap enough to offer several times what the edge serves on one machine."""

    def __init__(self, idle: list[_Exchange], closed: asyncio.Event) -> None:
        self._idle = idle
        self._closed = closed
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[str] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(type(exc).__name__ if exc else "closed")
        if self in self._idle:
            self._idle.remove(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self._buffer[:head_end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
        if len(self._buffer) < head_end + 4 + length:
            return
        status = self._buffer[9:12].decode()
        self._buffer = self._buffer[head_end + 4 + length :]
        if b"connection: close" in head and self._transport is not None:
            self._transport.close()
        elif self._transport is not None:
            self._idle.append(self)
        if self._answer is not None:
            self._answer.set_result(status)

    async def send(self, request: bytes) -> str:
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._answer


async def offer(
    base: str, path: str, bodies: list[bytes], rate: float, seconds: float, key: Key
) -> dict[str, list[float]]:
    """Requests at ``rate`` per second for ``seconds``, open loop, on idle
    connections or new ones; → latencies by status."""
    signing = signer(base, key)
    host, port = base.split("://", 1)[1].rsplit(":", 1)
    # Signed once each (a signature holds for minutes), the bytes built once:
    # the client's CPU goes to sending, so the offered rate reaches the edge.
    prepared = []
    for raw in bodies:
        headers = signing.sign("POST", path, raw, epoch_s=int(time.time()))
        headers["Content-Type"] = CONTENT_TYPE
        headers["Content-Length"] = str(len(raw))
        headers.setdefault("Host", f"{host}:{port}")
        lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
        prepared.append(("\r\n".join(lines) + "\r\n\r\n").encode() + raw)
    latencies: dict[str, list[float]] = defaultdict(list)
    loop = asyncio.get_running_loop()
    idle: list[_Exchange] = []
    closed = asyncio.Event()
    opened = 0

    async def one(request: bytes) -> None:
        nonlocal opened
        started = time.perf_counter()
        try:
            if idle:
                exchange = idle.pop()
            elif opened >= MAX_CONNECTIONS:
                status = "client_full"
                latencies[status].append(0.0)
                return
            else:
                opened += 1
                _, exchange = await loop.create_connection(lambda: _Exchange(idle, closed), host, int(port))
            status = await asyncio.wait_for(exchange.send(request), 30)
        except (OSError, TimeoutError) as exc:
            status = type(exc).__name__
        latencies[status].append(time.perf_counter() - started)

    start = loop.time()
    tasks = []
    n = 0
    while (due := start + n / rate) < start + seconds:
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # open loop: the next request's due time
        tasks.append(asyncio.create_task(one(prepared[n % len(prepared)])))
        n += 1
    await asyncio.gather(*tasks)
    for exchange in idle:
        if exchange._transport is not None:
            exchange._transport.close()
    return latencies


async def overload_run(settings: Settings, *, seconds: float, factor: float, in_flight: int) -> list[str]:
    """One edge at ``INGEST_MAX_IN_FLIGHT_REQUESTS=in_flight``: saturated,
    then overloaded; → the report's lines for it."""
    bodies = [make_body(seed) for seed in range(1, 33)]
    work = Path(settings.data_dir) / f"bench-overload-{in_flight}"
    work.mkdir(parents=True, exist_ok=True)
    async with EmbeddedBroker(log_path=work / "tansu.log") as broker:
        await clients.ensure_topics(settings, broker.bootstrap)
        env = edge_env(broker.bootstrap, work, INGEST_MAX_IN_FLIGHT_REQUESTS=str(in_flight))
        key = await asyncio.to_thread(issue_key, env)
        async with launched(list(EDGE_ARGV), env, work / "edge.log") as edge:
            path = f"/v1/apps/{await create_app(edge.url, key)}/events"
            events, elapsed, _, p99 = await drive(edge.url, path, bodies, seconds, 32, edge.pid, key)
            saturation = events / EVENTS_PER_BODY / elapsed
            before = rss_mib(edge.pid)
            offered = saturation * factor
            latencies = await offer(edge.url, path, bodies, offered, seconds, key)
            during = rss_mib(edge.pid)
            await asyncio.sleep(2.0)
            after = rss_mib(edge.pid)
    lines = [
        f"`INGEST_MAX_IN_FLIGHT_REQUESTS={in_flight}`: "
        f"`ingest edge` saturated closed-loop (32 connections, {EVENTS_PER_BODY}-event bodies): "
        f"{saturation:,.0f} requests/s, p99 {p99 * 1000:.1f} ms. Then offered {factor:g}x that, "
        f"{offered:,.0f} requests/s open-loop for {seconds:g} s:",
        "",
        "| answer | requests | p50 | p99 | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for status, values in sorted(latencies.items()):
        lines.append(
            f"| {status} | {len(values):,} | {percentile(values, 0.5) * 1000:.1f} ms | "
            f"{percentile(values, 0.99) * 1000:.1f} ms | {max(values) * 1000:.1f} ms |"
        )
    lines += [
        "",
        f"Edge RSS: {before:.0f} MiB before, {during:.0f} MiB at the end, {after:.0f} MiB 2 s later.",
    ]
    return lines


async def bench_overload(settings: Settings, *, seconds: float, factor: float) -> int:
    """The default in-flight limit, then 512 (the default before it was
    chosen by this measurement), each in its own edge."""
    lines: list[str] = []
    for in_flight in (Settings().max_in_flight_requests, 512):
        lines += await overload_run(settings, seconds=seconds, factor=factor, in_flight=in_flight)
        lines.append("")
    print("\n".join(lines))
    return 0
