"""The engine's capacity as the fair queue measures it: tokens per second served while every slot was busy.

Fair admission holds a tenant back only when the engine has no room for what it asks (an overload), so it
needs to know how much the engine serves at most. Throughput while the whole in-flight window is busy is
that number for this gateway's window; at any lower load the engine serves what it is asked, which says
nothing about its limit. The window fills only when requests come faster than the engine serves them, so
until it has (a flood, a long burst) the capacity is unknown and nothing is held back.

A finished request is credited with the share of its work done while the window was full (its tokens x the
share of its slot time that fell in full periods, progress taken as even), and the estimate is the work
credited over the slot time it was done in, times the window (Little's law: with every slot busy, the
engine serves `window` requests at once). Crediting a request's whole work to the period it *finished* in,
and dividing by the period's length, reads a short full period (a Poisson burst fills the window for a
moment, one request finishes) as a fraction of the real capacity: the simulated Zipf traffic at 90% of
capacity was then judged an overload and its popular tenant held back for good.

Amounts are estimated tokens (as `Demand` counts what tenants ask for), so the two compare directly.
"""

from __future__ import annotations

from collections import deque


class EngineCapacity:
    """Estimated tokens per second completed while the window was full, over the recent full periods.

    `note_full(now, full)` is called after each grant and release with whether every slot is busy;
    `completed(now, est_tokens, held_s)` for each release. The estimate needs `min_done` requests' worth of
    work done while full (a burst that fills the window for a moment is no measurement); older work fades
    by halving the totals once `keep` requests' worth is counted, so the estimate follows the engine. An
    estimate not refreshed within `horizon_s` is forgotten (as the slowdown guard forgets its light-load
    value): one measured while the host was busy with something else must not hold tenants back for good;
    under a lasting flood the window fills again within a second of the limits lifting, and is measured anew.
    """

    MAX_PERIODS = 4096  # full periods remembered (a request overlapping older ones is credited for the rest)

    def __init__(self, max_inflight: int, min_done: int | None = None, keep: int | None = None,
                 horizon_s: float = 300.0):
        self.max_inflight = max_inflight
        self.min_done = min_done if min_done is not None else max_inflight
        self.keep = keep if keep is not None else 20 * max_inflight
        self.horizon_s = horizon_s
        self._since: float | None = None  # when the current full period began
        self._periods: deque[tuple[float, float]] = deque(maxlen=self.MAX_PERIODS)  # closed full periods
        self._tokens = 0.0  # estimated tokens credited to full periods
        self._slot_s = 0.0  # slot seconds they were done in
        self._done = 0.0  # requests' worth of work credited
        self._last = float("-inf")  # when work was last credited

    def note_full(self, now: float, full: bool) -> None:
        if full and self._since is None:
            self._since = now
        elif not full and self._since is not None:
            if now > self._since:
                self._periods.append((self._since, now))
            self._since = None
        while self._periods and self._periods[0][1] < now - self.horizon_s:
            self._periods.popleft()

    def _full_seconds(self, start: float, end: float) -> float:
        """Time within [start, end] that the window was full."""
        total = max(0.0, end - max(start, self._since)) if self._since is not None else 0.0
        for s, e in reversed(self._periods):
            if e <= start:
                break
            total += min(e, end) - max(s, start)
        return total

    def completed(self, now: float, est_tokens: int, held_s: float) -> None:
        """A request that held its slot `held_s` seconds up to `now` finished (est_tokens of work)."""
        if held_s <= 0:
            return
        full_s = min(held_s, self._full_seconds(now - held_s, now))
        if full_s <= 0:
            return
        if now - self._last > self.horizon_s:
            self._tokens, self._slot_s, self._done = 0.0, 0.0, 0.0  # forgotten: measure afresh
        self._last = now
        share = full_s / held_s
        self._tokens += est_tokens * share
        self._slot_s += full_s
        self._done += share
        if self._done >= self.keep:  # fade the past: the latest work weighs as much as all before it
            self._tokens, self._slot_s, self._done = self._tokens / 2, self._slot_s / 2, self._done / 2

    def rate(self, now: float) -> float | None:
        """Estimated tokens per second the engine serves with the window full; None until measured."""
        if self._done < self.min_done - 1e-6 or self._slot_s <= 0 or now - self._last > self.horizon_s:
            return None
        return self._tokens / self._slot_s * self.max_inflight
