"""Log in with the admin key, log out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from serving.console.session import COOKIE, MAX_AGE_S
from serving.console.web import PREFIX, FormDep, SessionDep, render, sessions_of

router = APIRouter(prefix=PREFIX, include_in_schema=False)  # pages, not API


@router.get("/login")
async def login_form(request: Request):
    if sessions_of(request).read(request.cookies.get(COOKIE)) is not None:
        return RedirectResponse(PREFIX, status_code=303)
    return render(request, "login.html", None)


@router.post("/login")
async def login(request: Request):
    # No CSRF token before a session exists: SameSite=Strict and the admin key itself guard this form.
    form = await request.form()
    key = form.get("key")
    cookie, refusal = sessions_of(request).login(key if isinstance(key, str) else "")
    if cookie is None:
        return render(request, "login.html", None, status=401, error=refusal)
    response = RedirectResponse(PREFIX, status_code=303)
    response.set_cookie(COOKIE, cookie, max_age=MAX_AGE_S, path=PREFIX, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionDep, form: FormDep):
    sessions_of(request).logout(session)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response
