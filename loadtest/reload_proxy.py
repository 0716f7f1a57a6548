"""Mode (C) of the hot-swap benchmark: ONE engine whose weights are swapped to the tenant's merged model on demand.

    python -m loadtest.reload_proxy --engine http://127.0.0.1:PORT --port P --models '{"m0": "/merged/0", ...}'

The gateway routes each tenant (separate-model mode, `dedicated_engines`) to this proxy with the
tenant's model name. The proxy holds one vLLM engine (LoRA off, `VLLM_SERVER_DEV_MODE=1`): when a
request needs another tenant's model it stops admitting, waits until the engine's open requests
finish, reloads the weights in place (`POST /collective_rpc` `reload_weights` with the merged
model's directory, then `/reset_prefix_cache`: cached prefixes were computed by the old weights),
and admits every waiting request of that tenant. The next model is the oldest waiting request's
(first come, first served), so no tenant starves. This is the fastest honest form of "load the
tenant's model on demand" vLLM offers short of keeping every model resident; a restart per switch
would cost the engine start time (reported separately by the benchmark).

`GET /stats` → {"current", "switches", "reload_s", "waiting", "inflight"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from common.errors import error_body

SERVED = "reload"  # the model name the reload engine serves, whatever weights it holds


class Switcher:
    """Admission to the one engine: only requests of the loaded model run; a switch waits for them to drain."""

    def __init__(self, reload, current: str | None = None):
        self._reload = reload  # async (model) -> None: put `model`'s weights into the engine
        self.current = current
        self.inflight = 0
        self.waiting: deque[tuple[str, asyncio.Future]] = deque()
        self.switching = False
        self.switches = 0
        self.reload_s = 0.0

    async def acquire(self, model: str) -> None:
        if model == self.current and not self.waiting and not self.switching:
            self.inflight += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append((model, fut))
        self._kick()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()  # admitted just as the caller went away
            raise

    def release(self) -> None:
        self.inflight -= 1
        self._kick()

    def _kick(self) -> None:
        self.waiting = deque((m, f) for m, f in self.waiting if not f.done())  # drop callers that left
        if self.inflight == 0 and self.waiting and not self.switching:
            self.switching = True
            asyncio.get_running_loop().create_task(self._switch())

    async def _switch(self) -> None:
        model = self.waiting[0][0]
        error: BaseException | None = None
        try:
            if model != self.current:
                started = time.monotonic()
                self.current = None  # unknown until the reload succeeds
                await self._reload(model)
                self.current = model
                self.switches += 1
                self.reload_s += time.monotonic() - started
        except Exception as e:  # the waiters of this model get the error; the others stay queued
            error = e
        rest: deque = deque()
        for m, fut in self.waiting:
            if m != model or fut.done():
                rest.append((m, fut))
            elif error is not None:
                fut.set_exception(error)
            else:
                self.inflight += 1
                fut.set_result(None)
        self.waiting = rest
        self.switching = False
        self._kick()


def create_app(engine_url: str, models: dict[str, str], current: str | None = None) -> FastAPI:
    app = FastAPI(title="loraplex reload proxy (benchmark mode C)")
    http = httpx.AsyncClient(base_url=engine_url, timeout=httpx.Timeout(600, connect=10))

    async def reload(model: str) -> None:
        r = await http.post("/collective_rpc", json={"method": "reload_weights",
                                                     "kwargs": {"weights_path": models[model]}})
        if r.status_code != 200:
            raise RuntimeError(f"reload_weights({models[model]}) failed: HTTP {r.status_code} {r.text[:300]}")
        r = await http.post("/reset_prefix_cache")
        if r.status_code != 200:
            raise RuntimeError(f"reset_prefix_cache failed: HTTP {r.status_code} {r.text[:300]}")

    sw = Switcher(reload, current)
    app.state.switcher = sw

    @app.get("/stats")
    async def stats():
        return {"current": sw.current, "switches": sw.switches, "reload_s": round(sw.reload_s, 4),
                "waiting": len(sw.waiting), "inflight": sw.inflight}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in models]}

    async def forward(request: Request, path: str):
        body = await request.json()
        model = body.get("model")
        if model not in models:
            return JSONResponse(error_body(f"model {model!r} is not served here", "invalid_request_error",
                                           "model_not_found", param="model"), status_code=404)
        try:
            await sw.acquire(model)
        except RuntimeError as e:
            return JSONResponse(error_body(str(e), code="engine_error"), status_code=502)
        try:
            upstream = await http.send(http.build_request("POST", path, json={**body, "model": SERVED}), stream=True)
        except BaseException:
            sw.release()
            raise

        async def relay():
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()
                sw.release()

        return StreamingResponse(relay(), status_code=upstream.status_code,
                                 media_type=upstream.headers.get("content-type", "application/json"))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await forward(request, "/v1/completions")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await forward(request, "/v1/chat/completions")

    return app


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True, help="URL of the reload engine (started with VLLM_SERVER_DEV_MODE=1)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--models", required=True, help='JSON {"model name": "merged model directory"}')
    p.add_argument("--current", default=None, help="model whose weights the engine holds at start")
    args = p.parse_args()
    models = json.loads(args.models)
    missing = [d for d in models.values() if not (Path(d) / "config.json").exists()]
    if missing:
        raise SystemExit(f"reload proxy: not model directories (no config.json): {missing}")
    uvicorn.run(create_app(args.engine, models, args.current), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
