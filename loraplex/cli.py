"""`loraplex`: the command line. Stack control runs locally; everything else goes through the gateway's API."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from loraplex import stack
from loraplex.cli_audit import audit_command
from loraplex.cli_bench import bench_app
from loraplex.cli_ft import ft_app, worker_command
from loraplex.cli_model import api_call as _api
from loraplex.cli_model import model_app
from loraplex.cli_train import compose_command, train_app
from loraplex.client import ADAPTER_FILES, GatewayClient
from loraplex.progress import byte_progress, files_bytes

app = typer.Typer(help="loraplex: multi-tenant LoRA serving.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants (admin key).", no_args_is_help=True)
adapter_app = typer.Typer(help="The caller's adapters (tenant key).", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(adapter_app, name="adapter")
app.add_typer(train_app, name="train")
app.add_typer(bench_app, name="bench")
app.add_typer(model_app, name="model")
adapter_app.command("compose")(compose_command)
app.command("audit")(audit_command)
app.add_typer(ft_app, name="ft")
app.command("worker")(worker_command)
console = Console()


@app.command()
def up(ray: bool = typer.Option(False, "--ray", help="Serve through Ray Serve on a local Ray cluster: the gateway "
                                                     "as ingress, LORAPLEX_RAY_ENGINE_REPLICAS engine replicas "
                                                     "(docs/scale-out.md).")) -> None:
    """Start the embedded stack (SeaweedFS, vLLM engine, gateway) in the background; returns when ready."""
    try:
        stack.up(ray=ray)
    except stack.StartupFailed:
        raise typer.Exit(1) from None  # stack.up printed the cause and the log's path


serve_app = typer.Typer(help="Run loraplex on a serving framework.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


@serve_app.command("ray")
def serve_ray(
    address: str | None = typer.Option(None, "--address", help="Ray cluster to deploy to (e.g. auto, "
                                          "ray://head:10001); without it a local cluster runs in the foreground."),
    replicas: int | None = typer.Option(None, "--replicas", help="Engine replicas (LORAPLEX_RAY_ENGINE_REPLICAS)."),
    adapters_per_replica: int | None = typer.Option(None, "--adapters-per-replica",
                                                       help="Adapters each replica keeps loaded (its LRU)."),
    routing: str | None = typer.Option(None, "--routing", help="affinity (default) or random."),
) -> None:
    """Deploy the gateway (ingress) and the engine replicas as a Ray Serve application.

    Configuration comes from LORAPLEX_* and LORAPLEX_RAY_* (docs/scale-out.md); the LORAPLEX_*, AWS_* and
    VLLM_* variables of this shell travel to the replicas."""
    from serving import ray_app
    from serving.ray_settings import RaySettings

    overrides = {k: v for k, v in {"address": address, "engine_replicas": replicas,
                                   "adapters_per_replica": adapters_per_replica, "routing": routing}.items()
                 if v is not None}
    settings = RaySettings(**overrides)
    if settings.address is None:
        ray_app.run_local(ray_settings=settings)
        return
    url = ray_app.deploy(settings)
    console.print(f"[green]deployed[/] {settings.app_name!r} to {settings.address}: gateway at {url} "
                  f"({settings.engine_replicas} engine replicas, routing {settings.routing})")


@app.command()
def down() -> None:
    """Stop every process of the embedded stack."""
    stack.down()


@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the embedded stack's processes and readiness (exit 1 when not ready)."""
    st = stack.status()
    if as_json:
        print(json.dumps(st, indent=2))
    else:
        for name, p in st["processes"].items():
            console.print(f"{name:8} pid {p['pid']:>7}  {'[green]alive[/]' if p['alive'] else '[red]dead[/]'}")
        console.print(f"ready: {st['ready']}  {st.get('detail', 'no stack (run make up)')}")
    raise typer.Exit(0 if st["ready"] else 1)


@app.command()
def demo() -> None:
    """Start the stack, register the demo tenants and adapters, show each tenant's answers, fine-tune one model."""
    from loraplex.cli_demo import run_demo
    from loraplex.demo_job import DemoJobError

    try:
        run_demo()
    except stack.StartupFailed:
        raise typer.Exit(1) from None  # stack.up printed the cause and the log's path
    except DemoJobError as e:
        console.print(f"[red]{e}[/]")  # the stack keeps running: the job can be looked at
        raise typer.Exit(1) from None


@tenant_app.command("create")
def tenant_create(name: str, quotas: str = typer.Option("{}", help="JSON object of quotas")) -> None:
    out = _api(lambda: GatewayClient.from_env(admin=True).call(
        "POST", "/admin/tenants", json={"name": name, "quotas": json.loads(quotas)}))
    console.print(f"tenant [bold]{out['name']}[/] created; its API key (shown once): {out['api_key']}")


