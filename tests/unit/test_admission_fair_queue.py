"""The tenant-fair queue: bounded queue, longest-queue drop, fair (VTC) order, headroom, caps and pacing."""

from __future__ import annotations

import asyncio

import pytest

from common.errors import Overloaded
from serving.admission import fair_queue
from serving.admission.fair_queue import FairQueue
from serving.admission.guard import SlowdownGuard
from serving.metrics import REJECTED


def _queue(max_inflight: int, max_queue: int, tolerance: float = 0.0, **kwargs) -> FairQueue:
    """A fair queue with a slowdown guard of `tolerance` (0: off), as `Admission` builds it."""
    return FairQueue(max_inflight, max_queue, SlowdownGuard(max_inflight, tolerance), **kwargs)


class Measured:
    """An engine capacity already measured, `rate` estimated tokens per second (1.0: any flood overloads it)."""

    def __init__(self, rate: float = 1.0):
        self._rate = rate

    def note_full(self, now: float, full: bool) -> None:
        pass

    def completed(self, now: float, est_tokens: int, was_full: bool) -> None:
        pass

    def rate(self, now: float) -> float:
        return self._rate


def _overloaded(q: FairQueue) -> FairQueue:
    """`q` over an engine whose measured capacity every heavy tenant's demand exceeds: its limits apply."""
    q.capacity = Measured()
    return q


def test_full_queue_is_503():
    async def go():
        q = _queue(max_inflight=1, max_queue=1)
        await q.acquire("a", 1)
        waiter = asyncio.create_task(q.acquire("a", 1))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await q.acquire("b", 1)
        q.release("a", 1, 1)
        await waiter
        assert q.inflight == 1 and q.queued == 0
    asyncio.run(go())


def test_a_full_queue_pushes_out_the_longest_queue_not_a_newcomer(monkeypatch):
    """A flooder fills the queue: another tenant's request still gets in, in place of the flooder's newest
    (which is refused with 503 and counted); the flooder's own next request is refused; FIFO mode keeps
    plain tail drop."""
    from serving import metrics
    from serving.metric_labels import Labels

    monkeypatch.setattr(metrics, "LABELS", Labels(tenants=10_000))
    metrics.LABELS.count("a")  # named in the series, as the gateway does on each request's arrival

    async def go(fair):
        q = _queue(max_inflight=1, max_queue=4, fair=fair)
        await q.acquire("a", 1)
        flood = [asyncio.create_task(q.acquire("a", 1)) for _ in range(4)]
        await asyncio.sleep(0)
        assert q.queued == 4
        with pytest.raises(Overloaded, match="at capacity"):
            await q.acquire("a", 1)  # the flooder's own arrival: no one to push out but itself
        if not fair:
            with pytest.raises(Overloaded):
                await q.acquire("b", 1, "x")
            return None
        before = REJECTED.labels("a", "other", "503", "pushed_out")._value.get()
        light = asyncio.create_task(q.acquire("b", 1))
        for _ in range(3):
            await asyncio.sleep(0)
        assert q.queued == 4 and flood[-1].done() and not light.done()
        with pytest.raises(Overloaded, match="holds the most") as e:
            await flood[-1]
        assert e.value.retry_after > 0
        assert REJECTED.labels("a", "other", "503", "pushed_out")._value.get() == before + 1
        assert q.active["a"] == 1 + 3 and q.active["b"] == 1  # the pushed-out one left no trace
        served = []
        while q.inflight:  # release whoever runs until everyone waiting was served
            tenant = next(t for t, n in q.running.items() if n)
            served.append(tenant)
            q.release(tenant, 1, 1)
            for _ in range(3):
                await asyncio.sleep(0)
        assert sorted(served) == ["a"] * 4 + ["b"] and light.done() and all(t.done() for t in flood[:3])
        assert q.idle
        return None
    asyncio.run(go(fair=True))
    asyncio.run(go(fair=False))


