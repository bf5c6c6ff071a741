"""One error root. Exceptions carry data; behaviour is an attribute.

:class:`ApiError` subclasses are Pinpoint's modeled error shapes: the edge
answers each with its ``status``, the ``x-amzn-ErrorType: <error_type>`` header
and ``{"Message", "RequestID"}``. ``retriable`` says whether a client that
retries (every AWS SDK retries 429 and 500) may succeed by sending the same
request again.
"""

from __future__ import annotations


class IngestError(Exception):
    """Root of every error this package raises on purpose."""

    retriable: bool = False


class SettingsError(IngestError):
    """A setting has a bad value; the message names the environment variable."""


class BrokerError(IngestError):
    """The embedded broker could not start, or topics could not be set up."""


class StoreError(IngestError):
    """The store failed; ``retriable`` when it is unavailable rather than wrong."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


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
    status = 429
    error_type = "TooManyRequestsException"
    retriable = True


class InternalServerError(ApiError):
    status = 500
    error_type = "InternalServerErrorException"
    retriable = True


class AccessDenied(ApiError):
    """A verified caller whose key's scope does not cover the operation or the
    app: what AWS services answer when IAM denies an authenticated call."""

    status = 403
    error_type = "AccessDeniedException"
