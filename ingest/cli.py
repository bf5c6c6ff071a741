"""`ingest`: the command line. Builds Settings once, installs uvloop, runs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from ingest import __version__, logs
from ingest.errors import IngestError, KeyRequestError
from ingest.settings import Settings

if TYPE_CHECKING:
    from ingest.keys import AccessKey, MasterKey
    from ingest.process import Mode
    from ingest.store.base import Store

log = logging.getLogger("ingest")
# ingest.scopes.Scope's values, without importing it (and cryptography) for `ingest run`.
SCOPE_CHOICES = ("admin", "read", "ingest")


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
    run.add_argument(
        "--probe-port",
        type=int,
        help="port of /healthz, /readyz and /metrics, 0 for any free one (INGEST_PROBE_PORT, default 9090)",
    )
    run.add_argument("--status-file", type=Path, help=status_help)

    edge = commands.add_parser(
        "edge",
        help="the HTTP edge alone, against INGEST_KAFKA_BOOTSTRAP",
        description="For deployments: configuration only from INGEST_* variables.",
    )
    edge.add_argument("--host", help="API listen address (INGEST_HOST)")
    edge.add_argument("--port", type=int, help="API port (INGEST_PORT)")
    edge.add_argument("--probe-port", type=int, help="probe and /metrics port (INGEST_PROBE_PORT)")
    edge.add_argument("--status-file", type=Path, help=status_help)
    edge.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the API port with other edges (SO_REUSEPORT; the kernel spreads connections)",
    )

    worker = commands.add_parser(
        "worker",
        help="a consumer worker alone, against INGEST_KAFKA_BOOTSTRAP",
        description="For deployments: serves only /healthz, /readyz and /metrics, on "
        "INGEST_PROBE_HOST:INGEST_PROBE_PORT (--host and --port set them).",
    )
    worker.add_argument(
        "role",
        choices=["endpoints", "kpis", "streams", "jobs"],
        help="endpoints: ingest.endpoints → the endpoint store; "
        "kpis: ingest.events → deduplicated KPI aggregates; "
        "streams: ingest.events → each app's event stream (Kinesis, Firehose, Kafka); "
        "jobs: import and export jobs (S3 or files ↔ ingest.endpoints and the store)",
    )
    worker.add_argument("--host", help="probe listen address (INGEST_PROBE_HOST)")
    worker.add_argument("--port", type=int, help="probe and /metrics port (INGEST_PROBE_PORT)")
    worker.add_argument("--status-file", type=Path, help=status_help)
    for sub in (edge, worker):
        sub.add_argument(
            "--process-name",
            type=_process_name,
            help="name this process in each log line (a supervisor's role name: a-z, 0-9, '-')",
        )

    commands.add_parser(
        "migrate",
        help="bring the store's schema up to date (INGEST_STORE_URL), create the Kafka topics "
        "when INGEST_KAFKA_BOOTSTRAP is set, and exit",
        description="Every process also does both when it starts; this is the deploy step "
        "(the Kubernetes migration Job) that does them once, before any process starts.",
    )

    _admin_parsers(commands)
    return parser


def _process_name(raw: str) -> str:
    if logs.PROCESS_NAME.fullmatch(raw) is None:
        raise argparse.ArgumentTypeError("1-32 of a-z, 0-9 and '-'")
    return raw


def _admin_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`ingest keys …` and `ingest identity-pools …`: the store's credentials,
    for operators. Each reads the same settings as `ingest run`."""
    data_dir_help = "the store and master key's directory (INGEST_DATA_DIR, default ./data)"
    keys = commands.add_parser(
        "keys",
        help="access keys for the API: create (shows the secret, once), list, revoke",
        description="Each key has a scope: admin (every operation), read (the GET operations of its "
        "apps but GetEventStream) or ingest (PutEvents, UpdateEndpoint, UpdateEndpointsBatch of its "
        "apps). A running edge sees a new or revoked key within INGEST_AUTH_REFRESH_S.",
    )
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="print one JSON object with the new key and its secret")
    create.add_argument("--name", required=True, help="what the key is for (1-128 characters)")
    create.add_argument("--scope", required=True, choices=SCOPE_CHOICES)
    create.add_argument(
        "--app",
        dest="apps",
        action="append",
        default=[],
        metavar="APP_ID",
        help="bind the key to this app (repeatable); read and ingest keys need one, "
        "an admin key without any covers every app",
    )
    listing = actions.add_parser("list", help="print every key as a JSON array, without secrets")
    revoke = actions.add_parser("revoke", help="refuse the key from now on (within INGEST_AUTH_REFRESH_S)")
    revoke.add_argument("access_key_id", metavar="ACCESS_KEY_ID")
    pools = commands.add_parser(
        "identity-pools",
        help="Cognito-style identity pools: temporary ingest credentials for one app's mobile clients",
    )
    pool_actions = pools.add_subparsers(dest="action", required=True)
    pool = pool_actions.add_parser("create", help="print one JSON object with the new pool's ID")
    pool.add_argument("--app", required=True, metavar="APP_ID")
    for sub in (create, listing, revoke, pool):
        sub.add_argument("--data-dir", type=Path, help=data_dir_help)


