"""The slowdown guard: AIMD on the engine's time per output token, a duty cycle below one slot."""

from __future__ import annotations

import pytest

from serving.admission.guard import SlowdownGuard


def test_slowdown_guard_halves_the_ceiling_while_the_engine_is_slow_and_regrows_it():
    """AIMD on the median time per token vs its light-load value (the lowest median seen lately)."""
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


def test_the_guard_goes_below_one_slot_as_a_duty_cycle_and_climbs_back():
    """One slot kept busy can still be several times a share: the ceiling halves on below one slot (a duty
    cycle, down to min_duty) while the slowdown lasts, then regrows by half per interval, one slot above 1."""
    g = SlowdownGuard(max_inflight=8, tolerance=1.2, interval_s=0.5, window_s=2.0, min_duty=1 / 16)
    t = 0.0
    for _ in range(12):
        t += 0.25
        g.observe("stream", 0.010, now=t)
    assert g.duty == 1.0
    floor_at = None
    for _ in range(80):  # still slow with one slot: keeps halving, to the floor
        t += 0.25
        g.observe("stream", 0.020, now=t)
        if floor_at is None and g.duty == pytest.approx(1 / 16):
            floor_at = t
            break
    assert floor_at is not None and g.limit == 1
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


def test_still_slow_at_the_floor_means_the_engine_got_slower_not_that_a_tenant_overloads_it():
    """Held back to the floor, the heavy tenants cannot be what keeps the engine slow (more adapters in the batch,
    their loads, another request mix): after two windows there the guard takes the speed as its new light-load
    value and gives the slots back, rather than pace everyone forever while the engine idles."""
    g = SlowdownGuard(max_inflight=8, tolerance=1.2, interval_s=0.5, window_s=1.0, min_duty=1 / 16)
    t = 0.0
    for _ in range(12):
        t += 0.25
        g.observe("stream", 0.010, now=t)
    seen_floor = False
    for _ in range(200):  # twice as slow for good, whatever the guard does
        t += 0.25
        g.observe("stream", 0.020, now=t)
        seen_floor = seen_floor or g.duty == pytest.approx(1 / 16)
    assert seen_floor and g.limit == 8 and g.slowdown == pytest.approx(1.0)
    for _ in range(8):  # slower again than the new light-load speed: cut again
        t += 0.25
        g.observe("stream", 0.040, now=t)
    assert g.limit < 8


def test_the_guard_moves_only_while_a_heavy_tenant_presses_against_it():
    """Congestion window validation: slow samples with nobody held back (no flood, or a flooder alone) leave
    the ceiling where it is, and so does a quiet spell: the next flood meets what the last one taught."""
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
