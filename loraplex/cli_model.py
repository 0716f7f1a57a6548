"""`loraplex model ...`: full fine-tunes and merged models in the registry (models/ beside adapters/).

Everything goes through the gateway's `/v1/artifacts/models` API with the tenant's key. Mounted by
loraplex/cli.py as `app.add_typer(model_app, name="model")`; `train full|merge --push` use `push_model`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

model_app = typer.Typer(help="Full fine-tunes and merged models in the registry (tenant key).", no_args_is_help=True)
console = Console(stderr=True)  # stdout is kept for --json


def base_lineage(base: Path | None) -> dict:
    """`derived_from` for a model trained or merged from the local base directory `base`."""
    if base is None:
        return {}
    from registry.base_spec import BaseModelSpec

    return {"name": Path(base).name, "fingerprint": BaseModelSpec.from_dir(base).fingerprint.model_dump()}


def push_model(directory: Path, name: str, kind: str, *, tenant: str | None = None, alias: str | None = None,
               derived_from: dict | None = None, metadata: dict | None = None) -> dict:
    """Upload a model directory with a progress bar, optionally point NAME@ALIAS at it; exit 1 on refusal."""
    from common.errors import InvalidAdapter
    from loraplex.client import MODELS_API, ApiError, GatewayClient
    from loraplex.progress import byte_progress, files_bytes
    from registry.model_registry import model_files

    client = GatewayClient.from_env(tenant=tenant)
    try:
        paths = model_files(directory)
        with byte_progress(f"uploading {Path(directory).name}", files_bytes(paths), console) as advance:
            out = client.push_model(directory, name, kind, derived_from=derived_from, metadata=metadata,
                                    progress=advance)
        if alias:
            client.move_alias(name, alias, out["version"], api=MODELS_API)
    except (ApiError, InvalidAdapter) as exc:
        console.print(f"[red]error[/]: model push failed: {escape(str(exc))}")
        raise typer.Exit(1) from None
    console.print(f"pushed {kind} model {name} version [bold]{out['version']}[/] "
                  f"({out['parameter_count']:,} parameters, {out['size_bytes']:,} bytes)"
                  + (f", {name}@{alias}" if alias else ""))
    return out


def _client(tenant: str | None):
    from loraplex.client import GatewayClient

    return GatewayClient.from_env(tenant=tenant)


def api_call(fn):
    """Show an API error as one red line on stderr and exit 1 instead of a traceback (loraplex/cli.py uses it too).

    Escaped: the gateway's messages hold `[rule]` tags that rich would otherwise take for markup and drop.
    """
    from loraplex.client import ApiError

    try:
        return fn()
    except ApiError as e:
        console.print(f"[red]error[/]: {escape(str(e))}")
        raise typer.Exit(1) from None


@model_app.command("push")
def model_push(
    directory: Path = typer.Argument(..., help="a Hugging Face model directory (safetensors)"),
    name: str = typer.Option(..., "--name"),
    kind: str = typer.Option(..., "--kind", help="full (a full fine-tune) or merged (an adapter merged in)"),
    base: Path | None = typer.Option(None, "--base", help="the base it was derived from (recorded)"),
    metadata: Path | None = typer.Option(None, "--metadata", help="JSON file of training metadata, e.g. "
                                            "a `train full` run's train.json"),
    alias: str | None = typer.Option(None, "--alias"),
    tenant: str | None = typer.Option(None, help="use this tenant's key from var/stack.json"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Upload a full or merged model as a new content-addressed version (pickle weights are refused)."""
    meta = json.loads(metadata.read_text()) if metadata else None
    out = push_model(directory, name, kind, tenant=tenant, alias=alias, derived_from=base_lineage(base),
                     metadata=meta)
    if as_json:
        print(json.dumps(out, indent=2))


