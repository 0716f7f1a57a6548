"""The plugin's grouped LoRA ops against a float64 reference: shapes, ranks, slices and index patterns.

Every case runs through the wrapper vLLM's LoRA layers call (`LoraplexPunicaWrapperCPU`, fed real
vLLM metadata), with each kernel forced in turn: the per-adapter loop, the batched tiles, two passes and the
compiled row kernel.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

pytest.importorskip("vllm")

from vllm.lora.layers import LoRAMapping

from serving.vllm_plugin import lora_ops
from serving.vllm_plugin import plan as plan_mod
from serving.vllm_plugin.weights import StackedWeights
from serving.vllm_plugin.wrapper import LoraplexPunicaWrapperCPU, set_plugin_ops

SLOTS = 64
PATTERNS = ("one", "distinct", "interleaved", "runs", "blocks_with_base", "with_base", "all_base", "random")


def slot_indices(pattern: str, n: int, rng: random.Random) -> list[int]:
    """One adapter slot per token (-1: no adapter) following `pattern`."""
    if pattern == "one":
        return [rng.randrange(SLOTS)] * n
    if pattern == "distinct":
        # Every token on its own adapter (as far as the slots go).
        return rng.sample(range(SLOTS), n) if n <= SLOTS else [rng.randrange(SLOTS) for _ in range(n)]
    if pattern == "interleaved":
        return [i % 3 for i in range(n)]
    if pattern == "runs":
        return sorted(rng.randrange(6) for _ in range(n))
    if pattern == "blocks_with_base":
        # Each adapter's tokens in one run, runs of base tokens between them (a prefill step).
        slots = rng.sample([-1, -1, 0, 1, 2, 3], 6)
        return [slots[min(i * 6 // n, 5)] for i in range(n)]
    if pattern == "with_base":
        return [-1 if rng.random() < 0.4 else rng.randrange(6) for _ in range(n)]
    if pattern == "all_base":
        return [-1] * n
    return [rng.randrange(-1, 6) for _ in range(n)]


def wrapper_for(indices: list[int]) -> LoraplexPunicaWrapperCPU:
    """A wrapper whose metadata vLLM computed for `indices` (slot s is LoRA id s + 1)."""
    wrapper = LoraplexPunicaWrapperCPU(4096, 4096, "cpu")
    ids = tuple(s + 1 if s >= 0 else 0 for s in indices)
    wrapper.update_metadata(LoRAMapping(ids, ids, is_prefill=True), list(range(1, SLOTS + 1)), SLOTS + 1, 512)
    return wrapper


def stacked(slices: tuple[int, ...], rank: int, fan_in: int, gen: torch.Generator):
    """Random vLLM-layout weights: lora_a `[slots, 1, rank, in]`, lora_b `[slots, 1, out, rank]` per slice."""
    a = tuple(torch.randn(SLOTS, 1, rank, fan_in, generator=gen) for _ in slices)
    b = tuple(torch.randn(SLOTS, 1, out, rank, generator=gen) for out in slices)
    return a, b


def reference(y, x, a, b, scale, slices, indices, offset=0):
    """float64: `y[t, slice i] += (x[t] @ A_i[s].T * scale) @ B_i[s].T` for tokens with slot s >= 0."""
    out = y.double().clone()
    idx = torch.tensor(indices)
    col = offset
    for a_i, b_i, size in zip(a, b, slices):
        for s in set(indices) - {-1}:
            rows = torch.nonzero(idx == s).flatten()
            h = x[rows].double() @ a_i[s, 0].double().T * scale
            out[rows, col:col + size] += h @ b_i[s, 0, :size].double().T
        col += size
    return out


@pytest.fixture(params=["auto", "rows", "in-place", "sorted", "tiles", "two-pass"])
def kernel(request, monkeypatch):
    """Force the plan's kernel: the compiled row kernel, the loop over runs in place, the loop over sorted rows,
    tiles, or two passes (one-row tiles per adapter, then the loop over the other rows).

    Batches of one or two runs take the in-place loop unless the row kernel is forced.
    """
    if request.param != "auto":
        monkeypatch.setattr(plan_mod, "KERNEL_MAX_RUN", 10**9 if request.param == "rows" else 0)
    if request.param == "in-place":
        monkeypatch.setattr(plan_mod, "LOOP_MIN_AVG_ROWS", 0)
    elif request.param in ("sorted", "tiles", "two-pass"):
        monkeypatch.setattr(plan_mod, "LOOP_MIN_AVG_ROWS", 10**9)
        monkeypatch.setattr(plan_mod, "TILES_MAX_WASTE", 10**9 if request.param == "tiles" else 0)
        monkeypatch.setattr(plan_mod, "TWO_PASS_MAX_SPREAD", 10**9 if request.param == "two-pass" else 0)
    return request.param


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("seed", range(4))
def test_add_lora_linear_matches_float64(kernel, pattern, seed):
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    n, rank, fan_in = rng.choice([1, 5, 64, 300]), rng.choice([1, 8, 16, 64]), rng.choice([16, 96])
    slices = rng.choice([(48,), (32, 16, 16), (40, 40)])
    indices = slot_indices(pattern, n, rng)
    a, b = stacked(slices, rank, fan_in, gen)
    x, y = torch.randn(n, fan_in, generator=gen), torch.randn(n, sum(slices), generator=gen)
    scale = rng.choice([1.0, 0.5])
    expected = reference(y, x, a, b, scale, slices, indices)
    wrapper_for(indices).add_lora_linear(y, x, a, b, scale, slices)
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)
    base_rows = [t for t, s in enumerate(indices) if s < 0]
    # Tokens without an adapter keep their exact value: the adapter path adds nothing to them.
    assert torch.equal(y[base_rows].double(), expected[base_rows])


@pytest.mark.parametrize("pattern", PATTERNS)
def test_shrink_then_expand_matches_float64(pattern):
    """The two-call path (vLLM's sharded layers): buffers `[slices, tokens, rank]`, then expand at an offset."""
    rng, gen = random.Random(7), torch.Generator().manual_seed(7)
    indices = slot_indices(pattern, 40, rng)
    slices, rank, offset = (24, 8, 8), 8, 5
    a, b = stacked(slices, rank, 32, gen)
    x, y = torch.randn(40, 32, generator=gen), torch.randn(40, offset + sum(slices) + 3, generator=gen)
    expected = reference(y, x, a, b, 0.25, slices, indices, offset)
    wrapper = wrapper_for(indices)
    buffers = torch.zeros(len(slices), 40, rank)
    wrapper.add_shrink(buffers, x, a, 0.25)
    wrapper.add_expand(y, buffers, b, slices, offset_start=offset)
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)