def test_a_waiter_cancelled_just_before_a_release_gets_no_slot_and_breaks_nothing():
    """The caller's task is cancelled (its future with it) and, before its cleanup runs, a release
    dispatches: the slot goes to the next waiter, the cancelled one leaves no count behind."""
    async def go():
        q = _queue(max_inflight=1, max_queue=10)
        await q.acquire("a", 1)
        gone = asyncio.create_task(q.acquire("b", 1))
        nxt = asyncio.create_task(q.acquire("c", 1))
        await asyncio.sleep(0)
        gone.cancel()
        q.release("a", 1, 1)  # same loop turn: b's cleanup has not run
        await nxt
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert q.running["c"] == 1 and q.inflight == 1 and q.queued == 0
        assert q.active["b"] == 0 and q.running["b"] == 0
        q.release("c", 1, 1)
        assert q.idle
    asyncio.run(go())


def test_a_flooding_tenant_does_not_jump_the_queue():
    """A queues 10 requests, then B queues one: B is served before A's backlog."""
    async def go():
        q = _queue(max_inflight=1, max_queue=100)
        order = []

        async def req(t):
            await q.acquire(t, 10)
            order.append(t)
            await asyncio.sleep(0.001)
            q.release(t, 10, 10)

        await q.acquire("a", 10)  # occupies the only slot
        tasks = [asyncio.create_task(req("a")) for _ in range(10)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(req("b")))
        await asyncio.sleep(0)
        q.release("a", 10, 10)
        await asyncio.gather(*tasks)
        return order
    order = asyncio.run(go())
    assert order.index("b") <= 1


def test_cancelled_waiter_leaves_no_trace():
    async def go():
        q = _queue(max_inflight=1, max_queue=10)
        await q.acquire("a", 1)
        waiter = asyncio.create_task(q.acquire("b", 1))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert q.queued == 0 and q.active["b"] == 0
        q.release("a", 1, 1)
        assert q.inflight == 0
    asyncio.run(go())


def test_fifo_mode_serves_in_arrival_order():
    async def go():
        q = _queue(max_inflight=1, max_queue=100, fair=False)
        order = []

        async def req(t):
            await q.acquire(t, 10)
            order.append(t)
            q.release(t, 10, 10)

        await q.acquire("a", 10)
        tasks = [asyncio.create_task(req("a")) for _ in range(5)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(req("b")))
        await asyncio.sleep(0)
        q.release("a", 10, 10)
        await asyncio.gather(*tasks)
        return order
    assert asyncio.run(go()) == ["a"] * 5 + ["b"]


async def _seen(q: FairQueue, *tenants: str) -> None:
    """Each tenant sends one request that finishes at once: recently active, now idle."""
    for t in tenants:
        await q.acquire(t, 1)
        q.release(t, 1, 1)


def test_a_flooder_leaves_a_free_slot_for_each_other_recent_tenant():
    """Window 4, three recent tenants: the flooder fills up to 4 - 2 reserved; b and c get a slot at once."""
    async def go():
        q = _overloaded(_queue(max_inflight=4, max_queue=100, active_window_s=60))
        for t in ("b", "c"):  # b and c were active a moment ago (now idle)
            await q.acquire(t, 1)
            q.release(t, 1, 1)
        flood = [asyncio.create_task(q.acquire("a", 1)) for _ in range(10)]
        await asyncio.sleep(0)
        assert q.running["a"] == 2 and q.queued == 8  # two slots stay free for b and c
        await asyncio.wait_for(q.acquire("b", 1), 1)  # no wait although a has a backlog
        await asyncio.wait_for(q.acquire("c", 1), 1)
        assert q.inflight == 4
        q.release("a", 1, 1)
        await asyncio.sleep(0)
        assert q.running["a"] == 1 and q.inflight == 3  # not handed to a's backlog: kept for b or c
        b2 = asyncio.create_task(q.acquire("b", 1))
        await asyncio.sleep(0)
        q.release("c", 1, 1)  # two free: one is granted (VTC: b2 or a's next), one stays for c
        await asyncio.sleep(0)
        assert q.inflight == 3
        q.release("b", 1, 1)
        await asyncio.sleep(0)
        await asyncio.wait_for(b2, 1)
        for _ in range(q.running["b"]):
            q.release("b", 1, 1)
        await asyncio.sleep(0)
        while q.running["a"] > 2:  # a got extra slots while b itself was waiting (no claim then)
            q.release("a", 1, 1)
            await asyncio.sleep(0)
        q.release("a", 1, 1)
        await asyncio.sleep(0)
        assert q.running["a"] == 2 and q.inflight == 2  # b and c idle again: two slots held for them
        for task in flood:
            task.cancel()
    asyncio.run(go())


