"""Fairness scenarios as functions: Zipf traffic at a share of capacity, and one tenant's flood.

Each takes a running `BenchStack` (or starts its own), returns a dict of numbers and target checks, and
writes it as JSON when given `out`. `loraplex bench fairness` and a combined latency program call them.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from loadtest.fairness.clients import drive_tenants, prompts, sustained_capacity
from loadtest.fairness.config import mode_settings
from loadtest.fairness.gateways import admission_waits, fair_capacity, held_counts, waits_between
from loadtest.fairness.stack import BenchStack, bench_stack
from loadtest.report import bucket_percentile, ms, percentile, pyplot
from loadtest.traffic import TenantLoad

# the Zipf scenario's admission settings: the defaults (fair on, share cap 1.0, guard 1.15) against FIFO
ZIPF_MODES = {"fair": mode_settings("fair"), "fair-off": mode_settings("fifo")}
TTFT_P99_OVER_POOLED_P50 = 3.0  # target: every tenant's TTFT p99 <= 3x the pooled p50 (fair on)
POPULAR_P99_OVER_FAIR_OFF = 1.2  # target: the most popular tenant's p99 <= 1.2x its p99 with fair admission off
FLOOD_P99_RATIO = 1.2  # target: the others' p99 under a flood <= 1.2x their p99 without it


def zipf_rates(total: float, tenants: int, s: float) -> list[float]:
    """Requests per second of each tenant, the most popular first: `total` split by Zipf(s) weights."""
    weights = [1 / (i + 1) ** s for i in range(tenants)]
    return [total * w / sum(weights) for w in weights]


def _tenant_stats(samples, tenants: list[str], waits: dict) -> dict:
    out = {}
    for t in tenants:
        ok = [s for s in samples if s.tenant == t and s.status == 200 and s.error is None]
        ttft = [s.ttft_s for s in ok if s.ttft_s is not None]
        out[t] = {"sent": sum(s.tenant == t for s in samples), "ok": len(ok),
                  "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p99_ms": ms(percentile(ttft, 99)),
                  "ttft_max_ms": ms(max(ttft, default=None)),
                  "admission_wait_p99_ms": ms(bucket_percentile(waits.get(t, {}), 99))}
    return out


def _warm(bg) -> None:
    """One request per tenant, so that no measured request waits for its adapter's first load."""
    for _, key, model in bg.tenants:
        with bg.running.client(key) as c:
            c.post("/v1/completions", json={"model": model, "prompt": prompts()[0], "max_tokens": 2}).raise_for_status()


