"""CPU time of a process tree, from ``/proc``, split by role.

:func:`sample` walks ``/proc`` for a root PID and every descendant (by
``ppid``) and reads each one's ``utime + stime`` and ``cutime + cstime`` (the
CPU of children it has reaped). :func:`spent` takes two samples, at the
start and end of a measured window, and gives the CPU the tree spent in
between, per role (:func:`role` reads the command line).

A process that exits inside the window is rare (a worker restarted by the
supervisor): its CPU up to its exit reaches its parent's ``cutime + cstime``
when the parent reaps it, so the tree's total stays exact, and the part it
spent inside the window is counted under its parent's role. One that
started inside the window counts from zero. Only an orphan re-parented out
of the tree, or one not yet reaped whose parent left too, is missed; a
sample counts those it saw come and go.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")

RUN = "`ingest run` (parent)"
RUN_CHILD = "`ingest run` (a child with the same command line)"
EDGE = "`ingest edge`"
ENDPOINT_WORKER = "`ingest worker endpoints`"
KPI_WORKER = "`ingest worker kpis`"
BROKER = "broker (tansu)"
S3RVER = "s3rver (node)"
# The order roles are reported in; anything else follows as "other: <program>".
ROLES = (RUN, RUN_CHILD, EDGE, ENDPOINT_WORKER, KPI_WORKER, BROKER, S3RVER)


@dataclass(frozen=True, slots=True)
class Process:
    """One process as sampled: its own CPU and its reaped children's, in seconds."""

    pid: int
    ppid: int
    role: str
    cpu_s: float
    children_cpu_s: float

    @property
    def total_s(self) -> float:
        return self.cpu_s + self.children_cpu_s


@dataclass(frozen=True, slots=True)
class Sample:
    root: int
    processes: dict[int, Process]


@dataclass(frozen=True, slots=True)
class Spent:
    """CPU seconds spent between two samples, per role, and how many
    processes of each role the end sample saw."""

    by_role: dict[str, float]
    processes: dict[str, int]
    started: int = 0
    exited: int = 0
    order: list[str] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return sum(self.by_role.values())


def role(argv: Sequence[str], *, root: bool) -> str:
    """What a process of the pipeline is, from its command line: ``ingest
    ROLE`` (a console script or ``python -m ingest``), tansu, s3rver, or
    ``other: <program>``."""
    if not argv:
        return "other: (no command line)"
    program = Path(argv[0]).name
    if program == "tansu":
        return BROKER
    if program in ("node", "nodejs") or any("s3rver" in arg for arg in argv[:3]):
        return S3RVER
    for i, arg in enumerate(argv[:3]):
        if (arg == "ingest" and i > 0 and argv[i - 1] == "-m") or (i < 2 and Path(arg).name == "ingest"):
            words = [a for a in argv[i + 1 :] if not a.startswith("-")][:2]
            if words[:1] == ["run"]:
                return RUN if root else RUN_CHILD
            if words[:1] == ["edge"]:
                return EDGE
            if words == ["worker", "endpoints"]:
                return ENDPOINT_WORKER
            if words == ["worker", "kpis"]:
                return KPI_WORKER
            return f"`ingest {' '.join(words)}`"
    return f"other: {program}"


def _read(pid: int) -> tuple[int, float, float, list[str]] | None:
    """(ppid, own CPU s, reaped children's CPU s, argv), or None when gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:  # exited between the listing and the read
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = stat.rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / tick
    reaped = (int(fields[13]) + int(fields[14])) / tick
    return int(fields[1]), own, reaped, [a for a in raw.decode(errors="replace").split("\0") if a]


def sample(root: int) -> Sample:
    """``root`` and all its descendants now. Blocking (a few ms)."""
    read: dict[int, tuple[int, float, float, list[str]]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (got := _read(int(entry.name))) is not None:
            read[int(entry.name)] = got
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in read.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, Process] = {}
    pending = [root] if root in read else []
    while pending:
        pid = pending.pop()
        ppid, own, reaped, argv = read[pid]
        found[pid] = Process(pid, ppid, role(argv, root=pid == root), own, reaped)
        pending.extend(children.get(pid, []))
    return Sample(root, found)


def spent(start: Sample, end: Sample) -> Spent:
    """What the tree spent between ``start`` and ``end`` (see the module's
    docstring for processes that came or went)."""
    by_role: dict[str, float] = {}
    for pid, now in end.processes.items():
        before = start.processes.get(pid)
        by_role[now.role] = by_role.get(now.role, 0.0) + now.total_s - (before.total_s if before else 0.0)
    gone = [p for pid, p in start.processes.items() if pid not in end.processes]
    for process in gone:
        # Its CPU to its exit is in its reaper's cutime: take off what it had
        # spent before the window, under the role that gained it.
        parent = start.processes.get(process.ppid) or end.processes.get(process.ppid)
        where = parent.role if parent is not None else process.role
        by_role[where] = by_role.get(where, 0.0) - process.total_s
    counts: dict[str, int] = {}
    for process in end.processes.values():
        counts[process.role] = counts.get(process.role, 0) + 1
    order = [r for r in ROLES if r in by_role] + sorted(r for r in by_role if r not in ROLES)
    return Spent(
        by_role=by_role,
        processes=counts,
        started=sum(pid not in start.processes for pid in end.processes),
        exited=len(gone),
        order=order,
    )


@dataclass(frozen=True, slots=True)
class Measured:
    """A measured window: what the tree spent on ``events`` in ``seconds``."""

    label: str
    events: int
    spent: Spent
    seconds: float

    def per_event_us(self, cpu_s: float) -> float:
        return cpu_s / max(1, self.events) * 1e6


def markdown(windows: Sequence[Measured]) -> list[str]:
    """CPU-µs per event, per role, a column group per window; then each
    window's totals."""
    roles: list[str] = []
    for w in windows:
        roles += [r for r in w.spent.order if r not in roles]
    head = "| role |" + "".join(f" {w.label}: processes | CPU-µs per event | share |" for w in windows)
    lines = [head, "|---|" + "---:|---:|---:|" * len(windows)]
    for name in roles:
        cells = ""
        for w in windows:
            used = w.spent.by_role.get(name, 0.0)
            share = used / w.spent.total_s if w.spent.total_s else 0.0
            cells += f" {w.spent.processes.get(name, 0)} | {w.per_event_us(used):,.1f} | {share:.0%} |"
        lines.append(f"| {name} |{cells}")
    lines.append(
        "| **whole tree** |"
        + "".join(
            f" {sum(w.spent.processes.values())} | **{w.per_event_us(w.spent.total_s):,.1f}** | 100% |"
            for w in windows
        )
    )
    lines.append("")
    lines.extend(
        f"- {w.label}: {w.events:,} events accepted, {w.spent.total_s:.1f} CPU-s over a {w.seconds:.1f} s "
        f"window ({w.spent.total_s / max(w.seconds, 1e-9):.2f} cores busy on average); processes started "
        f"in it: {w.spent.started}, exited: {w.spent.exited}."
        for w in windows
    )
    return lines
