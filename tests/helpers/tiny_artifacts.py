"""Builders of tiny bases and adapters for tests: a Llama-like module set and PEFT-shaped LoRA files.

Only tests import this module; it needs torch. It writes files exactly as Hugging Face
and PEFT lay them out, without depending on either.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save, save_file

from common.peft_format import CONFIG_FILE, KEY_PREFIX, WEIGHTS_FILE

HIDDEN, INTERMEDIATE, LAYERS, VOCAB, HEADS, KV_HEADS = 64, 128, 2, 128, 4, 2


def tiny_modules(layers: int = LAYERS) -> dict[str, tuple[int, int]]:
    """Linear modules of the tiny Llama: name -> (out_features, in_features)."""
    kv = HIDDEN // HEADS * KV_HEADS
    per_layer = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (kv, HIDDEN),
                 "self_attn.v_proj": (kv, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
                 "mlp.gate_proj": (INTERMEDIATE, HIDDEN), "mlp.up_proj": (INTERMEDIATE, HIDDEN),
                 "mlp.down_proj": (HIDDEN, INTERMEDIATE)}
    modules = {f"model.layers.{i}.{m}": shape for i in range(layers) for m, shape in per_layer.items()}
    modules["lm_head"] = (VOCAB, HIDDEN)
    return modules


def write_tiny_base(path: str | Path, *, layers: int = LAYERS, seed: int = 0) -> Path:
    """Write `config.json` and `model.safetensors` of a random tiny Llama into `path`."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {f"{name}.weight": torch.randn(shape, generator=generator)
               for name, shape in tiny_modules(layers).items()}
    tensors["model.embed_tokens.weight"] = torch.randn(VOCAB, HIDDEN, generator=generator)
    tensors["model.norm.weight"] = torch.ones(HIDDEN)
    for i in range(layers):
        tensors[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(HIDDEN)
        tensors[f"model.layers.{i}.post_attention_layernorm.weight"] = torch.ones(HIDDEN)
    save_file(tensors, str(root / "model.safetensors"))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
              "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers, "num_attention_heads": HEADS,
              "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "torch_dtype": "float32"}
    (root / "config.json").write_text(json.dumps(config))
    return root


def lora_tensors(*, rank: int = 4, targets: tuple[str, ...] = ("q_proj", "v_proj"), layers: int = LAYERS,
                 dtype: torch.dtype = torch.float32, seed: int = 1,
                 prefix: str = KEY_PREFIX) -> dict[str, torch.Tensor]:
    """PEFT-style LoRA weights for the tiny base: `{prefix}{module}.lora_A.weight` [r, in] and lora_B [out, r]."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (out_features, in_features) in tiny_modules(layers).items():
        if module.rsplit(".", 1)[-1] in targets:
            tensors[f"{prefix}{module}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator).to(dtype)
            tensors[f"{prefix}{module}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator).to(dtype)
    return tensors


def lora_config(*, rank: int = 4, targets: tuple[str, ...] = ("q_proj", "v_proj"), **overrides) -> dict:
    """An adapter_config.json as PEFT writes it for a LoRA on the tiny base."""
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "tiny-llama", "r": rank,
              "lora_alpha": 2 * rank, "lora_dropout": 0.0, "target_modules": list(targets), "bias": "none",
              "use_dora": False, "modules_to_save": None, "fan_in_fan_out": False, "rank_pattern": {},
              "alpha_pattern": {}, "use_rslora": False}
    config.update(overrides)
    return config


def adapter_files(*, rank: int = 4, targets: tuple[str, ...] = ("q_proj", "v_proj"), seed: int = 1,
                  tensors: dict[str, torch.Tensor] | None = None, config: dict | None = None,
                  dtype: torch.dtype = torch.float32) -> dict[str, bytes]:
    """The two files of an upload: `adapter_config.json` and `adapter_model.safetensors`."""
    tensors = tensors if tensors is not None else lora_tensors(rank=rank, targets=targets, seed=seed, dtype=dtype)
    config = config if config is not None else lora_config(rank=rank, targets=targets)
    return {CONFIG_FILE: json.dumps(config).encode(), WEIGHTS_FILE: save(tensors)}
