"""The behavioural no-op probe on the real demo base model and its trained demo adapters."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load, save

from common.errors import InvalidAdapter
from common.peft_format import ADAPTER_FILES as FILES
from common.peft_format import AdapterConfig, lora_pairs
from registry.base_spec import BaseModelSpec
from registry.noop_probe import NoOpProbe, _load, _load_once, adapted_logits
from registry.validation import AdapterValidator


@pytest.fixture(scope="module")
def base(demo) -> BaseModelSpec:
    return BaseModelSpec.from_dir(demo.base_dir)


def adapter_bytes(directory) -> dict[str, bytes]:
    return {f: (directory / f).read_bytes() for f in FILES}


def scaled(files: dict[str, bytes], factor: float) -> dict[str, bytes]:
    """The same adapter with every lora_B multiplied by `factor` (non-zero and finite)."""
    tensors = load(files[FILES[1]])
    tensors = {k: v * factor if ".lora_B." in k else v for k, v in tensors.items()}
    return {**files, FILES[1]: save(tensors)}


def gate(base: BaseModelSpec, probe: NoOpProbe) -> AdapterValidator:
    return AdapterValidator(max_rank=16, base=base, probes=[probe])


def test_trained_demo_adapters_pass_fast(base, demo):
    probe = NoOpProbe(base)
    probe.warm()  # the one-time load is not what the bound is about
    loads = _load_once.cache_info().misses
    for name, directory in demo.adapter_dirs.items():
        gate(base, probe).validate(adapter_bytes(directory))
        # The demo adapters move the logits by 0.77-1.22 (the demo build is the same on every CPU): 0.05
        # leaves 15x for any other float rounding.
        assert probe.last["relative_change"] > 0.05, (name, probe.last)
        # ~2-30 ms idle, up to ~1 s on a loaded 2-core host (torch's threads wait for a core); 5 s only
        # catches a probe that does far more work, such as the base load (checked exactly just below).
        assert probe.last["seconds"] < 5.0, probe.last
    assert _load_once.cache_info().misses == loads, "a probe loaded the base again"


def test_a_silent_no_op_is_refused_by_the_probe(base, demo):
    files = scaled(adapter_bytes(demo.adapter_dirs["reverse"]), 1e-9)
    AdapterValidator(max_rank=16, base=base).validate(files)  # the static gate lets it through...
    with pytest.raises(InvalidAdapter) as refused:
        gate(base, NoOpProbe(base)).validate(files)  # ...the probe does not
    assert refused.value.rule == "no-op-probe"
    assert "[no-op-probe]" in refused.value.message and "no-op" in refused.value.message


def test_a_weak_but_real_adapter_still_passes(base, demo):
    probe = NoOpProbe(base)
    gate(base, probe).validate(scaled(adapter_bytes(demo.adapter_dirs["shout"]), 1e-2))
    assert 1e-5 < probe.last["relative_change"] < 0.1  # measured 0.017: far from both bounds on any CPU


@pytest.mark.parametrize("rslora", [False, True])
def test_the_applied_update_matches_peft(base, demo, rslora, tmp_path):
    """The hooks compute exactly what PEFT computes (alpha/r, or alpha/sqrt(r) with rsLoRA)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    source = demo.adapter_dirs["caesar"]
    config = json.loads((source / FILES[0]).read_text()) | {"use_rslora": rslora}
    (tmp_path / FILES[0]).write_text(json.dumps(config))
    (tmp_path / FILES[1]).write_bytes((source / FILES[1]).read_bytes())
    loaded = _load(str(base.path.resolve()))
    tensors = load((tmp_path / FILES[1]).read_bytes())
    ours = adapted_logits(loaded, AdapterConfig.from_dict(config), tensors, list(lora_pairs(tensors)))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base.path), dtype=torch.float32),
                                      str(tmp_path)).eval()
    with torch.no_grad():
        theirs = model(input_ids=loaded.inputs).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, loaded.base_logits, atol=1e-2)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random tiny Llama saved by transformers: a base for the probe that needs no demo build."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=96, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(str(path))
    return path


@pytest.mark.parametrize("rslora", [False, True])
def test_the_probe_equals_peft_with_rank_and_alpha_patterns(tiny_llama, rslora, tmp_path):
    """An adapter with per-module ranks and alphas passes the gate, and the probe applies what PEFT applies."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    def fresh():
        return AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)

    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=rslora,
                      rank_pattern={"layers.0.self_attn.q_proj": 2, "down_proj": 8},
                      alpha_pattern={"v_proj": 3, r"layers\.1\.mlp\.down_proj": 32},
                      init_lora_weights=False)  # random lora_B: a real update, not PEFT's zero start
    get_peft_model(fresh(), lora).save_pretrained(str(tmp_path))
    files = adapter_bytes(tmp_path)
    probe = NoOpProbe(BaseModelSpec.from_dir(tiny_llama))
    adapter = AdapterValidator(max_rank=16, base=probe.base, probes=[probe]).validate(files)
    assert adapter.lora.rank_for("model.layers.0.self_attn.q_proj") == 2 and adapter.lora.max_rank == 8

    loaded = _load(probe.base_dir)
    ours = adapted_logits(loaded, adapter.lora, load(files[FILES[1]]), list(adapter.modules))
    peft_model = PeftModel.from_pretrained(fresh(), str(tmp_path)).eval()
    scales = {name.removeprefix("base_model.model."): module.scaling["default"]
              for name, module in peft_model.named_modules() if isinstance(getattr(module, "scaling", None), dict)}
    assert scales == {m: adapter.lora.scale_for(m) for m in adapter.modules}  # each module's scale is PEFT's
    assert len(set(scales.values())) >= 3
    with torch.no_grad():
        theirs = peft_model(input_ids=loaded.inputs).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert probe.last["relative_change"] > 1e-3


def test_a_base_too_large_for_the_host_is_skipped_with_a_warning(base, demo, caplog):
    probe = NoOpProbe(base, max_base_bytes=1024)
    files = scaled(adapter_bytes(demo.adapter_dirs["reverse"]), 1e-9)
    with caplog.at_level(logging.WARNING, logger="registry.noop_probe"):
        gate(base, probe).validate(files)  # not probed: only the static checks ran
    assert not probe.enabled() and "NOOP_PROBE_MAX_BASE_BYTES" in probe.skip_reason
    assert any("no-op probe skipped" in r.getMessage() for r in caplog.records)


def test_settings_switch_the_probe(base):
    from registry.noop_probe import default_probes
    from registry.settings import RegistrySettings

    assert default_probes(RegistrySettings(noop_probe=False), base) == []
    assert default_probes(RegistrySettings(), None) == []
    [probe] = default_probes(RegistrySettings(noop_probe_min_change=1e-3), base)
    assert probe.min_change == 1e-3
