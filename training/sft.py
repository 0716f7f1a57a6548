"""Supervised fine-tuning with transformers' Trainer: full, LoRA or QLoRA, loss on completion tokens only.

Output layout of `run_training(job)`:
    OUT/adapter/        adapter_config.json + adapter_model.safetensors (lora, qlora), exactly those two
    OUT/model/          the full model in safetensors with its tokenizer (full)
    OUT/train.json      settings, dataset digest, metrics, timings, adapter health
    OUT/checkpoints/    the best k checkpoints by validation loss and the newest n (for --resume)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from transformers import AutoTokenizer, EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from common.errors import InvalidRequest
from training.checkpoints import CheckpointPruner, list_checkpoints
from training.config import METHODS, TrainJob
from training.data import CompletionCollator
from training.errors import CheckpointNotFound, OutputExists
from training.memwatch import MemoryWatch
from training.model_loading import LORA_METHODS, add_lora, count_params, load_base, require_backend, use_bf16
from training.outputs import run_record, save_artifact
from training.prepare import PreparedData, prepare_data
from training.staged_build import discard, write_stamp
from training.steptime import StepTimer


def total_steps(job: TrainJob, n_train: int) -> int:
    """Optimizer steps the run will take (max_steps, else epochs over the data)."""
    s = job.train
    if s.max_steps > 0:
        return s.max_steps
    return max(1, math.ceil(s.epochs * math.ceil(n_train / (s.batch_size * s.grad_accum))))


def training_arguments(job: TrainJob, n_train: int) -> TrainingArguments:
    """The Trainer's arguments: evaluate and checkpoint together so the best checkpoint can be reloaded."""
    s = job.train
    every = max(1, min(s.eval_steps, total_steps(job, n_train)))
    return TrainingArguments(
        output_dir=str(job.out_dir / "checkpoints"), seed=s.seed, data_seed=s.seed,
        per_device_train_batch_size=s.batch_size, per_device_eval_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum, learning_rate=s.lr, lr_scheduler_type=s.scheduler,
        warmup_steps=s.warmup_ratio, num_train_epochs=s.epochs, max_steps=s.max_steps,
        weight_decay=s.weight_decay, max_grad_norm=1.0,
        eval_strategy="steps", eval_steps=every, save_strategy="steps", save_steps=every,
        logging_steps=max(1, every // 2), load_best_model_at_end=True, metric_for_best_model="eval_loss",
        greater_is_better=False, save_total_limit=None,  # CheckpointPruner keeps best k + newest n
        gradient_checkpointing=s.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},  # works with frozen embeddings (LoRA)
        bf16=use_bf16(), report_to="none", disable_tqdm=not s.progress, dataloader_num_workers=0,
        remove_unused_columns=False, label_names=["labels"], include_num_input_tokens_seen=True,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning only helps (and works) with a GPU
    )


