"""The tenant-fair queue: engine slots, the requests waiting for one, and the order they get one in.

Fairness follows the Virtual Token Counter idea (Sheng et al., "Fairness in Serving Large Language
Models", OSDI '24): each tenant's counter grows with the tokens it is served; a tenant that becomes
active again is lifted to the smallest active counter, so idling banks no credit.

Order: while every tenant's demand fits its max-min fair share of the engine's measured capacity (what it
asks for within `heavy_window_s`; `demand.fair_level`), waiting requests go first come, first served:
a queue that forms in a burst of ordinary traffic drains in arrival order, the lowest tail for every
tenant, and a popular tenant does not wait behind the others' later requests for being popular. The
requests of a tenant that asks for more than its share, or floods (`Demand.FLOOD_RATIO` x what the others ask
for on average, though the engine could serve it), go after everyone else's, in VTC order among such tenants
(smallest counter first): a flood queues behind its own requests, not in front of anyone else's.

Work-conserving: a request never waits while a slot is free for it, unless its tenant *overloads* the
engine or floods it; nothing else holds a tenant back while the engine has room, however skewed the traffic
(a popular tenant's burst at ordinary load drains at once). A flooding tenant that does not (yet) overload
leaves headroom (below) and nothing more, once the capacity is measured: at a flood's onset, in the second
before its demand over the window shows it overloading, it filled the whole window and the others' next
requests waited behind it (in the flood benchmark, much of the others' tail came from those onsets).

Overload: a *heavy* tenant (estimated tokens asked for within `heavy_window_s` at least `HEAVY_RATIO` x the
mean of the other tenants of that window, while another was active within `active_window_s`) asking at a
rate above its fair share of `OVERLOAD_LOAD` x the engine's measured capacity
(serving/admission/capacity.py: throughput while the window was full; unknown until it has been full,
and then nothing is held back). What such a tenant asks cannot all be served: its backlog grows whatever
admission does, so admission decides what it costs the others. On an engine whose step time grows with its
batch (a CPU engine) every extra request slows every request in the batch, so an overloading tenant
- leaves headroom: each other tenant that sent a request within `active_window_s` and has none waiting
  keeps one free slot for its next request (at most half the window), so it starts at once instead of
  waiting for the flooder's requests to finish;
- holds at most `share_cap * max_inflight / n` slots (n recent tenants; 1.0 is the equal share), and
- at most the slowdown guard's ceiling (serving/admission/guard.py): it shrinks while the engine runs
  slower than at light load and grows back while it does not. Below one slot it is a duty cycle: after
  each request the tenant waits in proportion to how long that request took (pacing, woken by a timer).
  The guard never holds it below what the other tenants ask for on average (its equal share).
These act only under contention (others active while the engine is overloaded), and never on a tenant
alone: it gets the whole window. 0 turns the cap or the guard off.
A full queue refuses the newest request of the tenant with the longest queue (longest queue drop).

Not thread-safe: every call comes from the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict, deque

from common.errors import Overloaded
from serving import metrics
from serving.admission.capacity import EngineCapacity
from serving.admission.demand import Demand, fair_level
from serving.admission.guard import SlowdownGuard


class FairQueue:
    """Grants engine slots: at once while one is free for the tenant, else in fair order when one frees.

    Args:
        max_inflight: requests forwarded to the engine at once (beyond it they wait, fairly ordered).
        max_queue: waiting requests over all tenants; beyond it new requests get 503 + Retry-After (in fair
            mode a newcomer whose tenant waits less pushes out the newest request of the longest queue).
        guard: the slowdown guard that caps and paces heavy tenants in fair mode (None: no guard).
        fair: VTC order and per-tenant headroom; False: plain first-come first-served (the baseline
            the fairness benchmark compares against).
        active_window_s: how long after its last request a tenant still counts as active (keeps its reserve).
        share_cap: fair mode, while several tenants are active: a heavy tenant's slots are capped at this
            multiple of its equal share of the window (0: no cap).
        heavy_window_s: the window over which demand is compared to tell a heavy tenant (long enough that a
            light tenant's Poisson burst of a few requests does not look like a flood).
    """

    PACE_SLACK = 4  # requests (of the tenant's mean size) granted beyond an equal share before pacing starts
    OVERLOAD_LOAD = 1.0  # share of the measured capacity that all tenants' demand may take before it overloads

    def __init__(self, max_inflight: int, max_queue: int, guard: SlowdownGuard | None = None, fair: bool = True,
                 active_window_s: float = 5.0, share_cap: float = 0.0, heavy_window_s: float = 20.0):
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.fair = fair
        self.active_window_s = active_window_s
        self.heavy_window_s = max(heavy_window_s, active_window_s)
        self.share_cap = share_cap
        self.guard = guard if guard is not None else SlowdownGuard(max_inflight, 0.0)
        self.demand = Demand(self.heavy_window_s)
        self.capacity = EngineCapacity(max_inflight)
        self._level: tuple | None = None  # (rates, capacity, fair level) last computed: see over_share
        self._paused_until: dict[str, float] = {}  # heavy tenant -> when the guard's duty cycle lets it in again
        self._wake: tuple[float, asyncio.TimerHandle] | None = None  # a dispatch when the next pause ends
        self._arrivals = itertools.count()
        self.inflight = 0
        self.running: dict[str, int] = defaultdict(int)  # tenant -> requests holding a slot
        self._last_seen: dict[str, float] = {}
        self.counters: dict[str, float] = defaultdict(float)
        self.active: dict[str, int] = defaultdict(int)  # tenant -> requests waiting or running
        self._waiting: dict[str, deque] = defaultdict(deque)  # tenant -> FIFO of (arrival, future, est_tokens, label)
        self.queued = 0  # requests in `_waiting`, kept with it (read on every request)
        if fair:  # read when /metrics is scraped, not per request (the gateway holds one queue)
            metrics.FAIR_CAPACITY.set_function(lambda: self.capacity.rate(time.monotonic()) or 0.0)

    async def acquire(self, tenant: str, est_tokens: int, label: str = metrics.OTHER) -> None:
        """Wait for an engine slot in fair order; pair with `release(tenant, est_tokens, tokens)`."""
        if not self.active[tenant]:
            floor = min((self.counters[t] for t, n in self.active.items() if n), default=0.0)
            self.counters[tenant] = max(self.counters[tenant], floor)
        now = self._last_seen[tenant] = time.monotonic()
        self.demand.ask(tenant, now, est_tokens)
        light = self._light()
        room = self.inflight < self.max_inflight
        eligible = room and self._eligible(tenant, light)
        if eligible and not any(self._eligible(t, light) for t in self._waiting):
            self._grant(tenant, est_tokens)
            return
        if room and not eligible:
            metrics.FAIR_HELD.labels(metrics.LABELS.tenant(tenant)).inc()
        if self.queued >= self.max_queue and not self._push_out_for(tenant):
            metrics.REJECTED.labels(metrics.LABELS.tenant(tenant), label, "503", "overload").inc()
            raise Overloaded(f"the server is at capacity ({self.max_queue} requests waiting): retry shortly",
                             retry_after=2)
        fut = asyncio.get_running_loop().create_future()
        self.active[tenant] += 1
        entry = (next(self._arrivals), fut, est_tokens, label)
        self._waiting[tenant].append(entry)
        self.queued += 1
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
        self.queued -= 1
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
        metrics.REJECTED.labels(metrics.LABELS.tenant(longest), entry[3], "503", "pushed_out").inc()
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
        now = time.monotonic()
        self.demand.grant(tenant, now, est_tokens)
        self.capacity.note_full(now, self.inflight >= self.max_inflight)
        metrics.INFLIGHT.set(self.inflight)

    def release(self, tenant: str, est_tokens: int, tokens: int, held_s: float = 0.0) -> None:
        """The request finished having been served `tokens` tokens after holding its slot `held_s` seconds:
        correct the charge, hand the slot on (a heavy tenant paced by the guard waits before its next)."""
        now = time.monotonic()
        self.capacity.completed(now, est_tokens, held_s)
        self.counters[tenant] += tokens - est_tokens
        self.active[tenant] -= 1
        self.running[tenant] -= 1
        self.inflight -= 1
        duty = self.guard.duty
        if self.fair and duty < 1 and held_s > 0 and self.overloading(tenant, now):
            self._paused_until[tenant] = now + held_s * (1 - duty) / duty
        self._dispatch()
        self.capacity.note_full(time.monotonic(), self.inflight >= self.max_inflight)
        metrics.INFLIGHT.set(self.inflight)
        metrics.QUEUED.set(self.queued)

    def _dispatch(self) -> None:
        """Grant free slots to waiting requests, the eligible tenant first in `_priority` order."""
        now = time.monotonic()
        while self.inflight < self.max_inflight and self._waiting:
            now = time.monotonic()  # one reading for the checks and the wake-up below: see _wake_after_pauses
            light = self._light()
            ready = [t for t in self._waiting if self._eligible(t, light, now)]
            if not ready and self.inflight == 0:
                ready = list(self._waiting)  # every waiting tenant is held back, but an idle engine protects no one
            if not ready:
                break  # the free slots stay reserved for recently active tenants, or a paced tenant's pause
            nxt = min(ready, key=lambda t: self._priority(t, now))
            _, fut, est, _ = self._waiting[nxt].popleft()
            self.queued -= 1
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
        for t in self.demand.trim(now):
            self._paused_until.pop(t, None)  # granted nothing within the heavy window: no pause left to serve
        return {t for t in self._last_seen if t not in self._waiting}

    def share_limit(self) -> int:
        """Slots a heavy tenant may hold while others are active: `share_cap` x its equal share of the window
        and the slowdown guard's ceiling, whichever is smaller (at least 1)."""
        recent = len(self._last_seen)  # every tenant that waits or runs was seen within the window
        if not self.fair or recent < 2:
            return self.max_inflight
        share = max(1, round(self.share_cap * self.max_inflight / recent)) if self.share_cap else self.max_inflight
        return min(share, self.guard.limit)

    def heavy(self, tenant: str, ratio: float = Demand.HEAVY_RATIO) -> bool:
        """Does `tenant` ask for at least `ratio` x the mean of what the other tenants ask for, while another
        tenant is active?"""
        if len(self._last_seen) - (tenant in self._last_seen) < 1:
            return False
        return self.demand.heavy(tenant, ratio)

    def flooding(self, tenant: str) -> bool:
        """Is `tenant` heavy by `Demand.FLOOD_RATIO` (though the engine may have room for all it asks)?"""
        return self.heavy(tenant, Demand.FLOOD_RATIO)

    def over_share(self, tenant: str, now: float | None = None) -> bool | None:
        """Does `tenant` ask for more than its max-min fair share of `OVERLOAD_LOAD` x the engine's measured
        capacity (`demand.fair_level`, rates over the heavy window)? Never while everything asked fits. None
        while the capacity is unknown (the window has not been full long enough to measure it)."""
        now = time.monotonic() if now is None else now
        capacity = self.capacity.rate(now)
        if capacity is None:
            return None
        rates, _ = self.demand.rates(now)
        if self._level is None or self._level[0] is not rates or self._level[1] != capacity:
            self._level = (rates, capacity, fair_level(rates, self.OVERLOAD_LOAD * capacity))
        level = self._level[2]
        return level is not None and rates.get(tenant, 0.0) > level

    def overloading(self, tenant: str, now: float | None = None) -> bool:
        """Is heavy `tenant` asking for more than its fair share of what the engine serves (`over_share`)? Never
        while the capacity is unknown. Only such a tenant is held back; any other takes a free slot whenever no
        one waits before it (work-conserving)."""
        return self.heavy(tenant) and self.over_share(tenant, now) is True

    def contended(self) -> bool:
        """Does an overloading tenant wait while others are active (the only time the guard may move)?"""
        if len(self._last_seen) < 2:
            return False
        now = time.monotonic()
        return any(self.overloading(t, now) for t in self._waiting)

    def paced(self, tenant: str, now: float | None = None) -> bool:
        """Is heavy `tenant` held back by the guard's duty cycle now (one slot at most, and a pause after each
        request)? Never while it has been granted less than the other tenants ask for on average."""
        if self.guard.duty >= 1 or len(self._last_seen) < 2 or not self.overloading(tenant, now):
            return False
        slack = self.PACE_SLACK * self.demand.mean_ask(tenant)
        if self.demand.granted(tenant) < (self.demand.others_mean(tenant) or 0.0) + slack:
            # within an equal share (and a few requests: when activity starts, counts are small and one
            # tenant's second request makes it "heavy"): the guard trades only what it gets beyond
            return False
        now = time.monotonic() if now is None else now
        return self.running[tenant] > 0 or now < self._paused_until.get(tenant, 0.0)

    def _eligible(self, tenant: str, light: set[str], now: float | None = None) -> bool:
        """May `tenant` take one more slot now? Always in FIFO mode, and in fair mode unless it is overloading
        or flooding (the dispatch still serves the waiting tenants in VTC order). A flooding tenant, once the
        capacity is measured: if it has nothing running, or a free slot still stays for each other recent
        tenant with nothing queued. An overloading tenant: not while the guard paces it; then if it has
        nothing running; or if it holds less than `share_limit()` and leaves that headroom."""
        if not self.fair:
            return True
        now = time.monotonic() if now is None else now
        if not self.overloading(tenant, now):
            if self.running[tenant] and self.flooding(tenant) and self.capacity.rate(now) is not None:
                return self._leaves_headroom(tenant, light)
            return True  # capacity unknown: a flood fills the window, which is how the capacity gets measured
        if self.paced(tenant, now):
            return False
        if not self.running[tenant]:
            return True
        if self.running[tenant] >= self.share_limit():
            return False
        return self._leaves_headroom(tenant, light)

    def _leaves_headroom(self, tenant: str, light: set[str]) -> bool:
        """Would one more slot for `tenant` still leave a free slot for each other recent tenant with nothing
        queued (at most half the window: many quiet tenants must not idle the engine)?"""
        reserve = min(len(light) - (tenant in light), self.max_inflight // 2)
        return self.max_inflight - self.inflight - 1 >= reserve

    def _priority(self, tenant: str, now: float) -> tuple:
        """Arrival order for the tenants whose demand fits their share (first come, first served: the lowest
        tail for everyone, and no one's share is taken); after them, in VTC order, those asking for more, and
        those flooding (`Demand.FLOOD_RATIO` x the others' mean) even while their demand fits the engine. While
        the capacity is unknown, a heavy tenant counts as asking for more (ordering holds no one back)."""
        head = self._waiting[tenant][0][0]
        if not self.fair:
            return (0, 0.0, head)
        over = self.over_share(tenant, now)
        if (self.heavy(tenant) if over is None else over) or self.flooding(tenant):
            return (1, self.counters[tenant], head)
        return (0, 0.0, head)

    @property
    def idle(self) -> bool:
        return self.inflight == 0 and self.queued == 0
