"""Per-tenant quotas: requests and tokens per minute and concurrent requests, refused with 429 + Retry-After."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from common.errors import QuotaExceeded
from serving import metrics


@dataclass
class Quotas:
    """A tenant's limits; 0 means unlimited. Read from the tenant's `quotas` object."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent: int = 0

    @classmethod
    def of(cls, raw: dict | None) -> Quotas:
        raw = raw or {}
        return cls(**{k: int(raw.get(k) or 0) for k in ("requests_per_minute", "tokens_per_minute", "max_concurrent")})


@dataclass
class _Window:
    """Sliding one-minute window of (time, amount) events."""

    events: deque = field(default_factory=deque)
    total: int = 0

    def trim(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - 60:
            self.total -= self.events.popleft()[1]

    def add(self, now: float, amount: int) -> None:
        self.events.append((now, amount))
        self.total += amount

    def retry_after(self, now: float) -> float:
        return max(1.0, 60 - (now - self.events[0][0])) if self.events else 1.0


class QuotaLedger:
    """What each tenant asked for within the last minute, checked against its `Quotas`."""

    def __init__(self):
        self._requests: dict[str, _Window] = defaultdict(_Window)
        self._tokens: dict[str, _Window] = defaultdict(_Window)

    def check(self, tenant: str, quotas: Quotas, est_tokens: int, active: int, label: str = metrics.OTHER) -> None:
        """429 with Retry-After if this request would exceed one of the tenant's limits (`active`: its requests
        waiting or running now); otherwise it is counted against the minute."""
        now = time.monotonic()
        reqs, toks = self._requests[tenant], self._tokens[tenant]
        reqs.trim(now)
        toks.trim(now)
        if quotas.max_concurrent and active >= quotas.max_concurrent:
            raise _refuse(tenant, label, f"{quotas.max_concurrent} concurrent requests", 1.0)
        if quotas.requests_per_minute and reqs.total + 1 > quotas.requests_per_minute:
            raise _refuse(tenant, label, f"{quotas.requests_per_minute} requests per minute", reqs.retry_after(now))
        if quotas.tokens_per_minute and toks.total + est_tokens > quotas.tokens_per_minute:
            raise _refuse(tenant, label, f"{quotas.tokens_per_minute} tokens per minute", toks.retry_after(now))
        reqs.add(now, 1)
        toks.add(now, est_tokens)


def _refuse(tenant: str, label: str, limit: str, retry_after: float) -> QuotaExceeded:
    metrics.REJECTED.labels(tenant, label, "429", "quota").inc()
    return QuotaExceeded(f"tenant {tenant!r} is over its quota of {limit}: retry after "
                         f"{retry_after:.0f}s or ask an admin to raise the quota", retry_after=retry_after)
