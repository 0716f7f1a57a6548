"""Pure logic of admission: quotas, the bounded queue and fair (VTC) ordering."""

from __future__ import annotations

import asyncio

import pytest

from common.errors import Overloaded, QuotaExceeded
from serving.admission import Admission, Quotas
from serving.metrics import REJECTED


def test_quotas_refuse_with_retry_after():
    adm = Admission(max_inflight=8, max_queue=8)
    q = Quotas.of({"requests_per_minute": 2, "tokens_per_minute": 100})
    adm.check_quota("a", q, 10)
    adm.check_quota("a", q, 10)
    with pytest.raises(QuotaExceeded) as e:
        adm.check_quota("a", q, 10)
    assert e.value.retry_after >= 1 and "2 requests per minute" in e.value.message
    adm.check_quota("b", q, 10)  # other tenants are untouched
    with pytest.raises(QuotaExceeded, match="tokens per minute"):
        adm.check_quota("c", q, 101)


def test_concurrency_quota_counts_running_requests():
    async def go():
        adm = Admission(max_inflight=8, max_queue=8)
        q = Quotas.of({"max_concurrent": 1})
        adm.check_quota("a", q, 1)
        await adm.acquire("a", 1)
        with pytest.raises(QuotaExceeded, match="concurrent"):
            adm.check_quota("a", q, 1)
        adm.release("a", 1, 1)
        adm.check_quota("a", q, 1)
    asyncio.run(go())


def test_full_queue_is_503():
    async def go():
        adm = Admission(max_inflight=1, max_queue=1)
        await adm.acquire("a", 1)
        waiter = asyncio.create_task(adm.acquire("a", 1))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await adm.acquire("b", 1)
        adm.release("a", 1, 1)
        await waiter
        assert adm.inflight == 1 and adm.queued == 0
    asyncio.run(go())


def test_a_full_queue_pushes_out_the_longest_queue_not_a_newcomer():
    """A flooder fills the queue: another tenant's request still gets in, in place of the flooder's newest
    (which is refused with 503 and counted); the flooder's own next request is refused; FIFO mode keeps
    plain tail drop."""
    async def go(fair):
        adm = Admission(max_inflight=1, max_queue=4, fair=fair)
        await adm.acquire("a", 1)
        flood = [asyncio.create_task(adm.acquire("a", 1)) for _ in range(4)]
        await asyncio.sleep(0)
        assert adm.queued == 4
        with pytest.raises(Overloaded, match="at capacity"):
            await adm.acquire("a", 1)  # the flooder's own arrival: no one to push out but itself
        if not fair:
            with pytest.raises(Overloaded):
                await adm.acquire("b", 1, "x")
            return None
        before = REJECTED.labels("a", "other", "503", "pushed_out")._value.get()
        light = asyncio.create_task(adm.acquire("b", 1))
        for _ in range(3):
            await asyncio.sleep(0)
        assert adm.queued == 4 and flood[-1].done() and not light.done()
        with pytest.raises(Overloaded, match="holds the most") as e:
            await flood[-1]
        assert e.value.retry_after > 0
        assert REJECTED.labels("a", "other", "503", "pushed_out")._value.get() == before + 1
        assert adm.active["a"] == 1 + 3 and adm.active["b"] == 1  # the pushed-out one left no trace
        served = []
        while adm.inflight:  # release whoever runs until everyone waiting was served
            tenant = next(t for t, n in adm.running.items() if n)
            served.append(tenant)
            adm.release(tenant, 1, 1)
            for _ in range(3):
                await asyncio.sleep(0)
        assert sorted(served) == ["a"] * 4 + ["b"] and light.done() and all(t.done() for t in flood[:3])
        assert adm.idle
        return None
    asyncio.run(go(fair=True))
    asyncio.run(go(fair=False))


