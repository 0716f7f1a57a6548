"""The compiled row kernel (lora_rows.cpp): built once per environment, loaded by each engine worker.

`make install` builds it (`python -m serving.vllm_plugin.rows_kernel`); a worker that finds no build compiles
it when the plugin's wrapper is created (tens of seconds, at engine start, never inside a step). Without a C++
compiler, or with LORAPLEX_VLLM_LORA_KERNEL=0, the plugin keeps its batched products: `get()` returns None.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("lora_rows.cpp")
NAME = "loraplex_lora_rows"
# dtypes the kernel computes in (vLLM's CPU engines run float32 or bfloat16)
DTYPES = frozenset({torch.float32, torch.bfloat16})
logger = logging.getLogger("vllm.plugins.loraplex")

_state: dict[str, object] = {"enabled": True}
# Layer calls the kernel computed, per process: tests read it to prove it ran inside the engine's worker.
RUNS: Counter[str] = Counter()


def build_directory() -> Path:
    """Where the build lives: inside the environment, so that `make clean` or a new venv starts afresh."""
    return Path(sys.prefix) / "share" / "loraplex" / "torch_extensions" / NAME


def set_enabled(on: bool) -> None:
    """Use the kernel (True, the default) or keep the batched products for every step (False)."""
    _state["enabled"] = on


def get() -> ModuleType | None:
    """The loaded kernel module, building it on first use; None when switched off or it cannot be built."""
    if not _state["enabled"]:
        return None
    if "module" not in _state:
        try:
            _state["module"] = load()
        except Exception as exc:  # no compiler, a broken toolchain: the batched products still serve
            logger.warning("loraplex: the LoRA row kernel could not be built (%s); decode steps use the batched "
                           "products", exc)
            _state["module"] = None
    return _state["module"]  # type: ignore[return-value]


def load() -> ModuleType:
    """Build (when the source or flags changed) and import the kernel."""
    from torch.utils.cpp_extension import load as load_extension

    # torch builds with ninja from PATH: the one in this environment (a vLLM dependency) is enough
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    return load_extension(NAME, sources=[str(SOURCE)], build_directory=str(directory),
                          extra_cflags=["-O3", "-march=native", "-fopenmp-simd"], verbose=False)


if __name__ == "__main__":
    load()
    print(f"LoRA row kernel built in {build_directory()}")
