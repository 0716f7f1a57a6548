"""Pure logic of admission: quotas, the bounded queue and fair (VTC) ordering."""

from __future__ import annotations

import asyncio

import pytest

from common.errors import Overloaded, QuotaExceeded
from serving.admission import Admission, Quotas


def test_quotas_refuse_with_retry_after():
    adm = Admission(max_inflight=8, max_queue=8)
    q = Quotas.of({"requests_per_minute": 2, "tokens_per_minute": 100})
    adm.check_quota("a", q, 10)
    adm.check_quota("a", q, 10)
    with pytest.raises(QuotaExceeded) as e:
        adm.check_quota("a", q, 10)
    assert e.value.retry_after >= 1 and "2 requests per minute" in e.value.message
    adm.check_quota("b", q, 10)  # other tenants are untouched
    with pytest.raises(QuotaExceeded, match="tokens per minute"):
        adm.check_quota("c", q, 101)


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


def test_full_queue_is_503():
    async def go():
        adm = Admission(max_inflight=1, max_queue=1)
        await adm.acquire("a", 1)
        waiter = asyncio.create_task(adm.acquire("a", 1))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await adm.acquire("b", 1)
        adm.release("a", 1, 1)
        await waiter
        assert adm.inflight == 1 and adm.queued == 0
    asyncio.run(go())


def test_a_flooding_tenant_does_not_jump_the_queue():
    """A queues 10 requests, then B queues one: B is served before A's backlog."""
    async def go():
        adm = Admission(max_inflight=1, max_queue=100)
        order = []

        async def req(t):
            await adm.acquire(t, 10)
            order.append(t)
            await asyncio.sleep(0.001)
            adm.release(t, 10, 10)

        await adm.acquire("a", 10)  # occupies the only slot
        tasks = [asyncio.create_task(req("a")) for _ in range(10)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(req("b")))
        await asyncio.sleep(0)
        adm.release("a", 10, 10)
        await asyncio.gather(*tasks)
        return order
    order = asyncio.run(go())
    assert order.index("b") <= 1


def test_cancelled_waiter_leaves_no_trace():
    async def go():
        adm = Admission(max_inflight=1, max_queue=10)
        await adm.acquire("a", 1)
        waiter = asyncio.create_task(adm.acquire("b", 1))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert adm.queued == 0 and adm.active["b"] == 0
        adm.release("a", 1, 1)
        assert adm.inflight == 0
    asyncio.run(go())


def test_fifo_mode_serves_in_arrival_order():
    async def go():
        adm = Admission(max_inflight=1, max_queue=100, fair=False)
        order = []

        async def req(t):
            await adm.acquire(t, 10)
            order.append(t)
            adm.release(t, 10, 10)

        await adm.acquire("a", 10)
        tasks = [asyncio.create_task(req("a")) for _ in range(5)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(req("b")))
        await asyncio.sleep(0)
        adm.release("a", 10, 10)
        await asyncio.gather(*tasks)
        return order
    assert asyncio.run(go()) == ["a"] * 5 + ["b"]
