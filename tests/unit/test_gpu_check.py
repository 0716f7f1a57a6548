"""scripts/gpu_check.py on a host without CUDA: says so, checks nothing, exits 0 (3 with --require-cuda)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA host runs the real check (make gpu-check)")]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


@pytest.mark.parametrize("args, code", [([], 0), (["--require-cuda"], 3)])
def test_without_cuda_it_says_so_and_checks_nothing(tmp_path, args, code):
    out = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == code, out.stdout + out.stderr
    assert "no CUDA device here" in out.stdout and "nothing was checked" in out.stdout
    assert not (tmp_path / "out").exists()  # no model built, nothing trained
