"""Tenant demand over the heavy window: what each tenant asked for and was granted, to tell a heavy tenant."""

from __future__ import annotations

from collections import defaultdict, deque


class Demand:
    """Estimated tokens each tenant asked for, and was granted, within the last `window_s` seconds.

    Totals are kept, not summed: `heavy` runs on the dispatch path for each waiting tenant. Callers pass
    the time (the fair queue judges a whole dispatch by one clock reading). Not thread-safe.
    """

    HEAVY_RATIO = 2.0  # demand over the window, as a multiple of the other tenants' mean, that makes one heavy
    # ... and one that floods: its requests wait behind the others' even while its demand fits the engine (on a
    # CPU engine each of them slows the others' steps). Zipf(1) traffic puts its most popular tenant at 2.8x
    # (4 tenants) to 4.1x (8 tenants) the others' mean: an ordinary popular tenant keeps arrival order.
    FLOOD_RATIO = 5.0
    # Work over all tenants is redone at most this often (each rate spans seconds): with a hundred tenants and
    # a queue, doing it per dispatch decision cost the gateway more CPU per request than the rest of admission.
    REFRESH_S = 0.05

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._asked: dict[str, deque] = defaultdict(deque)  # tenant -> (time, est_tokens) within the window
        self._asked_total: dict[str, float] = defaultdict(float)
        self._asked_sum = 0.0  # over all tenants
        self._granted: dict[str, deque] = defaultdict(deque)  # tenant -> (time, est_tokens) granted within it
        self._granted_total: dict[str, float] = defaultdict(float)
        self._trimmed_at = float("-inf")
        self._rates: tuple[float, dict[str, float], float] | None = None  # (when, tenant -> rate, their sum)

    def ask(self, tenant: str, now: float, est_tokens: int) -> None:
        self._asked[tenant].append((now, est_tokens))
        self._asked_total[tenant] += est_tokens
        self._asked_sum += est_tokens
        self._rates = None

    def grant(self, tenant: str, now: float, est_tokens: int) -> None:
        self._granted[tenant].append((now, est_tokens))
        self._granted_total[tenant] += est_tokens

    def trim(self, now: float) -> list[str]:
        """Forget what fell out of the window (at most every REFRESH_S); returns the tenants granted nothing
        within it any more."""
        if now - self._trimmed_at < self.REFRESH_S:
            return []
        self._trimmed_at, self._rates = now, None
        cutoff = now - self.window_s
        for t in list(self._asked):
            asked = self._asked[t]
            while asked and asked[0][0] < cutoff:
                amount = asked.popleft()[1]
                self._asked_total[t] -= amount
                self._asked_sum -= amount
            if not asked:
                del self._asked[t], self._asked_total[t]
        gone = []
        for t in list(self._granted):
            granted = self._granted[t]
            while granted and granted[0][0] < cutoff:
                self._granted_total[t] -= granted.popleft()[1]
            if not granted:
                del self._granted[t], self._granted_total[t]
                gone.append(t)
        if not self._asked:
            self._asked_sum = 0.0  # no float drift carried into the next busy period
        return gone

    def granted(self, tenant: str) -> float:
        return self._granted_total.get(tenant, 0.0)

    def mean_ask(self, tenant: str) -> float:
        """The mean size of `tenant`'s requests within the window (0.0: none)."""
        asked = self._asked.get(tenant)
        return self._asked_total[tenant] / len(asked) if asked else 0.0

    def others_mean(self, tenant: str) -> float | None:
        """Mean demand of the other tenants of the window (None: there are none)."""
        others = len(self._asked) - (tenant in self._asked)
        if others < 1:
            return None
        return (self._asked_sum - self._asked_total.get(tenant, 0.0)) / others

    def rate(self, tenant: str, now: float, min_span_s: float = 1.0) -> float:
        """Estimated tokens per second `tenant` asked for: its total within the window over the time since its
        oldest ask in it (at least `min_span_s`, at most the window), so a tenant that began a moment ago is
        measured over its own span, not diluted over the whole window."""
        asked = self._asked.get(tenant)
        if not asked:
            return 0.0
        span = min(self.window_s, max(min_span_s, now - asked[0][0]))
        return self._asked_total[tenant] / span

    def rates(self, now: float) -> tuple[dict[str, float], float]:
        """`rate` of every tenant of the window and their sum (reused until an ask, a trim or REFRESH_S)."""
        if self._rates is None or now - self._rates[0] > self.REFRESH_S:
            rates = {t: self.rate(t, now) for t in self._asked}
            self._rates = (now, rates, sum(rates.values()))
        return self._rates[1], self._rates[2]

    def tenants(self) -> list[str]:
        """The tenants that asked for something within the window."""
        return list(self._asked)

    def heavy(self, tenant: str, ratio: float | None = None) -> bool:
        """Does `tenant` ask for at least `ratio` (HEAVY_RATIO) x the mean of what the other tenants ask for?"""
        mine, mean = self._asked_total.get(tenant, 0.0), self.others_mean(tenant)
        return mean is not None and mine > 0 and mine >= (ratio or self.HEAVY_RATIO) * mean


def fair_level(rates: dict[str, float], capacity: float) -> float | None:
    """The max-min fair level of `capacity` over what each tenant asks for (`rates`, same units): each tenant
    gets what it asks for up to the level, and the level shares out all the rest (water-filling). None when
    everything asked fits: no tenant asks more than its share then, however skewed the demand."""
    left, ordered = capacity, sorted(rates.values())
    if sum(ordered) <= capacity:
        return None
    for i, rate in enumerate(ordered):
        level = left / (len(ordered) - i)
        if rate > level:
            return level
        left -= rate
    return None  # not reached: the sum exceeds the capacity, so some rate exceeds its level
