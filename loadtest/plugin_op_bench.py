"""Op-level benchmark of the vLLM plugin: one decode step's LoRA work next to the base layers' products.

`python -m loadtest.plugin_op_bench [--rank 16] [--ranks 8,16,64] [--adapters 1] [--rows 64] [--profile]` builds
the engine bench model's linear layers (`engine_bench.ModelShape`: qkv, o, gate_up, down per layer, fp32; `--hidden
128 --intermediate 256 --layers 2` is the demo base the scale benchmark serves), random stacked LoRA weights in
vLLM's layout (slots of `--rank`, the engine's --max-lora-rank; with `--ranks`, slot k holds an adapter of rank
`ranks[k % len]` padded with zeros, as vLLM pads it), and calls `LoraplexPunicaWrapperCPU.add_lora_linear` the way
vLLM's LoRA layers do after each base product. One torch thread; times are CPU time of this thread (the minimum
over repeats), so other processes on a shared host disturb them less than wall time.

Prints the base step, base + LoRA (plugin and, with `--stock`, vLLM's stock ops), LoRA alone, and the op-level
ratio base / (base + LoRA): an upper bound for the engine's ratio, which also pays the LoRA engine's
per-step bookkeeping. `--batched` also times the plugin without its row kernel (the batched products for every
step) on the same layers. `--profile` adds a torch.profiler table of the LoRA calls.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from loadtest.engine_bench.config import ModelShape


def _cpu_us(fn: Callable[[], None], steps: int, repeats: int = 5) -> float:
    """Minimum over `repeats` of the thread CPU time per call of `fn`, in µs."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        for _ in range(steps):
            fn()
        best = min(best, (time.thread_time() - start) / steps * 1e6)
    return best


def build(rank: int, adapters: int, rows: int, slots: int, seed: int = 0, shape: ModelShape = ModelShape(),
          ranks: list[int] | None = None):
    """The step's layers `(weight, lora_a, lora_b, output_slices, x)` and a wrapper fed vLLM's metadata (slot k
    holds an adapter of rank `ranks[k % len(ranks)]`, zeros beyond it; None: all of rank `rank`)."""
    gen = torch.Generator().manual_seed(seed)
    h, inter = shape.hidden, shape.intermediate
    per_layer = [(h, (h, h, h)), (h, (h,)), (h, (inter, inter)), (inter, (h,))]  # qkv, o, gate_up, down
    layers = []
    for _ in range(shape.layers):
        for fan_in, outs in per_layer:
            weight = torch.randn(sum(outs), fan_in, generator=gen) * shape.init_std
            lora_a = tuple(torch.randn(slots, 1, rank, fan_in, generator=gen) * 0.02 for _ in outs)
            lora_b = tuple(torch.randn(slots, 1, out, rank, generator=gen) * 0.02 for out in outs)
            for k in range(slots) if ranks else ():
                for w in lora_a:
                    w[k, :, ranks[k % len(ranks)]:] = 0
                for w in lora_b:
                    w[k, :, :, ranks[k % len(ranks)]:] = 0
            layers.append((weight, lora_a, lora_b, outs, torch.randn(rows, fan_in, generator=gen)))
    return layers, wrapper_for(adapters, rows, slots)


def wrapper_for(adapters: int, rows: int, slots: int):
    """A plugin wrapper fed vLLM's metadata of a decode step: LoRA id k in slot k - 1, round robin over the rows."""
    from vllm.lora.layers import LoRAMapping

    from serving.vllm_plugin.wrapper import LoraplexPunicaWrapperCPU

    wrapper = LoraplexPunicaWrapperCPU(4096, 4096, "cpu")
    ids = tuple(t % adapters + 1 for t in range(rows))
    wrapper.update_metadata(LoRAMapping(ids, ids, is_prefill=False), list(range(1, slots + 1)), slots + 1, 512)
    return wrapper


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16, help="rank of the slots (the engine's --max-lora-rank)")
    parser.add_argument("--ranks", default="", help="the adapters' own ranks, slot by slot in turn (default: --rank)")
    parser.add_argument("--adapters", type=int, default=1, help="distinct adapters, round robin over the rows")
    parser.add_argument("--rows", type=int, default=64, help="tokens in the step (decode: one per sequence)")
    parser.add_argument("--slots", type=int, default=0, help="stacked adapter slots (default: --adapters)")
    parser.add_argument("--steps", type=int, default=30)
    default = ModelShape()
    parser.add_argument("--hidden", type=int, default=default.hidden)
    parser.add_argument("--intermediate", type=int, default=default.intermediate)
    parser.add_argument("--layers", type=int, default=default.layers)
    parser.add_argument("--stock", action="store_true", help="also time vLLM's stock CPU ops")
    parser.add_argument("--batched", action="store_true", help="also time the plugin without its row kernel")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from serving.vllm_plugin import rows_kernel
    from serving.vllm_plugin.wrapper import set_plugin_ops

    shape = ModelShape(hidden=args.hidden, intermediate=args.intermediate, layers=args.layers)
    ranks = [min(int(r), args.rank) for r in args.ranks.split(",")] if args.ranks else None
    layers, wrapper = build(args.rank, args.adapters, args.rows, args.slots or args.adapters, shape=shape, ranks=ranks)
    outputs = [F.linear(x, w) for w, _, _, _, x in layers]

    def base() -> None:
        for w, _, _, _, x in layers:
            F.linear(x, w)

    def step() -> None:
        for w, a, b, outs, x in layers:
            wrapper.add_lora_linear(F.linear(x, w), x, a, b, 1.0, outs)

    def lora_only() -> None:
        for (_, a, b, outs, x), y in zip(layers, outputs):
            wrapper.add_lora_linear(y, x, a, b, 1.0, outs)

    def timed(label: str) -> None:
        runs = rows_kernel.RUNS["lora_rows"]
        t_base, t_step, t_lora = (_cpu_us(f, args.steps) for f in (base, step, lora_only))
        used = rows_kernel.RUNS["lora_rows"] > runs  # what ran, whichever pass of the plan took it
        print(f"{label}: rank {args.rank}{' (adapters ' + args.ranks + ')' if ranks else ''}, {args.adapters} "
              f"adapter(s), {args.rows} rows, {len(layers)} LoRA layers: base {t_base / 1e3:.2f} ms, base+LoRA "
              f"{t_step / 1e3:.2f} ms, LoRA alone {t_lora / 1e3:.2f} ms ({t_lora / len(layers):.0f} µs a layer), "
              f"ratio {t_base / t_step:.3f}, row kernel {'on' if used else 'off'}")

    timed("plugin")
    if args.batched:  # the same layers through a wrapper made with the kernel off
        rows_kernel.set_enabled(False)
        try:
            wrapper = wrapper_for(args.adapters, args.rows, args.slots or args.adapters)
            timed("batched")
        finally:
            rows_kernel.set_enabled(True)
    if args.stock:
        set_plugin_ops(False)
        try:
            t_stock, t_base = _cpu_us(step, max(args.steps // 4, 1), repeats=3), _cpu_us(base, args.steps)
        finally:
            set_plugin_ops(True)
        print(f"stock ops: base+LoRA {t_stock / 1e3:.2f} ms, ratio {t_base / t_stock:.3f}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                lora_only()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
