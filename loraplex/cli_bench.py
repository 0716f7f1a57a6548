"""`loraplex bench ...`: benchmark programs that print and save numbers (JSON, PNG, markdown).

Mounted by loraplex/cli.py:
    app.add_typer(bench_app, name="bench")
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

bench_app = typer.Typer(help="Benchmarks: print numbers and save them as JSON, PNG and a markdown table.",
                        no_args_is_help=True)
console = Console()


@bench_app.command("engine")
def engine(
    out: Path = typer.Option(..., "--out", help="Directory for engine.json, engine.png, engine.md (and the "
                                                "bench model and adapters it builds, under build/)."),
    quick: bool = typer.Option(False, "--quick", help="Reduced matrix (rank 16, decode-heavy, base-only/1/8 "
                                                      "adapters, one round): a smoke test of ~2 minutes."),
    docs: Optional[Path] = typer.Option(None, "--docs", help="Also put the table into this markdown file "
                                                             "(e.g. docs/benchmarks.md), between its "
                                                             "engine-bench markers."),
) -> None:
    """Multi-LoRA throughput of the vLLM CPU engine: vLLM's stock LoRA ops vs loraplex's plugin,
    each as a ratio to the same model with LoRA disabled, measured in the same run."""
    from loadtest import engine_bench

    try:
        rows = engine_bench.run_bench(out, quick=quick, console=console)
    except RuntimeError as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from None
    console.print(_table(rows))
    if docs is not None:
        engine_bench.update_docs(engine_bench.markdown_table(rows), docs)
    console.print(f"wrote {out / 'engine.json'}, {out / 'engine.png'}, {out / 'engine.md'}")


def _table(rows: list[dict]) -> Table:
    """The run's results as a rich table, stock and plugin side by side."""
    table = Table(title="CPU engine throughput / LoRA disabled (same run)")
    for col in ("mix", "rank", "case", "stock", "plugin", "plugin/stock"):
        table.add_column(col, justify="left" if col in ("mix", "case") else "right")
    from loadtest.engine_bench import case_name, paired_rows

    for mix, rank, n, stock, plugin in paired_rows(rows):
        table.add_row(mix, str(rank), case_name(n, rank), f"{stock['ratio_to_lora_disabled']:.2f}",
                      f"{plugin['ratio_to_lora_disabled']:.2f}", f"{plugin['tok_per_s'] / stock['tok_per_s']:.2f}x")
    return table
