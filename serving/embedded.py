"""Run a gateway app inside the current process (tests and benchmarks that stand up their own stack)."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI


def serve_in_thread(app: FastAPI, port: int, host: str = "127.0.0.1", timeout: float = 30) -> uvicorn.Server:
    """Start uvicorn for `app` on a daemon thread and return once it accepts connections.

    Stop it with `server.should_exit = True`.
    """
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True, name=f"gateway-{port}").start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway on port {port} did not start within {timeout}s")
        time.sleep(0.05)
    return server
