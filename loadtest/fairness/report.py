"""The fairness report: per-tenant and pooled rows, the flood/baseline ratios, fairness.json/.csv/.png/.md."""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from collections import Counter
from pathlib import Path

from rich.console import Console

from loadtest.report import bucket_percentile, ms, percentile, pyplot

console = Console()


def _answered(s) -> bool:
    """Answered in full: a 200 whose stream carried no error event."""
    return s.status == 200 and s.error is None


def summarise(samples, phase: str, mode: str, skip: set[str], waits: dict, engine: dict,
               seconds: float, window_s: float, windows: int, client_cpu: dict | None = None) -> list[dict]:
    """One row per tenant, and one for the other tenants pooled (more samples: a steadier p99).

    `seconds`: the condition's wall time (arrivals, then the backlog's drain); `window_s`: one slice's
    arrival window. served/s counts the answers completed inside the arrival windows, while every
    tenant was sending (what a share cap costs the flooder), not during the drain. `waits`: tenant ->
    the cumulative counts ({upper bound: count}) of the gateway's loraplex_admission_wait_seconds
    histogram; their percentiles are interpolated inside buckets.
    """
    groups = {t: ({t}, False) for t in sorted({s.tenant for s in samples})}
    groups["others (pooled)"] = ({s.tenant for s in samples} - skip, True)
    rows = []
    for name, (members, pooled) in groups.items():
        mine = [s for s in samples if s.tenant in members]
        ok = [s for s in mine if _answered(s)]
        failed = Counter(f"{s.status}: {s.error or ''}"[:160] for s in mine if not _answered(s))
        wait: dict[float, float] = {}  # the members' admission-wait histograms, added up
        for t in members:
            for le, n in waits.get(t, {}).items():
                wait[le] = wait.get(le, 0.0) + n
        rows.append({"mode": mode, "phase": phase, "tenant": name, "flooder": name in skip, "pooled": pooled,
                     "sent": len(mine), "ok": len(ok), "rejected": sum(s.status in (429, 503) for s in mine),
                     # why requests were refused or failed (status: start of the body), the commonest first
                     "errors": dict(failed.most_common(5)),
                     "ok_per_s": round(sum(s.sent_at + s.latency_s <= window_s for s in ok) / (window_s * windows), 2),
                     "wall_s": round(seconds, 1),
                     "latency_p50_ms": ms(percentile([s.latency_s for s in ok], 50)),
                     "latency_p99_ms": ms(percentile([s.latency_s for s in ok], 99)),
                     "ttft_p99_ms": ms(percentile([s.ttft_s for s in ok if s.ttft_s is not None], 99)),
                     "admission_wait_p50_ms": ms(bucket_percentile(wait, 50)),
                     "admission_wait_p99_ms": ms(bucket_percentile(wait, 99)),
                     "client_cpu_s": round(sum((client_cpu or {}).get(t, 0.0) for t in members), 1),
                     **engine})
    return rows


def ratio(rows, mode: str, column: str = "latency_p99_ms", pooled: bool = False) -> float | None:
    """Flood / baseline of `column` for the other tenants: pooled, or the worst single tenant."""
    ratios = []
    for r in rows:
        if r["mode"] == mode and r["phase"] == "flood" and not r["flooder"] and r["pooled"] == pooled:
            base = next(b for b in rows
                        if b["mode"] == mode and b["phase"] == "baseline" and b["tenant"] == r["tenant"])
            if r[column] and base[column]:
                ratios.append(r[column] / base[column])
    return round(max(ratios), 2) if ratios else None


def flooder_rate(rows, mode: str) -> float | None:
    """Requests per second the flooder got served under the flood (what a share cap costs it)."""
    return next((r["ok_per_s"] for r in rows if r["mode"] == mode and r["phase"] == "flood" and r["flooder"]), None)


