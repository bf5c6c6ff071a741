"""The AWS end of event streams: Kinesis ``PutRecords`` and Firehose
``PutRecordBatch``, signed as the stream's role (STS ``AssumeRole``) or as
the process itself. It earns its size as the one botocore boundary: the
service limits, the error map, redaction, credentials and the thread pool
are one contract, and nothing else in the package imports botocore. The
jobs worker's S3 calls (:mod:`ingest.jobs.sources`) go through the same
:meth:`AwsDelivery.call`, with a role session name of their own.

botocore itself, not aiobotocore (whose releases pin a botocore older than
the one our boto3 needs), so every call runs in a bounded thread pool and
never on the event loop: at most ``max_threads`` calls at once, and a caller
beyond that waits on the loop, not in an unbounded executor queue.

Contract of both calls: **one attempt**. botocore's own retries are off; the
caller (the event-stream worker) retries with its policy and its metrics.
The answer has one entry per record, in order: ``None`` when the service
acknowledged the record, a :class:`RecordFailure` when it did not (the
record may be sent again; ``retriable`` says whether that may help). A
:class:`~ingest.errors.DeliveryError` means the whole call failed. After a
timeout or a dropped connection the service may still have written some or
all of the records, so delivery is at-least-once, as Kinesis and Firehose
themselves are. A caller cancelled mid-call does not un-send anything: the
call runs to its end in its thread.

Credentials: one botocore session with the standard chain of the process
(environment, the web identity token file on EKS, container or instance
credentials, shared config), resolved by botocore. With ``assume_role``,
each (role ARN, external ID) is assumed once through STS (session name
``ingest-event-stream``) and reused until :data:`ROLE_REFRESH_AHEAD_S`
before it expires, or until Kinesis or Firehose rejects its token, after
which the next call assumes it again. Endpoints are botocore's: the
destination ARN's region, or ``AWS_ENDPOINT_URL_KINESIS``,
``AWS_ENDPOINT_URL_FIREHOSE`` and ``AWS_ENDPOINT_URL_STS`` (or
``AWS_ENDPOINT_URL``), which botocore honours itself.

No credential (nor the external ID, which guards the role as a shared
secret would) reaches an error message or the log: service texts are
redacted, and a botocore ``ClientError`` is not chained, since some AWS
answers echo the signed request headers, the session token among them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from ingest.errors import DeliveryError, DeliveryReason
from ingest.streams.destinations import Destination

log = logging.getLogger(__name__)

Reason = DeliveryReason

# Service limits, from the Kinesis Data Streams API reference (PutRecords)
# and the Amazon Data Firehose API reference and quotas (PutRecordBatch).
# Kinesis now takes records (and requests) of up to 10 MiB on a stream whose
# maximum record size was raised; 1 MiB and 5 MiB hold on every stream.
KINESIS_MAX_RECORDS = 500
"""Records per PutRecords request."""
KINESIS_MAX_REQUEST_BYTES = 5 * 1024 * 1024
"""Bytes per PutRecords request: every record's data and partition key."""
KINESIS_MAX_RECORD_BYTES = 1024 * 1024
"""Bytes per record: its data plus its partition key (UTF-8)."""
KINESIS_MAX_PARTITION_KEY_CHARS = 256
"""Unicode characters per partition key (at least one)."""
FIREHOSE_MAX_RECORDS = 500
"""Records per PutRecordBatch request."""
FIREHOSE_MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""Bytes per PutRecordBatch request, before base64."""
FIREHOSE_MAX_RECORD_BYTES = 1000 * 1024
"""Bytes per record's data, before base64 ("1,000 KiB")."""

ROLE_SESSION_NAME = "ingest-event-stream"
# Assumed credentials last an hour (STS's default DurationSeconds). Five
# minutes ahead leaves room for a call (at most connect + read timeout) and
# for clock skew between us and STS.
ROLE_REFRESH_AHEAD_S = 5 * 60
# Clients per (service, region, credentials) and assumed roles kept: an app
# has one stream, so these bound the apps delivered to at once per process.
MAX_CLIENTS = 64
MAX_ROLES = 64
# Of a service's error text kept in our messages.
MAX_SERVICE_TEXT_CHARS = 300
# How long close() waits for calls in flight: one call is bounded by its
# connect and read timeouts, plus an AssumeRole before it.
DRAIN_TIMEOUT_S = 45.0

