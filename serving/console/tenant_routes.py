"""Tenants: quotas, usage, adapters, keys; create, rotate a key (shown once), change quotas, delete.

Every write calls the /admin API's own handlers (serving/routes/admin.py), so the checks, the audit events
and the gateway's cache invalidation are the same as through the API.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import ValidationError

from common.errors import InvalidRequest, LoraplexError
from serving.admission.quotas import QUOTA_KEYS, QuotaChange
from serving.console.sampler import tenant_totals
from serving.console.web import PREFIX, FormDep, SessionDep, done, render
from serving.deps import GatewayDep
from serving.routes import admin

router = APIRouter(prefix=PREFIX, include_in_schema=False)  # pages, not API


def quota_change(form: dict, keep_blank: bool) -> QuotaChange:
    """The quota fields of a form: a whole number (0: unlimited); blank removes the limit, or, when
    `keep_blank`, leaves it out."""
    changes = {}
    for key in QUOTA_KEYS:
        raw = (form.get(key) or "").strip()
        if not raw:
            if not keep_blank:
                changes[key] = None
            continue
        if not raw.isdigit():
            raise InvalidRequest(f"{key.replace('_', ' ')} must be a whole number >= 0 (0: unlimited), "
                                 f"not {raw[:20]!r}", param=key)
        changes[key] = int(raw)
    return QuotaChange(**changes)


async def tenant_rows(gw) -> list[dict]:
    tenants = [t.model_dump(mode="json") for t in await asyncio.to_thread(gw.tenants.list)]
    usage = tenant_totals()

    def adapters(name: str) -> list[str]:
        return [i.name for i in gw.adapters.list_adapters(name)]

    names = await asyncio.gather(*(asyncio.to_thread(adapters, t["name"]) for t in tenants))
    return [{**t, "adapters": a, "usage": usage.get(t["name"], {})} for t, a in zip(tenants, names)]


async def page(request: Request, session, gw, status: int = 200, **context):
    return render(request, "tenants.html", session, status, tenants=await tenant_rows(gw), quota_keys=QUOTA_KEYS,
                  **context)


def refusal(e: Exception) -> tuple[int, str]:
    if isinstance(e, LoraplexError):
        return e.status, e.message
    first = e.errors()[0] if isinstance(e, ValidationError) and e.errors() else {}
    return 400, f"invalid {'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg', e)}"


@router.get("/tenants")
async def tenants(request: Request, session: SessionDep, gw: GatewayDep):
    return await page(request, session, gw)


@router.post("/tenants")
async def create(request: Request, session: SessionDep, form: FormDep, gw: GatewayDep):
    try:
        body = admin.TenantCreate(name=form.get("name", "").strip(), quotas=quota_change(form, keep_blank=True))
        created = await admin.create_tenant(body, gw)
    except (LoraplexError, ValidationError) as e:
        status, message = refusal(e)
        return await page(request, session, gw, status, error=message, form=form)
    return await page(request, session, gw, new_key={"tenant": created["name"], "key": created["api_key"]},
                      notice=f"tenant {created['name']} created")


@router.post("/tenants/{name}/rotate")
async def rotate(name: str, request: Request, session: SessionDep, form: FormDep, gw: GatewayDep):
    try:
        rotated = await admin.rotate_key(name, gw)
    except LoraplexError as e:
        return await page(request, session, gw, e.status, error=e.message)
    return await page(request, session, gw, new_key={"tenant": name, "key": rotated["api_key"]},
                      notice=f"{name}'s key rotated: the old key no longer works")


@router.post("/tenants/{name}/quotas")
async def quotas(name: str, request: Request, session: SessionDep, form: FormDep, gw: GatewayDep):
    try:
        await admin.update_tenant(name, admin.TenantUpdate(quotas=quota_change(form, keep_blank=False)), gw)
    except (LoraplexError, ValidationError) as e:
        status, message = refusal(e)
        return await page(request, session, gw, status, error=message)
    return done("/tenants", f"{name}'s quotas saved")


@router.post("/tenants/{name}/delete")
async def delete(name: str, request: Request, session: SessionDep, form: FormDep, gw: GatewayDep):
    if form.get("confirm", "").strip() != name:
        return await page(request, session, gw, 400, error=f"not deleted: type the tenant's name ({name}) in the "
                          "confirmation field to delete it with its adapters and key")
    try:
        await admin.delete_tenant(name, gw)
    except LoraplexError as e:
        return await page(request, session, gw, e.status, error=e.message)
    return done("/tenants", f"tenant {name} deleted with its adapters; its key no longer works")
