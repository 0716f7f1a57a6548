"""The scale benchmark's outputs: scale.json (meta, rows, the targets checked), scale.csv, two plots, scale.md,
and its section of docs/benchmarks.md."""

from __future__ import annotations

import statistics
from pathlib import Path

from loadtest.report import copy_images, fmt, pyplot, replace_section, wrap, write_csv, write_json

SECTION = "scale"


def targets(rows: list[dict], pairs: dict[str, list[float]] | None = None) -> dict:
    """The issue's targets, each with the measured value and whether it holds. The throughput ratio is the
    median of the paired rounds (`pairs`: zipf -> ratios) when the run has them, else the rows' ratio."""
    main = [r for r in rows if r["variant"] == "mixed ranks"]
    counts = sorted({r["adapters"] for r in main})
    out: dict = {}
    for zipf in sorted({r["zipf"] for r in main}):
        sat = {r["adapters"]: r for r in main if r["zipf"] == zipf and r["load"] == "saturated"}
        if len(counts) > 1 and sat.get(counts[0], {}).get("tok_per_s"):
            rows_ratio = round(sat[counts[-1]]["tok_per_s"] / sat[counts[0]]["tok_per_s"], 3)
            rounds = (pairs or {}).get(str(zipf))
            ratio = statistics.median(rounds) if rounds else rows_ratio
            out[f"throughput_ratio_zipf_{zipf}"] = {"value": round(ratio, 3), "target": ">= 0.80", "met": ratio >= 0.8,
                                                    "rows": rows_ratio, **({"paired_rounds": rounds} if rounds else {})}
    cold = [r["cold_vs_bound"] for r in main if r.get("cold_vs_bound") is not None]
    if cold:
        out["cold_first_token_vs_bound"] = {"value": max(cold), "target": "<= 3", "met": max(cold) <= 3}
    wrong = sum(r["wrong_answers"] for r in rows)
    out["wrong_answers"] = {"value": wrong, "checked": sum(r["solo_checked"] for r in rows),
                            "near_tie_flips": sum(r.get("near_tie_flips", 0) for r in rows),
                            "misrouted": sum(r.get("misrouted", 0) for r in rows), "target": "0", "met": wrong == 0}
    flat_from = 100 if 100 in counts else (counts[1] if len(counts) > 1 else None)
    if flat_from is not None and flat_from != counts[-1]:
        for proc in ("gateway", "engine"):
            a = max(r[f"{proc}_rss_mb"] for r in main if r["adapters"] == flat_from)
            b = max(r[f"{proc}_rss_mb"] for r in main if r["adapters"] == counts[-1])
            growth = (b - a) / a if a else None
            out[f"{proc}_rss_growth_{flat_from}_to_{counts[-1]}"] = {
                "value": None if growth is None else round(growth, 3), "target": "<= 0.10",
                "met": growth is not None and growth <= 0.10}
    return out


def write_report(out: Path, rows: list[dict], meta: dict) -> dict:
    report = {"meta": {**meta, "targets": targets(rows, meta.get("paired_throughput_ratios"))}, "rows": rows}
    write_json(out / "scale.json", report)
    write_csv(out / "scale.csv", rows)
    plots(out, rows)
    (out / "scale.md").write_text(markdown(report) + "\n")
    return report


