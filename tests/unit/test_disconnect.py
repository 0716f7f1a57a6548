"""A client that disconnects while its request waits (for admission, or for a whole engine answer) cancels it:
the queue forgets it, the engine call is closed, the slot and the adapter hold come back, the outcome is counted.

End to end through uvicorn and vLLM: tests/e2e/test_cancellation.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from serving import metrics
from serving.admission import Admission
from serving.disconnect import CLIENT_CLOSED, unless_client_leaves
from serving.forwarding import forward
from serving.settings import ServingSettings
from serving.transport.base import EngineCall, Reply, Transport
from serving.transport.http import HttpTransport
from serving.transport.ray import RayTransport

TENANT = SimpleNamespace(name="acme", quotas={})
OTHER = SimpleNamespace(name="beta", quotas={})


class Client:
    """The request's ASGI `receive` once its body is read: nothing until the client leaves."""

    def __init__(self):
        self.gone = asyncio.Event()

    async def receive(self):
        await self.gone.wait()
        return {"type": "http.disconnect"}


class Answer(Reply):
    status, headers = 200, None

    async def json(self):
        return {"model": "base", "choices": [{"text": "x"}], "usage": {"total_tokens": 3}}

    def lines(self):
        raise NotImplementedError

    async def close(self):
        pass


class SlowEngine(Transport):
    """Answers each call when its `answer` event is set; notes the calls it started, finished and cancelled."""

    def __init__(self):
        self.started, self.cancelled, self.released = 0, 0, 0
        self.answer = asyncio.Event()

    async def send(self, call: EngineCall) -> Reply:
        self.started += 1
        call.releases.append(self._release)
        try:
            await self.answer.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return Answer()

    def _release(self):
        self.released += 1

    async def probe(self):
        return None


def _gateway(transport, max_inflight=1):
    async def resolve(tenant, ref):
        raise AssertionError("only the base model is asked for here")

    return SimpleNamespace(settings=ServingSettings(), admission=Admission(max_inflight, 8), resolve=resolve,
                           transport=transport, engine_failed=lambda: None)


def _body():
    return {"model": ServingSettings().base_name, "prompt": "p", "max_tokens": 4}


async def _turns(n=5):
    for _ in range(n):
        await asyncio.sleep(0)


def _count(counter, *labels) -> float:
    return counter.labels(*labels)._value.get()


def test_a_whole_answer_whose_client_left_is_cancelled_and_frees_its_slot():
    engine = SlowEngine()
    gw = _gateway(engine)
    before = _count(metrics.REQUESTS, "acme", metrics.BASE, "disconnected")

    async def go():
        client = Client()
        req = asyncio.create_task(forward(gw, TENANT, _body(), "/v1/completions", client.receive))
        await _turns()
        assert engine.started == 1 and gw.admission.inflight == 1
        client.gone.set()
        return await req

    r = asyncio.run(go())
    assert r.status_code == CLIENT_CLOSED
    assert engine.cancelled == 1 and engine.released == 1 and gw.admission.idle
    assert _count(metrics.REQUESTS, "acme", metrics.BASE, "disconnected") == before + 1


def test_a_queued_request_whose_client_left_is_never_sent_and_the_next_one_is():
    """acme holds the only slot; beta's first request waits, its client leaves; beta's second request is
    admitted when acme's finishes, the left one never reaches the engine, and the counters end idle."""
    engine = SlowEngine()
    gw = _gateway(engine)
    q = gw.admission.queue
    left = _count(metrics.REJECTED, "beta", metrics.BASE, "499", "disconnected")

    async def go():
        running = asyncio.create_task(forward(gw, TENANT, _body(), "/v1/completions", Client().receive))
        await _turns()
        gone = Client()
        queued = asyncio.create_task(forward(gw, OTHER, _body(), "/v1/completions", gone.receive))
        await _turns()
        nxt = asyncio.create_task(forward(gw, OTHER, _body(), "/v1/completions", Client().receive))
        await _turns()
        assert q.queued == 2 and q.active["beta"] == 2
        counter = q.counters["beta"]
        gone.gone.set()
        assert (await queued).status_code == CLIENT_CLOSED
        assert q.queued == 1 and q.active["beta"] == 1 and q.counters["beta"] == counter
        assert engine.started == 1
        engine.answer.set()  # acme's request ends, the slot goes to beta's second request
        assert (await running).status_code == 200
        assert (await nxt).status_code == 200

    asyncio.run(go())
    assert engine.started == 2 and engine.cancelled == 0 and engine.released == 2
    assert q.idle and q.active["acme"] == q.active["beta"] == 0 and q.running["beta"] == 0
    assert _count(metrics.REJECTED, "beta", metrics.BASE, "499", "disconnected") == left + 1


def test_a_client_that_leaves_as_its_slot_is_granted_gives_the_slot_back():
    engine = SlowEngine()
    gw = _gateway(engine)

    async def go():
        await gw.admission.acquire("acme", 1)  # the slot, held outside forward
        gone = Client()
        queued = asyncio.create_task(forward(gw, OTHER, _body(), "/v1/completions", gone.receive))
        await _turns()
        gw.admission.release("acme", 1, 1)  # grants the slot to the waiter...
        gone.gone.set()  # ...whose client leaves in the same turn
        assert (await queued).status_code == CLIENT_CLOSED

    asyncio.run(go())
    assert gw.admission.idle and engine.started == engine.cancelled == engine.released


