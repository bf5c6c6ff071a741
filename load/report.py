"""`python -m load.report`: BENCHMARKS.md, every figure from one run here.

``scripts/benchmarks.sh`` is the command (it sets up the virtualenv and
PostgreSQL first; ``scripts/benchmarks.sh --quick`` checks the machinery in a
few minutes with every part at tiny durations, its figures meaningless).
In order, on this machine, one thing at a time:

1. ``python -m bench --part write``: the pure core, the HTTP ceiling (the edge's HTTP server
   answering a canned 202), the encode+produce ceiling (raw aiokafka producing
   the same Avro records) and ``ingest edge`` over HTTP;
2. the generator against the null server, one and two processes;
3. ``python -m bench --part overload``: ``ingest edge`` offered four times its
   saturation, at the default in-flight limit and at 512;
4. the load harness against one ``ingest run`` (warmed up first, until the
   workers have caught up: the workers' group join at start is not steady
   state): saturation (closed loop), then on the same run half of it open
   loop and half of it with 5 % re-sends and 1 % invalid events; then
   open-loop latency at 25, 50 and 75 % of saturation, each against an
   ``ingest run`` of its own warmed up at that rate; each row with
   end-to-end accounting; during saturation the CPU of ``ingest run``'s whole
   process tree (:mod:`load.cpu`) from the first request until the accounting
   matched, per role;
5. the same saturation row against a second ``ingest run`` with
   ``INGEST_EDGE_PROCESSES=0`` (everything in one interpreter; the first
   leaves the variable unset: the supervisor's default, an edge process per
   CPU and one process per worker);
6. ``--chaos`` at a quarter of saturation;
7. ``python -m bench --part endpoints`` and ``--part kpis`` (each worker's drain
   rate per store backend beside its ceiling, and freshness);
8. ``python -m bench --part streams``: one streams worker to a Kafka topic and
   to Kinesis (kinesalite) beside its decode+convert ceiling and the KPI
   worker's drain of the same records; ``--part segments``: a dimensional
   segment paged through the store at two app sizes, per store;
9. the targets (:mod:`load.targets`) from those figures, and for each one not
   met a py-spy profile (:mod:`load.profile`) of the process its row measures,
   during a short repeat of that measurement: the edge process(es) of
   ``ingest run`` at that load (taken in step 4, while it runs), ``ingest
   edge`` alone under the same closed loop, the pure core's loop, or the
   worker's bench part (for the streams part, one round of it).

The hand-written notes (profiles, history) come from ``load/benchmark-notes.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from load import chaos as faults
from load import cpu, credentials, repeats, targets
from load.harness import Options, execute
from load.targets import Target, WritePath

NOTES = Path(__file__).with_name("benchmark-notes.md")
SEED = 1
SHARES = (0.25, 0.5, 0.75)
EDGE_PROCESSES = "INGEST_EDGE_PROCESSES"
# The saturation row again against an `ingest run` of each of these, after
# the default's rows: one edge process, then everything in one interpreter.
VARIANTS = (("1", "one edge process"), ("0", "one interpreter"))
SATURATION = "saturation (closed loop, 32 connections)"
# Rows on the saturation row's `ingest run`, after it.
AGED = "open loop at 50% of saturation, after the saturation row on its `ingest run`"
RESENT = "50 %, 5 % of batches re-sent, 1 % invalid events, after the saturation row on its `ingest run`"


@dataclass(frozen=True)
class Durations:
    """How long each part runs: the full report, or ``--quick``."""

    seconds: float = 5.0  # each `python -m bench --part write` measurement
    duration_s: float = 15.0  # each load row
    warmup_s: float = 5.0
    chaos_s: float = 30.0
    endpoint_records: int = 50_000
    kpi_records: int = 100_000
    # Kinesis on kinesalite takes about 5,000 events/s here: 50,000 is ten
    # seconds a round, three rounds taken in turn.
    stream_records: int = 50_000
    stream_rounds: int = 3
    # The segments part seeds a quarter of this and then all of it, per store.
    segment_records: int = 1_000_000
    # Endpoint definitions an import and an export job take (and a quarter
    # of it, for memory flat in the rows): the 1M.
    job_records: int = 1_000_000
    profile_s: float = 8.0
    profile_endpoint_records: int = 20_000
    profile_kpi_records: int = 40_000
    profile_stream_records: int = 20_000
    quick: bool = False


# Tiny but working: a worker bench needs a few polls of 5,000 records to time.
QUICK = Durations(
    seconds=0.5,
    duration_s=2.0,
    warmup_s=1.0,
    chaos_s=4.0,
    endpoint_records=20_000,
    kpi_records=20_000,
    stream_records=20_000,
    stream_rounds=1,
    segment_records=20_000,
    job_records=20_000,
    profile_s=2.0,
    profile_endpoint_records=20_000,
    profile_kpi_records=20_000,
    profile_stream_records=20_000,
    quick=True,
)


def _bench(*args: str) -> str:
    """A ``python -m bench`` part's report (stdout); its logs are dropped."""
    done = subprocess.run(  # noqa: S603 - our own command, fixed arguments
        [sys.executable, "-m", "bench", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"python -m bench {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return done.stdout.strip()


def _machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model or platform.machine()}), CPython {platform.python_version()}"


