"""Bounded label values of the gateway's per-tenant and per-adapter series (serving/metrics.py).

`tenant` is an authenticated tenant's registered name while the tenant is among the `tenants` busiest (by
requests in the last window), else OTHER_TENANTS. `adapter` is a registered adapter's *name* (never a version,
never raw client text): "base" for the base model, and "other" for a name not resolved in the registry yet,
beyond the first `per_tenant` names seen for a tenant, or of a tenant counted in OTHER_TENANTS. So the series
count per metric is at most (tenants + 1) x (per_tenant + 2), whatever the number of tenants or what clients send.

A tenant that drops out of the busiest set at a window's end loses its series (they would never change again);
its later requests count under OTHER_TENANTS until it is busy enough to be named again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

OTHER = "other"
BASE = "base"
OTHER_TENANTS = "_other"  # tenant names start with a letter or digit (common/names.py): no tenant is called this


class Labels:
    """Maps tenants and (tenant, adapter name) to label values within the bounds above.

    Args:
        per_tenant: adapter names per named tenant that get a label of their own.
        tenants: tenants named at once.
        window_s: how often the busiest tenants are chosen again.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, per_tenant: int = 20, tenants: int = 20, window_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic):
        self.per_tenant, self.tenants, self.window_s, self.clock = per_tenant, tenants, window_s, clock
        self.on_drop: Callable[[set[str]], None] = lambda _names: None  # metrics.py removes their series
        self._seen: dict[str, set[str]] = {}  # named tenant -> its admitted adapter names
        self._counts: Counter[str] = Counter()  # requests per tenant in this window
        self._window_start = clock()
        self._lock = threading.Lock()  # in-process gateways (tests, benchmarks) share this module

    def count(self, tenant: str) -> None:
        """One request of `tenant` arrived: it is named at once while fewer than `tenants` are."""
        with self._lock:
            self._counts[tenant] += 1
            if tenant not in self._seen and len(self._seen) < self.tenants:
                self._seen[tenant] = set()
            dropped = self._roll() if self.clock() - self._window_start >= self.window_s else set()
        if dropped:
            self.on_drop(dropped)

    def tenant(self, tenant: str) -> str:
        return tenant if tenant in self._seen else OTHER_TENANTS

    def admit(self, tenant: str, name: str) -> str:
        """Label of a name that resolved in the registry (or a configured model): itself while room is left."""
        with self._lock:
            seen = self._seen.get(tenant)
            if seen is None:
                return OTHER
            if name in seen:
                return name
            if len(seen) < self.per_tenant:
                seen.add(name)
                return name
            return OTHER

    def known(self, tenant: str, model: str, base_name: str = BASE) -> str:
        """Label for a request's `model` before it is resolved: only names already admitted pass."""
        if model == base_name:
            return BASE
        name = model.split("@", 1)[0]
        with self._lock:
            return name if name in self._seen.get(tenant, ()) else OTHER

    def named(self) -> set[str]:
        with self._lock:
            return set(self._seen)

    def _roll(self) -> set[str]:
        """The window ended: name the busiest tenants of it (the named ones first among equals, so an idle named
        tenant keeps its series while no busier one needs the room); returns those no longer named."""
        ranked = sorted(set(self._counts) | set(self._seen), key=lambda t: (-self._counts[t], t not in self._seen, t))
        keep = set(ranked[: self.tenants])
        dropped = set(self._seen) - keep
        self._seen = {t: self._seen.get(t, set()) for t in keep}
        self._counts.clear()
        self._window_start = self.clock()
        return dropped
