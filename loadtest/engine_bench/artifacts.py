"""The engine benchmark's model (a random Llama with the demo tokenizer) and random PEFT adapters (also used
by the hot-swap benchmark)."""

from __future__ import annotations

from pathlib import Path

from common.peft_format import CONFIG_FILE
from loadtest.engine_bench.config import ModelShape


def build_model(out: Path, shape: ModelShape = ModelShape(), seed: int = 0) -> Path:
    """Save a random fp32 Llama and the demo tokenizer into `out` (kept if already there).

    Args:
        out: model directory to create.
        shape: the model's dimensions.
        seed: torch seed of the weights.
    """
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.tokenizer import save_tokenizer

    tok = save_tokenizer(out)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.heads, max_position_embeddings=512,
                         initializer_range=shape.init_std, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, dtype="float32")
    torch.manual_seed(seed)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(str(out), safe_serialization=True)
    return out


def build_adapters(base: Path, out: Path, rank: int, count: int, seed: int = 1) -> list[Path]:
    """Save `count` random, nonzero PEFT LoRA adapters of `rank` on all linear layers of `base`.

    Args:
        base: model directory (from `build_model`).
        out: parent directory; adapter i goes to `out/r{rank}-{i}` (kept if already there).
        rank: LoRA rank (lora_alpha = 2 * rank).
        count: how many adapters.
        seed: first torch seed; adapter i uses `seed + i`.
    """
    paths = [out / f"r{rank}-{i}" for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not (p / CONFIG_FILE).exists()]
    if not missing:
        return paths
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = get_peft_model(LlamaForCausalLM.from_pretrained(str(base)), LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False))
    for i in missing:
        torch.manual_seed(seed + i)
        # init_lora_weights=False leaves A and B at nn.Linear's random init: redraw it per adapter.
        for name, module in model.named_modules():
            if name.endswith(("lora_A.default", "lora_B.default")):
                module.reset_parameters()
        model.save_pretrained(str(paths[i]))
    return paths
