"""LoRA adapters of the demo: their PEFT configuration and how they are saved for serving."""

from __future__ import annotations

import json
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Written into adapter_config.json instead of the path of the machine that trained the adapter.
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
    """Save the adapter so that `out_dir` holds exactly ADAPTER_FILES.

    Args:
        model: the trained PEFT model.
        out_dir: destination directory (created if missing).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = BASE_MODEL_NAME
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # PEFT also writes a model card (README.md); an adapter upload is just the two files.
    for extra in out_dir.iterdir():
        if extra.name not in ADAPTER_FILES:
            extra.unlink()


def is_adapter_dir(path: Path) -> bool:
    """True when `path` is a directory holding both adapter files."""
    return all((path / name).is_file() for name in ADAPTER_FILES)