@tenant_app.command("ls")
def tenant_ls() -> None:
    out = _api(lambda: GatewayClient.from_env(admin=True).call("GET", "/admin/tenants"))
    for t in out["data"]:
        console.print(f"{t['name']:20} {t.get('created_at', '')}  quotas={t.get('quotas', {})}")


@tenant_app.command("rotate-key")
def tenant_rotate(name: str) -> None:
    out = _api(lambda: GatewayClient.from_env(admin=True).call("POST", f"/admin/tenants/{name}/keys"))
    console.print(f"new key for {name} (the old one no longer works): {out['api_key']}")


@tenant_app.command("rm")
def tenant_rm(name: str) -> None:
    _api(lambda: GatewayClient.from_env(admin=True).call("DELETE", f"/admin/tenants/{name}"))
    console.print(f"tenant {name} deleted")


@tenant_app.command("set-quota")
def tenant_set_quota(
    name: str,
    requests_per_minute: int | None = typer.Option(None, "--requests-per-minute", min=0, help="0: unlimited"),
    tokens_per_minute: int | None = typer.Option(None, "--tokens-per-minute", min=0, help="0: unlimited"),
    max_concurrent: int | None = typer.Option(None, "--max-concurrent", min=0, help="0: unlimited"),
) -> None:
    """Change a tenant's quotas (those not given keep their value): at once on the gateway that takes the
    change, on every other replica within 2 x LORAPLEX_AUTH_CACHE_S."""
    given = {k: v for k, v in {"requests_per_minute": requests_per_minute, "tokens_per_minute": tokens_per_minute,
                               "max_concurrent": max_concurrent}.items() if v is not None}
    if not given:
        raise typer.BadParameter("give at least one of --requests-per-minute, --tokens-per-minute, --max-concurrent")
    out = _api(lambda: GatewayClient.from_env(admin=True).set_quotas(name, **given))
    console.print(f"tenant {out['name']}: quotas={out['quotas']}")


@adapter_app.command("push")
def adapter_push(directory: Path, name: str = typer.Option(..., "--name"),
                 alias: str | None = typer.Option(None, "--alias"),
                 warm: bool = typer.Option(False, "--warm", help="load the new version into the engine at once"),
                 tenant: str | None = typer.Option(None, help="use this tenant's key from var/stack.json")) -> None:
    """Upload a PEFT adapter directory as a new (content-addressed) version; optionally point an alias at it."""
    client = GatewayClient.from_env(tenant=tenant)
    paths = [directory / f for f in ADAPTER_FILES if (directory / f).is_file()]
    with byte_progress(f"uploading {directory.name}", files_bytes(paths), console) as advance:
        out = _api(lambda: client.push(directory, name, progress=advance, warm=warm))
    console.print(f"{name} version [bold]{out['version']}[/] ({out['size_bytes']} bytes, rank {out['rank']})")
    if out.get("health"):
        console.print(_health_line(out["health"]))
    if alias:
        _api(lambda: client.move_alias(name, alias, out["version"]))
        console.print(f"{name}@{alias} → {out['version']}")


@adapter_app.command("ls")
def adapter_ls(tenant: str | None = typer.Option(None),
               as_json: bool = typer.Option(False, "--json", help="print the API's answer")) -> None:
    """The caller's adapters, one row per version, with the health of each update (effective rank)."""
    out = _api(lambda: GatewayClient.from_env(tenant=tenant).call("GET", "/v1/adapters"))
    if as_json:
        print(json.dumps(out, indent=2))
        return
    table = Table("adapter", "version", "rank", "eff. rank", "near-zero", "bytes", "created", "aliases")
    for a in out["data"]:
        for v in a["versions"]:
            aliases = ", ".join(k for k, ver in a["aliases"].items() if ver == v["version"])
            effective, near_zero = _health_cells(v.get("health"))
            table.add_row(a["name"], v["version"], str(v["rank"]), effective, near_zero, str(v["size_bytes"]),
                          v["created_at"], aliases)
    console.print(table)


