"""What each access key scope may do: the operations of each, and
:class:`Principal`, who a verified request is.

admin: everything, on its apps (a key bound to apps neither creates nor
lists apps). read: its apps' reads (GetEventStream aside: a stream names a
role), and GetApps, listing only its apps. ingest: what a shipped app binary
may hold, writes of its own app's data. Nothing else is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Scope = Literal["admin", "read", "ingest"]
SCOPES: tuple[Scope, ...] = get_args(Scope)

# Operations without an app in their path: only an admin key for every app
# may create apps; GetApps is also a read key's, listing only its apps.
_ACCOUNT_OPERATIONS = frozenset({"CreateApp", "GetApps"})
_KPI_READS = ("GetApplicationDateRangeKpi", "GetCampaignDateRangeKpi", "GetJourneyDateRangeKpi")
_READS = frozenset({"GetApps", "GetApp", "GetEndpoint", "GetUserEndpoints", *_KPI_READS})
_READS |= {"ListTagsForResource", "GetApplicationSettings"}  # not GetEventStream: a stream names a role
_READS |= {"GetSegment", "GetSegments", "GetSegmentVersion", "GetSegmentVersions"}
_READS |= {"GetImportJob", "GetImportJobs", "GetSegmentImportJobs"}
_READS |= {"GetExportJob", "GetExportJobs", "GetSegmentExportJobs"}
# The console's sign-in and its session check: any read or admin key, bound
# to apps or not (what it then sees is held to its apps operation by operation).
_CONSOLE = frozenset({"ConsoleSignIn", "ConsoleSession"})
_READS |= _CONSOLE
# What a shipped app binary may hold: writes of its own app's data.
_INGESTS = frozenset({"PutEvents", "UpdateEndpoint", "UpdateEndpointsBatch"})
_ADMINS = _READS | _INGESTS | {"CreateApp", "DeleteApp", "DeleteEndpoint", "DeleteUserEndpoints"}
_ADMINS |= {"TagResource", "UntagResource", "UpdateApplicationSettings"}
_ADMINS |= {"PutEventStream", "GetEventStream", "DeleteEventStream", "ConsoleStreamHealth"}
_ADMINS |= {"CreateSegment", "UpdateSegment", "DeleteSegment", "CreateImportJob", "CreateExportJob"}
OPERATIONS: dict[Scope, frozenset[str]] = {"admin": _ADMINS, "read": _READS, "ingest": _INGESTS}
"""Every API operation each scope may call (on its apps)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified request is."""

    access_key_id: str
    scope: Scope
    apps: frozenset[str]
    """Empty: every app."""
    temporary: bool
    """Cognito-style temporary credentials rather than a key we issued."""

    def may(self, operation: str, app_id: str | None) -> bool:
        """Whether this principal may call ``operation`` (the route table's
        name) on ``app_id`` (``None`` for the operations without an app).

        admin: everything; bound to apps, only those apps and neither
        CreateApp nor GetApps. read: its apps' GET operations but
        GetEventStream, and GetApps (filtered by the caller to ``apps``).
        ingest: PutEvents, UpdateEndpoint(s) of its apps. Nothing else is allowed."""
        if operation not in OPERATIONS[self.scope]:
            return False
        if not self.apps or operation in _CONSOLE:
            return True
        if operation in _ACCOUNT_OPERATIONS:
            return operation == "GetApps" and self.scope == "read"
        return app_id is not None and app_id in self.apps
