"""Fold a LoRA adapter into its base: W' = W + scale·B·A, saved as an ordinary full model.

The merged directory is a plain Hugging Face model (safetensors + tokenizer) that transformers and
vLLM load without PEFT, for a tenant that wants a dedicated deployment or an export.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.adapter_dirs import resolve_adapter_dir
from training.outputs import dir_bytes, save_full_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_peft(base_dir: Path, adapter_dir: Path, dtype: torch.dtype = torch.float32):
    """The base model with the adapter attached (unmerged), in eval mode.

    Args:
        base_dir: Hugging Face model directory of the base the adapter was trained on.
        adapter_dir: adapter directory (or a `train lora` output directory).
        dtype: dtype the base is loaded in.
    """
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
    return PeftModel.from_pretrained(base, str(resolve_adapter_dir(adapter_dir))).eval()


def merge(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: str = "float32") -> dict:
    """Merge `adapter_dir` into `base_dir` with PEFT's `merge_and_unload(safe_merge=True)` and save it.

    Args:
        base_dir: base model directory (its tokenizer is saved with the result).
        adapter_dir: adapter directory or `train lora` output directory.
        out_dir: receives config.json, model.safetensors, generation_config.json and the tokenizer.
        dtype: float32, bfloat16 or float16; the merge is computed in this dtype.

    Returns:
        `{"out_dir", "size_bytes", "seconds", "adapter"}`.

    Raises:
        ValueError: an unknown dtype. safe_merge raises when the merged weights hold NaN/inf.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    started = time.monotonic()
    adapter = resolve_adapter_dir(adapter_dir)
    # safe_merge checks the merged weights for NaN/inf before replacing the base's.
    model = load_peft(Path(base_dir), adapter, DTYPES[dtype]).merge_and_unload(safe_merge=True)
    model.config.name_or_path = f"{Path(base_dir).name}+{adapter.name}"
    save_full_model(model, AutoTokenizer.from_pretrained(str(base_dir)), Path(out_dir))
    _drop_local_path(Path(out_dir) / "config.json")
    return {"out_dir": str(out_dir), "size_bytes": dir_bytes(Path(out_dir)), "adapter": str(adapter),
            "seconds": round(time.monotonic() - started, 3)}


def _drop_local_path(config_path: Path) -> None:
    # The saved config would otherwise carry this machine's path as _name_or_path.
    config = json.loads(config_path.read_text())
    config.pop("_name_or_path", None)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
