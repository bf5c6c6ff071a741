"""`python -m bench`: the benchmarks, outside the shipped package.

Each part prints a Markdown report; ``python -m load.report`` (run by
``scripts/benchmarks.sh``) puts them into BENCHMARKS.md. Settings come from
``INGEST_*`` as for ``ingest`` (the data dir holds each run's files); the
processes a part starts get only the settings it gives them.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvloop

from ingest.errors import IngestError
from ingest.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure a part of the pipeline side by side with its ceilings, in one run on this "
        "machine, and print a Markdown report.",
    )
    parser.add_argument(
        "--part",
        choices=["write", "endpoints", "kpis", "overload", "streams", "segments", "jobs"],
        default="write",
        help="write: the write path (default): the pure core, raw aiokafka, the publisher, and the edge "
        "over HTTP; endpoints: the endpoint worker per store, and freshness; kpis: the KPI worker per "
        "store, and what the store keeps per event; overload: the edge offered 4x its saturation, "
        "429 and accepted latencies and RSS; streams: one streams worker to a Kafka topic and to Kinesis "
        "(kinesalite) beside its decode+convert ceiling and the KPI worker; segments: a dimensional "
        "segment over a large app paged through the store, per store, at --records and a quarter of it; "
        "jobs: import and export jobs per store at two sizes (--records and a quarter of it), rows/s "
        "and peak RSS",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement (write)")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="HTTP connections for the edge run (write)"
    )
    parser.add_argument("--records", type=int, default=100_000, help="upserts or events for a worker part")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the measurements taken in turn (streams)"
    )
    parser.add_argument("--postgres", help="also measure the worker on this PostgreSQL URL (worker parts)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except IngestError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    # Logs go to stderr; the report alone to stdout.
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.part == "endpoints":
        from bench.endpoints import bench_endpoints

        return uvloop.run(bench_endpoints(settings, records=args.records, postgres_url=args.postgres))
    if args.part == "kpis":
        from bench.kpis import bench_kpis

        return uvloop.run(bench_kpis(settings, records=args.records, postgres_url=args.postgres))
    if args.part == "streams":
        from bench.streams import bench_streams

        return uvloop.run(bench_streams(settings, records=args.records, rounds=args.rounds))
    if args.part == "segments":
        from bench.segments import bench_segments

        return uvloop.run(bench_segments(settings, records=args.records, postgres_url=args.postgres))
    if args.part == "jobs":
        from bench.jobs import bench_jobs

        return uvloop.run(bench_jobs(settings, records=args.records, postgres_url=args.postgres))
    if args.part == "overload":
        from bench.overload import bench_overload

        return uvloop.run(bench_overload(settings, seconds=args.seconds, factor=4.0))
    from bench.write import bench

    return uvloop.run(bench(settings, seconds=args.seconds, concurrency=args.concurrency))


if __name__ == "__main__":
    raise SystemExit(main())
