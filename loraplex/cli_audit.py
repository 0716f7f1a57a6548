"""`loraplex audit`: the registry's audit log, through `GET /admin/audit` (admin key)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loraplex.cli_model import api_call
from loraplex.client import GatewayClient

console = Console()


def _detail(event: dict) -> str:
    d = event.get("detail") or {}
    if "after" in d:  # an alias move
        return f"{d.get('before') or '(new)'} → {d['after']}"
    return ", ".join(f"{k}={v}" for k, v in d.items() if k != "sha256")


def audit_command(
    tenant: str | None = typer.Option(None, "--tenant", help="only events on this tenant's namespace"),
    action: str | None = typer.Option(None, "--action", help="e.g. adapter.alias, tenant.rotate_key"),
    since: str | None = typer.Option(None, "--since", help="ISO-8601 time (UTC unless an offset is given)"),
    until: str | None = typer.Option(None, "--until", help="ISO-8601 time, exclusive"),
    limit: int = typer.Option(50, "--limit", min=1, help="most events to show"),
    as_json: bool = typer.Option(False, "--json", help="print the events as a JSON list"),
) -> None:
    """Show the audit log of writes (tenants, keys, adapters, models), newest first (admin key)."""
    events = api_call(lambda: GatewayClient.from_env(admin=True).audit_events(
        limit, tenant=tenant, action=action, since=since, until=until))
    if as_json:
        print(json.dumps(events, indent=2))
        return
    table = Table("time", "actor", "tenant", "action", "target", "outcome", "detail", "request id")
    for e in events:
        outcome = "[green]ok[/]" if e["outcome"] == "ok" else f"[red]{escape(e['outcome'])}[/]"
        table.add_row(e["time"], escape(e["actor"]), escape(e["tenant"]), e["action"], escape(e.get("target") or ""),
                      outcome, escape(_detail(e)), e["request_id"])
    console.print(table)
