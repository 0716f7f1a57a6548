"""A canned OpenAI-compatible engine for measuring the gateway's own CPU per request (the hop part).

Measured beside a real engine, the gateway's CPU per request mixes its own work with what the host makes each
wake-up cost: with answers 50 ms apart (or tokens a few ms apart) every event finds the gateway's caches cold,
and on a 2-core host it shares them with the engine. This engine answers at once (`delay_s` 0: the gateway's
own work, requests back to back) or after `delay_s` (the whole answer, spread over a stream's chunks: paced
like a real engine, without its CPU). It answers what the gateway sends on the inference path: completions
(whole or streamed, with a usage chunk), adapter load/unload, the model list and /health. It computes
nothing: a benchmark tool, never a stand-in for vLLM in a test of the product.

Run: `python -m loadtest.latency.canned_engine --port PORT [--delay-s S]`.
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
from aiohttp import web

WORD = " tok"


def _chunk(model: str, text: str | None, usage: dict | None = None) -> bytes:
    choices = [] if text is None else [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]
    body = {"id": "cmpl-canned", "object": "text_completion", "created": 0, "model": model, "choices": choices,
            "usage": usage}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def canned_app(delay_s: float = 0.0) -> web.Application:
    loaded: set[str] = set()

    async def completions(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        model, tokens = body["model"], int(body.get("max_tokens") or 16)
        usage = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
        if not body.get("stream"):
            if delay_s:
                await asyncio.sleep(delay_s)
            return web.Response(body=orjson.dumps({
                "id": "cmpl-canned", "object": "text_completion", "created": 0, "model": model,
                "choices": [{"index": 0, "text": WORD * tokens, "logprobs": None, "finish_reason": "length"}],
                "usage": usage}), content_type="application/json")
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        for _ in range(tokens):
            if delay_s:
                await asyncio.sleep(delay_s / tokens)
            await reply.write(_chunk(model, WORD))
        if (body.get("stream_options") or {}).get("include_usage"):
            await reply.write(_chunk(model, None, usage))
        await reply.write(b"data: [DONE]\n\n")
        return reply

    async def load(request: web.Request) -> web.Response:
        loaded.add(orjson.loads(await request.read())["lora_name"])
        return web.Response(text="ok")

    async def unload(request: web.Request) -> web.Response:
        loaded.discard(orjson.loads(await request.read())["lora_name"])
        return web.Response(text="ok")

    async def models(request: web.Request) -> web.Response:
        data = [{"id": "base", "object": "model"}] + [{"id": n, "object": "model", "parent": "base"} for n in loaded]
        return web.json_response({"object": "list", "data": data})

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/load_lora_adapter", load)
    app.router.add_post("/v1/unload_lora_adapter", unload)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-s", type=float, default=0.0, help="seconds per answer (spread over a stream)")
    args = parser.parse_args(argv)
    web.run_app(canned_app(args.delay_s), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