def test_a_waiter_cancelled_just_before_a_release_gets_no_slot_and_breaks_nothing():
    """The caller's task is cancelled (its future with it) and, before its cleanup runs, a release
    dispatches: the slot goes to the next waiter, the cancelled one leaves no count behind."""
    async def go():
        adm = Admission(max_inflight=1, max_queue=10)
        await adm.acquire("a", 1)
        gone = asyncio.create_task(adm.acquire("b", 1))
        nxt = asyncio.create_task(adm.acquire("c", 1))
        await asyncio.sleep(0)
        gone.cancel()
        adm.release("a", 1, 1)  # same loop turn: b's cleanup has not run
        await nxt
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert adm.running["c"] == 1 and adm.inflight == 1 and adm.queued == 0
        assert adm.active["b"] == 0 and adm.running["b"] == 0
        adm.release("c", 1, 1)
        assert adm.idle
    asyncio.run(go())


def test_a_flooding_tenant_does_not_jump_the_queue():
    """A queues 10 requests, then B queues one: B is served before A's backlog."""
    async def go():
        adm = Admission(max_inflight=1, max_queue=100)
        order = []

        async def req(t):
            await adm.acquire(t, 10)
            order.append(t)
            await asyncio.sleep(0.001)
            adm.release(t, 10, 10)

        await adm.acquire("a", 10)  # occupies the only slot
        tasks = [asyncio.create_task(req("a")) for _ in range(10)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(req("b")))
        await asyncio.sleep(0)
        adm.release("a", 10, 10)
        await asyncio.gather(*tasks)
        return order
    order = asyncio.run(go())
    assert order.index("b") <= 1


def test_cancelled_waiter_leaves_no_trace():
    async def go():
        adm = Admission(max_inflight=1, max_queue=10)
        await adm.acquire("a", 1)
        waiter = asyncio.create_task(adm.acquire("b", 1))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert adm.queued == 0 and adm.active["b"] == 0
        adm.release("a", 1, 1)
        assert adm.inflight == 0
    asyncio.run(go())


def test_fifo_mode_serves_in_arrival_order():
    async def go():
        adm = Admission(max_inflight=1, max_queue=100, fair=False)
        order = []

        async def req(t):
            await adm.acquire(t, 10)
            order.append(t)
            adm.release(t, 10, 10)

        await adm.acquire("a", 10)
        tasks = [asyncio.create_task(req("a")) for _ in range(5)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(req("b")))
        await asyncio.sleep(0)
        adm.release("a", 10, 10)
        await asyncio.gather(*tasks)
        return order
    assert asyncio.run(go()) == ["a"] * 5 + ["b"]


def test_closed_admission_refuses_new_requests_and_reports_idle():
    """Graceful shutdown: after close() new requests get 503 (shutting_down); admitted ones still finish."""
    from serving.admission import Draining

    async def go():
        adm = Admission(max_inflight=1, max_queue=4)
        await adm.acquire("a", 1)
        queued = asyncio.create_task(adm.acquire("b", 1))
        await asyncio.sleep(0)
        adm.close()
        with pytest.raises(Draining) as e:
            adm.check_quota("c", Quotas(), 1)
        assert e.value.status == 503 and e.value.retry_after and e.value.code == "shutting_down"
        with pytest.raises(Draining):
            await adm.acquire("c", 1)
        assert not await adm.wait_idle(0.1)  # a runs, b waits: both were admitted before close()
        adm.release("a", 1, 1)
        await queued  # the queued request is still served
        waiter = asyncio.create_task(adm.wait_idle(5))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        adm.release("b", 1, 1)
        assert await waiter and adm.idle
    asyncio.run(go())


def test_rejections_are_counted_per_tenant_and_adapter():
    from prometheus_client import REGISTRY

    def count(tenant, status, reason):
        return REGISTRY.get_sample_value("loraplex_rejected_total", {"tenant": tenant, "adapter": "mine",
                                                                     "status": status, "reason": reason}) or 0

    async def go():
        adm = Admission(max_inflight=1, max_queue=0)
        before = (count("rq-a", "429", "quota"), count("rq-b", "503", "overload"))
        adm.check_quota("rq-a", Quotas(requests_per_minute=1), 1, "mine")
        with pytest.raises(QuotaExceeded):
            adm.check_quota("rq-a", Quotas(requests_per_minute=1), 1, "mine")
        await adm.acquire("rq-a", 1, "mine")
        with pytest.raises(Overloaded):
            await adm.acquire("rq-b", 1, "mine")
        assert (count("rq-a", "429", "quota"), count("rq-b", "503", "overload")) == (before[0] + 1, before[1] + 1)
    asyncio.run(go())


