"""The engine benchmark's report: stock vs plugin pairs, the markdown table, the plot, the docs section."""

from __future__ import annotations

from pathlib import Path

from loadtest.report import markers, pyplot, replace_section


def case_name(n_adapters: int, rank: int | None) -> str:
    if rank is None:
        return "lora_disabled"
    return "base_only" if n_adapters == 0 else f"{n_adapters}_adapter{'s' if n_adapters > 1 else ''}"


def paired_rows(rows: list[dict]):
    """(mix, rank, adapters, stock row, plugin row) for every LoRA case, in matrix order."""
    by_key = {(r["mix"], r["rank"], r["adapters"], r["ops"]): r for r in rows}
    keys = sorted({k[:3] for k in by_key if k[1] is not None}, key=lambda k: (k[0], k[1], k[2]))
    return [(mix, rank, n, by_key[(mix, rank, n, "stock")], by_key[(mix, rank, n, "plugin")])
            for mix, rank, n in keys]


def markdown_table(rows: list[dict]) -> str:
    """Stock vs plugin side by side, throughput and ratio to LoRA disabled (same run)."""
    lines = ["| mix | rank | case | stock tok/s | stock ratio | plugin tok/s | plugin ratio | plugin/stock |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["rank"] is None:
            lines.append(f"| {r['mix']} | - | LoRA disabled | {r['tok_per_s']:.0f} | 1.00 | | | |")
    for mix, rank, n, stock, plugin in paired_rows(rows):
        lines.append(f"| {mix} | {rank} | {case_name(n, rank).replace('_', ' ')} | {stock['tok_per_s']:.0f} | "
                     f"{stock['ratio_to_lora_disabled']:.2f} | {plugin['tok_per_s']:.0f} | "
                     f"{plugin['ratio_to_lora_disabled']:.2f} | {plugin['tok_per_s'] / stock['tok_per_s']:.2f}x |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Bars of the ratio to LoRA disabled, stock vs plugin, one panel per mix."""
    plt = pyplot()
    pairs = paired_rows(rows)
    mixes = sorted({p[0] for p in pairs})
    fig, axes = plt.subplots(len(mixes), 1, figsize=(max(6, len(pairs) * 0.6), 3.2 * len(mixes)), squeeze=False)
    for ax, mix in zip(axes[:, 0], mixes):
        sel = [p for p in pairs if p[0] == mix]
        xs = range(len(sel))
        ax.bar([x - 0.2 for x in xs], [p[3]["ratio_to_lora_disabled"] for p in sel], 0.4, label="vLLM stock ops")
        ax.bar([x + 0.2 for x in xs], [p[4]["ratio_to_lora_disabled"] for p in sel], 0.4, label="loraplex plugin")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylim(0, 1.3)
        ax.set_xticks(list(xs), [f"r{p[1]}\n{case_name(p[2], p[1]).replace('_', ' ')}" for p in sel], fontsize=7)
        ax.set_ylabel("throughput / LoRA disabled")
        ax.set_title(mix)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


DOC_START, DOC_END = markers("engine-bench")


def update_docs(table: str, path: Path) -> None:
    """Put `table` between the engine-bench markers of `path`, leaving every other section as it is."""
    replace_section(path, "engine-bench", table)
