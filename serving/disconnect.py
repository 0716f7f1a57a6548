"""Noticing that a client left while its request waits for admission or for the engine's whole answer.

uvicorn does not cancel a handler whose client disconnects, so without this a non-streamed request ran on in
the engine for nobody, and a queued one kept its place in the fair queue. Here the request's work runs beside
a watch on the ASGI `receive` channel (the body is read by then, so the next message is `http.disconnect`,
which uvicorn and Ray Serve send once the client is gone); if it comes first the work is cancelled: a queued
request leaves the queue, an admitted one closes its engine connection (vLLM aborts a request whose
connection closes). Streams are watched this way only until their response starts; after that Starlette's
response notices the disconnect and the relay closes the engine stream. On Ray Serve the ingress replica gets
the same message (or Serve cancels the handler itself); the transport then cancels the engine replica's call,
which closes its engine connection the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from starlette.responses import Response
from starlette.types import Receive

CLIENT_CLOSED = 499  # nginx's status for "client closed request": only the access log ever shows it


async def unless_client_leaves(receive: Receive | None, work: Awaitable[Response]) -> Response:
    """`work`'s response; or, when the client disconnects first, `work` cancelled (its own cleanup frees what
    it held and records the outcome) and an empty 499 response that the server drops."""
    if receive is None:
        return await work
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the handler itself was cancelled (shutdown; Ray Serve cancels on disconnect)
        task.cancel()
        watch.cancel()
        raise
    if not task.done():
        task.cancel()
        try:
            return await task  # finished just before the cancel landed: its response still ends the request
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise  # the handler itself is being cancelled too
            return Response(status_code=CLIENT_CLOSED)
    watch.cancel()
    return task.result()


async def _disconnect(receive: Receive) -> None:
    """Return when `receive` says the client disconnected (any other message is a stray empty body part), or
    fails: then the client cannot be answered either."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:
        return
