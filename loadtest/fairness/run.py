"""`run_fairness`: SeaweedFS, one vLLM engine and a gateway per admission mode; baseline and flood slices,
round-robin; then the report."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path

from loadtest.fairness.clients import capacity, drive_tenants, prompts
from loadtest.fairness.config import MODES, mode_settings
from loadtest.fairness.gateways import admission_waits, waits_between
from loadtest.fairness.host import GuardWatch, cpu_cores, cpu_seconds, engine_means, engine_totals, guard_stats
from loadtest.fairness.report import console, summarise, write_report
from loadtest.fairness.stack import BenchStack, bench_stack
from loadtest.traffic import TenantLoad


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_fairness(out: Path, duration_s: float = 30, flood_factor: float = 10, inflight: int = 4,
                 max_tokens: int = 16, var_dir: Path = Path("var"), slices: int = 3,
                 modes: tuple[str, ...] = tuple(MODES), share_cap: float = 1.0,
                 share_rps: float | None = None, max_queue: int = 4096, gc_freeze: bool = True,
                 flooder_nice: int = 19, stack: BenchStack | None = None) -> dict:
    """Run every mode, baseline and flood; write fairness.json/.csv/.png/.md under `out`.

    The conditions (mode x baseline/flood) get `duration_s` of traffic each, cut into `slices` and run
    round-robin, so that a noisy host (other jobs on the same cores) disturbs all of them alike; every
    mode gets the same offered load (one calibration) and, within a slice, the same arrival times.

    `inflight` is the gateway's in-flight window: small, so that admission (not the engine's batch)
    decides who runs. Fair admission keeps a free slot for each other recently active tenant that is
    idle; while others are active, `fair-noguard` also caps a heavy tenant at `share_cap` x its equal share
    of the window, and `fair` adds the slowdown guard (a heavy tenant's slots shrink while the engine runs
    slower than at light load). The machine's load average is recorded per phase: on a shared host it
    explains much of the noise.
    `share_rps` pins each tenant's share instead of half the calibrated capacity: the calibration (a burst
    through a full window) varies by 2x between runs on a shared 2-core host, and near the knee of the
    open-loop latency curve a few percent more load doubles the baseline's latency. `max_queue` is the
    gateway's queue bound: large by default, so that every request is answered and counted. `gc_freeze`:
    the gateways' LORAPLEX_GC_FREEZE (this process imports torch: a full collection of its heap unfrozen
    takes ~400 ms). `flooder_nice`: the CPU priority of the flooding tenant's client process, in both
    phases. A flooder's client runs on its own machine; here it shares the server's cores, and at 40
    requests/s it took ~0.15 of a core from the engine and the gateway (nice 19: it gets what they leave).
    The other tenants' clients, which measure, keep the normal priority.
    `stack`: a running `BenchStack` to use (None: one is started here and stopped at the end).
    """
    out.mkdir(parents=True, exist_ok=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted)  # `kill` cleans up the engine and SeaweedFS too
    rows, meta, gateways = [], {}, {}
    with contextlib.ExitStack() as es:  # unwinds: the gateways, then the stack if started here
        stack = stack or es.enter_context(bench_stack(var_dir, console))
        engine, pid = stack.engine, stack.engine_pid
        es.callback(lambda: [bg.close() for bg in gateways.values()])
        for mode in modes:
            gateways[mode] = stack.gateway(mode, mode_settings(mode, share_cap), inflight, max_queue, gc_freeze)
        first = gateways[modes[0]]
        cap = capacity(first.url, first.tenants, max_tokens)
        share = share_rps or 0.5 * cap / len(first.tenants)  # at their share: half busy (by the calibration)
        meta = {"capacity_req_s": round(cap, 2), "share_req_s": round(share, 2), "share_pinned": bool(share_rps),
                "slices": slices}
        console.print(f"capacity {cap:.1f} req/s; each tenant's share {share:.2f} req/s")
        acc: dict[tuple[str, str], dict] = {}
        for i in range(slices):
            for phase, factor in (("baseline", 1.0), ("flood", flood_factor)):
                for mode in modes[i % len(modes):] + modes[:i % len(modes)]:  # each mode goes first once
                    bg = gateways[mode]
                    bg.reset()
                    waits_before = admission_waits()  # the slice's own waits: the difference after it
                    loads = [TenantLoad(t, k, m, rate=share * (factor if j == 0 else 1.0), prompts=prompts(),
                                        max_tokens=max_tokens)
                             for j, (t, k, m) in enumerate(bg.tenants)]
                    console.print(f"slice {i + 1}/{slices}: {mode}, {phase}, {duration_s / slices:.0f}s …")
                    before, load_before = engine_totals(engine.engine_url), os.getloadavg()[0]
                    cpu_before = cpu_seconds(pid)
                    started = time.monotonic()
                    with GuardWatch(bg.admission.guard, duration_s / slices,
                                     at_end=lambda: cpu_seconds(pid)) as watch:
                        samples, client_cpu = drive_tenants(bg.url, loads, duration_s / slices, seed=i,
                                                     nice={bg.tenants[0][0]: flooder_nice})
                    a = acc.setdefault((mode, phase), {"samples": [], "waits": {}, "load": 0.0,
                                                       "after": defaultdict(float), "wall": 0.0, "guard": [],
                                                       "client_cpu": defaultdict(float), "cpu": defaultdict(float)})
                    a["guard"] += watch.seen
                    for t, cpu in client_cpu.items():
                        a["client_cpu"][t] += cpu
                    a["wall"] += time.monotonic() - started  # arrivals, then the backlog drained
                    for key, v in (watch.ended or {}).items():  # the arrival window only
                        a["cpu"][key] += v - cpu_before[key]
                    a["cpu"]["wall"] += duration_s / slices
                    after = engine_totals(engine.engine_url)
                    for key in after:  # engine histogram totals of this condition's slices only
                        a["after"][key] += after[key] - before.get(key, 0.0)
                    a["samples"] += samples
                    for t, added in waits_between(waits_before, admission_waits()).items():
                        mine = a["waits"].setdefault(t, defaultdict(float))
                        for le, n in added.items():
                            mine[le] += n
                    a["load"] = max(a["load"], load_before, os.getloadavg()[0])
        for (mode, phase), a in acc.items():
            stats = engine_means(defaultdict(float), a["after"])
            stats["loadavg_1m"] = round(a["load"], 1)
            stats.update(guard_stats(a["guard"]))
            stats.update(cpu_cores(a["cpu"], a["cpu"]["wall"], a["client_cpu"]))
            rows += summarise(a["samples"], phase, mode, {gateways[mode].tenants[0][0]}, dict(a["waits"]), stats,
                              a["wall"], duration_s / slices, slices, dict(a["client_cpu"]))
        rows.sort(key=lambda r: (modes.index(r["mode"]), r["phase"] != "baseline", r["pooled"], r["tenant"]))
    meta.update(max_queue=max_queue, gc_freeze=gc_freeze, flooder_nice=flooder_nice)
    return write_report(out, rows, meta, duration_s, flood_factor, inflight, max_tokens, share_cap)
