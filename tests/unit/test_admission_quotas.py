"""Per-tenant quotas: requests and tokens per minute, concurrent requests, 429 with Retry-After."""

from __future__ import annotations

import pytest

from common.errors import QuotaExceeded
from serving.admission.quotas import QuotaLedger, Quotas


def test_quotas_refuse_with_retry_after():
    ledger = QuotaLedger()
    q = Quotas.of({"requests_per_minute": 2, "tokens_per_minute": 100})
    ledger.check("a", q, 10, active=0)
    ledger.check("a", q, 10, active=0)
    with pytest.raises(QuotaExceeded) as e:
        ledger.check("a", q, 10, active=0)
    assert e.value.retry_after >= 1 and "2 requests per minute" in e.value.message
    ledger.check("b", q, 10, active=0)  # other tenants are untouched
    with pytest.raises(QuotaExceeded, match="tokens per minute"):
        ledger.check("c", q, 101, active=0)


def test_concurrency_quota_counts_the_requests_active_now():
    ledger = QuotaLedger()
    q = Quotas.of({"max_concurrent": 2})
    ledger.check("a", q, 1, active=1)
    with pytest.raises(QuotaExceeded, match="2 concurrent requests") as e:
        ledger.check("a", q, 1, active=2)
    assert e.value.retry_after == 1.0


def test_quotas_of_a_tenant_record():
    assert Quotas.of(None) == Quotas()  # no limits
    assert Quotas.of({"requests_per_minute": "5", "max_concurrent": None}) == Quotas(requests_per_minute=5)


def test_the_engines_usage_replaces_the_estimate_in_the_token_window_both_ways():
    ledger = QuotaLedger()
    q = Quotas.of({"tokens_per_minute": 100})
    over = ledger.check("a", q, 60, active=0)  # estimated 60, served 10: 50 tokens come back
    over.settle(10)
    assert ledger.tokens("a") == 10 and over.tokens == 10
    ledger.check("a", q, 90, active=0).settle(90)  # fits only because the estimate was corrected down
    with pytest.raises(QuotaExceeded, match="100 tokens per minute"):
        ledger.check("a", q, 1, active=0)
    under = ledger.check("b", q, 5, active=0)  # estimated 5, served 80: the window holds 80
    under.settle(80)
    assert ledger.tokens("b") == 80
    with pytest.raises(QuotaExceeded):
        ledger.check("b", q, 21, active=0)


def test_a_charge_settled_after_its_minute_only_adds_an_excess(monkeypatch):
    import serving.admission.quotas as quotas

    clock = [1000.0]
    monkeypatch.setattr(quotas.time, "monotonic", lambda: clock[0])
    ledger = QuotaLedger()
    q = Quotas()
    long_one = ledger.check("a", q, 50, active=0)
    other = ledger.check("a", q, 50, active=0)
    clock[0] += 61  # both estimates left the window while the requests ran
    assert ledger.tokens("a") == 0
    long_one.settle(70)  # the 20 tokens the estimate missed count in the current minute
    other.settle(10)  # a minute that is over gives nothing back
    assert ledger.tokens("a") == 20


def test_a_charge_settled_to_zero_gives_its_tokens_back():
    ledger = QuotaLedger()
    charge = ledger.check("a", Quotas(), 40, active=0)
    charge.settle(0)
    assert ledger.tokens("a") == 0
