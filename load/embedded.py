"""The embedded broker's storage engines side by side (README: "What the
embedded mode can lose"): `ingest run` per ``INGEST_EMBEDDED_STORAGE``,
loaded by ``python -m load``, one JSON line per engine.

    python -m load.embedded sustained memory,s3rver 60   # events/s, RSS and CPU every 5 s, disk
    python -m load.embedded crash memory,s3rver 40       # SIGKILL at 0.3 D and 0.65 D, restart, account

A crash run SIGKILLs `ingest run` by its PID (the kernel takes tansu and
s3rver with it), restarts it on the same port and data dir, and lets the
harness's accounting (``--max-attempts 30``: its retries ride out the
restart) say what was Accepted and not counted (``lost``). Only processes it
started are signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ingest.launch import Launched, launch
from load.chaos import free_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
WORK = tempfile.gettempdir()


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def cpu_s(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return round((int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"), 1)
    except (OSError, IndexError):
        return 0.0


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def nfiles(path: Path) -> int:
    return sum(1 for f in path.rglob("*._S3rver_object") if "/records/" in str(f)) if path.exists() else 0


def start(data: Path, port: int, env_extra: dict[str, str], tag: str) -> Launched:
    env = (
        {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
        | {"INGEST_PROBE_PORT": "0", "PYTHONPATH": str(ROOT)}
        | env_extra
    )
    return launch(
        [PY, "-m", "ingest", "run", "--port", str(port), "--data-dir", str(data)],
        env=env,
        log_path=data.parent / f"{data.name}-{tag}.log",
        cwd=ROOT,
        timeout_s=60,
    )


def load(url: str, data: Path, duration: float, extra: list[str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")} | {
        "AWS_SHARED_CREDENTIALS_FILE": str(data / "credentials"),
        "AWS_PROFILE": "ingest",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(  # noqa: S603 - our own command
        [
            PY,
            "-m",
            "load",
            "--url",
            url,
            "--duration",
            str(duration),
            "--json",
            "--quiet",
            "--seed",
            "7",
            "--data-dir",
            str(data),
            *extra,
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def summary(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=900)
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if not lines:
        print(err.decode()[-3000:])
        return {}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def sampler(run: Launched, samples: list[tuple[float, ...]], stop: threading.Event, t0: float) -> None:
    while not stop.is_set():
        kids = {comm(c): c for c in children(run.pid)}
        samples.append(
            (
                round(time.monotonic() - t0, 1),
                rss_kb(run.pid),
                rss_kb(kids.get("tansu", 0)),
                rss_kb(kids.get("node", 0) or kids.get("MainThread", 0)),
                cpu_s(run.pid),
                cpu_s(kids.get("tansu", 0)),
                cpu_s(kids.get("node", 0) or kids.get("MainThread", 0)),
            )
        )
        stop.wait(5)


def sustained(name: str, env: dict[str, str], duration: float) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix=f"m-{name}-", dir=WORK))
    port = free_port()
    run = start(data / "d", port, env, "run")
    samples: list[tuple[float, ...]] = []
    stop = threading.Event()
    t0 = time.monotonic()
    th = threading.Thread(target=sampler, args=(run, samples, stop, t0))
    th.start()
    s = summary(load(run.url, data / "d", duration, []))
    stop.set()
    th.join()
    disk, files = du(data / "d" / "kafka"), nfiles(data / "d" / "kafka")
    run.stop()
    return {
        "config": name,
        "events_per_s": s.get("events_per_s"),
        "accepted": s.get("events_accepted"),
        "lost": s.get("lost"),
        "duplicated": s.get("duplicated"),
        "p99_ms": s.get("latency_ms", {}).get("p99"),
        "rss_kb(t, ingest, tansu, s3rver) cpu_s(ingest, tansu, s3rver)": samples,
        "kafka_dir_bytes": disk,
        "batch_objects": files,
        "bytes_per_accepted_event": round(disk / s["events_accepted"], 1)
        if s.get("events_accepted")
        else None,
    }


def crash(name: str, env: dict[str, str], duration: float, kills_at: list[float]) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix=f"c-{name}-", dir=WORK))
    port = free_port()
    run = start(data / "d", port, env, "run0")
    gen = load(run.url, data / "d", duration, ["--max-attempts", "30"])
    t0 = time.monotonic()
    restarts = []
    for i, at in enumerate(kills_at):
        time.sleep(max(0, at - (time.monotonic() - t0)))
        os.kill(run.pid, signal.SIGKILL)  # PR_SET_PDEATHSIG takes tansu and s3rver with it
        run.process.wait()
        k = time.monotonic()
        run = start(data / "d", port, env, f"run{i + 1}")
        restarts.append(round(time.monotonic() - k, 2))
    s = summary(gen)
    run.stop()
    return {
        "config": name,
        "kills_at_s": kills_at,
        "restart_s": restarts,
        "accepted": s.get("events_accepted"),
        "failed": s.get("events_failed"),
        "counted": s.get("counted"),
        "lost": s.get("lost"),
        "duplicated": s.get("duplicated"),
        "ok": s.get("ok"),
        "status": s.get("status"),
    }


CONFIGS = {
    "memory": {"INGEST_EMBEDDED_STORAGE": "memory"},
    "s3rver": {"INGEST_EMBEDDED_STORAGE": "s3rver"},
}

if __name__ == "__main__":
    what, names = sys.argv[1], sys.argv[2].split(",")
    duration = float(sys.argv[3]) if len(sys.argv) > 3 else 30
    for name in names:
        if what == "sustained":
            r = sustained(name, CONFIGS[name], duration)
        else:
            r = crash(name, CONFIGS[name], duration, [duration * 0.3, duration * 0.65])
        print(json.dumps(r), flush=True)
