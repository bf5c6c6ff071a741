"""Read one sample of a running process's ``/metrics``, or its resident memory."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


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
    ``ingest_endpoint_records_total{outcome="applied"}``), summed over the
    processes of a supervising `ingest run` (its ``process`` label); 0 when
    absent."""
    status, _, body = process.request("GET", "/metrics")
    assert status == 200
    ((wanted,),) = (family.samples for family in text_string_to_metric_families(f"{sample} 0\n"))
    return sum(
        found.value
        for family in text_string_to_metric_families(body.decode())
        for found in family.samples
        if found.name == wanted.name and without_process(found.labels) == wanted.labels
    )


def samples_named(process: Serving, *prefixes: str) -> list[Sample]:
    """Every sample of ``/metrics`` whose name starts with one of ``prefixes``."""
    status, _, body = process.request("GET", "/metrics")
    assert status == 200
    return [
        sample
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name.startswith(prefixes)
    ]


def without_process(labels: dict[str, str]) -> dict[str, str]:
    """A sample's labels but the one naming the process that reported it."""
    return {name: value for name, value in labels.items() if name != "process"}
