"""Short repeats of a report's measurements under py-spy: the profiles
BENCHMARKS.md shows for the targets not met.

Each profiles the process its row measures: the edge process(es) of a
running `ingest run` under the row's load (:func:`run`), `ingest edge` alone
on a fresh broker (:func:`edge_alone`), the pure core's loop (:func:`core`),
or a worker's bench part, whose process runs the worker (:func:`bench_part`).
When py-spy cannot profile, the result says why instead of failing the run.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from pathlib import Path

from bench.support import EDGE_ARGV, edge_env, issue_key, launched
from ingest.kafka import clients
from ingest.kafka.broker import EmbeddedBroker
from ingest.settings import Settings
from load import chaos as faults
from load import cpu, profile
from load.harness import Options, execute
from load.targets import Target

# The load outlasts the profile: py-spy takes a moment to attach.
LOAD_BEYOND_PROFILE_S = 3.0
BENCH_TIMEOUT_S = 900.0
# The pure core's loop, as `python -m bench --part write` measures it, for
# ``seconds`` (argv[1]).
CORE_LOOP = (
    "import sys; from bench.write import BODIES, bench_core, make_body; "
    "bench_core([make_body(s) for s in range(1, BODIES + 1)], float(sys.argv[1]))"
)


@dataclass(frozen=True)
class Profiled:
    """A profile's summary, or why py-spy could not take it."""

    title: str
    what: str
    summary: profile.Summary | None = None
    failure: str | None = None


class _Opened:
    """A harness window that only says when the first request is about to go."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def start(self) -> None:
        self.event.set()

    def end(self) -> None:
        pass


async def _profiled(title: str, what: str, collapsed: Awaitable[str]) -> Profiled:
    try:
        text = await collapsed
    except profile.ProfileError as exc:
        return Profiled(title, what, failure=exc.reason)
    return Profiled(title, what, summary=profile.summarise(text))


async def _during(options: Options, pids: list[int], seconds: float, work: Path) -> str:
    """Run the load ``options`` describes and profile ``pids`` for ``seconds``
    from its first request; the load is waited for either way."""
    opened = _Opened()
    load = asyncio.create_task(execute(options, out=None, measured=opened))
    waiting = asyncio.create_task(opened.event.wait())
    try:
        await asyncio.wait((load, waiting), return_when=asyncio.FIRST_COMPLETED)
        if load.done():
            load.result()  # the load failed before sending: its error, not py-spy's
        return await profile.attach(pids, seconds, work)
    finally:
        waiting.cancel()
        await load


def edges(root: int) -> tuple[list[int], str]:
    """The edge processes of the `ingest run` at ``root``, and what they are:
    its `ingest edge` children, else children with its own command line
    (forked), else itself."""
    processes = cpu.sample(root).processes.values()
    for role in (cpu.EDGE, cpu.RUN_CHILD):
        pids = [p.pid for p in processes if p.role == role]
        if pids:
            return pids, f"{len(pids)} of {role} (pid {', '.join(map(str, pids))}, merged)"
    return [root], f"{cpu.RUN} (pid {root}), which serves the edge itself"


async def run(
    pipeline: faults.Pipeline, options: Options, *, seconds: float, work: Path, title: str, load: str
) -> Profiled:
    """The edge of ``pipeline`` under ``options``' load (unaccounted) again."""
    assert pipeline.run is not None, "not started"
    pids, who = edges(pipeline.run.pid)
    repeat = replace(options, verify=False, duration_s=seconds + LOAD_BEYOND_PROFILE_S)
    return await _profiled(
        title,
        f"{who}, {seconds:g} s during a repeat of the row ({load})",
        _during(repeat, pids, seconds, work),
    )


async def edge_alone(*, seconds: float, work: Path, seed: int) -> Profiled:
    """``ingest edge`` on a fresh embedded broker under the harness's closed
    loop, as ``python -m bench --part write`` runs it."""
    settings = Settings.from_env()
    data = work / "edge"
    await asyncio.to_thread(data.mkdir, parents=True, exist_ok=True)
    async with EmbeddedBroker(log_path=work / "edge-tansu.log") as broker:
        await clients.ensure_topics(settings, broker.bootstrap)
        env = edge_env(broker.bootstrap, data)
        # The key exists before the edge starts: its first key ring load has it.
        key = await asyncio.to_thread(issue_key, env)
        async with launched(list(EDGE_ARGV), env, work / "edge.log") as edge:
            options = Options(
                url=edge.url,
                key=key,
                data_dir=str(data),
                profile="boto3",
                verify=False,
                seed=seed,
                duration_s=seconds + LOAD_BEYOND_PROFILE_S,
            )
            return await _profiled(
                "`ingest edge` alone",
                f"`ingest edge` (pid {edge.pid}) on a fresh embedded broker, {seconds:g} s of the "
                "harness's closed loop (32 connections, PutEvents of 100 events signed with the admin "
                "key, as the bench's are)",
                _during(options, [edge.pid], seconds, work),
            )


async def core(*, seconds: float, work: Path) -> Profiled:
    """The bench's pure-core loop in a process of its own."""
    return await _profiled(
        "the pure core (parse + validate + encode)",
        f"the bench's core loop in a process of its own, {seconds:g} s (and its imports)",
        profile.under([sys.executable, "-c", CORE_LOOP, str(seconds)], work, "core", BENCH_TIMEOUT_S),
    )


# What a worker part's process does beside the drain it is profiled for.
BESIDE_STORE = "producing the records, the store ceiling and the Python steps alone"
BESIDE_STREAMS = (
    "producing the records, the decode + convert ceiling and the KPI worker's drain (one round: "
    "both stream drains, to the Kafka topic and to kinesalite, in this one process)"
)


async def bench_part(
    part: str,
    *,
    records: int,
    postgres_url: str | None,
    work: Path,
    extra: tuple[str, ...] = (),
    beside: str = BESIDE_STORE,
) -> Profiled:
    """``python -m bench --part PART`` (and ``extra`` arguments) from start
    to exit: its worker runs in it, beside what ``beside`` says."""
    pg = ["--postgres", postgres_url] if postgres_url else []
    argv = [sys.executable, "-m", "bench", "--part", part, "--records", str(records), *pg, *extra]
    return await _profiled(
        f"`python -m bench --part {part}`",
        f"the bench's own process from start to exit, {records:,} records"
        f"{' per store' if pg else ', SQLite only'}: the worker's drain runs in it, beside {beside}",
        profile.under(argv, work, part, BENCH_TIMEOUT_S),
    )


def section(verdicts: list[Target], profiles: dict[str, Profiled]) -> list[str]:
    """BENCHMARKS.md's profiles, each under the targets it is for."""
    if not profiles:
        return []
    lines = [
        "## Profiles of the targets not met",
        "",
        "py-spy (`record --format raw`, collapsed stacks) of the process each row measures, during a",
        "repeat of that measurement; the top functions (`file:function`) by own time (the innermost",
        "frame) and by inclusive time (anywhere on the stack), as shares of the samples, each thread",
        "counted on its own.",
    ]
    for key, found in profiles.items():
        why = [t.measure for t in verdicts if t.profile == key and t.verdict == "not met"]
        lines += ["", f"### {found.title}", ""]
        lines.append(f"For: {'; '.join(why)}." if why else "For: no target missed (`--profile-all`).")
        lines += ["", f"Profiled: {found.what}.", ""]
        if found.summary is not None:
            lines += profile.markdown(found.summary)
        else:
            lines.append(f"No profile: py-spy failed ({found.failure}).")
    return lines
