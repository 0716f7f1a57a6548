"""The engine's capacity as the fair queue measures it, and tenants' demand rates, which together tell an overload."""

from __future__ import annotations

import pytest

from serving.admission.capacity import EngineCapacity
from serving.admission.demand import Demand


def test_capacity_is_throughput_while_the_window_is_full_and_unknown_before():
    cap = EngineCapacity(max_inflight=4)
    cap.note_full(0.0, False)
    for i in range(10):
        cap.completed(0.1 * i + 0.5, 24, held_s=0.5)  # served at a light load: says nothing about the limit
    assert cap.rate(1.0) is None
    cap.note_full(1.0, True)  # four requests granted at 1.0, each served 24 tokens in 0.4 s
    for _ in range(3):
        cap.completed(1.4, 24, held_s=0.4)
    assert cap.rate(1.4) is None  # a window full for a moment is no measurement (fewer than max_inflight)
    cap.completed(1.4, 24, held_s=0.4)
    assert cap.rate(1.4) == pytest.approx(4 * 24 / 0.4)
    cap.note_full(1.4, False)
    assert cap.rate(9.0) == pytest.approx(4 * 24 / 0.4)  # the idle time after is not counted
    cap.note_full(9.0, True)  # a second full period, served twice as fast
    for _ in range(4):
        cap.completed(9.2, 24, held_s=0.2)
    assert cap.rate(9.2) == pytest.approx(2 * 4 * 24 / 0.4 * 2 / 3)  # 0.4 + 0.2 slot-seconds per request


def test_a_request_is_credited_only_the_share_of_its_work_done_while_the_window_was_full():
    """A burst fills the window for a moment: the requests running then did part of their work in it. Credited
    whole to the period they finished in (the estimate before), a window filled at once and drained together
    read as 1/4 of the engine's speed, and requests finishing just after it filled as several times it."""
    cap = EngineCapacity(max_inflight=4)
    cap.note_full(0.0, True)  # four granted at once, each 24 tokens in 1 s: 96 tokens/s with the window full
    cap.completed(1.0, 24, held_s=1.0)
    cap.note_full(1.0, False)
    for _ in range(3):
        cap.completed(1.0, 24, held_s=1.0)
    assert cap.rate(1.0) == pytest.approx(96.0)
    late = EngineCapacity(max_inflight=4)
    late.note_full(0.0, False)
    late.note_full(0.9, True)  # the fourth request arrives at 0.9; the first three began at 0.0
    late.completed(1.0, 24, held_s=1.0)
    late.note_full(1.0, False)
    assert late.rate(1.0) is None  # a tenth of one request's work: no measurement
    for _ in range(10):  # the same burst again and again: each credits 4 x 0.1 slot-seconds at 24 tokens/s
        late.note_full(5.0, True)
        for _ in range(4):
            late.completed(5.1, 24, held_s=1.0)
        late.note_full(5.1, False)
    assert late.rate(5.1) == pytest.approx(96.0)


def test_old_full_periods_fade():
    cap = EngineCapacity(max_inflight=2, keep=8)
    cap.note_full(0.0, True)
    for i in range(8):
        cap.completed(1.0 * (i + 1), 10, held_s=1.0)  # 10 tokens per slot-second: 20 tokens/s
    cap.note_full(8.0, False)
    cap.note_full(100.0, True)
    for i in range(8):
        cap.completed(100.0 + 0.1 * (i + 1), 10, held_s=0.1)  # 200 tokens/s now
    assert cap.rate(100.8) > 50  # the new periods weigh at least as much as all before (36 without fading)


def test_demand_rate_is_measured_over_the_tenants_own_span():
    d = Demand(window_s=20)
    for i in range(10):
        d.ask("old", float(i * 2), 24)  # 12 tokens/s for 20 s
    assert d.rate("old", 20.0) == pytest.approx(240 / 20)
    for i in range(40):
        d.ask("new", 18.0 + i * 0.05, 24)  # began 2 s ago at 480 tokens/s: not diluted over the window
    assert d.rate("new", 20.0) == pytest.approx(960 / 2)
    d.ask("burst", 20.0, 24)
    assert d.rate("burst", 20.0) == 24  # over at least a second
    assert d.rate("none", 20.0) == 0.0 and sorted(d.tenants()) == ["burst", "new", "old"]


def test_an_estimate_not_refreshed_within_the_horizon_is_forgotten():
    cap = EngineCapacity(max_inflight=2, horizon_s=300)
    cap.note_full(0.0, True)
    cap.completed(1.0, 24, held_s=1.0)
    cap.completed(1.0, 24, held_s=1.0)
    cap.note_full(1.0, False)
    assert cap.rate(200.0) == pytest.approx(48.0)
    assert cap.rate(302.0) is None  # measured too long ago: no one is held back on its word
    cap.note_full(400.0, True)
    cap.completed(401.0, 24, held_s=1.0)
    assert cap.rate(401.0) is None  # the old periods do not count towards the new measurement
    cap.completed(401.0, 24, held_s=1.0)
    assert cap.rate(401.0) == pytest.approx(48.0)
