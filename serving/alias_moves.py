"""One alias move, as both the tenants' API and the operators' console do it: a compare-and-swap in the
registry, recorded in the audit log, the gateway's cached resolution of the name dropped (also after a
conflict: someone else moved it), and the residency tiers told (a pinned alias moves its pin; `warm` loads the
new version before its traffic)."""

from __future__ import annotations

import asyncio

from registry.audit import AuditAction
from serving.audit_trail import audited


async def move_alias(gw, *, actor: str, tenant: str, name: str, alias: str, version: str,
                     expected: str | None, warm: bool = False) -> dict:
    """Point `name@alias` at `version` if it still points at `expected` (None: create); the registry's answer.
    Raises AliasConflict (409) when it moved meanwhile."""
    try:
        async with audited(gw, AuditAction.ADAPTER_ALIAS, actor=actor, tenant=tenant,
                           target=f"{name}@{alias}") as detail:
            detail.update(version=version, expected_version=expected)  # what was asked
            out = await asyncio.to_thread(gw.adapters.set_alias, tenant, name, alias, version, expected)
            detail.clear()  # the swap held: the alias moved from expected (None: created) to version
            detail.update(before=out["previous_version"], after=out["version"])
    finally:
        gw.forget_models(tenant, name)
    if gw.tiers is not None:
        manifest = await asyncio.to_thread(gw.adapters.resolve, tenant, f"{name}@{out['version']}")
        await gw.tiers.after_alias_move(manifest, warm)
    return out
