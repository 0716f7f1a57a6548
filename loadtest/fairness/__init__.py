"""`loraplex bench fairness`: does one tenant's flood move the other tenants' latency?

Stands up SeaweedFS, one vLLM engine and, per admission mode, a gateway in this process: `fifo`
(first come, first served), `fair-nocap` (VTC order and headroom, work-conserving) and `fair` (the
default: VTC, headroom and the per-tenant share cap). Three demo tenants send Poisson traffic (open
loop, each tenant from its own process, as separate clients would: the flooder's thousands of open requests
do not delay the others' client, and none shares the gateway's interpreter); then
tenant A floods at 10x its share. Each tenant's arrivals come from its own seeded generator, so the
other tenants send at the same moments with and without the flood. Reports the other tenants' p50/p99
latency and time to first token with and without the flood, per mode, as JSON, CSV, a PNG and a
markdown table. To tell admission from the rest, each row also has the time requests waited in the
gateway's admission queue, and each phase the engine's own mean request latency (from vLLM's /metrics).

Scenarios as functions (loadtest/fairness/scenarios.py), for programs that run several benchmarks:

    from loadtest.fairness import bench_stack, run_zipf_scenario, run_flood_scenario
    with bench_stack(Path("var")) as stack:          # SeaweedFS + one vLLM engine + the demo models
        zipf = run_zipf_scenario(stack, load=0.6, duration_s=60, out=Path("var/bench/zipf"))
        flood = run_flood_scenario(stack, duration_s=60, out=Path("var/bench/flood"))
    zipf["checks"]["passed"], flood["passed"]

- `run_zipf_scenario(stack=None, *, tenants=4, zipf_s=1.0, load=0.6, duration_s=60, ...) -> dict`: Zipf
  traffic, open-loop Poisson at `load` x the measured capacity, default settings with fair admission on
  ("fair") and off ("fair-off"); per-tenant TTFT p50/p99/max and pooled p50/p99 per mode, and the checks
  (every tenant's p99 <= 3x the pooled p50; the most popular tenant's p99 <= 1.2x its fair-off p99).
- `run_flood_scenario(stack=None, *, duration_s=60, flood_factor=10, share_rps=4, inflight=8, ...) -> dict`:
  one tenant floods at 10x its share; per mode the others' p99 flood / baseline (target <= 1.2x).
Without a stack each starts and stops its own. Both write JSON when given `out`.

Modules by job: stack (SeaweedFS, the engine, gateways over them), scenarios (the two above), config
(admission modes), gateway (a gateway per mode, its admission waits timed), clients (the tenants' traffic,
one process each), host (what the engine, the host and the slowdown guard did), run (`run_fairness`),
report (rows, ratios, files, table, plot). Kept light: the traffic processes (spawn) import this package.
"""

__all__ = ["BenchStack", "bench_stack", "run_flood_scenario", "run_zipf_scenario"]


def __getattr__(name: str):
    """The scenario API, imported on first use: the traffic processes import this package and need none of it."""
    if name in ("run_flood_scenario", "run_zipf_scenario"):
        from loadtest.fairness import scenarios

        return getattr(scenarios, name)
    if name in ("BenchStack", "bench_stack"):
        from loadtest.fairness import stack

        return getattr(stack, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