def _load_line(summary: dict[str, Any], what: str) -> str:
    lat = summary["latency_ms"]
    accounting = f"{summary['lost']} / {summary['duplicated']}" if summary.get("verified") else "not checked"
    return (
        f"| {what} | {summary['events_per_s']:,.0f} | {lat['p50']:.1f} | {lat['p95']:.1f} | "
        f"{lat['p99']:.1f} | {lat['max']:.1f} | {accounting} |"
    )


class TreeWindow:
    """A harness window (:class:`load.harness.Window`) that samples the CPU
    of ``root``'s process tree when it opens and when it closes."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.first = self.last = cpu.Sample(root, {})
        self.opened_at = self.closed_at = 0.0

    def start(self) -> None:
        self.first, self.opened_at = cpu.sample(self.root), time.monotonic()

    def end(self) -> None:
        self.last, self.closed_at = cpu.sample(self.root), time.monotonic()

    @property
    def seconds(self) -> float:
        return self.closed_at - self.opened_at


@dataclass(frozen=True)
class Saturated:
    """A saturation row and what ``ingest run``'s process tree spent on it."""

    summary: dict[str, Any]
    used: cpu.Measured


@dataclass
class Runs:
    """What the ``ingest run`` and ``--chaos`` rows gave."""

    rows: list[str] = field(default_factory=list)
    peak: float = 0.0
    p99_ms: dict[float, float] = field(default_factory=dict)
    saturated: list[Saturated] = field(default_factory=list)
    profiles: dict[str, repeats.Profiled] = field(default_factory=dict)


def _wanted(verdicts: list[Target], profile_all: bool) -> set[str]:
    """The measurements to profile: those of targets not met (all measured
    ones with ``profile_all``)."""
    return {
        t.profile
        for t in verdicts
        if t.profile and (t.verdict == "not met" or (profile_all and t.verdict == "met"))
    }


def _target(pipeline: faults.Pipeline) -> Options:
    """Load against ``pipeline``, signed with the admin key it wrote; devices'
    pools made on its data dir."""
    return Options(
        url=pipeline.url,
        key=credentials.from_file(pipeline.credentials_file),
        data_dir=str(pipeline.data_dir),
        seed=SEED,
    )


async def _saturate(pipeline: faults.Pipeline, target: Options, column: str, duration_s: float) -> Saturated:
    """The saturation row; ``column`` heads its figures in the CPU table."""
    assert pipeline.run is not None
    window = TreeWindow(pipeline.run.pid)
    summary = await execute(replace(target, duration_s=duration_s), out=None, measured=window)
    spent = cpu.spent(window.first, window.last)
    return Saturated(summary, cpu.Measured(column, int(summary["events_accepted"]), spent, window.seconds))


