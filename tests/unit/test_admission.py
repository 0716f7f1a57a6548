"""The admission facade: quota, then a slot from the fair queue; draining; the guard's feed; the wait metric."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY, generate_latest

from common.errors import Overloaded, QuotaExceeded
from serving import metrics
from serving.admission import Admission, Draining, Quotas, guard
from serving.metric_labels import Labels
from tests.unit.test_admission_fair_queue import Measured


class _Clock:
    """The guard's clock, moved by the test: its sample windows do not depend on how fast the host runs."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_concurrency_quota_counts_running_requests():
    async def go():
        adm = Admission(max_inflight=8, max_queue=8)
        q = Quotas.of({"max_concurrent": 1})
        adm.check_quota("a", q, 1)
        await adm.acquire("a", 1)
        with pytest.raises(QuotaExceeded, match="concurrent"):
            adm.check_quota("a", q, 1)
        adm.release("a", 1, 1)
        adm.check_quota("a", q, 1)
    asyncio.run(go())


def test_closed_admission_refuses_new_requests_and_reports_idle():
    """Graceful shutdown: after close() new requests get 503 (shutting_down); admitted ones still finish."""
    async def go():
        adm = Admission(max_inflight=1, max_queue=4)
        await adm.acquire("a", 1)
        queued = asyncio.create_task(adm.acquire("b", 1))
        await asyncio.sleep(0)
        adm.close()
        with pytest.raises(Draining) as e:
            adm.check_quota("c", Quotas(), 1)
        assert e.value.status == 503 and e.value.retry_after and e.value.code == "shutting_down"
        with pytest.raises(Draining):
            await adm.acquire("c", 1)
        assert not await adm.wait_idle(0.1)  # a runs, b waits: both were admitted before close()
        adm.release("a", 1, 1)
        await queued  # the queued request is still served
        waiter = asyncio.create_task(adm.wait_idle(5))
        await asyncio.sleep(0.1)  # time for a wrong early answer; b still runs, so none may come on any host
        assert not waiter.done()
        adm.release("b", 1, 1)
        assert await waiter and adm.idle
    asyncio.run(go())


@pytest.fixture
def named_tenants(monkeypatch):
    """Every tenant named in the series (the gateway names the busiest few: tests/unit/test_metrics.py)."""
    labels = Labels(tenants=10_000)
    monkeypatch.setattr(metrics, "LABELS", labels)
    return labels


def test_rejections_are_counted_per_tenant_and_adapter(named_tenants):
    def count(tenant, status, reason):
        return REGISTRY.get_sample_value("loraplex_rejected_total", {"tenant": tenant, "adapter": "mine",
                                                                     "status": status, "reason": reason}) or 0

    async def go():
        adm = Admission(max_inflight=1, max_queue=0)
        for t in ("rq-a", "rq-b"):
            named_tenants.count(t)  # as the gateway does on each request's arrival
        before = (count("rq-a", "429", "quota"), count("rq-b", "503", "overload"))
        adm.check_quota("rq-a", Quotas(requests_per_minute=1), 1, "mine")
        with pytest.raises(QuotaExceeded):
            adm.check_quota("rq-a", Quotas(requests_per_minute=1), 1, "mine")
        await adm.acquire("rq-a", 1, "mine")
        with pytest.raises(Overloaded):
            await adm.acquire("rq-b", 1, "mine")
        assert (count("rq-a", "429", "quota"), count("rq-b", "503", "overload")) == (before[0] + 1, before[1] + 1)
    asyncio.run(go())


def test_fifo_mode_has_no_guard():
    assert Admission(max_inflight=8, max_queue=100, fair=False, slowdown_tolerance=1.2).guard.limit == 8


def test_the_guard_is_fed_only_while_an_overloading_tenant_waits_beside_others(monkeypatch):
    """Slow samples with no heavy tenant waiting are measured, not acted on; with a flooder queued beside
    two recent tenants the guard cuts its ceiling."""
    clock = _Clock()
    monkeypatch.setattr(guard, "time", clock)  # the guard's clock only; asyncio and the queue keep the real one

    async def go():
        adm = Admission(max_inflight=8, max_queue=100, active_window_s=60, share_cap=1.0, slowdown_tolerance=1.2)
        adm.guard.window_s, adm.guard.interval_s, adm.guard.ceiling = 0.2, 0.0, 8.0
        adm.queue.capacity = Measured()  # an engine whose capacity the flood below exceeds
        for t in ("b", "c"):  # recently active, now idle
            await adm.acquire(t, 1)
            adm.release(t, 1, 1)
        for _ in range(5):
            adm.observe("stream", 0.010)
        clock.now += 0.25  # the fast samples leave the guard's 0.2 s window
        for _ in range(5):
            adm.observe("stream", 0.050)  # slow, but no heavy tenant waits
        assert adm.guard.slowdown == pytest.approx(5.0) and adm.guard.ceiling == 8
        flood = [asyncio.create_task(adm.acquire("a", 1)) for _ in range(20)]
        await asyncio.sleep(0)
        adm.observe("stream", 0.050)
        assert adm.guard.ceiling == 2  # now an overloading tenant waits beside b and c
        for task in flood:
            task.cancel()
    asyncio.run(go())


def test_admission_wait_is_observed_per_tenant_and_adapter_and_exported(named_tenants):
    """Each granted request's wait for a slot goes to loraplex_admission_wait_seconds{tenant, adapter}: about
    0 when a slot was free, the time it queued otherwise; a refused request is not observed."""
    def wait(tenant, what):
        return REGISTRY.get_sample_value(f"loraplex_admission_wait_seconds_{what}",
                                         {"tenant": tenant, "adapter": "mine"}) or 0

    async def go():
        adm = Admission(max_inflight=1, max_queue=1)
        for t in ("aw-a", "aw-b", "aw-c"):
            named_tenants.count(t)  # as the gateway does on each request's arrival
        await adm.acquire("aw-a", 1, "mine")  # a free slot: no wait
        assert wait("aw-a", "count") == 1
        queued_at = time.monotonic()
        queued = asyncio.create_task(adm.acquire("aw-b", 1, "mine"))
        await asyncio.sleep(0.2)
        with pytest.raises(Overloaded):
            await adm.acquire("aw-c", 1, "mine")  # queue full: refused, not observed
        adm.release("aw-a", 1, 1)
        await queued
        # Bounds that hold on any host: the queued wait lies within what the test itself saw pass, and the
        # free slot's (~0.1 ms) is below the 0.2 s that b queued for.
        assert wait("aw-b", "count") == 1 and 0.2 <= wait("aw-b", "sum") <= time.monotonic() - queued_at
        assert wait("aw-a", "sum") < 0.2 <= wait("aw-b", "sum")
        assert wait("aw-c", "count") == 0
    asyncio.run(go())
    exported = generate_latest().decode()  # what GET /metrics answers
    assert 'loraplex_admission_wait_seconds_bucket{adapter="mine",le="0.1",tenant="aw-b"} 0.0' in exported
    assert 'loraplex_admission_wait_seconds_bucket{adapter="mine",le="+Inf",tenant="aw-b"} 1.0' in exported
