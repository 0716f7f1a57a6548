"""Adapter health on crafted adapters whose rank is known."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from common.adapter_health import adapter_health, spectrum_stats, update_spectrum
from common.peft_format import CONFIG_FILE, WEIGHTS_FILE

pytestmark = pytest.mark.unit

MODULES = ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj")


def _write_adapter(path, a_b: dict, r: int = 8, alpha: float = 16, rslora: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (a, b) in a_b.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(path / WEIGHTS_FILE))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora,
              "target_modules": ["q_proj", "down_proj"]}
    (path / CONFIG_FILE).write_text(json.dumps(config))
    return path


def _rank_k_pair(k: int, r: int = 8, d_in: int = 32, d_out: int = 48, seed: int = 0):
    """lora_A, lora_B of rank r whose product B·A has rank exactly k."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(r, d_in, generator=g)
    b = torch.randn(d_out, r, generator=g)
    b[:, k:] = 0.0  # only k of the r directions carry an update
    return a, b


def test_rank_two_update_in_a_rank_eight_adapter(tmp_path):
    adapter = _write_adapter(tmp_path / "a", {m: _rank_k_pair(2, seed=i) for i, m in enumerate(MODULES)})
    health = adapter_health(adapter)
    assert health["rank"] == 8 and health["modules"] == 2
    assert health["energy_rank"]["max"] <= 2 and health["energy_rank"]["min"] >= 1
    assert 1.0 <= health["effective_rank"]["max"] <= 2.0
    assert health["near_zero_share"] == pytest.approx(0.75)
    assert any("r=2 would likely do" in note for note in health["notes"])
    assert set(health["per_module"]) == set(MODULES)


def test_full_rank_update_uses_every_direction(tmp_path):
    health = adapter_health(_write_adapter(tmp_path / "a", {MODULES[0]: _rank_k_pair(8)}))
    assert health["energy_rank"]["median"] >= 7 and health["near_zero_share"] == 0.0


def test_untrained_adapter_is_flagged(tmp_path):
    a = torch.randn(8, 32)
    health = adapter_health(_write_adapter(tmp_path / "a", {MODULES[0]: (a, torch.zeros(48, 8))}))
    assert health["zero_modules"] == 1 and "untrained" in health["notes"][0]


def test_spectrum_equals_the_svd_of_the_scaled_product():
    a, b = _rank_k_pair(5, seed=3)
    expected = torch.linalg.svdvals(2.0 * (b.double() @ a.double()))[:8]
    assert torch.allclose(update_spectrum(a, b, 2.0), expected, atol=1e-8)


def test_scaling_follows_alpha_and_rslora(tmp_path):
    pair = {MODULES[0]: _rank_k_pair(8)}
    plain = adapter_health(_write_adapter(tmp_path / "p", pair, r=8, alpha=16))
    rs = adapter_health(_write_adapter(tmp_path / "r", pair, r=8, alpha=16, rslora=True))
    ratio = rs["per_module"][MODULES[0]]["norm"] / plain["per_module"][MODULES[0]]["norm"]
    assert ratio == pytest.approx(8 ** 0.5, rel=1e-4)  # alpha/sqrt(r) vs alpha/r


def test_stats_of_known_spectra():
    assert spectrum_stats(torch.tensor([1.0, 1.0, 1.0, 1.0]))["effective_rank"] == pytest.approx(4.0)
    one = spectrum_stats(torch.tensor([3.0, 0.0, 0.0]))
    assert one["effective_rank"] == pytest.approx(1.0) and one["energy_rank"] == 1
