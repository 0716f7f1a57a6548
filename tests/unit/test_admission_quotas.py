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
