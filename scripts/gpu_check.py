"""`make gpu-check`: the training half of loraplex on a CUDA host, end to end, in a few minutes.

On a CUDA host it builds a small Llama base (grouped-query attention, a byte tokenizer: no model hub is
needed), trains a LoRA and a QLoRA adapter on it with the code behind `loraplex train lora|qlora`
(training/sft.py), and passes each adapter through the upload gate (registry/validation.py: files,
config, rank, module names, shapes, values, the base's fingerprint) and the no-op probe
(registry/noop_probe.py), locally, without S3. It prints a summary and writes it as JSON.

What it does not cover: serving on CUDA (the lent GPU machines have no vLLM), and models larger than
the tiny one. docs/operations.md ("Running on a GPU host") says how to run it.

Exit codes: 0 every check passed, or no CUDA device (said so, nothing checked; --require-cuda makes that
3); 1 a check failed; 2 a Python package the check needs is missing (named).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = 3


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import torch

    if not (args.allow_cpu or torch.cuda.is_available()):
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})"
              ": nothing was checked. Run it on a CUDA host (docs/operations.md, 'Running on a GPU host').")
        return NO_CUDA if args.require_cuda else 0
    sys.path.insert(0, str(ROOT))
    try:
        from registry.base_spec import BaseModelSpec  # noqa: F401  (the imports the check needs, up front)
        from training.sft import run_training  # noqa: F401
    except ImportError as e:
        print(f"gpu-check: {e.name or e} is not installed: run it in the project's venv (make install), or add "
              "the missing packages (docs/operations.md, 'Running on a GPU host')", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (--allow-cpu)"
    base = build_base(args.out / "base")
    data = write_data(args.out / "reverse.jsonl")
    rows = [check_method(method, base, data, args.out / method, args.steps) for method in ("lora", "qlora")]
    summary = {"device": device, "torch": torch.__version__, "base": str(base), "rows": rows,
               "ok": all(r["status"] in ("passed", "unavailable") for r in rows) and rows[0]["status"] == "passed"}
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary, args.out / "gpu_check.json")
    return 0 if summary["ok"] else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "var" / "gpu-check", help="work and result directory")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per method")
    p.add_argument("--require-cuda", action="store_true", help=f"exit {NO_CUDA} (not 0) without a CUDA device")
    p.add_argument("--allow-cpu", action="store_true", help="run the LoRA half on the CPU (a check of this script)")
    return p


def build_base(out: Path) -> Path:
    """A small random-weight Llama with grouped-query attention (4 query heads, 2 KV heads) and the demo's
    byte tokenizer, saved as a Hugging Face directory."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from training.tokenizer import save_tokenizer

    tokenizer = save_tokenizer(out)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    return out


def write_data(path: Path, n: int = 320) -> Path:
    """Prompt/completion pairs of the demo's reverse task (a task the tiny base can learn in a few steps)."""
    from training.tasks import dataset

    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in dataset("reverse", n, 3)))
    return path


def check_method(method: str, base: Path, data: Path, out: Path, steps: int) -> dict:
    """Train `method` on `base`, then gate and probe the adapter; a row of the summary."""
    from training.model_loading import qlora_missing

    row: dict = {"method": method}
    if method == "qlora" and qlora_missing():
        return {**row, "status": "unavailable", "detail": "QLoRA needs " + " and ".join(qlora_missing())}
    try:
        row.update(train(method, base, data, out, steps))
        row.update(gate(base, Path(row.pop("adapter_dir"))))
    except Exception as e:  # a failed check is a row of the report, not a traceback
        return {**row, "status": "failed", "detail": f"{type(e).__name__}: {e}"}
    loss_fell = row["eval_loss_after"] < row["eval_loss_before"]
    return {**row, "status": "passed" if loss_fell else "failed",
            "detail": "" if loss_fell else "the validation loss did not fall"}


def train(method: str, base: Path, data: Path, out: Path, steps: int) -> dict:
    from training.config import LoraSettings, TrainJob, TrainSettings
    from training.sft import run_training

    job = TrainJob(method, base, data, out, lora=LoraSettings(r=8, dropout=0.0), overwrite=True,
                   train=TrainSettings(lr=5e-3, max_steps=steps, batch_size=16, eval_steps=steps, patience=0,
                                       progress=False))
    started = time.monotonic()
    record = run_training(job)
    m = record["metrics"]
    return {"adapter_dir": record["artifact"]["dir"], "train_s": round(time.monotonic() - started, 1),
            "eval_loss_before": round(m["eval_loss_before"], 4), "eval_loss_after": round(m["eval_loss"], 4),
            "peak_mem_mb": m.get("peak_mem_mb"), "step_s_median": m.get("step_s_median")}


def gate(base: Path, adapter_dir: Path) -> dict:
    """The upload gate and the no-op probe on the adapter's two files, as the gateway runs them."""
    from common.peft_format import ADAPTER_FILES
    from registry.base_spec import BaseModelSpec
    from registry.noop_probe import NoOpProbe
    from registry.validation import AdapterValidator

    spec = BaseModelSpec.from_dir(base)
    probe = NoOpProbe(spec)
    files = {name: (adapter_dir / name).read_bytes() for name in ADAPTER_FILES}
    adapter = AdapterValidator(max_rank=16, base=spec, probes=[probe]).validate(files)
    return {"rank": adapter.rank, "modules": len(adapter.modules), "fingerprinted": adapter.trained_on is not None,
            "probe_relative_change": round(probe.last.get("relative_change", float("nan")), 4)}


def print_summary(summary: dict, path: Path) -> None:
    print(f"gpu-check on {summary['device']} (torch {summary['torch']}), base {summary['base']}")
    for r in summary["rows"]:
        if r["status"] == "unavailable":
            print(f"  {r['method']:<6} unavailable: {r['detail']}")
            continue
        numbers = (f"loss {r.get('eval_loss_before')} -> {r.get('eval_loss_after')}, {r.get('train_s')} s, "
                   f"peak {r.get('peak_mem_mb')} MB; gate: rank {r.get('rank')}, {r.get('modules')} modules, "
                   f"fingerprinted {r.get('fingerprinted')}; probe change {r.get('probe_relative_change')}")
        print(f"  {r['method']:<6} {r['status']}: {numbers if 'rank' in r else ''}{r['detail']}")
    print(("all checks passed" if summary["ok"] else "FAILED") + f"; details in {path}")


if __name__ == "__main__":
    sys.exit(main())