def test_headroom_is_work_conserving_when_others_are_quiet():
    """A tenant alone (or once the others' activity window passed) may use the whole window."""
    async def go():
        q = _queue(max_inflight=4, max_queue=100, active_window_s=0.05)
        await q.acquire("b", 1)
        q.release("b", 1, 1)
        await asyncio.sleep(0.1)  # b went quiet (a sleep never ends early: > 0.05 s passed on any host)
        for _ in range(4):
            await asyncio.wait_for(q.acquire("a", 1), 1)
        assert q.running["a"] == 4
    asyncio.run(go())


def test_fifo_mode_keeps_no_headroom():
    async def go():
        q = _queue(max_inflight=4, max_queue=100, fair=False, active_window_s=60)
        await q.acquire("b", 1)
        q.release("b", 1, 1)
        for _ in range(4):
            await asyncio.wait_for(q.acquire("a", 1), 1)
        assert q.running["a"] == 4
    asyncio.run(go())


def test_share_cap_limits_a_heavy_tenant_to_its_share_of_the_window():
    """Window 8, three recent tenants, cap 1.0: a flooder (heavy: it asks for far more than b and c) keeps
    round(8/3) = 3 slots, even with slots free; a burst of a tenant that is not heavy is not capped."""
    async def go():
        q = _overloaded(_queue(max_inflight=8, max_queue=100, active_window_s=60, share_cap=1.0))
        await _seen(q, "b", "c")
        flood = [asyncio.create_task(q.acquire("a", 1)) for _ in range(20)]
        await asyncio.sleep(0)
        assert q.share_limit() == 3 and q.heavy("a") and not q.heavy("b")
        assert q.running["a"] == 3 and q.queued == 17 and q.inflight == 3  # five slots stay free
        q.release("a", 1, 1)
        await asyncio.sleep(0)
        assert q.running["a"] == 3  # its finished request is replaced up to its cap, not beyond
        # b is not heavy: its burst takes free slots at once, past its own share
        burst = [asyncio.create_task(q.acquire("b", 1)) for _ in range(4)]
        await asyncio.sleep(0)
        assert q.running["b"] == 4 and all(t.done() for t in burst) and q.running["a"] == 3
        for task in flood:
            task.cancel()
    asyncio.run(go())


def test_an_even_load_is_never_capped():
    """Every tenant asks for about the same (none is heavy): the whole window is used, cap or not."""
    async def go():
        q = _queue(max_inflight=8, max_queue=100, active_window_s=60, share_cap=0.5, tolerance=1.1)
        q.guard.ceiling = 1  # as if the engine had slowed down
        tasks = [asyncio.create_task(q.acquire(t, 1)) for _ in range(4) for t in ("a", "b", "c")]
        await asyncio.sleep(0)
        assert not any(q.heavy(t) for t in "abc")
        assert q.inflight == 8 and q.queued == 4
        for task in tasks:
            task.cancel()
    asyncio.run(go())


