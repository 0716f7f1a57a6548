"""Noticing that a client left while its request waits for admission or for the engine's whole answer.

uvicorn does not cancel a handler whose client disconnects, so without this a non-streamed request ran on in
the engine for nobody, and a queued one kept its place in the fair queue. Here the request's work runs beside
a watch on the ASGI `receive` channel (the body is read by then, so the next message is `http.disconnect`,
which uvicorn and Ray Serve send once the client is gone); if it comes first the work is cancelled: a queued
request leaves the queue, an admitted one closes its engine connection (vLLM aborts a request whose
connection closes). A stream's response (`RelayResponse`) takes the same watch over when it starts: a
disconnect stops the relay, which closes the engine stream. On Ray Serve the ingress replica gets
the same message (or Serve cancels the handler itself); the transport then cancels the engine replica's call,
which closes its engine connection the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

CLIENT_CLOSED = 499  # nginx's status for "client closed request": only the access log ever shows it


async def unless_client_leaves(receive: Receive | None, work: Awaitable[Response]) -> Response:
    """`work`'s response; or, when the client disconnects first, `work` cancelled (its own cleanup frees what
    it held and records the outcome) and an empty 499 response that the server drops.

    `work` runs in the handler's own task (a task of its own, and asyncio.wait over the two, cost a measurable
    share of the gateway's CPU per request); the watch cancels that task if the client leaves while it runs."""
    if receive is None:
        return await work
    task = asyncio.current_task()
    watch = asyncio.ensure_future(_disconnect(receive))
    state = {"working": True, "cancelled": False}

    def client_left(_watch: asyncio.Future) -> None:
        if state["working"]:  # a callback already scheduled when the work ends must not cancel what follows
            state["cancelled"] = True
            task.cancel()

    watch.add_done_callback(client_left)
    try:
        response = await work
    except BaseException as e:
        watch.cancel()
        if state["cancelled"] and not task.uncancel() and isinstance(e, asyncio.CancelledError):
            return Response(status_code=CLIENT_CLOSED)  # cancelled by the watch alone
        raise  # the work failed, or the handler itself was cancelled (shutdown; Ray Serve cancels on disconnect)
    finally:
        state["working"] = False
    if state["cancelled"]:  # the work finished though the cancel had landed: its response still ends the request
        task.uncancel()
    if isinstance(response, RelayResponse):
        response.watch = watch  # it watches on while it relays
    else:
        watch.cancel()
    return response


async def _disconnect(receive: Receive) -> None:
    """Return when `receive` says the client disconnected (any other message is a stray empty body part), or
    fails: then the client cannot be answered either."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:
        return


class RelayResponse(StreamingResponse):
    """A stream relayed chunk by chunk, stopped (its body iterator cancelled and closed) when the client leaves.

    Starlette's StreamingResponse does the same, but under uvicorn (ASGI spec 2.3) with an anyio task group and
    a second task per response to watch `receive`; here the watch that guarded the request while it waited
    (`unless_client_leaves`) carries on, and its completion cancels the relay: no task per stream, and the
    relay's own cleanup (a `finally`) closes the engine stream and records the outcome.
    """

    watch: asyncio.Future | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self.watch or asyncio.ensure_future(_disconnect(receive))
        task, relaying = asyncio.current_task(), [True]
        # a callback already scheduled when the relay ends must not cancel what comes after it
        watch.add_done_callback(lambda _watch: relaying[0] and task.cancel())
        try:
            await self._relay(send)
        except asyncio.CancelledError:
            if not watch.done() or task.uncancel():
                raise  # cancelled for another reason too (shutdown): go on cancelling
        finally:
            relaying[0] = False
            watch.cancel()
        if self.background is not None:
            await self.background()

    async def _relay(self, send: Send) -> None:
        try:
            await self.stream_response(send)  # Starlette's: the start, each chunk, the end
        finally:
            await self.body_iterator.aclose()  # a relay stopped at a yield runs its cleanup now
