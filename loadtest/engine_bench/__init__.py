"""Engine benchmark: multi-LoRA throughput of the vLLM CPU engine, vLLM's stock LoRA ops vs loraplex's plugin.

`loraplex bench engine --out DIR` builds its own model (random Llama of ~13M parameters, fp32, the
demo tokenizer) and random PEFT adapters, then starts each engine configuration in its own process
(`python -m loadtest.engine_bench SPEC`, engines.py; vLLM spawns workers). The LoRA-disabled engine stays up
beside each LoRA engine, and every case runs right after a LoRA-disabled run, with vLLM's stock ops
and with the plugin's (switched inside the same LoRA engine). Each ratio divides by the LoRA-disabled
runs just before and after, so a busy machine slows both sides alike; the report keeps the median
over rounds. `run.run_bench` drives it; report.py writes `engine.json`, `engine.png` and `engine.md`.

Modules by job: config (model shape, traffic mixes, the matrix), artifacts (model and adapters),
engines (the engine process and its driver), run (timing and summary), report (table, plot, docs).
"""
