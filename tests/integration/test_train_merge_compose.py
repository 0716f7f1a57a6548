"""Merging an adapter into its base, and composing adapters, on a tiny base made by the project."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.peft_format import ADAPTER_FILES
from registry.base_spec import BaseModelSpec
from registry.validation import AdapterValidator
from training.compose import compose
from training.config import LoraSettings, TrainJob, TrainSettings
from training.errors import IncompatibleAdapters
from training.merge import load_peft, merge
from training.sft import run_training
from training.tasks import dataset, make_prompt
from training.tiny import TinyShape, create_model, save_base
from training.tokenizer import save_tokenizer

pytestmark = pytest.mark.integration

TINY = TinyShape(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_positions=64)
PROMPTS = [make_prompt(w) for w in ("hello", "world", "cards", "serve")]  # equal lengths: no padding
# A merged weight and base + LoRA round differently (and differently per CPU): greedy picks may part ways
# only where the two best logits are this close (the logits themselves agree to ~4e-7; the smallest gap
# seen was 1.6e-3).
TIE_GAP = 1e-3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(root: Path, base: Path, task: str, rank: int) -> Path:
    data = root / f"{task}.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in dataset(task, 96, seed=5)))
    settings = TrainSettings(lr=1e-2, max_steps=10, batch_size=16, eval_steps=10, patience=0, progress=False)
    job = TrainJob("lora", base, data, root / f"{task}-r{rank}", lora=LoraSettings(r=rank, dropout=0.0), train=settings)
    run_training(job)
    return root / f"{task}-r{rank}" / "adapter"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge")
    base = root / "base"
    tokenizer = save_tokenizer(base)
    save_base(create_model(tokenizer, seed=1, shape=TINY), tokenizer, base)
    return {"root": root, "base": base, "reverse": _train(root, base, "reverse", 8),
            "upper": _train(root, base, "upper", 8), "caesar4": _train(root, base, "caesar", 4)}


@torch.no_grad()
def _logits(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer(p)["input_ids"] for p in PROMPTS])
    return model(input_ids=ids).logits


@torch.no_grad()
def _greedy(model, tokenizer) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy continuations of PROMPTS, and at each step the gap between the two best logits."""
    ids = torch.tensor([tokenizer(p)["input_ids"] for p in PROMPTS])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         output_scores=True, return_dict_in_generate=True)
    best2 = torch.stack(out.scores, 1).topk(2, dim=-1).values
    return out.sequences[:, ids.shape[1]:].tolist(), (best2[..., 0] - best2[..., 1]).tolist()


def _same_greedy(ours, theirs) -> bool:
    """The same continuations, except after a step where `ours` had a near-tie (TIE_GAP) and the other
    model took the other token: everything after follows from that pick."""
    for tokens, gaps, other in zip(*ours, theirs[0]):
        for step, (a, b) in enumerate(zip(tokens, other)):
            if a != b:
                if gaps[step] >= TIE_GAP:
                    return False
                break
    return True


def test_merge_matches_the_unmerged_adapter_and_loads_with_transformers(setup, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(setup["base"]))
    unmerged = load_peft(setup["base"], setup["reverse"])
    result = merge(setup["base"], setup["reverse"].parent, tmp_path / "merged")  # a run dir works too
    merged = AutoModelForCausalLM.from_pretrained(result["out_dir"]).eval()
    assert _same_greedy(_greedy(merged, tokenizer), _greedy(unmerged, tokenizer))
    assert torch.allclose(_logits(merged, tokenizer), _logits(unmerged, tokenizer), atol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(str(setup["base"])).eval()
    assert not torch.allclose(_logits(merged, tokenizer), _logits(base, tokenizer), atol=1e-4)  # not a no-op
    names = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert "_name_or_path" not in json.loads((tmp_path / "merged" / "config.json").read_text())


@pytest.mark.parametrize(("method", "rank"), [("linear", 8), ("ties", 8), ("cat", 16), ("svd", 8)])
def test_compose_writes_a_valid_adapter_that_differs_from_each_input(setup, tmp_path, method, rank):
    out = tmp_path / method
    result = compose(setup["base"], [(setup["reverse"], 0.7), (setup["upper"], 0.3)], out, method=method, density=0.5)
    assert result["rank"] == rank and sorted(p.name for p in out.iterdir()) == sorted(ADAPTER_FILES)
    files = {name: (out / name).read_bytes() for name in ADAPTER_FILES}
    accepted = AdapterValidator(base=BaseModelSpec.from_dir(setup["base"])).validate(files)  # the registry's gate
    assert accepted.rank == rank
    tokenizer = AutoTokenizer.from_pretrained(str(setup["base"]))
    composed = _logits(load_peft(setup["base"], out), tokenizer)
    for source in ("reverse", "upper"):
        assert not torch.allclose(composed, _logits(load_peft(setup["base"], setup[source]), tokenizer), atol=1e-5)


def test_cat_is_the_exact_weighted_sum(setup, tmp_path):
    compose(setup["base"], [(setup["reverse"], 1.0), (setup["upper"], -1.0)], tmp_path / "diff", method="cat")
    model = load_peft(setup["base"], tmp_path / "diff").merge_and_unload()
    rev = load_peft(setup["base"], setup["reverse"]).merge_and_unload().state_dict()
    up = load_peft(setup["base"], setup["upper"]).merge_and_unload().state_dict()
    base = AutoModelForCausalLM.from_pretrained(str(setup["base"])).state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    expected = base[key] + (rev[key] - base[key]) - (up[key] - base[key])
    assert torch.allclose(model.state_dict()[key], expected, atol=1e-5)  # fp32 sums of ~0.1 weights: ~1e-8 apart


def test_linear_with_unequal_ranks_is_explained(setup, tmp_path):
    with pytest.raises(IncompatibleAdapters, match="--method svd"):
        compose(setup["base"], [(setup["reverse"], 0.5), (setup["caesar4"], 0.5)], tmp_path / "x", method="linear")
    result = compose(setup["base"], [(setup["reverse"], 0.5), (setup["caesar4"], 0.5)], tmp_path / "y", method="svd")
    assert result["rank"] == 8
