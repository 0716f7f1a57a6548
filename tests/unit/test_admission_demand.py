"""Tenant demand over the heavy window: who asks for at least HEAVY_RATIO x what the others ask for."""

from __future__ import annotations

from serving.admission.demand import Demand


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
