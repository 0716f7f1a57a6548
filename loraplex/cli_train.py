"""`loraplex train ...` and `loraplex adapter compose`: training runs locally; publishing goes through the gateway.

Mounted by loraplex/cli.py:
    app.add_typer(train_app, name="train")
    adapter_app.command("compose")(compose_command)
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from common.errors import LoraplexError
from training.config import QUICK, CompareSettings, LoraSettings, TrainJob, TrainSettings
from training.recommend import Workload

train_app = typer.Typer(help="Fine-tune, merge, compose and inspect adapters (runs on this machine).",
                        no_args_is_help=True)
console = Console(stderr=True)  # stdout is kept for --json
T, L = TrainSettings.help, LoraSettings.help


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error[/]: {escape(message)}")  # messages hold [brackets] that are not markup
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors(as_json: bool):
    """Typed errors become one red line and exit 2; with --json, library chatter goes to stderr."""
    try:
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            yield
    except (LoraplexError, ValueError) as exc:
        _fail(getattr(exc, "message", str(exc)))


def _emit(as_json: bool, data, view) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        Console().print(view)


def _set_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def _push(directory: Path, name: str, tenant: str | None, alias: str | None, metadata: dict) -> dict:
    """Publish an adapter through the gateway (the only way in), optionally pointing an alias at it."""
    from loraplex.client import ApiError, GatewayClient

    client = GatewayClient.from_env(tenant=tenant)
    try:
        out = client.push(directory, name, metadata=metadata)
        if alias:
            client.move_alias(name, alias, out["version"])
    except ApiError as exc:
        _fail(f"push failed: {exc}", code=1)
    console.print(f"pushed {name} version [bold]{out['version']}[/]" + (f" ({name}@{alias})" if alias else ""))
    return out


def _training_metadata(record: dict) -> dict:
    health = {k: v for k, v in record.get("health", {}).items() if k != "per_module"}
    return {"training": {"method": record["method"], "dataset_sha256": record["dataset"]["sha256"],
                         "dataset": {k: v for k, v in record["dataset"].items() if k != "path"},
                         "base_model": record["base_model"]["name"], "settings": record["settings"],
                         "metrics": record["metrics"], "health": health, "created_at": record["created_at"]}}


def _train_command(method: str):
    """The `train lora|qlora|full` command: one signature, LoRA and push options hidden for `full`."""
    no_lora = method == "full"
    lo, tr = LoraSettings(), TrainSettings.for_method(method)  # the defaults: one place, training/config.py

    def command(
        base: Path = typer.Option(..., "--base", help="local Hugging Face causal-LM directory"),
        data: Path = typer.Option(..., "--data", help="JSONL: {prompt, completion} or {messages} per line"),
        out: Path = typer.Option(..., "--out", help="output directory (adapter/ or model/, train.json, checkpoints/)"),
        val_data: Path | None = typer.Option(None, "--val-data", help="JSONL validation file (else --val-share)"),
        val_share: float = typer.Option(tr.val_share, help=T("val_share")),
        r: int = typer.Option(lo.r, "--r", "-r", "--rank", help=L("r"), hidden=no_lora),
        alpha: float | None = typer.Option(lo.alpha, help=L("alpha"), hidden=no_lora),
        dropout: float = typer.Option(lo.dropout, help=L("dropout"), hidden=no_lora),
        target_modules: str = typer.Option(",".join(lo.target_modules), help="comma-separated; " + L("target_modules"),
                                           hidden=no_lora),
        rslora: bool = typer.Option(lo.rslora, "--rslora", help=L("rslora"), hidden=no_lora),
        lr: float = typer.Option(tr.lr, help=T("lr")),
        scheduler: str = typer.Option(tr.scheduler, help=T("scheduler")),
        warmup_ratio: float = typer.Option(tr.warmup_ratio, help=T("warmup_ratio")),
        epochs: float = typer.Option(tr.epochs, help=T("epochs")),
        max_steps: int = typer.Option(tr.max_steps, help=T("max_steps")),
        batch_size: int = typer.Option(tr.batch_size, help=T("batch_size")),
        grad_accum: int = typer.Option(tr.grad_accum, help=T("grad_accum")),
        max_length: int = typer.Option(tr.max_length, help=T("max_length")),
        eval_steps: int = typer.Option(tr.eval_steps, help=T("eval_steps")),
        patience: int = typer.Option(tr.patience, help=T("patience")),
        min_delta: float = typer.Option(tr.min_delta, help=T("min_delta")),
        keep_best: int = typer.Option(tr.keep_best, help=T("keep_best")),
        keep_last: int = typer.Option(tr.keep_last, help=T("keep_last")),
        gradient_checkpointing: bool = typer.Option(tr.gradient_checkpointing, "--gradient-checkpointing",
                                                    help=T("gradient_checkpointing")),
        mix_general: Path | None = typer.Option(None, help="JSONL of general data mixed in against forgetting"),
        mix_share: float = typer.Option(tr.mix_share, help=T("mix_share")),
        weight_decay: float = typer.Option(tr.weight_decay, help=T("weight_decay")),
        seed: int = typer.Option(tr.seed, help=T("seed")),
        resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint in OUT/checkpoints"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier run in OUT"),
        progress: bool = typer.Option(tr.progress, "--progress/--no-progress", help=T("progress")),
        threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)"),
        push: str | None = typer.Option(None, "--push", help="publish the result under this name: an adapter "
                                           "(lora, qlora) or a registry model of kind full (full)"),
        tenant: str | None = typer.Option(None, help="push with this tenant's key from var/stack.json"),
        alias: str | None = typer.Option(None, help="after --push, point NAME@ALIAS at the new version"),
        as_json: bool = typer.Option(False, "--json", help="print train.json to stdout"),
    ) -> None:
        from training.sft import run_training

        lora = LoraSettings(r=r, alpha=alpha, dropout=dropout, rslora=rslora,
                            target_modules=tuple(t.strip() for t in target_modules.split(",") if t.strip()))
        train = TrainSettings(lr=lr, scheduler=scheduler, warmup_ratio=warmup_ratio, epochs=epochs, max_steps=max_steps,
                              batch_size=batch_size, grad_accum=grad_accum, max_length=max_length, val_share=val_share,
                              eval_steps=eval_steps, patience=patience, min_delta=min_delta, keep_best=keep_best,
                              keep_last=keep_last, gradient_checkpointing=gradient_checkpointing, mix_share=mix_share,
                              weight_decay=weight_decay, seed=seed, progress=progress)
        job = TrainJob(method, base, data, out, lora=lora, train=train, val_data=val_data, mix_general=mix_general,
                       resume=resume, overwrite=overwrite)
        _set_threads(threads)
        with _errors(as_json):
            record = run_training(job, on_stage=lambda s: console.print(f"[dim]{method}: {s}…[/]"))
        if push and no_lora:  # a full model goes to the registry's models/, beside adapters/
            from loraplex.cli_model import base_lineage, push_model

            record["push"] = push_model(out / "model", push, "full", tenant=tenant, alias=alias,
                                        derived_from=base_lineage(base), metadata=_training_metadata(record))
        elif push:
            record["push"] = _push(out / "adapter", push, tenant, alias, _training_metadata(record))
        from training.views import train_summary

        _emit(as_json, record, train_summary(record))

    command.__doc__ = {
        "lora": "LoRA fine-tuning: a small adapter on a frozen base (loss on completion tokens only).",
        "qlora": "QLoRA: LoRA on a 4-bit base. Needs CUDA and bitsandbytes; refuses clearly without them.",
        "full": "Full fine-tuning: every weight trains; saves a complete model (optionally mix in general data).",
    }[method]
    return command


for _method in ("lora", "qlora", "full"):
    train_app.command(_method)(_train_command(_method))


@train_app.command("merge")
def merge_command(
    base: Path = typer.Option(..., "--base", help="the base model the adapter was trained on"),
    adapter: Path = typer.Option(..., "--adapter", help="adapter directory (or a `train lora` output directory)"),
    out: Path = typer.Option(..., "--out", help="directory for the merged full model"),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16"),
    push: str | None = typer.Option(None, "--push", help="publish the merged model under this name "
                                       "(registry models/, kind merged)"),
    tenant: str | None = typer.Option(None, help="push with this tenant's key from var/stack.json"),
    alias: str | None = typer.Option(None, help="after --push, point NAME@ALIAS at the new version"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Fold an adapter into its base (PEFT merge_and_unload, safe_merge) and save a plain full model."""
    from training.merge import merge

    with _errors(as_json):
        result = merge(base, adapter, out, dtype)
    if push:
        from loraplex.cli_model import base_lineage, push_model

        lineage = base_lineage(base) | {"adapter": _adapter_lineage(Path(result["adapter"]))}
        result["push"] = push_model(out, push, "merged", tenant=tenant, alias=alias, derived_from=lineage,
                                    metadata={"merge": {"dtype": dtype, "seconds": result["seconds"]}})
    _emit(as_json, result, f"merged into {result['out_dir']} ({result['size_bytes'] / 2**20:.1f} MB, "
                           f"{result['seconds']:.1f}s); load it with transformers or serve it with vLLM")


