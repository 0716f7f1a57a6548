"""Read-only views: the audit log, and the benchmark reports (docs/benchmarks.md, its plots, var/bench runs)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from markdown_it import MarkdownIt
from markupsafe import Markup

from common.errors import LoraplexError, NotFound
from registry.audit import AuditAction, AuditQuery, parse_time
from serving.audit_trail import audit_log_of
from serving.console.web import PREFIX, SessionDep, render

router = APIRouter(prefix=PREFIX, include_in_schema=False)  # pages, not API
CHECKOUT = Path(__file__).resolve().parents[2]  # docs/ and var/ exist in a checkout, not in an installed wheel
DOCS, BENCH_RUNS = CHECKOUT / "docs", CHECKOUT / "var" / "bench"
FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")
SHOWN = {"img": DOCS / "img", "data": DOCS / "data"}


@router.get("/audit")
async def audit(request: Request, session: SessionDep, tenant: str | None = None, action: str | None = None,
                since: str | None = None, before: str | None = None):
    gw = request.app.state.gateway
    error, events, cursor = None, [], None
    try:
        q = AuditQuery(tenant=tenant or None, action=AuditAction(action) if action else None,
                       since=parse_time(since or None, "since"), before=before or None, limit=100)
        events, cursor = await asyncio.to_thread(audit_log_of(gw).query, q)
    except LoraplexError as e:
        error = e.message
    except ValueError:  # AuditAction(...)
        error = f"unknown action {action!r}: pick one from the list"
    return render(request, "audit.html", session, 200 if error is None else 400, events=events, cursor=cursor,
                  actions=[a.value for a in AuditAction], filters={"tenant": tenant, "action": action,
                                                                    "since": since}, error=error)


def benchmarks_html() -> Markup | None:
    """docs/benchmarks.md as HTML (raw HTML in it escaped), its relative links pointed at this console."""
    path = DOCS / "benchmarks.md"
    if not path.is_file():
        return None
    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(path.read_text())
    html = re.sub(r'(src|href)="(img|data)/', rf'\1="{PREFIX}/benchmarks/\2/', html)
    return Markup(html)


def runs() -> list[dict]:
    """The plots of the benchmark runs under var/bench/<run>/, newest run first."""
    if not BENCH_RUNS.is_dir():
        return []
    found = [d for d in BENCH_RUNS.iterdir() if d.is_dir() and FILE_RE.match(d.name)]
    return [{"name": d.name, "plots": sorted(p.name for p in d.glob("*.png") if FILE_RE.match(p.name))}
            for d in sorted(found, key=lambda d: d.stat().st_mtime, reverse=True)]


@router.get("/benchmarks")
async def benchmarks(request: Request, session: SessionDep):
    report, bench_runs = await asyncio.to_thread(lambda: (benchmarks_html(), runs()))
    return render(request, "benchmarks.html", session, report=report, runs=bench_runs)


@router.get("/benchmarks/{where}/{name}")
async def report_file(where: str, name: str, session: SessionDep):
    folder = SHOWN.get(where) or (BENCH_RUNS / where if FILE_RE.match(where) else None)
    path = folder / name if folder is not None and FILE_RE.match(name) else None
    if path is None or not path.is_file():
        raise NotFound(f"no report file {where}/{name}: the benchmarks page lists what there is")
    return FileResponse(path, headers={"Cache-Control": "no-store"})