def _write(out: Path | None, name: str, result: dict) -> dict:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def plot_zipf(result: dict, path: Path) -> None:
    """Each tenant's TTFT p99 with fair admission on and off (log scale: a throttled tenant is seconds)."""
    plt = pyplot()
    tenants = list(result["rates_req_s"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, (mode, color) in enumerate((("fair", "#48c"), ("fair-off", "#999"))):
        vals = [result["modes"][mode]["tenants"][t]["ttft_p99_ms"] or 0 for t in tenants]
        ax.bar([i + (j - 0.5) * 0.38 for i in range(len(tenants))], vals, 0.38, label=mode, color=color)
    ax.set_xticks(range(len(tenants)), [f"{t}\n{result['rates_req_s'][t]} req/s" for t in tenants])
    ax.set_yscale("log")
    ax.set_ylim(bottom=10)  # a fixed floor: plots of different runs compare, small gaps look small
    ax.set_ylabel("TTFT p99 (ms)")
    ax.set_title(f"Zipf s={result['settings']['zipf_s']} at {result['settings']['load']:.0%} of capacity: "
                 "TTFT p99 per tenant")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_zipf_scenario(stack: BenchStack | None = None, *, tenants: int = 4, zipf_s: float = 1.0,
                      load: float = 0.6, duration_s: float = 60.0, max_tokens: int = 16, slices: int = 2,
                      inflight: int | None = None, capacity_req_s: float | None = None, seed: int = 0,
                      var_dir: Path = Path("var"), out: Path | None = None, modes: dict | None = None) -> dict:
    """Zipf(`zipf_s`) traffic over `tenants` tenants, open-loop Poisson at `load` x the measured capacity, with
    the default admission settings ("fair") and with fair admission off ("fair-off"), same arrivals.

    Capacity: requests per second the stack sustains with the gateway's window of requests always open
    (closed loop through the fair-off gateway, `clients.sustained_capacity`), unless `capacity_req_s` pins
    it. Each mode's traffic is cut into `slices`, run alternately, so a noisy host disturbs both alike.
    `inflight`: the gateways' window (None: the default). `modes`: the two gateways' admission settings (default
    ZIPF_MODES; both `mode_settings("fifo")` is an A/A run: how far apart two like gateways measure).

    Returns {"scenario": "zipf", "settings", "capacity_req_s", "rates_req_s": {tenant: rate},
    "modes": {mode: {"tenants": {tenant: {"sent", "ok", "ttft_p50_ms", "ttft_p99_ms", "ttft_max_ms",
    "admission_wait_p99_ms"}}, "held": {tenant: requests held back while a slot was free}, "pooled_ttft_p50_ms",
    "pooled_ttft_p99_ms"}}, "fair_capacity_tokens_per_s": the capacity fair admission measured after each of its
    slices, "popular": the most popular
    tenant, "checks": {"max_p99_over_pooled_p50", "every_p99_within_3x_pooled_p50", "popular_p99_over_fair_off",
    "popular_p99_within_1_2x_fair_off", "passed"}}; written to `out`/zipf.json when `out` is given.
    """
    with contextlib.ExitStack() as es:
        stack = stack or es.enter_context(bench_stack(var_dir))
        admissions = modes or ZIPF_MODES
        gws = {m: stack.gateway(f"zipf-{m}", a, inflight, tenants=tenants) for m, a in admissions.items()}
        for bg in gws.values():
            es.callback(bg.close)
            _warm(bg)
        names = [t for t, _, _ in gws["fair-off"].tenants]
        off = gws["fair-off"]
        # The same closed loop at the window through every gateway, the measured one included: a gateway that
        # had only its warm-up requests met the first bursts with a cold connection pool to the engine (an A/A
        # run, both gateways without fair admission, put the unwarmed one's p99 at 1.44x the other's).
        sustained = {m: sustained_capacity(bg.url, bg.tenants, max_tokens, bg.admission.queue.max_inflight)
                     for m, bg in gws.items()}
        cap = capacity_req_s or sustained["fair-off"]
        rates = zipf_rates(load * cap, tenants, zipf_s)
        samples = {m: [] for m in gws}
        waits = {m: {} for m in gws}
        held = {m: {} for m in gws}  # requests held back while a slot was free (fair mode only)
        capacities = []  # tokens/s fair admission measured at the end of each fair slice
        for i in range(slices):
            for m in list(gws)[i % 2:] + list(gws)[:i % 2]:  # each mode goes first in turn
                bg = gws[m]
                bg.reset()
                before, held_before = admission_waits(), held_counts()
                loads = [TenantLoad(t, k, mdl, rate=r, prompts=prompts(), max_tokens=max_tokens)
                         for (t, k, mdl), r in zip(bg.tenants, rates)]
                got, _ = drive_tenants(bg.url, loads, duration_s / slices, seed=seed + i)
                samples[m] += got
                for t, n in held_counts().items():
                    held[m][t] = held[m].get(t, 0.0) + n - held_before.get(t, 0.0)
                if m == "fair":
                    capacities.append(round(fair_capacity(), 1))
                for t, added in waits_between(before, admission_waits()).items():
                    mine = waits[m].setdefault(t, {})
                    for le, n in added.items():
                        mine[le] = mine.get(le, 0.0) + n
    modes = {}
    for m, got in samples.items():
        ttft = [s.ttft_s for s in got if s.status == 200 and s.error is None and s.ttft_s is not None]
        modes[m] = {"tenants": _tenant_stats(got, names, waits[m]), "held": {t: n for t, n in held[m].items() if n},
                    "pooled_ttft_p50_ms": ms(percentile(ttft, 50)), "pooled_ttft_p99_ms": ms(percentile(ttft, 99))}
    fair, off, popular = modes["fair"], modes["fair-off"], names[0]
    worst = max((r["ttft_p99_ms"] or 0.0) for r in fair["tenants"].values())
    over_p50 = round(worst / fair["pooled_ttft_p50_ms"], 2) if fair["pooled_ttft_p50_ms"] else None
    pop, pop_off = fair["tenants"][popular]["ttft_p99_ms"], off["tenants"][popular]["ttft_p99_ms"]
    over_off = round(pop / pop_off, 2) if pop and pop_off else None
    checks = {"max_p99_over_pooled_p50": over_p50,
              "every_p99_within_3x_pooled_p50": over_p50 is not None and over_p50 <= TTFT_P99_OVER_POOLED_P50,
              "popular_p99_over_fair_off": over_off,
              "popular_p99_within_1_2x_fair_off": over_off is not None and over_off <= POPULAR_P99_OVER_FAIR_OFF}
    checks["passed"] = checks["every_p99_within_3x_pooled_p50"] and checks["popular_p99_within_1_2x_fair_off"]
    result = {"scenario": "zipf", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": {"tenants": tenants, "zipf_s": zipf_s, "load": load, "duration_s": duration_s,
                           "max_tokens": max_tokens, "slices": slices, "inflight": inflight, "seed": seed,
                           "modes": admissions},
              "capacity_req_s": round(cap, 2), "capacity_pinned": bool(capacity_req_s),
              "rates_req_s": {t: round(r, 2) for t, r in zip(names, rates)},
              "fair_capacity_tokens_per_s": capacities, "modes": modes, "popular": popular, "checks": checks}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot_zipf(result, out / "zipf.png")
    return _write(out, "zipf", result)


def run_flood_scenario(stack: BenchStack | None = None, *, duration_s: float = 60.0, flood_factor: float = 10.0,
                       share_rps: float | None = 4.0, overload: float = 1.3, inflight: int = 8,
                       max_queue: int = 512, slices: int = 3, modes: tuple[str, ...] = ("fair",),
                       var_dir: Path = Path("var"), out: Path = Path("var/bench/flood")) -> dict:
    """One of the three demo tenants floods at `flood_factor` x its share (`share_rps`), the others send at
    their share; each mode with and without the flood (`loadtest.fairness.run.run_fairness`, whose report
    files go to `out`). The defaults are the documented operating point (`--inflight 8 --share-rps 4
    --max-queue 512`). `share_rps=None`: each tenant's share is set so that the flood and the others together
    offer `overload` x what the stack sustains through the window (`clients.sustained_capacity`, measured
    here): a flood above capacity whatever the host, where 4 req/s x 10 may fit in a faster engine's room.

    Returns {"scenario": "flood", "settings", "modes": {mode: {"others_p99_ratio" (pooled, flood over
    baseline), "worst_tenant_p99_ratio", "others_p50_ratio", "flooder_ok_per_s", "passed"}}, "passed" (every
    mode that is not FIFO met the target), "report": run_fairness's result}; also written to `out`/flood.json.
    """
    from loadtest.fairness.run import run_fairness

    with contextlib.ExitStack() as es:
        stack = stack or es.enter_context(bench_stack(var_dir))
        sustained = None
        if share_rps is None:
            cal = stack.gateway("flood-calibration", mode_settings("fifo"), inflight, max_queue)
            es.callback(cal.close)
            _warm(cal)
            sustained = sustained_capacity(cal.url, cal.tenants, 16, inflight)
            share_rps = overload * sustained / (flood_factor + len(cal.tenants) - 1)
        report = run_fairness(out, duration_s=duration_s, flood_factor=flood_factor, inflight=inflight,
                              var_dir=var_dir, slices=slices, modes=modes, share_rps=share_rps,
                              max_queue=max_queue, stack=stack)
    per_mode = {}
    for m in modes:
        pooled, worst = report["p99_ratio_others_pooled"][m], report["p99_ratio_flood_vs_baseline"][m]
        per_mode[m] = {"others_p99_ratio": pooled, "worst_tenant_p99_ratio": worst,
                       "others_p50_ratio": report["p50_ratio_others_pooled"][m],
                       "flooder_ok_per_s": report["flooder_ok_per_s"][m],
                       "passed": pooled is not None and pooled <= FLOOD_P99_RATIO}
    result = {"scenario": "flood", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": report["settings"] | {"share_rps": round(share_rps, 2), "max_queue": max_queue,
                                                "modes": list(modes), "sustained_capacity_req_s": sustained,
                                                "overload": overload if sustained else None},
              "modes": per_mode, "passed": all(v["passed"] for m, v in per_mode.items() if m != "fifo"),
              "report": report}
    return _write(out, "flood", result)
