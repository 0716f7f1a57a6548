"""The gateway's Prometheus series: bounded label sets whatever clients send, however many tenants."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from serving import metrics
from serving.metric_labels import OTHER_TENANTS, Labels


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_metric_adapter_labels_are_bounded_per_tenant():
    """Clients choose `model` freely: only names resolved in the registry, and at most N per tenant, get a label."""
    labels = Labels(per_tenant=2)
    labels.count("t")
    labels.count("u")
    assert labels.known("t", "nonexistent@prod") == "other"  # not resolved yet: never raw client text
    assert labels.admit("t", "a") == "a" and labels.admit("t", "b") == "b"
    assert labels.admit("t", "c") == "other"  # over the cap
    assert labels.known("t", "a@prod") == "a" and labels.known("t", "a@0123abcd") == "a"  # name, not version
    assert labels.known("t", "base") == "base"
    assert labels.admit("u", "c") == "c"  # the cap is per tenant


def test_tenant_labels_name_the_busiest_and_pool_the_rest():
    """A hundred tenants: the first N are named at once; at each window's end the busiest N of that window are;
    the others (and their adapters) share one label, so the series stay bounded."""
    clock = Clock()
    dropped: list[set[str]] = []
    labels = Labels(per_tenant=3, tenants=3, window_s=60, clock=clock)
    labels.on_drop = dropped.append
    for i in range(100):
        labels.count(f"t{i:02d}")
    assert labels.named() == {"t00", "t01", "t02"}
    assert labels.tenant("t50") == OTHER_TENANTS and labels.admit("t50", "a") == "other"
    assert labels.tenant("t01") == "t01" and labels.admit("t01", "a") == "a"
    # this window t70 and t80 are far the busiest, t01 the busiest of the named ones
    for _ in range(9):
        labels.count("t70")
        labels.count("t80")
        labels.count("t01")
    clock.now = 61
    labels.count("t99")  # the window ends on this request
    assert labels.named() == {"t70", "t80", "t01"} and dropped == [{"t00", "t02"}]
    assert labels.tenant("t00") == OTHER_TENANTS and labels.tenant("t70") == "t70"
    assert labels.known("t01", "a@prod") == "a"  # a tenant still named keeps its adapters' labels


def test_an_idle_named_tenant_keeps_its_series_while_no_busier_one_needs_the_room():
    clock = Clock()
    labels = Labels(tenants=3, window_s=60, clock=clock)
    labels.count("a")
    labels.count("b")
    clock.now = 61
    labels.count("c")
    assert labels.named() == {"a", "b", "c"}


def test_dropped_tenants_lose_their_series(monkeypatch):
    """The gateway's metrics remove the series of a tenant no longer named (they would never change again)."""
    registry = CollectorRegistry()
    requests = Counter("t_requests_total", "test", ["tenant", "adapter", "status"], registry=registry)
    monkeypatch.setattr(metrics, "_PER_TENANT", (requests,))
    clock = Clock()
    labels = Labels(tenants=1, window_s=60, clock=clock)
    monkeypatch.setattr(metrics, "LABELS", labels)
    labels.on_drop = metrics._drop_series
    labels.count("old")
    requests.labels(labels.tenant("old"), "a", "ok").inc()
    labels.count("new")
    requests.labels(labels.tenant("new"), "other", "ok").inc()
    assert 't_requests_total{adapter="other",status="ok",tenant="_other"} 1.0' in generate_latest(registry).decode()
    for _ in range(3):
        labels.count("new")
    clock.now = 61
    labels.count("new")
    text = generate_latest(registry).decode()
    assert 'tenant="old"' not in text and 'tenant="_other"' in text and labels.tenant("new") == "new"
