"""Adapter directories: write exactly the two PEFT files (atomically), and find them in a run directory."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from common.errors import InvalidAdapter
from common.peft_format import ADAPTER_FILES, CONFIG_FILE, WEIGHTS_FILE, is_adapter_dir
from training.staged_build import staged_dir


def resolve_adapter_dir(path: Path) -> Path:
    """`path` itself if it is an adapter directory, else its `adapter/` (a `train lora` output directory).

    Raises:
        InvalidAdapter: neither holds the two adapter files.
    """
    path = Path(path)
    for candidate in (path, path / "adapter"):
        if is_adapter_dir(candidate):
            return candidate
    raise InvalidAdapter("files", f"{path} is not an adapter: it (or its adapter/ folder) must hold "
                                  f"{' and '.join(ADAPTER_FILES)}")


def compact_targets(model, targets: list[str]) -> list[str]:
    """Module leaf names (`q_proj`) instead of PEFT's expanded `all-linear` paths, when exactly equivalent.

    PEFT matches a leaf name against every module ending in it, so the short form is used only if the
    paths name every module with those leaf names (true for `all-linear` on a causal LM).
    """
    leaves = {t.rsplit(".", 1)[-1] for t in targets}
    names = {n for n, _ in model.get_base_model().named_modules() if n.rsplit(".", 1)[-1] in leaves}
    return sorted(leaves) if names == set(targets) else sorted(targets)


def save_peft_adapter(model, out_dir: Path, base_name: str, adapter_name: str = "default",
                      config_updates: dict | None = None, base_dir: Path | None = None) -> dict[str, int]:
    """Save one adapter of a PEFT model so that `out_dir` holds exactly the two files.

    Args:
        model: a PeftModel.
        out_dir: destination (replaced atomically if it exists).
        base_name: written as base_model_name_or_path instead of this machine's path.
        adapter_name: which of the model's adapters to save.
        config_updates: keys to overwrite in the adapter's config (e.g. a composed adapter's scaling).
        base_dir: the base the adapter was trained on: its fingerprint goes into the weights' metadata, so
            that a gateway serving another base refuses the adapter (registry/base_check.py).

    Returns:
        Size in bytes of each file.
    """
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="peft-save-") as tmp:
        # save_embedding_layers=False: "auto" would look the base up by name (on a hub) to compare vocabularies.
        model.save_pretrained(tmp, selected_adapters=[adapter_name], safe_serialization=True,
                              save_embedding_layers=False)
        # PEFT puts a non-default adapter into a subfolder named after it, and adds a README.md.
        src = Path(tmp) if is_adapter_dir(Path(tmp)) else Path(tmp) / adapter_name
        config = json.loads((src / CONFIG_FILE).read_text())
        config.update(base_model_name_or_path=base_name, **(config_updates or {}))
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = compact_targets(model, config["target_modules"])
        with staged_dir(out_dir, out_dir.parent / f".{out_dir.name}.staging") as stage:
            (stage / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            if base_dir is None:
                shutil.copyfile(src / WEIGHTS_FILE, stage / WEIGHTS_FILE)
            else:
                _copy_with_fingerprint(src / WEIGHTS_FILE, stage / WEIGHTS_FILE, Path(base_dir))
    shutil.rmtree(out_dir.parent / f".{out_dir.name}.staging", ignore_errors=True)
    return {name: (out_dir / name).stat().st_size for name in ADAPTER_FILES}


def _copy_with_fingerprint(src: Path, dst: Path, base_dir: Path) -> None:
    """Copy the adapter's weights, adding the base's fingerprint to the safetensors metadata (which PEFT
    and vLLM ignore)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from registry.base_check import fingerprint_metadata
    from registry.base_spec import BaseModelSpec

    with safe_open(str(src), framework="pt") as fh:
        metadata = dict(fh.metadata() or {})
    metadata.update(fingerprint_metadata(BaseModelSpec.from_dir(base_dir).fingerprint))
    save_file(load_file(str(src)), str(dst), metadata=metadata)
