"""Part 4 of the latency benchmark: the plugin's engine ratios where users meet them.

- "launcher": the engines `loraplex up` starts, i.e. the engine benchmark's processes with the launcher's
  thread settings (serving/engine.py: no pinning, the host's cores less one);
- "in-process default": `vllm.LLM` in a user's own process with vLLM's defaults (no thread variables set),
  both engines in that one process (loadtest/engine_bench/inproc.py).

Rank 16 on all linear layers, 64 sequences x 64 generated tokens; each ratio is LoRA throughput over the
LoRA-disabled engine's, timed around it (median over rounds).
"""

from __future__ import annotations

from pathlib import Path

from loadtest.engine_bench.artifacts import build_adapters, build_model
from loadtest.engine_bench.config import DECODE, Matrix

RANK = 16
ADAPTERS = (1, 8)
TARGETS = {1: 0.90, 8: 0.85}  # issue 20: 1 adapter >= 0.90x, 8 distinct >= 0.85x of LoRA disabled


def launcher_env() -> dict[str, str]:
    """The thread settings the launcher gives an engine (whatever the environment and settings say now)."""
    from serving.engine import engine_env
    from serving.settings import ServingSettings

    env = engine_env(ServingSettings())
    return {k: env[k] for k in ("VLLM_CPU_OMP_THREADS_BIND", "OMP_NUM_THREADS") if k in env}


def _row(setup: str, n: int, ratio: float, tok_per_s: float, threads, ratios) -> dict:
    return {"setup": setup, "rank": RANK, "adapters": n, "ratio_to_lora_disabled": ratio, "tok_per_s": tok_per_s,
            "target": TARGETS[n], "passed": ratio >= TARGETS[n], "worker_threads": threads, "ratios": ratios}


def launcher_ratios(build: Path, rounds: int, console) -> list[dict]:
    """The plugin's ratios in engines with the launcher's thread settings (vLLM's stock ops timed beside)."""
    from loadtest.engine_bench.run import _run_engines, summarize

    model = build_model(build / "model")
    adapters = {RANK: build_adapters(model, build / "adapters", RANK, max(ADAPTERS))}
    matrix = Matrix((RANK,), ADAPTERS, (DECODE,), rounds)
    rows = summarize(_run_engines(matrix, model, adapters, console, launcher_env()))
    return [_row("launcher", r["adapters"], r["ratio_to_lora_disabled"], r["tok_per_s"],
                 r["worker"]["threads"] if r["worker"] else None, r["ratios"])
            for r in rows if r["rank"] == RANK and r["plugin"]]


def inprocess_ratios(build: Path, rounds: int) -> list[dict]:
    """The plugin's ratios in `vllm.LLM` with vLLM's defaults, both engines in one user process."""
    from loadtest.engine_bench.inproc import run_inproc

    model = build_model(build / "model")
    adapters = build_adapters(model, build / "adapters", RANK, max(ADAPTERS))
    result = run_inproc(model, adapters, rounds)
    return [_row("in-process default", r["adapters"], r["ratio_to_lora_disabled"], r["tok_per_s"],
                 result["worker"]["threads"], r["ratios"]) for r in result["rows"]]
