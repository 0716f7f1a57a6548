"""Probe of the next step for the CPU LoRA plugin: one compiled call per LoRA layer, each row's adapter read at
its real rank, against the plugin's batched ops on the same stacked weights.

`python -m loadtest.lora_kernel_probe [--adapters 16] [--rows 16] [--hidden 128 --intermediate 256 --layers 2]
[--slot-rank 64] [--ranks 8,16,64]` builds the layers of `plugin_op_bench` (vLLM's stacked layout, slots padded to
`--slot-rank` with zeros beyond each adapter's own rank, as vLLM pads them), compiles a small C++ kernel (the
first run takes ~40 s; torch caches the build) and prints JSON: LoRA CPU time per decode step of the plugin and of
the kernel, and the largest difference of their outputs. Not used by the engine: it measures whether such a
kernel is worth building (docs/benchmarks.md, scale).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

from loadtest import plugin_op_bench
from loadtest.engine_bench.config import ModelShape
from serving.vllm_plugin.weights import as_slots

# y[t, off_i + o] += sum_k B_i[s, o, k] * sum_j A_i[s, k, j] * x[t, j] over k < rank[s], s = slots[t] (-1: none).
# Plain dot products over contiguous rows: each adapter is read at its own rank, one call per layer.
SOURCE = r"""
#include <torch/extension.h>
#include <vector>
static inline float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
  #pragma omp simd reduction(+:acc)
  for (int64_t j = 0; j < n; ++j) acc += a[j] * b[j];
  return acc;
}
void lora_rows(torch::Tensor y, torch::Tensor x, torch::Tensor slots, torch::Tensor ranks,
               std::vector<torch::Tensor> as, std::vector<torch::Tensor> bs, std::vector<int64_t> offsets) {
  TORCH_CHECK(x.is_contiguous() && y.stride(1) == 1 && slots.is_contiguous() && ranks.is_contiguous());
  const int64_t rows = x.size(0), in = x.size(1);
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t* rank = ranks.data_ptr<int64_t>();
  std::vector<float> h;
  for (size_t i = 0; i < as.size(); ++i) {
    TORCH_CHECK(as[i].is_contiguous() && bs[i].is_contiguous());
    const float* a = as[i].data_ptr<float>();
    const float* b = bs[i].data_ptr<float>();
    const int64_t slot_rank = as[i].size(1), out = bs[i].size(1);
    h.resize(slot_rank);
    for (int64_t t = 0; t < rows; ++t) {
      const int64_t s = slot[t];
      if (s < 0) continue;
      const int64_t r = std::min(rank[s], slot_rank);
      const float* xr = x.data_ptr<float>() + t * in;
      const float* as_ = a + s * slot_rank * in;
      const float* bs_ = b + s * out * slot_rank;
      for (int64_t k = 0; k < r; ++k) h[k] = dot(as_ + k * in, xr, in);
      float* yr = y.data_ptr<float>() + t * y.stride(0) + offsets[i];
      for (int64_t o = 0; o < out; ++o) yr[o] += dot(bs_ + o * slot_rank, h.data(), r);
    }
  }
}
"""


def compile_kernel():
    """The compiled module (`lora_rows`); built once per machine and cached by torch."""
    from torch.utils.cpp_extension import load_inline

    # torch builds with ninja from PATH: the one installed in this environment (vLLM's dependency) is enough
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    return load_inline("loraplex_lora_rows_probe", cpp_sources=SOURCE, functions=["lora_rows"],
                       extra_cflags=["-O3", "-march=native", "-fopenmp-simd"])


def probe(adapters: int, rows: int, shape: ModelShape, slot_rank: int, ranks: list[int], steps: int = 100) -> dict:
    """Both implementations on the same layers and rows (adapter `t % adapters` on row t, slot k has rank
    `ranks[k % len(ranks)]`): CPU ms per step of each and the largest output difference."""
    kernel = compile_kernel()
    slots_total = max(adapters, 16)
    layers, wrapper = plugin_op_bench.build(slot_rank, adapters, rows, slots_total, shape=shape)
    rank = torch.tensor([min(ranks[k % len(ranks)], slot_rank) for k in range(slots_total)], dtype=torch.long)
    with torch.no_grad():
        for _, lora_a, lora_b, _, _ in layers:  # zeros beyond each adapter's rank, as vLLM pads a slot
            for k in range(slots_total):
                for a in lora_a:
                    a[k, :, int(rank[k]):] = 0
                for b in lora_b:
                    b[k, :, :, int(rank[k]):] = 0
    slots = torch.tensor([t % adapters for t in range(rows)], dtype=torch.long)
    calls = [(x, [as_slots(a) for a in lora_a], [as_slots(b) for b in lora_b],
              [sum(outs[:i]) for i in range(len(outs))]) for _, lora_a, lora_b, outs, x in layers]
    bases = [F.linear(x, w) for w, _, _, _, x in layers]

    def plugin(outputs=bases) -> None:
        for (_, lora_a, lora_b, outs, x), y in zip(layers, outputs):
            wrapper.add_lora_linear(y, x, lora_a, lora_b, 1.0, outs)

    def compiled(outputs=bases) -> None:
        for (x, lora_a, lora_b, offsets), y in zip(calls, outputs):
            kernel.lora_rows(y, x, slots, rank, lora_a, lora_b, offsets)

    by_plugin, by_kernel = [y.clone() for y in bases], [y.clone() for y in bases]
    plugin(by_plugin)
    compiled(by_kernel)
    diff = max(float((p - k).abs().max()) for p, k in zip(by_plugin, by_kernel))
    return {"adapters": adapters, "rows": rows, "shape": vars(shape), "slot_rank": slot_rank, "ranks": ranks,
            "plugin_ms": round(plugin_op_bench._cpu_us(plugin, steps) / 1e3, 3),
            "kernel_ms": round(plugin_op_bench._cpu_us(compiled, steps) / 1e3, 3), "max_abs_diff": diff}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=16)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--intermediate", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--slot-rank", type=int, default=64, help="the engine's --max-lora-rank")
    parser.add_argument("--ranks", default="8,16,64", help="the adapters' own ranks, slot by slot in turn")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    shape = ModelShape(hidden=args.hidden, intermediate=args.intermediate, layers=args.layers)
    ranks = [int(r) for r in args.ranks.split(",")]
    torch.set_num_threads(1)  # as plugin_op_bench: the plugin runs its ops on one thread
    print(json.dumps(probe(args.adapters, args.rows, shape, args.slot_rank, ranks, args.steps)))


if __name__ == "__main__":
    main()