def write_report(out: Path, rows, meta, duration_s, flood_factor, inflight, max_tokens, share_cap) -> dict:
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "settings": {"duration_s": duration_s, "flood_factor": flood_factor, "max_inflight": inflight,
                           "max_tokens": max_tokens, "share_cap": share_cap}, "calibration": meta, "rows": rows,
              "p99_ratio_others_pooled": {m: ratio(rows, m, pooled=True) for m in modes},
              "p99_ratio_flood_vs_baseline": {m: ratio(rows, m) for m in modes},
              "p50_ratio_others_pooled": {m: ratio(rows, m, "latency_p50_ms", pooled=True) for m in modes},
              "flooder_ok_per_s": {m: flooder_rate(rows, m) for m in modes}}
    (out / "fairness.json").write_text(json.dumps(result, indent=2))
    with open(out / "fairness.csv", "w", newline="") as f:  # every row has the same keys
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(out / "fairness.png", rows)
    (out / "fairness.md").write_text(markdown(result))
    console.print(markdown(result))
    return result


def plot(path: Path, rows) -> None:
    plt = pyplot()
    others = [r for r in rows if r["pooled"]]
    modes = list(dict.fromkeys(r["mode"] for r in others))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for j, phase in enumerate(("baseline", "flood")):
        vals = [next((r["latency_p99_ms"] or 0 for r in others if r["mode"] == m and r["phase"] == phase), 0)
                for m in modes]
        ax.bar([i + (j - 0.5) * width for i in range(len(modes))], vals, width, label=phase,
               color="#48c" if phase == "baseline" else "#c44")
    ax.set_xticks(range(len(modes)), modes)
    ax.set_ylabel("p99 latency of the other tenants (ms)")
    ax.set_title("One tenant floods at 10x its share: the others' p99 by admission mode")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _guard_cell(row) -> str:
    if row.get("guard_slowdown_p50") is None:
        return "–"
    return f"{row['guard_slowdown_p50']} / {row['guard_ceiling_p50']}"


def _cpu_cell(row) -> str:
    if row.get("gateway_cores") is None:
        return "– | –"
    return (f"{row['gateway_cores']} / {row['engine_cores']} / {row['clients_cores']} "
            f"({row['host_busy_pct']}%) | {row.get('gateway_gc_full')} / {row.get('gateway_gc_ms')}")


def markdown(result) -> str:
    lines = [f"### Fairness under a flood ({result['date']}, {result['machine']})", "",
             f"Settings: {result['settings']}; calibration: {result['calibration']}.", "",
             "| mode | phase | tenant | sent | ok | 429/503 | served/s | p50 ms | p99 ms | TTFT p99 ms "
             "| admission wait "
             "p50 / p99 ms | engine mean latency ms (all tenants) | guard: slowdown / heavy ceiling (p50) "
             "| host load (1 min) | cores: gateway / engine / clients (host busy) | gateway GC: full collections "
             "/ ms in all |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        name = r["tenant"] + (" (flooder)" if r["flooder"] else "")
        name = f"**{name}**" if r["pooled"] else name
        lines.append(f"| {r['mode']} | {r['phase']} | {name} | {r['sent']} | {r['ok']} | {r['rejected']} | "
                     f"{r['ok_per_s']} | {r['latency_p50_ms']} | {r['latency_p99_ms']} | {r['ttft_p99_ms']} | "
                     f"{r['admission_wait_p50_ms']} / {r['admission_wait_p99_ms']} | {r['engine_latency_mean_ms']} | "
                     f"{_guard_cell(r)} | {r['loadavg_1m']} | {_cpu_cell(r)} |")
    pooled, worst = result["p99_ratio_others_pooled"], result["p99_ratio_flood_vs_baseline"]
    p50, rate = result["p50_ratio_others_pooled"], result["flooder_ok_per_s"]
    lines += ["", "| mode | others' p99 flood / baseline (pooled) | worst single tenant | others' p50 ratio "
                  "| flooder served/s |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {pooled[m]} | {worst[m]} | {p50[m]} | {rate[m]} |" for m in pooled]
    lines += ["", "Target: the other tenants' p99 under the flood ≤ 1.2× their p99 without it."]
    failures = [(r, e, n) for r in result["rows"] if not r["pooled"] for e, n in (r.get("errors") or {}).items()]
    if failures:
        lines += ["", "Requests not answered in full (status: start of the body or the client's error):", ""]
        lines += [f"- {r['mode']} / {r['phase']} / {r['tenant']}: {n}× `{e}`" for r, e, n in failures]
    return "\n".join(lines) + "\n"