# The service's error code → our reason and whether a retry may succeed
# without an operator. Kinesis, Firehose and STS codes; the KMS ones come
# from streams encrypted with a customer key.
_CODES: dict[str, tuple[Reason, bool]] = {
    **dict.fromkeys(
        (
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "Throttling",
            "LimitExceededException",
            "TooManyRequestsException",
            "RequestLimitExceeded",
            "KMSThrottlingException",
        ),
        ("throttled", True),
    ),
    **dict.fromkeys(
        (
            "ServiceUnavailableException",
            "ServiceUnavailable",
            "InternalFailure",
            "InternalServerError",
            "InternalError",
            "InternalFailureException",
        ),
        ("unavailable", True),
    ),
    **dict.fromkeys(("ResourceNotFoundException", "KMSNotFoundException"), ("not_found", False)),
    **dict.fromkeys(
        (
            "AccessDenied",
            "AccessDeniedException",
            "UnrecognizedClientException",
            "InvalidClientTokenId",
            "InvalidAccessKeyId",
            "InvalidSignatureException",
            "SignatureDoesNotMatch",
            "IncompleteSignature",
            "IncompleteSignatureException",
            "MissingAuthenticationToken",
            "MissingAuthenticationTokenException",
            "RegionDisabledException",
            "KMSAccessDeniedException",
            "KMSDisabledException",
            "KMSInvalidStateException",
            "KMSOptInRequired",
            "InvalidKMSResourceException",
        ),
        ("access_denied", False),
    ),
    # Expired credentials are renewed without an operator: the assumed ones
    # by the next AssumeRole, the process's own by botocore's refresh.
    **dict.fromkeys(
        ("ExpiredToken", "ExpiredTokenException", "RequestExpired"),
        ("access_denied", True),
    ),
    **dict.fromkeys(
        (
            "ValidationException",
            "InvalidArgumentException",
            "InvalidParameterValue",
            "InvalidParameterCombination",
            "MalformedPolicyDocument",
            "PackedPolicyTooLarge",
            "SerializationException",
        ),
        ("invalid", False),
    ),
}
# Answers that say the token we signed with is no good (expired or not
# known): the role's credentials are dropped and assumed again next time.
_TOKEN_CODES = frozenset(
    (
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
    )
)
# Access key IDs, a signed header line carrying a token, and any long run of
# base64 (secret keys are 40 characters, session tokens hundreds).
_SECRETS = re.compile(
    r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b"
    r"|(?i:x-amz-security-token)\s*[:=]\s*\S+"
    r"|[A-Za-z0-9/+=]{40,}"
)


def classify(code: str, status: int | None = None) -> tuple[Reason, bool]:
    """A service error code (and HTTP status, when known) → (reason, retriable).
    An unknown code with a 5xx status is ``unavailable``, otherwise ``other``."""
    known = _CODES.get(code)
    if known is not None:
        return known
    if status is not None and status >= 500:
        return "unavailable", True
    return "other", False


def redact(text: str) -> str:
    """A service's text with anything shaped like a credential replaced, cut
    to :data:`MAX_SERVICE_TEXT_CHARS`."""
    cleaned = _SECRETS.sub("[redacted]", text)
    if len(cleaned) > MAX_SERVICE_TEXT_CHARS:
        cleaned = cleaned[:MAX_SERVICE_TEXT_CHARS] + "..."
    return cleaned


@dataclass(frozen=True, slots=True)
class RecordFailure:
    """A record the service did not take; the others of its call it did."""

    code: str
    """The service's per-record ErrorCode, e.g. ProvisionedThroughputExceededException."""
    message: str
    """Its ErrorMessage, redacted."""
    reason: Reason
    retriable: bool


def record_results(entries: Sequence[Mapping[str, Any]], sent: int, what: str) -> list[RecordFailure | None]:
    """A response's per-record entries (Kinesis ``Records``, Firehose
    ``RequestResponses``) → one result per record sent. An answer with a
    different count is a DeliveryError: which records it took is unknown,
    so all may be sent again."""
    if len(entries) != sent:
        raise DeliveryError(
            f"{what} answered {len(entries)} results for {sent} records", reason="other", retriable=True
        )
    results: list[RecordFailure | None] = []
    for entry in entries:
        code = entry.get("ErrorCode")
        if not code:
            results.append(None)
            continue
        reason, retriable = classify(str(code))
        results.append(
            RecordFailure(str(code), redact(str(entry.get("ErrorMessage") or "")), reason, retriable)
        )
    return results


