"""The tiny Llama-architecture base model of the demo, and how it is saved for vLLM."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


@dataclass(frozen=True)
class TinyShape:
    """Size of the base model; the defaults train in about a minute on 2 CPU cores."""

    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4  # head dim 64, a size every vLLM attention backend supports
    intermediate_size: int = 512
    max_positions: int = 256


def make_config(tokenizer: PreTrainedTokenizerBase, shape: TinyShape = TinyShape()) -> LlamaConfig:
    """The LlamaConfig of the base model for `tokenizer` (its vocabulary and special ids).

    Args:
        tokenizer: the demo tokenizer (see training.tokenizer).
        shape: the model's dimensions.
    """
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )


def create_model(tokenizer: PreTrainedTokenizerBase, seed: int, shape: TinyShape = TinyShape()) -> LlamaForCausalLM:
    """A freshly initialised float32 base model (deterministic for a given `seed`).

    Args:
        tokenizer: the demo tokenizer.
        seed: torch seed of the initialisation.
        shape: the model's dimensions.
    """
    torch.manual_seed(seed)
    model = LlamaForCausalLM(make_config(tokenizer, shape)).to(torch.float32)
    # Plain greedy defaults: vLLM reads generation_config.json for its default sampling parameters.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def save_base(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """Save model and tokenizer as a Hugging Face directory vLLM can serve.

    Args:
        model: the trained base model.
        tokenizer: the demo tokenizer.
        out_dir: receives config.json, generation_config.json, model.safetensors and tokenizer files.
    """
    model.config.name_or_path = "loraplex-demo-base"  # not this machine's path
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("_name_or_path", None)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
