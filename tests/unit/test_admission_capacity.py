"""The engine's capacity as the fair queue measures it, and tenants' demand rates, which together tell an overload."""

from __future__ import annotations

import pytest

from serving.admission.capacity import EngineCapacity
from serving.admission.demand import Demand


def test_capacity_is_throughput_while_the_window_is_full_and_unknown_before():
    cap = EngineCapacity(max_inflight=4)
    cap.note_full(0.0, False)
    for i in range(10):
        cap.completed(0.1 * i, 24, was_full=False)  # served at a light load: says nothing about the limit
    assert cap.rate(1.0) is None
    cap.note_full(1.0, True)
    for i in range(3):
        cap.completed(1.1 + 0.1 * i, 24, was_full=True)
    assert cap.rate(1.3) is None  # a window full for a moment is no measurement (fewer than max_inflight)
    cap.completed(1.4, 24, was_full=True)
    assert cap.rate(1.4) == pytest.approx(4 * 24 / 0.4)
    cap.note_full(1.4, False)
    assert cap.rate(9.0) == pytest.approx(4 * 24 / 0.4)  # the idle time after is not counted
    cap.note_full(9.0, True)  # a second full period, served twice as fast
    for i in range(4):
        cap.completed(9.05 + 0.05 * i, 24, was_full=True)
    assert cap.rate(9.2) == pytest.approx(8 * 24 / 0.6)


def test_old_full_periods_fade():
    cap = EngineCapacity(max_inflight=2, keep=8)
    cap.note_full(0.0, True)
    for i in range(8):
        cap.completed(1.0 * (i + 1), 10, was_full=True)  # 10 tokens/s
    cap.note_full(8.0, False)
    cap.note_full(100.0, True)
    for i in range(8):
        cap.completed(100.0 + 0.1 * (i + 1), 10, was_full=True)  # 100 tokens/s now
    assert cap.rate(100.8) > 30  # the new periods weigh at least as much as all before


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
    cap.completed(0.5, 24, was_full=True)
    cap.completed(1.0, 24, was_full=True)
    cap.note_full(1.0, False)
    assert cap.rate(200.0) == pytest.approx(48.0)
    assert cap.rate(302.0) is None  # measured too long ago: no one is held back on its word
    cap.note_full(400.0, True)
    cap.completed(400.5, 24, was_full=True)
    assert cap.rate(400.5) is None  # the old periods do not count towards the new measurement
    cap.completed(401.0, 24, was_full=True)
    assert cap.rate(401.0) == pytest.approx(48.0)
