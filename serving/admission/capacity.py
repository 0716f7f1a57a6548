"""The engine's capacity as the fair queue measures it: tokens per second served while every slot was busy.

Fair admission holds a tenant back only when the engine has no room for what it asks (an overload), so it
needs to know how much the engine serves at most. Throughput while the whole in-flight window is busy is
that number for this gateway's window; at any lower load the engine serves what it is asked, which says
nothing about its limit. The window fills only when requests come faster than the engine serves them, so
until it has (a flood, a long burst) the capacity is unknown and nothing is held back.

Amounts are estimated tokens (as `Demand` counts what tenants ask for), so the two compare directly.
"""

from __future__ import annotations


class EngineCapacity:
    """Estimated tokens per second completed while the window was full, over the recent full periods.

    `note_full(now, full)` is called after each grant and release with whether every slot is busy;
    `completed(now, est_tokens, was_full)` for each release. The estimate needs `min_done` completions
    while full (a burst that fills the window for a moment is no measurement); older periods fade by
    halving the totals once `keep` completions are counted, so the estimate follows the engine. An estimate
    not refreshed within `horizon_s` is forgotten (as the slowdown guard forgets its light-load value): one
    measured while the host was busy with something else must not hold tenants back for good; under a
    lasting flood the window fills again within a second of the limits lifting, and is measured anew.
    """

    def __init__(self, max_inflight: int, min_done: int | None = None, keep: int | None = None,
                 horizon_s: float = 300.0):
        self.min_done = min_done if min_done is not None else max_inflight
        self.keep = keep if keep is not None else 20 * max_inflight
        self._since: float | None = None  # when the current full period began
        self._seconds = 0.0  # full time of the periods counted
        self._tokens = 0.0  # estimated tokens completed in them
        self._done = 0
        self.horizon_s = horizon_s
        self._last = float("-inf")  # when a completion was last counted

    def note_full(self, now: float, full: bool) -> None:
        if full and self._since is None:
            self._since = now
        elif not full and self._since is not None:
            self._seconds += now - self._since
            self._since = None

    def completed(self, now: float, est_tokens: int, was_full: bool) -> None:
        if not was_full:
            return
        if now - self._last > self.horizon_s:
            self._tokens, self._seconds, self._done = 0.0, 0.0, 0  # forgotten: measure afresh
        self._last = now
        self._tokens += est_tokens
        self._done += 1
        if self._done >= self.keep:  # fade the past: the latest periods weigh as much as all before them
            if self._since is not None:
                self._seconds += now - self._since
                self._since = now
            self._tokens, self._seconds, self._done = self._tokens / 2, self._seconds / 2, self._done // 2

    def rate(self, now: float) -> float | None:
        """Estimated tokens per second the engine serves with the window full; None until measured."""
        seconds = self._seconds + (now - self._since if self._since is not None else 0.0)
        if self._done < self.min_done or seconds <= 0 or now - self._last > self.horizon_s:
            return None
        return self._tokens / seconds
