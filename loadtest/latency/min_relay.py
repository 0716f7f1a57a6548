"""The least a relay on the gateway's HTTP stack can cost: the floor under the hop part's gateway CPU rows.

The same server (uvicorn with httptools, on uvloop) and the same engine client (one aiohttp session), and
nothing else: no key, no registry, no admission, no metrics, no rewriting; each chunk the engine sends is
passed on as it comes. Measured beside the gateway over the same canned engine, it says which part of the
gateway's CPU per request is its own work and which part every event costs any relay on this stack and host.
A benchmark tool, never part of the product.

Run: `python -m loadtest.latency.min_relay --engine URL --port PORT`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import aiohttp
import uvicorn

from common.procs import free_port
from loadtest.latency.hop import ServerProcess


def relay_app(engine_url: str):
    state: dict = {}

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/ready":  # answered here: the start-up check
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        if "session" not in state:  # made on the server's loop
            state["session"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        async with state["session"].post(engine_url + scope["path"], data=body,
                                         headers={"Content-Type": "application/json"}) as r:
            await send({"type": "http.response.start", "status": r.status,
                        "headers": [(b"content-type", r.headers.get("Content-Type", "").encode())]})
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


class RelayProcess(ServerProcess):
    """The relay as its own process, measured as the gateway is (`hop.cpu_per_request`)."""

    def __init__(self, engine_url: str, log: Path):
        port = free_port()
        super().__init__([sys.executable, "-m", "loadtest.latency.min_relay", "--engine", engine_url, "--port",
                          str(port)], f"http://127.0.0.1:{port}", log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(relay_app(args.engine.rstrip("/")), host="127.0.0.1", port=args.port, http="httptools",
                loop="uvloop", log_level="warning")


if __name__ == "__main__":
    main()
