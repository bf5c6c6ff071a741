"""`ingest`: the command line. Builds Settings once, installs uvloop, runs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvloop

from ingest import __version__
from ingest.errors import IngestError
from ingest.settings import Settings

log = logging.getLogger("ingest")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingest",
        description="Pinpoint-wire-compatible event ingestion into Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"ingest {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    status_help = (
        "once listening, write its PID, address and broker here as JSON, atomically "
        "(for supervisors and tests; removed on a clean stop)"
    )

    run = commands.add_parser(
        "run",
        help="the whole pipeline on one machine: embedded broker, SQLite, edge, workers",
        description="Runs everything in the foreground; Ctrl-C or SIGTERM drains and exits 0. "
        "Uses the broker named by INGEST_KAFKA_BOOTSTRAP instead of the embedded one when set.",
    )
    run.add_argument("--host", help="edge listen address (INGEST_HOST, default 127.0.0.1)")
    run.add_argument("--port", type=int, help="edge port, 0 for any free one (INGEST_PORT, default 8080)")
    run.add_argument("--data-dir", type=Path, help="SQLite and logs (INGEST_DATA_DIR, default ./data)")
    run.add_argument("--status-file", type=Path, help=status_help)

    edge = commands.add_parser(
        "edge",
        help="the HTTP edge alone, against INGEST_KAFKA_BOOTSTRAP",
        description="For deployments: configuration only from INGEST_* variables.",
    )
    edge.add_argument("--host")
    edge.add_argument("--port", type=int)
    edge.add_argument("--status-file", type=Path, help=status_help)

    worker = commands.add_parser(
        "worker",
        help="a consumer worker alone, against INGEST_KAFKA_BOOTSTRAP",
        description="For deployments: serves /healthz, /readyz and /metrics on INGEST_PORT.",
    )
    worker.add_argument(
        "role",
        choices=["endpoints", "kpis"],
        help="endpoints: ingest.endpoints → the endpoint store; "
        "kpis: ingest.events → deduplicated KPI aggregates",
    )
    worker.add_argument("--host")
    worker.add_argument("--port", type=int)
    worker.add_argument("--status-file", type=Path, help=status_help)

    commands.add_parser(
        "migrate",
        help="bring the store's schema up to date (INGEST_STORE_URL), create the Kafka topics "
        "when INGEST_KAFKA_BOOTSTRAP is set, and exit",
        description="Every process also does both when it starts; this is the deploy step "
        "(the Kubernetes migration Job) that does them once, before any process starts.",
    )

    return parser


async def _migrate(settings: Settings) -> int:
    """The store's schema, then the topics (with INGEST_KAFKA_BOOTSTRAP):
    both idempotent, so a retried or repeated deploy step changes nothing."""
    from ingest.kafka import clients
    from ingest.store.backends import open_store

    store = await open_store(settings.store_url, data_dir=settings.data_dir)
    await store.close()
    log.info("store schema is up to date")
    if settings.kafka_bootstrap is not None:
        await clients.ensure_topics(settings, settings.kafka_bootstrap)
        log.info(
            "topics %s, %s and %s exist on %s",
            clients.EVENTS_TOPIC,
            clients.ENDPOINTS_TOPIC,
            clients.DEADLETTER_TOPIC,
            settings.kafka_bootstrap,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides = {k: getattr(args, k, None) for k in ("host", "port", "data_dir")}
        settings = Settings.from_env(**overrides)
    except IngestError as exc:
        print(f"ingest: {exc}", file=sys.stderr)  # noqa: T201 - start-up error for the operator
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command in ("run", "edge", "worker"):
            from ingest.process import Mode, serve

            mode: Mode = args.command
            if args.command == "worker":
                mode = "worker-kpis" if args.role == "kpis" else "worker-endpoints"
            return uvloop.run(serve(settings, mode=mode, status_file=args.status_file))
        return uvloop.run(_migrate(settings))
    except IngestError as exc:
        log.error("%s", exc)  # noqa: TRY400 - the message is the whole story for an operator
        return 1
