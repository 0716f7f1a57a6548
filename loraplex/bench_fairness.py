"""`loraplex bench fairness`: does one tenant's flood move the other tenants' latency?

Stands up SeaweedFS, one vLLM engine and, per admission mode (first-come-first-served vs fair/VTC),
a gateway in this process; three demo tenants send Poisson traffic; then tenant A floods at 10x its
share. Reports the other tenants' p50/p99 latency and time to first token with and without the
flood, per mode, as JSON, CSV, a PNG and a markdown table.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import platform
import secrets
import tempfile
import time
from pathlib import Path

import httpx
from pydantic import SecretStr
from rich.console import Console

from common.procs import free_port, stop_group
from loadtest.traffic import TenantLoad, drive, percentile
from registry.seaweed import SeaweedServer
from registry.settings import RegistrySettings
from registry.store import ObjectStore
from serving.app import create_app
from serving.embedded import serve_in_thread
from serving.engine import start_engine, wait_engine_ready
from serving.settings import ServingSettings
from serving.state import Gateway
from training.demo import DEMO_TENANTS, DEMO_WORDS, build_demo, demo_prompt

console = Console()
FILES = ("adapter_config.json", "adapter_model.safetensors")


def _gateway(engine: ServingSettings, s3: str, base: Path, tmp: Path, fair: bool, inflight: int):
    reg = RegistrySettings(s3_endpoint=s3, s3_bucket="bench-" + secrets.token_hex(4), cache_dir=tmp / "cache",
                           base_model=base)
    ObjectStore(reg).ensure_bucket()
    admin, port = "admin-" + secrets.token_hex(8), free_port()
    settings = engine.model_copy(update={"admin_key": SecretStr(admin), "gateway_port": port, "fair_admission": fair,
                                         "max_inflight": inflight, "max_queue": 4096})
    server = serve_in_thread(create_app(Gateway.from_settings(settings, reg)), port)
    return f"http://127.0.0.1:{port}", admin, server


def _tenants(url: str, admin: str, adapters: dict[str, Path]) -> list[tuple[str, str, str]]:
    """Create the demo tenants through the public API; returns (tenant, key, model)."""
    out = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for spec in DEMO_TENANTS:
            key = c.post("/admin/tenants", json={"name": spec["tenant"]},
                         headers={"Authorization": f"Bearer {admin}"}).json()["api_key"]
            files = [("files", (f, (adapters[spec["adapter"]] / f).read_bytes())) for f in FILES]
            r = c.post(f"/v1/adapters/{spec['adapter']}/versions", files=files, headers={"Authorization": f"Bearer {key}"})
            r.raise_for_status()
            out.append((spec["tenant"], key, spec["adapter"]))
    return out


def _capacity(url: str, tenants, max_tokens: int) -> float:
    """Requests per second the stack completes with all tenants busy (closed loop, a few seconds)."""
    loads = [TenantLoad(t, k, m, rate=1000, prompts=[demo_prompt(w) for w in DEMO_WORDS], max_tokens=max_tokens)
             for t, k, m in tenants]
    started = time.monotonic()
    samples = asyncio.run(drive(url, loads, duration_s=0.05))  # ~150 requests at once
    ok = [s for s in samples if s.status == 200]
    return len(ok) / (time.monotonic() - started)


def _summarise(samples, phase: str, mode: str, skip: set[str]) -> list[dict]:
    rows = []
    for tenant in sorted({s.tenant for s in samples}):
        mine = [s for s in samples if s.tenant == tenant]
        ok = [s for s in mine if s.status == 200]
        rows.append({"mode": mode, "phase": phase, "tenant": tenant, "flooder": tenant in skip,
                     "sent": len(mine), "ok": len(ok), "rejected": sum(s.status in (429, 503) for s in mine),
                     "latency_p50_ms": _ms(percentile([s.latency_s for s in ok], 50)),
                     "latency_p99_ms": _ms(percentile([s.latency_s for s in ok], 99)),
                     "ttft_p99_ms": _ms(percentile([s.ttft_s for s in ok if s.ttft_s is not None], 99))})
    return rows


def _ms(v):
    return None if v is None else round(v * 1000, 1)


def run_fairness(out: Path, duration_s: float = 30, flood_factor: float = 10, inflight: int = 4,
                 max_tokens: int = 16, var_dir: Path = Path("var")) -> dict:
    """Run both modes, baseline and flood; write fairness.json/.csv/.png/.md under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    demo = build_demo(var_dir)
    tmp = Path(tempfile.mkdtemp(prefix="lpx-fair-"))
    access, secret = "bench" + secrets.token_hex(4), secrets.token_urlsafe(20)
    os.environ.update(AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret)
    s3 = SeaweedServer().start(tmp / "s3", access_key=access, secret_key=secret)
    port = free_port()
    engine = ServingSettings(base_model=demo.base_dir, engine_url=f"http://127.0.0.1:{port}")
    proc = start_engine(engine, port, tmp / "engine.log")
    rows, meta = [], {}
    try:
        s3.wait_ready(60)
        console.print("starting the vLLM engine …")
        wait_engine_ready(engine.engine_url, 600, proc)
        for mode, fair in (("fifo", False), ("fair", True)):
            url, admin, server = _gateway(engine, s3.endpoint, demo.base_dir, tmp / mode, fair, inflight)
            tenants = _tenants(url, admin, demo.adapter_dirs)
            cap = _capacity(url, tenants, max_tokens)
            share = 0.5 * cap / len(tenants)  # everyone at their share: the stack half busy
            meta[mode] = {"capacity_req_s": round(cap, 2), "share_req_s": round(share, 2)}
            console.print(f"[{mode}] capacity {cap:.1f} req/s; each tenant's share {share:.2f} req/s")
            for phase, factor in (("baseline", 1.0), ("flood", flood_factor)):
                loads = [TenantLoad(t, k, m, rate=share * (factor if i == 0 else 1.0),
                                    prompts=[demo_prompt(w) for w in DEMO_WORDS], max_tokens=max_tokens)
                         for i, (t, k, m) in enumerate(tenants)]
                console.print(f"[{mode}] {phase}: {duration_s:.0f}s …")
                samples = asyncio.run(drive(url, loads, duration_s))
                rows += _summarise(samples, phase, mode, {tenants[0][0]})
            server.should_exit = True
    finally:
        stop_group(proc.pid)
        s3.stop()
    return _report(out, rows, meta, duration_s, flood_factor, inflight, max_tokens)


