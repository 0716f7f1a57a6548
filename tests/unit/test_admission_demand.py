"""Tenant demand over the heavy window: who asks for at least HEAVY_RATIO x what the others ask for."""

from __future__ import annotations

from serving.admission.demand import Demand, fair_level


def test_a_tenant_asking_twice_the_others_mean_is_heavy_until_the_window_passes():
    d = Demand(window_s=10)
    assert not d.heavy("a") and d.others_mean("a") is None  # alone: no one to compare with
    d.ask("a", 0.0, 40)
    d.ask("b", 0.0, 10)
    d.ask("c", 1.0, 30)
    assert d.others_mean("a") == 20 and d.heavy("a") and not d.heavy("c")
    d.grant("a", 0.5, 40)
    assert d.granted("a") == 40 and d.mean_ask("a") == 40 and d.mean_ask("z") == 0.0
    assert d.trim(10.6) == ["a"]  # granted nothing within the window any more
    assert d.granted("a") == 0 and d.others_mean("c") is None and not d.heavy("c")  # a and b fell out
    assert d.trim(20.0) == [] and d.others_mean("z") is None


def test_the_fair_level_shares_out_what_the_light_tenants_leave():
    assert fair_level({"a": 50, "b": 30, "c": 10}, 100) is None  # everything fits: no one is over its share
    assert fair_level({"a": 90, "b": 10, "c": 5}, 100) == 85  # one flooder: what the others leave
    assert fair_level({"a": 90, "b": 80, "c": 10}, 100) == 45  # two: they split the rest equally
    assert fair_level({"a": 90, "b": 80, "c": 70}, 90) == 30  # all over: the equal share
    assert fair_level({}, 0) is None
