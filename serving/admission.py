"""Admission control: per-tenant quotas, a bounded global queue, and fair ordering between tenants.

Fairness follows the Virtual Token Counter idea (Sheng et al., "Fairness in Serving Large Language
Models", OSDI '24): each tenant's counter grows with the tokens it is served; when an engine slot
frees, the waiting request of the tenant with the smallest counter goes first. A tenant that
becomes active again is lifted to the smallest active counter, so idling banks no credit. A flood
from one tenant therefore queues behind its own requests, not in front of everyone else's.

Order alone does not isolate latency: a flooder that holds every engine slot makes each newcomer
wait for a slot to free. So fair mode also keeps headroom: each tenant that sent a request within
the last `active_window_s` seconds and has none waiting now keeps one free slot for its next request.
A tenant with nothing running may always take a free slot; one that already has a request running
gets another only if a free slot still stays for each such other tenant (at most half the window is
held back). A tenant alone, or while the others are quiet, may use the whole window.

Headroom alone still lets a flooder fill the rest of the window, and on an engine whose step time
grows with its batch (a CPU engine) that slows every request in it, the others' included. So fair mode
also holds back a *heavy* tenant: one whose demand (estimated tokens asked for within `heavy_window_s`)
is at least `HEAVY_RATIO` times the mean demand of the other tenants of that window. While others are active a
heavy tenant holds at most
- `share_cap * max_inflight / n` slots (n recent tenants; 1.0 is the equal share of the window), and
- the slowdown guard's ceiling: the gateway reports each finished request's time per output token from
  admission to its last token; while the recent median is more than `slowdown_tolerance` times its
  light-load value (the lowest median of the last few minutes) the ceiling halves, otherwise it grows by
  one slot per interval (AIMD, as in TCP congestion control). On an engine whose step time does not grow
  with the batch (a GPU at small batches) the ceiling climbs back to the whole window; on a CPU host it
  settles where the flood no longer slows the others.
The ceiling may fall below one slot: it is then the fraction of the time the heavy tenant may hold its
one slot (after each request it waits in proportion to how long that request took). One slot kept busy
by short requests can still be several times a tenant's share of the work, and on a small CPU host
every request served costs the others CPU (the engine's scheduler and API server, the gateway). The
guard never holds a heavy tenant below what the other tenants ask for on average (its equal share).
Slots beyond stay free. A tenant that is not heavy (bursts of a light tenant, or every tenant of an even
load) is never capped, so the window stays work-conserving when no one floods; 0 turns each limit off.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from common.errors import Overloaded, QuotaExceeded
from serving import metrics


class Draining(Overloaded):
    """The gateway is shutting down: it finishes what it admitted and takes nothing new."""

    code = "shutting_down"


@dataclass
class Quotas:
    """A tenant's limits; 0 means unlimited. Read from the tenant's `quotas` object."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent: int = 0

    @classmethod
    def of(cls, raw: dict | None) -> "Quotas":
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


