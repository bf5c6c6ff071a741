"""Token buckets keyed by a small string (a client address), bounded in keys.

A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a request
takes one or is refused. Keys beyond ``max_keys`` evict the least recently
used, so a flood of addresses costs bounded memory and an evicted address
only starts again with a full bucket.
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBuckets:
    def __init__(self, *, rate_per_s: float, burst: float, max_keys: int) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now_s: float) -> bool:
        """One token of ``key``'s bucket at monotonic time ``now_s``, or False."""
        tokens, at = self._buckets.pop(key, (self._burst, now_s))
        tokens = min(self._burst, tokens + (now_s - at) * self._rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now_s)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return allowed