def _check_settings(job: TrainJob) -> None:
    s, r = job.train, job.lora.r
    problems = [msg for bad, msg in (
        (r < 1, f"rank {r} must be >= 1"), (s.batch_size < 1, "--batch-size must be >= 1"),
        (s.grad_accum < 1, "--grad-accum must be >= 1"), (s.lr <= 0, "--lr must be positive"),
        (not 0 <= s.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
        (not 0 < s.val_share < 1, "--val-share must be in (0, 1)"),
        (s.max_steps <= 0 and s.epochs <= 0, "give --epochs > 0 or --max-steps > 0")) if bad]
    if problems:
        raise InvalidRequest("; ".join(problems))


def _check_output(job: TrainJob) -> None:
    ckpts = list_checkpoints(job.out_dir / "checkpoints")
    if job.resume and not ckpts:
        raise CheckpointNotFound(f"--resume: no checkpoint in {job.out_dir / 'checkpoints'}: run without --resume")
    if not job.resume and job.overwrite:
        discard(*(job.out_dir / p for p in ("checkpoints", "adapter", "model", "train.json")))
    elif not job.resume and (ckpts or (job.out_dir / "train.json").exists()):
        raise OutputExists(f"{job.out_dir} holds an earlier run: pass --resume to continue it, --overwrite to "
                           "replace it, or choose another --out")


def build_trainer(job: TrainJob, data: PreparedData, tokenizer, callbacks: list[TrainerCallback] | None = None):
    """Load the model for `job.method` and the Trainer around it.

    Args:
        job: the run.
        data: tokenized splits.
        tokenizer: the base model's tokenizer (its pad id pads batches).
        callbacks: extra Trainer callbacks (e.g. progress or measurement).
    """
    model = load_base(job.base_dir, job.method)
    if job.method in LORA_METHODS:
        model = add_lora(model, job.lora, job.method, job.train.gradient_checkpointing)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    extra = [CheckpointPruner(job.train.keep_best, job.train.keep_last)] + list(callbacks or [])
    if job.train.patience > 0:
        extra.append(EarlyStoppingCallback(job.train.patience, job.train.min_delta))
    trainer = Trainer(model=model, args=training_arguments(job, len(data.train)), train_dataset=data.train,
                      eval_dataset=data.val, data_collator=CompletionCollator(pad_id), callbacks=extra)
    trainer.remove_callback(PrinterCallback)  # without bars it prints logs to stdout, which --json keeps clean
    return trainer


def _metrics(trainer: Trainer, before: float, final: dict, trained, run_steps: int) -> dict:
    state = trainer.state
    trainable, total = count_params(trainer.model)
    stopper = next((c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)), None)
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    return {
        "eval_loss_before": round(before, 5), "eval_loss": round(final["eval_loss"], 5),
        "best_eval_loss": round(state.best_metric, 5) if state.best_metric is not None else None,
        "best_step": state.best_global_step, "steps": state.global_step, "steps_this_run": run_steps,
        "epochs": round(state.epoch or 0.0, 3), "train_loss": round(losses[-1], 5) if losses else None,
        "train_loss_mean": round(trained.training_loss, 5),
        "early_stopped": bool(stopper and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience),
        "trainable_params": trainable, "total_params": total, "trainable_pct": round(100 * trainable / total, 4),
        "tokens_seen": int(state.num_input_tokens_seen or 0),
    }


def run_training(job: TrainJob, callbacks: list[TrainerCallback] | None = None,
                 on_stage: Callable[[str], None] | None = None) -> dict:
    """Train per `job` and write the artifact and train.json into `job.out_dir`.

    Args:
        job: method, base, data, output and settings.
        callbacks: extra Trainer callbacks.
        on_stage: told "loading", "training", "saving" as the run proceeds (for a status line).

    Returns:
        The train.json record.

    Raises:
        BackendUnavailable: QLoRA without CUDA or bitsandbytes.
        DatasetError, CheckpointNotFound, OutputExists: bad input, nothing to resume, an earlier run.
    """
    stage = on_stage or (lambda _name: None)
    if job.method not in METHODS:
        raise ValueError(f"unknown method {job.method!r}: use one of {', '.join(METHODS)}")
    require_backend(job.method)
    _check_settings(job)
    _check_output(job)
    started = time.monotonic()
    stage("loading")
    tokenizer = AutoTokenizer.from_pretrained(str(job.base_dir))
    data = prepare_data(job, tokenizer)
    timer = StepTimer()
    trainer = build_trainer(job, data, tokenizer, [timer] + list(callbacks or []))
    before = trainer.evaluate()["eval_loss"]  # the untrained model's validation loss, for the record
    loaded = time.monotonic()
    stage("training")
    resume_step = max(list_checkpoints(job.out_dir / "checkpoints"), default=0) if job.resume else 0
    with MemoryWatch() as memory:
        trained = trainer.train(resume_from_checkpoint=True if job.resume else None)
    final = trainer.evaluate()
    trained_at = time.monotonic()
    stage("saving")
    artifact = save_artifact(job, trainer.model, tokenizer)
    metrics = _metrics(trainer, before, final, trained, trainer.state.global_step - resume_step)
    metrics.update(peak_mem_mb=memory.peak_mb, peak_mem_total_mb=memory.total_peak_mb, mem_source=memory.source,
                   step_s_median=timer.median_s)
    timings = {"load_s": loaded - started, "train_s": trained_at - loaded, "save_s": time.monotonic() - trained_at}
    record = run_record(job, data.info, metrics, timings, artifact)
    write_stamp(job.out_dir / "train.json", record)
    return record
