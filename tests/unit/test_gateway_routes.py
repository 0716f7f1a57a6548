"""The gateway's routes stay on the event loop: no endpoint or dependency is a plain function.

FastAPI runs a plain `def` endpoint or dependency in its thread pool: a thread hop for every request that
uses it. Measured on `get_gateway` (every route's dependency): 1.19 ms of gateway CPU per refused request
with the hop, 0.85 ms without — a flood of refusals paid it 40 times a second.
"""

import inspect
from types import SimpleNamespace

from fastapi.routing import APIRoute

from serving.app import create_app
from serving.operator_app import create_operator_app


def _calls(dependant):
    yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def test_every_endpoint_and_dependency_is_async():
    app = create_app()  # the gateway itself is built at start-up; the routes exist already
    operator = create_operator_app(SimpleNamespace())
    routes = [r for a in (app, operator) for r in a.routes if isinstance(r, APIRoute)]
    assert {"/v1/completions", "/admin/tenants", "/metrics"} <= {r.path for r in routes}
    sync = {f"{r.path}: {getattr(c, '__qualname__', c)}" for r in routes for c in _calls(r.dependant)
            if c is not None and not inspect.iscoroutinefunction(c)}
    assert not sync, f"these run in the thread pool on every request: {sorted(sync)}"
