"""`loraplex ft create|ls|show|events|cancel`: fine-tuning jobs through the gateway's OpenAI-shaped API (tenant key)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loraplex.cli_model import api_call as _api
from loraplex.client import GatewayClient

ft_app = typer.Typer(help="Fine-tuning jobs (tenant key): upload data, train an adapter, serve it.",
                     no_args_is_help=True)
console = Console()
JOBS = "/v1/fine_tuning/jobs"
DONE = {"succeeded", "failed", "cancelled"}


def _client(tenant: str | None) -> GatewayClient:
    return GatewayClient.from_env(tenant=tenant)


def _upload(client: GatewayClient, path: Path) -> str:
    if not path.is_file():
        raise typer.BadParameter(f"{path}: no such file (a JSONL of prompt/completion or chat messages)")
    with path.open("rb") as f:
        out = _api(lambda: client.call("POST", "/v1/files", files={"file": (path.name, f, "application/jsonl")},
                                       data={"purpose": "fine-tune"}))
    console.print(f"uploaded {path.name}: [bold]{out['id']}[/] ({out['examples']} examples, {out['format']})")
    return out["id"]


@ft_app.command("create")
def create(
    data: Path = typer.Argument(..., help="training JSONL to upload, or an uploaded file's id (file-...)"),
    validation: Path | None = typer.Option(None, "--validation", help="validation JSONL (or file id)"),
    suffix: str | None = typer.Option(None, "--suffix", help="part of the model's name: ft-SUFFIX-<id>"),
    epochs: str = typer.Option("auto", "--epochs", help="n_epochs, or auto"),
    batch_size: str = typer.Option("auto", "--batch-size", help="batch_size, or auto"),
    lr_multiplier: str = typer.Option("auto", "--lr-multiplier", help="learning_rate_multiplier, or auto"),
    rank: int | None = typer.Option(None, "--rank", help="LoRA rank (default 8)"),
    seed: int | None = typer.Option(None, "--seed"),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="show progress until the job ends"),
    tenant: str | None = typer.Option(None, help="use this tenant's key from var/stack.json"),
) -> None:
    """Upload the data (unless given a file id), start a job on the served base and follow it."""
    client = _client(tenant)

    def file_id(p: Path) -> str:
        return str(p) if str(p).startswith("file-") else _upload(client, p)

    hp = {k: (v if v == "auto" else float(v) if k == "learning_rate_multiplier" else int(v))
          for k, v in {"n_epochs": epochs, "batch_size": batch_size, "learning_rate_multiplier": lr_multiplier}.items()}
    body = {"model": "base", "training_file": file_id(data), "suffix": suffix, "seed": seed,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}}
    if validation is not None:
        body["validation_file"] = file_id(validation)
    if rank is not None:
        body["lora"] = {"r": rank}
    job = _api(lambda: client.call("POST", JOBS, json={k: v for k, v in body.items() if v is not None}))
    console.print(f"job [bold]{job['id']}[/] {job['status']}  hyperparameters {job['hyperparameters']}")
    if follow:
        _follow(client, job["id"])


def _follow(client: GatewayClient, job_id: str) -> None:
    """A progress bar of the job's steps with its latest loss, until it ends."""
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("{task.fields[loss]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("queued", total=None, loss="")
        while True:
            job = _api(lambda: client.call("GET", f"{JOBS}/{job_id}"))
            latest = _api(lambda: client.call("GET", f"{JOBS}/{job_id}/events", params={"limit": 5}))["data"]
            loss = next((f"loss {e['data']['train_loss']:.4f}" for e in latest if e.get("type") == "metrics"), "")
            progress = job.get("progress") or {}
            bar.update(task, description=job["status"], completed=progress.get("step") or 0,
                       total=progress.get("total_steps"), loss=loss)
            if job["status"] in DONE:
                break
            time.sleep(2)
    _summary(job)
    if job["status"] != "succeeded":
        raise typer.Exit(1)


def _summary(job: dict) -> None:
    if job["status"] == "succeeded":
        console.print(f"[green]succeeded[/]: call it as model [bold]{job['fine_tuned_model']}[/] "
                      f"({job.get('trained_tokens')} tokens trained)")
    elif job["status"] == "failed":
        console.print(f"[red]failed[/]: {(job.get('error') or {}).get('message')}")
    else:
        console.print(f"{job['status']}")


@ft_app.command("ls")
def ls(limit: int = typer.Option(20, "--limit"), tenant: str | None = typer.Option(None),
       as_json: bool = typer.Option(False, "--json")) -> None:
    """The caller's jobs, newest first."""
    out = _api(lambda: _client(tenant).call("GET", JOBS, params={"limit": limit}))
    if as_json:
        print(json.dumps(out, indent=2))
        return
    table = Table("job", "status", "model", "steps", "created")
    for j in out["data"]:
        p = j.get("progress") or {}
        steps = f"{p.get('step', 0)}/{p.get('total_steps') or '?'}"
        table.add_row(j["id"], j["status"], j.get("fine_tuned_model") or "-", steps,
                      time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(j["created_at"])))
    console.print(table)


