"""`make demo`: the whole product once, through the public API only.

Starts the stack, registers the demo tenants, uploads each tenant's adapter, promotes it to `prod`,
asks every tenant (and the base model) the same questions and prints who answered what; then one tenant
fine-tunes a new model through the jobs API (loraplex/demo_job.py) and calls it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loraplex.client import ApiError, GatewayClient
from loraplex.demo_job import FT_TENANT, run_demo_job
from loraplex.settings import StackSettings
from loraplex.stack import up, update_tenants
from training.demo import DEMO_TENANTS, DEMO_WORDS, build_demo, demo_prompt

console = Console()
NEXT_STEPS = "next-steps.txt"  # in var/: the commands printed at the end, to copy later


def _tenant_key(admin: GatewayClient, url: str, name: str, known: str | None) -> str:
    """The tenant's key: the one in var/stack.json if it still works, else a new tenant or a rotated key."""
    if known:
        try:
            GatewayClient(url, known).call("GET", "/v1/models")
            return known
        except ApiError:
            pass
    try:
        return admin.call("POST", "/admin/tenants", json={"name": name, "quotas": {}})["api_key"]
    except ApiError as e:
        if e.status != 409:
            raise
        return admin.call("POST", f"/admin/tenants/{name}/keys")["api_key"]


def publish(client: GatewayClient, name: str, directory) -> dict:
    """Upload (idempotent: same bytes, same version) and point `prod` at it by compare-and-swap."""
    version = client.push(directory, name)
    current = client.call("GET", f"/v1/adapters/{name}")["aliases"].get("prod")
    if current != version["version"]:
        client.promote(name, "prod", version["version"], current)
    return version


def run_demo(cfg: StackSettings | None = None) -> list[dict]:
    cfg = cfg or StackSettings()
    artifacts = build_demo(cfg.var_dir)
    info = up(cfg)
    url = info["gateway_url"]
    admin = GatewayClient(info["admin_url"], info["admin_key"])  # the operator plane
    tenants, rows = {}, []
    for spec in DEMO_TENANTS:
        tenant, adapter = spec["tenant"], spec["adapter"]
        key = _tenant_key(admin, url, tenant, info.get("tenants", {}).get(tenant, {}).get("api_key"))
        client = GatewayClient(url, key)
        version = publish(client, adapter, artifacts.adapter_dirs[adapter])
        tenants[tenant] = {"api_key": key, "adapters": [adapter]}
        for word in DEMO_WORDS[:2]:
            rows.append({"tenant": tenant, "model": adapter, "version": version["version"], "prompt": word,
                         "answer": client.complete(adapter, demo_prompt(word)).strip(),
                         "base": client.complete("base", demo_prompt(word)).strip()})
    update_tenants(cfg, tenants)
    job, ft_rows = run_demo_job(GatewayClient(url, tenants[FT_TENANT]["api_key"]), console)
    _show(rows, url, tenants, cfg.var_dir, job, ft_rows)
    return rows


def _show(rows: list[dict], url: str, tenants: dict, var_dir: Path, job: dict, ft_rows: list[dict]) -> None:
    table = Table(title="loraplex demo: one base model, one adapter per tenant (greedy)")
    for col in ("tenant", "model (adapter)", "version", "word", "tenant's answer", "base answer"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["tenant"], r["model"], r["version"], r["prompt"], f"[bold]{r['answer']}[/]", r["base"])
    console.print(table)
    # Plain print (never wrapped): the job and model names are what the user copies.
    print(f"\nFine-tuned through the jobs API by {FT_TENANT}: job {job['id']} -> model {job['fine_tuned_model']}")
    ft = Table()
    for col in ("model", "word", "answer"):
        ft.add_column(col)
    for r in ft_rows:
        ft.add_row(r["model"], r["prompt"], f"[bold]{r['answer']}[/]")
    console.print(ft)
    text = next_steps(url, tenants)
    (var_dir / NEXT_STEPS).write_text(text)
    # Plain print: a console renderer would break long lines inside keys and JSON.
    print(f"\nThe stack is running at {url}; keys are in {var_dir / 'stack.json'}. "
          f"Next (also in {var_dir / NEXT_STEPS}):\n")
    print(text)


def next_steps(url: str, tenants: dict) -> str:
    """Copy-pasteable commands to try next: curl, the OpenAI SDK, the CLI, and stopping the stack."""
    tenant, spec = next(iter(tenants.items()))
    key, adapter, prompt = spec["api_key"], spec["adapters"][0], demo_prompt("loraplex")
    venv = Path(os.path.relpath(sys.prefix)) / "bin"
    body = json.dumps({"model": adapter, "prompt": prompt, "max_tokens": 16, "temperature": 0})
    return f"""# 1. Ask {tenant}'s adapter over HTTP:
curl -s {url}/v1/completions \\
  -H 'Authorization: Bearer {key}' \\
  -H 'Content-Type: application/json' \\
  -d '{body}'

# 2. The same with the OpenAI Python SDK, unmodified (`model` names one of the tenant's adapters):
{venv / "python"} - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="{key}")
answer = client.completions.create(model="{adapter}", prompt={prompt!r}, max_tokens=16, temperature=0)
print(answer.choices[0].text)
EOF

# 3. The CLI: {tenant}'s adapters, then every tenant (admin key):
{venv / "loraplex"} adapter ls --tenant {tenant}
{venv / "loraplex"} tenant ls

# 4. Fine-tuning jobs (docs/fine-tuning.md): {FT_TENANT}'s jobs and the models they made:
{venv / "loraplex"} ft ls --tenant {FT_TENANT}

# When done, stop the stack:
make down
"""
