"""LastGood: the gateway's memory of registry answers (reuse, stale-while-revalidate, outages, forgetting)."""

import asyncio
import threading

import pytest

from common.errors import AuthenticationFailed, StorageUnavailable
from serving.fallback import LastGood
from tests.waiting import settle, until


class Source:
    """A registry read that counts its calls; `answer` is a value or an exception to raise."""

    def __init__(self, answer):
        self.answer, self.calls = answer, 0
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self):
        self.calls += 1
        self.gate.wait(5)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_fresh_value_is_reused_without_asking_and_an_old_one_is_asked_for():
    async def go():
        lg, src = LastGood("tenant"), Source("v1")
        assert await lg.call("k", src, reuse_s=60) == "v1"
        assert await lg.call("k", src, reuse_s=60) == "v1" and src.calls == 1
        src.answer = "v2"
        assert await lg.call("k", src, reuse_s=0) == "v2" and src.calls == 2  # no reuse: asked every time
    asyncio.run(go())


def test_refresh_ahead_answers_at_once_and_renews_once_in_the_background():
    async def go():
        lg, src = LastGood("manifest"), Source("v1")
        await lg.call("k", src, reuse_s=0.05, refresh_ahead=True)
        await asyncio.sleep(0.1)  # now stale (the sleep ends no earlier than asked: this holds on any host)
        src.answer, src.gate = "v2", threading.Event()  # the store is slow to answer
        answers = await asyncio.gather(*(lg.call("k", src, reuse_s=0.05, refresh_ahead=True) for _ in range(20)))
        assert answers == ["v1"] * 20  # nobody waited on the store
        src.gate.set()
        await settle()  # the renewal has stored its answer
        assert src.calls == 2  # one renewal for the twenty requests
        assert await lg.call("k", src, reuse_s=0.05, refresh_ahead=True) == "v2"
    asyncio.run(go())


def test_a_renewal_that_finds_the_key_revoked_drops_it_but_an_outage_keeps_it():
    async def go():
        lg, src = LastGood("tenant"), Source("acme")
        await lg.call("k", src, reuse_s=0.01, refresh_ahead=True)
        await asyncio.sleep(0.02)  # stale
        src.answer = StorageUnavailable("s3 down")
        assert await lg.call("k", src, reuse_s=0.01, refresh_ahead=True) == "acme"
        await settle()  # its renewal met the outage
        assert await lg.call("k", src, reuse_s=0.01, refresh_ahead=True) == "acme"  # kept through the outage
        await settle()
        src.answer = AuthenticationFailed("revoked")
        await lg.call("k", src, reuse_s=0.01, refresh_ahead=True)  # the renewal learns of the revocation
        await settle()
        with pytest.raises(AuthenticationFailed):
            await lg.call("k", src, reuse_s=0.01, refresh_ahead=True)
    asyncio.run(go())


def test_an_answer_fetched_before_a_forget_is_not_stored_after_it():
    """A rotation forgets the tenant while a renewal of its old key is in flight: the old key must not be
    remembered again when that renewal returns."""
    async def go():
        lg, src = LastGood("tenant"), Source("acme")
        await lg.call("old-key", src, reuse_s=0.01, refresh_ahead=True)
        await asyncio.sleep(0.02)  # stale
        src.gate = threading.Event()
        await lg.call("old-key", src, reuse_s=0.01, refresh_ahead=True)  # renewal starts, blocked in the store
        await until(lambda: src.calls == 2, what="the renewal reached the store")
        lg.forget(lambda _k, tenant: tenant == "acme")
        src.gate.set()
        await settle()  # the renewal returned (and must not have stored its answer)
        src.answer = AuthenticationFailed("revoked")
        with pytest.raises(AuthenticationFailed):
            await lg.call("old-key", src, reuse_s=60, refresh_ahead=True)
    asyncio.run(go())


def test_a_value_older_than_max_stale_is_asked_for_in_line():
    async def go():
        lg, src = LastGood("tenant"), Source("v1")
        await lg.call("k", src, reuse_s=0.05, refresh_ahead=True, max_stale_s=0.5)
        await asyncio.sleep(0.06)  # stale but young enough: answered at once while renewed
        src.answer = "v2"
        assert await lg.call("k", src, reuse_s=0.05, refresh_ahead=True, max_stale_s=0.5) == "v1"
        await settle()
        await asyncio.sleep(0.55)  # idle past max_stale_s: the next answer waits for the store
        src.answer = "v3"
        assert await lg.call("k", src, reuse_s=0.05, refresh_ahead=True, max_stale_s=0.5) == "v3"
        src.answer = StorageUnavailable("down")
        await asyncio.sleep(0.55)
        assert await lg.call("k", src, reuse_s=0.05, refresh_ahead=True, max_stale_s=0.5) == "v3"  # outage
    asyncio.run(go())


def test_holds_renews_an_old_value_in_line_and_otherwise_renews_as_before():
    """`holds` (the registry's generation, read moments ago, is the one the value was checked under) renews
    without a task or a store read, past `max_stale_s` too; when it says no, the usual renewal runs."""
    async def go():
        lg, src = LastGood("manifest"), Source("v1")
        verdict = {"holds": True}
        kw = dict(reuse_s=0.01, refresh_ahead=True, max_stale_s=0.02, holds=lambda v: verdict["holds"])
        await lg.call("k", src, **kw)
        await asyncio.sleep(0.05)  # past reuse and max_stale
        assert await lg.call("k", src, **kw) == "v1"
        await settle()
        assert src.calls == 1 and not lg._refreshing  # no renewal at all
        assert await lg.call("k", src, reuse_s=60) == "v1" and src.calls == 1  # and it counts as fetched now
        verdict["holds"], src.answer = False, "v2"
        await asyncio.sleep(0.05)
        assert await lg.call("k", src, **kw) == "v2" and src.calls == 2  # past max_stale: asked in line
    asyncio.run(go())