def test_expand_narrower_adapter_adds_common_width():
    """lora_b narrower than the output slice (padding differs): only the common columns change."""
    gen = torch.Generator().manual_seed(3)
    indices = [0, 1, 2, -1, 1, 0]
    a, b = stacked((10,), 4, 8, gen)
    x, y = torch.randn(6, 8, generator=gen), torch.zeros(6, 16)
    wrapper_for(indices).add_lora_linear(y, x, a, b, 1.0, (16,))
    expected = reference(torch.zeros(6, 10), x, a, b, 1.0, (10,), indices)
    torch.testing.assert_close(y[:, :10].double(), expected, rtol=1e-4, atol=1e-4)
    assert torch.count_nonzero(y[:, 10:]) == 0


def test_float32_and_bfloat16_outputs():
    """A bfloat16 model: the intermediate stays float32, the output is written in bfloat16."""
    gen = torch.Generator().manual_seed(4)
    indices = [0, 1, 2, 0, 1, 2, -1]
    a, b = stacked((16,), 8, 16, gen)
    x = torch.randn(7, 16, generator=gen).bfloat16()
    y = torch.zeros(7, 16, dtype=torch.bfloat16)
    wrapper_for(indices).add_lora_linear(y, x, a, b, 1.0, (16,))
    expected = reference(torch.zeros(7, 16), x.float(), a, b, 1.0, (16,), indices)
    torch.testing.assert_close(y.double(), expected, rtol=2e-2, atol=2e-1)