def test_share_cap_lifts_when_the_others_go_quiet_and_is_off_at_zero(monkeypatch):
    clock = _SteppingClock(step=0.0)  # moves only when told: b stays recent however slowly the host runs
    monkeypatch.setattr(fair_queue, "time", clock)

    async def go():
        q = _overloaded(_queue(max_inflight=4, max_queue=100, active_window_s=0.05, share_cap=1.0))
        await q.acquire("b", 1)
        q.release("b", 1, 1)
        tasks = [asyncio.create_task(q.acquire("a", 1)) for _ in range(6)]
        await asyncio.sleep(0)
        assert q.running["a"] == 2 and q.queued == 4  # heavy, b recent: a's share is 4 / 2
        clock.now += 0.1  # b went quiet: the next release hands a the whole window
        q.release("a", 1, 1)
        await asyncio.sleep(0)
        assert q.share_limit() == 4 and q.running["a"] == 4
        for task in tasks:
            task.cancel()
        nocap = _overloaded(_queue(max_inflight=8, max_queue=100, active_window_s=60, share_cap=0))
        await _seen(nocap, "b", "c")
        flood = [asyncio.create_task(nocap.acquire("a", 1)) for _ in range(10)]
        await asyncio.sleep(0)
        for _ in range(3):
            nocap.release("a", 1, 1)
            await asyncio.sleep(0)
        assert nocap.running["a"] == 6 and nocap.share_limit() == 8  # headroom only: 8 - 2 reserved
        for task in flood:
            task.cancel()
    asyncio.run(go())


def test_the_guard_holds_a_heavy_tenant_back_but_never_a_light_one():
    async def go():
        q = _overloaded(_queue(max_inflight=8, max_queue=100, active_window_s=60, share_cap=1.0, tolerance=1.2))
        await _seen(q, "b", "c")
        q.guard.ceiling = 1  # the engine runs slower than at light load
        flood = [asyncio.create_task(q.acquire("a", 1)) for _ in range(20)]
        await asyncio.sleep(0)
        assert q.share_limit() == 1 and q.running["a"] == 1
        burst = [asyncio.create_task(q.acquire("b", 1)) for _ in range(3)]
        await asyncio.sleep(0)
        assert all(t.done() for t in burst) and q.running["b"] == 3
        for task in flood:
            task.cancel()
    asyncio.run(go())


def test_a_paced_heavy_tenant_waits_in_proportion_to_its_last_request_but_never_below_an_equal_share():
    async def go():
        q = _overloaded(_queue(max_inflight=8, max_queue=100, active_window_s=60, share_cap=1.0, tolerance=1.2))
        q.PACE_SLACK = 0  # (the slack of a few requests is checked below)
        await _seen(q, "b")  # b and c each asked for 1 token: a's equal share is 1 token within the window
        await q.acquire("c", 1)  # c's request runs throughout: the engine is never idle (then no one is held)
        q.guard.ceiling = 0.25  # holds its slot a quarter of the time
        flood = [asyncio.create_task(q.acquire("a", 1)) for _ in range(10)]
        await asyncio.sleep(0)
        assert q.running["a"] == 1 and q.paced("a")  # one slot, though seven are free
        q.release("a", 1, 1, held_s=0.1)  # then a pause of 0.1 * (1 - 0.25) / 0.25 = 0.3 s
        # checked before the loop runs again: no timer can have ended the pause, however slow the host
        assert q.running["a"] == 0 and q.queued == 9 and q.paced("a")
        burst = [asyncio.create_task(q.acquire("b", 1)) for _ in range(3)]
        await asyncio.sleep(0)
        assert all(t.done() for t in burst)  # the light tenant is never paced
        for _ in range(3):
            q.release("b", 1, 1, held_s=0.1)
        await asyncio.sleep(0.4)  # the pause ended: a timer dispatched a's next request, no release needed
        # (0.4 s > the 0.3 s pause on the loop's own clock: the pause's timer runs first on any host)
        assert q.running["a"] == 1
        # b has now asked for 4 tokens, c for 1: a, granted 2 < their mean 2.5, is not paused below that
        q.release("a", 1, 1, held_s=0.1)
        await asyncio.sleep(0)
        assert q.running["a"] == 1 and q.queued == 7
        q.release("a", 1, 1, held_s=0.1)  # granted 3 now: paused again
        await asyncio.sleep(0)
        assert q.running["a"] == 0 and q.paced("a")
        for task in flood:
            task.cancel()
        # the slack: when activity starts, counts are small; a is paced only once granted b and c's mean + 4
        slack = _overloaded(_queue(max_inflight=8, max_queue=100, active_window_s=60, share_cap=1.0, tolerance=1.2))
        await _seen(slack, "b")
        await slack.acquire("c", 1)
        slack.guard.ceiling = 0.25
        more = [asyncio.create_task(slack.acquire("a", 1)) for _ in range(10)]
        await asyncio.sleep(0)
        for _ in range(4):
            slack.release("a", 1, 1, held_s=0.1)
            await asyncio.sleep(0)
            assert slack.running["a"] == 1  # granted at once
        slack.release("a", 1, 1, held_s=0.1)  # granted 5 = 1 + 4: now paced
        await asyncio.sleep(0)
        assert slack.running["a"] == 0 and slack.paced("a")
        for task in more:
            task.cancel()
    asyncio.run(go())


