"""The gateway's Prometheus series: bounded label sets whatever clients send."""

from __future__ import annotations

from serving.metrics import AdapterLabels


def test_metric_adapter_labels_are_bounded_per_tenant():
    """Clients choose `model` freely: only names resolved in the registry, and at most N per tenant, get a label."""
    labels = AdapterLabels(per_tenant=2)
    assert labels.known("t", "nonexistent@prod") == "other"  # not resolved yet: never raw client text
    assert labels.admit("t", "a") == "a" and labels.admit("t", "b") == "b"
    assert labels.admit("t", "c") == "other"  # over the cap
    assert labels.known("t", "a@prod") == "a" and labels.known("t", "a@0123abcd") == "a"  # name, not version
    assert labels.known("t", "base") == "base"
    assert labels.admit("u", "c") == "c"  # the cap is per tenant