def test_adapter_written_in_place_is_picked_up():
    """vLLM loads an adapter by writing into the stacked tensors: cached fused weights must follow."""
    gen = torch.Generator().manual_seed(5)
    indices = [0, 1, 0, 1]
    a, b = stacked((8, 8), 4, 8, gen)
    wrapper = wrapper_for(indices)
    x = torch.randn(4, 8, generator=gen)
    wrapper.add_lora_linear(torch.zeros(4, 16), x, a, b, 1.0, (8, 8))
    a[1][1].copy_(torch.randn(1, 4, 8, generator=gen))
    a[0][0].zero_()
    a[1][0].zero_()  # slot 0 now has no weights in this layer: its tokens get nothing
    y = torch.zeros(4, 16)
    wrapper.add_lora_linear(y, x, a, b, 1.0, (8, 8))
    expected = reference(torch.zeros(4, 16), x, a, b, 1.0, (8, 8), indices)
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)
    assert torch.count_nonzero(y[[0, 2]]) == 0


@pytest.mark.parametrize("pattern", ["one", "interleaved", "runs", "distinct"])
def test_matches_stock_ops_without_base_tokens(pattern):
    """Where vLLM's stock CPU ops are right (every token has an adapter), both agree."""
    rng, gen = random.Random(11), torch.Generator().manual_seed(11)
    indices = slot_indices(pattern, 50, rng)
    a, b = stacked((16, 16, 16), 8, 24, gen)
    x = torch.randn(50, 24, generator=gen)
    outputs = []
    for plugin in (True, False):
        y = torch.zeros(50, 48)
        set_plugin_ops(plugin)
        try:
            wrapper_for(indices).add_lora_linear(y, x, a, b, 1.0, (16, 16, 16))
        finally:
            set_plugin_ops(True)
        outputs.append(y)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)


def test_logits_and_embedding_paths():
    """LoRA on lm_head (sampled rows) and on the embedding (expand only), tokens without adapters untouched."""
    gen = torch.Generator().manual_seed(9)
    indices = [2, -1, 0, 2, 1]
    wrapper = wrapper_for(indices)
    a, b = stacked((30,), 4, 12, gen)
    x, logits = torch.randn(5, 12, generator=gen), torch.randn(5, 32, generator=gen)
    expected = reference(logits, x, a, b, 1.0, (30,), indices)
    wrapper.add_lora_logits(logits, x, a[0], b[0], 1.0)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=1e-4)
    emb_b = torch.randn(SLOTS, 1, 20, 4, generator=gen)
    h, y = torch.randn(5, 4, generator=gen), torch.zeros(5, 20)
    wrapper.add_lora_embedding(y, h, emb_b)
    want = torch.stack([h[t] @ emb_b[s, 0].T if s >= 0 else torch.zeros(20) for t, s in enumerate(indices)])
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)


def test_plan_picks_the_kernel_by_batch_shape():
    """Decode steps of many adapters use the batched tiles (or, when the caller has it, the row kernel for runs
    of a few rows); long runs (prefill, one adapter) the loop."""
    decode = plan_mod.make_plan(torch.tensor([i % 8 for i in range(64)]))
    assert decode.tiles is not None and decode.rows is not None and decode.kernel_slots is None
    assert plan_mod.make_plan(torch.tensor([i % 2 for i in range(64)]), row_kernel=True).kernel_slots is not None
    # A prefill chunk (a long run) beside decode rows: the chunk's product in place, then the kernel for the rest.
    mixed = plan_mod.make_plan(torch.tensor([0] * 20 + [1, 2, -1, 1, 3]), row_kernel=True)
    chunk, rest = mixed.passes
    assert chunk.rows is None and [(s.slot, s.start, s.end) for s in chunk.segments] == [(0, 0, 20)]
    assert rest.rows.tolist() == [20, 23, 21, 24] and rest.kernel_slots.tolist() == [1, 1, 2, 3]
    assert sorted(mixed.rows.tolist()) == [*range(22), 23, 24]  # the lone shrink / expand see every row
    rows = plan_mod.make_plan(torch.tensor([3, -1, 0, 3, 2, 0, 7, 2]), row_kernel=True)
    assert rows.kernel_slots is not None and rows.tiles is None and rows.passes is None
    assert rows.rows.tolist() == [2, 5, 4, 7, 0, 3, 6] and rows.kernel_slots.tolist() == [0, 0, 2, 2, 3, 3, 7]
    assert [(s.slot, s.end - s.start) for s in rows.segments] == [(0, 2), (2, 2), (3, 2), (7, 1)]  # for lone ops
    assert plan_mod.make_plan(torch.tensor([4]), row_kernel=True).kernel_slots is not None  # a request alone, decoding
    assert (decode.tiles.lo, decode.tiles.hi, decode.tiles.size) == (0, 8, 8)
    prefill = plan_mod.make_plan(torch.tensor([0] * 300 + [-1] * 20 + [1] * 200), row_kernel=True)
    assert prefill.tiles is None and prefill.rows is None
    assert [(s.slot, s.start, s.end) for s in prefill.segments] == [(0, 0, 300), (1, 320, 520)]
    assert plan_mod.make_plan(torch.full((16,), -1)).empty
    # A decode step over many adapters, two popular: one-row tiles over all 12, then the popular ones' rows.
    many = plan_mod.make_plan(torch.tensor([5, 0, 5, 1, 2, 5, 3, 4, 5, 6, 7, 9, 8, 9, 10, 11]))
    assert many.tiles is None and many.passes is not None
    first, rest = many.passes
    assert (first.tiles.lo, first.tiles.hi, first.tiles.size) == (0, 12, 1)
    assert [(s.slot, s.end - s.start) for s in rest.segments] == [(5, 3), (9, 1)]
    assert sorted(first.rows.tolist() + rest.rows.tolist()) == sorted(many.rows.tolist())