class _SteppingClock:
    """A monotonic clock that moves `step` seconds on every reading (code between two readings takes time)."""

    def __init__(self, step: float):
        self.now, self.step = 1000.0, step

    def monotonic(self) -> float:
        self.now += self.step
        return self.now


def test_a_pause_that_ends_between_two_clock_readings_still_wakes_the_queue(monkeypatch):
    """A timer may fire a little before the pause it waits for ends (uvloop counts whole milliseconds). The
    dispatch it runs must then either grant or arm another timer: with nothing running, no release would
    come, and the paced tenant's queue would wait forever (a fairness-bench drain stalled so, 505 requests)."""
    clock = _SteppingClock(step=0.0002)
    monkeypatch.setattr(fair_queue, "time", clock)  # the queue's clock only; asyncio keeps the real one

    async def go():
        q = _overloaded(_queue(max_inflight=8, max_queue=100, active_window_s=60, share_cap=1.0, tolerance=1.2))
        q.PACE_SLACK = 0
        await _seen(q, "b")
        await q.acquire("c", 1)  # runs on and on: no release of c's will come, and b is quiet
        q.guard.ceiling = 0.25
        flood = [asyncio.create_task(q.acquire("a", 1)) for _ in range(3)]
        await asyncio.sleep(0)
        assert q.running["a"] == 1
        q.release("a", 1, 1, held_s=1.0)  # paused
        assert q.running["a"] == 0 and q.inflight == 1 and q.queued == 2
        q._wake[1].cancel()  # that timer is the one that fires early, below:
        q._wake = None
        q._paused_until["a"] = clock.now + 2.5 * clock.step  # ends between the dispatch's clock readings
        q._dispatch()  # what the early timer runs
        await asyncio.sleep(0.05)
        assert q.running["a"] == 1, "the paced tenant was neither granted nor woken: its queue stalls"
        for task in flood:
            task.cancel()
    asyncio.run(go())


def test_an_idle_engine_is_never_kept_idle_while_requests_wait():
    """Every waiting tenant is held back (paced by the guard at its floor) and nothing runs: holding them
    protects no one, so the next in fair order is granted at once (seen at 1,000 adapters: 16 requests
    queued for seconds with the engine idle, until the pauses ended)."""
    async def go():
        q = _overloaded(_queue(max_inflight=8, max_queue=100, active_window_s=60, share_cap=1.0, tolerance=1.2))
        q.PACE_SLACK = 0
        await _seen(q, "b")
        q.guard.ceiling = 1 / 16
        flood = [asyncio.create_task(q.acquire("a", 1)) for _ in range(5)]
        await asyncio.sleep(0)
        assert q.running["a"] == 1
        q.release("a", 1, 1, held_s=1.0)  # paused for 15 s; b is quiet, nothing else runs
        assert q.paced("a") and q.running["a"] == 1 and q.inflight == 1  # granted all the same
        for task in flood:
            task.cancel()
    asyncio.run(go())


