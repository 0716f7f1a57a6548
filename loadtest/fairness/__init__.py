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

Modules by job: config (admission modes), gateway (a gateway per mode, its admission waits timed),
clients (the tenants' traffic, one process each), host (what the engine, the host and the slowdown
guard did), run (`run_fairness`), report (rows, ratios, files, table, plot). Kept light: the traffic
processes (spawn) import this package.
"""