@pytest.mark.parametrize("indices", [[3] * 9, [-1, -1, 3, 3, 3, 3, -1], [2, 2, 2, 2, -1, -1, 5, 5, 5]],
                         ids=["whole-batch", "one-run-between-base", "two-runs"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_runs_at_an_offset_in_a_wider_output(indices, dtype):
    """The in-place loop (one product per run, on row and column views): a single adapter on every row
    takes x and y whole; columns outside the slices and rows without an adapter keep their exact values."""
    gen = torch.Generator().manual_seed(13)
    n, slices, offset, rank = len(indices), (12, 6, 6), 3, 4
    plan = plan_mod.make_plan(torch.tensor(indices))
    assert plan.rows is None and plan.tiles is None
    assert plan.slots == frozenset(indices) - {-1} and plan.packed_rows == sum(s >= 0 for s in indices)
    a, b = stacked(slices, rank, 10, gen)
    b = (b[0], b[1][:, :, :4], b[2])  # the second slice's adapter is narrower than its slice
    x = torch.randn(n, 10, generator=gen).to(dtype)
    y = torch.randn(n, offset + sum(slices) + 5, generator=gen).to(dtype)
    before = y.clone()
    lora_ops.lora_linear(y, x, StackedWeights(), a, b, slices, plan, 0.5, offset)
    expected = before.double()
    idx = torch.tensor(indices)
    col = offset
    for a_i, b_i, size in zip(a, b, slices):
        width = b_i.shape[2]
        for s in set(indices) - {-1}:
            rows = torch.nonzero(idx == s).flatten()
            h = x[rows].double() @ a_i[s, 0].double().T * 0.5
            expected[rows, col:col + width] += h @ b_i[s, 0].double().T
        col += size
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 1e-1}
    torch.testing.assert_close(y.double(), expected, **tol)
    base_rows = [t for t, s in enumerate(indices) if s < 0]
    assert torch.equal(y[base_rows], before[base_rows])
    untouched = [*range(offset), *range(offset + 12 + 4, offset + 18), *range(offset + sum(slices), y.shape[1])]
    assert torch.equal(y[:, untouched], before[:, untouched])


def padded(slices: tuple[int, ...], ranks: list[int], slot_rank: int, fan_in: int, dtype: torch.dtype,
           gen: torch.Generator):
    """Stacked weights as vLLM pads them: slot s holds an adapter of rank `ranks[s % len(ranks)]`, zeros beyond."""
    a, b = stacked(slices, slot_rank, fan_in, gen)
    for s in range(SLOTS):
        r = ranks[s % len(ranks)]
        for a_i, b_i in zip(a, b):
            a_i[s, :, r:] = 0
            b_i[s, :, :, r:] = 0
    return tuple(t.to(dtype) for t in a), tuple(t.to(dtype) for t in b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_kernel_reads_each_adapter_at_its_rank(dtype):
    """Ranks 1 to 64 in slots padded to 64 (a kernel stopping short of an adapter's rank would be caught), in the
    engine's dtypes, at an offset in a wider output; equal to the batched products up to the output's rounding."""
    gen = torch.Generator().manual_seed(21)
    indices = [0, 5, -1, 1, 2, 3, 0, 4, 7, -1, 6, 5]
    slices = (40, 136, 24)  # the kernel sums 64 output columns at a time: a slice of two blocks and a tail
    a, b = padded(slices, [1, 8, 16, 64, 3], 64, 96, dtype, gen)
    x = torch.randn(len(indices), 96, generator=gen).to(dtype)
    y = torch.randn(len(indices), 210, generator=gen).to(dtype)
    expected = reference(y, x, a, b, 0.5, slices, indices, offset=6)
    wrapper = wrapper_for(indices)
    assert wrapper.token_plan.kernel_slots is not None
    got = y.clone()
    lora_ops.lora_linear(got, x, wrapper._weights, a, b, slices, wrapper.token_plan, 0.5, offset=6)
    assert wrapper._weights.ranks(a).tolist()[:5] == [1, 8, 16, 64, 3]
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 5e-2}
    torch.testing.assert_close(got.double(), expected, **tol)
    assert torch.equal(got[:, :6], y[:, :6]) and torch.equal(got[:, 206:], y[:, 206:])  # outside the slices
    assert torch.equal(got[[2, 9]], y[[2, 9]])  # rows without an adapter
    batched = y.clone()
    plan = replace(wrapper.token_plan, kernel_slots=None)
    lora_ops.lora_linear(batched, x, StackedWeights(), a, b, slices, plan, 0.5, offset=6)
    # Sums in another order (float32), rounded once instead of twice (bfloat16): an ulp or so of the output.
    ulp = 1e-6 if dtype == torch.float32 else 2 ** -7
    torch.testing.assert_close(got, batched, rtol=2 * ulp, atol=2 * ulp * float(expected.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_kernel_gives_a_row_the_same_bits_alone_and_in_any_batch(dtype):
    """A decode row's LoRA does not depend on the other rows of the step: a request alone gets exactly what it
    gets in a mixed batch."""
    gen = torch.Generator().manual_seed(23)
    indices = [3, 1, -1, 3, 0, 2, 1]
    slices = (32, 32)
    a, b = padded(slices, [8, 16, 64], 64, 48, dtype, gen)
    x = torch.randn(len(indices), 48, generator=gen).to(dtype)
    base = torch.randn(len(indices), 64, generator=gen).to(dtype)
    batch = base.clone()
    wrapper_for(indices).add_lora_linear(batch, x, a, b, 1.0, slices)
    for t, slot in enumerate(indices):
        alone = base[t:t + 1].clone()
        wrapper = wrapper_for([slot])
        assert slot < 0 or wrapper.token_plan.kernel_slots is not None
        wrapper.add_lora_linear(alone, x[t:t + 1], a, b, 1.0, slices)
        assert torch.equal(alone[0], batch[t]), f"row {t} (slot {slot})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_prefill_chunk_gets_the_same_bits_alone_and_beside_decode_rows(dtype):
    """A prompt's chunk (a long run: one product in place) next to other requests' decode rows (the row kernel)
    gives what it gives alone, and so do the decode rows."""
    gen = torch.Generator().manual_seed(29)
    chunk = 24
    indices = [2, 0] + [1] * chunk + [3, -1, 0]
    slices = (32, 16)
    a, b = padded(slices, [8, 16, 64], 64, 40, dtype, gen)
    x = torch.randn(len(indices), 40, generator=gen).to(dtype)
    base = torch.randn(len(indices), 48, generator=gen).to(dtype)
    batch = base.clone()
    wrapper = wrapper_for(indices)
    assert wrapper.token_plan.passes is not None
    wrapper.add_lora_linear(batch, x, a, b, 1.0, slices)
    alone = base[2:2 + chunk].clone()
    wrapper_for([1] * chunk).add_lora_linear(alone, x[2:2 + chunk], a, b, 1.0, slices)
    assert torch.equal(alone, batch[2:2 + chunk])
    for t in (0, 1, 26, 28):
        row = base[t:t + 1].clone()
        wrapper_for([indices[t]]).add_lora_linear(row, x[t:t + 1], a, b, 1.0, slices)
        assert torch.equal(row[0], batch[t]), f"row {t}"