@ft_app.command("show")
def show(job_id: str, follow: bool = typer.Option(False, "--follow", help="show progress until it ends"),
         tenant: str | None = typer.Option(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """One job: status, hyperparameters, progress, checkpoints, the model it made."""
    client = _client(tenant)
    if follow:
        _follow(client, job_id)
        return
    job = _api(lambda: client.call("GET", f"{JOBS}/{job_id}"))
    if as_json:
        print(json.dumps(job, indent=2))
        return
    console.print(f"[bold]{job['id']}[/] {job['status']}  base {job['model']}  file {job['training_file']}")
    console.print(f"hyperparameters {job['hyperparameters']}  lora {job.get('lora')}  progress {job.get('progress')}")
    checkpoints = _api(lambda: client.call("GET", f"{JOBS}/{job_id}/checkpoints"))["data"]
    for c in checkpoints:
        m = c["metrics"]
        console.print(f"  checkpoint step {c['step_number']}: train loss {m.get('train_loss')}, "
                      f"validation loss {m.get('valid_loss')}")
    _summary(job)


@ft_app.command("events")
def events(job_id: str, limit: int = typer.Option(50, "--limit"), tenant: str | None = typer.Option(None)) -> None:
    """The job's events, oldest first."""
    out = _api(lambda: _client(tenant).call("GET", f"{JOBS}/{job_id}/events", params={"limit": limit}))
    for e in reversed(out["data"]):
        stamp = time.strftime("%H:%M:%S", time.gmtime(e["created_at"]))
        console.print(f"{stamp} {e['level']:5} {e['message']}", markup=False)


@ft_app.command("cancel")
def cancel(job_id: str, tenant: str | None = typer.Option(None)) -> None:
    """Cancel a job: training stops within seconds and nothing is published."""
    job = _api(lambda: _client(tenant).call("POST", f"{JOBS}/{job_id}/cancel"))
    console.print(f"{job['id']} {job['status']}")


def worker_command(
    ray: bool = typer.Option(False, "--ray", help="run the workers as Ray actors, one GPU each when the cluster "
                                                  "has GPUs (docs/fine-tuning.md)"),
    workers: int = typer.Option(1, "--workers", min=1, help="--ray: how many worker actors"),
    address: str | None = typer.Option(None, "--address", help="--ray: the cluster (default: a local one)"),
    once: bool = typer.Option(False, "--once", help="exit when no job waits"),
) -> None:
    """Run a fine-tuning job worker on this host (LORAPLEX_S3_*, LORAPLEX_BASE_MODEL, AWS_* from the environment)."""
    from training.jobs.__main__ import main

    main((["--ray", "--workers", str(workers)] + (["--address", address] if address else [])) if ray
         else (["--once"] if once else []))
