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
import subprocess
import sys
import time
from types import SimpleNamespace

import aiohttp
import httpx
import uvicorn


def relay_app(engine_url: str):
    state: dict = {}

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
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


class RelayProcess:
    """The relay as its own process, as `hop.cpu_per_request` measures a gateway (`running.url`, `cpu_s`)."""

    def __init__(self, engine_url: str, port: int):
        import psutil

        self.proc = subprocess.Popen([sys.executable, "-m", "loadtest.latency.min_relay", "--engine", engine_url,
                                      "--port", str(port)])
        self.ps = psutil.Process(self.proc.pid)
        self.running = SimpleNamespace(url=f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.running.url + "/health", timeout=5)
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("the minimal relay did not start") from None
                time.sleep(0.2)

    def cpu_s(self) -> float:
        from loadtest.hotswap.engines import process_cpu_s

        return process_cpu_s(self.ps)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(relay_app(args.engine.rstrip("/")), host="127.0.0.1", port=args.port, http="httptools",
                loop="uvloop", log_level="warning")


if __name__ == "__main__":
    main()