class SlowdownGuard:
    """The ceiling on a heavy tenant's slots, steered by how much slower than at light load the engine runs.

    Samples are seconds per output token of finished requests, from admission to the last token (the
    engine's queue, prefill and an adapter load included: whatever a newcomer would wait for), kept per
    `kind` ("stream" or "whole": a whole response's time includes its transfer), since the two differ.
    Every `interval_s` the median of the last `window_s` is compared with the lowest such median seen in
    the last `horizon_s` (the light-load value, found again as soon as the flood is held back). Above
    `tolerance` times it the ceiling halves, or quarters when far above (at most once per `window_s`, the
    time the samples take to show the last change); at or below it the ceiling grows by one slot, or by
    half below one slot. Below one slot the ceiling is a duty cycle (`duty`), down to `min_duty`.
    The ceiling moves only while it is *contended* (a heavy tenant waits while others are active): as in
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
        ratios = []
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
            ratios.append(median / lows[0][1])
        if not ratios:
            return
        self.slowdown = max(ratios)
        metrics.ENGINE_SLOWDOWN.set(round(self.slowdown, 3))
        if not contended:
            return
        if self.slowdown > self.tolerance:
            if now - self._cut_at >= self.window_s:
                cut = max(0.25, min(0.5, self.tolerance / self.slowdown))
                self.ceiling, self._cut_at = max(self.min_duty, self.ceiling * cut), now
        elif now - self._cut_at >= self.window_s:
            grown = self.ceiling + 1 if self.ceiling >= 1 else min(1.0, self.ceiling * 1.5)
            self.ceiling = min(float(self.max_inflight), grown)
        metrics.HEAVY_CEILING.set(round(self.ceiling, 3))


class Admission:
    """Decides when a request may go to the engine.

    Args:
        max_inflight: requests forwarded to the engine at once (beyond it they wait, fairly ordered).
        max_queue: waiting requests over all tenants; beyond it new requests get 503 + Retry-After (in fair
            mode a newcomer whose tenant waits less pushes out the newest request of the longest queue).
        fair: VTC order and per-tenant headroom; False: plain first-come first-served (the baseline
            the fairness benchmark compares against).
        active_window_s: how long after its last request a tenant still counts as active (keeps its reserve).
        heavy_window_s: the window over which demand is compared to tell a heavy tenant (long enough that a
            light tenant's Poisson burst of a few requests does not look like a flood).
        share_cap: fair mode, while several tenants are active: a heavy tenant's slots are capped at this
            multiple of its equal share of the window (0: no cap).
        slowdown_tolerance: fair mode: the slowdown guard holds heavy tenants back while the engine's time
            per output token is more than this multiple of its light-load value (0: off).
    """

    HEAVY_RATIO = 2.0  # demand over heavy_window_s, as a multiple of the other tenants' mean, that makes one heavy
    PACE_SLACK = 4  # requests (of the tenant's mean size) granted beyond an equal share before pacing starts

    def __init__(self, max_inflight: int, max_queue: int, fair: bool = True, active_window_s: float = 5.0,
                 share_cap: float = 0.0, slowdown_tolerance: float = 0.0, heavy_window_s: float = 20.0):
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.fair = fair
        self.active_window_s = active_window_s
        self.heavy_window_s = max(heavy_window_s, active_window_s)
        self.share_cap = share_cap
        self.guard = SlowdownGuard(max_inflight, slowdown_tolerance if fair else 0.0)
        self._demand: dict[str, deque] = defaultdict(deque)  # tenant -> (time, est_tokens) within the window
        self._demand_total: dict[str, float] = defaultdict(float)
        self._demand_sum = 0.0  # over all tenants: heavy() is on the dispatch path, so kept, not summed
        self._served: dict[str, deque] = defaultdict(deque)  # tenant -> (time, est_tokens) granted within the window
        self._served_total: dict[str, float] = defaultdict(float)
        self._paused_until: dict[str, float] = {}  # heavy tenant -> when the guard's duty cycle lets it in again
        self._wake: tuple[float, asyncio.TimerHandle] | None = None  # a dispatch when the next pause ends
        self._arrivals = itertools.count()
        self.inflight = 0
        self.running: dict[str, int] = defaultdict(int)  # tenant -> requests holding a slot
        self._last_seen: dict[str, float] = {}
        self.counters: dict[str, float] = defaultdict(float)
        self.active: dict[str, int] = defaultdict(int)  # tenant -> requests waiting or running
        self._waiting: dict[str, deque] = defaultdict(deque)  # tenant -> FIFO of (arrival, future, est_tokens)
        self._requests: dict[str, _Window] = defaultdict(_Window)
        self._tokens: dict[str, _Window] = defaultdict(_Window)
        self.closed = False

    @classmethod
    def from_settings(cls, settings) -> "Admission":
        """The admission a gateway's `ServingSettings` describe (one place that maps settings to arguments)."""
        return cls(settings.max_inflight, settings.max_queue, settings.fair_admission,
                   settings.fair_active_window_s, settings.fair_share_cap, settings.fair_slowdown_tolerance)

    def observe(self, kind: str, per_token_s: float) -> None:
        """A finished request's seconds per output token since admission (`kind`: "stream" or "whole"), for
        the guard; it moves its ceiling only while a heavy tenant waits beside others."""
        if self.guard.tolerance:
            contended = len(self._last_seen) >= 2 and any(self.heavy(t) for t in self._waiting)
            self.guard.observe(kind, per_token_s, contended=contended)

    def close(self) -> None:
        """Stop admitting (graceful shutdown): new requests get 503 + Retry-After; admitted ones go on."""
        self.closed = True
        metrics.DRAINING.set(1)

    @property
    def idle(self) -> bool:
        return self.inflight == 0 and self.queued == 0

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is running or waiting; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while not self.idle:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def check_open(self, tenant: str, label: str = metrics.OTHER) -> None:
        if self.closed:
            metrics.REJECTED.labels(tenant, label, "503", "draining").inc()
            raise Draining("the gateway is shutting down and takes no new requests: retry in a few seconds "
                           "(another replica, or this one after its restart, will answer)", retry_after=5)

    def check_quota(self, tenant: str, quotas: Quotas, est_tokens: int, label: str = metrics.OTHER) -> None:
        """429 with Retry-After if this request would exceed one of the tenant's limits."""
        self.check_open(tenant, label)
        now = time.monotonic()
        reqs, toks = self._requests[tenant], self._tokens[tenant]
        reqs.trim(now)
        toks.trim(now)
        if quotas.max_concurrent and self.active[tenant] >= quotas.max_concurrent:
            raise self._refuse(tenant, label, f"{quotas.max_concurrent} concurrent requests", 1.0)
        if quotas.requests_per_minute and reqs.total + 1 > quotas.requests_per_minute:
            raise self._refuse(tenant, label, f"{quotas.requests_per_minute} requests per minute",
                               reqs.retry_after(now))
        if quotas.tokens_per_minute and toks.total + est_tokens > quotas.tokens_per_minute:
            raise self._refuse(tenant, label, f"{quotas.tokens_per_minute} tokens per minute", toks.retry_after(now))
        reqs.add(now, 1)
        toks.add(now, est_tokens)

    def _refuse(self, tenant: str, label: str, limit: str, retry_after: float) -> QuotaExceeded:
        metrics.REJECTED.labels(tenant, label, "429", "quota").inc()
        return QuotaExceeded(f"tenant {tenant!r} is over its quota of {limit}: retry after "
                             f"{retry_after:.0f}s or ask an admin to raise the quota", retry_after=retry_after)

    async def acquire(self, tenant: str, est_tokens: int, label: str = metrics.OTHER) -> None:
        """Wait for an engine slot in fair order; pair with `release(tenant, est_tokens, tokens)`."""
        self.check_open(tenant, label)
        if not self.active[tenant]:
            floor = min((self.counters[t] for t, n in self.active.items() if n), default=0.0)
            self.counters[tenant] = max(self.counters[tenant], floor)
        now = self._last_seen[tenant] = time.monotonic()
        self._demand[tenant].append((now, est_tokens))
        self._demand_total[tenant] += est_tokens
        self._demand_sum += est_tokens
        light = self._light()
        if (self.inflight < self.max_inflight and self._eligible(tenant, light)
                and not any(self._eligible(t, light) for t in self._waiting)):
            self._grant(tenant, est_tokens)
            return
        if self.queued >= self.max_queue and not self._push_out_for(tenant):
            metrics.REJECTED.labels(tenant, label, "503", "overload").inc()
            raise Overloaded(f"the server is at capacity ({self.max_queue} requests waiting): retry shortly",
                             retry_after=2)
        fut = asyncio.get_running_loop().create_future()
        self.active[tenant] += 1
        entry = (next(self._arrivals), fut, est_tokens, label)
        self._waiting[tenant].append(entry)
        self._dispatch()  # a slot may be free for it though not for the capped tenants ahead of it
        metrics.QUEUED.set(self.queued)
        try:
            await fut
        except BaseException:
            if fut.cancelled() or not fut.done():
                if entry in self._waiting.get(tenant, ()):  # else `_dispatch` already dropped it
                    self._unqueue(tenant, entry)
            elif fut.exception() is None:
                self.release(tenant, est_tokens, 0)  # granted just as the caller went away
            # else: pushed out of a full queue; `_push_out_for` already took it out
            raise

    def _unqueue(self, tenant: str, entry: tuple) -> None:
        self._waiting[tenant].remove(entry)
        if not self._waiting[tenant]:
            del self._waiting[tenant]
        self.active[tenant] -= 1
        metrics.QUEUED.set(self.queued)

    def _push_out_for(self, tenant: str) -> bool:
        """The queue is full: make room for `tenant` by refusing the newest waiting request of the tenant
        with the longest queue, if that queue is longer than `tenant`'s by two or more (longest queue drop,
        the fair way to share a full buffer: a flooder cannot fill the queue and lock the others out). False
        when `tenant` holds (about) the longest queue itself, or in FIFO mode: then the newcomer is refused."""
        if not self.fair or not self._waiting:
            return False
        longest = max(self._waiting, key=lambda t: len(self._waiting[t]))
        if len(self._waiting[longest]) < len(self._waiting.get(tenant, ())) + 2:
            return False
        entry = self._waiting[longest][-1]
        self._unqueue(longest, entry)
        metrics.REJECTED.labels(longest, entry[3], "503", "pushed_out").inc()
        entry[1].set_exception(Overloaded(
            f"the server is at capacity ({self.max_queue} requests waiting) and tenant {longest!r} holds the most "
            "of them: this request made room for another tenant's; retry later, or send fewer at once",
            retry_after=5))
        return True

    def _grant(self, tenant: str, est_tokens: int, queued: bool = False) -> None:
        if not queued:
            self.active[tenant] += 1
        self.inflight += 1
        self.running[tenant] += 1
        self.counters[tenant] += est_tokens  # charged up front, corrected on release
        self._served[tenant].append((time.monotonic(), est_tokens))
        self._served_total[tenant] += est_tokens
        metrics.INFLIGHT.set(self.inflight)

    def release(self, tenant: str, est_tokens: int, tokens: int, held_s: float = 0.0) -> None:
        """The request finished having been served `tokens` tokens after holding its slot `held_s` seconds:
        correct the charge, hand the slot on (a heavy tenant paced by the guard waits before its next)."""
        self.counters[tenant] += tokens - est_tokens
        self.active[tenant] -= 1
        self.running[tenant] -= 1
        self.inflight -= 1
        duty = self.guard.duty
        if self.fair and duty < 1 and held_s > 0 and self.heavy(tenant):
            self._paused_until[tenant] = time.monotonic() + held_s * (1 - duty) / duty
        self._dispatch()
        metrics.INFLIGHT.set(self.inflight)
        metrics.QUEUED.set(self.queued)

    def _dispatch(self) -> None:
        """Grant free slots to waiting requests: the eligible tenant with the smallest counter first."""
        now = time.monotonic()
        while self.inflight < self.max_inflight and self._waiting:
            now = time.monotonic()  # one reading for the checks and the wake-up below: see _wake_after_pauses
            light = self._light()
            ready = [t for t in self._waiting if self._eligible(t, light, now)]
            if not ready:
                break  # the free slots stay reserved for recently active tenants, or a paced tenant's pause
            nxt = min(ready, key=self._priority)
            _, fut, est, _ = self._waiting[nxt].popleft()
            if not self._waiting[nxt]:
                del self._waiting[nxt]  # only tenants with a queue are kept: dispatch stays O(tenants waiting)
            if fut.done():
                # cancelled (its caller went away) but its cleanup has not run yet: it gets no slot
                self.active[nxt] -= 1
                continue
            self._grant(nxt, est, queued=True)
            fut.set_result(None)
        self._wake_after_pauses(now)

    def _wake_after_pauses(self, now: float) -> None:
        """A paced tenant waits on time, not on a release: dispatch again when the first pause ends.

        `now` is the time `_dispatch` judged the pauses by. A second reading could fall after a pause that
        the first still saw running (a timer may fire a little early: uvloop counts whole milliseconds), and
        the tenant would be neither granted nor woken; with nothing running no release would come either,
        and its queue would wait forever (seen once in the fairness bench: 505 requests, until their clients
        gave up)."""
        ends = [self._paused_until[t] for t in self._waiting if self._paused_until.get(t, 0.0) > now]
        if not ends or self.inflight >= self.max_inflight:
            return  # a release will dispatch
        when = min(ends)
        if self._wake is not None and not self._wake[1].cancelled() and now <= self._wake[0] <= when:
            return
        if self._wake is not None:
            self._wake[1].cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._wake = (when, loop.call_later(when - now, self._woken))

    def _woken(self) -> None:
        self._wake = None
        self._dispatch()

    def _light(self) -> set[str]:
        """Recent tenants (a request within `active_window_s`, or one running) with nothing queued."""
        now = time.monotonic()
        cutoff = now - self.active_window_s
        for t in [t for t, at in self._last_seen.items() if at < cutoff and not self.active[t]]:
            del self._last_seen[t]  # keeps the set as small as the tenants really active
        cutoff = now - self.heavy_window_s
        for t in list(self._demand):
            demand = self._demand[t]
            while demand and demand[0][0] < cutoff:
                amount = demand.popleft()[1]
                self._demand_total[t] -= amount
                self._demand_sum -= amount
            if not demand:
                del self._demand[t], self._demand_total[t]
        for t in list(self._served):
            served = self._served[t]
            while served and served[0][0] < cutoff:
                self._served_total[t] -= served.popleft()[1]
            if not served:
                del self._served[t], self._served_total[t]
                self._paused_until.pop(t, None)
        if not self._demand:
            self._demand_sum = 0.0  # no float drift carried into the next busy period
        return {t for t in self._last_seen if t not in self._waiting}

    def share_limit(self) -> int:
        """Slots a heavy tenant may hold while others are active: `share_cap` x its equal share of the window
        and the slowdown guard's ceiling, whichever is smaller (at least 1)."""
        recent = len(self._last_seen)  # every tenant that waits or runs was seen within the window
        if not self.fair or recent < 2:
            return self.max_inflight
        share = max(1, round(self.share_cap * self.max_inflight / recent)) if self.share_cap else self.max_inflight
        return min(share, self.guard.limit)

    def _others_mean(self, tenant: str) -> float | None:
        """Mean demand of the other tenants of the heavy window (None: there are none)."""
        others = len(self._demand) - (tenant in self._demand)
        if others < 1:
            return None
        return (self._demand_sum - self._demand_total.get(tenant, 0.0)) / others

    def heavy(self, tenant: str) -> bool:
        """Does `tenant` ask for at least HEAVY_RATIO x the mean of what the other tenants ask for, while
        another tenant is active?"""
        if len(self._last_seen) - (tenant in self._last_seen) < 1:
            return False
        mine, mean = self._demand_total.get(tenant, 0.0), self._others_mean(tenant)
        return mean is not None and mine > 0 and mine >= self.HEAVY_RATIO * mean

    def paced(self, tenant: str, now: float | None = None) -> bool:
        """Is heavy `tenant` held back by the guard's duty cycle now (one slot at most, and a pause after each
        request)? Never while it has been granted less than the other tenants ask for on average."""
        if self.guard.duty >= 1 or len(self._last_seen) < 2 or not self.heavy(tenant):
            return False
        asked = self._demand.get(tenant)
        slack = self.PACE_SLACK * self._demand_total[tenant] / len(asked) if asked else 0.0
        if self._served_total.get(tenant, 0.0) < (self._others_mean(tenant) or 0.0) + slack:
            # within an equal share (and a few requests: when activity starts, counts are small and one
            # tenant's second request makes it "heavy"): the guard trades only what it gets beyond
            return False
        now = time.monotonic() if now is None else now
        return self.running[tenant] > 0 or now < self._paused_until.get(tenant, 0.0)

    def _eligible(self, tenant: str, light: set[str], now: float | None = None) -> bool:
        """May `tenant` take one more slot now? Always in FIFO mode. In fair mode: not while the guard paces
        it; then if it has nothing running; or if a free slot still stays for each other recent tenant with
        nothing queued and, when it is heavy, it holds less than `share_limit()`."""
        if not self.fair:
            return True
        if self.paced(tenant, now):
            return False
        if not self.running[tenant]:
            return True
        if self.running[tenant] >= self.share_limit() and self.heavy(tenant):
            return False
        reserve = len(light) - (tenant in light)
        reserve = min(reserve, self.max_inflight // 2)  # many quiet tenants must not idle the engine
        return self.max_inflight - self.inflight - 1 >= reserve

    def _priority(self, tenant: str) -> tuple:
        head = self._waiting[tenant][0][0]
        return (self.counters[tenant], head) if self.fair else (head,)

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._waiting.values())
