"""`loraplex bench ...`: benchmark programs that print and save numbers (JSON, PNG, markdown).

Mounted by loraplex/cli.py:
    app.add_typer(bench_app, name="bench")
"""

from __future__ import annotations

import json
from pathlib import Path

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
    docs: Path | None = typer.Option(None, "--docs", help="Also put the table into this markdown file "
                                                             "(e.g. docs/benchmarks.md), between its "
                                                             "engine-bench markers."),
) -> None:
    """Multi-LoRA throughput of the vLLM CPU engine: vLLM's stock LoRA ops vs loraplex's plugin,
    each as a ratio to the same model with LoRA disabled, measured in the same run."""
    from loadtest.engine_bench.report import markdown_table, update_docs
    from loadtest.engine_bench.run import run_bench

    try:
        rows = run_bench(out, quick=quick, console=console)
    except RuntimeError as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from None
    console.print(_table(rows))
    if docs is not None:
        update_docs(markdown_table(rows), docs)
    console.print(f"wrote {out / 'engine.json'}, {out / 'engine.png'}, {out / 'engine.md'}")


def _table(rows: list[dict]) -> Table:
    """The run's results as a rich table, stock and plugin side by side."""
    table = Table(title="CPU engine throughput / LoRA disabled (same run)")
    for col in ("mix", "rank", "case", "stock", "plugin", "plugin/stock"):
        table.add_column(col, justify="left" if col in ("mix", "case") else "right")
    from loadtest.engine_bench.report import case_name, paired_rows

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
    rate: float | None = typer.Option(None, "--rate", help="Offered requests/s over all tenants (default: "
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
    docs: Path | None = typer.Option(None, "--docs", help="Also write the section between the hotswap markers "
                                                             "of this markdown file (e.g. docs/benchmarks.md)."),
) -> None:
    """Hot-swapped adapters on one engine vs one engine per tenant (merged models) vs one engine that reloads
    the tenant's merged weights on demand: throughput, TTFT, memory, cold start, storage, for each N."""
    from loadtest.hotswap.bench import run_bench
    from loadtest.hotswap.config import BenchError, Settings
    from loadtest.hotswap.docs import publish_docs
    from loadtest.hotswap.report import markdown

    try:
        cfg = Settings(tenants=tuple(sorted(int(x) for x in tenants.split(",") if x.strip())),
                          modes=tuple(m.strip() for m in modes.split(",") if m.strip()), duration_s=duration,
                          rate=rate, load=load, zipf=zipf, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                          rank=rank, model=model, memory_fraction=memory_fraction, capacity=capacity)
    except ValueError as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(2) from None
    try:
        run_bench(out, cfg, console=console)
    except (BenchError, RuntimeError) as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from None
    report = json.loads((out / "hotswap.json").read_text())
    console.print(markdown(report["rows"], report["meta"]))
    if docs is not None:
        publish_docs(out, docs)
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
    docs: Path | None = typer.Option(None, "--docs", help="Also put the table into this markdown file "
                                                             "(docs/benchmarks.md), between its routing markers."),
) -> None:
    """Ray Serve: adapter-affinity routing vs no affinity under Zipf traffic (loads per 1k requests, hits)."""
    from loadtest import routing as rt
    from loadtest.routing_report import markdown, publish_docs

    spec = rt.RoutingSpec(replicas=replicas, adapters=adapters, capacity=capacity, requests=requests,
                          warmup=warmup, concurrency=concurrency, zipf_s=zipf)
    report = rt.run_routing(out, spec, console=console)
    console.print(markdown(report))
    if docs is not None:
        publish_docs(report, out, docs)
        console.print(f"updated the routing section of {docs} and {docs.parent / 'img' / 'routing.png'}")
    console.print(f"wrote {out / 'routing.json'}, {out / 'routing.png'}, {out / 'routing.md'}")


