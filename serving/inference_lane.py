"""The inference routes' short path: POST /v1/completions and /v1/chat/completions served as plain ASGI.

Every inference request crossed FastAPI's whole stack (exception middleware, exit stack, router, request
handler, dependency solving) and every streamed chunk its send wrappers: on a small host, where each event
finds the gateway's caches cold, that was a measurable share of the gateway's CPU per request. This ASGI
middleware sits inside the request log (ids, access line, the 500 for a bug) and serves the two routes with
the same functions as their FastAPI routes (serving/routes/inference.py), which stay for everything else:
the OpenAPI schema, other methods (405), a request that reaches them by another way.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from common.errors import LoraplexError
from serving.deps import current_tenant
from serving.http_app import on_loraplex_error
from serving.routes.inference import PATHS, serve


class InferenceLane:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in PATHS or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            gw = request.app.state.gateway
            response = await serve(request, gw, await current_tenant(request, gw), path)
        except LoraplexError as e:  # what the app's handler answers on the FastAPI route
            response = await on_loraplex_error(request, e)
        await response(scope, receive, send)
