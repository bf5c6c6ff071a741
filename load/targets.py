"""The targets BENCHMARKS.md is held to, and reading the figures they need
out of the benches' Markdown reports. Pure: text and numbers in, verdicts out.

Each :class:`Target` names the measurement (``profile``) whose process
:mod:`load.report` profiles when the target is not met.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["met", "not met", "not measured"]

# Which process a not-met target's profile samples (see load.report).
RUN_SATURATION = "run-saturation"
EDGE_ALONE = "edge"
CORE = "core"
ENDPOINTS = "endpoints"
KPIS = "kpis"
STREAMS = "streams"


def run_open(share: float) -> str:
    """The profile of ``ingest run`` at ``share`` of saturation, open loop."""
    return f"run-open-{share:.0%}"


class ReportError(Exception):
    """A bench report lacks a row or a column the targets need."""


def table(report: str, header: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table in ``report`` whose header row
    has a column starting with ``header``, each as {column: cell}."""
    lines = report.splitlines()
    for n, line in enumerate(lines):
        columns = _cells(line)
        if columns and any(c.startswith(header) for c in columns) and n + 1 < len(lines):
            if not set(lines[n + 1].replace("|", "").strip()) <= set("-: "):
                continue
            rows = []
            for row in lines[n + 2 :]:
                cells = _cells(row)
                if not cells:
                    break
                rows.append(dict(zip(columns, cells, strict=False)))
            return rows
    raise ReportError(f"no table with a column {header!r} in:\n{report}")


def _cells(line: str) -> list[str]:
    line = line.strip()
    if not (line.startswith("|") and line.endswith("|")):
        return []
    return [c.strip() for c in line[1:-1].split("|")]


def number(cell: str) -> float:
    """``12,345`` / ``0.57`` / ``41.8 ms`` → the number."""
    found = re.search(r"-?[\d,]*\.?\d+", cell)
    if found is None:
        raise ReportError(f"no number in {cell!r}")
    return float(found.group(0).replace(",", ""))


def cell(rows: list[dict[str, str]], row: str, column: str) -> float:
    """The number in the row whose first cell is ``row`` (or starts with
    ``row:``) and the column whose header starts with ``column``."""
    for found in rows:
        first = next(iter(found.values()), "")
        if first == row or first.startswith(row + ":"):
            for header, value in found.items():
                if header.startswith(column) and value:
                    return number(value)
            raise ReportError(f"row {row!r} has no figure under {column!r}")
    raise ReportError(f"no row {row!r}")


@dataclass(frozen=True, slots=True)
class WritePath:
    """What the targets take from ``python -m bench --part write``."""

    produce_ceiling: float  # events/s
    edge: float  # events/s
    edge_per_cpu: float  # events per edge CPU-second
    core: float
    core_per_cpu: float
    fastavro: float
    http_ceiling: float

    @classmethod
    def parse(cls, report: str) -> WritePath:
        rows = table(report, "measurement")
        rate, per_cpu = "events/s", "events per CPU-second"
        return cls(
            produce_ceiling=cell(rows, "produce ceiling", rate),
            edge=cell(rows, "edge", rate),
            edge_per_cpu=cell(rows, "edge", per_cpu),
            core=cell(rows, "core", rate),
            core_per_cpu=cell(rows, "core", per_cpu),
            fastavro=cell(rows, "encode: fastavro schemaless_writer", rate),
            http_ceiling=cell(rows, "HTTP ceiling", rate),
        )


def worker_shares(report: str) -> dict[str, float]:
    """``worker ÷ ceiling`` per store (``SQLite``, ``PostgreSQL``) from a
    worker part's report (``--part endpoints`` or ``--part kpis``)."""
    rows = table(report, "worker ÷ ceiling")
    shares = {}
    for row in rows:
        store = next(iter(row.values()))
        shares[store] = cell(rows, store, "worker ÷ ceiling")
    return shares


# The rows of ``--part streams`` the streams aim is read from, by destination.
STREAM_ROWS = {"Kafka": "worker → Kafka", "Kinesis": "worker → Kinesis"}
KEEPS_UP = "÷ KPI worker"


def stream_shares(report: str) -> dict[str, float]:
    """``÷ KPI worker`` of the streams worker per destination (``Kafka``,
    ``Kinesis``) from ``python -m bench --part streams``'s report."""
    rows = table(report, KEEPS_UP)
    return {destination: cell(rows, row, KEEPS_UP) for destination, row in STREAM_ROWS.items()}


@dataclass(frozen=True, slots=True)
class Target:
    measure: str
    target: str
    measured: str
    verdict: Verdict
    profile: str | None = None  # what to profile when not met

    @property
    def met(self) -> bool:
        return self.verdict == "met"


def _check(
    measure: str,
    target: str,
    value: float | None,
    ok: Callable[[float], bool],
    shown: Callable[[float], str],
    profile: str | None,
) -> Target:
    if value is None:
        return Target(measure, target, "—", "not measured", None)
    return Target(measure, target, shown(value), "met" if ok(value) else "not met", profile)


def _at_least(aim: float) -> Callable[[float], bool]:
    return lambda value: value >= aim


def _at_most(aim: float) -> Callable[[float], bool]:
    return lambda value: value <= aim


