"""`train recommend`: the contract keys, the memory formulas and sensible choices."""

from __future__ import annotations

import pytest

from training.memory import memory_gb, shape, trainable_pct
from training.recommend import Workload, recommend

pytestmark = pytest.mark.unit

KEYS = {"method", "rank", "target_modules", "memory_gb", "reasons"}


def test_contract_keys_and_types():
    result = recommend(Workload(params_b=7, gpu_count=1, gpu_mem_gb=16, examples=10000))
    assert KEYS <= set(result) and set(result["memory_gb"]) == {"full", "lora", "qlora"}
    assert result["method"] in ("full", "lora", "qlora") and all(isinstance(r, str) for r in result["reasons"])


@pytest.mark.parametrize(("workload", "method"), [
    (Workload(params_b=7, gpu_mem_gb=16), "qlora"),  # LoRA's 2 B/param base alone is 14 GB
    (Workload(params_b=7, gpu_mem_gb=80), "lora"),
    (Workload(params_b=1, gpu_mem_gb=80, accuracy_critical=True), "full"),
    (Workload(params_b=1, gpu_mem_gb=80, accuracy_critical=True, budget_usd=0.01), "lora"),
    (Workload(params_b=3, gpu_mem_gb=80, examples=500_000, objective="domain"), "full"),
    (Workload(params_b=1, gpu_mem_gb=80, accuracy_critical=True, variants=10), "lora"),
    (Workload(params_b=70, gpu_count=8, gpu_mem_gb=80), "lora"),
])
def test_sensible_choices(workload, method):
    result = recommend(workload)
    assert result["method"] == method, result["reasons"]
    assert (result["rank"] is None) == (method == "full")
    assert (result["target_modules"] == []) == (method == "full")


def test_nothing_fits_says_so():
    result = recommend(Workload(params_b=70, gpu_mem_gb=24))
    assert result["method"] == "qlora" and not result["fits"]["qlora"]
    assert result["reasons"][0].startswith("nothing fits")


def test_rank_follows_objective_and_warns_above_served_max():
    task = recommend(Workload(params_b=7, gpu_mem_gb=80, objective="task"))
    domain = recommend(Workload(params_b=7, gpu_mem_gb=80, objective="domain"))
    assert task["rank"] < domain["rank"]
    assert any("--max-lora-rank" in r for r in domain["reasons"])


def test_memory_uses_the_documented_bytes_per_parameter():
    mem = memory_gb(7, rank=16)
    overhead = mem["full"] - 7 * 16  # activations + CUDA overhead, the same for every method
    assert mem["lora"] - overhead == pytest.approx(7 * 2, abs=1.0)  # + adapter states (~0.65 GB)
    assert mem["qlora"] - overhead == pytest.approx(7 * 0.55, abs=1.0)
    assert mem["full"] > mem["lora"] > mem["qlora"]


def test_shape_and_trainable_share_are_plausible_for_7b():
    s = shape(7)
    assert 3800 < s.hidden < 4600 and 28 <= s.layers <= 36  # Llama-2-7B: 4096, 32
    assert 0.1 < trainable_pct(7, 8) < 1.0  # the guides' 0.1-1% for r=8


def test_invalid_input_is_refused():
    with pytest.raises(ValueError, match="objective"):
        recommend(Workload(params_b=7, objective="poetry"))
    with pytest.raises(ValueError):
        recommend(Workload(params_b=0))
