"""Token buckets keyed by a small string (a client address, an app ID),
bounded in keys; and who the client of a request is.

A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a
request takes one (or ``cost``) or is refused. :meth:`TokenBuckets.charge`
takes tokens after the fact, into debt, for work whose size is only known
once it is done (the events of a PutEvents body): the next request is
refused until the debt is repaid, so refusing costs one lookup whatever the
body. Keys beyond ``max_keys`` evict the least recently used, so a flood of
keys costs bounded memory and an evicted key only starts again with a full
bucket.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Iterable


class TokenBuckets:
    def __init__(self, *, rate_per_s: float, burst: float, max_keys: int) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, key: str, now_s: float) -> float:
        tokens, at = self._buckets.pop(key, (self._burst, now_s))
        return min(self._burst, tokens + (now_s - at) * self._rate)

    def _keep(self, key: str, tokens: float, now_s: float) -> None:
        self._buckets[key] = (tokens, now_s)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)

    def take(self, key: str, now_s: float, cost: float = 1.0) -> bool:
        """``cost`` tokens of ``key``'s bucket at monotonic time ``now_s``, or False."""
        tokens = self._tokens(key, now_s)
        allowed = tokens >= cost
        self._keep(key, tokens - cost if allowed else tokens, now_s)
        return allowed

    def holds(self, key: str, now_s: float) -> bool:
        """Whether ``key``'s bucket holds a token (none is taken)."""
        tokens, at = self._buckets.get(key, (self._burst, now_s))
        return tokens + (now_s - at) * self._rate >= 1.0

    def charge(self, key: str, cost: float, now_s: float) -> None:
        """Take ``cost`` tokens whatever the bucket holds; the debt is at most
        one burst."""
        self._keep(key, max(-self._burst, self._tokens(key, now_s) - cost), now_s)

    def retry_after_s(self, key: str, now_s: float) -> int:
        """Whole seconds until ``key``'s bucket holds a token again (at least 1):
        the ``Retry-After`` of a refusal."""
        tokens, at = self._buckets.get(key, (self._burst, now_s))
        missing = 1.0 - min(self._burst, tokens + (now_s - at) * self._rate)
        return max(1, math.ceil(missing / self._rate))


class ClientAddress:
    """The client address of a request: the socket's peer, or, when that peer
    is a trusted proxy, the right-most ``X-Forwarded-For`` entry that is not
    one (each proxy appends the address it saw; what the client wrote itself
    sits further left and is never believed)."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in trusted)

    @classmethod
    def parse(cls, setting: str) -> ClientAddress:
        """From ``INGEST_TRUSTED_PROXIES``: comma-separated addresses or CIDR
        networks; ValueError names a bad entry."""
        entries = [entry.strip() for entry in setting.split(",") if entry.strip()]
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"{entry[:64]!r} is not an IP address or network") from exc
        return cls(entries)

    @property
    def active(self) -> bool:
        """Whether any proxy is trusted (else every address is the socket's)."""
        return bool(self._networks)

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def of(self, peer: str, forwarded_for: bytes | None) -> str:
        if not self._networks or forwarded_for is None or not self._trusted(peer):
            return peer
        client = peer
        for entry in reversed(forwarded_for.decode("latin-1").split(",")[-32:]):
            hop = entry.strip()
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return client  # not an address: the last hop we could read
            client = hop
            if not self._trusted(hop):
                return hop
        return client
