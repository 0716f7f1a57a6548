"""The tenants' random adapters and their merged models (built once, cached by the base's weights)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from common.peft_format import ADAPTER_FILES
from loadtest.hotswap.config import MIB


@dataclass
class Artifacts:
    base: Path
    adapters: list[Path]
    merged: list[Path]

    def storage_mb(self, n: int, merged: bool) -> float:
        """Mean MiB per tenant over the first `n` tenants: the adapter's two files, or the merged model directory."""
        sizes = [dir_bytes(m) if merged else sum((a / f).stat().st_size for f in ADAPTER_FILES)
                 for a, m in zip(self.adapters[:n], self.merged[:n])]
        return round(statistics.mean(sizes) / MIB, 4)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_artifacts(base: Path, build_dir: Path, count: int, rank: int, console=None) -> Artifacts:
    """Random PEFT adapters for `count` tenants on `base`, and each merged into the base (both cached).

    The cache key includes the base's weights, so a rebuilt base gets new adapters.
    """
    import hashlib

    from loadtest.engine_bench.artifacts import build_adapters
    from training.merge import merge

    digest = hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()[:12]
    root = build_dir / f"{base.name}-{digest}"
    adapters = build_adapters(base, root / "adapters", rank, count, seed=100)
    merged = []
    for i, adapter in enumerate(adapters):
        out = root / "merged" / f"r{rank}-{i}"
        if not (out / "config.json").exists():
            if console:
                console.print(f"merging adapter {i} into the base → {out}")
            tmp = out.with_name(out.name + ".tmp")
            merge(base, adapter, tmp)
            tmp.rename(out)
        merged.append(out)
    return Artifacts(base, adapters, merged)


def bench_base(kind: str, build_dir: Path, var_dir: Path) -> Path:
    """The served base: the demo model (built if missing) or the random 'bench' model of engine_bench."""
    if kind == "bench":
        from loadtest.engine_bench.artifacts import build_model

        return build_model(build_dir / "bench-model")
    from training.demo import build_demo

    return build_demo(var_dir).base_dir