def plots(out: Path, rows: list[dict]) -> list[Path]:
    plt = pyplot()
    main = [r for r in rows if r["variant"] == "mixed ranks"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for zipf in sorted({r["zipf"] for r in main}):
        sat = sorted((r for r in main if r["zipf"] == zipf and r["load"] == "saturated"), key=lambda r: r["adapters"])
        part = sorted((r for r in main if r["zipf"] == zipf and r["load"] != "saturated"), key=lambda r: r["adapters"])
        ax1.plot([r["adapters"] for r in sat], [r["tok_per_s"] for r in sat], "o-", label=f"zipf {zipf}, saturated")
        ax2.plot([r["adapters"] for r in part], [r["ttft_p99_ms"] for r in part], "o-",
                 label=f"zipf {zipf}, {part[0]['load'] if part else ''} of capacity")
    for ax, title, unit in ((ax1, "generated tokens/s at capacity", "tok/s"), (ax2, "TTFT p99 below capacity", "ms")):
        ax.set_xscale("log")
        ax.set_xlabel("adapters")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend()
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    first = out / "scale_throughput_ttft.png"
    fig.savefig(first, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    counts = sorted({r["adapters"] for r in main})
    stages = ("resolve", "download", "verify", "engine_load", "first_token")
    per = {c: next(r for r in main if r["adapters"] == c).get("cold_stages_ms") or {} for c in counts}
    width = 0.8 / len(stages)
    for i, stage in enumerate(stages):
        ax.bar([j + i * width for j in range(len(counts))], [per[c].get(stage) or 0 for c in counts], width,
               label=stage)
    bound = [1000 * next(r for r in main if r["adapters"] == c).get("cold_bound_s", 0) for c in counts]
    ax.plot([j + 2 * width for j in range(len(counts))], bound, "k_", markersize=30,
            label="bound (bytes/bw + warm TTFT)")
    ax.set_xticks([j + 2 * width for j in range(len(counts))], [f"N={c}" for c in counts])
    ax.set_ylabel("ms (mean per cold adapter)")
    ax.set_title("cold start by stage (first_token: arrival to first token)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    second = out / "scale_cold_start.png"
    fig.savefig(second, dpi=110)
    plt.close(fig)
    return [first, second]


def markdown(report: dict) -> str:
    meta, rows = report["meta"], report["rows"]
    head = ("| adapters | zipf | load | ranks | req/s | tok/s | TTFT p50 ms | TTFT p99 ms | loads/1k | evictions/1k | "
            "engine / disk / S3 | wrong / near-tie / checked (misrouted) | gateway RSS MiB | engine RSS MiB | "
            "CPU ms/req gateway / engine | cold first token s | bound s |")
    lines = [head, "|" + "---|" * 17]
    for r in rows:
        share = r["resident_share"]
        lines.append(f"| {r['adapters']} | {r['zipf']} | {r['load']} | {r['variant']} | {fmt(r['req_per_s'])} | "
                     f"{fmt(r['tok_per_s'])} | {fmt(r['ttft_p50_ms'])} | {fmt(r['ttft_p99_ms'])} | "
                     f"{fmt(r['loads_per_1k'])} | {fmt(r['evictions_per_1k'])} | "
                     f"{share['engine']:.2f} / {share['disk']:.2f} / {share['s3']:.2f} | "
                     f"{r['wrong_answers']} / {r.get('near_tie_flips', 0)} / {r['solo_checked']} "
                     f"({r.get('misrouted', 0)}) | "
                     f"{fmt(r['gateway_rss_mb'])} | "
                     f"{fmt(r['engine_rss_mb'])} | {fmt(r.get('gateway_cpu_ms_per_req'), 2)} / "
                     f"{fmt(r.get('engine_cpu_ms_per_req'), 2)} | {fmt(r.get('cold_first_token_s'), 3)} | "
                     f"{fmt(r.get('cold_bound_s'), 3)} |")
    checks = [f"- {name}: {t['value']} (target {t['target']}): {'met' if t['met'] else '**not met**'}"
              + (f" (median of paired rounds {t['paired_rounds']}; the rows above: {t['rows']})"
                 if t.get("paired_rounds") else "")
              for name, t in meta["targets"].items()]
    cfg = meta["config"]
    intro = (f"One vLLM engine (CPU) and one gateway; {meta['tenants']} tenants with {cfg['per_tenant']} adapters "
             f"each at the largest count, ranks {cfg['ranks']} in turn ({meta['distinct_weight_sets']} distinct random "
             f"weight sets, reused under other names beyond that); Zipf popularity over adapters. Saturated rows "
             f"keep {cfg['concurrency']} streamed requests in flight; the others are open-loop Poisson arrivals at "
             f"{cfg['load']:.0%} of the smallest count's saturated throughput. {cfg['duration_s']:g} s per row after "
             f"one request to each adapter and {cfg.get('warmup_s', 0):g} s of unmeasured traffic per count, "
             f"{'the adapters uploaded with warm: true, ' if cfg.get('warm_uploads') else ''}"
             f"{'' if cfg.get('heavy_limits', True) else NO_LIMITS}"
             f"{cfg['max_tokens']} generated tokens per request. Engine ({cfg.get('dtype', 'auto')}): --max-loras "
             f"{cfg.get('batch_slots') or cfg['max_loras']}, "
             f"--max-cpu-loras {cfg['max_cpu_loras']}; disk tier {meta['disk_tier_bytes'] / 2**20:.0f} MiB. "
             f"S3 bandwidth measured {meta['s3_bandwidth_mib_s']} MiB/s. Run {meta['started']}, "
             f"{meta['wall_s']:.0f} s, {meta['cpus']} CPUs.")
    notes = ("Columns: *loads/1k* and *evictions/1k* are engine loads and unloads per 1,000 requests; *engine / disk "
             "/ S3* is where requests found their adapter (from the gateway's residency counters: already registered "
             "in the engine, fetched from the local disk tier, or downloaded from S3); the answer columns compare "
             "sampled answers with the same request sent alone: *wrong* differ where the answer alone was sure (its "
             f"first differing token led the runner-up by {cfg.get('tie_tolerance', 5e-3):g} or more in logprob), "
             "*near-tie* differ where it was not (random adapters leave such ties, and a batch sums in another "
             "order), and *misrouted* counts answers that are exactly another weight set's (or the base's) answer "
             "alone: served with the wrong adapter. Cold start: "
             "never-used adapters, one at a time on the idle stack, first streamed token against "
             "bytes / S3 bandwidth + the warm TTFT of the same request.")
    return "\n".join([wrap(intro), "", *lines, "", "Targets:", *checks, "", wrap(notes)])


NO_LIMITS = ("fair admission in VTC order without its limits on heavy tenants (share cap, slowdown guard: the "
             "fairness benchmark measures those), ")


def publish_docs(out: Path, docs: Path) -> None:
    import json

    report = json.loads((out / "scale.json").read_text())
    img = copy_images([out / "scale_throughput_ttft.png", out / "scale_cold_start.png"], docs)
    rel = img.relative_to(docs.parent)
    body = (f"## Scale: 8 to 1,000 adapters on one engine (`make bench-scale`)\n\n{markdown(report)}\n\n"
            f"![throughput and TTFT vs adapters]({rel}/scale_throughput_ttft.png)\n"
            f"![cold start stages]({rel}/scale_cold_start.png)\n")
    replace_section(docs, SECTION, body)
