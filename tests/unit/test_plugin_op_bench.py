"""The op-level benchmark builds the layers of the shape it is asked for and times real plugin calls."""

from __future__ import annotations

from loadtest import plugin_op_bench
from loadtest.engine_bench.config import ModelShape
from serving.vllm_plugin import rows_kernel
from serving.vllm_plugin.wrapper import CALLS


def test_build_follows_the_shape():
    shape = ModelShape(hidden=32, intermediate=48, layers=2)
    layers, _ = plugin_op_bench.build(rank=4, adapters=2, rows=6, slots=3, shape=shape)
    assert len(layers) == 2 * 4  # qkv, o, gate_up, down per layer
    weight, lora_a, lora_b, outs, x = layers[2]  # gate_up
    assert outs == (48, 48) and weight.shape == (96, 32) and x.shape == (6, 32)
    assert [a.shape for a in lora_a] == [(3, 1, 4, 32)] * 2 and [b.shape for b in lora_b] == [(3, 1, 48, 4)] * 2


def test_main_runs_the_plugin_ops(capsys):
    before = CALLS["linear"]
    plugin_op_bench.main(["--hidden", "32", "--intermediate", "48", "--layers", "1", "--rank", "4",
                          "--adapters", "2", "--rows", "8", "--steps", "2"])
    assert CALLS["linear"] > before
    assert "2 adapter(s), 8 rows, 4 LoRA layers" in capsys.readouterr().out


def test_build_pads_each_slot_to_its_adapters_rank():
    layers, _ = plugin_op_bench.build(rank=8, adapters=3, rows=3, slots=3, ranks=[2, 8, 4],
                                      shape=ModelShape(hidden=16, intermediate=24, layers=1))
    _, lora_a, lora_b, _, _ = layers[0]
    for slot, rank in enumerate([2, 8, 4]):
        assert int((lora_a[0][slot, 0].abs().amax(dim=1) > 0).sum()) == rank
        assert int((lora_b[0][slot, 0].abs().amax(dim=0) > 0).sum()) == rank


def test_main_times_the_row_kernel_and_the_batched_products(capsys):
    runs = rows_kernel.RUNS["lora_rows"]
    plugin_op_bench.main(["--hidden", "32", "--intermediate", "48", "--layers", "1", "--rank", "8", "--ranks", "2,8",
                          "--adapters", "4", "--rows", "8", "--steps", "2", "--batched"])
    out = capsys.readouterr().out
    assert rows_kernel.RUNS["lora_rows"] > runs
    assert "plugin: rank 8 (adapters 2,8), 4 adapter(s)" in out and "row kernel on" in out
    assert "batched: " in out and out.rstrip().endswith("row kernel off")
    assert rows_kernel.get() is not None  # switched back on afterwards
