"""``python -m load fuzz``: N generated requests (:mod:`load.hostile`) against
a live edge on this machine, each answer judged.

A failure is an answer no client may get from the edge:

* any HTTP 5xx (a per-item 500 inside a PutEvents 202 is allowed: it is
  how the edge says Kafka did not take that record, and every SDK retries it);
* a 4xx without ``x-amzn-ErrorType`` (boto3 then raises a generic error);
* a PutEvents 202 whose body is not ``{"Results": …}`` with per-item
  statuses 202, 400 or 500;
* no answer within ``timeout_s``, a connection the server reset or closed,
  or an answer the client could not parse.

Requests the client itself refuses to send (aiohttp rejects a control
character in a path, a URL it cannot parse) are counted as
``refused_by_client`` and are not failures: the server never saw them.

Loopback only: the cases are hostile by design. The first failures are
written, escaped, to ``samples_path`` for reproduction.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import random
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from yarl import URL

from ingest.api.sigv4 import canonical_query, canonical_uri
from load import credentials
from load.api import Api, ApiError
from load.credentials import CredentialsError, Key
from load.hostile import Case, Cases
from load.sdk import REGION
from load.sigv4 import Signer

# A stale signature: past the edge's allowed clock skew (INGEST_AUTH_MAX_SKEW_S, 900 s).
STALE_BY_S = 3600
BODY_PREFIX_BYTES = 600
ANSWER_PREFIX_BYTES = 300
PROGRESS_EVERY = 10_000
LARGE_BODY_BYTES = 1024 * 1024  # aiohttp's threshold for its "large body" warning
ITEM_STATUSES = frozenset((202, 400, 500))
GARBAGE_AUTHORIZATION = (
    "",
    "AWS4-HMAC-SHA256",
    "AWS4-HMAC-SHA256 Credential=",
    "Bearer abc",
    "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=, Signature=",
    "AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/mobiletargeting/aws4_request, "
    "SignedHeaders=host;x-amz-date;zz, Signature=00",
    "AWS4-HMAC-SHA256 Credential=AKIA/99999999/us-east-1/mobiletargeting/aws4_request, "
    "SignedHeaders=host, Signature=" + "0" * 64,
    "AWS4-HMAC-SHA256 Credential=" + "A" * 8000,
    "AWS4-HMAC-SHA256 Credential=AKIA/20260101/\u00e9/mobiletargeting/aws4_request, "
    "SignedHeaders=host, Signature=x",
    "AWS4-HMAC-SHA256 Credential=AKIA/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=1",
)
GARBAGE_TOKENS = ("", "x", "a.b.c", "=" * 100, "IQoJ" + "A" * 3000, "\u00e9t\u00e9", "%00", "eyJ9.eyJ9.e30")


@dataclass(frozen=True, slots=True)
class FuzzOptions:
    url: str
    requests: int = 2000
    seed: int | None = None
    concurrency: int = 16
    timeout_s: float = 10.0
    max_duration_s: float = 900.0
    app_id: str | None = None
    victims: int = 3
    identity_pool_id: str | None = None
    samples_path: Path = Path("fuzz-failures.txt")
    max_samples: int = 20

    def check(self) -> None:
        host = urlsplit(self.url).hostname
        if urlsplit(self.url).scheme != "http" or not host:
            raise ValueError(f"--url must be http://host:port, not {self.url!r}")
        try:
            address = ipaddress.ip_address(socket.gethostbyname(host))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot resolve {host!r}: {exc}") from exc
        if not address.is_loopback:
            raise ValueError(f"fuzzing is for loopback servers only; {host} is {address}")
        if not 1 <= self.concurrency <= 256:
            raise ValueError("--concurrency must be 1-256")
        if self.requests < 1 or self.timeout_s <= 0 or self.max_duration_s <= 0:
            raise ValueError("-n, --timeout and --max-duration must be positive")


@dataclass
class Tally:
    """What the run saw; ``failures`` are the verdicts that fail it."""

    sent: int = 0
    status: Counter[str] = field(default_factory=Counter)
    error_types: Counter[str] = field(default_factory=Counter)
    by_operation: dict[str, Counter[str]] = field(default_factory=dict)
    kinds: Counter[str] = field(default_factory=Counter)
    item_500: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)


def judge(case: Case, status: int, error_type: str | None, answer: bytes) -> tuple[str | None, int]:
    """(the failure this answer is, or None; per-item 500s in it)."""
    if status >= 500:
        return f"http_{status}", 0
    if 400 <= status < 500 and not error_type:
        return f"http_{status}_without_error_type", 0
    if case.operation != "PutEvents" or case.method != "POST" or status != 202:
        return None, 0
    try:
        results = orjson.loads(answer)["Results"]
        codes = [
            code
            for item in results.values()
            for code in (
                item["EndpointItemResponse"]["StatusCode"],
                *(event["StatusCode"] for event in item["EventsItemResponse"].values()),
            )
        ]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return "bad_202_body", 0
    if any(code not in ITEM_STATUSES for code in codes):
        return "item_status_not_202_400_500", 0
    return None, codes.count(500)


class Sender:
    """Signs and sends cases; one per run, shared by its concurrent senders."""

    def __init__(self, session: aiohttp.ClientSession, base: str, key: Key, temporary: Key | None) -> None:
        host = urlsplit(base).netloc

        def signer(k: Key) -> Signer:
            return Signer(
                access_key_id=k.access_key_id,
                secret_access_key=k.secret_access_key,
                region=REGION,
                host=host,
                session_token=k.session_token,
            )

        self._session = session
        self._base = base
        self._signers = {
            "good": signer(key),
            "stale-date": signer(key),
            "bad-signature": signer(key),
            "unknown-key": signer(Key("AKIAFUZZUNKNOWN00000", "not-a-secret")),
            "temporary": signer(temporary or Key("ASIAFUZZ0000", "x", "IQoJ" + "b" * 700)),
        }
        tokens = [("ASIAFUZZ0000", token) for token in GARBAGE_TOKENS]
        if temporary is not None and temporary.session_token:
            real = temporary.session_token
            flipped = real[:-2] + ("A" if real[-2] != "A" else "B") + real[-1]
            tokens += [(temporary.access_key_id, flipped), (temporary.access_key_id, real[: len(real) // 2])]
        self._bad_tokens = [signer(Key(key_id, "x", token)) for key_id, token in tokens]

    def _headers(self, case: Case, url: URL) -> dict[str, str]:
        headers = dict(case.headers)
        if case.content_type is not None:
            headers["Content-Type"] = case.content_type
        if case.signing == "none":
            return headers
        if case.signing == "garbage-header":
            headers["Authorization"] = GARBAGE_AUTHORIZATION[case.index % len(GARBAGE_AUTHORIZATION)]
            headers["X-Amz-Date"] = ("20260101T000000Z", "garbage", "")[case.index % 3]
            return headers
        if case.signing == "bad-token":
            chosen = self._bad_tokens[case.index % len(self._bad_tokens)]
        else:
            chosen = self._signers[case.signing]
        now = int(time.time()) - (STALE_BY_S if case.signing == "stale-date" else 0)
        signed = chosen.sign_canonical(
            case.method,
            canonical_uri(url.raw_path.encode()).decode(),
            canonical_query(url.raw_query_string.encode()).decode(),
            case.body,
            epoch_s=now,
            content_type=case.content_type,
        )
        if case.signing == "bad-signature":
            auth = signed["Authorization"]
            signed["Authorization"] = auth[:-1] + ("0" if auth[-1] != "0" else "1")
        return headers | signed

    async def send(self, case: Case) -> tuple[str, int | None, str | None, bytes]:
        """(outcome, status, x-amzn-ErrorType, answer). Outcome is ``answered``,
        ``refused_by_client``, ``timeout``, ``connection`` or ``bad_response``."""
        try:
            url = URL(self._base + case.path + (f"?{case.query}" if case.query else ""), encoded=True)
            headers = self._headers(case, url)
        except ValueError:
            return "refused_by_client", None, None, b""
        try:
            async with self._session.request(
                case.method,
                url,
                # aiohttp warns of large bytes (as a ResourceWarning); a stream of them it sends as is.
                data=io.BytesIO(case.body) if len(case.body) > LARGE_BODY_BYTES else case.body or None,
                headers=headers,
                skip_auto_headers=("Content-Type",),
                allow_redirects=False,
            ) as response:
                answer = await response.read()
                return "answered", response.status, response.headers.get("x-amzn-ErrorType"), answer
        except TimeoutError:
            return "timeout", None, None, b""
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            return "connection", None, None, b""
        except aiohttp.ClientResponseError:
            return "bad_response", None, None, b""
        except (aiohttp.InvalidURL, ValueError, UnicodeError):
            # aiohttp would not write this request (a forbidden character in
            # the request line or a header): the server never saw it.
            return "refused_by_client", None, None, b""


def _sample(
    case: Case, verdict: str, status: int | None, error_type: str | None, answer: bytes
) -> dict[str, Any]:
    """One failure, escaped (``repr`` of the bytes) so any of it can be pasted back."""
    return {
        "verdict": verdict,
        "index": case.index,
        "operation": case.operation,
        "kind": case.kind,
        "method": case.method,
        "path": repr(case.path),
        "query": repr(case.query),
        "content_type": case.content_type,
        "signing": case.signing,
        "headers": dict(case.headers),
        "body_bytes": len(case.body),
        "body_prefix": repr(case.body[:BODY_PREFIX_BYTES]),
        "status": status,
        "error_type": error_type,
        "answer_prefix": repr(answer[:ANSWER_PREFIX_BYTES]),
    }


def _base(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def _setup(session: aiohttp.ClientSession, options: FuzzOptions, key: Key, seed: int) -> dict[str, Any]:
    """The run's app, the apps DeleteApp may delete, and temporary
    credentials when an identity pool was given."""
    api = Api(session, options.url, key)
    app_id = options.app_id or await api.create_app(f"fuzz-{seed}")
    victims: list[str] = []
    for i in range(options.victims):
        try:
            victims.append(await api.create_app(f"fuzz-{seed}-victim-{i}"))
        except ApiError as exc:
            if exc.status != 400:  # 400: the app quota is used up; fuzz with fewer victims
                raise
            break
    identity_id = temporary = None
    if options.identity_pool_id:
        base = _base(options.url)
        identity_id = await credentials.identity(base, options.identity_pool_id)
        temporary = await credentials.temporary(session, base, identity_id)
    return {"app_id": app_id, "victims": tuple(victims), "identity_id": identity_id, "temporary": temporary}


async def execute(options: FuzzOptions, key: Key, out: Any = None) -> dict[str, Any]:
    """One fuzz run → its summary (``ok`` is the verdict)."""
    seed = options.seed if options.seed is not None else random.SystemRandom().getrandbits(32)
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=options.concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=options.timeout_s), auto_decompress=False
    ) as session:
        setup = await _setup(session, options, key, seed)
        now_ms = int(time.time() * 1000)
        cases = Cases(
            seed=seed,
            app_id=setup["app_id"],
            victims=setup["victims"],
            pool_id=options.identity_pool_id,
            identity_id=setup["identity_id"],
            now_ms=now_ms,
        )
        sender = Sender(session, _base(options.url), key, setup["temporary"])
        started = time.monotonic()
        deadline = started + options.max_duration_s

        async def one_sender() -> None:
            while tally.sent < options.requests and time.monotonic() < deadline:
                case = next(cases)
                tally.sent += 1
                if out is not None and tally.sent % PROGRESS_EVERY == 0:
                    print(f"fuzz: {tally.sent} sent, {sum(tally.failures.values())} failures", file=out)
                outcome, status, error_type, answer = await sender.send(case)
                key_ = str(status) if outcome == "answered" else outcome
                tally.status[key_] += 1
                tally.by_operation.setdefault(case.operation, Counter())[key_] += 1
                tally.kinds["valid" if case.kind == "valid" else "mutated"] += 1
                if error_type:
                    tally.error_types[error_type] += 1
                if outcome == "refused_by_client":
                    continue
                verdict, item_500 = (
                    (outcome, 0) if status is None else judge(case, status, error_type, answer)
                )
                tally.item_500 += item_500
                if verdict is not None:
                    tally.failures[verdict] += 1
                    if len(tally.samples) < options.max_samples:
                        tally.samples.append(_sample(case, verdict, status, error_type, answer))

        async with asyncio.TaskGroup() as group:
            for _ in range(options.concurrency):
                group.create_task(one_sender())
        elapsed = time.monotonic() - started
    failed = sum(tally.failures.values())
    complete = tally.sent >= options.requests
    if tally.samples:
        options.samples_path.write_text("".join(orjson.dumps(s).decode() + "\n" for s in tally.samples))
    return {
        "ok": failed == 0 and complete,
        "url": options.url,
        "seed": seed,
        "now_ms": now_ms,
        "app_id": setup["app_id"],
        "requests": options.requests,
        "sent": tally.sent,
        "complete": complete,
        "concurrency": options.concurrency,
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(tally.sent / elapsed, 1) if elapsed > 0 else None,
        "valid": tally.kinds["valid"],
        "mutated": tally.kinds["mutated"],
        "status": dict(tally.status.most_common()),
        "error_types": dict(tally.error_types.most_common()),
        "by_operation": {op: dict(c.most_common()) for op, c in sorted(tally.by_operation.items())},
        "item_500": tally.item_500,
        "failures": dict(tally.failures.most_common()),
        "failed": failed,
        "samples_path": str(options.samples_path) if tally.samples else None,
    }


def human(summary: dict[str, Any]) -> str:
    lines = [
        f"fuzz {summary['url']} seed {summary['seed']}: {summary['sent']}/{summary['requests']} requests "
        f"({summary['valid']} valid, {summary['mutated']} mutated) in {summary['elapsed_s']} s, "
        f"{summary['requests_per_s']} req/s, concurrency {summary['concurrency']}",
        "status: " + ", ".join(f"{k} {v}" for k, v in summary["status"].items()),
        "x-amzn-ErrorType: " + ", ".join(f"{k} {v}" for k, v in summary["error_types"].items()),
        f"per-item 500s in PutEvents 202s (allowed): {summary['item_500']}",
    ]
    lines += [
        f"  {op}: " + ", ".join(f"{k} {v}" for k, v in c.items()) for op, c in summary["by_operation"].items()
    ]
    if summary["failed"]:
        lines.append("FAILURES: " + ", ".join(f"{k} {v}" for k, v in summary["failures"].items()))
        lines.append(f"first failing requests in {summary['samples_path']}")
    if not summary["complete"]:
        lines.append(f"INCOMPLETE: {summary['sent']} of {summary['requests']} sent within --max-duration")
    lines.append("ok" if summary["ok"] else "NOT OK")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m load fuzz",
        description="Generated valid and hostile requests for every operation against a loopback edge; "
        "fails on any 5xx (but per-item 500s in PutEvents), 4xx without x-amzn-ErrorType, timeout or reset.",
    )
    p.add_argument("--url", required=True, help="the edge, on this machine (http://127.0.0.1:PORT)")
    p.add_argument("-n", "--requests", type=int, default=2000, help="requests to send (2000)")
    p.add_argument("--seed", type=int, help="makes the cases repeatable (default: random, reported)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (16, at most 256)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a request is a failure (10)")
    p.add_argument("--max-duration", type=float, default=900.0, help="stop sending after this long (900 s)")
    p.add_argument("--app-id", help="fuzz this existing app (default: one created for the run)")
    p.add_argument(
        "--victims", type=int, default=3, help="apps created for DeleteApp to delete under writes (3)"
    )
    p.add_argument("--identity-pool-id", help="a pool of the app, for valid Cognito calls and temporary keys")
    p.add_argument("--data-dir", help="sign with this data dir's credentials file (profile ingest)")
    p.add_argument("--samples", default="fuzz-failures.txt", help="where the first failing requests go")
    p.add_argument("--json", action="store_true", help="end with the summary as one JSON line on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    options = FuzzOptions(
        url=args.url,
        requests=args.requests,
        seed=args.seed,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        max_duration_s=args.max_duration,
        app_id=args.app_id,
        victims=args.victims,
        identity_pool_id=args.identity_pool_id,
        samples_path=Path(args.samples),
    )
    try:
        options.check()
    except ValueError as exc:
        parser.error(str(exc))
    try:
        key = (
            credentials.from_file(Path(args.data_dir) / "credentials")
            if args.data_dir
            else credentials.from_environment()
        )
        summary = asyncio.run(execute(options, key, out=None if args.quiet else sys.stderr))
    except CredentialsError as exc:
        print(f"python -m load fuzz: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:  # setting up (CreateApp) failed: nothing was fuzzed
        print(f"python -m load fuzz: setting up: {exc}", file=sys.stderr)
        return 1
    print(human(summary), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0 if summary["ok"] else 1