@bench_app.command("fairness")
def fairness(out: Path = typer.Option(Path("var/bench"), "--out"),
                   duration: float = typer.Option(30.0, help="seconds of traffic per phase"),
                   flood_factor: float = typer.Option(10.0, help="the flooding tenant's rate / its share"),
                   inflight: int = typer.Option(4, help="the gateway's max in-flight requests"),
                   modes: str = typer.Option("fifo,fair-nocap,fair-noguard,fair", help="admission modes to "
                                             "compare: fifo, fair-nocap (VTC + headroom), fair-noguard (+ share "
                                             "cap), fair (+ slowdown guard, the default), fair@X (guard "
                                             "tolerance X)"),
                   share_cap: float = typer.Option(1.0, help="the capped modes' LORAPLEX_FAIR_SHARE_CAP"),
                   slices: int = typer.Option(3, help="each condition's traffic is cut into this many "
                                              "round-robin slices"),
                   share_rps: float = typer.Option(0.0, min=0.0, help="each tenant's share in requests/s (0: half "
                                                   "the calibrated capacity over the tenants); pins the "
                                                   "operating point, which the calibration on a shared "
                                                   "host does not"),
                   max_queue: int = typer.Option(4096, min=0, help="the gateway's LORAPLEX_MAX_QUEUE (the "
                                                 "production default is 512: a flooder's backlog beyond it is "
                                                 "refused instead of held open)"),
                   gc_freeze: bool = typer.Option(True, help="the gateway's LORAPLEX_GC_FREEZE (off: to see "
                                                  "what full garbage collections cost the others)"),
                   flooder_nice: int = typer.Option(19, min=0, max=19, help="CPU priority (nice) of the flooding "
                                                    "tenant's client process: its load generator stands in for "
                                                    "another machine, but shares the server's cores here")) -> None:
    """One tenant floods at 10x its share: the other tenants' p99 by admission mode (FIFO vs fair/VTC)."""
    from loadtest.fairness.config import mode_settings
    from loadtest.fairness.run import run_fairness

    chosen = tuple(m.strip() for m in modes.split(",") if m.strip())
    try:
        for m in chosen or ("",):
            mode_settings(m)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--modes") from None
    run_fairness(out, duration_s=duration, flood_factor=flood_factor, inflight=inflight, modes=chosen,
                 share_cap=share_cap, slices=slices, share_rps=share_rps or None, max_queue=max_queue,
                 gc_freeze=gc_freeze, flooder_nice=flooder_nice)


@bench_app.command("scale")
def scale(
    adapters: str = typer.Option("8,100,1000", "--adapters", help="Adapter counts, comma-separated (the smallest "
                                                                  "is the throughput baseline)."),
    out: Path = typer.Option(Path("var/bench/scale"), "--out", help="Directory for scale.json/.csv/.md, the PNGs "
                                                                    "and the logs."),
    zipf: str = typer.Option("0.8,1.2", "--zipf", help="Zipf exponents of adapter popularity."),
    duration: float = typer.Option(20.0, "--duration", help="Seconds of traffic per row."),
    load: float = typer.Option(0.6, "--load", help="The unsaturated rows' rate, as a share of capacity."),
    concurrency: int = typer.Option(16, "--concurrency", help="Requests in flight in the saturated rows."),
    per_tenant: int = typer.Option(10, "--per-tenant", help="Adapters per tenant."),
    max_tokens: int = typer.Option(16, "--max-tokens"),
    ranks: str = typer.Option("8,16,64", "--ranks", help="The adapters' ranks, in turn (the engine's max rank is "
                                                         "the largest)."),
    docs: Path | None = typer.Option(None, "--docs", help="Also write the scale section of this markdown file "
                                                          "(e.g. docs/benchmarks.md)."),
) -> None:
    """One engine with 8 to 1,000 adapters of a hundred tenants: throughput, TTFT, residency per tier, RSS, cold
    starts against their bound, answers against the same request alone."""
    from loadtest.scale.bench import run_scale
    from loadtest.scale.config import ScaleConfig, ScaleError
    from loadtest.scale.report import markdown, publish_docs

    try:
        cfg = ScaleConfig(adapters=tuple(sorted(int(x) for x in adapters.split(",") if x.strip())),
                          zipfs=tuple(float(x) for x in zipf.split(",") if x.strip()), duration_s=duration,
                          load=load, concurrency=concurrency, per_tenant=per_tenant, max_tokens=max_tokens,
                          ranks=tuple(int(x) for x in ranks.split(",") if x.strip()))
    except ValueError as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(2) from None
    try:
        report = run_scale(out, cfg, console=console)
    except (ScaleError, RuntimeError) as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from None
    console.print(markdown(report))
    if docs is not None:
        publish_docs(out, docs)
        console.print(f"updated the scale section of {docs}")
    console.print(f"wrote {out / 'scale.json'}, scale.csv, scale.md and scale_*.png")


from loraplex.cli_latency import latency  # noqa: E402 - a module of its own: this one is long enough

bench_app.command("latency")(latency)
