"""A benchmark engine: `vllm.LLM` in its own process timing one case per command (child side), and
`EngineProcess`, which starts and drives it (parent side)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from loadtest.engine_bench.config import EngineSpec, Mix

RESULT = "LORAPLEX_BENCH "  # prefix of the result lines an engine process prints
READY = "LORAPLEX_READY"
ROOT = Path(__file__).resolve().parents[2]


def _requests(mix: Mix, n_adapters: int, adapters: list):
    """Prompts (random token ids, seeded) and per-request LoRA requests, round robin over `n_adapters`."""
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(3, 259) for _ in range(mix.prompt)]} for _ in range(mix.seqs)]
    loras = None if n_adapters == 0 else [adapters[i % n_adapters] for i in range(mix.seqs)]
    return prompts, loras


def _engine(spec: EngineSpec):
    """The `vllm.LLM` of `spec`, eager: vLLM runs LoRA engines eagerly on CPU, so the baseline is too."""
    from vllm import LLM

    kwargs = dict(model=spec.model, dtype="float32", max_model_len=256, seed=0, enforce_eager=True,
                  max_num_seqs=64)
    if spec.rank is not None:
        kwargs.update(enable_lora=True, max_loras=len(spec.adapters), max_cpu_loras=len(spec.adapters),
                      max_lora_rank=spec.rank)
    return LLM(**kwargs)


def _select_ops(llm, ops: str) -> dict | None:
    """Route the worker's LoRA calls to vLLM's stock ops or the plugin's; fail if the plugin is absent."""
    if ops == "none":
        return None
    from serving.vllm_plugin.worker_rpc import set_worker_ops

    report = llm.collective_rpc(set_worker_ops, args=(ops == "plugin",))[0]
    if not report["installed"]:
        raise RuntimeError("the loraplex vLLM plugin is not active in the engine's worker: install loraplex "
                           "with its vllm.general_plugins entry point (pip install -e .)")
    return report


def child_main(spec: EngineSpec) -> None:
    """In the engine process: start the engine, then time one case per command line read from stdin."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    llm = _engine(spec)
    adapters = [LoRARequest(f"a{i}", i + 1, path) for i, path in enumerate(spec.adapters)]
    print(READY, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        mix = Mix(**cmd["mix"])
        prompts, loras = _requests(mix, cmd["adapters"], adapters)
        report = _select_ops(llm, cmd["ops"])
        params = SamplingParams(max_tokens=2 if cmd["warm"] else mix.gen, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
        seconds = time.perf_counter() - start
        print(RESULT + json.dumps({**cmd, "seconds": seconds, "worker": report}), flush=True)


class EngineProcess:
    """A benchmark engine in its own process (vLLM spawns workers), driven one case at a time.

    Several can be alive at once, so a LoRA engine's timings sit right next to the LoRA-disabled
    engine's: an idle vLLM engine sleeps, so only the engine being timed uses the CPU.
    """

    def __init__(self, spec: EngineSpec, env_update: dict[str, str] | None = None):
        env = {**os.environ, **(env_update or {})}  # env_update: e.g. the launcher's thread settings
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc with functions: this child only
        env.pop("LORAPLEX_VLLM_PLUGIN", None)
        self.tail: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "loadtest.engine_bench", json.dumps(asdict(spec))],
                                     env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=ROOT)

    def _read(self, prefix: str) -> str:
        """The next stdout line starting with `prefix` (without it); keeps the rest as context for errors."""
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):]
            self.tail = (self.tail + [line.rstrip()])[-40:]
        raise RuntimeError(f"engine process exited ({self.proc.wait()}):\n" + "\n".join(self.tail))

    def wait_ready(self) -> None:
        self._read(READY)

    def run(self, mix: Mix, adapters: int, ops: str, warm: bool = False) -> dict:
        """Time one `generate` of `mix` with `adapters` distinct adapters and the given ops."""
        self.proc.stdin.write(json.dumps({"mix": asdict(mix), "adapters": adapters, "ops": ops, "warm": warm}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._read(RESULT))

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
