"""Profiles for the report: py-spy's collapsed stacks, and their summary.

:func:`attach` samples running processes (by PID) for a few seconds;
:func:`under` runs a command under py-spy until it exits. Both write
py-spy's ``--format raw`` (collapsed stacks: ``frame;frame;… count`` a line,
each frame ``function (file:line)``) and return its text, or raise
:class:`ProfileError` saying why not (py-spy needs ptrace: root, or
``kernel.yama.ptrace_scope`` 0). :func:`summarise` is pure: the functions
(``file:function``) holding the most samples as the innermost frame (own
time) and anywhere on the stack (inclusive, counted once a sample however
deep the recursion; leaving out the entry chain every sample of a thread
passes through, such as runpy, ``main`` and the event loop's ``run``).
Each thread's stack is a sample of its own; idle threads (waiting in the
kernel) are not sampled, so shares are of the time some thread of the
process was running Python or native code.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

RATE_HZ = 100  # py-spy's default: a 1 % share is a sample a second
TOP = 12
# py-spy gives up attaching when the target is not yet a Python process; it
# needs a few seconds past the measurement to write its output.
GRACE_S = 30.0
# An executor thread waiting for work: its innermost frame is this one only
# while it blocks in ``work_queue.get`` (work it runs has frames of its
# own), and py-spy does not always tell that wait from running.
WAITING = frozenset({"concurrent/futures/thread.py:_worker"})
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*?)(?::\d+)?\)$")


class ProfileError(Exception):
    """py-spy could not profile: ``reason`` is what it said."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Summary:
    samples: int
    own: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]
    waiting: int = 0  # samples left out: an executor thread waiting (WAITING)


def _short(path: str) -> str:
    """A frame's file as a reader finds it: inside site-packages or the
    standard library, or relative to this checkout."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    stdlib = re.search(r"/lib/python3\.\d+/(.*)$", path)
    if stdlib:
        return stdlib.group(1)
    root = str(Path.cwd()) + "/"
    return path.removeprefix(root)


def frame_key(frame: str) -> str:
    """``function (file:line)`` → ``file:function``."""
    found = _FRAME.match(frame.strip())
    if found is None:
        return frame.strip()
    return f"{_short(found['file'])}:{found['name']}"


def summarise(collapsed: str, top: int = TOP) -> Summary:
    """The ``top`` functions by own and by inclusive share of samples."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    # Samples per outermost frame (a thread's entry), and the entries each
    # function was seen under: to leave out the entry chain (runpy, main, the
    # event loop's run), which every sample of its thread passes through.
    per_entry: dict[str, int] = {}
    entries: dict[str, set[str]] = {}
    total = waiting = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        keys = [frame_key(f) for f in stack.split(";") if f]
        if not keys:
            continue
        if keys[-1] in WAITING:
            waiting += count
            continue
        total += count
        own[keys[-1]] = own.get(keys[-1], 0) + count
        per_entry[keys[0]] = per_entry.get(keys[0], 0) + count
        for key in set(keys):
            inclusive[key] = inclusive.get(key, 0) + count
            entries.setdefault(key, set()).add(keys[0])
    trunk = {key for key, n in inclusive.items() if n == sum(per_entry[e] for e in entries[key])}

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        return [(key, n / total) for key, n in ordered]

    if not total:
        return Summary(0, [], [], waiting)
    return Summary(
        total, ranked(own), ranked({k: n for k, n in inclusive.items() if k not in trunk}), waiting
    )


def markdown(summary: Summary) -> list[str]:
    """The summary as a table, own time beside inclusive."""
    lines = [
        f"{summary.samples:,} samples at {RATE_HZ} Hz (and {summary.waiting:,} of an executor thread "
        "waiting for work, left out); inclusive leaves out the entry frames every sample of a thread "
        "passes through (runpy, `main`, the event loop's `run`, a thread's bootstrap). "
        "`asyncio/runners.py:Runner.run` as the innermost frame is uvloop's own loop, in C.",
        "",
        "| | own time (innermost frame) | share | inclusive (anywhere on the stack) | share |",
        "|---:|---|---:|---|---:|",
    ]
    for n in range(max(len(summary.own), len(summary.inclusive))):
        own, share = summary.own[n] if n < len(summary.own) else ("", 0.0)
        inc, inc_share = summary.inclusive[n] if n < len(summary.inclusive) else ("", 0.0)
        lines.append(
            f"| {n + 1} | `{own}` | {share:.1%} | `{inc}` | {inc_share:.1%} |"
            if own
            else f"| {n + 1} | | | `{inc}` | {inc_share:.1%} |"
        )
    return lines


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise ProfileError("py-spy is not installed (it is a dev extra: scripts/setup.sh)")
    return found


async def _py_spy_run(args: list[str], out: Path, timeout_s: float) -> str:
    process = await asyncio.create_subprocess_exec(
        _py_spy(),
        "record",
        "--format",
        "raw",
        "--rate",
        str(RATE_HZ),
        "--output",
        str(out),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()  # our own py-spy, by its PID
        await process.wait()
        raise ProfileError(f"py-spy did not finish within {timeout_s:g} s") from None
    text = await asyncio.to_thread(lambda: out.read_text() if out.exists() else "")
    if not text.strip():
        said = err.decode(errors="replace").strip().splitlines()
        reason = said[0] if said else f"exited {process.returncode}"
        raise ProfileError(f"py-spy recorded nothing: {reason}")
    return text


async def attach(pids: Sequence[int], seconds: float, work: Path) -> str:
    """``seconds`` of each process's stacks (one py-spy per PID, side by side),
    merged into one collapsed text."""
    if not pids:
        raise ProfileError("no process to profile")
    runs = [
        _py_spy_run(
            ["--pid", str(pid), "--duration", str(max(1, round(seconds)))],
            work / f"py-spy-{pid}.txt",
            seconds + GRACE_S,
        )
        for pid in pids
    ]
    return "".join(text if text.endswith("\n") else text + "\n" for text in await asyncio.gather(*runs))


async def under(argv: Sequence[str], work: Path, name: str, timeout_s: float) -> str:
    """The stacks of ``argv`` run under py-spy from start to exit."""
    return await _py_spy_run(["--", *argv], work / f"py-spy-{name}.txt", timeout_s)