def check_kinesis(records: Sequence[tuple[str, bytes]]) -> None:
    """DeliveryError (``invalid``) for a PutRecords batch Kinesis would refuse."""
    _check_count(len(records), KINESIS_MAX_RECORDS, "PutRecords")
    total = 0
    for index, (key, data) in enumerate(records):
        if not 1 <= len(key) <= KINESIS_MAX_PARTITION_KEY_CHARS:
            raise DeliveryError(
                f"PutRecords record {index}: a partition key has 1-{KINESIS_MAX_PARTITION_KEY_CHARS} "
                f"characters, not {len(key)}",
                reason="invalid",
                retriable=False,
            )
        size = len(key.encode()) + len(data)
        _check_size(index, size, KINESIS_MAX_RECORD_BYTES, "PutRecords", "data and partition key")
        total += size
    _check_total(total, KINESIS_MAX_REQUEST_BYTES, "PutRecords")


def check_firehose(records: Sequence[bytes]) -> None:
    """DeliveryError (``invalid``) for a PutRecordBatch batch Firehose would refuse."""
    _check_count(len(records), FIREHOSE_MAX_RECORDS, "PutRecordBatch")
    for index, data in enumerate(records):
        _check_size(index, len(data), FIREHOSE_MAX_RECORD_BYTES, "PutRecordBatch", "data")
    _check_total(sum(map(len, records)), FIREHOSE_MAX_REQUEST_BYTES, "PutRecordBatch")


def _check_count(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise DeliveryError(
            f"{what} takes at most {limit} records, not {count}", reason="invalid", retriable=False
        )


def _check_size(index: int, size: int, limit: int, what: str, of: str) -> None:
    if size > limit:
        raise DeliveryError(
            f"{what} record {index}: its {of} come to {size} bytes, over the {limit}-byte limit",
            reason="invalid",
            retriable=False,
        )


def _check_total(total: int, limit: int, what: str) -> None:
    if total > limit:
        raise DeliveryError(
            f"{what} request of {total} bytes, over the {limit}-byte limit", reason="invalid", retriable=False
        )


def client_error(exc: ClientError, what: str) -> DeliveryError:
    """botocore's ClientError → DeliveryError, its service text redacted."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    reason, retriable = classify(code, status)
    text = redact(str(error.get("Message") or ""))
    return DeliveryError(
        f"{what} failed: {code} (HTTP {status}): {text}", reason=reason, retriable=retriable, code=code
    )


def botocore_error(exc: BotoCoreError, what: str) -> DeliveryError:
    """Any other botocore error → DeliveryError. Their texts name endpoints
    and parameters, never credentials."""
    code = type(exc).__name__
    reason: Reason
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        reason, retriable = "credentials", False
    elif isinstance(exc, CredentialRetrievalError):
        # The instance metadata service, the container endpoint or STS for a
        # web identity did not answer: that passes.
        reason, retriable = "credentials", True
    elif isinstance(exc, BotoConnectionError | HTTPClientError):
        # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError,
        # SSLError; ReadTimeoutError, ConnectionClosedError.
        reason, retriable = "unavailable", True
    elif isinstance(exc, ParamValidationError):
        reason, retriable = "invalid", False
    else:
        reason, retriable = "other", False
    return DeliveryError(f"{what} failed: {code}: {exc}", reason=reason, retriable=retriable, code=code)


@dataclass(frozen=True, slots=True)
class _RoleCredentials:
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expires_at: datetime


# The credentials a client signs with: None for the process's own, else a
# (role ARN, external ID) assumed.
_Identity = tuple[str, str | None] | None
_ClientKey = tuple[str, str, _Identity]
K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """A dict of at most ``limit`` entries; ``put`` returns the ones it evicted."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("an LRU cache holds at least one entry")
        self._limit = limit
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> list[V]:
        self._entries[key] = value
        self._entries.move_to_end(key)
        evicted: list[V] = []
        while len(self._entries) > self._limit:
            evicted.append(self._entries.popitem(last=False)[1])
        return evicted

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)

    def drain(self) -> list[V]:
        values = list(self._entries.values())
        self._entries.clear()
        return values