def _adapter_lineage(adapter_dir: Path) -> dict:
    """What a merged model was merged from: the adapter's rank, targets and weights digest."""
    from common.peft_format import CONFIG_FILE, WEIGHTS_FILE
    from training.staged_build import file_sha256

    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    return {"name": adapter_dir.parent.name if adapter_dir.name == "adapter" else adapter_dir.name,
            "r": config.get("r"), "lora_alpha": config.get("lora_alpha"),
            "target_modules": config.get("target_modules"),
            "weights_sha256": file_sha256(adapter_dir / WEIGHTS_FILE)}


@train_app.command("health")
def health_command(
    directory: Path = typer.Argument(..., help="adapter directory or a `train lora` output directory"),
    modules: bool = typer.Option(False, "--modules", help="one row per module"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Singular-value spectrum of each LoRA update: effective rank and near-zero share."""
    from common.adapter_health import adapter_health
    from training.adapter_dirs import resolve_adapter_dir
    from training.views import health_table

    with _errors(as_json):
        health = adapter_health(resolve_adapter_dir(directory))
    _emit(as_json, health, health_table(health, per_module=modules))


@train_app.command("recommend")
def recommend_command(
    params_b: float = typer.Option(..., "--params-b", help="model size in billions of parameters"),
    gpu_count: int = typer.Option(Workload.gpu_count, "--gpu-count"),
    gpu_mem_gb: float = typer.Option(Workload.gpu_mem_gb, "--gpu-mem-gb", help="memory of one GPU"),
    examples: int = typer.Option(Workload.examples, "--examples", help="training examples"),
    objective: str = typer.Option(Workload.objective, help="instruction, domain or task"),
    variants: int = typer.Option(Workload.variants, help="how many fine-tuned variants of the base you will serve"),
    budget_usd: float | None = typer.Option(Workload.budget_usd, "--budget-usd", help="training budget"),
    accuracy_critical: bool = typer.Option(Workload.accuracy_critical, "--accuracy-critical"),
    seq_len: int = typer.Option(Workload.seq_len, help="tokens per sequence (activation memory)"),
    tokens_per_example: int = typer.Option(Workload.tokens_per_example,
                                           help="average tokens per example (compute, cost)"),
    epochs: float = typer.Option(Workload.epochs),
    gpu_hour_usd: float = typer.Option(Workload.gpu_hour_usd, help="price of one GPU-hour"),
    gpu_tflops: float = typer.Option(Workload.gpu_tflops, help="dense bf16 TFLOP/s of one GPU"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Recommend full, LoRA or QLoRA with rank, target modules, memory estimates and reasons."""
    from training.recommend import Workload, recommend
    from training.views import recommend_view

    with _errors(as_json):
        result = recommend(Workload(
            params_b=params_b, gpu_count=gpu_count, gpu_mem_gb=gpu_mem_gb, examples=examples, objective=objective,
            variants=variants, budget_usd=budget_usd, accuracy_critical=accuracy_critical, seq_len=seq_len,
            tokens_per_example=tokens_per_example, epochs=epochs, gpu_hour_usd=gpu_hour_usd, gpu_tflops=gpu_tflops))
    _emit(as_json, result, recommend_view(result))


@train_app.command("compare")
def compare_command(
    base: Path = typer.Option(..., "--base", help="base model directory"),
    data: Path = typer.Option(..., "--data", help="JSONL task data (a share is held out for the task score)"),
    out: Path = typer.Option(..., "--out", help="receives compare.json, compare.md, PNGs and the runs"),
    retention_data: Path | None = typer.Option(None, help="JSONL of a task the base already does (forgetting)"),
    mix_general: Path | None = typer.Option(None, help="JSONL of general data mixed into every variant"),
    mix_share: float = typer.Option(CompareSettings.mix_share, help="share of --mix-general data in the training set"),
    quick: bool = typer.Option(False, "--quick", help="a reduced run (about a minute)"),
    steps: int | None = typer.Option(None, help="training steps of every variant"),
    batch_size: int | None = typer.Option(None),
    ranks: str = typer.Option(",".join(map(str, CompareSettings.ranks)), help="LoRA ranks, comma-separated"),
    threads: int = typer.Option(1, help="torch threads; 1 keeps tiny-model timings stable on busy machines"),
    as_json: bool = typer.Option(False, "--json", help="print the rows to stdout"),
) -> None:
    """Full fine-tuning vs LoRA at several ranks under the same compute: quality, forgetting, cost."""
    from training.compare import run_compare
    from training.compare_report import write_report
    from training.views import compare_table

    settings = QUICK if quick else CompareSettings()
    settings = replace(settings, ranks=tuple(int(r) for r in ranks.split(",")),
                       steps=steps or settings.steps, batch_size=batch_size or settings.batch_size, mix_share=mix_share)
    _set_threads(threads)
    with _errors(as_json), console.status("comparing…") as status:
        result = run_compare(base, data, out, settings, retention_data, mix_general=mix_general,
                             on_variant=lambda v: status.update(f"training {v}…"))
        paths = write_report(result, out)
    console.print(f"wrote {paths['json']}, {paths['markdown']}, {paths['quality'].name}, {paths['cost'].name}")
    _emit(as_json, result["rows"], compare_table(result["rows"]))


def _parse_specs(specs: list[str]) -> list[tuple[Path, float]]:
    pairs = []
    for spec in specs:
        path, sep, weight = spec.rpartition(":")
        try:
            pairs.append((Path(path), float(weight)) if sep else (Path(spec), 1.0 / len(specs)))
        except ValueError:
            _fail(f"{spec!r}: write DIR:WEIGHT, e.g. adapters/reverse:0.7")
    return pairs


def _default_base() -> Path | None:
    """LORAPLEX_BASE_MODEL, else the base model of the running stack (var/stack.json)."""
    from loraplex.client import stack_info
    from loraplex.settings import StackSettings

    cfg = StackSettings()
    base = cfg.base_model or stack_info(cfg).get("base_model")
    return Path(base) if base else None


def compose_command(
    specs: list[str] = typer.Argument(..., help="adapters as DIR:WEIGHT (a weight may be negative)"),
    name: str = typer.Option(..., "--name", help="name of the new adapter"),
    base: Path | None = typer.Option(None, "--base", help="base model directory (default: LORAPLEX_BASE_MODEL, "
                                        "else var/stack.json's base_model)"),
    out: Path | None = typer.Option(None, "--out", help="output directory (default var/adapters/composed/NAME)"),
    method: str = typer.Option("linear", help="linear, ties, cat, svd or ties_svd"),
    density: float = typer.Option(0.5, help="share of entries TIES keeps"),
    svd_rank: int | None = typer.Option(None, help="rank of an svd/ties_svd result"),
    push: bool = typer.Option(False, "--push", help="publish the result as NAME through the gateway"),
    tenant: str | None = typer.Option(None, help="push with this tenant's key from var/stack.json"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Combine local adapters into a new one (PEFT add_weighted_adapter), e.g. `compose A:0.7 B:0.3 --name C`."""
    from training.compose import compose

    base = base or _default_base()
    if base is None:
        _fail("no base model: pass --base DIR or set LORAPLEX_BASE_MODEL")
    out = out or Path("var/adapters/composed") / name
    with _errors(as_json):
        result = compose(base, _parse_specs(specs), out, method=method, density=density, svd_rank=svd_rank)
    if push:
        meta = {"composed": {k: result[k] for k in ("method", "rank", "adapters", "weights", "density")}}
        result["push"] = _push(out, name, tenant, None, meta)
    _emit(as_json, result, f"composed {len(specs)} adapters ({method}) into {out}: rank {result['rank']}")


__all__ = ["compose_command", "train_app"]