def _ratio(rows, mode: str) -> float | None:
    """Worst ratio, over the non-flooding tenants, of p99 latency under flood to p99 without it."""
    ratios = []
    for r in rows:
        if r["mode"] == mode and r["phase"] == "flood" and not r["flooder"]:
            base = next(b for b in rows if b["mode"] == mode and b["phase"] == "baseline" and b["tenant"] == r["tenant"])
            if r["latency_p99_ms"] and base["latency_p99_ms"]:
                ratios.append(r["latency_p99_ms"] / base["latency_p99_ms"])
    return round(max(ratios), 2) if ratios else None


def _report(out: Path, rows, meta, duration_s, flood_factor, inflight, max_tokens) -> dict:
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "settings": {"duration_s": duration_s, "flood_factor": flood_factor, "max_inflight": inflight,
                           "max_tokens": max_tokens}, "calibration": meta, "rows": rows,
              "p99_ratio_flood_vs_baseline": {m: _ratio(rows, m) for m in ("fifo", "fair")}}
    (out / "fairness.json").write_text(json.dumps(result, indent=2))
    with open(out / "fairness.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _plot(out / "fairness.png", rows)
    (out / "fairness.md").write_text(_markdown(result))
    console.print(_markdown(result))
    return result


def _plot(path: Path, rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [r for r in rows if not r["flooder"]]
    labels = [f"{r['mode']}\n{r['phase']}\n{r['tenant']}" for r in others]
    fig, ax = plt.subplots(figsize=(max(6, len(labels) * 0.9), 4))
    ax.bar(range(len(others)), [r["latency_p99_ms"] or 0 for r in others],
           color=["#c44" if r["phase"] == "flood" else "#48c" for r in others])
    ax.set_xticks(range(len(others)), labels, fontsize=7)
    ax.set_ylabel("p99 latency of the other tenants (ms)")
    ax.set_title("One tenant floods at 10x its share: FIFO vs fair (VTC) admission")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(result) -> str:
    lines = [f"### Fairness under a flood ({result['date']}, {result['machine']})", "",
             f"Settings: {result['settings']}; calibration: {result['calibration']}.", "",
             "| mode | phase | tenant | sent | ok | 429/503 | p50 ms | p99 ms | TTFT p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        name = r["tenant"] + (" (flooder)" if r["flooder"] else "")
        lines.append(f"| {r['mode']} | {r['phase']} | {name} | {r['sent']} | {r['ok']} | {r['rejected']} | "
                     f"{r['latency_p50_ms']} | {r['latency_p99_ms']} | {r['ttft_p99_ms']} |")
    ratio = result["p99_ratio_flood_vs_baseline"]
    lines += ["", f"Worst p99 ratio (flood / baseline) of the other tenants: FIFO {ratio['fifo']}, "
                  f"fair {ratio['fair']} (target ≤ 1.2)."]
    return "\n".join(lines) + "\n"
