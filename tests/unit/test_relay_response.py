"""The streamed reply (serving/disconnect.py `RelayResponse`): relays every chunk, and stops the relay when the
client leaves, even while the engine sends nothing, without a task of its own per stream.

End to end through uvicorn and vLLM: tests/e2e/test_cancellation.py.
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.background import BackgroundTask

from serving.disconnect import RelayResponse, unless_client_leaves


class Client:
    """ASGI `receive` once the body is read (nothing until the client leaves) and `send` (what reached it)."""

    def __init__(self):
        self.gone = asyncio.Event()
        self.sent: list[dict] = []

    async def receive(self):
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        self.sent.append(message)


class Engine:
    """A relay generator: yields `chunks`, then waits for `more` (an engine that sends nothing for a while)."""

    def __init__(self, chunks, wait=False):
        self.chunks, self.wait = chunks, wait
        self.more = asyncio.Event()
        self.outcome = None

    async def relay(self):
        try:
            for chunk in self.chunks:
                yield chunk
            if self.wait:
                await self.more.wait()
            self.outcome = "ok"
        except BaseException:
            self.outcome = "left"
            raise


async def _turns(n=5):
    for _ in range(n):
        await asyncio.sleep(0)


def _response(engine, client, background=None):
    async def work():
        return RelayResponse(engine.relay(), media_type="text/event-stream", background=background)

    return unless_client_leaves(client.receive, work())


def test_every_chunk_is_relayed_then_the_body_ends_and_no_watch_is_left():
    async def go():
        client, engine = Client(), Engine([b"data: a\n\n", "data: [DONE]\n\n"])
        done = []

        async def after():
            done.append(True)

        response = await _response(engine, client, background=BackgroundTask(after))
        before = len(asyncio.all_tasks())
        await response({"type": "http"}, client.receive, client.send)
        await _turns()
        return client, engine, done, before, len(asyncio.all_tasks())

    client, engine, done, before, after = asyncio.run(go())
    assert [m.get("body") for m in client.sent] == [None, b"data: a\n\n", b"data: [DONE]\n\n", b""]
    assert client.sent[0]["status"] == 200 and client.sent[-1]["more_body"] is False
    assert engine.outcome == "ok" and done == [True]
    assert after == before - 1  # the disconnect watch handed over by unless_client_leaves is gone


def test_a_client_that_leaves_while_the_engine_is_silent_stops_the_relay_at_once():
    async def go():
        client, engine = Client(), Engine([b"data: a\n\n"], wait=True)
        response = await _response(engine, client)
        call = asyncio.create_task(response({"type": "http"}, client.receive, client.send))
        await _turns()
        assert engine.outcome is None  # relayed the first chunk, waiting for the engine
        client.gone.set()
        await asyncio.wait_for(call, 5)  # returns normally: a left client is no error
        return client, engine, call

    client, engine, call = asyncio.run(go())
    assert engine.outcome == "left" and not call.cancelled()
    assert [m.get("body") for m in client.sent] == [None, b"data: a\n\n"]


def test_a_cancellation_for_another_reason_goes_on():
    async def go():
        client, engine = Client(), Engine([], wait=True)
        response = await _response(engine, client)
        call = asyncio.create_task(response({"type": "http"}, client.receive, client.send))
        await _turns()
        call.cancel()  # e.g. the server shutting down
        with pytest.raises(asyncio.CancelledError):
            await call
        return engine

    assert asyncio.run(go()).outcome == "left"


def test_without_a_watch_handed_over_it_watches_by_itself():
    async def go():
        client, engine = Client(), Engine([b"data: a\n\n"], wait=True)
        response = RelayResponse(engine.relay(), media_type="text/event-stream")
        call = asyncio.create_task(response({"type": "http"}, client.receive, client.send))
        await _turns()
        client.gone.set()
        await asyncio.wait_for(call, 5)
        return engine

    assert asyncio.run(go()).outcome == "left"
