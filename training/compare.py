"""`loraplex train compare`: full fine-tuning vs LoRA at several ranks on one base and one dataset.

Every variant trains for the same number of steps on the same batches (same seed), so each sees the
same tokens; the rows report what that compute bought (task score on held-out examples, retention of
a task the base could already do) and what it cost (trainable share, memory, time, artifact size, and
how long switching to another variant takes).
"""

from __future__ import annotations

import ctypes
import gc
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from training.config import CompareSettings, LoraSettings, TrainJob, TrainSettings
from training.data import load_records, read_jsonl, split
from training.evaluate import adapter_switch_seconds, exact_match, model_switch_seconds
from training.merge import load_peft
from training.model_loading import qlora_missing
from training.sft import run_training

ROW_KEYS = ("method", "rank", "trainable_params", "trainable_pct", "peak_mem_mb", "step_time_s", "total_time_s",
            "artifact_mb", "task_score", "base_retention", "switch_time_s")


def _variants(s: CompareSettings) -> list[tuple[str, int | None]]:
    return [("full", None)] + [("lora", r) for r in s.ranks] + [("qlora", 16)]


def _release_memory() -> None:
    # Return freed heap to the OS so the next run's RSS delta starts from a clean baseline.
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: deltas may then undercount later runs
        pass


def _write_split(data: Path, work: Path, s: CompareSettings) -> tuple[Path, Path]:
    rows = [obj for _, obj in read_jsonl(data)]
    train, test = split(rows, s.test_share, s.seed)
    work.mkdir(parents=True, exist_ok=True)
    paths = work / "train.jsonl", work / "test.jsonl"
    for path, part in zip(paths, (train, test[:s.max_eval])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


def _job(method: str, rank: int | None, ctx: dict, out: Path) -> TrainJob:
    s: CompareSettings = ctx["settings"]
    lora = LoraSettings(r=rank or 8, alpha=2 * (rank or 8), dropout=0.0)
    train = TrainSettings(lr=s.full_lr if method == "full" else s.lora_lr, max_steps=s.steps, batch_size=s.batch_size,
                          eval_steps=s.steps, patience=0, warmup_ratio=0.1, progress=False, seed=s.seed,
                          mix_share=s.mix_share)
    return TrainJob(method, ctx["base"], ctx["train_file"], out, lora=lora, train=train, overwrite=True,
                    mix_general=ctx["mix_general"])


def _flops(record: dict) -> float:
    # Forward 2·N per token, backward 4·N for trained weights and 2·N for frozen ones (no weight grads).
    m = record["metrics"]
    frozen = m["total_params"] - m["trainable_params"]
    return float(m["tokens_seen"]) * (6 * m["trainable_params"] + 4 * frozen)


def _state_mb(record: dict) -> float:
    # Computed, not measured: fp32 weights (4 B) for every parameter, plus gradient (4 B) and AdamW m, v
    # (8 B) for trained ones. At tiny scale activations and allocator slack hide this in the RSS.
    m = record["metrics"]
    return round((4 * m["total_params"] + 12 * m["trainable_params"]) / 2**20, 3)


def _measure(method: str, rank: int | None, ctx: dict) -> dict:
    out = ctx["out_dir"] / "runs" / (f"{method}-r{rank}" if rank else method)
    _release_memory()
    started = time.monotonic()
    record = run_training(_job(method, rank, ctx, out))
    total = time.monotonic() - started
    artifact = Path(record["artifact"]["dir"])
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(str(artifact))
        switch = model_switch_seconds(artifact)
    else:
        model = load_peft(ctx["base"], artifact)
        switch = adapter_switch_seconds(model, artifact)
    tok, m = ctx["tokenizer"], record["metrics"]
    retention = exact_match(model, tok, ctx["retention"]) if ctx["retention"] else None
    return {
        "method": method, "rank": rank, "trainable_params": m["trainable_params"],
        "trainable_pct": m["trainable_pct"], "peak_mem_mb": m["peak_mem_mb"], "mem_source": m["mem_source"],
        "peak_mem_total_mb": m["peak_mem_total_mb"], "step_median_s": m["step_s_median"],
        "step_time_s": record["timings"]["step_s"], "total_time_s": round(total, 3),
        "artifact_mb": round(record["artifact"]["size_bytes"] / 2**20, 4),
        "task_score": round(exact_match(model, tok, ctx["test"]), 4),
        "base_retention": _retention(retention, ctx["retention_before"]), "base_task_after": retention,
        "switch_time_s": round(switch, 4),
        "switch_kind": "load full model" if method == "full" else "load + activate adapter",
        "tokens_seen": m["tokens_seen"], "flops_est": _flops(record), "steps": m["steps"],
        "train_state_mb": _state_mb(record),
        "lr": record["settings"]["train"]["lr"], "eval_loss": m["eval_loss"], "skipped": False,
    }


def _retention(after: float | None, before: float | None) -> float | None:
    if after is None or not before:
        return None  # no base task given, or the base could not do it (nothing to retain)
    return round(after / before, 4)


def _skipped(method: str, rank: int | None, reason: str) -> dict:
    return {**{key: None for key in ROW_KEYS}, "method": method, "rank": rank, "skipped": True, "reason": reason}


def run_compare(base_dir: Path, data: Path, out_dir: Path, settings: CompareSettings = CompareSettings(),
                retention_data: Path | None = None, on_variant: Callable[[str], None] | None = None,
                mix_general: Path | None = None) -> dict:
    """Train and measure every variant; return `{"rows": [...], "meta": {...}}` (nothing is written here).

    Args:
        base_dir: base model directory.
        data: JSONL task data; `test_share` of it is held out for the task score.
        out_dir: working directory (runs/ and work/ are created inside).
        settings: steps, batch, learning rates, ranks.
        retention_data: JSONL of a task the base can already do (e.g. echo), for `base_retention`.
        on_variant: told each variant's label before it starts (progress display).
        mix_general: JSONL of general data mixed into every variant's training (`settings.mix_share`).
    """
    out_dir, base_dir = Path(out_dir), Path(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    train_file, test_file = _write_split(Path(data), out_dir / "work", settings)
    retention = load_records(retention_data, tokenizer)[:settings.max_eval] if retention_data else []
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    test = load_records(test_file, tokenizer)
    ctx = {"settings": settings, "out_dir": out_dir, "base": base_dir, "train_file": train_file, "test": test,
           "mix_general": mix_general,
           "tokenizer": tokenizer, "retention": retention,
           "retention_before": exact_match(base, tokenizer, retention) if retention else None}
    meta = {"base": str(base_dir), "data": str(data), "retention_data": str(retention_data) if retention_data else None,
            "mix_general": str(mix_general) if mix_general else None,
            "settings": asdict(settings), "test_examples": len(test), "retention_examples": len(retention),
            "base_task_score": round(exact_match(base, tokenizer, test), 4),
            "base_retention_score": ctx["retention_before"]}
    del base
    rows = []
    for method, rank in _variants(settings):
        if on_variant:
            on_variant(f"{method} r={rank}" if rank else method)
        missing = qlora_missing() if method == "qlora" else []
        rows.append(_skipped(method, rank, "QLoRA needs " + " and ".join(missing)) if missing
                    else _measure(method, rank, ctx))
    return {"rows": rows, "meta": meta}
