"""Recording write attempts in the audit log (registry/audit.py) from the routes, where the actor and the
request id are known.

A route wraps its write in `audited(...)`: the event is written after the write ended, with outcome `ok` or
the error code the caller gets. Writes refused before the route runs (no or a bad key: 401; a malformed
JSON body: 400) are not recorded: they have no authenticated actor, and recording them would let anyone
fill the log.

If the audit write itself fails, the user's write stands and its answer is unchanged (never a 5xx for a
write that happened): the event is logged in full at error level (so it is not lost: it carries no secret)
and counted in `loraplex_audit_write_failures_total`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.errors import LoraplexError
from registry.audit import AuditAction, AuditLog
from serving import metrics
from serving.logs import request_id

log = logging.getLogger(__name__)
ADMIN = "admin"  # the actor of admin-key writes


def audit_log_of(gw) -> AuditLog:
    """The gateway's audit log: its registry bucket (cheap to build, no I/O)."""
    return AuditLog(gw.store)


@asynccontextmanager
async def audited(gw, action: AuditAction, *, actor: str, tenant: str,
                  target: str | None = None) -> AsyncIterator[dict]:
    """Record the write done in the `async with` body; the body fills the yielded dict with the detail
    (version, digest, alias before/after, ...). Exceptions pass through unchanged."""
    detail: dict = {}
    try:
        yield detail
    except LoraplexError as e:
        if getattr(e, "rule", None):
            detail["rule"] = e.rule  # which validation rule refused an upload
        await record(gw, action, actor=actor, tenant=tenant, target=target, detail=detail, outcome=e.code)
        raise
    except Exception:
        await record(gw, action, actor=actor, tenant=tenant, target=target, detail=detail,
                     outcome="internal_error")
        raise
    await record(gw, action, actor=actor, tenant=tenant, target=target, detail=detail, outcome="ok")


async def record(gw, action: AuditAction, *, actor: str, tenant: str, target: str | None, detail: dict,
                 outcome: str) -> None:
    """Append one event; a failure is logged with the event and counted, never raised."""
    audit = audit_log_of(gw)
    event = audit.new_event(actor=actor, tenant=tenant, action=action, target=target, detail=detail,
                            outcome=outcome, request_id=request_id.get())
    try:
        await asyncio.to_thread(audit.append, event)
    except Exception as e:  # S3 down or refusing: the write it describes has happened (or was refused) anyway
        metrics.AUDIT_WRITE_FAILURES.labels(action.value).inc()
        log.error("audit event not stored", extra={"fields": {
            "error": f"{type(e).__name__}: {e}", "audit_event": event.model_dump(mode="json")}})
