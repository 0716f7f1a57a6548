"""Listings by page on the real SeaweedFS: tenants, and pins (registry/pins.py) as a restarted gateway reads them."""

from __future__ import annotations

import pytest

from registry.pins import PinRegistry
from registry.tenants import TenantRegistry

pytestmark = pytest.mark.integration


def test_tenants_by_page(store):
    tenants = TenantRegistry(store)
    for i in range(7):
        tenants.create(f"page-{i}")
    seen, after = [], None
    while True:
        page = tenants.list(limit=3, after=after)
        seen += [t.name for t in page]
        if len(page) < 3:
            break
        after = page[-1].name
    assert seen == [f"page-{i}" for i in range(7)]


def test_pins_survive_a_new_reader_and_unpin_is_idempotent(store):
    pins = PinRegistry(store)
    pins.pin("acme", "chat", "prod")
    pins.pin("acme", "chat", "prod")  # idempotent
    pins.pin("beta", "sql", "0123456789abcdef")
    fresh = PinRegistry(store)  # what a restarted gateway reads
    assert [(p.tenant, p.name, p.ref) for p in fresh.list()] == [("acme", "chat", "prod"),
                                                                  ("beta", "sql", "0123456789abcdef")]
    assert [p.model for p in fresh.list("acme")] == ["chat@prod"]
    fresh.unpin("acme", "chat", "prod")
    fresh.unpin("acme", "chat", "prod")
    assert [p.tenant for p in pins.list()] == ["beta"]
    from common.errors import InvalidName
    with pytest.raises(InvalidName):
        pins.pin("acme", "chat", "../x")
