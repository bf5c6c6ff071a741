"""What the operator sees: a line a second while the load runs (stderr), and
the human summary at the end. Merges the generators' snapshots."""

from __future__ import annotations

from typing import Any, TextIO

from hdrh.histogram import HdrHistogram

from load.driver import Snapshot, new_histogram
from load.ledger import Tally


def _counts(counter: dict[str, int]) -> str:
    return " ".join(f"{k}:{v:,}" for k, v in sorted(counter.items())) or "-"


class Progress:
    """Cumulative counters per generator, and the latencies since the last
    printed line."""

    def __init__(self, out: TextIO | None) -> None:
        self._out = out
        self._tallies: dict[int, Tally] = {}
        self._in_flight: dict[int, int] = {}
        self._window = new_histogram()
        self._last_answered = 0
        self._last_requests = 0
        self._last_at = 0.0
        self._tty = out is not None and out.isatty()

    def add(self, snapshot: Snapshot) -> None:
        self._tallies[snapshot.index] = Tally.from_dict(snapshot.tally)
        self._in_flight[snapshot.index] = snapshot.in_flight
        if snapshot.interval:
            self._window.add(HdrHistogram.decode(snapshot.interval))

    def total(self) -> Tally:
        return sum(self._tallies.values(), Tally())

    def tick(self, elapsed_s: float) -> None:
        """Print the line for the second that just ended."""
        total = self.total()
        span = max(1e-9, elapsed_s - self._last_at)
        events_s = (total.events_answered - self._last_answered) / span
        requests_s = (total.requests - self._last_requests) / span
        p99 = self._window.get_value_at_percentile(99) / 1000 if self._window.get_total_count() else 0.0
        self._last_answered, self._last_requests, self._last_at = (
            total.events_answered,
            total.requests,
            elapsed_s,
        )
        self._window.reset()
        self.say(
            f"{elapsed_s:6.1f} s  {events_s:9,.0f} events/s  {requests_s:7,.0f} req/s  "
            f"p99 {p99:8.1f} ms  in flight {sum(self._in_flight.values()):4d}  "
            f"http {_counts(dict(total.http))}  events {_counts(dict(total.events))}",
            transient=True,
        )

    def say(self, text: str, *, transient: bool = False) -> None:
        if self._out is None:
            return
        if self._tty:
            end = "" if transient else "\n"
            self._out.write(f"\r\033[K{text}{end}")
        else:
            self._out.write(text + "\n")
        self._out.flush()

    def done(self) -> None:
        if self._tty and self._out is not None:
            self._out.write("\n")
            self._out.flush()


def human(summary: dict[str, Any]) -> str:
    """The final summary, for people."""
    lat = summary["latency_ms"]
    status = summary["status"]
    rate = "closed loop" if summary["rate"] is None else f"open loop at {summary['rate']:,.0f} events/s"
    lines = [
        f"run {summary['run_id']} on {summary['url']} (app {summary['app_id']}): "
        f"{summary['profile']} traffic, {rate}, {summary['processes']} process(es) x "
        f"{summary['concurrency']} connections, batches of {summary['batch_size']}",
        f"  sent      {summary['events_sent']:,} events in {summary['requests']:,} requests "
        f"over {summary['elapsed_s']:.1f} s; {summary['events_resent']:,} sent again "
        f"({summary['sdk_retries']:,} SDK retries, {summary['batches_resent']:,} batches re-sent)",
        f"  answered  {summary['events_accepted']:,} accepted, {summary['events_rejected']:,} rejected "
        f"({summary['invalid_sent']:,} sent invalid), {summary['events_failed']:,} failed after all attempts",
        f"  rate      {summary['events_per_s']:,.0f} accepted events/s, "
        f"{summary['requests_per_s']:,.0f} req/s; "
        f"generator {summary['events_per_generator_cpu_s'] or 0:,.0f} events per CPU-second",
        f"  latency   p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}  "
        f"p99.9 {lat['p999']:.1f}  max {lat['max']:.1f} ms"
        + (" (from each batch's due time)" if summary["rate"] is not None else ""),
        f"  statuses  http {_counts(status['http'])}; events {_counts(status['events'])}",
    ]
    lines.extend(f"  chaos     {a['at_s']:6.1f} s  {a['action']}" for a in summary["chaos"])
    if summary["verified"]:
        lines.append(
            f"  accounted {summary['counted']:,} counted by events-grouped-by-event-type after "
            f"{summary['drain_s']:.1f} s of draining: lost {summary['lost']:,}, "
            f"duplicated {summary['duplicated']:,}"
        )
        for event_type, (expected, counted) in summary["mismatched_types"].items():
            lines.append(f"            {event_type}: {expected:,} accepted, {counted:,} counted")
    else:
        lines.append("  accounted not checked (no KPI reads: null server or --no-verify)")
    unexpected = {
        k: summary[k] for k in ("valid_rejected", "invalid_accepted", "missing_answers") if summary[k]
    }
    if unexpected:
        lines.append(f"  unexpected {unexpected}")
    lines.append("  OK" if summary["ok"] else "  FAILED")
    return "\n".join(lines)
