"""`loraplex bench latency`: latency under normal traffic, four guards in one program.

1. Zipf traffic at 60% of capacity with the default settings, fair admission on vs off
   (`loadtest.fairness.run_zipf_scenario`);
2. the flood scenario (`loadtest.fairness.run_flood_scenario`), at its pinned operating point ("flood") and
   sized above the measured capacity ("flood-over");
3. the gateway hop (hop.py): vLLM's own bench client direct vs through a gateway process, and the gateway's
   CPU per request (also over a canned engine, canned_engine.py);
4. the plugin's engine ratios in the launcher's engines and in an in-process `vllm.LLM` with vLLM's defaults
   (engines.py).

Parts 1-3 share one stack; part 4 runs once it is down. run.py runs them and checks every target;
report.py writes latency.json, latency.csv, latency.png and the docs/benchmarks.md section.
"""

PARTS = ("zipf", "flood", "flood-over", "hop", "engine")  # the parts, in the order they run
STACK_PARTS = PARTS[:-1]  # the parts that share one stack (the engine ratios run once it is down)
FLOOD_PARTS = ("flood", "flood-over")  # the flood scenario's two sizings, checked and plotted alike
