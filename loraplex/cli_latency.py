"""`loraplex bench latency`: the combined latency benchmark (loadtest/latency/), mounted by loraplex/cli_bench.py."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from loadtest.latency import PARTS

console = Console()


def latency(
    out: Path = typer.Option(Path("var/bench/latency"), "--out",
                             help="Directory for latency.json, .csv, .png, .md and each part's files."),
    duration: float = typer.Option(60.0, "--duration", help="Seconds of traffic of each fairness scenario."),
    engine_rounds: int = typer.Option(3, "--engine-rounds", help="Timed rounds of each engine ratio."),
    hop_rounds: int = typer.Option(3, "--hop-rounds", help="`vllm bench serve` runs on each side of the hop."),
    parts: str = typer.Option(",".join(PARTS), "--parts", help="Which parts to run, comma-separated: "
                                                               + ", ".join(PARTS) + "."),
    docs: Path | None = typer.Option(None, "--docs", help="Also put the section into this markdown file "
                                                             "(e.g. docs/benchmarks.md), between its "
                                                             "latency-bench markers."),
    var_dir: Path = typer.Option(Path("var"), "--var-dir", help="Where the demo models are (built if missing)."),
) -> None:
    """Latency under normal traffic: Zipf at 60% and the flood (fair admission), the gateway hop (vLLM's bench
    client direct vs through the gateway, gateway CPU per request), and the plugin's engine ratios in the
    launcher's engines and an in-process vllm.LLM with vLLM's defaults; pass/fail per target."""
    from loadtest.latency.report import publish_docs
    from loadtest.latency.run import run_latency

    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        console.print(f"[red]error[/]: unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")
        raise typer.Exit(2)
    result = run_latency(out, var_dir=var_dir, duration_s=duration, engine_rounds=engine_rounds,
                         hop_rounds=hop_rounds, parts=chosen, console=console)
    table = Table(title="latency targets")
    for col in ("part", "check", "value", "target", "verdict"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for c in result["checks"]:
        verdict = "not run" if c["passed"] is None else ("[green]pass" if c["passed"] else "[red]FAIL")
        table.add_row(c["part"], c["check"], "-" if c["value"] is None else f"{c['value']:.2f}", c["target"], verdict)
    console.print(table)
    if docs is not None:
        publish_docs(out, result, docs)
    console.print(f"wrote {out / 'latency.json'}, {out / 'latency.csv'}, {out / 'latency.png'}, {out / 'latency.md'}")
    if result.get("errors"):
        raise typer.Exit(1)
