"""Write a comparison's results for scripts (compare.json), people (compare.md) and eyes (PNG plots)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt
import torch

COLUMNS = (("method", "method"), ("rank", "r"), ("trainable_params", "trainable"), ("trainable_pct", "trainable %"),
           ("peak_mem_mb", "peak MB"), ("train_state_mb", "states MB"), ("step_time_s", "s/step"),
           ("total_time_s", "total s"),
           ("artifact_mb", "artifact MB"), ("task_score", "task score"), ("base_retention", "retention"),
           ("switch_time_s", "switch s"))


def machine() -> dict:
    """Where the numbers were measured."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def fmt(value) -> str:
    """A table cell: compact numbers, '-' for missing values."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    """The rows as a GitHub markdown table (skipped rows show their reason)."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [fmt(row.get(key)) for key, _ in COLUMNS]
        if row.get("skipped"):
            cells[2] = f"skipped: {row.get('reason', '')}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(result: dict, path: Path) -> None:
    """compare.md: settings, machine, the table and how to read it."""
    meta, s = result["meta"], result["meta"]["settings"]
    text = [
        "# Full fine-tuning vs LoRA", "",
        f"Measured {meta['machine']['date']} on {meta['machine']['device']} ({meta['machine']['cpus']} CPUs, "
        f"{meta['machine']['torch_threads']} torch threads). Base `{meta['base']}`, data `{meta['data']}`.",
        f"Every variant: {s['steps']} steps x batch {s['batch_size']} (same batches, same tokens); "
        f"lr {s['full_lr']} (full) / {s['lora_lr']} (LoRA, alpha = 2r); task score = exact match on "
        f"{meta['test_examples']} held-out examples (base before training: {fmt(meta['base_task_score'])}); "
        f"retention = base-task score after / before ({meta['retention_examples']} examples, before: "
        f"{fmt(meta['base_retention_score'])}).", "",
        markdown_table(result["rows"]), "",
        "states MB: computed fp32 weights + gradients + AdamW states (4 B/param + 12 B/trained param). "
        "peak MB: RSS growth during training on CPU (weights, optimizer, activations, allocator slack), "
        "the CUDA allocator's peak above what was allocated when training began on a GPU (so the frozen base "
        "is not in it: `peak_mem_total_mb` in compare.json has the peak in all). switch s: load + activate "
        "another adapter in a live PEFT model (LoRA) vs load another full model from disk (full).", "",
    ]
    path.write_text("\n".join(text))


def _bars(ax, rows: list[dict], key: str, title: str, log: bool = False) -> None:
    shown = [r for r in rows if r.get(key) is not None]
    labels = [r["method"] if r["rank"] is None else f"{r['method']}\nr={r['rank']}" for r in shown]
    colors = ["tab:red" if r["method"] == "full" else "tab:blue" for r in shown]
    ax.bar(labels, [r[key] for r in shown], color=colors)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.tick_params(axis="x", labelsize=8)


def write_plots(result: dict, out_dir: Path) -> list[Path]:
    """quality.png (task score, retention) and cost.png (trainable params, memory, time, size)."""
    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _bars(axes[0], rows, "task_score", "task score (held-out exact match)")
    _bars(axes[1], rows, "base_retention", "base-task retention (after / before)")
    fig.tight_layout()
    quality = out_dir / "quality.png"
    fig.savefig(quality, dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, title, log) in zip(axes.flat, (
            ("trainable_params", "trainable parameters (log)", True), ("peak_mem_mb", "peak training memory MB", False),
            ("step_time_s", "seconds per step", False), ("artifact_mb", "artifact on disk MB (log)", True))):
        _bars(ax, rows, key, title, log)
    fig.tight_layout()
    cost = out_dir / "cost.png"
    fig.savefig(cost, dpi=110)
    plt.close(fig)
    return [quality, cost]


def write_report(result: dict, out_dir: Path) -> dict[str, Path]:
    """Write compare.json (the rows), compare.meta.json, compare.md and the plots into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result["meta"]["machine"] = machine()
    (out_dir / "compare.json").write_text(json.dumps(result["rows"], indent=2) + "\n")
    (out_dir / "compare.meta.json").write_text(json.dumps(result["meta"], indent=2) + "\n")
    write_markdown(result, out_dir / "compare.md")
    quality, cost = write_plots(result, out_dir)
    return {"json": out_dir / "compare.json", "markdown": out_dir / "compare.md", "quality": quality, "cost": cost}