def test_metric_adapter_labels_are_bounded_per_tenant():
    """Clients choose `model` freely: only names resolved in the registry, and at most N per tenant, get a label."""
    from serving.metrics import AdapterLabels

    labels = AdapterLabels(per_tenant=2)
    assert labels.known("t", "nonexistent@prod") == "other"  # not resolved yet: never raw client text
    assert labels.admit("t", "a") == "a" and labels.admit("t", "b") == "b"
    assert labels.admit("t", "c") == "other"  # over the cap
    assert labels.known("t", "a@prod") == "a" and labels.known("t", "a@0123abcd") == "a"  # name, not version
    assert labels.known("t", "base") == "base"
    assert labels.admit("u", "c") == "c"  # the cap is per tenant


async def _seen(adm: Admission, *tenants: str) -> None:
    """Each tenant sends one request that finishes at once: recently active, now idle."""
    for t in tenants:
        await adm.acquire(t, 1)
        adm.release(t, 1, 1)


def test_a_flooder_leaves_a_free_slot_for_each_other_recent_tenant():
    """Window 4, three recent tenants: the flooder fills up to 4 - 2 reserved; b and c get a slot at once."""
    async def go():
        adm = Admission(max_inflight=4, max_queue=100, active_window_s=60)
        for t in ("b", "c"):  # b and c were active a moment ago (now idle)
            await adm.acquire(t, 1)
            adm.release(t, 1, 1)
        flood = [asyncio.create_task(adm.acquire("a", 1)) for _ in range(10)]
        await asyncio.sleep(0)
        assert adm.running["a"] == 2 and adm.queued == 8  # two slots stay free for b and c
        await asyncio.wait_for(adm.acquire("b", 1), 1)  # no wait although a has a backlog
        await asyncio.wait_for(adm.acquire("c", 1), 1)
        assert adm.inflight == 4
        adm.release("a", 1, 1)
        await asyncio.sleep(0)
        assert adm.running["a"] == 1 and adm.inflight == 3  # not handed to a's backlog: kept for b or c
        b2 = asyncio.create_task(adm.acquire("b", 1))
        await asyncio.sleep(0)
        adm.release("c", 1, 1)  # two free: one is granted (VTC: b2 or a's next), one stays for c
        await asyncio.sleep(0)
        assert adm.inflight == 3
        adm.release("b", 1, 1)
        await asyncio.sleep(0)
        await asyncio.wait_for(b2, 1)
        for _ in range(adm.running["b"]):
            adm.release("b", 1, 1)
        await asyncio.sleep(0)
        while adm.running["a"] > 2:  # a got extra slots while b itself was waiting (no claim then)
            adm.release("a", 1, 1)
            await asyncio.sleep(0)
        adm.release("a", 1, 1)
        await asyncio.sleep(0)
        assert adm.running["a"] == 2 and adm.inflight == 2  # b and c idle again: two slots held for them
        for task in flood:
            task.cancel()
    asyncio.run(go())


def test_headroom_is_work_conserving_when_others_are_quiet():
    """A tenant alone (or once the others' activity window passed) may use the whole window."""
    async def go():
        adm = Admission(max_inflight=4, max_queue=100, active_window_s=0.05)
        await adm.acquire("b", 1)
        adm.release("b", 1, 1)
        await asyncio.sleep(0.1)  # b went quiet
        for _ in range(4):
            await asyncio.wait_for(adm.acquire("a", 1), 1)
        assert adm.running["a"] == 4
    asyncio.run(go())


def test_fifo_mode_keeps_no_headroom():
    async def go():
        adm = Admission(max_inflight=4, max_queue=100, fair=False, active_window_s=60)
        await adm.acquire("b", 1)
        adm.release("b", 1, 1)
        for _ in range(4):
            await asyncio.wait_for(adm.acquire("a", 1), 1)
        assert adm.running["a"] == 4
    asyncio.run(go())


