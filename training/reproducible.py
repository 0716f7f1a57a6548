"""Bit-for-bit reproducible CPU training: the same weights whatever x86-64 machine builds them.

Float results depend on the kernels a machine picks (AVX-512 vs AVX2 reduce in another order, and
MKL dispatches differently on Intel and AMD) and on the thread count. A reproducible build pins
MKL to its COMPATIBLE branch (the one branch MKL keeps identical on Intel and non-Intel CPUs; its
AVX2 branch is honoured on Intel only, elsewhere it silently falls back to the machine's own),
PyTorch's vectorised kernels to AVX2, one thread, and deterministic algorithms. The variables are
read when the libraries load, so a reproducible build runs in a fresh process started with them.
A CPU without AVX2, or another architecture, still trains; only bit-equality is lost there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import torch

# Read at library load: set in the environment of a new process, never changed in a running one.
REPRODUCIBLE_ENV = {
    "MKL_CBWR": "COMPATIBLE",  # MKL: the same code path on every vendor's CPU (about 2x slower here)
    "ATEN_CPU_CAPABILITY": "avx2",  # nor do PyTorch's vectorised kernels
    "OMP_NUM_THREADS": "1",  # one thread: a fixed reduction order, and the fastest on tiny matrices
    "MKL_NUM_THREADS": "1",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # what deterministic algorithms require on CUDA
}
THREADS = 1


def active() -> bool:
    """Whether this process was started with REPRODUCIBLE_ENV."""
    return all(os.environ.get(name) == value for name, value in REPRODUCIBLE_ENV.items())


def setup_torch() -> None:
    """Fix what PyTorch lets a running process fix: threads and deterministic algorithms."""
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)


def run_module(module: str, args: Sequence[str]) -> None:
    """Run `python -m module args` in a fresh process with REPRODUCIBLE_ENV; its output goes to ours.

    Raises:
        subprocess.CalledProcessError: the module exited non-zero (its own message was printed).
    """
    env = {**os.environ, **REPRODUCIBLE_ENV}
    subprocess.run([sys.executable, "-m", module, *args], env=env, check=True)
