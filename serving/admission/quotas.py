"""Per-tenant quotas: requests and tokens per minute and concurrent requests, refused with 429 + Retry-After.

A request is charged when it passes the check (after authentication and model resolution, so a 401 or 404
costs nothing): one request, and its estimated tokens. When the engine reports the tokens it served, the
`Charge` replaces the estimate by them in the same one-minute window (up or down).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field, fields

from pydantic import ConfigDict, Field, create_model

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
        return cls(**{k: int(raw.get(k) or 0) for k in QUOTA_KEYS})


QUOTA_KEYS = tuple(f.name for f in fields(Quotas))

# A change to a tenant's quotas as the admin API takes it: known keys only, each a non-negative int (0:
# unlimited) or null (remove the limit); keys left out keep their value. Declared from `Quotas`' fields.
QuotaChange = create_model(
    "QuotaChange", __config__=ConfigDict(extra="forbid"),
    **{k: (int | None, Field(None, ge=0, strict=True)) for k in QUOTA_KEYS})


class _Entry:
    """One (time, amount) event of a window; `live` until it leaves the window."""

    __slots__ = ("at", "amount", "live")

    def __init__(self, at: float, amount: int):
        self.at, self.amount, self.live = at, amount, True


@dataclass
class _Window:
    """Sliding one-minute window of events."""

    events: deque = field(default_factory=deque)
    total: int = 0

    def trim(self, now: float) -> None:
        while self.events and self.events[0].at <= now - 60:
            gone = self.events.popleft()
            gone.live = False
            self.total -= gone.amount

    def add(self, now: float, amount: int) -> _Entry:
        entry = _Entry(now, amount)
        self.events.append(entry)
        self.total += amount
        return entry

    def amend(self, entry: _Entry, amount: int) -> None:
        """Make `entry` count `amount` instead. Still in the window: changed in place (the window is what it
        would have been had the amount been known at once). Already out of it: only an excess is charged,
        to the current minute (a minute that is over gives nothing back)."""
        if entry.live:
            self.total += amount - entry.amount
            entry.amount = amount
        elif amount > entry.amount:
            self.add(time.monotonic(), amount - entry.amount)
            entry.amount = amount

    def retry_after(self, now: float) -> float:
        return max(1.0, 60 - (now - self.events[0].at)) if self.events else 1.0


class Charge:
    """What one admitted request was charged to its tenant's token window: the estimate, until `settle`."""

    def __init__(self, window: _Window, entry: _Entry):
        self._window, self._entry = window, entry

    @property
    def tokens(self) -> int:
        return self._entry.amount

    def settle(self, tokens: int) -> None:
        """Replace the charge by `tokens`: what the engine reported (prompt + completion), or 0 for a request
        that never reached it."""
        self._window.amend(self._entry, max(0, int(tokens)))


class QuotaLedger:
    """What each tenant asked for within the last minute, checked against its `Quotas`."""

    def __init__(self):
        self._requests: dict[str, _Window] = defaultdict(_Window)
        self._tokens: dict[str, _Window] = defaultdict(_Window)

    def check(self, tenant: str, quotas: Quotas, est_tokens: int, active: int, label: str = metrics.OTHER) -> Charge:
        """429 with Retry-After if this request would exceed one of the tenant's limits (`active`: its requests
        waiting or running now); otherwise it is counted against the minute, and its token charge returned."""
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
        return Charge(toks, toks.add(now, est_tokens))

    def tokens(self, tenant: str) -> int:
        """Tokens charged to `tenant` within the last minute."""
        window = self._tokens[tenant]
        window.trim(time.monotonic())
        return window.total


def _refuse(tenant: str, label: str, limit: str, retry_after: float) -> QuotaExceeded:
    metrics.REJECTED.labels(metrics.LABELS.tenant(tenant), label, "429", "quota").inc()
    return QuotaExceeded(f"tenant {tenant!r} is over its quota of {limit}: retry after "
                         f"{retry_after:.0f}s or ask an admin to raise the quota", retry_after=retry_after)
