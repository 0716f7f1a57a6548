"""The demo: one tiny base model and three tenants, each with a LoRA adapter that answers differently.

    python -m training.demo --var var

builds `var/models/demo-base/` and `var/adapters/demo/<adapter>/`, skipping what is already built
with the current recipe. A stamp marks each finished artifact: `build.json` inside the base
directory, and `var/adapters/demo/<adapter>.build.json` next to each adapter (an adapter directory
holds exactly its two files).

The build is reproducible: it runs in a process of its own with pinned kernels, one thread and
deterministic algorithms (training.reproducible), so an x86-64 machine with AVX2 builds the same
bytes. Each model trains until it reaches the quality goal (QUALITY_FLOOR on held-out words, every
demo word right) rather than for a step count that happens to be enough on one machine.
"""

from __future__ import annotations

import argparse
import fcntl
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from transformers.utils import logging as hf_logging

from common.peft_format import is_adapter_dir
from training import reproducible
from training.builders import build_adapter, build_base, word_pools
from training.demo_loop import GoalNotReached
from training.demo_recipe import (
    ADAPTER_RECIPES,
    BASE_FILES,
    BASE_NAME,
    BASE_RECIPE,
    BASE_TASK,
    DEMO_TENANTS,
    HELD_OUT_WORDS,
    QUALITY_FLOOR,
    SCRATCH,
    SHAPE,
    TRAIN_WORDS,
    adapter_dir,
    base_dir,
    demo_prompt,
    recipe_fingerprint,
)
from training.staged_build import discard, file_sha256, read_stamp, staged_dir, write_stamp
from training.tasks import DEMO_WORDS, answer

__all__ = ["BASE_NAME", "DEMO_TENANTS", "DEMO_WORDS", "QUALITY_FLOOR", "DemoArtifacts", "DemoBuildError", "build_demo",
           "build_here", "demo_prompt", "main"]


class DemoBuildError(RuntimeError):
    """The demo build failed (e.g. a model never reached QUALITY_FLOOR); the message says why."""


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
        progress.console.print(f"training {label}: {total} steps, more until {QUALITY_FLOOR:.0%} held-out")
    task_id = progress.add_task(label, total=total, loss=float("nan"))

    def update(step: int, loss: float) -> None:
        progress.update(task_id, completed=step + 1, total=max(total, step + 1), loss=loss)

    return update


def _report(progress: Progress, label: str, metrics: dict) -> None:
    progress.console.print(
        f"{label}: held-out accuracy {metrics['held_out_accuracy']:.1%}, demo words {metrics['demo_accuracy']:.0%}"
        f" ({metrics['steps']} steps, {metrics['train_seconds']:.0f}s of training)"
    )


def _checked(name: str, task: str, step, *args) -> dict:
    # A model that never reaches the floor fails the build, naming the model and what to change.
    try:
        return step(*args)
    except GoalNotReached as e:
        raise DemoBuildError(f"{name} ({task}) did not reach the quality goal: {e}") from None


def _make_base(var_dir: Path, words, held_out, progress: Progress) -> dict:
    final = base_dir(var_dir)
    with staged_dir(final, Path(var_dir) / SCRATCH) as tmp:
        on_step = _on_step(progress, f"{BASE_NAME} ({BASE_TASK})", BASE_RECIPE.steps)
        metrics = _checked(BASE_NAME, BASE_TASK, build_base, tmp, SHAPE, BASE_RECIPE, words, held_out, QUALITY_FLOOR,
                           on_step)
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
        metrics = _checked(name, task, build_adapter, base_dir(var_dir), tmp, task, recipe, words, held_out,
                           QUALITY_FLOOR, on_step)
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


def build_demo(var_dir: Path, force: bool = False, console: Console | None = None) -> DemoArtifacts:
    """Build (or reuse) the demo base model and the adapters of DEMO_TENANTS under `var_dir`.

    What is complete is reused without starting anything; what is missing is trained in a
    reproducible process of its own (see the module's doc).

    Args:
        var_dir: the runtime directory; models go to var_dir/models, adapters to var_dir/adapters/demo.
        force: rebuild everything even if complete stamps exist.
        console: where progress is shown (a quiet Console silences it); a default Console if None.

    Returns:
        The artifact paths and the stamp (recipe and accuracy metrics) of each.

    Raises:
        DemoBuildError: a model did not reach QUALITY_FLOOR within its recipe's step limit, or the
            build process failed.
    """
    var_dir, console = Path(var_dir), console or Console()
    if not force and (done := _complete(var_dir)) is not None:
        return done
    if reproducible.active():
        return build_here(var_dir, force, console)
    with tempfile.TemporaryDirectory(prefix="lpx-demo-build-") as tmp:
        result = Path(tmp) / "result.json"
        args = ["--var", str(var_dir), "--result", str(result)] + ["--force"] * force + ["--quiet"] * console.quiet
        try:
            reproducible.run_module("training.demo", args)
        except subprocess.CalledProcessError as e:
            outcome = read_stamp(result) or {}
            raise DemoBuildError(outcome.get("error") or f"the demo build process exited with {e.returncode}") from None
        built = (read_stamp(result) or {}).get("built", [])
    done = _complete(var_dir)
    if done is None:
        raise DemoBuildError(f"the demo build process finished but {var_dir} is not complete")
    done.built = built
    return done


def _complete(var_dir: Path) -> DemoArtifacts | None:
    # Everything already built with the current recipe, or None.
    base = _base_ok(var_dir)
    if base is None:
        return None
    stamps = {BASE_NAME: base}
    for tenant in DEMO_TENANTS:
        if (stamp := _adapter_ok(var_dir, tenant, base["model_sha256"])) is None:
            return None
        stamps[tenant["adapter"]] = stamp
    return _artifacts(var_dir, stamps, [])


def _artifacts(var_dir: Path, stamps: dict, built: list[str]) -> DemoArtifacts:
    dirs = {t["adapter"]: adapter_dir(var_dir, t["adapter"]) for t in DEMO_TENANTS}
    return DemoArtifacts(base_dir=base_dir(var_dir), adapter_dirs=dirs, stamps=stamps, built=built)


def build_here(var_dir: Path, force: bool = False, console: Console | None = None) -> DemoArtifacts:
    """`build_demo` in this process: reproducible only when it was started with REPRODUCIBLE_ENV."""
    var_dir = Path(var_dir)
    saved_threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    reproducible.setup_torch()
    hf_logging.disable_progress_bar()  # one progress display: ours
    try:
        with _build_lock(var_dir):
            return _build(var_dir, force, console or Console())
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(False)
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
    return _artifacts(var_dir, stamps, built)


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
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    parser.add_argument("--result", type=Path, help="write the outcome as JSON here (used by build_demo)")
    args = parser.parse_args(argv)
    console = Console(quiet=args.quiet)
    started = time.monotonic()
    try:
        artifacts = build_demo(args.var, force=args.force, console=console)
    except DemoBuildError as e:  # a model that missed its goal arrives as one, named
        error = f"demo build failed: {e}. The recipes are in training/demo.py (ADAPTER_RECIPES, BASE_RECIPE)."
        if args.result:
            write_stamp(args.result, {"error": error})
        print(error, file=sys.stderr)
        return 2
    if args.result:
        write_stamp(args.result, {"built": artifacts.built})
    _summary(artifacts, time.monotonic() - started, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