@model_app.command("ls")
def model_ls(tenant: str | None = typer.Option(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """The caller's models, one row per version."""
    out = api_call(lambda: _client(tenant).call("GET", "/v1/artifacts/models"))
    if as_json:
        print(json.dumps(out, indent=2))
        return
    table = Table("model", "version", "kind", "parameters", "bytes", "derived from", "created", "aliases")
    for m in out["data"]:
        for v in m["versions"]:
            aliases = ", ".join(k for k, ver in m["aliases"].items() if ver == v["version"])
            table.add_row(m["name"], v["version"], v["kind"], f"{v['parameter_count']:,}", f"{v['size_bytes']:,}",
                          v["derived_from"].get("name", "-"), v["created_at"], aliases)
    Console().print(table)


@model_app.command("pull")
def model_pull(name: str, ref: str = typer.Argument("prod", help="version or alias (falls back to the newest)"),
               out: Path = typer.Option(..., "--out", help="directory to write the model into"),
               tenant: str | None = typer.Option(None)) -> None:
    """Download a model version, every file checked against the manifest's SHA-256."""
    from loraplex.progress import byte_progress

    client = _client(tenant)
    info = api_call(lambda: client.call("GET", f"/v1/artifacts/models/{name}"))
    if ref == "prod" and "prod" not in info["aliases"]:
        ref = info["versions"][0]["version"]
    version = info["aliases"].get(ref, ref)
    total = sum(f["size"] for v in info["versions"] if v["version"] == version for f in v["files"].values())
    with byte_progress(f"downloading {name}@{ref}", total, console) as advance:
        manifest = api_call(lambda: client.pull_model(name, ref, out, progress=advance))
    console.print(f"{name}@{manifest['version']} ({manifest['kind']}) → {out}: {len(manifest['files'])} files verified")


@model_app.command("promote")
def model_promote(name: str, alias: str, version: str,
                  expected: str | None = typer.Option(None, help="version the alias must hold now (CAS)"),
                  tenant: str | None = typer.Option(None)) -> None:
    """Point NAME@ALIAS at VERSION; fails with 409 if the alias moved since `--expected`."""
    from loraplex.client import MODELS_API

    client = _client(tenant)
    api_call(lambda: client.move_alias(name, alias, version, api=MODELS_API) if expected is None
             else client.promote(name, alias, version, expected, api=MODELS_API))
    console.print(f"{name}@{alias} → {version}")


@model_app.command("rm")
def model_rm(name: str, version: str, tenant: str | None = typer.Option(None)) -> None:
    """Delete a model version (409 while an alias points at it)."""
    api_call(lambda: _client(tenant).call("DELETE", f"/v1/artifacts/models/{name}/versions/{version}"))
    console.print(f"deleted model {name} version {version}")


@model_app.command("zoo")
def model_zoo(
    family: list[str] = typer.Option(None, "--family", help="llama, qwen2, mistral, gemma2 or phi3 (repeatable; "
                                     "default: all)"),
    out: Path | None = typer.Option(None, "--out", help="parent directory of the built bases (default: the "
                                    "cache var/models/zoo/)"),
    force: bool = typer.Option(False, "--force", help="rebuild even if a complete build is there"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Build small random-weight bases of real architectures (bf16, sharded, with tokenizer and chat template)."""
    from loraplex.settings import StackSettings
    from training.zoo import FAMILIES, build_zoo_model

    unknown = sorted(set(family or []) - set(FAMILIES))
    if unknown:
        console.print(f"[red]error[/]: unknown family {', '.join(unknown)}: use {', '.join(FAMILIES)}")
        raise typer.Exit(2)
    var_dir = StackSettings().var_dir
    built = {f: str(build_zoo_model(f, var_dir, out_dir=out / f if out else None, force=force))
             for f in (family or FAMILIES)}
    if as_json:
        print(json.dumps(built, indent=2))
        return
    table = Table("family", "directory", "what it exercises")
    for name, directory in built.items():
        table.add_row(name, directory, FAMILIES[name].traits)
    Console().print(table)
