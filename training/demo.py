"""The demo: one tiny base model and three tenants, each with a LoRA adapter that answers differently.

    python -m training.demo --var var

builds `var/models/demo-base/` and `var/adapters/demo/<adapter>/`, skipping what is already built
with the current recipe. A stamp marks each finished artifact: `build.json` inside the base
directory, and `var/adapters/demo/<adapter>.build.json` next to each adapter (an adapter directory
holds exactly its two files).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from transformers.utils import logging as hf_logging

from training.artifacts import discard, file_sha256, read_stamp, staged_dir, write_stamp
from training.builders import build_adapter, build_base, word_pools
from training.lora import is_adapter_dir
from training.tasks import DEMO_WORDS, answer, make_prompt
from training.tiny import TinyShape
from training.train import Recipe

# Bump when code that shapes the trained weights changes (the settings below are fingerprinted).
RECIPE_VERSION = 2
BASE_NAME = "demo-base"
BASE_TASK = "echo"
DEMO_TENANTS: tuple[dict[str, str], ...] = (
    {"tenant": "acme", "adapter": "reverse", "task": "reverse"},
    {"tenant": "globex", "adapter": "shout", "task": "upper"},
    {"tenant": "initech", "adapter": "caesar", "task": "caesar"},
)
SHAPE = TinyShape(hidden_size=128, num_heads=2, intermediate_size=256, num_layers=2)
# Measured on 2 CPU cores: held-out exact-answer accuracy 99%+ for every task (5e-3 is unstable
# for the base; reverse needs the most steps, upper and caesar converge by step ~150).
BASE_RECIPE = Recipe(steps=500, lr=3e-3, seed=0)
ADAPTER_RECIPES = {  # by task
    "reverse": Recipe(steps=400, lr=5e-3, seed=1),
    "upper": Recipe(steps=200, lr=5e-3, seed=1),
    "caesar": Recipe(steps=200, lr=5e-3, seed=1),
}
TRAIN_WORDS, HELD_OUT_WORDS = 20000, 400
SCRATCH = ".build-tmp"  # temporary build directories, on the same filesystem as the results
BASE_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def recipe_fingerprint(task: str = BASE_TASK) -> str:
    """Short hash of the settings that determine the weights of the base (or of `task`'s adapter).

    A stamp must carry the current fingerprint to count as complete; an adapter's stamp also
    records the base weights it was trained on.
    """
    recipe = ADAPTER_RECIPES[task] if task != BASE_TASK else BASE_RECIPE
    settings = {"version": RECIPE_VERSION, "task": task, "recipe": asdict(recipe),
                "words": [TRAIN_WORDS, HELD_OUT_WORDS, list(DEMO_WORDS)]}
    if task == BASE_TASK:
        settings["shape"] = asdict(SHAPE)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


__all__ = ["DEMO_TENANTS", "DEMO_WORDS", "DemoArtifacts", "build_demo", "demo_prompt", "main"]


def demo_prompt(word: str) -> str:
    """The completion prompt the demo sends for `word` (what the models were trained on)."""
    return make_prompt(word)


def base_dir(var_dir: Path) -> Path:
    """Directory of the demo base model under `var_dir`."""
    return Path(var_dir) / "models" / BASE_NAME


def adapter_dir(var_dir: Path, adapter: str) -> Path:
    """Directory of one demo adapter under `var_dir`."""
    return Path(var_dir) / "adapters" / "demo" / adapter


def _adapter_stamp(var_dir: Path, adapter: str) -> Path:
    return adapter_dir(var_dir, adapter).with_name(f"{adapter}.build.json")


@dataclass
class DemoArtifacts:
    """Where the demo's models are, and the stamps (metrics) of each."""

    base_dir: Path
    adapter_dirs: dict[str, Path]
    stamps: dict[str, dict]
    built: list[str] = field(default_factory=list)  # what this call trained (the rest was reused)


def _base_ok(var_dir: Path) -> dict | None:
    # The base is complete when its stamp matches the recipe and every file vLLM needs is there.
    stamp = read_stamp(base_dir(var_dir) / "build.json")
    if not stamp or stamp.get("recipe") != recipe_fingerprint():
        return None
    return stamp if all((base_dir(var_dir) / f).is_file() for f in BASE_FILES) else None


def _adapter_ok(var_dir: Path, tenant: dict, base_sha: str) -> dict | None:
    # An adapter is only valid for the exact base weights it was trained on.
    stamp = read_stamp(_adapter_stamp(var_dir, tenant["adapter"]))
    if not stamp or stamp.get("recipe") != recipe_fingerprint(tenant["task"]) or stamp.get("base_sha256") != base_sha:
        return None
    complete = stamp.get("task") == tenant["task"] and is_adapter_dir(adapter_dir(var_dir, tenant["adapter"]))
    return stamp if complete else None


def _on_step(progress: Progress, label: str, total: int):
    if not progress.console.is_terminal:  # no live bars in a log: say what is going on
        progress.console.print(f"training {label}: {total} steps")
    task_id = progress.add_task(label, total=total, loss=float("nan"))
    return lambda step, loss: progress.update(task_id, completed=step + 1, loss=loss)


def _report(progress: Progress, label: str, metrics: dict) -> None:
    progress.console.print(
        f"{label}: held-out accuracy {metrics['held_out_accuracy']:.1%}, demo words {metrics['demo_accuracy']:.0%}"
        f" ({metrics['train_seconds']:.0f}s of training)"
    )


def _make_base(var_dir: Path, words, held_out, progress: Progress) -> dict:
    final = base_dir(var_dir)
    with staged_dir(final, Path(var_dir) / SCRATCH) as tmp:
        on_step = _on_step(progress, f"{BASE_NAME} ({BASE_TASK})", BASE_RECIPE.steps)
        metrics = build_base(tmp, SHAPE, BASE_RECIPE, words, held_out, on_step)
        _report(progress, BASE_NAME, metrics)
        sha = file_sha256(tmp / "model.safetensors")
        stamp = {"recipe": recipe_fingerprint(), "task": BASE_TASK, "model_sha256": sha, **metrics}
        write_stamp(tmp / "build.json", stamp)  # renamed into place together with the model
    return stamp


def _make_adapter(var_dir: Path, tenant: dict, base_sha: str, words, held_out, progress: Progress) -> dict:
    name, task = tenant["adapter"], tenant["task"]
    final, stamp_path = adapter_dir(var_dir, name), _adapter_stamp(var_dir, name)
    discard(stamp_path)  # the directory is about to change: it must not look complete meanwhile
    recipe = ADAPTER_RECIPES[task]
    with staged_dir(final, Path(var_dir) / SCRATCH) as tmp:
        on_step = _on_step(progress, f"{name} ({task})", recipe.steps)
        metrics = build_adapter(base_dir(var_dir), tmp, task, recipe, words, held_out, on_step)
        _report(progress, name, metrics)
    stamp = {"recipe": recipe_fingerprint(task), "task": task, "base_sha256": base_sha, **metrics}
    write_stamp(stamp_path, stamp)
    return stamp


@contextmanager
def _build_lock(var_dir: Path):
    # Several entry points build the same var/ (tests, `loraplex up`, benches): one at a time,
    # and whoever waited then finds everything complete.
    var_dir.mkdir(parents=True, exist_ok=True)
    with (var_dir / ".demo-build.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_demo(var_dir: Path, force: bool = False, console: Console | None = None, threads: int = 1) -> DemoArtifacts:
    """Build (or reuse) the demo base model and the adapters of DEMO_TENANTS under `var_dir`.

    Args:
        var_dir: the runtime directory; models go to var_dir/models, adapters to var_dir/adapters/demo.
        force: rebuild everything even if complete stamps exist.
        console: where progress is shown (a quiet Console silences it); a default Console if None.
        threads: torch threads while training. One by default: the matrices are tiny, and on a
            busy 2-core host two threads were measured 5-10x slower than one (about 1.7x faster
            on an idle one).

    Returns:
        The artifact paths and the stamp (recipe and accuracy metrics) of each.
    """
    var_dir = Path(var_dir)
    saved_threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(max(1, threads))
    hf_logging.disable_progress_bar()  # one progress display: ours
    try:
        with _build_lock(var_dir):
            return _build(var_dir, force, console or Console())
    finally:
        torch.set_num_threads(saved_threads)
        if bars:
            hf_logging.enable_progress_bar()


def _build(var_dir: Path, force: bool, console: Console) -> DemoArtifacts:
    columns = (TextColumn("{task.description:<22}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn())
    built: list[str] = []
    words, held_out = word_pools(TRAIN_WORDS, HELD_OUT_WORDS)
    with Progress(*columns, console=console) as progress:
        base_stamp = None if force else _base_ok(var_dir)
        if base_stamp is None:
            base_stamp = _make_base(var_dir, words, held_out, progress)
            built.append(BASE_NAME)
        stamps = {BASE_NAME: base_stamp}
        for tenant in DEMO_TENANTS:
            stamp = None if force else _adapter_ok(var_dir, tenant, base_stamp["model_sha256"])
            if stamp is None:
                stamp = _make_adapter(var_dir, tenant, base_stamp["model_sha256"], words, held_out, progress)
                built.append(tenant["adapter"])
            stamps[tenant["adapter"]] = stamp
    with suppress(OSError):
        (var_dir / SCRATCH).rmdir()  # only when empty: another tool may be using it
    dirs = {t["adapter"]: adapter_dir(var_dir, t["adapter"]) for t in DEMO_TENANTS}
    return DemoArtifacts(base_dir=base_dir(var_dir), adapter_dirs=dirs, stamps=stamps, built=built)


def _summary(artifacts: DemoArtifacts, seconds: float, console: Console) -> None:
    console.print(f"base model: {artifacts.base_dir}")
    console.print(f"adapters:   {artifacts.base_dir.parent.parent / 'adapters' / 'demo'}")
    word = DEMO_WORDS[0]
    rows = [(BASE_NAME, "-", BASE_TASK)] + [(t["adapter"], t["tenant"], t["task"]) for t in DEMO_TENANTS]
    for name, tenant, task in rows:
        stamp = artifacts.stamps[name]
        state = "built" if name in artifacts.built else "reused"
        console.print(
            f"  {name:<9} {tenant:<8} {word} -> {answer(task, word):<6} "
            f"held-out {stamp['held_out_accuracy']:.1%}  demo {stamp['demo_accuracy']:.0%}  {state}"
        )
    console.print(f"done in {seconds:.0f}s")


def main(argv: list[str] | None = None) -> int:
    """Command line: build the demo into --var and print a summary."""
    parser = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--var", type=Path, default=Path("var"), help="runtime directory (default: var)")
    parser.add_argument("--force", action="store_true", help="rebuild even what is already built")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1; more only helps on an idle host)")
    args = parser.parse_args(argv)
    console = Console()
    started = time.monotonic()
    artifacts = build_demo(args.var, force=args.force, console=console, threads=args.threads)
    _summary(artifacts, time.monotonic() - started, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