def test_share_cap_limits_a_heavy_tenant_to_its_share_of_the_window():
    """Window 8, three recent tenants, cap 1.0: a flooder (heavy: it asks for far more than b and c) keeps
    round(8/3) = 3 slots, even with slots free; a burst of a tenant that is not heavy is not capped."""
    async def go():
        adm = Admission(max_inflight=8, max_queue=100, active_window_s=60, share_cap=1.0)
        await _seen(adm, "b", "c")
        flood = [asyncio.create_task(adm.acquire("a", 1)) for _ in range(20)]
        await asyncio.sleep(0)
        assert adm.share_limit() == 3 and adm.heavy("a") and not adm.heavy("b")
        assert adm.running["a"] == 3 and adm.queued == 17 and adm.inflight == 3  # five slots stay free
        adm.release("a", 1, 1)
        await asyncio.sleep(0)
        assert adm.running["a"] == 3  # its finished request is replaced up to its cap, not beyond
        # b is not heavy: its burst takes free slots at once, past its own share
        burst = [asyncio.create_task(adm.acquire("b", 1)) for _ in range(4)]
        await asyncio.sleep(0)
        assert adm.running["b"] == 4 and all(t.done() for t in burst) and adm.running["a"] == 3
        for task in flood:
            task.cancel()
    asyncio.run(go())


def test_an_even_load_is_never_capped():
    """Every tenant asks for about the same (none is heavy): the whole window is used, cap or not."""
    async def go():
        adm = Admission(max_inflight=8, max_queue=100, active_window_s=60, share_cap=0.5, slowdown_tolerance=1.1)
        adm.guard.ceiling = 1  # as if the engine had slowed down
        tasks = [asyncio.create_task(adm.acquire(t, 1)) for _ in range(4) for t in ("a", "b", "c")]
        await asyncio.sleep(0)
        assert not any(adm.heavy(t) for t in "abc")
        assert adm.inflight == 8 and adm.queued == 4
        for task in tasks:
            task.cancel()
    asyncio.run(go())


def test_share_cap_lifts_when_the_others_go_quiet_and_is_off_at_zero():
    async def go():
        adm = Admission(max_inflight=4, max_queue=100, active_window_s=0.05, share_cap=1.0)
        await adm.acquire("b", 1)
        adm.release("b", 1, 1)
        tasks = [asyncio.create_task(adm.acquire("a", 1)) for _ in range(6)]
        await asyncio.sleep(0)
        assert adm.running["a"] == 2 and adm.queued == 4  # heavy, b recent: a's share is 4 / 2
        await asyncio.sleep(0.1)  # b went quiet: the next release hands a the whole window
        adm.release("a", 1, 1)
        await asyncio.sleep(0)
        assert adm.share_limit() == 4 and adm.running["a"] == 4
        for task in tasks:
            task.cancel()
        nocap = Admission(max_inflight=8, max_queue=100, active_window_s=60, share_cap=0)
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


def test_slowdown_guard_halves_the_ceiling_while_the_engine_is_slow_and_regrows_it():
    """AIMD on the median time per token vs its light-load value (the lowest median seen lately)."""
    from serving.admission import SlowdownGuard

    g = SlowdownGuard(max_inflight=16, tolerance=1.2, interval_s=0.5, window_s=2.0)
    assert g.limit == 1  # slow start: a heavy tenant earns slots by not slowing the others
    t = 0.0
    for _ in range(40):  # light load: 10 ms per token; one slot more per interval
        t += 0.25
        g.observe("stream", 0.010, now=t)
    assert g.limit == 16 and g.slowdown == pytest.approx(1.0)
    for _ in range(40):  # the flood doubles the time per token
        t += 0.25
        g.observe("stream", 0.020, now=t)
    assert g.slowdown == pytest.approx(2.0)
    assert g.limit == 1  # halved once per window (the samples' lag), down to one slot
    for _ in range(40):  # back to light-load speed: one slot more per interval
        t += 0.25
        g.observe("stream", 0.0105, now=t)
    assert g.limit == 16
    # each kind has its own light-load value: slow whole responses are not compared with streamed tokens
    for _ in range(12):
        t += 0.25
        g.observe("whole", 0.05, now=t)
    assert g.limit == 16


