"""What a training run leaves behind: the artifact (adapter or full model) and the train.json record."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import peft
import torch
import transformers

from common.adapter_health import adapter_health
from training.adapter_dirs import save_peft_adapter
from training.config import TrainJob
from training.model_loading import LORA_METHODS
from training.staged_build import file_sha256, staged_dir


def dir_bytes(path: Path) -> int:
    """Total size of the files under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def save_full_model(model, tokenizer, out_dir: Path) -> None:
    """Save a full causal LM in safetensors with its tokenizer (loadable by transformers and vLLM)."""
    model.config.use_cache = True  # turned off for training; serving wants it back
    with staged_dir(out_dir, out_dir.parent / f".{out_dir.name}.staging") as stage:
        model.save_pretrained(str(stage), safe_serialization=True)
        tokenizer.save_pretrained(str(stage))
    (out_dir.parent / f".{out_dir.name}.staging").rmdir()


def save_artifact(job: TrainJob, model, tokenizer) -> dict:
    """Write the adapter (lora, qlora) or the full model (full) into the job's output directory.

    Returns:
        `{"kind", "dir", "size_bytes"}`, plus `health` for adapters.
    """
    if job.method in LORA_METHODS:
        out = job.out_dir / "adapter"
        save_peft_adapter(model, out, base_name=Path(job.base_dir).name, base_dir=job.base_dir)
        return {"kind": "adapter", "dir": str(out), "size_bytes": dir_bytes(out), "health": adapter_health(out)}
    out = job.out_dir / "model"
    save_full_model(model, tokenizer, out)
    return {"kind": "model", "dir": str(out), "size_bytes": dir_bytes(out)}


def _base_fingerprint(base_dir: Path) -> dict:
    config = Path(base_dir) / "config.json"
    return {"path": str(base_dir), "name": Path(base_dir).name,
            "config_sha256": file_sha256(config) if config.is_file() else None}


def run_record(job: TrainJob, data_info: dict, metrics: dict, timings: dict, artifact: dict) -> dict:
    """The train.json record: settings, dataset digest, metrics, timings, health and versions."""
    health = artifact.pop("health", None)
    steps = max(1, metrics.get("steps_this_run") or 1)
    timings = {k: round(v, 3) for k, v in timings.items()}
    timings.update(total_s=round(sum(timings.values()), 3), step_s=round(timings["train_s"] / steps, 4))
    record = {
        "method": job.method, "base_model": _base_fingerprint(job.base_dir), "dataset": data_info,
        "settings": {"train": job.train.to_dict(), "resume": job.resume,
                     **({"lora": job.lora.to_dict() | {"lora_alpha": job.lora.lora_alpha}}
                        if job.method in LORA_METHODS else {})},
        "metrics": metrics, "timings": timings, "artifact": artifact,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "peft": peft.__version__,
                        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"},
    }
    if health is not None:
        record["health"] = health
    return record