def test_a_waiter_cancelled_in_the_turn_its_slot_is_granted_hands_the_slot_on():
    """The grant resolves its future, the cancel lands before the waiter resumes: the slot goes to the next
    waiter, and the VTC counter of the one that left is back where it was."""
    async def go():
        admission = Admission(1, 8)
        q = admission.queue
        await admission.acquire("acme", 1)
        gone = asyncio.create_task(admission.acquire("beta", 1))
        nxt = asyncio.create_task(admission.acquire("gamma", 1))
        await _turns()
        counter = q.counters["beta"]
        admission.release("acme", 1, 1)  # beta is first in line: granted
        assert q.running["beta"] == 1
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        await nxt
        assert q.running["beta"] == q.active["beta"] == 0 and q.counters["beta"] == counter
        assert q.running["gamma"] == 1 and q.queued == 0
        admission.release("gamma", 1, 1)
        assert admission.idle

    asyncio.run(go())


def test_an_answer_that_comes_first_is_returned_and_the_watch_ends():
    async def go():
        async def work():
            return "response"

        before = len(asyncio.all_tasks())
        assert await unless_client_leaves(Client().receive, work()) == "response"
        await _turns()
        return len(asyncio.all_tasks()) - before

    assert asyncio.run(go()) == 0


async def _late_answer():
    return "late answer"


async def _late_failure():
    raise ValueError("cleanup failed")


@pytest.mark.parametrize("on_cancel, outcome", [(_late_answer, "late answer"), (_late_failure, "ValueError")])
def test_work_that_ends_in_the_turn_its_client_leaves_decides_the_outcome_and_leaves_no_cancel_behind(
        on_cancel, outcome):
    """The cancel lands but the work catches it and answers (that answer ends the request) or fails (its error
    goes up); either way the handler's task carries no pending cancellation into what follows."""
    async def go():
        client = Client()

        async def work():
            try:
                client.gone.set()
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return await on_cancel()

        try:
            result = await unless_client_leaves(client.receive, work())
        except ValueError:
            result = "ValueError"
        await asyncio.sleep(0)  # would raise CancelledError if a cancel were still pending
        return result, asyncio.current_task().cancelling()

    assert asyncio.run(go()) == (outcome, 0)


def test_work_that_fails_ends_the_watch_too():
    async def go():
        async def work():
            raise ValueError("engine said no")

        before = len(asyncio.all_tasks())
        with pytest.raises(ValueError):
            await unless_client_leaves(Client().receive, work())
        await _turns()
        return len(asyncio.all_tasks()) - before

    assert asyncio.run(go()) == 0


def test_a_client_that_leaves_while_the_work_waits_gets_499_and_the_handler_is_not_left_cancelling():
    async def go():
        client = Client()

        async def work():
            client.gone.set()
            await asyncio.Event().wait()

        response = await unless_client_leaves(client.receive, work())
        await asyncio.sleep(0)
        return response.status_code, asyncio.current_task().cancelling()

    assert asyncio.run(go()) == (CLIENT_CLOSED, 0)


def test_without_a_receive_channel_the_work_is_just_awaited():
    async def work():
        return 7

    assert asyncio.run(unless_client_leaves(None, work())) == 7


def test_a_handler_cancelled_itself_cancels_the_work():
    async def go():
        cancelled = asyncio.Event()

        async def work():
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()

        handler = asyncio.create_task(unless_client_leaves(Client().receive, work()))
        await _turns()
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler
        await asyncio.wait_for(cancelled.wait(), 1)

    asyncio.run(go())


class SlowResidency:
    """An adapter load that takes until `loaded` is set; counts holds."""

    def __init__(self):
        self.loaded, self.held, self.loads_done = asyncio.Event(), 0, 0

    def try_hold(self, name):
        return False  # not resident: the load below

    async def acquire(self, name, local_path):
        await self.loaded.wait()
        self.loads_done += 1
        self.held += 1

    def release(self, name):
        self.held -= 1


def test_an_adapter_load_is_not_cancelled_with_the_request_and_its_hold_comes_back():
    """The load is shared with other requests for the adapter: a client that leaves does not cut it short."""
    residency = SlowResidency()
    transport = HttpTransport(ServingSettings(), SimpleNamespace(http=None), residency, None)

    async def go():
        call = EngineCall("acme", "/v1/completions", {"model": "rev"}, False, SimpleNamespace(), "lpx:acme:rev:1")
        send = asyncio.create_task(transport.send(call))
        await _turns()
        send.cancel()
        with pytest.raises(asyncio.CancelledError):
            await send
        residency.loaded.set()
        await _turns()
        return call

    call = asyncio.run(go())
    assert residency.loads_done == 1 and residency.held == 0 and call.releases == []


class PendingResponse:
    """A Ray DeploymentResponse that never resolves; notes `cancel()`."""

    def __init__(self):
        self.cancelled = False

    def __await__(self):
        return asyncio.Event().wait().__await__()

    def cancel(self):
        self.cancelled = True


def test_the_ray_transport_cancels_the_replica_call_when_the_client_leaves():
    response = PendingResponse()
    handle = SimpleNamespace(options=lambda **kw: handle,
                             generate=SimpleNamespace(remote=lambda *args: response))
    transport = RayTransport(handle, SimpleNamespace(routing="affinity", retry_window_s=0))

    async def go():
        send = asyncio.create_task(transport.send(EngineCall("acme", "/v1/completions", {"model": "b"}, False)))
        await _turns()
        send.cancel()
        with pytest.raises(asyncio.CancelledError):
            await send

    asyncio.run(go())
    assert response.cancelled
