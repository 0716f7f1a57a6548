"""Rich tables of the training commands' results, for people (scripts use --json)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from training.compare_report import COLUMNS, fmt


def health_table(health: dict, per_module: bool = False) -> Group:
    """The spectrum summary (and optionally one row per module) of an adapter."""
    table = Table("measure", "mean", "median", "min", "max", title=f"adapter health (r={health.get('rank')}, "
                  f"{health.get('modules')} modules)")
    for key, label in (("effective_rank", "effective rank (entropy)"), ("energy_rank", "rank holding 99% energy")):
        if key in health:
            stats = health[key]
            table.add_row(label, *(fmt(stats[k]) for k in ("mean", "median", "min", "max")))
    parts: list = [table]
    if "near_zero_share" in health:
        parts.append(Text(f"near-zero singular values: {health['near_zero_share']:.1%}   rank utilisation: "
                          f"{health['utilization']:.1%}   zero updates: {health['zero_modules']}"))
    parts += [Text(f"• {note}", style="yellow") for note in health.get("notes", [])]
    if per_module:
        modules = Table("module", "r", "eff. rank", "99% rank", "near-zero", "norm")
        for name, m in health.get("per_module", {}).items():
            modules.add_row(name, str(m["rank"]), fmt(m["effective_rank"]), str(m["energy_rank"]),
                            f"{m['near_zero_share']:.0%}", fmt(m["norm"]))
        parts.append(modules)
    return Group(*parts)


def train_summary(record: dict) -> Group:
    """What a training run did: losses, steps, parameters, time, artifact."""
    m, t, a = record["metrics"], record["timings"], record["artifact"]
    table = Table(show_header=False, title=f"loraplex train {record['method']}")
    rows = (
        ("validation loss", f"{m['eval_loss_before']:.4f} -> {m['eval_loss']:.4f} (best {fmt(m['best_eval_loss'])} "
                            f"at step {m['best_step']})"),
        ("steps", f"{m['steps']} ({m['epochs']} epochs){' - stopped early' if m['early_stopped'] else ''}"),
        ("trainable", f"{m['trainable_params']:,} of {m['total_params']:,} ({m['trainable_pct']:.3g}%)"),
        ("time", f"{t['total_s']:.1f}s total, {t['step_s']:.3f}s/step"),
        ("peak memory", f"{m['peak_mem_mb']} MB ({m['mem_source']})"),
        ("dataset", f"{record['dataset']['train_examples']} train / {record['dataset']['val_examples']} val, "
                    f"sha256 {record['dataset']['sha256'][:12]}…"),
        ("artifact", f"{a['dir']} ({a['size_bytes'] / 2**20:.2f} MB)"),
    )
    for key, value in rows:
        table.add_row(key, value)
    parts: list = [table]
    if "health" in record:
        parts.append(health_table(record["health"]))
    return Group(*parts)


def recommend_view(result: dict) -> Group:
    """The recommendation: memory per method (fits or not), the choice, and the reasons."""
    table = Table("method", "memory GB", "fits", "GPU-hours", "cost $", title=f"available: {result['available_gb']} GB")
    for method in ("full", "lora", "qlora"):
        style = "bold green" if method == result["method"] else None
        table.add_row(method, fmt(result["memory_gb"][method]), "yes" if result["fits"][method] else "no",
                      fmt(result["gpu_hours"][method]), fmt(result["cost_usd"][method]), style=style)
    head = f"recommended: [bold]{result['method']}[/]"
    if result["rank"] is not None:
        head += f"  rank {result['rank']}  targets {', '.join(result['target_modules'])}"
    return Group(table, Text.from_markup(head), *(Text(f"• {r}") for r in result["reasons"]))


def compare_table(rows: list[dict]) -> Group:
    """The comparison rows as a table, with the reason of each skipped row below it."""
    table = Table(*(title for _, title in COLUMNS), title="full fine-tuning vs LoRA")
    for row in rows:
        cells = [fmt(row.get(key)) for key, _ in COLUMNS]
        if row.get("skipped"):
            cells[2] = "skipped"
        table.add_row(*cells)
    skipped = [Text(f"• {r['method']} skipped: {r.get('reason', '')}", style="yellow")
               for r in rows if r.get("skipped")]
    return Group(table, *skipped)
