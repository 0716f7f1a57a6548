"""Overview (health, traffic charts, what fills the engine) and Residency (engine slots, caches)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Request

from serving.console.charts import line_chart
from serving.console.sampler import SAMPLER
from serving.console.web import PREFIX, SessionDep, render
from serving.deps import GatewayDep
from serving.transport.http import HttpTransport

router = APIRouter(prefix=PREFIX, include_in_schema=False)  # pages, not API


def charts() -> list:
    s = SAMPLER.series()
    return [line_chart(s["requests"], "Requests", "req/s"), line_chart(s["tokens"], "Generated tokens", "tok/s"),
            line_chart(s["ttft_p50"], "Time to first token, p50", "ms"),
            line_chart(s["ttft_p99"], "Time to first token, p99", "ms"),
            line_chart(s["errors"], "Errors (engine or gateway)", "/s"),
            line_chart(s["refused"], "Refused (quota, overload)", "/s")]


def engine_names(names: list[str]) -> list[dict]:
    """Engine-side adapter names (serving/residency.py: lpx:TENANT:ADAPTER:VERSION) as table rows."""
    rows = []
    for name in names:
        parts = name.split(":")
        rows.append(dict(zip(("tenant", "adapter", "version"), parts[1:])) if len(parts) == 4 and parts[0] == "lpx"
                    else {"tenant": "?", "adapter": name, "version": ""})
    return rows


def disk_cache(root: Path) -> list[dict]:
    """Versions in the gateway's verified disk cache (`<root>/<tenant>/<name>/<version>/`), newest use first."""
    rows = []
    for path in root.glob("*/*/*"):
        if path.is_dir() and not any(p.startswith(".") for p in path.relative_to(root).parts):
            files = [f for f in path.iterdir() if f.is_file()]
            used = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M:%S")
            tenant, name, version = path.relative_to(root).parts
            rows.append({"tenant": tenant, "adapter": name, "version": version, "used": used,
                         "bytes": sum(f.stat().st_size for f in files)})
    return sorted(rows, key=lambda r: r["used"], reverse=True)


@router.get("")
async def overview(request: Request, session: SessionDep, gw: GatewayDep):
    ok, detail = await gw.readiness()
    supervisor = gw.supervisor
    workers = {"admission": "draining" if gw.admission.closed else "open",
               "in flight": gw.admission.inflight, "queued": gw.admission.queued,
               "engine process": ("managed, restarting" if getattr(supervisor, "down", False) else "managed")
               if supervisor else "external"}
    return render(request, "overview.html", session, ready=ok, detail=detail, workers=workers, charts=charts(),
                  resident=len(gw.residency.resident), capacity=gw.residency.capacity, slots=gw.settings.max_loras,
                  cache_bytes=gw.cache.total_bytes(), cache_max=gw.cache.max_bytes, every_s=SAMPLER.every_s)


@router.get("/charts")
async def chart_fragment(request: Request, session: SessionDep):
    """The overview's charts alone, which the page's script reloads every few seconds."""
    return render(request, "charts.html", session, charts=charts())


async def pins(gw) -> list[dict]:
    """The operators' pins (registry/pins.py) with the version each keeps now, as the tiers last resolved them
    (re-read every LORAPLEX_PINS_REFRESH_S): reading them here loads nothing."""
    if gw.tiers is None:  # Ray: the replicas keep their own adapters
        return []
    held = {(m.tenant, m.name): m.version for m in gw.tiers.pinned.values()}
    return [{"tenant": p.tenant, "adapter": p.name, "ref": p.ref, "version": held.get((p.tenant, p.name))}
            for p in await asyncio.to_thread(gw.tiers.pins.list)]


@router.get("/residency")
async def residency(request: Request, session: SessionDep, gw: GatewayDep):
    local = isinstance(gw.transport, HttpTransport)
    cached = await asyncio.to_thread(disk_cache, gw.cache.root)
    return render(request, "residency.html", session, local=local, engine=engine_names(gw.residency.resident),
                  pins=await pins(gw),
                  capacity=gw.residency.capacity, slots=gw.settings.max_loras, cached=cached,
                  cache_bytes=gw.cache.total_bytes(), cache_max=gw.cache.max_bytes, stats=dict(gw.cache.stats))
