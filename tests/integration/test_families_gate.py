"""The gate and the no-op probe on every zoo family, against PEFT itself (no engine, no S3).

The probe applies W + s·B·A by hooks computed from the uploaded file; on fused projections (Phi-3),
biased ones (Qwen2) and tied embeddings (Qwen2, Gemma-2) its logits must be PEFT's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.errors import InvalidAdapter
from common.peft_format import ADAPTER_FILES
from registry.base_spec import BaseModelSpec
from registry.noop_probe import NoOpProbe, _load, adapted_logits
from registry.validation import AdapterValidator
from tests.helpers.families import peft_adapter
from training.zoo import FAMILIES, build_zoo_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, build_zoo_model(request.param, tmp_path_factory.mktemp("zoo"))


def files_of(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in ADAPTER_FILES}


def test_zoo_base_is_sharded_bf16_with_chat_template(family):
    name, base = family
    shards = sorted(p.name for p in base.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (base / "model.safetensors.index.json").is_file()
    assert (base / "chat_template.jinja").is_file() or "chat_template" in (base / "tokenizer_config.json").read_text()
    spec = BaseModelSpec.from_dir(base)
    assert spec.fingerprint.architecture == FAMILIES[name].config_class.__name__.replace("Config", "ForCausalLM")
    tied = FAMILIES[name].kwargs["tie_word_embeddings"]
    assert ("lm_head" in spec.modules) is not tied  # a tied base stores no lm_head weight


def test_probe_logits_equal_peft(family, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, base = family
    adapter_dir = peft_adapter(base, tmp_path / "a", target_modules="all-linear")
    validator = AdapterValidator(base=BaseModelSpec.from_dir(base))
    adapter = validator.validate(files_of(adapter_dir))  # names, shapes, dtype, rank: accepted
    loaded = _load(str(base.resolve()))
    ours = adapted_logits(loaded, adapter.lora, load_file(str(adapter_dir / ADAPTER_FILES[1])), list(adapter.modules))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                      str(adapter_dir)).eval()
    with torch.no_grad():
        theirs = model(input_ids=loaded.inputs).logits.float()
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), (ours - theirs).abs().max()
    assert not torch.allclose(ours, loaded.base_logits)  # the update is really applied


def test_probe_accepts_a_real_adapter_and_refuses_a_silent_one(family, tmp_path):
    _, base = family
    spec = BaseModelSpec.from_dir(base)
    probe = NoOpProbe(spec)
    validator = AdapterValidator(base=spec, probes=[probe])
    validator.validate(files_of(peft_adapter(base, tmp_path / "a", target_modules="all-linear")))
    assert probe.last["relative_change"] > probe.min_change
    quiet = peft_adapter(base, tmp_path / "q", target_modules="all-linear")
    from safetensors.torch import save_file

    tensors = load_file(str(quiet / ADAPTER_FILES[1]))
    save_file({k: v * 1e-9 if "lora_B" in k else v for k, v in tensors.items()}, str(quiet / ADAPTER_FILES[1]))
    with pytest.raises(InvalidAdapter) as info:
        validator.validate(files_of(quiet))
    assert info.value.rule == "no-op-probe"


@pytest.mark.parametrize("lora, rule", [({"target_modules": ["o_proj", "lm_head"]}, "embedding-target"),
                                        ({"target_modules": ["embed_tokens"]}, "embedding-target"),
                                        ({"target_modules": ["o_proj"], "use_dora": True}, "dora")])
def test_refused_adapters(family, tmp_path, lora, rule):
    _, base = family
    with pytest.raises(InvalidAdapter) as info:
        AdapterValidator(base=BaseModelSpec.from_dir(base)).validate(files_of(peft_adapter(base, tmp_path, **lora)))
    assert info.value.rule == rule


def test_cli_builds_the_zoo(tmp_path):
    import json

    from tests.helpers.families import run_cli

    built = json.loads(run_cli("model", "zoo", "--family", "phi3", "--family", "qwen2", "--out", tmp_path, "--json"))
    assert built == {"phi3": str(tmp_path / "phi3"), "qwen2": str(tmp_path / "qwen2")}
    assert json.loads((tmp_path / "phi3" / "config.json").read_text())["architectures"] == ["Phi3ForCausalLM"]


def test_saved_adapters_carry_their_base(family, tmp_path):
    """training's saver records the base; the gate of that base accepts it, another base's gate refuses it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.adapter_dirs import save_peft_adapter

    name, base = family
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    save_peft_adapter(model, tmp_path / "a", base_name=base.name, base_dir=base)
    spec = BaseModelSpec.from_dir(base)
    assert AdapterValidator(base=spec).validate(files_of(tmp_path / "a")).trained_on == spec.fingerprint
    other = build_zoo_model(next(f for f in FAMILIES if f != name), tmp_path / "zoo")
    with pytest.raises(InvalidAdapter) as info:
        AdapterValidator(base=BaseModelSpec.from_dir(other)).validate(files_of(tmp_path / "a"))
    assert info.value.rule == "base-mismatch"