async def _admin(settings: Settings, args: argparse.Namespace) -> int:
    """The `keys` and `identity-pools` commands: JSON on stdout, a refused
    request as exit 2 with the reason on stderr."""
    from ingest.keys import MasterKey
    from ingest.store.backends import open_store

    master = MasterKey.load(settings)
    store = await open_store(settings.store_url, data_dir=settings.data_dir)
    try:
        _print(await _administer(settings, args, store, master))
    except KeyRequestError as exc:
        print(f"ingest: {exc}", file=sys.stderr)  # noqa: T201 - the operator's mistake, said to them
        return 2
    finally:
        await store.close()
    return 0


async def _administer(
    settings: Settings, args: argparse.Namespace, store: Store, master: MasterKey
) -> object:
    """What the command prints. Raises KeyRequestError for a request refused."""
    from ingest import keys

    now_ms = time.time_ns() // 1_000_000
    if args.command == "identity-pools":
        await _existing_apps(store, [args.app])
        created = keys.new_identity_pool(region=settings.region, app_id=args.app, now_ms=now_ms)
        await store.create_identity_pool(created)
        return {"IdentityPoolId": created.id, "ApplicationId": created.app_id}
    if args.action == "create":
        key, secret = keys.issue_key(master, name=args.name, scope=args.scope, apps=args.apps, now_ms=now_ms)
        await _existing_apps(store, key.apps)
        await store.create_key(key)
        log.info("created %s key %s", key.scope, key.access_key_id)
        return {
            "AccessKeyId": key.access_key_id,
            "SecretAccessKey": secret,
            "Scope": key.scope,
            "Apps": [*key.apps],
        }
    if args.action == "list":
        return [_listed(key) for key in await store.list_keys()]
    if not await store.revoke_key(args.access_key_id, now_ms):
        raise KeyRequestError(f"no access key {args.access_key_id!r}")
    log.info("revoked key %s", args.access_key_id)
    return {"AccessKeyId": args.access_key_id, "Status": "Inactive"}


async def _existing_apps(store: Store, apps: Sequence[str]) -> None:
    missing = [app for app in apps if await store.get_app(app) is None]
    if missing:
        raise KeyRequestError(f"no such app: {', '.join(missing)}")


def _listed(key: AccessKey) -> dict[str, object]:
    """A key as `keys list` shows it: IAM ListAccessKeys' words, no secret."""
    return {
        "AccessKeyId": key.access_key_id,
        "Name": key.name,
        "Scope": key.scope,
        "Apps": list(key.apps),
        "Status": "Active" if key.revoked_ms is None else "Inactive",
        "CreateDate": _iso(key.created_ms),
        "RevokeDate": None if key.revoked_ms is None else _iso(key.revoked_ms),
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _print(value: object) -> None:
    sys.stdout.write(json.dumps(value) + "\n")


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


# `ingest worker ROLE` → the process mode it runs.
WORKER_MODES: dict[str, Mode] = {
    "endpoints": "worker-endpoints",
    "kpis": "worker-kpis",
    "streams": "worker-streams",
    "jobs": "worker-jobs",
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides = {k: getattr(args, k, None) for k in ("host", "port", "probe_port", "data_dir")}
        if args.command == "worker":  # a worker's only listener is its probes'
            overrides = {"probe_host": args.host, "probe_port": args.port}
        settings = Settings.from_env(**overrides)
    except IngestError as exc:
        print(f"ingest: {exc}", file=sys.stderr)  # noqa: T201 - start-up error for the operator
        return 2
    logs.configure(settings.log_level, process=getattr(args, "process_name", None))
    try:
        if args.command == "run" and settings.edge_process_count > 0:
            from ingest.supervise import supervise

            return uvloop.run(supervise(settings, status_file=args.status_file))
        if args.command in ("run", "edge", "worker"):
            from ingest.process import serve

            mode: Mode = args.command
            if args.command == "worker":
                mode = WORKER_MODES[args.role]
            reuse_port = getattr(args, "reuse_port", False)
            served = serve(settings, mode=mode, status_file=args.status_file, reuse_port=reuse_port)
            return uvloop.run(served)
        if args.command in ("keys", "identity-pools"):
            return uvloop.run(_admin(settings, args))
        return uvloop.run(_migrate(settings))
    except IngestError as exc:
        log.error("%s", exc)  # noqa: TRY400 - the message is the whole story for an operator
        return 1