def test_held_requests_and_the_measured_capacity_are_exported(monkeypatch):
    """Operators see why a tenant waits: a request that found a free slot but was held back counts in
    loraplex_fair_held_total; a request that waits for a full window does not. The capacity fair admission
    measures is a gauge."""
    from serving import metrics
    from serving.metric_labels import Labels
    from serving.metrics import FAIR_CAPACITY, FAIR_HELD

    monkeypatch.setattr(metrics, "LABELS", Labels())  # the tenants below named, whatever ran before
    LABELS = metrics.LABELS

    def held(tenant: str) -> float:
        return FAIR_HELD.labels(LABELS.tenant(tenant))._value.get()

    async def go():
        q = _overloaded(_queue(max_inflight=4, max_queue=100, active_window_s=60))
        for t in ("hb", "hc"):
            await q.acquire(t, 1)
            q.release(t, 1, 1)
        for t in ("ha", "hb", "hc"):
            LABELS.count(t)  # named in the metrics, as the gateway does for a request it admits
        before, others = held("ha"), held("hb") + held("hc")
        flood = [asyncio.create_task(q.acquire("ha", 1)) for _ in range(6)]
        await asyncio.sleep(0)
        assert q.running["ha"] == 2 and held("ha") == before + 4  # two free slots kept for hb and hc
        more = [asyncio.create_task(q.acquire("hb", 1)), asyncio.create_task(q.acquire("hc", 1))]
        await asyncio.sleep(0)
        assert q.inflight == 4 and held("hb") + held("hc") == others
        waits = asyncio.create_task(q.acquire("hb", 1))  # the window is full: a wait, not a hold
        await asyncio.sleep(0)
        assert held("hb") + held("hc") == others and not waits.done()
        for task in flood + more + [waits]:
            task.cancel()
    asyncio.run(go())

    def scraped() -> float:
        return FAIR_CAPACITY.collect()[0].samples[0].value

    q = _queue(max_inflight=2, max_queue=10)  # the gateway's queue: the gauge reads its capacity when scraped
    q.capacity = Measured(123.0)
    assert scraped() == 123.0
    q.capacity = Measured(None)  # not measured (any more): 0
    assert scraped() == 0.0


def _grant_order(capacity: float, senders: str, first: int = 1) -> list[str]:
    """One slot, held by x (asking `first` tokens); then one request of 10 tokens per letter of `senders`, in
    that order: the order the slot goes round in once x releases it, with the engine's capacity measured."""
    import asyncio

    async def order() -> list[str]:
        q = _queue(max_inflight=1, max_queue=100)
        q.capacity = Measured(capacity)
        got = []

        async def req(t: str) -> None:
            await q.acquire(t, 10)
            got.append(t)
            await asyncio.sleep(0)
            q.release(t, 10, 10)

        await q.acquire("x", first)
        tasks = [asyncio.create_task(req(t)) for t in senders]
        for _ in range(3):
            await asyncio.sleep(0)
        q.release("x", first, first)
        await asyncio.gather(*tasks)
        return got

    return asyncio.run(order())


def test_waiting_requests_go_in_arrival_order_unless_their_tenant_asks_for_more_than_its_share():
    """a sends three, then b and c one each. With a capacity everyone's demand fits, the slot goes round in
    arrival order (a's three first); with one a alone overloads, b and c go before a's backlog, and a's
    requests keep their own order."""
    assert _grant_order(1e9, "aaabc") == list("aaabc")
    assert _grant_order(45.0, "aaabc") == list("bcaaa")  # a asks 30 of 45, b and c 10 each


def test_a_flooding_tenant_waits_behind_the_others_even_while_its_demand_fits():
    """a asks for 5x the others' mean: its backlog goes after b's and c's newcomers although the engine's
    measured capacity would serve everything asked (on a CPU engine its requests slow everyone's steps)."""
    assert _grant_order(1e9, "a" * 12 + "bc", first=10) == list("bc") + ["a"] * 12