@adapter_app.command("show")
def adapter_show(name: str, version: str | None = typer.Argument(None, help="default: the newest version"),
                 tenant: str | None = typer.Option(None),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """One adapter version: files, training metadata and its health, module by module."""
    info = _api(lambda: GatewayClient.from_env(tenant=tenant).call("GET", f"/v1/adapters/{name}"))
    version = info["aliases"].get(version, version) if version else info["versions"][0]["version"]
    v = next((v for v in info["versions"] if v["version"] == version), None)
    if v is None:
        console.print(f"[red]error[/]: {name} has no version or alias {version!r}: see `loraplex adapter ls`")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(v, indent=2))
        return
    aliases = [a for a, ver in info["aliases"].items() if ver == version]
    console.print(f"[bold]{name}@{version}[/]  rank {v['rank']}, alpha {v['alpha']}, {v['size_bytes']} bytes, "
                  f"{v['created_at']}" + (f", aliases {', '.join(aliases)}" if aliases else ""))
    health = v.get("health")
    if not health:
        console.print("no health summary (uploaded before the registry computed one)")
        return
    console.print(_health_line(health))
    for note in health.get("notes", []):
        console.print(f"  note: {note}")
    table = Table("module", "effective rank", "energy rank (99%)", "near-zero share")
    for module, row in health.get("per_module", {}).items():
        table.add_row(module, f"{row['effective_rank']:.2f}", str(row["energy_rank"]), f"{row['near_zero_share']:.0%}")
    console.print(table)


def _health_cells(health: dict | None) -> tuple[str, str]:
    if not health or not health.get("modules"):
        return "-", "-"
    return f"{health['effective_rank']['median']:.1f}", f"{health['near_zero_share']:.0%}"


def _health_line(health: dict) -> str:
    if not health.get("modules"):
        return "health: no LoRA modules"
    return (f"health: effective rank median {health['effective_rank']['median']:g} of r={health['rank']} "
            f"(energy rank median {health['energy_rank']['median']:g}), {health['near_zero_share']:.0%} of "
            f"singular values near zero, {health['modules']} modules")


@adapter_app.command("promote")
def adapter_promote(name: str, alias: str, version: str,
                    expected: str | None = typer.Option(None, help="version the alias must hold now (CAS)"),
                    tenant: str | None = typer.Option(None)) -> None:
    """Point NAME@ALIAS at VERSION; fails with 409 if the alias moved since `--expected`."""
    client = GatewayClient.from_env(tenant=tenant)
    _api(lambda: client.move_alias(name, alias, version) if expected is None
         else client.promote(name, alias, version, expected))
    console.print(f"{name}@{alias} → {version}")


@adapter_app.command("pin")
def adapter_pin(model: str = typer.Argument(..., help="NAME@REF: an alias (followed as it moves) or a version; "
                                                      "NAME alone pins NAME@prod"),
                tenant: str = typer.Option(..., "--tenant", help="the adapter's tenant")) -> None:
    """Pin an adapter (operators, admin key): loaded now and never evicted, kept across restarts."""
    name, _, ref = model.partition("@")
    out = _api(lambda: GatewayClient.from_env(admin=True).call("PUT", f"/admin/pins/{tenant}/{name}/{ref or 'prod'}"))
    console.print(f"pinned {tenant}/{out['name']}@{out['ref']} (version {out['version']}, "
                  f"{'resident' if out['resident'] else 'not resident yet'})")


@adapter_app.command("unpin")
def adapter_unpin(model: str = typer.Argument(..., help="NAME@REF as pinned (NAME alone: NAME@prod)"),
                  tenant: str = typer.Option(..., "--tenant")) -> None:
    """Drop a pin: the version becomes evictable again."""
    name, _, ref = model.partition("@")
    _api(lambda: GatewayClient.from_env(admin=True).call("DELETE", f"/admin/pins/{tenant}/{name}/{ref or 'prod'}"))
    console.print(f"unpinned {tenant}/{name}@{ref or 'prod'}")


@adapter_app.command("pins")
def adapter_pins(tenant: str | None = typer.Option(None, "--tenant"),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Pinned adapters and the version each holds now (operators, admin key)."""
    params = {"tenant": tenant} if tenant else {}
    out = _api(lambda: GatewayClient.from_env(admin=True).call("GET", "/admin/pins", params=params))
    if as_json:
        print(json.dumps(out, indent=2))
        return
    table = Table("tenant", "adapter", "ref", "version", "resident")
    for p in out["data"]:
        table.add_row(p["tenant"], p["name"], p["ref"], p["version"] or "-", "yes" if p["resident"] else "no")
    console.print(table)


@adapter_app.command("rm")
def adapter_rm(name: str, version: str, tenant: str | None = typer.Option(None)) -> None:
    _api(lambda: GatewayClient.from_env(tenant=tenant).call("DELETE", f"/v1/adapters/{name}/versions/{version}"))
    console.print(f"deleted {name} version {version}")


if __name__ == "__main__":
    app()