def _profile_wanted(write: WritePath, peak: float, p99_ms: dict[float, float], profile_all: bool) -> set[str]:
    """The ``ingest run`` profiles the targets decided so far call for."""
    verdicts = targets.evaluate(
        write,
        saturation=peak,
        p99_ms=p99_ms,
        endpoints={},
        kpis={},
        streams={},
        verified_runs=0,
        clean=True,
    )
    return _wanted(verdicts, profile_all)


async def _against_ingest_run(
    write: WritePath, durations: Durations, work: Path, *, profile_all: bool
) -> Runs:
    """The load rows against `ingest run` (edge processes by default, then
    one), the profiles of its targets not met, and the ``--chaos`` row.

    Each open-loop latency row runs against an `ingest run` of its own,
    warmed up at the row's rate: the memory engine keeps every batch and a
    fetch lists them all, so a row run after others on one broker carries
    their batches in its tail (the notes, "Latency and the run's age"). The
    saturation row's `ingest run` then takes the half-rate row again, to show
    that, and the row of re-sends and invalid events."""
    runs = Runs()
    d = durations
    pipeline = faults.Pipeline(work / "run", {EDGE_PROCESSES: None})
    try:
        await pipeline.start()
        target = _target(pipeline)
        # Accounted, so the warm-up's events are applied before the window opens.
        await execute(replace(target, duration_s=d.warmup_s), out=None)
        saturated = await _saturate(pipeline, target, "default (supervised)", d.duration_s)
        runs.saturated.append(saturated)
        runs.rows.append(_load_line(saturated.summary, SATURATION))
        runs.peak = peak = float(saturated.summary["events_per_s"])
        aged = await execute(replace(target, duration_s=d.duration_s, rate=0.5 * peak), out=None)
        aged_row = _load_line(aged, AGED)
        resent = await execute(
            replace(target, duration_s=d.duration_s, rate=0.5 * peak, retry_rate=0.05, invalid_rate=0.01),
            out=None,
        )
        resent_row = _load_line(resent, RESENT)
        if targets.RUN_SATURATION in _profile_wanted(write, peak, {}, profile_all):
            runs.profiles[targets.RUN_SATURATION] = await repeats.run(
                pipeline,
                target,
                seconds=d.profile_s,
                work=work,
                title="`ingest run` at saturation",
                load="closed loop, 32 connections",
            )
    finally:
        await pipeline.stop()
    for share in SHARES:
        fresh = faults.Pipeline(work / f"run-{share:.0%}", {EDGE_PROCESSES: None})
        try:
            await fresh.start()
            target = replace(_target(fresh), rate=share * peak)
            await execute(replace(target, duration_s=d.warmup_s), out=None)
            summary = await execute(replace(target, duration_s=d.duration_s), out=None)
            runs.rows.append(_load_line(summary, f"open loop at {share:.0%} of saturation"))
            runs.p99_ms[share] = float(summary["latency_ms"]["p99"])
            if targets.run_open(share) in _profile_wanted(write, peak, runs.p99_ms, profile_all):
                runs.profiles[targets.run_open(share)] = await repeats.run(
                    fresh,
                    target,
                    seconds=d.profile_s,
                    work=work,
                    title=f"`ingest run` at {share:.0%} of saturation",
                    load=f"open loop, {share * peak:,.0f} events/s",
                )
        finally:
            await fresh.stop()
    runs.rows += [aged_row, resent_row]
    for value, what in VARIANTS:
        other = faults.Pipeline(work / f"run-{value}", {EDGE_PROCESSES: value})
        try:
            await other.start()
            target = _target(other)
            await execute(replace(target, duration_s=d.warmup_s), out=None)
            column = f"`{EDGE_PROCESSES}={value}`"
            saturated = await _saturate(other, target, column, d.duration_s)
            runs.saturated.append(saturated)
            runs.rows.append(_load_line(saturated.summary, f"{SATURATION}, {column} ({what})"))
        finally:
            await other.stop()
    chaos = await execute(
        Options(chaos=True, duration_s=d.chaos_s, rate=0.25 * runs.peak, retry_rate=0.05, seed=SEED),
        out=None,
    )
    runs.rows.append(_load_line(chaos, "--chaos at 25 %: worker SIGKILLed and restarted, broker frozen 7 s"))
    return runs