def test_slowdown_guard_forgets_an_old_light_load_value_and_is_off_at_zero():
    from serving.admission import SlowdownGuard

    g = SlowdownGuard(max_inflight=8, tolerance=1.2, interval_s=0.5, window_s=2.0, horizon_s=30.0)
    t = 0.0
    for _ in range(12):
        t += 0.25
        g.observe("stream", 0.010, now=t)
    for _ in range(40):  # slower for good (a longer prompt mix, a busier host): throttled for a while
        t += 0.25
        g.observe("stream", 0.030, now=t)
    assert g.limit == 1
    for _ in range(200):  # past the horizon the slower value is the new light-load value
        t += 0.25
        g.observe("stream", 0.030, now=t)
    assert g.limit == 8
    off = SlowdownGuard(max_inflight=8, tolerance=0)
    for i in range(50):
        off.observe("stream", 0.01 * (i + 1), now=i * 0.25)
    assert off.limit == 8


def test_the_guard_holds_a_heavy_tenant_back_but_never_a_light_one():
    async def go():
        adm = Admission(max_inflight=8, max_queue=100, active_window_s=60, share_cap=1.0, slowdown_tolerance=1.2)
        await _seen(adm, "b", "c")
        adm.guard.ceiling = 1  # the engine runs slower than at light load
        flood = [asyncio.create_task(adm.acquire("a", 1)) for _ in range(20)]
        await asyncio.sleep(0)
        assert adm.share_limit() == 1 and adm.running["a"] == 1
        burst = [asyncio.create_task(adm.acquire("b", 1)) for _ in range(3)]
        await asyncio.sleep(0)
        assert all(t.done() for t in burst) and adm.running["b"] == 3
        for task in flood:
            task.cancel()
        fifo = Admission(max_inflight=8, max_queue=100, fair=False, slowdown_tolerance=1.2)
        assert fifo.guard.limit == 8  # FIFO mode has no guard
    asyncio.run(go())


def test_the_guard_goes_below_one_slot_as_a_duty_cycle_and_climbs_back():
    """One slot kept busy can still be several times a share: the ceiling halves on below one slot (a duty
    cycle, down to min_duty) while the slowdown lasts, then regrows by half per interval, one slot above 1."""
    from serving.admission import SlowdownGuard

    g = SlowdownGuard(max_inflight=8, tolerance=1.2, interval_s=0.5, window_s=2.0, min_duty=1 / 16)
    t = 0.0
    for _ in range(12):
        t += 0.25
        g.observe("stream", 0.010, now=t)
    assert g.duty == 1.0
    for _ in range(80):  # still slow with one slot: keeps halving, to the floor
        t += 0.25
        g.observe("stream", 0.020, now=t)
    assert g.limit == 1 and g.duty == pytest.approx(1 / 16)
    duties = []
    for _ in range(20):
        t += 0.25
        g.observe("stream", 0.010, now=t)
        duties.append(g.duty)
    assert duties == sorted(duties) and duties[-1] == 1.0  # regrows steadily, never past one slot at once here
    for _ in range(60):
        t += 0.25
        g.observe("stream", 0.010, now=t)
    assert g.limit == 8


def test_a_paced_heavy_tenant_waits_in_proportion_to_its_last_request_but_never_below_an_equal_share():
    async def go():
        adm = Admission(max_inflight=8, max_queue=100, active_window_s=60, share_cap=1.0, slowdown_tolerance=1.2)
        adm.PACE_SLACK = 0  # (the slack of a few requests is checked below)
        await _seen(adm, "b", "c")  # each asked for 1 token: a's equal share is 1 token within the window
        adm.guard.ceiling = 0.25  # holds its slot a quarter of the time
        flood = [asyncio.create_task(adm.acquire("a", 1)) for _ in range(10)]
        await asyncio.sleep(0)
        assert adm.running["a"] == 1 and adm.paced("a")  # one slot, though seven are free
        adm.release("a", 1, 1, held_s=0.1)  # then a pause of 0.1 * (1 - 0.25) / 0.25 = 0.3 s
        await asyncio.sleep(0.05)
        assert adm.running["a"] == 0 and adm.queued == 9
        burst = [asyncio.create_task(adm.acquire("b", 1)) for _ in range(3)]
        await asyncio.sleep(0)
        assert all(t.done() for t in burst)  # the light tenant is never paced
        for _ in range(3):
            adm.release("b", 1, 1, held_s=0.1)
        await asyncio.sleep(0.4)  # the pause ended: a timer dispatched a's next request, no release needed
        assert adm.running["a"] == 1
        # b has now asked for 4 tokens, c for 1: a, granted 2 < their mean 2.5, is not paused below that
        adm.release("a", 1, 1, held_s=0.1)
        await asyncio.sleep(0)
        assert adm.running["a"] == 1 and adm.queued == 7
        adm.release("a", 1, 1, held_s=0.1)  # granted 3 now: paused again
        await asyncio.sleep(0)
        assert adm.running["a"] == 0 and adm.paced("a")
        for task in flood:
            task.cancel()
        # the slack: when activity starts, counts are small; a is paced only once granted b and c's mean + 4
        slack = Admission(max_inflight=8, max_queue=100, active_window_s=60, share_cap=1.0, slowdown_tolerance=1.2)
        await _seen(slack, "b", "c")
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


