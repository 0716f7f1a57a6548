"""`loraplex bench hotswap`: hot-swapped adapters on one engine vs an engine per tenant vs weight reloads.

Modules by job: config (settings), artifacts (adapters, merged models), engines (vLLM processes, the
reload proxy), load (gateway, tenants, locust), run (one run's rows), bench (`run_bench`: the whole
run), report (table, files, plots), docs (the docs/benchmarks.md section).
"""