@dataclass(frozen=True, slots=True)
class _Cached:
    client: Any
    credentials: _RoleCredentials | None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _botocore(options: dict[str, Any]) -> tuple[Any, Any]:
    """A botocore session and a Config of ``options``, made with the first
    client, not when a streams or jobs worker starts: on top of the worker's
    own imports, botocore's session and config modules cost 0.09 CPU-s and
    7 MB of RSS a start (0.20 → 0.29 CPU-s, median of 12; 47.0 → 53.7 MB),
    which a worker with no AWS destination never needs.
    ``botocore.exceptions``, imported at the top for the error mapping, is
    light."""
    import botocore.session
    from botocore.config import Config

    return botocore.session.Session(), Config(**options)


class AwsDelivery:
    """Kinesis and Firehose calls for event streams; an async context manager.

    ``assume_role``: sign as each stream's role (STS AssumeRole with its
    external ID), as Pinpoint does, rather than as the process. ``now`` is
    the clock that decides when assumed credentials are renewed (tests
    replace it). ``close()`` is idempotent: it refuses new calls, waits up to
    ``drain_timeout_s`` for those admitted (and for the threads of callers
    that were cancelled), then closes every client.

    Clients are cached per (service, region, credentials), at most
    ``max_clients``, and assumed roles per (role ARN, external ID), at most
    ``max_roles``: past that, the least recently used are made (or assumed)
    again when next needed.
    """

    def __init__(
        self,
        *,
        assume_role: bool,
        max_threads: int = 8,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 15.0,
        max_clients: int = MAX_CLIENTS,
        max_roles: int = MAX_ROLES,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        now: Callable[[], datetime] = _utc_now,
        role_session_name: str = ROLE_SESSION_NAME,
    ) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self._assume_role = assume_role
        self._role_session_name = role_session_name
        self._drain_timeout_s = drain_timeout_s
        self._now = now
        self._config_options: dict[str, Any] = {
            "connect_timeout": connect_timeout_s,
            "read_timeout": read_timeout_s,
            # One attempt: the worker retries, with its own backoff and metrics.
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "max_pool_connections": max_threads,
        }
        # botocore's (session, config), made with the first client
        # (:func:`_botocore`). botocore sessions are not thread-safe (clients
        # are, for calls): clients are made one at a time, in a pool thread.
        self._botocore: tuple[Any, Any] | None = None
        self._session_lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_threads, thread_name_prefix="ingest-aws")
        self._slots = asyncio.Semaphore(max_threads)
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._clients: _Lru[_ClientKey, _Cached] = _Lru(max_clients)
        self._roles: _Lru[tuple[str, str | None], _RoleCredentials] = _Lru(max_roles)
        self._assuming: dict[tuple[str, str | None], asyncio.Future[_RoleCredentials]] = {}
        # Calls admitted and not returned; set whenever one returns or a
        # thread finishes, for close() to see them settle.
        self._active = 0
        self._settled = asyncio.Event()
        self._closing = False
        self._shut = False
        self._closed = asyncio.Event()

    async def __aenter__(self) -> AwsDelivery:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def cached_clients(self) -> int:
        """botocore clients held (at most ``max_clients``)."""
        return len(self._clients)

    async def put_records(
        self,
        destination: Destination,
        role_arn: str,
        external_id: str | None,
        records: Sequence[tuple[str, bytes]],
    ) -> list[RecordFailure | None]:
        """Kinesis PutRecords of (partition key, data) pairs: one entry per
        record, None = delivered. Raises DeliveryError when the whole call
        fails, or (``invalid``, before any call) when the batch is over a
        Kinesis limit. ``role_arn`` and ``external_id`` are used only with
        ``assume_role``."""
        if destination.kind != "kinesis":
            raise ValueError(f"PutRecords goes to a Kinesis stream, not {destination.arn}")
        self._check_open()
        if not records:
            return []
        check_kinesis(records)
        # StreamARN as Kinesis recommends (it names the account too);
        # StreamName as well, which kinesalite (the tests' Kinesis) requires.
        params = {
            "StreamName": destination.name,
            "StreamARN": destination.arn,
            "Records": [{"PartitionKey": key, "Data": data} for key, data in records],
        }
        what = f"PutRecords to {destination.arn}"
        response = await self.call(
            "kinesis", "put_records", params, destination.region, role_arn, external_id, what
        )
        return record_results(response.get("Records", []), len(records), what)

    async def put_record_batch(
        self,
        destination: Destination,
        role_arn: str,
        external_id: str | None,
        records: Sequence[bytes],
    ) -> list[RecordFailure | None]:
        """Firehose PutRecordBatch; the same contract as :meth:`put_records`
        (its per-record results are ``RequestResponses[i].ErrorCode``)."""
        if destination.kind != "firehose":
            raise ValueError(f"PutRecordBatch goes to a Firehose stream, not {destination.arn}")
        self._check_open()
        if not records:
            return []
        check_firehose(records)
        params = {"DeliveryStreamName": destination.name, "Records": [{"Data": data} for data in records]}
        what = f"PutRecordBatch to {destination.arn}"
        response = await self.call(
            "firehose", "put_record_batch", params, destination.region, role_arn, external_id, what
        )
        return record_results(response.get("RequestResponses", []), len(records), what)

    async def close(self) -> None:
        """Refuse new calls, wait for those admitted and their threads (up to
        the drain timeout), close every client. Idempotent; a second caller
        waits for the first to finish."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            try:
                await asyncio.wait_for(self._drain(), self._drain_timeout_s)
            except TimeoutError:
                # Those threads end on their socket timeouts; their callers
                # have their answer or an error by then.
                log.warning(
                    "AWS delivery closing with %d calls and %d threads still running after %g s",
                    self._active,
                    len(self._in_flight),
                    self._drain_timeout_s,
                )
            self._shut = True
            self._executor.shutdown(wait=False, cancel_futures=True)
            for cached in self._clients.drain():
                cached.client.close()
            self._roles.drain()
        finally:
            self._closed.set()

    async def _drain(self) -> None:
        while self._active or self._in_flight:
            self._settled.clear()
            await self._settled.wait()

    def _check_open(self) -> None:
        if self._closing:
            raise DeliveryError("the AWS delivery client is closed", reason="other", retriable=False)

    async def call(
        self,
        service: str,
        operation: str,
        params: dict[str, Any],
        region: str,
        role_arn: str,
        external_id: str | None,
        what: str,
    ) -> dict[str, Any]:
        """One attempt of any botocore ``operation`` of ``service`` (the
        jobs worker's S3 calls, for one), admitted unless closing (close()
        waits for it): its response, or a DeliveryError as for the puts."""
        self._check_open()
        self._active += 1
        try:
            identity: _Identity = (role_arn, external_id) if self._assume_role else None
            key: _ClientKey = (service, region, identity)
            cached = await self._client(key)
            call = functools.partial(getattr(cached.client, operation), **params)
            try:
                response: dict[str, Any] = await self._run(call)
            except ClientError as exc:
                error = client_error(exc, what)
                if identity is not None and error.code in _TOKEN_CODES:
                    self._forget_role(identity, error.code)
                # Not chained: the ClientError's text may echo signed headers.
                raise error from None
            except BotoCoreError as exc:
                if isinstance(exc, NoCredentialsError | PartialCredentialsError):
                    # A client made before the process had credentials keeps
                    # none: the next call makes a new one, which looks again.
                    self._drop_client(key, cached)
                raise botocore_error(exc, what) from exc
            return response
        finally:
            self._active -= 1
            self._settled.set()

    async def _client(self, key: _ClientKey) -> _Cached:
        service, region, identity = key
        credentials = None if identity is None else await self._role_credentials(identity, region)
        cached = self._clients.get(key)
        if cached is not None and cached.credentials is credentials:
            return cached
        client = await self._run(functools.partial(self._new_client, service, region, credentials))
        current = self._clients.get(key)
        if current is not None and current.credentials is credentials:
            # Another call made one meanwhile.
            client.close()
            return current
        made = _Cached(client, credentials)
        stale = [] if current is None else [current]
        for old in stale + self._clients.put(key, made):
            old.client.close()
        return made

    def _new_client(self, service: str, region: str, credentials: _RoleCredentials | None) -> Any:
        """In a pool thread: a botocore client, with ``credentials`` or the
        process's own (the session's chain)."""
        keys = {}
        if credentials is not None:
            keys = {
                "aws_access_key_id": credentials.access_key_id,
                "aws_secret_access_key": credentials.secret_access_key,
                "aws_session_token": credentials.session_token,
            }
        with self._session_lock:
            if self._botocore is None:
                self._botocore = _botocore(self._config_options)
            session, config = self._botocore
            return session.create_client(service, region_name=region, config=config, **keys)

    async def _role_credentials(self, identity: tuple[str, str | None], region: str) -> _RoleCredentials:
        """The role's credentials, assumed again when they are within
        :data:`ROLE_REFRESH_AHEAD_S` of expiring; concurrent callers share one
        AssumeRole."""
        cached = self._roles.get(identity)
        if cached is not None and cached.expires_at - self._now() > timedelta(seconds=ROLE_REFRESH_AHEAD_S):
            return cached
        pending = self._assuming.get(identity)
        if pending is None:
            pending = asyncio.ensure_future(self._assume(identity, region))
            self._assuming[identity] = pending
            pending.add_done_callback(functools.partial(self._assumed, identity))
        # Shielded: one caller cancelled does not cancel the others' AssumeRole.
        return await asyncio.shield(pending)

    def _assumed(self, identity: tuple[str, str | None], done: asyncio.Future[_RoleCredentials]) -> None:
        self._assuming.pop(identity, None)
        if not done.cancelled() and done.exception() is None:
            self._roles.put(identity, done.result())

    async def _assume(self, identity: tuple[str, str | None], region: str) -> _RoleCredentials:
        role_arn, external_id = identity
        sts = await self._client(("sts", region, None))
        params = {"RoleArn": role_arn, "RoleSessionName": self._role_session_name}
        if external_id is not None:
            params["ExternalId"] = external_id
        what = f"AssumeRole of {role_arn}"
        try:
            response = await self._run(functools.partial(sts.client.assume_role, **params))
        except ClientError as exc:
            raise client_error(exc, what) from None
        except BotoCoreError as exc:
            raise botocore_error(exc, what) from exc
        issued = response["Credentials"]
        return _RoleCredentials(
            access_key_id=issued["AccessKeyId"],
            secret_access_key=issued["SecretAccessKey"],
            session_token=issued["SessionToken"],
            expires_at=issued["Expiration"],
        )

    def _forget_role(self, identity: tuple[str, str | None], code: str | None) -> None:
        if self._roles.pop(identity) is not None:
            log.info(
                "assumed credentials of %s dropped after %s; the next call assumes it again",
                identity[0],
                code,
            )

    def _drop_client(self, key: _ClientKey, cached: _Cached) -> None:
        if self._clients.get(key) is cached:
            self._clients.pop(key)
            cached.client.close()

    async def blocking(self, call: Callable[[], Any], what: str) -> Any:
        """``call`` (blocking botocore work outside a call: reading a
        response's streaming body) in the pool, admitted as a call is;
        botocore's errors become DeliveryError as in :meth:`call`."""
        self._check_open()
        self._active += 1
        try:
            return await self._run(call)
        except BotoCoreError as exc:
            raise botocore_error(exc, what) from exc
        finally:
            self._active -= 1
            self._settled.set()

    async def _run(self, call: Callable[[], Any]) -> Any:
        """``call`` in the pool. The slot is held until the thread is done,
        even when the caller is cancelled, so the pool's queue stays empty."""
        await self._slots.acquire()
        if self._shut:
            # Admitted before close(), still waiting when its drain ran out.
            self._slots.release()
            raise DeliveryError("the AWS delivery client is closed", reason="other", retriable=False)
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, call)
        except BaseException:
            self._slots.release()
            raise
        self._in_flight.add(future)
        future.add_done_callback(self._finished)
        return await asyncio.shield(future)

    def _finished(self, future: asyncio.Future[Any]) -> None:
        self._in_flight.discard(future)
        self._slots.release()
        self._settled.set()
        if not future.cancelled():
            # Retrieved here, so a result nobody awaits any more (its caller
            # was cancelled) is not reported as lost.
            future.exception()
