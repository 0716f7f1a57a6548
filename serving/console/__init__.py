"""The operator console: server-rendered pages on the operator plane at /console (never the tenants' port).

`mount(app)` adds its routes, static files and error pages to the operator app and starts the metrics
sampler. The pages call the same registry and admin-route code as the /admin API; docs/console.md shows them.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from serving.console import adapter_routes, auth_routes, job_routes, overview_routes, report_routes, tenant_routes
from serving.console.sampler import SAMPLER
from serving.console.session import COOKIE
from serving.console.web import CSRF_REFUSED, HERE, PREFIX, CsrfRefused, LoginRequired, render, sessions_of


async def _to_login(request: Request, exc: LoginRequired):
    return RedirectResponse(f"{PREFIX}/login", status_code=303)


async def _csrf_refused(request: Request, exc: CsrfRefused):
    session = sessions_of(request).read(request.cookies.get(COOKIE))
    return render(request, "message.html", session, status=403, error=CSRF_REFUSED)


def mount(app: FastAPI) -> None:
    """Serve the console from `app` (the operator app) and start sampling the metrics for its charts."""
    for module in (auth_routes, overview_routes, tenant_routes, adapter_routes, job_routes, report_routes):
        app.include_router(module.router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.add_exception_handler(LoginRequired, _to_login)
    app.add_exception_handler(CsrfRefused, _csrf_refused)
    SAMPLER.start()
