"""A tenant's adapters: versions with their metadata and health, aliases moved by compare-and-swap, deletes.

An alias form carries the version the page showed (`expected_version`): the registry's compare-and-swap
(registry/aliases.py) refuses the move if the alias changed since, and the page says so and shows where it
points now, so a stale page never overwrites a newer promotion. Writes are audited with the actor `admin`.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from common.errors import AliasConflict, LoraplexError, VersionInUse
from registry.audit import AuditAction
from serving import alias_moves
from serving.audit_trail import ADMIN, audited
from serving.console.charts import bar_chart
from serving.console.web import PREFIX, FormDep, SessionDep, done, render
from serving.deps import GatewayDep

router = APIRouter(prefix=PREFIX, include_in_schema=False)  # pages, not API


def health_chart(manifest) -> object | None:
    """Effective rank per module (of the version's rank): where the update's energy sits."""
    per_module = (manifest.health or {}).get("per_module") or {}
    bars = [(module, row.get("effective_rank") or 0.0) for module, row in sorted(per_module.items())][:48]
    return bar_chart(bars, f"{manifest.ref}: effective rank per module (of rank {manifest.rank})",
                     limit=manifest.rank) if bars else None


async def page(request: Request, session, gw, tenant: str, status: int = 200, **context):
    record = await asyncio.to_thread(gw.tenants.get, tenant)  # TenantNotFound: the 404 page
    infos = await asyncio.to_thread(gw.adapters.list_adapters, tenant)
    adapters = [{"info": i, "by_version": {v: [a for a, t in sorted(i.aliases.items()) if t == v]
                                           for v in (m.version for m in i.versions)},
                 "charts": [c for c in (health_chart(m) for m in i.versions[:3]) if c is not None]}
                for i in infos]
    return render(request, "tenant.html", session, status, tenant=record, adapters=adapters, **context)


@router.get("/tenants/{tenant}")
async def tenant_adapters(tenant: str, request: Request, session: SessionDep, gw: GatewayDep):
    try:
        return await page(request, session, gw, tenant)
    except LoraplexError as e:
        return render(request, "message.html", session, e.status, error=e.message)


def conflict_message(alias: str, name: str, version: str, current: str | None) -> str:
    now = f"it points to {current} now" if current else "it does not exist now"
    return (f"conflict: {name}@{alias} changed since this page was loaded ({now}), so {version} was not promoted "
            f"and nothing was overwritten. The page below shows the current state: promote again if you still "
            f"want {version}.")


@router.post("/tenants/{tenant}/adapters/{name}/aliases")
async def move_alias(tenant: str, name: str, request: Request, session: SessionDep, form: FormDep, gw: GatewayDep):
    alias, version = form.get("alias", "").strip(), form.get("version", "").strip()
    expected = form.get("expected_version", "").strip() or None
    try:
        await alias_moves.move_alias(gw, actor=ADMIN, tenant=tenant, name=name, alias=alias, version=version,
                                     expected=expected, warm=form.get("warm") == "on")
    except AliasConflict:
        current = (await asyncio.to_thread(gw.adapters.get_adapter, tenant, name)).aliases.get(alias)
        return await page(request, session, gw, tenant, 409, error=conflict_message(alias, name, version, current))
    except LoraplexError as e:
        return await page(request, session, gw, tenant, e.status, error=e.message)
    was = f" (was {expected})" if expected else ""
    return done(f"/tenants/{tenant}", f"{name}@{alias} now points to {version}{was}")


@router.post("/tenants/{tenant}/adapters/{name}/versions/{version}/delete")
async def delete_version(tenant: str, name: str, version: str, request: Request, session: SessionDep, form: FormDep,
                         gw: GatewayDep):
    try:
        async with audited(gw, AuditAction.ADAPTER_DELETE, actor=ADMIN, tenant=tenant, target=f"{name}@{version}"):
            await asyncio.to_thread(gw.adapters.delete_version, tenant, name, version)
    except VersionInUse as e:
        return await page(request, session, gw, tenant, 409, error=f"not deleted: {e.message}")
    except LoraplexError as e:
        return await page(request, session, gw, tenant, e.status, error=e.message)
    gw.forget_models(tenant, name)
    return done(f"/tenants/{tenant}", f"{name}@{version} deleted")
