"""LoRA adapters of the demo: their PEFT configuration and how they are saved for serving."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from training.adapter_dirs import save_peft_adapter

__all__ = ["BASE_MODEL_NAME", "TARGET_MODULES", "lora_config", "save_adapter", "wrap"]

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Written into the adapter's config instead of the path of the machine that trained the adapter.
BASE_MODEL_NAME = "loraplex-demo-base"


def lora_config(rank: int = 8) -> LoraConfig:
    """The LoRA configuration of every demo adapter (all attention and MLP projections).

    Args:
        rank: LoRA rank; the engine serves ranks up to its --max-lora-rank (16).
    """
    return LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=list(TARGET_MODULES),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )


def wrap(base: PreTrainedModel, rank: int = 8) -> PeftModel:
    """`base` wrapped with a fresh LoRA adapter; only the adapter's weights are trainable.

    Args:
        base: the base model (modified in place by PEFT, so pass a copy to keep the original).
        rank: LoRA rank.
    """
    return get_peft_model(base, lora_config(rank))


def save_adapter(model: PeftModel, out_dir: Path) -> None:
    """Save the adapter so that `out_dir` holds exactly the two adapter files (replaced atomically).

    Args:
        model: the trained PEFT model.
        out_dir: destination directory (created if missing).
    """
    save_peft_adapter(model, out_dir, base_name=BASE_MODEL_NAME)
