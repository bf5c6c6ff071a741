"""Read one sample of a running process's ``/metrics``."""

from __future__ import annotations

from typing import Protocol


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
