"""`loraplex bench ...`: benchmark programs that print and save numbers (JSON, PNG, markdown).

Mounted by loraplex/cli.py:
    app.add_typer(bench_app, name="bench")
"""

from __future__ import annotations

import json
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


@bench_app.command("hotswap")
def hotswap(
    tenants: str = typer.Option("2,4,8", "--tenants", help="Values of N (tenants), comma-separated."),
    out: Path = typer.Option(Path("var/bench/hotswap"), "--out", help="Directory for hotswap.json/.csv/.md, the "
                                                                       "PNGs, locust's CSVs and the engines' logs."),
    duration: float = typer.Option(30.0, "--duration", help="Seconds of Poisson arrivals per row."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Offered requests/s over all tenants (default: "
                                                              "--load x the hotswap capacity at the smallest N)."),
    load: float = typer.Option(0.6, "--load", help="Fraction of the hotswap capacity offered when --rate is unset."),
    zipf: float = typer.Option(1.0, "--zipf", help="Zipf exponent of tenant popularity (0 = uniform)."),
    prompt_tokens: int = typer.Option(32, "--prompt-tokens"),
    max_tokens: int = typer.Option(32, "--max-tokens", help="Answer length (exact: ignore_eos)."),
    rank: int = typer.Option(16, "--rank", help="LoRA rank of the tenants' random adapters."),
    model: str = typer.Option("demo", "--model", help="demo (the tiny demo base) or bench (a random 13M-parameter "
                                                      "Llama, so a toy model's size does not dominate)."),
    modes: str = typer.Option("hotswap,separate,reload", "--modes", help="Which modes to run."),
    memory_fraction: float = typer.Option(0.7, "--memory-fraction", help="Share of available memory the separate "
                                                                         "engines may use."),
    capacity: bool = typer.Option(True, "--capacity/--no-capacity", help="Also measure each row's saturated "
                                                                         "throughput (a short burst)."),
    docs: Optional[Path] = typer.Option(None, "--docs", help="Also write the section between the hotswap markers "
                                                             "of this markdown file (e.g. docs/benchmarks.md)."),
) -> None:
    """Hot-swapped adapters on one engine vs one engine per tenant (merged models) vs one engine that reloads
    the tenant's merged weights on demand: throughput, TTFT, memory, cold start, storage, for each N."""
    from loadtest import hotswap as hs

    try:
        cfg = hs.Settings(tenants=tuple(sorted(int(x) for x in tenants.split(",") if x.strip())),
                          modes=tuple(m.strip() for m in modes.split(",") if m.strip()), duration_s=duration,
                          rate=rate, load=load, zipf=zipf, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                          rank=rank, model=model, memory_fraction=memory_fraction, capacity=capacity)
    except ValueError as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(2) from None
    try:
        hs.run_bench(out, cfg, console=console)
    except (hs.BenchError, RuntimeError) as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from None
    report = json.loads((out / "hotswap.json").read_text())
    console.print(hs.markdown(report["rows"], report["meta"]))
    if docs is not None:
        hs.publish_docs(out, docs)
        console.print(f"updated the hotswap section of {docs} and its plots in {docs.parent / 'img'}")
    console.print(f"wrote {out / 'hotswap.json'}, hotswap.csv, hotswap.md and hotswap_*.png")


@bench_app.command("routing")
def routing(
    out: Path = typer.Option(Path("var/bench/routing"), "--out", help="Directory for routing.json, .png, .md."),
    replicas: int = typer.Option(2, help="Engine replicas (each its own vLLM engine)."),
    adapters: int = typer.Option(24, help="Adapters published (the demo adapters under numbered names)."),
    capacity: int = typer.Option(4, help="Adapters each replica keeps loaded."),
    requests: int = typer.Option(400, help="Measured requests per routing mode."),
    warmup: int = typer.Option(100, help="Unmeasured requests per mode first."),
    concurrency: int = typer.Option(4, help="Requests in flight."),
    zipf: float = typer.Option(1.0, help="Zipf exponent of adapter popularity."),
    docs: Optional[Path] = typer.Option(None, "--docs", help="Also put the table into this markdown file "
                                                             "(docs/benchmarks.md), between its routing markers."),
) -> None:
    """Ray Serve: adapter-affinity routing vs no affinity under Zipf traffic (loads per 1k requests, hits)."""
    from loadtest import routing as rt

    spec = rt.RoutingSpec(replicas=replicas, adapters=adapters, capacity=capacity, requests=requests,
                          warmup=warmup, concurrency=concurrency, zipf_s=zipf)
    report = rt.run_routing(out, spec, console=console)
    console.print(rt.markdown(report))
    if docs is not None:
        rt.update_docs(rt.docs_section(report, out), docs)
        img = docs.parent / "img" / "routing.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        img.write_bytes((out / "routing.png").read_bytes())
        console.print(f"updated the routing section of {docs} and {img}")
    console.print(f"wrote {out / 'routing.json'}, {out / 'routing.png'}, {out / 'routing.md'}")
