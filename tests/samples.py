"""Read one sample of a running process's ``/metrics``, or its resident memory."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


def rss_kb(pid: int) -> int:
    """Process ``pid``'s resident set (``/proc``); fails when it is gone, so a
    bound checked on it cannot pass on a dead process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Serving(Protocol):
    def request(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]: ...


def metric(process: Serving, sample: str) -> float:
    """The value of ``sample`` (its name and labels as exposed, e.g.
    ``ingest_endpoint_records_total{outcome="applied"}``); 0 when absent."""
    status, _, body = process.request("GET", "/metrics")
    assert status == 200
    prefix = f"{sample} ".encode()
    for line in body.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0
