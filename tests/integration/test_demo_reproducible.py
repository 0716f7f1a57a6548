"""The demo build is reproducible: a second build in a fresh directory, in a process that sees only
AVX2 (as a machine without AVX-512 would), gives the same bytes and the same accuracies as the
session's build.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common.peft_format import WEIGHTS_FILE
from training.demo import BASE_NAME, DEMO_TENANTS
from training.staged_build import file_sha256

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Caps MKL's and oneDNN's kernels at AVX2 (no effect on a machine that has no more than AVX2).
AVX2_ONLY = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
SAME = ("held_out_accuracy", "demo_accuracy", "steps", "recipe")


def test_a_fresh_build_elsewhere_is_identical(demo, tmp_path):
    command = [sys.executable, "-m", "training.demo", "--var", str(tmp_path), "--quiet"]
    subprocess.run(command, env={**os.environ, **AVX2_ONLY}, check=True, timeout=3600)
    from training.demo import build_demo  # now complete: read back without building

    again = build_demo(tmp_path)
    assert sorted(again.built) == []
    files = {BASE_NAME: (demo.base_dir / "model.safetensors", again.base_dir / "model.safetensors")}
    for tenant in DEMO_TENANTS:
        name = tenant["adapter"]
        files[name] = (demo.adapter_dirs[name] / WEIGHTS_FILE, again.adapter_dirs[name] / WEIGHTS_FILE)
    for name, (first, second) in files.items():
        assert {k: again.stamps[name][k] for k in SAME} == {k: demo.stamps[name][k] for k in SAME}, name
        assert file_sha256(second) == file_sha256(first), f"{name}: same recipe, different weights"