async def _later_profiles(
    wanted: set[str], durations: Durations, postgres_url: str | None, work: Path
) -> dict[str, repeats.Profiled]:
    """The profiles of the bench rows' targets not met."""
    d = durations
    found: dict[str, repeats.Profiled] = {}
    if targets.EDGE_ALONE in wanted:
        found[targets.EDGE_ALONE] = await repeats.edge_alone(seconds=d.profile_s, work=work, seed=SEED)
    if targets.CORE in wanted:
        found[targets.CORE] = await repeats.core(seconds=d.profile_s, work=work)
    for key, records in (
        (targets.ENDPOINTS, d.profile_endpoint_records),
        (targets.KPIS, d.profile_kpi_records),
    ):
        if key in wanted:
            found[key] = await repeats.bench_part(key, records=records, postgres_url=postgres_url, work=work)
    if targets.STREAMS in wanted:
        found[targets.STREAMS] = await repeats.bench_part(
            targets.STREAMS,
            records=d.profile_stream_records,
            postgres_url=None,
            work=work,
            extra=("--rounds", "1"),
            beside=repeats.BESIDE_STREAMS,
        )
    return found


async def build(postgres_url: str | None, durations: Durations, *, profile_all: bool = False) -> str:
    d = durations
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    write = _bench("--part", "write", "--seconds", str(d.seconds))
    figures = WritePath.parse(write)
    one = await execute(Options(null_server=True, duration_s=d.duration_s, seed=SEED), out=None)
    two = await execute(
        Options(null_server=True, duration_s=d.duration_s, seed=SEED, processes=2, null_processes=1), out=None
    )
    overload = _bench("--part", "overload", "--seconds", str(d.seconds))
    # The `ingest run` rows keep the embedded broker in memory, as every run
    # before the durable default did, so they compare across runs; the
    # durable default's own figures are in the notes (load.embedded).
    os.environ["INGEST_EMBEDDED_STORAGE"] = "memory"
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        work = Path(tmp)
        runs = await _against_ingest_run(figures, d, work, profile_all=profile_all)
        pg = ["--postgres", postgres_url] if postgres_url else []
        endpoints = _bench("--part", "endpoints", "--records", str(d.endpoint_records), *pg)
        kpis = _bench("--part", "kpis", "--records", str(d.kpi_records), *pg)
        streams = _bench(
            "--part", "streams", "--records", str(d.stream_records), "--rounds", str(d.stream_rounds)
        )
        segments = _bench("--part", "segments", "--records", str(d.segment_records), *pg)
        jobs = _bench("--part", "jobs", "--records", str(d.job_records), *pg)
        verified = [r for r in runs.rows if not r.endswith("| not checked |")]
        verdicts = targets.evaluate(
            figures,
            saturation=runs.peak,
            p99_ms=runs.p99_ms,
            endpoints=targets.worker_shares(endpoints),
            kpis=targets.worker_shares(kpis),
            streams=targets.stream_shares(streams),
            verified_runs=len(verified),
            clean=all(r.endswith("| 0 / 0 |") for r in verified),
        )
        runs.profiles |= await _later_profiles(_wanted(verdicts, profile_all), d, postgres_url, work)
    load_after = os.getloadavg()
    elapsed = (datetime.now(UTC) - started).total_seconds()
    peak, produce_ceiling = runs.peak, figures.produce_ceiling
    edges_seen = [s.used.spent.processes.get(cpu.EDGE, 0) for s in runs.saturated]
    seen_as = ["by default", *(f"with `={value}`" for value, _ in VARIANTS)]
    quick = (
        ["", "**`--quick`: every part at tiny durations to check the machinery; the figures mean nothing.**"]
        if d.quick
        else []
    )
    out = [
        "# Benchmarks",
        "",
        "Regenerated by one command; every figure below comes from that one run on one machine, so the",
        "ratios between rows hold even though the machine is shared and noisy (the same command moves",
        "by ±25 % between runs here). Performance is never asserted in tests.",
        "",
        "```sh",
        "scripts/benchmarks.sh    # sets up .venv and PostgreSQL, then: .venv/bin/python -m load.report",
        "```",
        *quick,
        "",
        f"Run of {started:%Y-%m-%d %H:%M} UTC, {elapsed / 60:.0f} minutes: {_machine()}. The load",
        "generator, the broker, the server and PostgreSQL all shared the machine; load average "
        f"{load_before[0]:.2f} before the run, {load_after[0]:.2f} after.",
        "",
        "## Against the targets",
        "",
        *targets.markdown(verdicts),
        "",
        "## Write path: `python -m bench --part write`",
        "",
        "Native-SDK-shaped PutEvents bodies of 100 events; a fresh embedded broker for each Kafka row;",
        "aiohttp with 32 keep-alive connections. Events per CPU-second divide by the measured process's",
        "CPU time only.",
        "",
        write,
        "",
        "## Overload: `python -m bench --part overload`",
        "",
        "`ingest edge` offered four times what it serves, open loop, by a raw-socket client sending",
        "requests signed once (so the client keeps up); each answer timed from when it was sent. The",
        "default in-flight limit, then 512 (the default before this measurement chose 32).",
        "",
        overload,
        "",
        "## The load harness: `python -m load`",
        "",
        f"Generator against the null server (answers 202 to everything): one process "
        f"{one['events_per_s']:,.0f} events/s ({one['events_per_generator_cpu_s']:,.0f} per generator "
        f"CPU-second); two processes {two['events_per_s']:,.0f} events/s. The edge at saturation "
        f"below is {peak / float(one['events_per_s']):.2f} of what one generator process sends.",
        "",
        "Against one `ingest run` (edge, both workers, SQLite, the embedded broker in memory:",
        "`INGEST_EMBEDDED_STORAGE=memory`, as in runs before the durable default; that default's",
        "throughput and crash loss are in the notes below), `--profile mixed`",
        f"(Amplify JS, native SDKs and boto3 request shapes), batches of 100, {d.duration_s:g} s a row,",
        f"latency from each batch's due time (open loop); after a {d.warmup_s:g} s warm-up the workers",
        "caught up with. Each open-loop row at 25, 50 and 75 % runs against an `ingest run` of its own,",
        "warmed up at the row's rate: the memory engine keeps every batch and each fetch lists them",
        "all, so a row run after others on one broker carries their batches in its tail (the same",
        "`ingest run` as the saturation row takes half of it again after it, to show that; the notes,",
        '"Latency and the run\'s age"). Accounting compares `events-grouped-by-event-type` with the',
        f"distinct events answered Accepted. `{EDGE_PROCESSES}` unset (the supervisor's default: an",
        "`ingest edge` process per CPU beside one process per worker) for every row but those marked",
        "`=1` (one edge process)",
        "and `=0` (the edge and the workers in one interpreter, as before the supervisor), each against",
        "an `ingest run` of its own; `ingest edge` processes seen in the tree: "
        + ", ".join(f"{n} {how}" for n, how in zip(edges_seen, seen_as, strict=True))
        + ".",
        "",
        "| run | events/s | p50 ms | p95 ms | p99 ms | max ms | lost / duplicated |",
        "|---|---:|---:|---:|---:|---:|---|",
        *runs.rows,
        "",
        "Ratios (same run):",
        f"- `ingest run` at saturation (harness) ÷ encode+produce ceiling: {peak / produce_ceiling:.2f}",
        *(
            f"- the same with `{EDGE_PROCESSES}={value}`: "
            f"{float(s.summary['events_per_s']) / produce_ceiling:.2f}"
            for (value, _), s in zip(VARIANTS, runs.saturated[1:], strict=True)
        ),
        f"- `ingest edge` alone (bench) ÷ encode+produce ceiling: {figures.edge / produce_ceiling:.2f}",
        f"- edge at saturation ÷ HTTP ceiling: {peak / figures.http_ceiling:.3f}",
        "",
        "## CPU per event of the whole pipeline",
        "",
        "During each saturation row: the CPU (utime + stime, `/proc/<pid>/stat`) of `ingest run` and",
        "every process descended from it, sampled when the first request went and again when the",
        "accounting matched (so the workers' catching up on the row's events is inside the window),",
        "divided by the events accepted; each process classified by its command line. A process that",
        "exits inside the window is counted to its exit through its parent's reaped-children CPU,",
        "under the parent's role; one that starts inside it counts from zero.",
        "",
        *cpu.markdown([s.used for s in runs.saturated]),
        "",
        "## Endpoint worker: `python -m bench --part endpoints`",
        "",
        endpoints,
        "",
        "## KPI worker: `python -m bench --part kpis`",
        "",
        kpis,
        "",
        "## Event streams: `python -m bench --part streams`",
        "",
        "One `ingest worker streams` (StreamWorker, assembled as the process assembles it, no role",
        "assumed) draining records already on `ingest.events` of an embedded broker (memory engine) into",
        "one app's stream: a Kafka topic on the same broker, then a Kinesis stream on kinesalite (Kinesis",
        "in Node, in memory, on loopback); beside it the worker's decode + convert alone, and the KPI",
        "worker (SQLite) draining the same records: the aim is that streaming keeps up with it.",
        "",
        streams,
        "",
        "## Segments: `python -m bench --part segments`",
        "",
        "A dimensional segment over a bulk-seeded app (endpoint rows as the endpoint fold stores them,",
        "a last event for 70 % of them), paged 1,000 endpoints a page through `segment_endpoints` from",
        "the first page to the last, as an export job pages it; beside it, the walk of every endpoint.",
        "Peak RSS growth: the bench process's resident memory at its highest during the walk, above what",
        "it was before (flat in the app's size when a page at a time is all it holds).",
        "",
        segments,
        "",
        "## Import and export jobs: `python -m bench --part jobs`",
        "",
        "`ingest worker jobs` (JobWorker, assembled as the process assembles it) running an import of a",
        "gzip JSON file (`file://`) into `ingest.endpoints` of an embedded broker, the endpoint worker",
        "applying what it published, then an export of the store's endpoints to gzip pieces; each job",
        "timed from its creation to COMPLETED in the store. The aim: an import at least as fast as the",
        "endpoint worker applies, an export of 50,000 endpoints/s or more on PostgreSQL, memory flat.",
        "",
        jobs,
    ]
    sections = repeats.section(verdicts, runs.profiles)
    if sections:
        out += ["", *sections]
    if NOTES.exists():
        out += ["", NOTES.read_text().strip()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.report", description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", help="also measure the workers on this PostgreSQL URL")
    parser.add_argument(
        "--out", type=Path, help="where to write (default: BENCHMARKS.md; with --quick, a temporary file)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every part at tiny durations, to check the machinery in a few minutes (figures meaningless)",
    )
    parser.add_argument(
        "--profile-all", action="store_true", help="profile every measured target, met or not"
    )
    parser.add_argument("--seconds", type=float, help="each `python -m bench --part write` measurement")
    parser.add_argument("--duration", type=float, help="each load run")
    args = parser.parse_args(argv)
    durations = QUICK if args.quick else Durations()
    if args.seconds is not None:
        durations = replace(durations, seconds=args.seconds)
    if args.duration is not None:
        durations = replace(durations, duration_s=args.duration)
    # A quick run's figures mean nothing: it does not replace BENCHMARKS.md unless told to.
    out = args.out or (
        Path(tempfile.gettempdir()) / "BENCHMARKS-quick.md" if args.quick else Path("BENCHMARKS.md")
    )
    began = time.monotonic()
    text = uvloop.run(build(args.postgres, durations, profile_all=args.profile_all))
    out.write_text(text)
    print(f"wrote {out} in {time.monotonic() - began:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
