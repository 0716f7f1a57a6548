"""What every console page shares: the templates, the session check, the CSRF check, rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from serving.console.session import COOKIE, ConsoleSessions, Session

HERE = Path(__file__).parent
PREFIX = "/console"
templates = Jinja2Templates(directory=HERE / "templates")
CSRF_REFUSED = ("the form's security token (CSRF) is missing or stale: reload the page and submit the form again; "
                "forms of other sites cannot act here")


class LoginRequired(Exception):
    """No valid session: the handler (see `mount`) sends the browser to the login form."""


class CsrfRefused(Exception):
    """A form without the session's CSRF token."""


def sessions_of(request: Request) -> ConsoleSessions:
    """The app's console sessions, made on first use from the gateway's admin key."""
    state = request.app.state
    if getattr(state, "console_sessions", None) is None:
        key = state.gateway.settings.admin_key
        state.console_sessions = ConsoleSessions(key.get_secret_value() if key else None)
    return state.console_sessions


async def current_session(request: Request) -> Session:
    session = sessions_of(request).read(request.cookies.get(COOKIE))
    if session is None:
        raise LoginRequired()
    return session


async def checked_form(request: Request, session: Annotated[Session, Depends(current_session)]) -> dict:
    """A POSTed form whose CSRF token matches the session's; its fields as a dict."""
    form = await request.form()
    if not sessions_of(request).csrf_ok(session, form.get("csrf")):
        raise CsrfRefused()
    return {k: v for k, v in form.items() if isinstance(v, str)}


SessionDep = Annotated[Session, Depends(current_session)]
FormDep = Annotated[dict, Depends(checked_form)]


def render(request: Request, template: str, session: Session | None, status: int = 200, **context) -> HTMLResponse:
    """A page with the navigation, the session's CSRF token and `context`; never cached (keys, live data)."""
    context.setdefault("notice", request.query_params.get("ok"))
    response = templates.TemplateResponse(request, template, {"session": session, "prefix": PREFIX, **context},
                                          status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def done(path: str, message: str) -> RedirectResponse:
    """After a successful write: back to a page (GET) with a notice, so a reload does not repeat the write."""
    from urllib.parse import quote

    return RedirectResponse(f"{PREFIX}{path}?ok={quote(message)}", status_code=303)
