"""One error root. Exceptions carry data; behaviour is an attribute.

:class:`ApiError` subclasses are Pinpoint's modeled error shapes: the edge
answers each with its ``status``, the ``x-amzn-ErrorType: <error_type>`` header
and ``{"Message", "RequestID"}``. ``retriable`` says whether a client that
retries (every AWS SDK retries 429 and 500) may succeed by sending the same
request again.
"""

from __future__ import annotations

from typing import Literal


class IngestError(Exception):
    """Root of every error this package raises on purpose."""

    retriable: bool = False


class SettingsError(IngestError):
    """A setting has a bad value; the message names the environment variable."""


class BrokerError(IngestError):
    """The embedded broker could not start, or topics could not be set up."""


class SupervisorError(IngestError):
    """A process `ingest run` supervises failed to start: it exited, or did
    not become ready in time, before the pipeline first served. (After that,
    a child that dies is restarted, not reported as this.)"""


StoreCondition = Literal["disk_full", "read_only"]
# What readiness and the log say of each condition.
CONDITION_TEXT: dict[StoreCondition, str] = {
    "disk_full": "the store's disk is full",
    "read_only": "the store is read-only",
}


class StoreError(IngestError):
    """The store failed; ``retriable`` when it is unavailable rather than
    wrong; ``condition`` when the cause is one an operator must fix (a full
    disk, a read-only store), which readiness reports by name."""

    def __init__(self, message: str, *, retriable: bool, condition: StoreCondition | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.condition = condition


class WorkerStalled(IngestError):
    """A worker made no progress for its stall timeout while its partitions
    had records left to apply, or while it had no partition assigned: its
    consumer is stuck (as aiokafka#1154 leaves one after a group rebalance).
    Nothing in the process can unstick it, so the worker fails and the
    process exits non-zero for its supervisor to restart it; the records
    are applied by the new member (delivery is at-least-once). ``stalled_s``
    is how long it went without progress; ``reason`` says what it saw."""

    def __init__(self, message: str, *, stalled_s: float, reason: str) -> None:
        super().__init__(message)
        self.stalled_s = stalled_s
        self.reason = reason


class DecodeError(IngestError):
    """Bytes that are not a single-object-encoded record of a known schema
    (or not a valid body of it); ``position`` is the byte offset where
    reading failed, when known."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class Overloaded(IngestError):
    """The producer buffer or the in-flight limit is full: answer 429 now."""

    retriable = True


class ApiError(IngestError):
    """A whole-request error, answered as Pinpoint answers it."""

    status: int = 500
    error_type: str = "InternalServerErrorException"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status = 400
    error_type = "BadRequestException"


class Forbidden(ApiError):
    status = 403
    error_type = "ForbiddenException"


class NotFound(ApiError):
    status = 404
    error_type = "NotFoundException"


class MethodNotAllowed(ApiError):
    status = 405
    error_type = "MethodNotAllowedException"


class PayloadTooLarge(ApiError):
    status = 413
    error_type = "PayloadTooLargeException"


class TooManyRequests(ApiError):
    """Answered with ``Retry-After: <retry_after_s>``."""

    status = 429
    error_type = "TooManyRequestsException"
    retriable = True

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(ApiError):
    """Headers or body not received in time. botocore and the JS SDKs retry
    this error type as a transient one."""

    status = 408
    error_type = "RequestTimeoutException"


class UriTooLong(ApiError):
    status = 414
    error_type = "RequestURITooLongException"


class HeadersTooLarge(ApiError):
    status = 431
    error_type = "RequestHeaderFieldsTooLargeException"


class InternalServerError(ApiError):
    status = 500
    error_type = "InternalServerErrorException"
    retriable = True


class AccessDenied(ApiError):
    """A verified caller whose key's scope does not cover the operation or the
    app: what AWS services answer when IAM denies an authenticated call."""

    status = 403
    error_type = "AccessDeniedException"


AuthReason = Literal["missing", "unknown_key", "bad_signature", "expired", "bad_token"]


class AuthError(ApiError):
    """A request whose signature was not verified. ``reason`` is a closed set
    for metrics: ``missing`` (unsigned), ``unknown_key`` (no such key, or
    revoked), ``bad_token`` (a session token the key lookup rejects),
    ``bad_signature`` (malformed or not matching), ``expired`` (clock skew).

    Status 403 as API-Gateway-fronted AWS services (Pinpoint among them)
    answer every SigV4 failure: e.g. a 403 with ``x-amzn-ErrorType:
    InvalidSignatureException`` (ex-aws/ex_aws#701), a 403
    ``UnrecognizedClientException`` (iann0036/iamlive#58), a 403
    ``IncompleteSignatureException`` for a malformed header (aws/chalice#828).
    AWS JSON-protocol services answer the same types with 400 instead."""

    status = 403
    reason: AuthReason = "bad_signature"
    MESSAGE = "The request could not be authenticated."

    def __init__(self, message: str | None = None, *, reason: AuthReason | None = None) -> None:
        super().__init__(self.MESSAGE if message is None else message)
        if reason is not None:
            self.reason = reason


class MissingAuthenticationToken(AuthError):
    """No ``Authorization`` header: API Gateway's text for an unsigned call."""

    error_type = "MissingAuthenticationTokenException"
    reason: AuthReason = "missing"
    MESSAGE = "Missing Authentication Token"


class IncompleteSignature(AuthError):
    """An ``Authorization`` header that is not a well-formed SigV4 header, or
    no date to check it against. The messages are AWS's, minus the echo of
    the header itself that AWS appends (it carries the signature, which our
    logs never show)."""

    error_type = "IncompleteSignatureException"


class UnrecognizedClient(AuthError):
    """The access key is unknown or revoked (reason ``unknown_key``), or its
    session token is malformed or expired (reason ``bad_token``). A key lookup
    may raise this itself with ``reason="bad_token"``."""

    error_type = "UnrecognizedClientException"
    reason: AuthReason = "unknown_key"
    MESSAGE = "The security token included in the request is invalid."


class InvalidSignature(AuthError):
    """The signature does not match (reason ``bad_signature``), or its date is
    more than the allowed skew from ours (reason ``expired``: "Signature
    expired: …", which every SDK's clock-skew handling keys on)."""

    error_type = "InvalidSignatureException"
    MESSAGE = (
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. "
        "Consult the service documentation for details."
    )


DeliveryReason = Literal[
    "throttled", "unavailable", "not_found", "access_denied", "credentials", "invalid", "other"
]


class DeliveryError(IngestError):
    """A whole delivery call to an event stream's destination failed: no
    record of it is known to be delivered (after a timeout some may have
    been). ``reason`` is a closed set, for a metric label: ``throttled``,
    ``unavailable`` (a 5xx answer, or no answer), ``not_found`` (no such
    stream), ``access_denied`` (IAM, KMS or the role refused us, or a token
    was rejected), ``credentials`` (the process has none), ``invalid`` (a
    request the service or its limits refuse), ``other``. ``retriable``:
    whether the same call may succeed later without an operator's action.
    ``code`` is the service's error code (or botocore's exception name)."""

    def __init__(
        self, message: str, *, reason: DeliveryReason, retriable: bool, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason: DeliveryReason = reason
        self.retriable = retriable
        self.code = code


class KeyRequestError(IngestError):
    """An access key or identity pool that cannot be issued as asked (a read
    or ingest key without apps, an unknown app, a name out of bounds), or a
    revocation of a key that does not exist."""


class SecretUnreadable(IngestError):
    """A stored secret does not decrypt with this master key: the store was
    written under another one (INGEST_AUTH_MASTER_KEY differs between
    processes, or ``master.key`` was replaced)."""


class JobError(IngestError):
    """An import or export job cannot go on with a piece or at all: a URL
    outside what it may read or write, an object too large or in the wrong
    format, a store (S3 or a file) that refused or did not answer, Kafka
    that did not acknowledge. ``retriable``: whether trying again (after a
    backoff, a bounded number of times) may help; else the message is the
    job's failure reason, as an operator reads it."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable
