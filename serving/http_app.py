"""What both planes' FastAPI apps share: the request log and one error shape (OpenAI's) for every error."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import LoraplexError, error_body
from serving.logs import RequestLog


def error_response(status: int, message: str, type_: str, code: str, param=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


async def on_loraplex_error(request: Request, exc: LoraplexError) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers())


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(400, f"invalid request at {where}: {first.get('msg', 'malformed')}",
                          "invalid_request_error", "invalid_request", param=where or None)


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, str(exc.detail), "invalid_request_error", code)


def new_app(title: str, routers, lifespan=None, inner=()) -> FastAPI:
    """A FastAPI app with the request log, the error handlers and `routers` (APIRouters); `inner`: ASGI
    middleware classes that run inside the request log, before FastAPI's own."""
    app = FastAPI(title=title, lifespan=lifespan)
    for middleware in inner:
        app.add_middleware(middleware)
    app.add_middleware(RequestLog)  # added last: the outermost of them
    app.add_exception_handler(LoraplexError, on_loraplex_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    for router in routers:
        app.include_router(router)
    return app
