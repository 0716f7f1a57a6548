"""The engine ratios as a user gets them: `vllm.LLM` in the user's own process, with vLLM's defaults.

`python -m loadtest.engine_bench.inproc MODEL ADAPTER...` runs in a clean environment (no OMP_* or
VLLM_CPU_* threading variables: vLLM picks its own binding and thread count; only the KV cache size is
set, which a 2-engine process needs). Both engines live in this one process, as in a user's script: the
LoRA-disabled one and a LoRA one (the plugin active through its entry point). Each LoRA case is timed
between two LoRA-disabled runs; the printed JSON has per-case ratios (median over rounds) and what the
worker reported (threads, whether the plugin ran). `run_inproc` starts it from the benchmarks.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from loadtest.engine_bench.config import Mix

RESULT = "LORAPLEX_INPROC "
DEFAULT_MIX = Mix("decode-heavy", 64, 8, 64)
# The environment variables that choose an engine's threads: unset, so vLLM's defaults apply.
THREAD_VARS = ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", "OMP_PLACES",
               "OMP_PROC_BIND", "MKL_NUM_THREADS", "LORAPLEX_ENGINE_THREADS")


def _time(llm, prompts, params, loras) -> float:
    start = time.perf_counter()
    llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
    return time.perf_counter() - start


def main(model: str, adapters: list[str], rounds: int = 3, mix: Mix = DEFAULT_MIX) -> dict:
    """Both engines in this process; time base-only traffic on the LoRA-disabled engine and 1 / N adapters."""
    import random

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from serving.vllm_plugin.worker_rpc import worker_report

    common = dict(model=model, dtype="float32", max_model_len=256, seed=0, enforce_eager=True, max_num_seqs=64)
    plain = LLM(**common)
    lora = LLM(**common, enable_lora=True, max_loras=len(adapters), max_cpu_loras=len(adapters), max_lora_rank=16)
    reqs = [LoRARequest(f"a{i}", i + 1, p) for i, p in enumerate(adapters)]
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(3, 259) for _ in range(mix.prompt)]} for _ in range(mix.seqs)]
    params = SamplingParams(max_tokens=mix.gen, temperature=0.0, ignore_eos=True)
    counts = (1, len(adapters))
    for n in counts:  # warm: loads the adapters into the slots
        _time(lora, prompts, SamplingParams(max_tokens=2, ignore_eos=True), [reqs[i % n] for i in range(mix.seqs)])
    _time(plain, prompts, SamplingParams(max_tokens=2, ignore_eos=True), None)
    ratios: dict[int, list[float]] = {n: [] for n in counts}
    seconds: dict[str, list[float]] = {"disabled": [], **{str(n): [] for n in counts}}
    for _ in range(rounds):
        before = _time(plain, prompts, params, None)
        seconds["disabled"].append(before)
        for n in counts:
            t = _time(lora, prompts, params, [reqs[i % n] for i in range(mix.seqs)])
            after = _time(plain, prompts, params, None)
            seconds[str(n)].append(t)
            seconds["disabled"].append(after)
            ratios[n].append((before + after) / 2 / t)
            before = after
    tokens = mix.seqs * (mix.prompt + mix.gen)
    return {"mix": mix.name, "rounds": rounds, "worker": lora.collective_rpc(worker_report)[0],
            "disabled_tok_per_s": tokens / statistics.median(seconds["disabled"]),
            "rows": [{"adapters": n, "ratio_to_lora_disabled": statistics.median(ratios[n]), "ratios": ratios[n],
                      "tok_per_s": tokens / statistics.median(seconds[str(n)])} for n in counts]}


def run_inproc(model: Path, adapters: list[Path], rounds: int = 3, extra_env: dict | None = None,
               timeout: float = 1200) -> dict:
    """Run `main` in a fresh process with vLLM's default threading (plus `extra_env`); its result."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update({"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
                "VLLM_ALLOW_INSECURE_SERIALIZATION": "1", **(extra_env or {})})  # the worker report's rpc
    env.pop("LORAPLEX_VLLM_PLUGIN", None)
    cmd = [sys.executable, "-m", "loadtest.engine_bench.inproc", str(rounds), str(model), *map(str, adapters)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[2])
    for line in done.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    raise RuntimeError(f"the in-process engine run failed ({done.returncode}):\n{done.stdout[-1500:]}"
                       f"{done.stderr[-3000:]}")


if __name__ == "__main__":
    print(RESULT + json.dumps(main(sys.argv[2], sys.argv[3:], int(sys.argv[1]))), flush=True)