def test_the_guard_moves_only_while_a_heavy_tenant_presses_against_it():
    """Congestion window validation: slow samples with nobody held back (no flood, or a flooder alone) leave
    the ceiling where it is, and so does a quiet spell: the next flood meets what the last one taught."""
    from serving.admission import SlowdownGuard

    g = SlowdownGuard(max_inflight=8, tolerance=1.2, interval_s=0.5, window_s=1.0)
    t = 0.0
    for _ in range(8):
        t += 0.25
        g.observe("stream", 0.010, now=t, contended=False)
    assert g.limit == 1  # not grown from its start: nobody asked for more
    g.ceiling = 8.0
    for _ in range(20):
        t += 0.25
        g.observe("stream", 0.040, now=t, contended=False)
    assert g.slowdown == pytest.approx(4.0) and g.limit == 8  # measured, not acted on
    g.observe("stream", 0.040, now=t + 0.5)
    assert g.ceiling == pytest.approx(8 * 1.2 / 4)  # far above tolerance: cut by tolerance / slowdown at once
    for _ in range(40):
        t += 0.25
        g.observe("stream", 0.010, now=t + 1, contended=False)
    assert g.ceiling == pytest.approx(2.4)  # not regrown while nobody asks for more

    async def go():
        adm = Admission(max_inflight=8, max_queue=100, active_window_s=60, share_cap=1.0, slowdown_tolerance=1.2)
        adm.guard.window_s, adm.guard.interval_s, adm.guard.ceiling = 0.2, 0.0, 8.0
        await _seen(adm, "b", "c")
        for _ in range(5):
            adm.observe("stream", 0.010)
        await asyncio.sleep(0.25)
        for _ in range(5):
            adm.observe("stream", 0.050)  # slow, but no heavy tenant waits
        assert adm.guard.slowdown == pytest.approx(5.0) and adm.guard.ceiling == 8
        flood = [asyncio.create_task(adm.acquire("a", 1)) for _ in range(20)]
        await asyncio.sleep(0)
        adm.observe("stream", 0.050)
        assert adm.guard.ceiling == 2  # now a heavy tenant waits beside b and c
        for task in flood:
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
    from serving import admission as admission_module

    clock = _SteppingClock(step=0.0002)
    monkeypatch.setattr(admission_module, "time", clock)  # admission's clock only; asyncio keeps the real one

    async def go():
        adm = Admission(max_inflight=8, max_queue=100, active_window_s=60, share_cap=1.0, slowdown_tolerance=1.2)
        adm.PACE_SLACK = 0
        await _seen(adm, "b", "c")
        adm.guard.ceiling = 0.25
        flood = [asyncio.create_task(adm.acquire("a", 1)) for _ in range(3)]
        await asyncio.sleep(0)
        assert adm.running["a"] == 1
        adm.release("a", 1, 1, held_s=1.0)  # paused; b and c are quiet: no release of theirs will come
        assert adm.running["a"] == 0 and adm.inflight == 0 and adm.queued == 2
        adm._wake[1].cancel()  # that timer is the one that fires early, below:
        adm._wake = None
        adm._paused_until["a"] = clock.now + 2.5 * clock.step  # ends between the dispatch's clock readings
        adm._dispatch()  # what the early timer runs
        await asyncio.sleep(0.05)
        assert adm.running["a"] == 1, "the paced tenant was neither granted nor woken: its queue stalls"
        for task in flood:
            task.cancel()
    asyncio.run(go())
