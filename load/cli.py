"""``python -m load``: the command line (``python -m load fuzz …``: the fuzzer,
:mod:`load.fuzz`). Progress goes to stderr; the summary
to stdout, or with ``--json`` to stderr and one JSON line to stdout (so the
last line printed is the JSON object). Exit 0 when the run holds up
(nothing lost, nothing counted twice, every event answered as expected),
1 when it does not, 2 for bad options or no credentials."""

from __future__ import annotations

import argparse
import sys

import orjson

from load.credentials import CredentialsError
from load.harness import Options, run_load
from load.traffic import PROFILE_CHOICES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m load",
        description="Realistic Pinpoint SDK traffic against the edge, accounted end to end.",
    )
    target = p.add_argument_group("target (one of)")
    target.add_argument("--url", help="the edge to load (default http://127.0.0.1:8080)")
    target.add_argument(
        "--null-server",
        action="store_true",
        help="start a server that answers Accepted and does nothing else, and load it: "
        "the generator's own ceiling (no accounting)",
    )
    target.add_argument("--null-processes", type=int, default=1, help="processes of the null server")
    target.add_argument("--spawn", action="store_true", help="start `ingest run` on a free port and load it")
    target.add_argument(
        "--chaos",
        action="store_true",
        help="start `ingest run`; during the run SIGKILL its KPI worker (which it starts again) "
        "and freeze the broker past the produce deadline (see load/README.md)",
    )
    target.add_argument(
        "--app-id",
        help="load this existing app instead of creating one (what it counted before is subtracted)",
    )
    auth = p.add_argument_group(
        "credentials",
        "backends and the harness's own calls sign with the AWS credentials found as the SDKs find them "
        "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, else AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials "
        "and AWS_PROFILE; with --spawn/--chaos, the started data dir's credentials file); devices with "
        "Cognito-style temporary credentials from the server",
    )
    auth.add_argument(
        "--identity-pool-id",
        help="the devices' identity pool (REGION:UUID, of --app-id's app); default: one made for the run's "
        "app with `ingest identity-pools create`",
    )
    auth.add_argument(
        "--data-dir",
        help="the target server's data dir, for `ingest identity-pools create` (default: INGEST_* settings)",
    )
    shape = p.add_argument_group("traffic")
    shape.add_argument("--duration", type=float, default=10.0, help="seconds of sending (default 10)")
    shape.add_argument(
        "--rate", type=float, help="open loop: target events/s, latency from due time; default: closed loop"
    )
    shape.add_argument("--concurrency", type=int, default=32, help="connections / batches in flight (32)")
    shape.add_argument(
        "--batch-size", type=int, default=100, help="events per request (100, Amplify's flush)"
    )
    shape.add_argument("--endpoints", type=int, default=1000, help="devices (endpoints) in the run (1000)")
    shape.add_argument(
        "--retry-rate",
        type=float,
        default=0.0,
        help="share of batches sent again, same event IDs, as after an SDK timeout (0)",
    )
    shape.add_argument(
        "--invalid-rate", type=float, default=0.0, help="share of events breaking a per-event rule (0)"
    )
    shape.add_argument(
        "--profile", choices=PROFILE_CHOICES, default="mixed", help="SDK request shapes (mixed)"
    )
    shape.add_argument(
        "--hot-share", type=float, default=0.0, help="share of batches sent by the hottest 10%% of endpoints"
    )
    shape.add_argument("--seed", type=int, help="makes the traffic repeatable (default: random, reported)")
    run = p.add_argument_group("running")
    run.add_argument("--processes", type=int, default=1, help="generator processes (1)")
    run.add_argument(
        "--timeout", type=float, default=10.0, help="seconds before a request counts as timed out"
    )
    run.add_argument("--max-attempts", type=int, default=10, help="SDK attempts per batch before giving up")
    run.add_argument("--no-verify", action="store_true", help="skip the KPI accounting")
    run.add_argument(
        "--drain-timeout", type=float, default=120.0, help="longest wait for the KPIs to catch up (120 s)"
    )
    run.add_argument("--json", action="store_true", help="end with the summary as one JSON line on stdout")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def options_of(args: argparse.Namespace) -> Options:
    return Options(
        url=args.url,
        duration_s=args.duration,
        rate=args.rate,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        endpoints=args.endpoints,
        retry_rate=args.retry_rate,
        invalid_rate=args.invalid_rate,
        profile=args.profile,
        hot_share=args.hot_share,
        seed=args.seed,
        processes=args.processes,
        timeout_s=args.timeout,
        max_attempts=args.max_attempts,
        verify=not args.no_verify,
        drain_timeout_s=args.drain_timeout,
        null_server=args.null_server,
        null_processes=args.null_processes,
        spawn=args.spawn,
        chaos=args.chaos,
        app_id=args.app_id,
        identity_pool_id=args.identity_pool_id,
        data_dir=args.data_dir,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fuzz"]:
        from load import fuzz

        return fuzz.main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    options = options_of(args)
    try:
        options.check()
    except ValueError as exc:
        parser.error(str(exc))
    try:
        summary = run_load(options, out=None if args.quiet else sys.stderr)
    except CredentialsError as exc:
        print(f"python -m load: {exc}", file=sys.stderr)
        return 2

    from load.progress import human

    if args.json:
        print(human(summary), file=sys.stderr)
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    else:
        print(human(summary))
    return 0 if summary["ok"] else 1
