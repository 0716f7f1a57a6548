"""The op-level benchmark builds the layers of the shape it is asked for and times real plugin calls."""

from __future__ import annotations

from loadtest import plugin_op_bench
from loadtest.engine_bench.config import ModelShape
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