def _ratio(value: float) -> str:
    return f"{value:.2f}"


def _ms(value: float) -> str:
    return f"{value:.1f} ms"


# Issue 14's p99 aims, at each share of saturation (open loop).
P99_AIMS_MS = {0.25: 20.0, 0.5: 50.0, 0.75: 100.0}
RUN_SHARE_AIM = 0.20
EDGE_SHARE_AIM = 0.30
EDGE_PER_CPU_AIM = 0.80
CORE_OVER_FASTAVRO_AIM = 6.0
WORKER_AIMS = {"SQLite": 0.60, "PostgreSQL": 0.80}
# The event streams issue: one streams worker keeps up with the KPI worker
# on the same records, to each kind of destination.
STREAMS_AIM = 1.0
# The load harness issue's aims, kept beside issue 14's.
HARNESS_EDGE_SHARE_AIM = 0.5
HARNESS_P99_AIM_MS = 50.0


def evaluate(
    write: WritePath,
    *,
    saturation: float,
    p99_ms: dict[float, float],
    endpoints: dict[str, float],
    kpis: dict[str, float],
    streams: dict[str, float],
    verified_runs: int,
    clean: bool,
) -> list[Target]:
    """Every target beside its figure from this run. ``saturation`` is
    ``ingest run``'s closed-loop events/s (the default edge processes);
    ``p99_ms`` the open-loop p99 at each share of it; ``endpoints`` and
    ``kpis`` each worker's ``worker ÷ ceiling`` per store; ``streams`` the
    streams worker's events/s ÷ the KPI worker's per destination."""
    run_share = saturation / write.produce_ceiling
    targets = [
        _check(
            "`ingest run` at saturation ÷ encode+produce ceiling (the bench's produce ceiling row)",
            f"≥ {RUN_SHARE_AIM:.2f}",
            run_share,
            _at_least(RUN_SHARE_AIM),
            _ratio,
            RUN_SATURATION,
        ),
    ]
    for share, aim in P99_AIMS_MS.items():
        targets.append(
            _check(
                f"p99 at {share:.0%} of saturation (open loop, `ingest run`)",
                f"≤ {aim:g} ms",
                p99_ms.get(share),
                _at_most(aim),
                _ms,
                run_open(share),
            )
        )
    targets += [
        _check(
            "`ingest edge` (bench) ÷ encode+produce ceiling",
            f"≥ {EDGE_SHARE_AIM:.2f}",
            write.edge / write.produce_ceiling,
            _at_least(EDGE_SHARE_AIM),
            _ratio,
            EDGE_ALONE,
        ),
        _check(
            "edge events per edge CPU-second ÷ the pure core's (parse + validate + encode) per CPU-second",
            f"≥ {EDGE_PER_CPU_AIM:.2f}",
            write.edge_per_cpu / write.core_per_cpu,
            _at_least(EDGE_PER_CPU_AIM),
            _ratio,
            EDGE_ALONE,
        ),
        _check(
            "pure core events/s ÷ fastavro `schemaless_writer` events/s",
            f"≥ {CORE_OVER_FASTAVRO_AIM:g}",
            write.core / write.fastavro,
            _at_least(CORE_OVER_FASTAVRO_AIM),
            lambda v: f"{v:.1f}",
            CORE,
        ),
    ]
    for name, shares, profile in (("endpoint", endpoints, ENDPOINTS), ("KPI", kpis, KPIS)):
        for store, aim in WORKER_AIMS.items():
            targets.append(
                _check(
                    f"{name} worker ÷ its store ceiling, {store}",
                    f"≥ {aim:.2f}",
                    shares.get(store),
                    _at_least(aim),
                    _ratio,
                    profile,
                )
            )
    for destination in STREAM_ROWS:
        targets.append(
            _check(
                f"streams worker → {destination} ÷ the KPI worker, same records (keeps up)",
                f"≥ {STREAMS_AIM:.2f}",
                streams.get(destination),
                _at_least(STREAMS_AIM),
                _ratio,
                STREAMS,
            )
        )
    half = p99_ms.get(0.5)
    targets += [
        _check(
            "edge (`ingest run`, harness) ≥ 50 % of the encode+produce ceiling (load harness issue)",
            f"≥ {HARNESS_EDGE_SHARE_AIM:.2f}",
            run_share,
            _at_least(HARNESS_EDGE_SHARE_AIM),
            _ratio,
            RUN_SATURATION,
        ),
        _check(
            "p99 at half of saturation (load harness issue)",
            f"≤ {HARNESS_P99_AIM_MS:g} ms",
            half,
            _at_most(HARNESS_P99_AIM_MS),
            _ms,
            run_open(0.5),
        ),
        Target(
            "lost = duplicated = 0 with 5 % re-sends and under `--chaos`",
            "0 / 0",
            f"{verified_runs} runs checked",
            "met" if clean else "not met",
            None,
        ),
    ]
    return targets


def markdown(targets: list[Target]) -> list[str]:
    lines = ["| measure | target | measured | |", "|---|---:|---:|---|"]
    for t in targets:
        verdict = "**not met**" if t.verdict == "not met" else t.verdict
        lines.append(f"| {t.measure} | {t.target} | {t.measured} | {verdict} |")
    return lines
