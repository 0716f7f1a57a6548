"""The slowdown guard: how many slots an overloading tenant may hold, steered by how much the engine slows.

The gateway reports each finished request's time per output token from admission to its last token;
while the recent median is more than `tolerance` times its light-load value (the lowest median of the
last few minutes) the ceiling halves, otherwise it grows by one slot per interval (AIMD, as in TCP
congestion control). On an engine whose step time does not grow with the batch (a GPU at small batches)
the ceiling climbs back to the whole window; on a CPU host it settles where the flood no longer slows
the others. The ceiling may fall below one slot: it is then the fraction of the time the heavy tenant
may hold its one slot (`duty`; the fair queue makes it wait after each request in proportion to how
long that request took). One slot kept busy by short requests can still be several times a tenant's
share of the work, and on a small CPU host every request served costs the others CPU (the engine's
scheduler and API server, the gateway).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict, deque

from serving import metrics


class SlowdownGuard:
    """The ceiling on an overloading tenant's slots, steered by how much slower than at light load the engine runs.

    Samples are seconds per output token of finished requests, from admission to the last token (the
    engine's queue, prefill and an adapter load included: whatever a newcomer would wait for), kept per
    `kind` ("stream" or "whole": a whole response's time includes its transfer), since the two differ.
    Every `interval_s` the median of the last `window_s` is compared with the lowest such median seen in
    the last `horizon_s` (the light-load value, found again as soon as the flood is held back). Above
    `tolerance` times it the ceiling halves, or quarters when far above (at most once per `window_s`, the
    time the samples take to show the last change); at or below it the ceiling grows by one slot, or by
    half below one slot. Below one slot the ceiling is a duty cycle (`duty`), down to `min_duty`.
    The ceiling moves only while it is *contended* (a tenant that overloads the engine waits while others
    are active; the fair queue applies the ceiling to no one else): as in
    TCP's congestion window validation, a limit nobody presses against is not grown (a quiet spell would
    otherwise hand the next flood the whole window), nor cut by a heavy tenant that is alone.
    """

    def __init__(self, max_inflight: int, tolerance: float, interval_s: float = 0.5, window_s: float = 1.0,
                 horizon_s: float = 300.0, min_samples: int = 3, min_duty: float = 1 / 16):
        self.max_inflight, self.tolerance, self.min_duty = max_inflight, tolerance, min_duty
        self.interval_s, self.window_s, self.horizon_s, self.min_samples = interval_s, window_s, horizon_s, min_samples
        self.ceiling = min(1.0, float(max_inflight))  # slow start: a heavy tenant earns slots by not slowing others
        self.slowdown = 1.0
        self._samples: dict[str, deque] = defaultdict(deque)  # kind -> (time, seconds per token)
        self._lows: dict[str, deque] = defaultdict(deque)  # kind -> increasing (time, median): sliding minimum
        self._next = 0.0
        self._cut_at = float("-inf")

    @property
    def limit(self) -> int:
        return self.max_inflight if not self.tolerance else max(1, int(self.ceiling))

    @property
    def duty(self) -> float:
        """The fraction of the time a heavy tenant may hold its one slot (1.0: no pacing)."""
        return 1.0 if not self.tolerance else min(1.0, self.ceiling)

    def observe(self, kind: str, per_token_s: float, now: float | None = None, contended: bool = True) -> None:
        if not self.tolerance or not per_token_s > 0:
            return
        now = time.monotonic() if now is None else now
        self._samples[kind].append((now, per_token_s))
        if now >= self._next:
            self._next = now + self.interval_s
            self._adjust(now, contended)

    def _adjust(self, now: float, contended: bool) -> None:
        medians = {}
        for kind, samples in self._samples.items():
            while samples and samples[0][0] < now - self.window_s:
                samples.popleft()
            if len(samples) < self.min_samples:
                continue
            median = statistics.median(v for _, v in samples)
            lows = self._lows[kind]
            while lows and lows[0][0] < now - self.horizon_s:
                lows.popleft()
            while lows and lows[-1][1] >= median:
                lows.pop()
            lows.append((now, median))
            medians[kind] = median
        if not medians:
            return
        self.slowdown = max(m / self._lows[kind][0][1] for kind, m in medians.items())
        metrics.ENGINE_SLOWDOWN.set(round(self.slowdown, 3))
        if not contended:
            return
        if self.slowdown > self.tolerance:
            if self.ceiling > self.min_duty:
                if now - self._cut_at >= self.window_s:
                    cut = max(0.25, min(0.5, self.tolerance / self.slowdown))
                    self.ceiling, self._cut_at = max(self.min_duty, self.ceiling * cut), now
            elif now - self._cut_at >= 2 * self.window_s:
                # held back as far as it goes and still slow: not the heavy tenants' doing (more adapters in the
                # batch, their loads, longer requests): that is the engine's light-load speed now
                for kind, median in medians.items():
                    self._lows[kind] = deque([(now, median)])
                self.slowdown, self._cut_at = 1.0, now
                metrics.ENGINE_SLOWDOWN.set(1.0)
        elif now - self._cut_at >= self.window_s:
            grown = self.ceiling + 1 if self.ceiling >= 1 else min(1.0, self.ceiling * 1.5)
            self.ceiling = min(float(self.max_inflight), grown)
        metrics.HEAVY_CEILING.set(round(self.ceiling, 3))
